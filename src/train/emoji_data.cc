// The emoji data set: metadata join, held-out marking, image decoding on white.
#include "train/emoji_data.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/json.h"
#include "io/png.h"

namespace stipple::train {

extern const char* const kEmojiHeldoutTsv;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Code points upper-cased, without FE0F (emoji.json writes it, emojibase often does not).
std::string join_key(const std::string& hex) {
  std::string out, part;
  std::stringstream ss(hex);
  while (std::getline(ss, part, '-')) {
    for (auto& c : part) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (part == "FE0F" || part.empty()) continue;
    out += (out.empty() ? "" : "-") + part;
  }
  return out;
}

int tone_of(const std::string& code) {
  static const std::map<std::string, int> tones = {
      {"1F3FB", 1}, {"1F3FC", 2}, {"1F3FD", 3}, {"1F3FE", 4}, {"1F3FF", 5}};
  const auto it = tones.find(code);
  return it == tones.end() ? 0 : it->second;
}

std::string need_file(const std::string& dir, const std::string& rel) {
  const std::string path = dir + "/" + rel;
  STIPPLE_CHECK(fs::is_regular_file(path), "emoji data: missing ", path,
                " (install the data with `sudo bash scripts/setup.sh`, or point --data at the "
                "folder holding node_modules/emoji-datasource-twitter, -google and emojibase-data)");
  return path;
}

}  // namespace

std::vector<std::string> parse_heldout_tsv(const std::string& text, const std::string& where) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string line;
  int n = 0;
  while (std::getline(ss, line)) {
    ++n;
    if (line.empty() || line[0] == '#') continue;
    const std::string image = line.substr(0, line.find('\t'));
    STIPPLE_CHECK(image.size() > 4 && image.substr(image.size() - 4) == ".png", where, ":", n,
                  ": expected an image file name in the first column, got \"", image, "\"");
    out.push_back(image);
  }
  return out;
}

const std::vector<std::string>& emoji_heldout_images() {
  static const std::vector<std::string> list =
      parse_heldout_tsv(kEmojiHeldoutTsv, "data/emoji-heldout-skin-tones.tsv");
  return list;
}

std::string emoji_caption(const EmojiEntry& e, bool style) {
  if (!style) return e.label;
  return e.label + (e.vendor == "twitter" ? ", twemoji style" : ", noto style");
}

std::string EmojiData::default_dir() {
  const char* env = std::getenv("STIPPLE_DATA_DIR");
  if (env && *env) return std::string(env) + "/emoji";
  return "/opt/stipple-data/emoji";
}

EmojiData EmojiData::load(const std::string& dir) {
  STIPPLE_CHECK(fs::is_directory(dir), "emoji data: no such folder: ", dir,
                " (install the data with `sudo bash scripts/setup.sh`, or give the folder that "
                "holds node_modules/ with --data)");
  EmojiData d;
  d.dir_ = dir;
  // 1. CLDR labels and tags by code point sequence (skin-tone variants inherit the base's tags).
  struct Cldr {
    std::string label;
    std::vector<std::string> tags;
  };
  std::map<std::string, Cldr> cldr;
  const std::string base_path = need_file(dir, "node_modules/emojibase-data/en/data.json");
  const json base = io::read_json_file(base_path);
  STIPPLE_CHECK(base.is_array(), base_path, ": expected a JSON array of emoji");
  for (const json& e : base) {
    if (!e.is_object() || !e.contains("hexcode") || !e.contains("label")) continue;
    Cldr c;
    c.label = e["label"].get<std::string>();
    if (e.contains("tags") && e["tags"].is_array())
      for (const json& t : e["tags"])
        if (t.is_string()) c.tags.push_back(t.get<std::string>());
    cldr[join_key(e["hexcode"].get<std::string>())] = c;
    if (e.contains("skins") && e["skins"].is_array())
      for (const json& s : e["skins"])
        if (s.is_object() && s.contains("hexcode") && s.contains("label"))
          cldr[join_key(s["hexcode"].get<std::string>())] = {s["label"].get<std::string>(),
                                                             c.tags};
  }
  // 2. Images per vendor, in emoji.json order (base, then its skin variations).
  const std::set<std::string> heldout(emoji_heldout_images().begin(),
                                      emoji_heldout_images().end());
  for (const char* vendor : kVendors) {
    const std::string meta_path =
        need_file(dir, str_cat("node_modules/emoji-datasource-", vendor, "/emoji.json"));
    const json meta = io::read_json_file(meta_path);
    STIPPLE_CHECK(meta.is_array(), meta_path, ": expected a JSON array of emoji");
    const std::string has = str_cat("has_img_", vendor);
    for (const json& e : meta) {
      if (!e.is_object() || !e.contains("unified") || !e.contains("image")) continue;
      const std::string base_unified = e["unified"].get<std::string>();
      const auto base_it = cldr.find(join_key(base_unified));
      STIPPLE_CHECK(base_it != cldr.end(), meta_path, ": emoji ", base_unified,
                    " has no CLDR label in ", base_path);
      auto add = [&](const json& x, std::vector<int> tones) {
        if (!x.value(has, false)) return;
        EmojiEntry en;
        en.vendor = vendor;
        en.image = x["image"].get<std::string>();
        en.unified = x["unified"].get<std::string>();
        en.base_unified = base_unified;
        en.tones = std::move(tones);
        const auto it = cldr.find(join_key(en.unified));
        STIPPLE_CHECK(it != cldr.end(), meta_path, ": emoji ", en.unified,
                      " has no CLDR label in ", base_path);
        en.label = it->second.label;
        en.base_label = base_it->second.label;
        en.tags = base_it->second.tags;
        en.category = e.value("category", "");
        en.heldout = heldout.count(en.image) > 0;
        d.entries_.push_back(std::move(en));
      };
      add(e, {});
      if (e.contains("skin_variations") && e["skin_variations"].is_object())
        for (const auto& [key, v] : e["skin_variations"].items()) {
          std::vector<int> tones;
          std::stringstream ss(key);
          std::string part;
          while (std::getline(ss, part, '-'))
            if (int t = tone_of(part)) tones.push_back(t);
          add(v, tones);
        }
    }
  }
  STIPPLE_CHECK(!d.entries_.empty(), "emoji data: no images listed under ", dir);
  int64_t found = 0;
  for (const auto& e : d.entries_) found += e.heldout;
  STIPPLE_CHECK(found == 2 * static_cast<int64_t>(heldout.size()), "emoji data: ", found,
                " of the ", 2 * heldout.size(),
                " held-out images found in the metadata under ", dir,
                " (expected emoji-datasource-*@16.0.0 and emojibase-data@17.0.0)");
  return d;
}

std::vector<int64_t> EmojiData::train_indices() const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (!entries_[i].heldout) out.push_back(static_cast<int64_t>(i));
  return out;
}

std::vector<int64_t> EmojiData::heldout_indices() const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].heldout) out.push_back(static_cast<int64_t>(i));
  return out;
}

std::vector<std::string> EmojiData::base_labels() const {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& e : entries_)
    if (e.tones.empty() && seen.insert(e.label).second) out.push_back(e.label);
  return out;
}

EmojiLabels EmojiData::distinct_labels() const {
  EmojiLabels l;
  for (const auto& e : entries_)
    if (l.index.emplace(e.label, static_cast<int64_t>(l.labels.size())).second) {
      l.labels.push_back(e.label);
      l.entries.push_back(&e);
    }
  return l;
}

std::string EmojiData::image_path(const EmojiEntry& e) const {
  return str_cat(dir_, "/node_modules/emoji-datasource-", e.vendor, "/img/", e.vendor, "/64/",
                 e.image);
}

Tensor EmojiData::load_images(const std::vector<int64_t>& indices) const {
  const int64_t n = static_cast<int64_t>(indices.size());
  constexpr int64_t S = kImageSize, plane = S * S;
  Tensor out = Tensor::empty({n, 3, S, S});
  float* dst = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(indices[i] >= 0 && indices[i] < static_cast<int64_t>(entries_.size()),
                  "emoji data: index ", indices[i], " outside [0, ", entries_.size(), ")");
    const std::string path = image_path(entries_[indices[i]]);
    const io::Image img = io::read_png(path);
    STIPPLE_CHECK(img.width == S && img.height == S, path, ": expected a ", S, "x", S,
                  " image, got ", img.width, "x", img.height);
    float* o = dst + i * 3 * plane;
    for (int64_t p = 0; p < plane; ++p) {
      const uint8_t* px = img.pixels.data() + p * img.channels;
      const bool grey = img.channels < 3;
      const float a = (img.channels == 4 || img.channels == 2) ? px[img.channels - 1] / 255.0f : 1;
      for (int c = 0; c < 3; ++c) {
        const float v = px[grey ? 0 : c] / 255.0f;
        o[c * plane + p] = 2.0f * (a * v + (1.0f - a)) - 1.0f;  // over white, to [-1, 1]
      }
    }
  }
  return out;
}

}  // namespace stipple::train

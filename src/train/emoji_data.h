// The emoji text-to-image data set: Twemoji and Noto Emoji images (npm packages
// emoji-datasource-twitter@16.0.0 and emoji-datasource-google@16.0.0, 64x64 RGBA PNGs at
// img/<vendor>/64/) captioned with CLDR labels and tags from emojibase-data@17.0.0
// (en/data.json), joined by code point sequence (emoji.json's `unified` = emojibase's `hexcode`,
// compared without the FE0F variation selector). scripts/setup.sh installs the three packages into
// EmojiData::default_dir().
//
// Held out: the 100 (emoji, skin tone) pairs of data/emoji-heldout-skin-tones.tsv (compiled into
// the library, so no caller can forget them) in both vendors, 200 images. load() marks them
// `heldout`; training code takes train_indices(), which never contains them.
//
// Images are composited on white (alpha over 255) and returned as RGB f32 in [-1, 1].
//
// Leaves out: the sheet images, the other sizes (16/20/32), and the Apple/Facebook sets (not
// freely licensed, and not installed).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple::train {

struct EmojiEntry {
  std::string vendor;        // "twitter" or "google"
  std::string image;         // file name under img/<vendor>/64/, e.g. "1f44b-1f3fb.png"
  std::string unified;       // code points, e.g. "1F44B-1F3FB"
  std::string base_unified;  // the emoji without skin tones, e.g. "1F44B"
  std::vector<int> tones;    // 1 light .. 5 dark, one per person; empty for base emoji
  std::string label;         // CLDR label, e.g. "waving hand: light skin tone"
  std::string base_label;    // the base emoji's label, e.g. "waving hand"
  std::vector<std::string> tags;  // the base emoji's CLDR tags
  std::string category;           // emoji.json's category, e.g. "People & Body"
  bool heldout = false;           // in the held-out list: never trained on
};

// Every distinct CLDR label once, in entry order, with the first entry that carries it (base emoji
// and tones are the same for every entry of a label).
struct EmojiLabels {
  std::vector<std::string> labels;
  std::vector<const EmojiEntry*> entries;  // parallel to labels; point into the EmojiData
  std::map<std::string, int64_t> index;    // label -> position
};

class EmojiData {
 public:
  static constexpr int kImageSize = 64;
  static constexpr const char* kVendors[2] = {"twitter", "google"};

  // $STIPPLE_DATA_DIR/emoji when that variable is set, else /opt/stipple-data/emoji.
  static std::string default_dir();
  // Reads the metadata (emoji.json of each vendor, emojibase's en/data.json) from `dir` (the
  // folder holding node_modules/). Throws naming the missing file and how to install the data.
  static EmojiData load(const std::string& dir = default_dir());

  const std::vector<EmojiEntry>& entries() const { return entries_; }
  // Indices of the entries training may use (everything but the held-out images).
  std::vector<int64_t> train_indices() const;
  std::vector<int64_t> heldout_indices() const;
  // The distinct labels of base emoji (no skin tone), in emoji.json order: 1,911 of them.
  std::vector<std::string> base_labels() const;
  // All 3,786 distinct labels (base emoji and skin-tone variants); valid while this object lives.
  EmojiLabels distinct_labels() const;
  // The image file of an entry.
  std::string image_path(const EmojiEntry& e) const;
  // Decodes the entries' images, composited on white: [N, 3, 64, 64] f32 in [-1, 1].
  Tensor load_images(const std::vector<int64_t>& indices) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<EmojiEntry> entries_;
};

// The held-out list compiled into the library: image file names (the same in both vendors).
const std::vector<std::string>& emoji_heldout_images();
// Parses the TSV text of a held-out list (header line, then image, base, tone, label).
std::vector<std::string> parse_heldout_tsv(const std::string& text, const std::string& where);

// The caption of an entry: its CLDR label, plus ", twemoji style" / ", noto style" when `style`.
std::string emoji_caption(const EmojiEntry& e, bool style);

}  // namespace stipple::train

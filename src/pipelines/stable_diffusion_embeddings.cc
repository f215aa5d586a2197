// Textual-inversion embeddings for the Stable Diffusion pipelines (see stable_diffusion.h).
#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "io/torch_checkpoint.h"
#include "pipelines/stable_diffusion.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

namespace {

// [D] -> [1, D]; [n, D] as it is.
Tensor as_rows(const Tensor& t) {
  if (t.dim() == 1) return t.reshape({1, t.size(0)});
  return t;
}

// Adds `rows` as tokens name, name_1, ... of one encoder and its tokenizer.
void add_tokens(models::CLIPTextModel& encoder, text::ClipTokenizer& tokenizer,
                const std::string& name, const Tensor& rows) {
  const int64_t first = encoder.add_token_embeddings(rows);
  for (int64_t k = 0; k < rows.size(0); ++k)
    tokenizer.add_token(k == 0 ? name : str_cat(name, "_", k), first + k);
}

}  // namespace

void StableDiffusion::add_embedding(const std::string& name, const Tensor& first,
                                    const Tensor& second) {
  STIPPLE_CHECK(!name.empty() && !embeddings_.count(name), "an embedding named \"", name,
                "\" is already loaded");
  STIPPLE_CHECK(static_cast<bool>(text_encoder_) == first.defined() &&
                    static_cast<bool>(text_encoder_2_) == second.defined(),
                "embedding ", name, ": needs vectors for ", text_encoder_ ? "text_encoder" : "",
                text_encoder_ && text_encoder_2_ ? " and " : "",
                text_encoder_2_ ? "text_encoder_2" : "");
  STIPPLE_CHECK(!first.defined() || !second.defined() || first.size(0) == second.size(0),
                "embedding ", name, ": ", first.size(0), " vectors for text_encoder but ",
                second.size(0), " for text_encoder_2");
  // Check every token is new before changing anything.
  const int64_t n = first.defined() ? first.size(0) : second.size(0);
  for (int64_t k = 0; k < n; ++k) {
    const std::string token = k == 0 ? name : str_cat(name, "_", k);
    STIPPLE_CHECK((!tokenizer_ || tokenizer_->token_to_id(token) < 0) &&
                      (!tokenizer_2_ || tokenizer_2_->token_to_id(token) < 0),
                  "embedding ", name, ": \"", token,
                  "\" is already a word of the tokenizer; rename the file");
  }
  if (first.defined()) add_tokens(*text_encoder_, *tokenizer_, name, first);
  if (second.defined()) add_tokens(*text_encoder_2_, *tokenizer_2_, name, second);
  embeddings_[name] = n;
}

std::pair<std::vector<std::string>, std::vector<std::string>> StableDiffusion::load_embeddings(
    const std::string& dir) {
  STIPPLE_CHECK(fs::is_directory(dir), "no such embeddings folder: ", dir);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() &&
        (ext == ".pt" || ext == ".ckpt" || ext == ".bin" || ext == ".safetensors"))
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());  // a stable order of token ids
  const int64_t d1 = text_encoder_ ? text_encoder_->config().hidden_size : 0;
  const int64_t d2 = text_encoder_2_ ? text_encoder_2_->config().hidden_size : 0;
  std::vector<std::string> loaded, skipped;
  for (const fs::path& path : files) {
    const std::string name = path.stem().string();
    const io::SafetensorsFile f = io::open_weights_file(path.string());
    Tensor l, g;
    if (f.contains("clip_l") || f.contains("clip_g")) {  // SDXL's two halves
      if (f.contains("clip_l")) l = as_rows(f.tensor("clip_l"));
      if (f.contains("clip_g")) g = as_rows(f.tensor("clip_g"));
    } else if (f.contains("string_to_param.*")) {  // A1111's .pt
      l = as_rows(f.tensor("string_to_param.*"));
    } else if (f.contains("emb_params")) {  // A1111's .safetensors
      l = as_rows(f.tensor("emb_params"));
    } else if (f.size() == 1) {  // diffusers' learned_embeds: {token: vectors}
      l = as_rows(f.tensor(f.names().front()));
    } else {
      skipped.push_back(str_cat(name, " (no embedding tensors: ", f.size(), " tensors)"));
      continue;
    }
    // Which encoders the vectors are for, by their widths.
    Tensor first, second;
    if (g.defined() || text_encoder_2_) {  // SDXL: both halves (the refiner: clip_g)
      const bool fits = (!text_encoder_ || (l.defined() && l.dim() == 2 && l.size(1) == d1)) &&
                        g.defined() && g.dim() == 2 && g.size(1) == d2;
      if (!fits) {
        skipped.push_back(str_cat(name, " (not an embedding for this model's text encoders)"));
        continue;
      }
      if (text_encoder_) first = l;
      second = g;
    } else {
      if (!(l.defined() && l.dim() == 2 && l.size(1) == d1)) {
        skipped.push_back(str_cat(name, " (", l.defined() ? l.describe() : "no vectors",
                                  ", but the text encoder is ", d1, " wide)"));
        continue;
      }
      first = l;
    }
    add_embedding(name, first.defined() ? first.to(DType::kF32) : first,
                  second.defined() ? second.to(DType::kF32) : second);
    loaded.push_back(name);
  }
  return {loaded, skipped};
}

std::string StableDiffusion::expand_embeddings(const std::string& prompt) const {
  std::string out = prompt;
  for (const auto& [name, n] : embeddings_) {
    if (n < 2) continue;
    std::string replacement = name;
    for (int64_t k = 1; k < n; ++k) replacement += str_cat(" ", name, "_", k);
    // diffusers' str.replace: every occurrence, left to right, not rescanned.
    std::string result;
    size_t from = 0;
    for (size_t at = out.find(name); at != std::string::npos; at = out.find(name, from)) {
      result.append(out, from, at - from);
      result += replacement;
      from = at + name.size();
    }
    result.append(out, from, std::string::npos);
    out = result;
  }
  return out;
}

}  // namespace stipple::pipelines

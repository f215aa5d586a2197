// Scoring a text-to-image model trained on the emoji (`stipple eval --model T2I_FOLDER`), with
// the CLIP trained here as the judge (by default the model folder's own text and image towers;
// --clip names another):
//
//   retrieval  for N prompts (base emoji labels spread over the 1,911), one image each: is the
//              image's nearest caption among all 1,911 base labels its own prompt? top-1, top-5;
//              the same for the real images of those emoji (both vendors) as the ceiling.
//   held-out   the 100 held-out (emoji, skin tone) pairs, one image each from the CLDR label:
//              the nearest caption among all 3,786 labels (with tones) has the right emoji? the
//              right tone? both? Real ceiling: the 200 held-out real images.
//   FD_clip    a Fréchet distance in the CLIP image embeddings between the N generated images
//              and N real images of the same emoji, next to its floor: N real against N other
//              real images of the same emoji (the other vendor's).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/storage.h"

namespace stipple::train {

struct T2IEvalConfig {
  int prompts = 200;  // N base emoji
  int steps = 20;
  float cfg = 4.0f;
  std::string sampler = "dpm++2m";
  uint64_t seed = 0;
  std::string data_dir;  // empty: EmojiData::default_dir()
  std::string clip_dir;  // empty: the model folder's own towers
  std::string grid;      // PNG of the first 64 generated images (and the held-out ones)
  Device device = Device::kCPU;  // where the generator samples (the CLIP judge stays on the CPU)
  void validate() const;
};

struct T2IEvalResult {
  int64_t prompts = 0, candidates = 0;
  double top1 = 0, top5 = 0, real_top1 = 0, real_top5 = 0;
  int64_t heldout = 0, heldout_candidates = 0;
  double heldout_emoji = 0, heldout_tone = 0, heldout_both = 0;
  double real_heldout_emoji = 0, real_heldout_tone = 0, real_heldout_both = 0;
  double fd = 0, fd_floor = 0;
  double sample_seconds = 0;
  T2IEvalConfig config;
  std::string model;

  std::string table() const;
  nlohmann::json to_json() const;
};

T2IEvalResult evaluate_text_to_image(
    const std::string& model_dir, const T2IEvalConfig& config,
    const std::function<void(const std::string& phase, int done, int total)>& progress = {});

}  // namespace stipple::train

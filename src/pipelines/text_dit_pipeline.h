// Text-to-image with a PixArt-style DiT over a VAE's latents, conditioned on a CLIP text encoder:
// the pipeline of the models `stipple train --data emoji` writes (model_index.json
// "StippleTextToImagePipeline": transformer/, vae/, text_encoder/, tokenizer/, scheduler/, and
// image_encoder/ for evaluation and image variations).
//
//   1. prompt and negative prompt ("" when none) -> tokenizer (padded to the encoder's length)
//      -> text encoder: per-token states [B, T, C] and the pooled projection, normalised and
//      scaled by sqrt(P) as in training [B, P]
//   2. x_T = randn [B, 4, s, s] * init_noise_sigma
//   3. denoise: [cond, uncond] through the transformer, classifier-free guidance (cond first)
//   4. decode: x_0 / scaling_factor -> VAE -> clamp(x / 2 + 0.5, 0, 1)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/clip_text.h"
#include "models/pixart.h"
#include "models/vae.h"
#include "pipelines/denoise.h"
#include "pipelines/pipeline_util.h"
#include "schedulers/scheduler.h"
#include "text/clip_tokenizer.h"

namespace stipple {
class Generator;
}

namespace stipple::pipelines {

// The text conditioning of a text-to-image DiT, the same in training and sampling: the encoder's
// per-token states [B, T, C] (padded to its max_position_embeddings) and, with `pooled`, its
// projected pooled embedding scaled to length sqrt(P) [B, P] (undefined without). No gradients.
std::pair<Tensor, Tensor> encode_text_condition(const models::CLIPTextModel& encoder,
                                                const text::ClipTokenizer& tokenizer,
                                                const std::vector<std::string>& texts,
                                                bool pooled);

struct TextDiTParams {
  std::vector<std::string> prompts;  // one image per prompt, drawn kMaxBatch at a time
  std::string negative_prompt;       // the unconditional text ("" as in training)
  int steps = 20;
  float cfg = 4.0f;       // <= 1: no guidance
  GuidanceInterval guidance_interval;  // the noise levels guided (denoise.h); default: all
  std::string sampler;    // schedulers::sampler_names(); "" = the folder's scheduler
  uint64_t seed = 0;      // images draw x_T in order from one generator seeded with this...
  std::vector<uint64_t> seeds;  // ...unless given here, one per prompt (A1111's seed + i)
  std::function<void(int done, int total)> progress;
  Preview preview;  // of the first image of each batch
};

class TextDiTPipeline {
 public:
  static constexpr const char* kClassName = "StippleTextToImagePipeline";
  static constexpr int64_t kMaxBatch = 16;  // images denoised together
  static TextDiTPipeline from_pretrained(const std::string& folder);
  // Whether `folder`'s model_index.json names this pipeline.
  static bool is_folder(const std::string& folder);

  // Images [B, 3, H, W] in [0, 1] on the CPU. Progress counts the steps of every batch.
  Tensor run(const TextDiTParams& params) const;
  // Moves the text encoder, the transformer and the VAE to `device`; run() then encodes,
  // denoises and decodes there (the noise drawn on the CPU, so a seed gives the same image).
  void to(Device device);
  Device device() const { return device_; }
  // The text conditioning of `prompts`: states [B, T, C] and pooled [B, P].
  std::pair<Tensor, Tensor> encode(const std::vector<std::string>& prompts) const;
  int64_t image_size() const;

 private:
  // One batch: x_T [B, C, s, s] -> images; `noise` for ancestral samplers.
  Tensor run_batch(const TextDiTParams& params, const std::vector<std::string>& prompts,
                   Tensor latents, Generator* noise,
                   const std::function<void(int, int)>& progress) const;
  std::shared_ptr<models::PixArtTransformer2DModel> transformer_;
  std::shared_ptr<models::AutoencoderKL> vae_;
  std::shared_ptr<models::CLIPTextModel> text_encoder_;
  std::shared_ptr<text::ClipTokenizer> tokenizer_;
  schedulers::SchedulerConfig scheduler_config_;
  Device device_ = Device::kCPU;
};

}  // namespace stipple::pipelines

// Class-to-image with DiT (Peebles & Xie 2023), as diffusers' DiTPipeline: a
// DiTTransformer2DModel denoises [B, 4, s, s] latents conditioned on class labels, with
// classifier-free guidance against the null class, and the VAE decodes them.
//
//   1. labels -> [labels, null x B] (cond first, then null: the opposite of Stable Diffusion)
//   2. x_T = randn [B, 4, s, s] * init_noise_sigma (1 for DiT's DDIM)
//   3. denoise: the doubled batch through the transformer; guidance on the eps channels only;
//      the learned-sigma channels are dropped before the scheduler step
//   4. decode: x_0 / scaling_factor -> VAE -> clamp(x / 2 + 0.5, 0, 1)
//
// Differences from diffusers: the null class is the transformer's num_embeds_ada_norm (diffusers
// hard-codes 1000, the same number for every released checkpoint), and x_T is multiplied by
// init_noise_sigma, so Euler-type samplers work too (diffusers leaves it out; it is 1 for DDIM).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/dit.h"
#include "models/vae.h"
#include "pipelines/denoise.h"
#include "pipelines/pipeline_util.h"
#include "schedulers/scheduler.h"

namespace stipple::pipelines {

struct DiTParams {
  std::vector<int64_t> class_labels;  // one image per label, each in [0, num_classes)
  int steps = 50;
  float cfg = 4.0f;     // guidance scale; <= 1 runs without guidance
  GuidanceInterval guidance_interval;  // the noise levels guided (denoise.h); default: all
  std::string sampler;  // a name from schedulers::sampler_names(); "" = the checkpoint's own
  uint64_t seed = 0;
  std::vector<Tensor> noise;  // injected draws (see NoiseSource), used before the generator
  std::function<void(int done, int total)> progress;
  Preview preview;
  Observer observe;  // intermediates under diffusers reference names
};

class DiTPipeline {
 public:
  // Reads a diffusers DiTPipeline folder: model_index.json, transformer/, vae/, scheduler/.
  // Throws naming the missing part for any other layout.
  static DiTPipeline from_pretrained(const std::string& folder);

  // Images [B, 3, H, W] in [0, 1] on the CPU, H = W = sample_size * the VAE's downscale factor.
  Tensor run(const DiTParams& params) const;
  // Moves the transformer and the VAE to `device`; run() then denoises and decodes there (the
  // noise is drawn on the CPU, as diffusers' CPU generator does, so a seed gives the same image).
  void to(Device device);
  Device device() const { return device_; }

  // Class names (id2label of model_index.json or transformer/config.json) or numbers -> ids.
  std::vector<int64_t> label_ids(const std::vector<std::string>& names) const;
  const std::map<int64_t, std::string>& id2label() const { return id2label_; }
  int64_t num_classes() const { return transformer_->config().num_embeds_ada_norm; }
  int64_t image_size() const;
  const models::DiTTransformer2DModel& transformer() const { return *transformer_; }
  const models::AutoencoderKL& vae() const { return *vae_; }
  const schedulers::SchedulerConfig& scheduler_config() const { return scheduler_config_; }

 private:
  std::shared_ptr<models::DiTTransformer2DModel> transformer_;
  std::shared_ptr<models::AutoencoderKL> vae_;
  schedulers::SchedulerConfig scheduler_config_;
  std::map<int64_t, std::string> id2label_;
  Device device_ = Device::kCPU;
};

// Checks that `folder` holds model_index.json and each named component folder with its files;
// throws one error naming what is missing and what the layout should be.
void check_pipeline_layout(const std::string& folder, const std::string& pipeline,
                           const std::vector<std::string>& components);

}  // namespace stipple::pipelines

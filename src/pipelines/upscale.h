// Super-resolution by diffusion (SR3, Saharia et al. 2021) with the conditioning augmentation of
// cascaded diffusion models (CDM, Ho et al. 2021): a UNet denoises the high-resolution image with
// the low-resolution one, noised to an augmentation level and upsampled bicubically,
// concatenated to its input, and the augmentation level as its class label (the scheme of
// Stable Diffusion's x4 upscaler, in pixel space).
//
//   1. low [B, C, h, w] in [-1, 1]; level l in [0, max_noise_level]
//   2. cond = bicubic_x_s(sqrt(acp_l) low + sqrt(1 - acp_l) n)    (the low-res schedule's acp;
//      l = 0 leaves it as it is)                                     [B, C, s*h, s*w]
//   3. x_T = randn [B, C, s*h, s*w] * init_noise_sigma; every step the UNet sees
//      concat(x_t, cond) with timestep t and class label l, and predicts eps
//   4. the image: clamp(x_0 / 2 + 0.5, 0, 1)
//
// A model folder (model_index.json "StippleSuperResolutionPipeline"): unet/ (a diffusers
// UNet2DConditionModel, in_channels 2C, num_class_embeds > max_noise_level, no cross-attention),
// scheduler/ (the denoiser's DDPM config), low_res_scheduler/ (the augmentation's), and in
// model_index.json the scale, the channels, max_noise_level and the default noise_level.
// `stipple train-sr` writes them; `stipple upscale` and `stipple generate --upscaler` run them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/unet2d_condition.h"
#include "pipelines/pipeline_util.h"
#include "schedulers/scheduler.h"

namespace stipple::pipelines {

inline constexpr const char* kSuperResolutionPipeline = "StippleSuperResolutionPipeline";

// Step 2 above, shared by training and sampling: low [B, C, h, w] in [-1, 1], one level per row,
// noise like `low` -> [B, C, scale*h, scale*w].
Tensor sr_condition(const Tensor& low, const std::vector<int64_t>& levels,
                    const std::vector<float>& low_res_alphas_cumprod, const Tensor& noise,
                    int64_t scale);

// [N, C, H, W] in [0, 1] with C in {1, 3} -> `channels` channels: RGB to grey by ITU-R BT.601
// luma, grey to RGB by repetition.
Tensor to_channels(const Tensor& x, int64_t channels);

struct UpscaleParams {
  int steps = 30;
  std::string sampler;       // a name from schedulers::sampler_names(); "" = the folder's own
  int64_t noise_level = -1;  // the augmentation level; < 0: the model's default
  uint64_t seed = 0;
  std::vector<Tensor> noise;  // injected draws (NoiseSource): the low-res noise, then x_T
  std::function<void(int done, int total)> progress;
};

class SuperResolutionPipeline {
 public:
  // Reads a folder written by `stipple train-sr`; throws naming what is missing or wrong.
  static SuperResolutionPipeline from_pretrained(const std::string& folder);

  // low [B, C, h, w] in [0, 1] -> [B, channels(), scale*h, scale*w] in [0, 1]. An RGB image for
  // a greyscale model is taken as its luma, a grey one for an RGB model as grey RGB.
  Tensor run(const Tensor& low, const UpscaleParams& params) const;

  int64_t scale() const { return scale_; }
  int64_t channels() const { return channels_; }
  int64_t low_res_size() const { return low_res_size_; }  // the training size (informational)
  int64_t max_noise_level() const { return max_noise_level_; }
  int64_t default_noise_level() const { return default_noise_level_; }
  const models::UNet2DConditionModel& unet() const { return *unet_; }
  const schedulers::SchedulerConfig& scheduler_config() const { return scheduler_config_; }

 private:
  std::shared_ptr<models::UNet2DConditionModel> unet_;
  schedulers::SchedulerConfig scheduler_config_;
  std::vector<float> low_res_acp_;
  int64_t scale_ = 2, channels_ = 3, low_res_size_ = 0, max_noise_level_ = 350,
          default_noise_level_ = 20;
};

}  // namespace stipple::pipelines

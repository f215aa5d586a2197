// SR3 super-resolution with CDM's conditioning augmentation (see upscale.h).
#include "pipelines/upscale.h"

#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/json.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "pipelines/dit_pipeline.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

Tensor sr_condition(const Tensor& low, const std::vector<int64_t>& levels,
                    const std::vector<float>& acp, const Tensor& noise, int64_t scale) {
  STIPPLE_CHECK(low.dim() == 4 && static_cast<int64_t>(levels.size()) == low.size(0) &&
                    noise.shape() == low.shape() && scale >= 1,
                "sr_condition: low ", low.describe(), ", ", levels.size(), " levels, noise ",
                noise.describe(), ", scale ", scale);
  const int64_t b = low.size(0), per = low.numel() / b;
  std::vector<float> x = low.to_vector();
  const std::vector<float> n = noise.to_vector();
  for (int64_t i = 0; i < b; ++i) {
    const int64_t l = levels[static_cast<size_t>(i)];
    STIPPLE_CHECK(l >= 0 && l < static_cast<int64_t>(acp.size()), "sr_condition: noise level ", l,
                  " is outside the low-res schedule's [0, ", acp.size(), ")");
    if (l == 0) continue;  // level 0: the clean low-res image
    const float a = std::sqrt(acp[static_cast<size_t>(l)]),
                s = std::sqrt(1.0f - acp[static_cast<size_t>(l)]);
    for (int64_t j = i * per; j < (i + 1) * per; ++j) x[j] = a * x[j] + s * n[j];
  }
  const Tensor noised = Tensor::from_vector(x, low.shape());
  return resize_bicubic(noised, low.size(2) * scale, low.size(3) * scale);
}

Tensor to_channels(const Tensor& x, int64_t channels) {
  STIPPLE_CHECK(x.dim() == 4 && (x.size(1) == 1 || x.size(1) == 3) &&
                    (channels == 1 || channels == 3),
                "to_channels: ", x.describe(), " to ", channels, " channels (1 or 3 only)");
  if (x.size(1) == channels) return x;
  if (channels == 3) return ops::concat({x, x, x}, 1);
  const Tensor r = x.narrow(1, 0, 1), g = x.narrow(1, 1, 1), b = x.narrow(1, 2, 1);
  return (r * 0.299f + g * 0.587f + b * 0.114f).contiguous();
}

SuperResolutionPipeline SuperResolutionPipeline::from_pretrained(const std::string& folder) {
  check_pipeline_layout(folder, kSuperResolutionPipeline, {"unet", "scheduler"});
  const fs::path d(folder);
  const std::string index_path = (d / "model_index.json").string();
  const io::JsonConfig index = io::JsonConfig::from_file(index_path);
  STIPPLE_CHECK(index.string("_class_name", "") == kSuperResolutionPipeline, index_path,
                ": _class_name is \"", index.string("_class_name", ""), "\", not ",
                kSuperResolutionPipeline, " (a super-resolution model from stipple train-sr)");
  const fs::path low_res = d / "low_res_scheduler" / "scheduler_config.json";
  STIPPLE_CHECK(fs::is_regular_file(low_res), folder,
                ": low_res_scheduler/scheduler_config.json is missing (the noise schedule of the "
                "low-resolution input)");
  SuperResolutionPipeline p;
  p.scale_ = index.integer("scale");
  p.channels_ = index.integer("channels");
  p.low_res_size_ = index.integer("low_res_size", 0);
  p.max_noise_level_ = index.integer("max_noise_level");
  p.default_noise_level_ = index.integer("noise_level", 0);
  STIPPLE_CHECK(p.scale_ >= 1 && p.scale_ <= 16 && p.channels_ >= 1 && p.channels_ <= 4,
                index_path, ": scale ", p.scale_, " must be in [1, 16] and channels ", p.channels_,
                " in [1, 4]");
  p.unet_ = models::UNet2DConditionModel::from_pretrained((d / "unet").string());
  const auto& u = p.unet_->config();
  STIPPLE_CHECK(u.in_channels == 2 * p.channels_ && u.out_channels == p.channels_, folder,
                ": unet/ takes ", u.in_channels, " channels and gives ", u.out_channels,
                "; a super-resolution UNet for ", p.channels_, "-channel images takes ",
                2 * p.channels_, " (the noisy image and the upsampled condition) and gives ",
                p.channels_);
  STIPPLE_CHECK(p.max_noise_level_ >= 0 && p.max_noise_level_ < u.num_class_embeds &&
                    p.default_noise_level_ >= 0 && p.default_noise_level_ <= p.max_noise_level_,
                index_path, ": max_noise_level ", p.max_noise_level_, " and noise_level ",
                p.default_noise_level_, " must fit the UNet's ", u.num_class_embeds,
                " class embeddings (0 <= noise_level <= max_noise_level < num_class_embeds)");
  p.scheduler_config_ =
      schedulers::SchedulerConfig::from_json((d / "scheduler" / "scheduler_config.json").string());
  p.low_res_acp_ = schedulers::make_scheduler(
                       schedulers::SchedulerConfig::from_json(low_res.string()))
                       ->alphas_cumprod();
  STIPPLE_CHECK(p.max_noise_level_ < static_cast<int64_t>(p.low_res_acp_.size()), folder,
                ": max_noise_level ", p.max_noise_level_, " is past the low-res schedule's ",
                p.low_res_acp_.size(), " steps");
  return p;
}

Tensor SuperResolutionPipeline::run(const Tensor& low, const UpscaleParams& params) const {
  autograd::NoGradGuard no_grad;
  STIPPLE_CHECK(low.defined() && low.dim() == 4 && (low.size(1) == 1 || low.size(1) == 3),
                "upscale: the input image must be [B, 1 or 3, h, w], got ",
                low.defined() ? low.describe() : "nothing");
  STIPPLE_CHECK(params.steps >= 1 && params.steps <= 1000, "upscale: steps must be in [1, 1000], got ",
                params.steps);
  const int64_t level = params.noise_level < 0 ? default_noise_level_ : params.noise_level;
  STIPPLE_CHECK(level <= max_noise_level_, "upscale: noise level ", level,
                " is above this model's maximum ", max_noise_level_);
  const int64_t b = low.size(0), h = low.size(2) * scale_, w = low.size(3) * scale_;
  STIPPLE_CHECK(h <= 4096 && w <= 4096, "upscale: the result would be ", h, "x", w,
                " (at most 4096x4096)");
  NoiseSource noise(params.seed, params.noise);
  // 1-2. the condition: the input in [-1, 1], noised to the level, upsampled
  const Tensor low_pm =
      ops::affine(to_channels(low.contiguous().to(DType::kF32), channels_), 2.0f, -1.0f);
  const Tensor low_noise = noise.randn(low_pm.shape(), "the low-resolution noise");
  const Tensor cond = sr_condition(low_pm, std::vector<int64_t>(static_cast<size_t>(b), level),
                                   low_res_acp_, low_noise, scale_);  // [B, C, H, W]
  const Tensor labels = Tensor::from_vector_i64(std::vector<int64_t>(static_cast<size_t>(b), level), {b});
  // 3. denoise
  std::unique_ptr<schedulers::Scheduler> scheduler = schedulers::make_scheduler(
      params.sampler.empty() ? scheduler_config_
                             : schedulers::config_for_sampler(params.sampler, scheduler_config_));
  scheduler->set_timesteps(params.steps);
  Tensor x = noise.randn({b, channels_, h, w}, "the initial noise") *
             static_cast<float>(scheduler->init_noise_sigma());
  const DenoiseFn model = [&](const Tensor& input, double t) {
    const Tensor ts = Tensor::full({input.size(0)}, t);
    return unet_->forward(ops::concat({input, cond}, 1), ts, Tensor(), labels);
  };
  DenoiseOptions opt;
  opt.generator = noise.generator();
  opt.progress = params.progress;
  x = denoise(*scheduler, x, model, opt);  // [B, C, H, W]
  // 4. the image
  return vae_to_unit(x);
}

}  // namespace stipple::pipelines

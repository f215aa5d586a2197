// Stable Diffusion's x4 upscaler, as diffusers 0.29's StableDiffusionUpscalePipeline: latent
// diffusion at the low-resolution image's size, the noised low-res pixels concatenated to the
// latents, the noise level as the UNet's class label, and a x4 VAE that decodes to 4x the size.
//
//   1. prompt embeddings as text-to-image ([uncond, cond] with guidance)
//   2. the image: [0, 1] -> sizes rounded down to multiples of the VAE factor (nearest) -> [-1, 1]
//   3. draw 1: noise like the image; image = low_res_scheduler.add_noise(image, noise, level),
//      then repeated over the UNet batch; class_labels = level for every row
//   4. draw 2: latents randn [B, 4, h, w] (the low-res size) * init_noise_sigma
//   5. denoise: the UNet sees concat([scale_model_input(latents), image]) (7 channels)
//   6. decode: latents / scaling_factor (0.08333) -> VAE (x4) -> clamp(x / 2 + 0.5, 0, 1)
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/json.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "pipelines/stable_diffusion.h"
#include "schedulers/scheduler.h"
#include "schedulers/training.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

void StableDiffusion::load_upscaler_parts(StableDiffusion& sd, const std::string& folder) {
  const fs::path d(folder);
  const fs::path low_res = d / "low_res_scheduler" / "scheduler_config.json";
  STIPPLE_CHECK(fs::is_regular_file(low_res), folder,
                ": a 7-channel UNet is the x4 upscaler's, which needs low_res_scheduler/"
                "scheduler_config.json (the noise schedule of the low-resolution image)");
  sd.low_res_alphas_cumprod_ =
      schedulers::make_scheduler(schedulers::SchedulerConfig::from_json(low_res.string()))
          ->alphas_cumprod();
  const io::JsonConfig index = io::JsonConfig::from_file((d / "model_index.json").string());
  sd.max_noise_level_ = static_cast<int>(index.integer("max_noise_level", 350));
  const int64_t classes = sd.unet_->config().num_class_embeds;
  STIPPLE_CHECK(sd.max_noise_level_ >= 0 && sd.max_noise_level_ < classes &&
                    sd.max_noise_level_ < static_cast<int>(sd.low_res_alphas_cumprod_.size()),
                folder, ": max_noise_level ", sd.max_noise_level_, " must be below the UNet's ",
                classes, " class embeddings and the low-res schedule's ",
                sd.low_res_alphas_cumprod_.size(), " steps");
}

Tensor StableDiffusion::run_upscale(const GenerationParams& p) const {
  autograd::NoGradGuard no_grad;
  STIPPLE_CHECK(is_upscaler(), "run_upscale: this is not an x4 upscaler model");
  STIPPLE_CHECK(p.init_image.defined(), "the x4 upscaler needs the low-resolution image");
  const Tensor& im = p.init_image;
  STIPPLE_CHECK(im.dim() == 4 && im.size(0) == 1 && im.size(1) == 3,
                "the low-resolution image must be [1, 3, H, W], got ", im.describe());
  STIPPLE_CHECK(!p.mask.defined(), "the x4 upscaler does not inpaint: leave out the mask");
  STIPPLE_CHECK(p.noise_level >= 0 && p.noise_level <= max_noise_level_, "noise level ",
                p.noise_level, " is outside [0, ", max_noise_level_, "] (max_noise_level)");
  STIPPLE_CHECK(p.steps >= 1 && p.steps <= 10000, "steps must be in [1, 10000], got ", p.steps);
  STIPPLE_CHECK(p.num_images >= 1 && p.num_images <= 256, "num_images must be in [1, 256], got ",
                p.num_images);
  STIPPLE_CHECK(std::isfinite(p.cfg), "the guidance scale must be a number");
  const int64_t f = vae_scale_factor();
  // 2. sizes rounded down to the VAE factor (diffusers' VaeImageProcessor), then [-1, 1]
  const int64_t h = im.size(2) / f * f, w = im.size(3) / f * f;
  STIPPLE_CHECK(h >= f && w >= f, "the low-resolution image is ", im.size(3), "x", im.size(2),
                "; the x4 upscaler needs at least ", f, "x", f);
  STIPPLE_CHECK(h * 4 <= 8192 && w * 4 <= 8192, "the upscaled image would be ", w * f, "x",
                h * f, " (at most 8192x8192)");
  const Tensor sized = h == im.size(2) && w == im.size(3) ? im.contiguous()
                                                            : resize_nearest(im, h, w);
  Tensor image = ops::affine(sized, 2.0f, -1.0f);  // [1, 3, h, w]
  if (p.observe) p.observe("low_res.image_preprocessed", image);

  // 1. prompts, scheduler, draws
  Run r;
  r.batch = p.num_images;
  r.width = w * f;
  r.height = h * f;
  schedulers::SchedulerConfig sc =
      p.sampler.empty() ? scheduler_config_
                        : schedulers::config_for_sampler(p.sampler, scheduler_config_);
  sc.eta = p.eta;
  r.scheduler = schedulers::make_scheduler(sc);
  r.scheduler->set_timesteps(p.steps);
  r.noise = std::make_unique<NoiseSource>(p.seed, p.noise);
  r.guided = p.cfg > 1.0f;
  r.prompt_embeds = encode_prompts(p.prompt, p.negative_prompt, p.num_images, r.guided,
                                   p.clip_skip, p.observe, p.prompt_syntax)
                        .states;  // [2B or B, 77, D]
  if (p.observe) p.observe("denoiser.encoder_hidden_states", r.prompt_embeds);

  // 3. the low-resolution image noised to the level (DDPM eq. 4 with the low-res schedule)
  const Tensor noise = r.noise->randn(image.shape(), "the low-resolution noise");
  image = schedulers::add_noise(low_res_alphas_cumprod_, image, noise,
                                Tensor::from_vector_i64({p.noise_level}, {1}));
  if (p.observe) p.observe("low_res.noised_image", image);
  const int64_t rows = r.guided ? 2 * r.batch : r.batch;
  const Tensor image_rows = repeat_batch(image, rows);  // [N, 3, h, w]
  r.class_labels =
      Tensor::from_vector_i64(std::vector<int64_t>(static_cast<size_t>(rows), p.noise_level), {rows});
  if (p.observe) p.observe("denoiser.class_labels", r.class_labels);

  // 4. latents at the low-res size (r.width / f by r.height / f)
  const Tensor latents = initial_latents(r, p);

  // 5.-6. denoise with the image channels after the latents, decode (x4)
  return denoise_and_decode(
      r, latents, p, [&](const Tensor& input) { return image_rows.narrow(0, 0, input.size(0)); },
      nullptr);
}

}  // namespace stipple::pipelines

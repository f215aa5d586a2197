// Inpainting, as diffusers 0.29's StableDiffusionInpaintPipeline (see stable_diffusion.h).
//
// The mask is binarised (>= 0.5 repaints), the masked image keeps the known pixels, and the mask
// is resized to the latent grid by nearest neighbour. A 9-channel UNet sees
// [latents, mask, masked-image latents] at every step. A 4-channel UNet (the "legacy" latent
// blending) denoises as text-to-image, and after step i the known region is replaced by the image
// latents noised to timesteps()[i + 1] with the initial noise (the clean image latents after the
// last step): latents = (1 - mask) * known + mask * latents.
#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"
#include "pipelines/stable_diffusion.h"

namespace stipple::pipelines {

Tensor StableDiffusion::run_inpaint(const GenerationParams& p) const {
  autograd::NoGradGuard no_grad;
  STIPPLE_CHECK(p.mask.defined(), "inpainting needs a mask");
  const bool nine_channels = is_inpainting_model();
  const Observer& observe = p.observe;
  // 1.-2. encode prompt, timesteps (strength 1 uses all of them)
  Run r = prepare(p, /*needs_image=*/true);
  const bool strength_max = p.strength == 1.0;

  // 3. mask and masked image
  std::vector<float> binary = p.mask.to_vector();
  for (float& v : binary) v = v >= 0.5f ? 1.0f : 0.0f;
  const Tensor mask_condition =
      Tensor::from_vector(binary, p.mask.shape()).to(device_);  // [1, 1, H, W]
  const Tensor keep = 1.0f - mask_condition;                       // 1 where the image is kept
  const Tensor masked_image = r.init_image * keep;                 // [1, 3, H, W]
  const int64_t f = vae_scale_factor(), h = r.height / f, w = r.width / f;
  const Tensor mask_latent = resize_nearest(mask_condition, h, w);  // [1, 1, h, w]
  if (observe) {
    observe("init_image", r.init_image);
    observe("mask_condition", mask_condition);
    observe("masked_image", masked_image);
    observe("mask_latent", mask_latent);
  }

  // 4. latents (draw order as diffusers: image posterior, initial noise, masked-image posterior)
  int vae_call = 0;
  Tensor image_latents;  // [B, 4, h, w]
  if (!nine_channels || !strength_max)
    image_latents = repeat_batch(encode_image(r.init_image, *r.noise, vae_call++, observe), r.batch);
  const Shape shape = {r.batch, 4, h, w};
  Tensor noise;
  if (p.latents.defined()) {
    STIPPLE_CHECK(p.latents.shape() == shape, "latents must be ", shape_str(shape), ", got ",
                  p.latents.describe());
    noise = p.latents.contiguous().to(device_);
  } else {
    noise = r.noise->randn(shape, "the initial latents");
  }
  const std::vector<double>& timesteps = r.scheduler->timesteps();
  const Tensor latents =
      strength_max ? noise * static_cast<float>(r.scheduler->init_noise_sigma())
                   : r.scheduler->add_noise(image_latents, noise, timesteps[r.begin_index]);
  const Tensor masked_latents =
      repeat_batch(encode_image(masked_image, *r.noise, vae_call++, observe), r.batch);

  // 5.-6. denoise, decode
  if (nine_channels) {
    const Tensor mask_b = repeat_batch(mask_latent, r.batch);  // [B, 1, h, w]
    const auto extra = [&](const Tensor& input) {
      const int64_t copies = input.size(0) / r.batch;  // 2 with guidance
      return ops::concat({repeat_batch(mask_b, copies), repeat_batch(masked_latents, copies)},
                         1);  // [N, 1 + 4, h, w]
    };
    return denoise_and_decode(r, latents, p, extra, nullptr);
  }
  const auto blend = [&](int i, double, const Tensor& x) {
    Tensor known = image_latents;
    if (i + 1 < static_cast<int>(timesteps.size()))
      known = r.scheduler->add_noise(image_latents, noise, timesteps[i + 1]);
    return known * (1.0f - mask_latent) + x * mask_latent;  // [B, 4, h, w]
  };
  return denoise_and_decode(r, latents, p, nullptr, blend);
}

}  // namespace stipple::pipelines

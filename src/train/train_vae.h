// Training an AutoencoderKL from scratch (latent diffusion's first stage, Rombach et al. 2022,
// sec. 3 and appendix G) on the emoji images: `stipple train-vae`.
//
// One step:
//   x            = the next shuffled minibatch of training images      [B, 3, 64, 64] in [-1, 1]
//   q(z|x)       = encode(x);  z = mean + std * eps                     [B, 4, 64/f, 64/f]
//   x_hat        = decode(z)                                             [B, 3, 64, 64]
//   loss         = |x_hat - x|_1 + w_edge (|dx(x_hat) - dx(x)|_1 + |dy(x_hat) - dy(x)|_1)
//                  + w_kl KL(q(z|x) || N(0, I))        (means over elements)
// The edge term (L1 between horizontal and vertical differences) keeps the emoji's outlines
// sharp without a discriminator. AdamW, linear warm-up then cosine, gradient clipping.
//
// At the end, scaling_factor = 1 / std of the latent means over the training images (the value
// pipelines multiply latents by, as SD's 0.18215), and PSNR/SSIM on the held-out images (never
// trained on) with a reconstruction grid.
//
// On disk (out_dir): vae/config.json + vae/diffusion_pytorch_model.safetensors (the current
// weights, f32; what AutoencoderKL::from_pretrained reads), training_state.safetensors (weights,
// AdamW, data position, RNG, step; the config in its metadata) at every checkpoint, log.csv,
// recon.png, metrics.json. Every file is written atomically; --resume continues exactly.
//
// Leaves out: the adversarial and LPIPS terms of SD's VAE loss (no pretrained VGG here).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/vae.h"
#include "train/distributed.h"

namespace stipple::train {

struct VaeTrainConfig {
  std::string data_dir;  // empty: EmojiData::default_dir()
  std::vector<int64_t> block_out_channels = {32, 64, 128};  // 3 levels: f4 (16x16 latents)
  int64_t layers_per_block = 1;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 16;
  bool mid_attention = true;
  int64_t steps = 6000;
  int batch_size = 32;
  float lr = 4e-4f;
  int64_t warmup = 200;
  float min_lr_ratio = 0.1f;
  float weight_decay = 0.0f;
  float grad_clip = 1.0f;
  float kl_weight = 1e-6f;
  float edge_weight = 0.5f;
  int64_t checkpoint_every = 250;
  int64_t log_every = 25;
  uint64_t seed = 0;
  int64_t limit_images = 0;  // > 0: train on the first N training images only (tests)
  std::string out_dir;

  nlohmann::json to_json() const;
  static VaeTrainConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
  models::AutoencoderKLConfig model_config() const;
};

struct VaeProgress {
  int64_t step = 0, total = 0;
  float loss = 0, rec = 0;  // smoothed
};

struct VaeMetrics {
  double psnr = 0, ssim = 0;  // mean over the held-out images (decode of the posterior mean)
  double train_psnr = 0;      // on a sample of training images, for comparison
  double scaling_factor = 0;
  int64_t heldout_images = 0;
};

// Peak signal-to-noise ratio (dB) of two images in [-1, 1] ([C, H, W] or [N, C, H, W], the mean
// over images), on the 0..255 scale after rounding to 8 bits, as image viewers see them.
double psnr(const Tensor& a, const Tensor& b);
// SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, on each
// channel of 8-bit images, averaged over pixels, channels and images.
double ssim(const Tensor& a, const Tensor& b);

// Trains (or continues from out_dir when `resume`), then writes the model and the metrics. With
// `comm`, data-parallel over its ranks as the diffusion trainer is (train/distributed.h): each
// rank encodes and decodes its shard of every batch, rank 0 alone writes and evaluates (the
// other ranks return empty metrics).
VaeMetrics train_vae(const VaeTrainConfig& config, bool resume,
                     const std::function<void(const VaeProgress&)>& progress = {},
                     const std::function<void(const std::string&)>& message = {},
                     const std::function<bool()>& should_stop = {},
                     Communicator* comm = nullptr);

// PSNR/SSIM of an AutoencoderKL folder on the held-out emoji, and the reconstruction grid.
VaeMetrics evaluate_vae(const models::AutoencoderKL& vae, const std::string& data_dir,
                        const std::string& recon_png);

}  // namespace stipple::train

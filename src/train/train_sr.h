// Training a super-resolution denoiser (SR3, Saharia et al. 2021) with CDM's conditioning
// augmentation (Ho et al. 2021, sec. 3.2): `stipple train-sr`, on Fashion-MNIST (14 -> 28) or
// the emoji (16 -> 64 or 32 -> 64).
//
// One step (pipelines/upscale.h has the sampling side):
//   x0     = the next shuffled minibatch of training images          [B, C, H, W] in [-1, 1]
//   low    = mean over scale x scale blocks of x0                     [B, C, H/s, W/s]
//            blurred (3x3 Gaussian, sigma in [0.4, 0.6]) with probability blur_prob
//   l      ~ U{0, ..., max_noise_level} per image; cond = sr_condition(low, l)   [B, C, H, W]
//   t      ~ U{0, ..., T-1}; x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps
//   loss   = |UNet(concat(x_t, cond), t, class = l) - v|^2            (mean)
//            v = sqrt(acp_t) eps - sqrt(1 - acp_t) x0 (v-prediction, as SR3's successors and the
//            x4 upscaler; an eps-predicting SR UNet is measurably worse than the trivial
//            eps = x_t / sqrt(1 - acp_t) at the top of the schedule, and samples from t = 999
//            then run off into noise), or eps with prediction_type "epsilon"
// AdamW with warm-up and cosine decay, gradient clipping, an EMA of the weights (what is saved).
//
// The UNet is a diffusers UNet2DConditionModel without attention (DownBlock2D / UpBlock2D, no
// mid block), so the output folder loads anywhere a diffusers UNet does.
//
// On disk (out_dir): a model folder (model_index.json, unet/ with the EMA weights, scheduler/,
// low_res_scheduler/) rewritten at every checkpoint, training_state.safetensors (weights, EMA,
// AdamW, data position, RNG, step; the config in its metadata), log.csv, and at the end
// metrics.json and compare.png (held-out images: original, bicubic, SR). --resume continues
// exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "pipelines/upscale.h"

namespace stipple::train {

struct SrTrainConfig {
  std::string data = "fashion-mnist";  // or "emoji"
  std::string data_dir;                // empty: the data set's default folder
  int64_t scale = 2;                   // low-res = high-res / scale
  std::vector<int64_t> block_out_channels = {32, 64, 128};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 8;
  int64_t max_noise_level = 350;  // augmentation levels trained: [0, max]
  int64_t noise_level = 20;       // the folder's default at sampling
  float blur_prob = 0.0f;
  std::string prediction_type = "v_prediction";  // or "epsilon"
  int64_t steps = 10000;
  int batch_size = 32;
  float lr = 2e-4f;
  int64_t warmup = 200;
  float min_lr_ratio = 0.1f;
  float grad_clip = 1.0f;
  float ema_decay = 0.999f;
  int64_t checkpoint_every = 500;
  int64_t log_every = 50;
  int eval_images = 200;  // held-out images scored at the end (0: none)
  int eval_steps = 20;    // sampling steps for them (DPM-Solver++ 2M)
  std::string classifier_dir;  // Fashion-MNIST: a classifier folder for recognition rates
  uint64_t seed = 0;
  int64_t limit_images = 0;  // > 0: the first N training images only (tests)
  std::string out_dir;

  nlohmann::json to_json() const;
  static SrTrainConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
};

struct SrProgress {
  int64_t step = 0, total = 0;
  float loss = 0;  // smoothed
};

// Scores of a super-resolution model on held-out images, next to bicubic upsampling of the same
// low-resolution inputs.
struct SrMetrics {
  int64_t images = 0;
  double psnr_sr = 0, ssim_sr = 0, psnr_bicubic = 0, ssim_bicubic = 0;
  // Fashion-MNIST with a classifier: its accuracy on the originals, the bicubic and the SR images
  // (-1 when not measured).
  double accuracy_real = -1, accuracy_bicubic = -1, accuracy_sr = -1;
  double seconds = 0;  // sampling time
  nlohmann::json to_json() const;
};

// The held-out images of a data set, [N, C, H, W] in [-1, 1], with labels (Fashion-MNIST: the
// test split's first `count`; emoji: the 200 held-out images, labels -1).
struct HeldOut {
  Tensor images, labels;
};
HeldOut sr_heldout_images(const std::string& data, const std::string& data_dir, int64_t count);

// Upscales the held-out images' low-resolution versions with `model` (params: steps, sampler,
// noise level; seed b for the batch starting at image b) and scores them; writes a comparison
// grid when `compare_png` is given (rows: original, low-res, bicubic, SR).
SrMetrics evaluate_sr(const pipelines::SuperResolutionPipeline& model, const HeldOut& heldout,
                      const pipelines::UpscaleParams& params, const std::string& classifier_dir,
                      const std::string& compare_png,
                      const std::function<void(int done, int total)>& progress = {});

// Trains (or continues from out_dir when `resume`), then scores the held-out images.
SrMetrics train_sr(const SrTrainConfig& config, bool resume,
                   const std::function<void(const SrProgress&)>& progress = {},
                   const std::function<void(const std::string&)>& message = {},
                   const std::function<bool()>& should_stop = {});

}  // namespace stipple::train

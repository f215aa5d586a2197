// The denoise loop, written once and shared by every pipeline (text-to-image, img2img,
// inpainting, class-to-image) and by the trainer's sample grids. It walks a scheduler's
// timesteps, asks a model callable for its output, applies classifier-free guidance, and steps.
// The loop never sees the model and the model never sees the scheduler: the callable owns the
// conditioning (text embeddings, class labels) and returns the raw prediction (eps, v or x0, as
// the scheduler's prediction_type says).
#pragma once

#include <cmath>
#include <functional>
#include <limits>

#include "core/rng.h"
#include "core/tensor.h"
#include "pipelines/pipeline_util.h"
#include "schedulers/guidance.h"
#include "schedulers/scheduler.h"

namespace stipple::pipelines {

// model(input [N, C, H, W], t) -> prediction [N, C, H, W]. At a guided step N = 2B and the input's
// halves are in the order of CfgOptions::order; the callable conditions each half. Without
// guidance, and at the steps outside a guidance interval, N = B: the callable conditions it as
// the conditional half.
using DenoiseFn = std::function<Tensor(const Tensor& model_input, double t)>;

// Guidance in a limited interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
// Interval Improves Sample and Distribution Quality in Diffusion Models"): guided only at the
// steps whose noise level sigma_t = sqrt((1 - acp_t) / acp_t) lies in [lo, hi]; the other steps
// take the conditional prediction alone, in one call of B rows. Guidance at high noise mostly
// narrows the layouts drawn (less diversity); limiting it keeps the diversity. Default: every
// step.
struct GuidanceInterval {
  float lo = 0.0f;
  float hi = std::numeric_limits<float>::infinity();
  bool contains(double sigma) const { return sigma >= lo && sigma <= hi; }
  bool limited() const { return lo > 0.0f || std::isfinite(hi); }
};

struct CfgOptions {
  float scale = 1.0f;    // classifier-free guidance scale; <= 1 means one unguided call per step
  float rescale = 0.0f;  // guidance rescale phi (Lin et al. 2023), 0 = off
  guidance::CfgOrder order = guidance::CfgOrder::kUncondFirst;
  GuidanceInterval interval;
  bool enabled() const { return scale > 1.0f; }
};

// Classifier guidance (Dhariwal & Nichol 2021, eq. 14, ADM's form for DDIM): after classifier-
// free guidance, the eps prediction becomes eps - scale * sqrt(1 - acp_t) * grad_x log p(y | x_t)
// at the step's model input x_t (every sampler hands the model x_t in the DDPM scale, and takes
// eps back, so it steers them all). acp_t is interpolated for fractional timesteps (Karras
// grids). Needs an epsilon-predicting model.
struct ClassifierGuidanceOptions {
  float scale = 0.0f;
  // log p(y_b | x_t, t) for the wanted labels: x_t [B, ...] -> [B], differentiable in x_t.
  std::function<Tensor(const Tensor& x_t, double t)> log_prob;
  bool enabled() const { return scale != 0.0f && static_cast<bool>(log_prob); }
};

// Throws, in the caller's terms ("the guidance interval ..."), unless 0 <= lo < hi (hi may be
// infinite) and both are numbers.
void check_guidance_interval(const GuidanceInterval& interval);

struct DenoiseOptions {
  CfgOptions cfg;
  ClassifierGuidanceOptions classifier;
  // img2img and inpainting start part-way: the loop runs timesteps()[begin_index:].
  int begin_index = 0;
  // SDXL's base model with denoising_end stops early: the loop ends before timesteps()[end_index]
  // (-1: runs to the end).
  int end_index = -1;
  // Noise for stochastic samplers (DDPM, Euler ancestral, DDIM with eta > 0).
  Generator* generator = nullptr;
  // After each step (step index i over the whole grid, its timestep t, the new latents): may
  // return replaced latents (inpainting with a 4-channel model re-noises the known region here),
  // or an undefined tensor to keep them.
  std::function<Tensor(int i, double t, const Tensor& latents)> after_step;
  // Progress: steps done and the total (for the progress bar).
  std::function<void(int done, int total)> progress;
  // Live previews: every `preview.every` steps (not after the last), before `progress`, the
  // sampler's current estimate of the first image's clean latents [1, C, H, W] (its x0
  // prediction; the latents themselves where the sampler forms none), through `decode_preview`
  // (the pipeline's latents -> [0, 1] image), to `preview.show`.
  Preview preview;
  std::function<Tensor(const Tensor& latents)> decode_preview;
};

// Runs the reverse process from `latents` (x_T times init_noise_sigma, or the noised image for
// img2img) and returns the final latents. scheduler.set_timesteps() must have been called.
Tensor denoise(schedulers::Scheduler& scheduler, Tensor latents, const DenoiseFn& model,
               const DenoiseOptions& options = {});

}  // namespace stipple::pipelines

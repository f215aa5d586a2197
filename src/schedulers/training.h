// Training helpers built on a noise schedule: the v target, conversions between the three
// prediction parametrisations, and per-timestep loss weights from the signal-to-noise ratio.
// Tensor versions use differentiable ops, so a loss on a converted prediction trains the model.
//
// Notation: acp = alphas_cumprod[t], x_t = sqrt(acp) x0 + sqrt(1 - acp) eps (DDPM eq. 4).
#pragma once

#include <vector>

#include "core/tensor.h"
#include "schedulers/scheduler.h"

namespace stipple::schedulers {

// sqrt(acp[t_b]) and sqrt(1 - acp[t_b]) for a batch of timesteps (i64 [B]), shaped [B, 1, ..., 1]
// to broadcast against a [B, ...] tensor of rank `rank`.
Tensor sqrt_alpha_cumprod(const std::vector<float>& alphas_cumprod, const Tensor& timesteps,
                          int64_t rank);
Tensor sqrt_one_minus_alpha_cumprod(const std::vector<float>& alphas_cumprod,
                                    const Tensor& timesteps, int64_t rank);

// q(x_t | x0) for a batch of timesteps (DDPM eq. 4).
Tensor add_noise(const std::vector<float>& alphas_cumprod, const Tensor& x0, const Tensor& noise,
                 const Tensor& timesteps);
// v = sqrt(acp) eps - sqrt(1 - acp) x0 (Salimans & Ho 2022, sec. 4): diffusers' get_velocity.
Tensor get_velocity(const std::vector<float>& alphas_cumprod, const Tensor& x0, const Tensor& noise,
                    const Tensor& timesteps);

// The target a model with `type` learns for (x0, eps): eps, v or x0.
Tensor prediction_target(PredictionType type, const std::vector<float>& alphas_cumprod,
                         const Tensor& x0, const Tensor& noise, const Tensor& timesteps);
// x0 and eps estimates from a model output of `type` at x_t.
Tensor predicted_x0(PredictionType type, const std::vector<float>& alphas_cumprod,
                    const Tensor& model_output, const Tensor& x_t, const Tensor& timesteps);
Tensor predicted_eps(PredictionType type, const std::vector<float>& alphas_cumprod,
                     const Tensor& model_output, const Tensor& x_t, const Tensor& timesteps);

// SNR(t) = acp / (1 - acp) for each timestep, f32 [B].
Tensor snr(const std::vector<float>& alphas_cumprod, const Tensor& timesteps);
// Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
// Weighting Strategy", eq. 9 and sec. 3.4): min(SNR, gamma) / SNR for eps prediction,
// min(SNR, gamma) / (SNR + 1) for v prediction, min(SNR, gamma) for x0 prediction. f32 [B].
Tensor min_snr_weights(PredictionType type, const std::vector<float>& alphas_cumprod,
                       const Tensor& timesteps, double gamma = 5.0);

}  // namespace stipple::schedulers

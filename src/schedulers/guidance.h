// Guidance, written once for every pipeline: it combines model outputs before the scheduler's
// step, and never sees the model or the scheduler.
//   classifier-free guidance  eps_u + s (eps_c - eps_u)            (Ho & Salimans 2022, eq. 6)
//   guidance rescale          match the std of the conditional output, then mix by phi
//                                                                   (Lin et al. 2023, eqs. 15-16)
//   classifier guidance       eps - s sqrt(1 - acp_t) grad_x log p(y | x_t)
//                                                                   (Dhariwal & Nichol 2021, eq. 14)
// Batch order differs between pipelines: Stable Diffusion stacks [uncond, cond], DiT stacks
// [cond, uncond]; classifier_free_batched takes the order explicitly.
#pragma once

#include <functional>

#include "core/tensor.h"

namespace stipple::guidance {

Tensor classifier_free(const Tensor& uncond, const Tensor& cond, float scale);

enum class CfgOrder { kUncondFirst, kCondFirst };
// out [2B, ...] from one batched model call -> guided [B, ...]. With rescale > 0 the guided
// output is rescaled toward the conditional one's std (rescale_guidance).
Tensor classifier_free_batched(const Tensor& out, float scale, CfgOrder order,
                               float rescale = 0.0f);

// Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", eqs. 15-16),
// as diffusers' rescale_noise_cfg: per sample, guided * std(cond) / std(guided), mixed with the
// unrescaled guided output by phi in [0, 1]. Std is the unbiased one over all but the batch dim.
Tensor rescale_guidance(const Tensor& guided, const Tensor& cond, float phi);

// A differentiable classifier: x_t [B, ...] -> log p(y | x_t) for the wanted labels, [B].
using LogProbFn = std::function<Tensor(const Tensor& x_t)>;

// grad_x sum_b log p(y_b | x_t), computed with autograd even inside a NoGradGuard.
Tensor classifier_gradient(const LogProbFn& log_prob, const Tensor& x_t);

// Dhariwal & Nichol 2021, Alg. 2 / eq. 14: eps_hat = eps - scale * sqrt(1 - acp_t) * grad.
// `sqrt_one_minus_acp` is a scalar or broadcasts against eps ([B, 1, ...] per sample).
Tensor classifier_guided_eps(const Tensor& eps, const Tensor& x_t,
                             const Tensor& sqrt_one_minus_acp, float scale,
                             const LogProbFn& log_prob);

}  // namespace stipple::guidance

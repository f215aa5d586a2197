// Per-element conversions between what a denoiser predicts (eps, v or x0) and the (x0, eps) pair,
// for x_t = sqrt_alpha * x0 + sqrt_beta * eps (alpha = acp_t, beta = 1 - acp_t). Used inside the
// schedulers' loops; training.h has the Tensor versions.
//   eps: x0 = (x - sqrt_beta eps) / sqrt_alpha                         (DDPM eq. 15)
//   v:   x0 = sqrt_alpha x - sqrt_beta v, eps = sqrt_alpha v + sqrt_beta x   (Salimans & Ho 2022,
//        sec. 4 and appendix D)
#pragma once

#include <cmath>

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

struct X0Eps {
  float x0;
  float eps;
};

inline X0Eps to_x0_eps(PredictionType type, float out, float x, float sqrt_alpha, float sqrt_beta) {
  switch (type) {
    case PredictionType::kEpsilon:
      return {(x - sqrt_beta * out) / sqrt_alpha, out};
    case PredictionType::kVPrediction:
      return {sqrt_alpha * x - sqrt_beta * out, sqrt_alpha * out + sqrt_beta * x};
    case PredictionType::kSample:
      return {out, (x - sqrt_alpha * out) / sqrt_beta};
  }
  return {0, 0};
}

// For Euler-type schedulers, x = x0 + sigma eps (the model sees x / sqrt(sigma^2 + 1)): the x0
// estimate, as diffusers' Euler/Heun/LMS compute it.
inline float sigma_x0(PredictionType type, float out, float x, float sigma) {
  switch (type) {
    case PredictionType::kEpsilon:
      return x - sigma * out;
    case PredictionType::kVPrediction: {
      const float s2 = sigma * sigma + 1.0f;
      return out * (-sigma / std::sqrt(s2)) + x / s2;
    }
    case PredictionType::kSample:
      return out;
  }
  return 0;
}

}  // namespace stipple::schedulers

// Training helpers on a noise schedule; see training.h.
#include "schedulers/training.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/ops.h"

namespace stipple::schedulers {

namespace {

std::vector<int64_t> timestep_values(const std::vector<float>& acp, const Tensor& timesteps) {
  std::vector<int64_t> t;
  if (timesteps.dtype() == DType::kI64) {
    t = timesteps.to_vector_i64();
  } else {
    for (float v : timesteps.to_vector()) t.push_back(static_cast<int64_t>(std::lround(v)));
  }
  for (int64_t v : t) {
    STIPPLE_CHECK(v >= 0 && v < static_cast<int64_t>(acp.size()), "timestep ", v,
                  " is outside [0, ", acp.size(), ")");
  }
  return t;
}

Tensor per_sample(const std::vector<float>& acp, const Tensor& timesteps, int64_t rank,
                  bool one_minus) {
  const std::vector<int64_t> t = timestep_values(acp, timesteps);
  std::vector<float> v(t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    const float a = acp[t[i]];
    v[i] = std::sqrt(one_minus ? 1.0f - a : a);
  }
  Shape shape(std::max<int64_t>(rank, 1), 1);
  shape[0] = static_cast<int64_t>(t.size());
  return Tensor::from_vector(v, shape).to(timesteps.device());
}

void check_batch(const Tensor& x, const Tensor& timesteps) {
  STIPPLE_CHECK(x.dim() >= 1 && timesteps.dim() == 1 && x.size(0) == timesteps.size(0),
                "expected one timestep per sample: x ", x.describe(), ", timesteps ",
                timesteps.describe());
}

}  // namespace

Tensor sqrt_alpha_cumprod(const std::vector<float>& acp, const Tensor& timesteps, int64_t rank) {
  return per_sample(acp, timesteps, rank, false);
}

Tensor sqrt_one_minus_alpha_cumprod(const std::vector<float>& acp, const Tensor& timesteps,
                                    int64_t rank) {
  return per_sample(acp, timesteps, rank, true);
}

Tensor add_noise(const std::vector<float>& acp, const Tensor& x0, const Tensor& noise,
                 const Tensor& timesteps) {
  check_batch(x0, timesteps);
  return ops::add(ops::mul(x0, sqrt_alpha_cumprod(acp, timesteps, x0.dim())),
                  ops::mul(noise, sqrt_one_minus_alpha_cumprod(acp, timesteps, x0.dim())));
}

Tensor get_velocity(const std::vector<float>& acp, const Tensor& x0, const Tensor& noise,
                    const Tensor& timesteps) {
  check_batch(x0, timesteps);
  return ops::sub(ops::mul(noise, sqrt_alpha_cumprod(acp, timesteps, x0.dim())),
                  ops::mul(x0, sqrt_one_minus_alpha_cumprod(acp, timesteps, x0.dim())));
}

Tensor prediction_target(PredictionType type, const std::vector<float>& acp, const Tensor& x0,
                         const Tensor& noise, const Tensor& timesteps) {
  switch (type) {
    case PredictionType::kEpsilon:
      return noise;
    case PredictionType::kVPrediction:
      return get_velocity(acp, x0, noise, timesteps);
    case PredictionType::kSample:
      return x0;
  }
  return Tensor();
}

Tensor predicted_x0(PredictionType type, const std::vector<float>& acp, const Tensor& out,
                    const Tensor& x_t, const Tensor& timesteps) {
  check_batch(x_t, timesteps);
  const Tensor sa = sqrt_alpha_cumprod(acp, timesteps, x_t.dim());
  const Tensor sb = sqrt_one_minus_alpha_cumprod(acp, timesteps, x_t.dim());
  switch (type) {
    case PredictionType::kEpsilon:
      return ops::div(ops::sub(x_t, ops::mul(out, sb)), sa);
    case PredictionType::kVPrediction:
      return ops::sub(ops::mul(x_t, sa), ops::mul(out, sb));
    case PredictionType::kSample:
      return out;
  }
  return Tensor();
}

Tensor predicted_eps(PredictionType type, const std::vector<float>& acp, const Tensor& out,
                     const Tensor& x_t, const Tensor& timesteps) {
  check_batch(x_t, timesteps);
  const Tensor sa = sqrt_alpha_cumprod(acp, timesteps, x_t.dim());
  const Tensor sb = sqrt_one_minus_alpha_cumprod(acp, timesteps, x_t.dim());
  switch (type) {
    case PredictionType::kEpsilon:
      return out;
    case PredictionType::kVPrediction:
      return ops::add(ops::mul(out, sa), ops::mul(x_t, sb));
    case PredictionType::kSample:
      return ops::div(ops::sub(x_t, ops::mul(out, sa)), sb);
  }
  return Tensor();
}

Tensor snr(const std::vector<float>& acp, const Tensor& timesteps) {
  const std::vector<int64_t> t = timestep_values(acp, timesteps);
  std::vector<float> v(t.size());
  for (size_t i = 0; i < t.size(); ++i) v[i] = acp[t[i]] / (1.0f - acp[t[i]]);
  return Tensor::from_vector(v, {static_cast<int64_t>(t.size())}).to(timesteps.device());
}

Tensor min_snr_weights(PredictionType type, const std::vector<float>& acp, const Tensor& timesteps,
                       double gamma) {
  const std::vector<float> s = snr(acp, timesteps).to_vector();
  std::vector<float> w(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const float m = std::min(s[i], static_cast<float>(gamma));
    switch (type) {
      case PredictionType::kEpsilon:
        w[i] = m / s[i];
        break;
      case PredictionType::kVPrediction:
        w[i] = m / (s[i] + 1.0f);
        break;
      case PredictionType::kSample:
        w[i] = m;
        break;
    }
  }
  return Tensor::from_vector(w, {static_cast<int64_t>(s.size())}).to(timesteps.device());
}

}  // namespace stipple::schedulers

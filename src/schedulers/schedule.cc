// Noise schedules as pure functions; see schedule.h.
#include "schedulers/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace stipple::schedulers {

std::vector<float> torch_linspace_f32(float start, float end, int n) {
  STIPPLE_CHECK(n >= 1, "linspace needs at least one point, got ", n);
  std::vector<float> out(n);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  // torch's CPU kernel fills 8-wide vectors: each vector starts from its first index's value
  // (counted from the start in the first half, from the end in the second) and adds j * step.
  const float step = (end - start) / static_cast<float>(n - 1);
  const int halfway = n / 2;
  constexpr int kVec = 8;
  int idx = 0;
  for (; idx + kVec <= n; idx += kVec) {
    const float base = idx < halfway ? start + step * static_cast<float>(idx)
                                     : end - step * static_cast<float>(n - idx - 1);
    for (int j = 0; j < kVec; ++j) out[idx + j] = base + static_cast<float>(j) * step;
  }
  for (; idx < n; ++idx) {
    out[idx] = idx < halfway ? start + step * static_cast<float>(idx)
                             : end - step * static_cast<float>(n - idx - 1);
  }
  return out;
}

std::vector<double> np_linspace(double start, double stop, int n) {
  STIPPLE_CHECK(n >= 1, "linspace needs at least one point, got ", n);
  std::vector<double> out(n);
  if (n == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / (n - 1);
  for (int k = 0; k < n; ++k) out[k] = k * step + start;
  out[n - 1] = stop;
  return out;
}

std::vector<float> make_betas(const std::string& beta_schedule, int num_train_timesteps,
                              double beta_start, double beta_end) {
  STIPPLE_CHECK(num_train_timesteps >= 2, "num_train_timesteps must be at least 2, got ",
                num_train_timesteps);
  const int n = num_train_timesteps;
  if (beta_schedule == "linear") {
    return torch_linspace_f32(static_cast<float>(beta_start), static_cast<float>(beta_end), n);
  }
  if (beta_schedule == "scaled_linear") {
    std::vector<float> b = torch_linspace_f32(static_cast<float>(std::sqrt(beta_start)),
                                              static_cast<float>(std::sqrt(beta_end)), n);
    for (float& v : b) v = v * v;
    return b;
  }
  if (beta_schedule == "squaredcos_cap_v2") {
    // Improved DDPM (Nichol & Dhariwal 2021) eq. 17: alpha_bar(t) = cos((t + s)/(1 + s) pi/2)^2,
    // s = 0.008; beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999). Float64, then cast.
    auto alpha_bar = [](double t) {
      const double c = std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2);
      return c * c;
    };
    std::vector<float> b(n);
    for (int i = 0; i < n; ++i) {
      const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
      b[i] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
    }
    return b;
  }
  throw Error(str_cat("unsupported beta_schedule \"", beta_schedule,
                      "\": expected linear, scaled_linear or squaredcos_cap_v2"));
}

std::vector<float> alphas_cumprod_from_betas(const std::vector<float>& betas) {
  // torch.cumprod on the CPU accumulates float32 input in double and stores each prefix as float.
  std::vector<float> out(betas.size());
  double acc = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    acc *= static_cast<double>(1.0f - betas[i]);
    out[i] = static_cast<float>(acc);
  }
  return out;
}

std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  STIPPLE_CHECK(betas.size() >= 2, "rescale_betas_zero_snr needs at least two betas");
  const std::vector<float> acp = alphas_cumprod_from_betas(betas);
  std::vector<float> s(acp.size());
  for (size_t i = 0; i < acp.size(); ++i) s[i] = std::sqrt(acp[i]);
  const float a0 = s.front(), at = s.back();
  const float scale = a0 / (a0 - at);
  for (float& v : s) v = (v - at) * scale;
  std::vector<float> out(s.size());
  float prev = s[0] * s[0];
  out[0] = 1.0f - prev;
  for (size_t i = 1; i < s.size(); ++i) {
    const float bar = s[i] * s[i];
    out[i] = 1.0f - bar / prev;
    prev = bar;
  }
  return out;
}

std::vector<float> sigmas_from_alphas_cumprod(const std::vector<float>& alphas_cumprod) {
  std::vector<float> out(alphas_cumprod.size());
  for (size_t i = 0; i < out.size(); ++i) {
    const float a = alphas_cumprod[i];
    out[i] = std::sqrt((1.0f - a) / a);  // torch's pow(x, 0.5) is sqrt
  }
  return out;
}

TimestepSpacing parse_timestep_spacing(const std::string& value, const std::string& key) {
  if (value == "leading") return TimestepSpacing::kLeading;
  if (value == "trailing") return TimestepSpacing::kTrailing;
  if (value == "linspace") return TimestepSpacing::kLinspace;
  throw Error(
      str_cat("unsupported ", key, " \"", value, "\": expected leading, trailing or linspace"));
}

std::string to_string(TimestepSpacing s) {
  switch (s) {
    case TimestepSpacing::kLeading:
      return "leading";
    case TimestepSpacing::kTrailing:
      return "trailing";
    case TimestepSpacing::kLinspace:
      return "linspace";
  }
  return "?";
}

std::vector<double> make_timesteps(TimestepSpacing spacing, TimestepGrid grid,
                                   int num_train_timesteps, int num_inference_steps,
                                   int steps_offset, int last_timestep) {
  const int T = num_train_timesteps, n = num_inference_steps;
  STIPPLE_CHECK(n >= 1, "num_inference_steps must be at least 1, got ", n);
  STIPPLE_CHECK(n <= T, "num_inference_steps (", n, ") cannot exceed num_train_timesteps (", T,
                ")");
  if (last_timestep < 0) last_timestep = T;
  const bool plus1 = grid == TimestepGrid::kRoundedPlus1;
  std::vector<double> t;
  switch (spacing) {
    case TimestepSpacing::kLinspace: {
      if (plus1) {
        std::vector<double> v = np_linspace(0, last_timestep - 1, n + 1);
        for (int k = n; k >= 1; --k) t.push_back(std::nearbyint(v[k]));
      } else {
        const std::vector<double> v = np_linspace(0, T - 1, n);
        for (int k = n - 1; k >= 0; --k) {
          t.push_back(grid == TimestepGrid::kFloat ? static_cast<double>(static_cast<float>(v[k]))
                                                   : std::nearbyint(v[k]));
        }
      }
      break;
    }
    case TimestepSpacing::kLeading: {
      const int m = plus1 ? n + 1 : n;
      const int ratio = (plus1 ? last_timestep : T) / m;
      for (int k = m - 1; k >= (plus1 ? 1 : 0); --k) {
        t.push_back(static_cast<double>(k) * ratio + steps_offset);
      }
      break;
    }
    case TimestepSpacing::kTrailing: {
      const double ratio = static_cast<double>(T) / n;
      const double start = plus1 ? last_timestep : T;
      const int count = static_cast<int>(std::ceil(start / ratio));  // np.arange(start, 0, -ratio)
      for (int k = 0; k < count; ++k) t.push_back(std::nearbyint(start - k * ratio) - 1);
      break;
    }
  }
  return t;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n, double rho) {
  const std::vector<double> ramp = np_linspace(0, 1, n);
  const double min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> out(n);
  for (int i = 0; i < n; ++i) out[i] = std::pow(max_inv + ramp[i] * (min_inv - max_inv), rho);
  return out;
}

double interp_at(double x, const std::vector<float>& fp) {
  const int n = static_cast<int>(fp.size());
  STIPPLE_ASSERT(n >= 1);
  if (x <= 0) return fp[0];
  if (x >= n - 1) return fp[n - 1];
  const int i = static_cast<int>(std::floor(x));
  const double w = x - i;
  if (w == 0) return fp[i];
  // numpy's formula: slope * (x - xp[i]) + fp[i].
  return (static_cast<double>(fp[i + 1]) - fp[i]) * w + fp[i];
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const int n = static_cast<int>(log_sigmas.size());
  STIPPLE_ASSERT(n >= 2);
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // low_idx: the last index whose log-sigma is <= log_sigma (0 when none), at most n - 2.
  int low = 0;
  for (int i = 0; i < n; ++i)
    if (log_sigma - log_sigmas[i] >= 0) low = i;
  low = std::min(low, n - 2);
  const double lo = log_sigmas[low], hi = log_sigmas[low + 1];
  double w = (lo - log_sigma) / (lo - hi);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * low + w * (low + 1);
}

AlphaSigma sigma_to_alpha_sigma(double sigma) {
  const double alpha = 1 / std::sqrt(sigma * sigma + 1);
  return {alpha, sigma * alpha};
}

}  // namespace stipple::schedulers

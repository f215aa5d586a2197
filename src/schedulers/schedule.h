// Noise schedules as pure functions: betas, alphas_cumprod, timestep grids, Karras sigmas, the
// zero-terminal-SNR rescale, and the sigma <-> timestep interpolation, each computed the way
// diffusers 0.29 computes it (float32 where torch uses float32, float64 where numpy does), so
// that schedulers built on them reproduce diffusers' trajectories.
//
// Leaves out: the "exponential" and "beta" sigma grids, and "log_linear" interpolation.
#pragma once

#include <string>
#include <vector>

namespace stipple::schedulers {

// torch.linspace(start, end, n, dtype=float32): float32 step, the second half counted back from
// the end (torch's CPU kernel).
std::vector<float> torch_linspace_f32(float start, float end, int n);
// np.linspace(start, stop, n): k * step + start in float64, the last value exactly `stop`.
std::vector<double> np_linspace(double start, double stop, int n);

// Betas of a named schedule: "linear" (linspace(b0, b1)), "scaled_linear"
// (linspace(sqrt b0, sqrt b1)^2, Stable Diffusion), "squaredcos_cap_v2" (Nichol & Dhariwal 2021,
// eq. 17, betas capped at 0.999). Throws stipple::Error naming an unknown schedule.
std::vector<float> make_betas(const std::string& beta_schedule, int num_train_timesteps,
                              double beta_start, double beta_end);

// Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
// shifts and scales sqrt(alphas_cumprod) so the last step has zero SNR.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas);

// cumprod(1 - betas) in float32, as torch.
std::vector<float> alphas_cumprod_from_betas(const std::vector<float>& betas);

// sqrt((1 - acp) / acp) in float32: the noise level of each training step in the variance
// exploding parametrisation x = x0 + sigma * eps (Karras et al. 2022, Table 1).
std::vector<float> sigmas_from_alphas_cumprod(const std::vector<float>& alphas_cumprod);

enum class TimestepSpacing { kLeading, kTrailing, kLinspace };
// "leading" / "trailing" / "linspace"; throws naming `key` and the value otherwise.
TimestepSpacing parse_timestep_spacing(const std::string& value,
                                       const std::string& key = "timestep_spacing");
std::string to_string(TimestepSpacing s);

// How a scheduler class turns a spacing into its grid (diffusers differs by class):
//   kRounded      DDIM/DDPM/PNDM: linspace(0, T-1, n).round()
//   kFloat        Euler/Heun/LMS: the same values unrounded, as float32
//   kRoundedPlus1 DPM-Solver/UniPC: linspace(0, last-1, n+1).round()[:-1] (and leading over n+1)
enum class TimestepGrid { kRounded, kFloat, kRoundedPlus1 };

// Descending timesteps (values are integral except for kFloat/linspace). `steps_offset` is used
// only by leading spacing. `last_timestep` is num_train_timesteps unless lambda_min_clipped cuts it
// (DPM-Solver); it only matters for kRoundedPlus1.
std::vector<double> make_timesteps(TimestepSpacing spacing, TimestepGrid grid,
                                   int num_train_timesteps, int num_inference_steps,
                                   int steps_offset, int last_timestep = -1);

// Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n, double rho = 7.0);

// np.interp(x, [0, 1, ..., n-1], fp): piecewise linear in the training timestep, in float64.
double interp_at(double x, const std::vector<float>& fp);

// diffusers' _sigma_to_t: the fractional timestep whose log-sigma (linearly interpolated between
// neighbouring training steps) equals log(sigma). `log_sigmas` are float32 logs of the training
// sigmas, ascending in t.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// Variance-preserving view of a sigma: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t.
struct AlphaSigma {
  double alpha;
  double sigma;
};
AlphaSigma sigma_to_alpha_sigma(double sigma);

}  // namespace stipple::schedulers

// DPM-Solver++(2M) step (Lu et al. 2022, Alg. 2); see dpmsolver_multistep.h.
#include "schedulers/dpmsolver_multistep.h"

#include <cmath>

#include "schedulers/prediction.h"

namespace stipple::schedulers {

void DPMSolverMultistepScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kRoundedPlus1);
  timesteps_ = g.timesteps;
  sigmas_.assign(g.sigmas.begin(), g.sigmas.end());
  sigmas_.push_back(static_cast<float>(final_sigma()));
  num_inference_steps_ = static_cast<int>(timesteps_.size());
  step_index_ = -1;
  model_outputs_.clear();
  lower_order_nums_ = 0;
}

Scheduler::StepResult DPMSolverMultistepScheduler::step_impl(const std::vector<float>& model_output,
                                                             double t,
                                                             const std::vector<float>& sample,
                                                             const Noise&) {
  init_step_index(t);
  const int steps = static_cast<int>(timesteps_.size());
  STIPPLE_CHECK(step_index_ < steps,
                "step called more times than there are timesteps; call set_timesteps again");
  const bool lower_order_final =
      step_index_ == steps - 1 &&
      (config_.euler_at_final || (config_.lower_order_final && steps < 15) ||
       config_.final_sigmas_type == "zero");
  const bool lower_order_second =
      step_index_ == steps - 2 && config_.lower_order_final && steps < 15;

  // Data prediction x0 = (x - sigma_t eps) / alpha_t (the "++" of DPM-Solver++, sec. 4).
  const AlphaSigma s0 = sigma_to_alpha_sigma(sigmas_[step_index_]);
  const float a0 = static_cast<float>(s0.alpha), sg0 = static_cast<float>(s0.sigma);
  const size_t n = sample.size();
  std::vector<float> x0(n);
  for (size_t i = 0; i < n; ++i) {
    x0[i] = to_x0_eps(config_.prediction_type, model_output[i], sample[i], a0, sg0).x0;
  }
  model_outputs_.push_back(x0);
  if (static_cast<int>(model_outputs_.size()) > config_.solver_order) {
    model_outputs_.erase(model_outputs_.begin());
  }

  const AlphaSigma st = sigma_to_alpha_sigma(sigmas_[step_index_ + 1]);
  const double lambda_t = std::log(st.alpha) - std::log(st.sigma);
  const double lambda_s0 = std::log(s0.alpha) - std::log(s0.sigma);
  const double h = lambda_t - lambda_s0;
  const float c_x = static_cast<float>(st.sigma / s0.sigma);
  const float c_d = static_cast<float>(st.alpha * (std::exp(-h) - 1.0));  // alpha_t (e^-h - 1)
  StepResult r;
  r.prev_sample.resize(n);
  r.pred_original_sample = x0;
  const bool first = config_.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final;
  if (first) {
    // Eq. 5 (first order): x_t = sigma_t / sigma_s x_s - alpha_t (e^-h - 1) x0_s.
    for (size_t i = 0; i < n; ++i) r.prev_sample[i] = c_x * sample[i] - c_d * x0[i];
  } else {
    (void)lower_order_second;  // solver_order <= 2: second order is the highest anyway
    // Alg. 2, 2M: D = (1 + 1/(2 r)) m0 - 1/(2 r) m1 with r = h_{i-1} / h_i (midpoint form).
    const AlphaSigma s1 = sigma_to_alpha_sigma(sigmas_[step_index_ - 1]);
    const double lambda_s1 = std::log(s1.alpha) - std::log(s1.sigma);
    const double r0 = (lambda_s0 - lambda_s1) / h;
    const std::vector<float>& m0 = model_outputs_[model_outputs_.size() - 1];
    const std::vector<float>& m1 = model_outputs_[model_outputs_.size() - 2];
    const float inv_r0 = static_cast<float>(1.0 / r0);
    const float c_d1 = config_.solver_type == "heun"
                           ? static_cast<float>(st.alpha * ((std::exp(-h) - 1.0) / h + 1.0))
                           : 0.5f * c_d;
    for (size_t i = 0; i < n; ++i) {
      const float d1 = inv_r0 * (m0[i] - m1[i]);
      r.prev_sample[i] = config_.solver_type == "heun" ? c_x * sample[i] - c_d * m0[i] + c_d1 * d1
                                                       : c_x * sample[i] - c_d * m0[i] - c_d1 * d1;
    }
  }
  if (lower_order_nums_ < config_.solver_order) ++lower_order_nums_;
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers

// Heun step (Karras et al. 2022, Alg. 1, lines 5-8); see heun.h.
#include "schedulers/heun.h"

#include "schedulers/euler.h"
#include "schedulers/prediction.h"

namespace stipple::schedulers {

void HeunDiscreteScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kFloat);
  // timesteps [t0, t1, t1, t2, t2, ...]; sigmas [s0, s1, s1, ..., s_{N-1}, s_{N-1}, final].
  timesteps_.clear();
  sigmas_.clear();
  for (size_t i = 0; i < g.timesteps.size(); ++i) {
    timesteps_.push_back(static_cast<double>(static_cast<float>(g.timesteps[i])));
    if (i > 0) timesteps_.push_back(timesteps_.back());
    sigmas_.push_back(static_cast<float>(g.sigmas[i]));
    if (i > 0) sigmas_.push_back(sigmas_.back());
  }
  sigmas_.push_back(static_cast<float>(final_sigma()));
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  prev_derivative_.clear();
  prev_sample_.clear();
}

Scheduler::StepResult HeunDiscreteScheduler::step_impl(const std::vector<float>& model_output,
                                                       double t, const std::vector<float>& sample,
                                                       const Noise&) {
  init_step_index(t);
  STIPPLE_CHECK(step_index_ + 1 < static_cast<int>(sigmas_.size()),
                "step called more times than there are timesteps; call set_timesteps again");
  const bool first = first_order();
  const float sigma = first ? sigmas_[step_index_] : sigmas_[step_index_ - 1];
  const float sigma_next = first ? sigmas_[step_index_ + 1] : sigmas_[step_index_];
  const float sigma_input = first ? sigma : sigma_next;  // where the model was evaluated
  const size_t n = sample.size();
  StepResult r;
  r.prev_sample.resize(n);
  r.pred_original_sample.resize(n);
  if (first) {
    // Euler stage: d_i = (x_i - D(x_i; sigma_i)) / sigma_i; x' = x_i + (sigma_{i+1} - sigma_i) d_i.
    prev_derivative_.resize(n);
    dt_ = sigma_next - sigma;
    for (size_t i = 0; i < n; ++i) {
      const float x0 = sigma_x0(config_.prediction_type, model_output[i], sample[i], sigma_input);
      r.pred_original_sample[i] = x0;
      prev_derivative_[i] = (sample[i] - x0) / sigma;
      r.prev_sample[i] = sample[i] + prev_derivative_[i] * dt_;
    }
    prev_sample_ = sample;
  } else {
    // Correction: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2.
    for (size_t i = 0; i < n; ++i) {
      const float x0 = sigma_x0(config_.prediction_type, model_output[i], sample[i], sigma_input);
      r.pred_original_sample[i] = x0;
      const float d = ((sample[i] - x0) / sigma_next + prev_derivative_[i]) / 2;
      r.prev_sample[i] = prev_sample_[i] + d * dt_;
    }
    prev_derivative_.clear();
    prev_sample_.clear();
  }
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers

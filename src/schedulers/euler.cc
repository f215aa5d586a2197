// Euler step on the sigma grid (Karras et al. 2022, Alg. 1 line 5, first order); see euler.h.
#include "schedulers/euler.h"

#include <algorithm>
#include <cmath>

#include "schedulers/prediction.h"

namespace stipple::schedulers {

double euler_init_noise_sigma(const std::vector<float>& sigmas, TimestepSpacing spacing) {
  const double m = *std::max_element(sigmas.begin(), sigmas.end());
  if (spacing == TimestepSpacing::kLinspace || spacing == TimestepSpacing::kTrailing) return m;
  return std::sqrt(m * m + 1);
}

double KDiffusionScheduler::init_noise_sigma() const {
  return sigmas_.empty() ? 1.0 : euler_init_noise_sigma(sigmas_, config_.timestep_spacing);
}

Tensor KDiffusionScheduler::scale_model_input(const Tensor& sample, double t) {
  check_ready("scale_model_input");
  init_step_index(t);
  return scale_by_sigma(sample, sigmas_[step_index_]);
}

Tensor scale_by_sigma(const Tensor& sample, double sigma) {
  const float s = static_cast<float>(sigma);
  const float denom = std::sqrt(s * s + 1.0f);
  std::vector<float> v = sample.to_vector();
  for (float& x : v) x /= denom;
  return Tensor::from_vector(v, sample.shape()).to(sample.device());
}

void EulerDiscreteScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kFloat);
  timesteps_ = g.timesteps;
  sigmas_.assign(g.sigmas.begin(), g.sigmas.end());
  sigmas_.push_back(static_cast<float>(final_sigma()));
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
}

Scheduler::StepResult EulerDiscreteScheduler::step_impl(const std::vector<float>& model_output,
                                                        double t, const std::vector<float>& sample,
                                                        const Noise&) {
  init_step_index(t);
  STIPPLE_CHECK(step_index_ + 1 < static_cast<int>(sigmas_.size()),
                "step called more times than there are timesteps; call set_timesteps again");
  const float sigma = sigmas_[step_index_];
  const float dt = sigmas_[step_index_ + 1] - sigma;
  StepResult r;
  r.prev_sample.resize(sample.size());
  r.pred_original_sample.resize(sample.size());
  for (size_t i = 0; i < sample.size(); ++i) {
    // d = (x - D(x; sigma)) / sigma; x_next = x + (sigma_next - sigma) d.
    const float x0 = sigma_x0(config_.prediction_type, model_output[i], sample[i], sigma);
    const float d = (sample[i] - x0) / sigma;
    r.pred_original_sample[i] = x0;
    r.prev_sample[i] = sample[i] + d * dt;
  }
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers

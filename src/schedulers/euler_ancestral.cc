// Euler ancestral step; see euler_ancestral.h.
#include "schedulers/euler_ancestral.h"

#include <cmath>

#include "schedulers/euler.h"
#include "schedulers/prediction.h"

namespace stipple::schedulers {

void EulerAncestralDiscreteScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kFloat);
  timesteps_ = g.timesteps;
  sigmas_.assign(g.sigmas.begin(), g.sigmas.end());
  sigmas_.push_back(0.0f);
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
}

Scheduler::StepResult EulerAncestralDiscreteScheduler::step_impl(
    const std::vector<float>& model_output, double t, const std::vector<float>& sample,
    const Noise& noise) {
  init_step_index(t);
  STIPPLE_CHECK(step_index_ + 1 < static_cast<int>(sigmas_.size()),
                "step called more times than there are timesteps; call set_timesteps again");
  const float sigma = sigmas_[step_index_], sigma_to = sigmas_[step_index_ + 1];
  const float sigma_up =
      std::sqrt(sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma));
  const float sigma_down = std::sqrt(sigma_to * sigma_to - sigma_up * sigma_up);
  const float dt = sigma_down - sigma;
  const std::vector<float> z = noise.draw();
  StepResult r;
  r.prev_sample.resize(sample.size());
  r.pred_original_sample.resize(sample.size());
  for (size_t i = 0; i < sample.size(); ++i) {
    const float x0 = sigma_x0(config_.prediction_type, model_output[i], sample[i], sigma);
    const float d = (sample[i] - x0) / sigma;
    r.pred_original_sample[i] = x0;
    r.prev_sample[i] = sample[i] + d * dt + z[i] * sigma_up;
  }
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers

// Heun's second-order sampler: Karras et al. 2022, Alg. 1 (no churn); diffusers'
// HeunDiscreteScheduler. Every timestep after the first appears twice in timesteps(): the first
// call takes an Euler step to sigma_next, the second re-evaluates the model there and averages
// the two slopes (trapezoidal rule). The last step (to sigma = 0) is a plain Euler step.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class HeunDiscreteScheduler : public KDiffusionScheduler {
 public:
  explicit HeunDiscreteScheduler(SchedulerConfig config) : KDiffusionScheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;
  int order() const override { return 2; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;

 private:
  bool first_order() const { return prev_derivative_.empty(); }
  std::vector<float> prev_derivative_;  // slope of the first stage; empty between timesteps
  std::vector<float> prev_sample_;      // x at the start of the timestep
  float dt_ = 0;
};

}  // namespace stipple::schedulers

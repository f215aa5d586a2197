// Euler ancestral sampler (k-diffusion's sample_euler_ancestral; diffusers'
// EulerAncestralDiscreteScheduler): an Euler step down to sigma_down, then fresh noise of scale
// sigma_up, so that sigma_down^2 + sigma_up^2 = sigma_next^2 (Karras et al. 2022, sec. 4, the
// ancestral variant of Song et al. 2021's reverse SDE).
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class EulerAncestralDiscreteScheduler : public KDiffusionScheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(SchedulerConfig config)
      : KDiffusionScheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;
  bool is_stochastic() const override { return true; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;
};

}  // namespace stipple::schedulers

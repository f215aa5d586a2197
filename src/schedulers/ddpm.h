// DDPM ancestral sampling: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
// (diffusers' DDPMScheduler), on a strided grid of N <= T steps.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class DDPMScheduler : public Scheduler {
 public:
  explicit DDPMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;
  bool is_stochastic() const override { return true; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;
};

}  // namespace stipple::schedulers

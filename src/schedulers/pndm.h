// PNDM in its PLMS form: Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on
// Manifolds" (diffusers' PNDMScheduler with skip_prk_steps = true, as Stable Diffusion 1.x ships
// it). A fourth-order linear multistep combination of past eps (eq. 12) fed to the DDIM-like
// transfer function phi (eq. 11). Warm-up without Runge-Kutta steps: the second timestep is
// visited twice (N+1 model calls); the second visit averages the first two eps and redoes the
// first step (a Heun-like start), then orders 2, 3, 4 follow.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class PNDMScheduler : public Scheduler {
 public:
  explicit PNDMScheduler(SchedulerConfig config);
  void set_timesteps(int num_inference_steps) override;

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;

 private:
  double final_alpha_cumprod_;
  std::vector<std::vector<float>> ets_;  // past model outputs, newest last (at most 4)
  std::vector<float> cur_sample_;
  int counter_ = 0;
};

}  // namespace stipple::schedulers

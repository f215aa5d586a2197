// DPM-Solver++ multistep: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
// Diffusion Probabilistic Models", Alg. 2 (2M; diffusers' DPMSolverMultistepScheduler with
// algorithm_type "dpmsolver++"). Works in log-SNR lambda = log(alpha_t / sigma_t) on data
// predictions x0; the first step (no history yet) and, with lower_order_final or a zero final
// sigma, the last step are first order (= DDIM, eq. 5 of the paper).
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class DPMSolverMultistepScheduler : public SigmaScheduler {
 public:
  explicit DPMSolverMultistepScheduler(SchedulerConfig config)
      : SigmaScheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;
  // One model call per timestep, as diffusers' DPMSolverMultistepScheduler.order = 1 (the
  // solver order is how many past outputs a step uses, not calls per step).
  int order() const override { return 1; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;
  bool variance_preserving() const override { return true; }

 private:
  std::vector<std::vector<float>> model_outputs_;  // x0 predictions, newest last
  int lower_order_nums_ = 0;
};

}  // namespace stipple::schedulers

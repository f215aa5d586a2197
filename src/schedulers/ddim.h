// DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (diffusers'
// DDIMScheduler). eta = 0 is the deterministic sampler; eta = 1 matches DDPM's variance.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class DDIMScheduler : public Scheduler {
 public:
  explicit DDIMScheduler(SchedulerConfig config);
  void set_timesteps(int num_inference_steps) override;
  bool is_stochastic() const override { return config_.eta > 0; }
  void set_eta(double eta) { config_.eta = eta; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;

 private:
  double final_alpha_cumprod_;
};

}  // namespace stipple::schedulers

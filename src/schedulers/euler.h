// Euler sampler on the sigma grid: Karras et al. 2022, "Elucidating the Design Space of
// Diffusion-Based Generative Models", Alg. 1 without the second-order correction and without
// churn (diffusers' EulerDiscreteScheduler with s_churn = 0).
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class EulerDiscreteScheduler : public KDiffusionScheduler {
 public:
  explicit EulerDiscreteScheduler(SchedulerConfig config)
      : KDiffusionScheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;
};

// Shared by the Euler-type schedulers (Euler, Euler ancestral, Heun, LMS): sigma_max for
// linspace/trailing spacing, sqrt(sigma_max^2 + 1) for leading (diffusers' rule).
double euler_init_noise_sigma(const std::vector<float>& sigmas, TimestepSpacing spacing);
// x / sqrt(sigma^2 + 1): the denoiser sees unit-variance inputs (Karras et al. 2022, Table 1,
// c_in, with sigma_data = 1).
Tensor scale_by_sigma(const Tensor& sample, double sigma);

}  // namespace stipple::schedulers

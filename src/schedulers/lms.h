// Linear multistep sampler on the sigma grid (k-diffusion's sample_lms; diffusers'
// LMSDiscreteScheduler): x_{i+1} = x_i + sum_j c_ij d_{i-j}, where c_ij integrates the Lagrange
// basis polynomial through the last `order` sigmas over [sigma_i, sigma_{i+1}] (Adams-Bashforth
// in sigma; Karras et al. 2022 sec. 3 cite it as the classic LMS baseline). Order 4 by default,
// lower while fewer derivatives are known.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class LMSDiscreteScheduler : public KDiffusionScheduler {
 public:
  explicit LMSDiscreteScheduler(SchedulerConfig config, int lms_order = 4)
      : KDiffusionScheduler(std::move(config)), lms_order_(lms_order) {}
  void set_timesteps(int num_inference_steps) override;

  // integral over [sigma_t, sigma_{t+1}] of prod_{k != j} (tau - sigma_{t-k}) / (sigma_{t-j} -
  // sigma_{t-k}), k < order: exact (Gauss-Legendre with enough nodes for the polynomial degree).
  double lms_coefficient(int order, int t, int j) const;

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;

 private:
  int lms_order_;
  std::vector<std::vector<float>> derivatives_;  // oldest first, at most lms_order_
};

}  // namespace stipple::schedulers

// LMS step; see lms.h.
#include "schedulers/lms.h"

#include <cmath>

#include "schedulers/euler.h"
#include "schedulers/prediction.h"

namespace stipple::schedulers {

void LMSDiscreteScheduler::set_timesteps(int num_inference_steps) {
  const SigmaGrid g = sigma_grid(num_inference_steps, TimestepGrid::kFloat);
  timesteps_ = g.timesteps;
  sigmas_.assign(g.sigmas.begin(), g.sigmas.end());
  sigmas_.push_back(static_cast<float>(final_sigma()));
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  derivatives_.clear();
}

double LMSDiscreteScheduler::lms_coefficient(int order, int t, int j) const {
  auto basis = [&](double tau) {
    double prod = 1.0;
    for (int k = 0; k < order; ++k) {
      if (k == j) continue;
      prod *= (tau - sigmas_[t - k]) / (static_cast<double>(sigmas_[t - j]) - sigmas_[t - k]);
    }
    return prod;
  };
  // 4-point Gauss-Legendre integrates polynomials up to degree 7 exactly (ours: degree <= 3).
  static constexpr double kNodes[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                       0.8611363115940526};
  static constexpr double kWeights[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                         0.3478548451374538};
  const double a = sigmas_[t], b = sigmas_[t + 1];
  const double half = (b - a) / 2, mid = (a + b) / 2;
  double sum = 0;
  for (int q = 0; q < 4; ++q) sum += kWeights[q] * basis(mid + half * kNodes[q]);
  return sum * half;
}

Scheduler::StepResult LMSDiscreteScheduler::step_impl(const std::vector<float>& model_output,
                                                      double t, const std::vector<float>& sample,
                                                      const Noise&) {
  init_step_index(t);
  STIPPLE_CHECK(step_index_ + 1 < static_cast<int>(sigmas_.size()),
                "step called more times than there are timesteps; call set_timesteps again");
  const float sigma = sigmas_[step_index_];
  const size_t n = sample.size();
  StepResult r;
  r.pred_original_sample.resize(n);
  std::vector<float> d(n);
  for (size_t i = 0; i < n; ++i) {
    const float x0 = sigma_x0(config_.prediction_type, model_output[i], sample[i], sigma);
    r.pred_original_sample[i] = x0;
    d[i] = (sample[i] - x0) / sigma;
  }
  derivatives_.push_back(std::move(d));
  if (static_cast<int>(derivatives_.size()) > lms_order_) derivatives_.erase(derivatives_.begin());
  const int order = std::min(step_index_ + 1, lms_order_);
  r.prev_sample = sample;
  for (int j = 0; j < order; ++j) {
    // derivatives_ newest last: coefficient j goes with the derivative j steps back.
    const float c = static_cast<float>(lms_coefficient(order, step_index_, j));
    const std::vector<float>& dj = derivatives_[derivatives_.size() - 1 - j];
    for (size_t i = 0; i < n; ++i) r.prev_sample[i] += c * dj[i];
  }
  ++step_index_;
  return r;
}

}  // namespace stipple::schedulers

// PLMS step (Liu et al. 2022, eqs. 11-12); see pndm.h.
#include "schedulers/pndm.h"

#include <cmath>

namespace stipple::schedulers {

PNDMScheduler::PNDMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  STIPPLE_CHECK(config_.skip_prk_steps,
                "PNDMScheduler: only skip_prk_steps = true (PLMS) is supported");
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0 : alphas_cumprod_[0];
}

void PNDMScheduler::set_timesteps(int num_inference_steps) {
  // The base grid ascending, then [t_0 .. t_{N-2}, t_{N-2}, t_{N-1}] reversed: the second
  // timestep is repeated.
  std::vector<double> base =
      make_timesteps(config_.timestep_spacing, TimestepGrid::kRounded, config_.num_train_timesteps,
                     num_inference_steps, config_.steps_offset);
  timesteps_.clear();
  for (size_t i = 0; i < base.size(); ++i) {
    timesteps_.push_back(base[i]);
    if (i == 1) timesteps_.push_back(base[i]);
  }
  if (base.size() == 1) timesteps_.push_back(base[0]);
  num_inference_steps_ = num_inference_steps;
  ets_.clear();
  cur_sample_.clear();
  counter_ = 0;
}

Scheduler::StepResult PNDMScheduler::step_impl(const std::vector<float>& model_output, double t,
                                               const std::vector<float>& sample_in, const Noise&) {
  const int stride = config_.num_train_timesteps / num_inference_steps_;
  double timestep = t, prev_t = t - stride;
  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output);
  } else {
    prev_t = t;
    timestep = t + stride;
  }
  const size_t n = sample_in.size();
  std::vector<float> e(n);
  const std::vector<float>* sample = &sample_in;
  const size_t k = ets_.size();
  if (k == 1 && counter_ == 0) {
    e = model_output;
    cur_sample_ = sample_in;
  } else if (k == 1 && counter_ == 1) {
    for (size_t i = 0; i < n; ++i) e[i] = (model_output[i] + ets_[0][i]) / 2;
    sample = &cur_sample_;
  } else if (k == 2) {
    for (size_t i = 0; i < n; ++i) e[i] = (3 * ets_[1][i] - ets_[0][i]) / 2;
  } else if (k == 3) {
    for (size_t i = 0; i < n; ++i) e[i] = (23 * ets_[2][i] - 16 * ets_[1][i] + 5 * ets_[0][i]) / 12;
  } else {
    // Eq. 12: e' = (55 e_t - 59 e_{t-1} + 37 e_{t-2} - 9 e_{t-3}) / 24.
    for (size_t i = 0; i < n; ++i) {
      e[i] = (1.0f / 24) *
             (55 * ets_[k - 1][i] - 59 * ets_[k - 2][i] + 37 * ets_[k - 3][i] - 9 * ets_[k - 4][i]);
    }
  }
  // Eq. 11, the transfer phi(x_t, e, t, t - delta):
  // x_prev = sqrt(a_prev / a_t) x_t - (a_prev - a_t) e / (a_t sqrt(1 - a_prev) +
  //          sqrt(a_t (1 - a_t) a_prev)).
  const float a_t = static_cast<float>(alpha_cumprod_at(timestep));
  const float a_prev =
      static_cast<float>(prev_t >= 0 ? alpha_cumprod_at(prev_t) : final_alpha_cumprod_);
  const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  const float sample_coeff = std::sqrt(a_prev / a_t);
  const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
  const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
  StepResult r;
  r.prev_sample.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float x = (*sample)[i];
    float eps = e[i];
    if (config_.prediction_type == PredictionType::kVPrediction) eps = sa * eps + sb * x;
    STIPPLE_CHECK(config_.prediction_type != PredictionType::kSample,
                  "PNDMScheduler does not support prediction_type \"sample\"");
    r.prev_sample[i] = sample_coeff * x - (a_prev - a_t) * eps / denom;
  }
  if (counter_ == 1) cur_sample_.clear();
  ++counter_;
  return r;
}

}  // namespace stipple::schedulers

// DDPM step: the posterior q(x_{t-1} | x_t, x0_hat) of Ho et al. 2020, eqs. 6-7; see ddpm.h.
#include "schedulers/ddpm.h"

#include <algorithm>
#include <cmath>

#include "schedulers/prediction.h"

namespace stipple::schedulers {

void DDPMScheduler::set_timesteps(int num_inference_steps) {
  timesteps_ =
      make_timesteps(config_.timestep_spacing, TimestepGrid::kRounded, config_.num_train_timesteps,
                     num_inference_steps, config_.steps_offset);
  num_inference_steps_ = num_inference_steps;
}

Scheduler::StepResult DDPMScheduler::step_impl(const std::vector<float>& model_output, double t,
                                               const std::vector<float>& sample,
                                               const Noise& noise) {
  const double prev_t = t - config_.num_train_timesteps / num_inference_steps_;
  const float a_t = static_cast<float>(alpha_cumprod_at(t));
  const float a_prev = prev_t >= 0 ? static_cast<float>(alpha_cumprod_at(prev_t)) : 1.0f;
  const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  const float cur_alpha = a_t / a_prev, cur_beta = 1.0f - cur_alpha;
  // Eq. 7: mu = sqrt(a_prev) beta_t / (1 - a_t) x0 + sqrt(alpha_t) (1 - a_prev) / (1 - a_t) x_t.
  const float c_x0 = std::sqrt(a_prev) * cur_beta / b_t;
  const float c_xt = std::sqrt(cur_alpha) * b_prev / b_t;
  // Eq. 7's beta_tilde (fixed_small), its log form, or beta_t itself (fixed_large).
  float stddev = 0.0f;
  if (t > 0) {
    const float small = std::max(b_prev / b_t * cur_beta, 1e-20f);
    if (config_.variance_type == "fixed_large") {
      stddev = std::sqrt(cur_beta);
    } else if (config_.variance_type == "fixed_small_log") {
      stddev = std::exp(0.5f * std::log(small));
    } else {
      stddev = std::sqrt(small);
    }
  }
  const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
  const float clip = static_cast<float>(config_.clip_sample_range);
  std::vector<float> z;
  if (t > 0) z = noise.draw();
  StepResult r;
  r.prev_sample.resize(sample.size());
  r.pred_original_sample.resize(sample.size());
  for (size_t i = 0; i < sample.size(); ++i) {
    float x0 = to_x0_eps(config_.prediction_type, model_output[i], sample[i], sa, sb).x0;
    if (config_.clip_sample) x0 = std::clamp(x0, -clip, clip);
    r.pred_original_sample[i] = x0;
    float prev = c_x0 * x0 + c_xt * sample[i];
    if (t > 0) prev += stddev * z[i];
    r.prev_sample[i] = prev;
  }
  return r;
}

}  // namespace stipple::schedulers

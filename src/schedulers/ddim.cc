// DDIM sampling step (Song et al. 2021, eq. 12); see ddim.h.
#include "schedulers/ddim.h"

#include <algorithm>
#include <cmath>

#include "schedulers/prediction.h"

namespace stipple::schedulers {

DDIMScheduler::DDIMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  // The alpha "before" step 0: 1 (the clean image) or, as SD ships it, acp[0].
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0 : alphas_cumprod_[0];
}

void DDIMScheduler::set_timesteps(int num_inference_steps) {
  timesteps_ =
      make_timesteps(config_.timestep_spacing, TimestepGrid::kRounded, config_.num_train_timesteps,
                     num_inference_steps, config_.steps_offset);
  num_inference_steps_ = num_inference_steps;
}

Scheduler::StepResult DDIMScheduler::step_impl(const std::vector<float>& model_output, double t,
                                               const std::vector<float>& sample,
                                               const Noise& noise) {
  // diffusers steps back by T/N whatever the spacing.
  const double prev_t = t - config_.num_train_timesteps / num_inference_steps_;
  const float a_t = static_cast<float>(alpha_cumprod_at(t));
  const float a_prev =
      static_cast<float>(prev_t >= 0 ? alpha_cumprod_at(prev_t) : final_alpha_cumprod_);
  const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
  // sigma_t(eta) of eq. 16: eta * sqrt((1 - a_prev)/(1 - a_t)) * sqrt(1 - a_t / a_prev).
  const float variance = (b_prev / b_t) * (1.0f - a_t / a_prev);
  const float std_dev = static_cast<float>(config_.eta) * std::sqrt(variance);
  const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
  const float sa_prev = std::sqrt(a_prev);
  const float dir_coef = std::sqrt(std::max(0.0f, 1.0f - a_prev - std_dev * std_dev));
  const float clip = static_cast<float>(config_.clip_sample_range);

  const size_t n = sample.size();
  StepResult r;
  r.prev_sample.resize(n);
  r.pred_original_sample.resize(n);
  std::vector<float> z;
  if (config_.eta > 0) z = noise.draw();
  for (size_t i = 0; i < n; ++i) {
    // Eq. 12: x_{t-1} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z.
    X0Eps p = to_x0_eps(config_.prediction_type, model_output[i], sample[i], sa, sb);
    if (config_.clip_sample) p.x0 = std::clamp(p.x0, -clip, clip);
    r.pred_original_sample[i] = p.x0;
    float prev = sa_prev * p.x0 + dir_coef * p.eps;
    if (config_.eta > 0) prev += std_dev * z[i];
    r.prev_sample[i] = prev;
  }
  return r;
}

}  // namespace stipple::schedulers

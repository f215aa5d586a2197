#include "pipelines/denoise.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "core/memory_plan.h"
#include "ops/ops.h"
#include "schedulers/schedule.h"

namespace stipple::pipelines {

void check_guidance_interval(const GuidanceInterval& interval) {
  const float lo = interval.lo, hi = interval.hi;
  STIPPLE_CHECK_KIND(!std::isnan(lo) && !std::isnan(hi) && std::isfinite(lo) && lo >= 0.0f &&
                         hi > lo,
                     kInvalidArgument, "the guidance interval [", lo, ", ", hi,
                     "] must have 0 <= low < high (noise levels sigma = sqrt((1 - acp) / acp); "
                     "\"inf\" for no upper end)");
}

Tensor denoise(schedulers::Scheduler& scheduler, Tensor latents, const DenoiseFn& model,
               const DenoiseOptions& options) {
  const std::vector<double> timesteps = scheduler.timesteps();
  STIPPLE_CHECK(!timesteps.empty(), "denoise: call scheduler.set_timesteps(n) first");
  STIPPLE_CHECK(options.begin_index >= 0 &&
                    options.begin_index < static_cast<int>(timesteps.size()),
                "denoise: begin index ", options.begin_index, " outside the ", timesteps.size(),
                " timesteps");
  STIPPLE_CHECK(latents.dim() >= 2, "denoise: latents must be batched, got ", latents.describe());
  const int end = options.end_index < 0 ? static_cast<int>(timesteps.size()) : options.end_index;
  STIPPLE_CHECK(end > options.begin_index && end <= static_cast<int>(timesteps.size()),
                "denoise: end index ", options.end_index, " leaves no step after begin index ",
                options.begin_index, " of ", timesteps.size(), " timesteps");
  STIPPLE_CHECK(!options.classifier.enabled() ||
                    scheduler.config().prediction_type == schedulers::PredictionType::kEpsilon,
                "classifier guidance needs a model that predicts the noise (epsilon); this one "
                "predicts ", schedulers::to_string(scheduler.config().prediction_type));
  autograd::NoGradGuard no_grad;
  // Every call of the model allocates the same activations: laid out in one arena after the
  // first call (core/memory_plan.h), released when the loop ends; one plan per batch size (a
  // guidance interval mixes guided steps of 2B rows with steps of B).
  MemoryPlan plan, single_plan;
  const int total = end - options.begin_index;
  for (int i = options.begin_index; i < end; ++i) {
    const double t = timesteps[i];
    // 1. scale the input (Euler-type samplers) and, with guidance, double the batch
    const Tensor x_t = scheduler.scale_model_input(latents, t);  // [B, C, H, W]
    bool guided = options.cfg.enabled();
    if (guided && options.cfg.interval.limited()) {
      const double a = schedulers::interp_at(t, scheduler.alphas_cumprod());
      guided = options.cfg.interval.contains(std::sqrt((1.0 - a) / a));
    }
    Tensor input = guided ? ops::concat({x_t, x_t}, 0) : x_t;  // [2B or B, ...]
    // 2. the model's prediction, guided
    Tensor out;
    {
      MemoryPlan::Scope scope(guided || !options.cfg.enabled() ? plan : single_plan);
      out = model(input, t);
    }
    STIPPLE_CHECK(out.shape() == input.shape(), "denoise: the model returned ", out.describe(),
                  " for an input of ", input.describe());
    if (guided)
      out = guidance::classifier_free_batched(out, options.cfg.scale, options.cfg.order,
                                              options.cfg.rescale);  // [B, C, H, W]
    if (options.classifier.enabled()) {
      const double a = schedulers::interp_at(t, scheduler.alphas_cumprod());
      const Tensor sigma =
          Tensor::full({1}, static_cast<float>(std::sqrt(1.0 - a))).to(out.device());
      out = guidance::classifier_guided_eps(
          out, x_t, sigma, options.classifier.scale,
          [&](const Tensor& x) { return options.classifier.log_prob(x, t); });  // [B, C, H, W]
    }
    // 3. one reverse step
    schedulers::SchedulerOutput stepped = scheduler.step(out, t, latents, options.generator);
    latents = stepped.prev_sample;
    if (options.after_step) {
      Tensor replaced = options.after_step(i, t, latents);
      if (replaced.defined()) latents = replaced;
    }
    const int done = i - options.begin_index + 1;
    if (options.preview.on() && done % options.preview.every == 0 && done < total) {
      const Tensor estimate = (stepped.pred_original_sample.defined()
                                   ? stepped.pred_original_sample
                                   : latents).narrow(0, 0, 1);
      options.preview.show(options.decode_preview ? options.decode_preview(estimate) : estimate);
    }
    if (options.progress) options.progress(done, total);
  }
  return latents;
}

}  // namespace stipple::pipelines

// UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
// Diffusion Models" (diffusers' UniPCMultistepScheduler). Each step first corrects the sample
// it was handed with the new model output (UniC, Alg. 1 / eq. 8), then predicts the next one
// (UniP, Alg. 2), both with B(h) = e^h - 1 ("bh2") or h ("bh1"), on data predictions when
// predict_x0 (the default). Orders warm up from 1 and drop at the end with lower_order_final.
#pragma once

#include "schedulers/scheduler.h"

namespace stipple::schedulers {

class UniPCMultistepScheduler : public SigmaScheduler {
 public:
  explicit UniPCMultistepScheduler(SchedulerConfig config) : SigmaScheduler(std::move(config)) {}
  void set_timesteps(int num_inference_steps) override;
  int order() const override { return 1; }

 protected:
  StepResult step_impl(const std::vector<float>& model_output, double t,
                       const std::vector<float>& sample, const Noise& noise) override;
  bool variance_preserving() const override { return true; }

 private:
  double lambda_at(int index) const;
  // UniP-p (predictor) from step_index_ to step_index_ + 1; uses model_outputs_.
  std::vector<float> predict(const std::vector<float>& x, int order) const;
  // UniC-p (corrector) of this_sample at step_index_ with the new output model_t.
  std::vector<float> correct(const std::vector<float>& model_t, const std::vector<float>& last,
                             const std::vector<float>& this_sample, int order) const;

  std::vector<std::vector<float>> model_outputs_;  // converted outputs, newest last
  std::vector<float> last_sample_;
  int lower_order_nums_ = 0;
  int this_order_ = 0;
};

}  // namespace stipple::schedulers

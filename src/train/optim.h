// Optimisers for training: AdamW and SGD (as torch.optim), gradient-norm clipping, and an
// exponential moving average of the weights (as diffusers' EMAModel).
//
// Parameters are leaf tensors (f32, contiguous) whose .grad() backward() filled. step() updates
// them in place under NoGradGuard; a parameter without a gradient is skipped. Every piece of state
// is exposed as a name -> Tensor map (state_dict / load_state_dict) so a checkpoint can save and
// resume it exactly; the keys use the parameter's index in the list given to the constructor
// ("exp_avg.3"), so resume with the parameters in the same order.
//
// Leaves out: parameter groups (one lr and hyper-parameter set per optimiser), amsgrad, and
// per-parameter step counts (one shared count; torch's agree with it when every parameter gets a
// gradient at every step).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple::train {

struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 1e-2f;  // decoupled: p <- p (1 - lr wd) before the Adam update
};

// torch.optim.AdamW (Loshchilov & Hutter 2019, Alg. 2) with bias correction. The per-parameter
// update is the kernel table's adamw_step.
class AdamW {
 public:
  AdamW(std::vector<Tensor> params, const AdamWConfig& config = {});

  void step();       // one update of every parameter that has a gradient
  void zero_grad();  // drops every parameter's gradient

  float lr() const { return config_.lr; }
  void set_lr(float lr) { config_.lr = lr; }  // for learning-rate schedules, before step()
  const AdamWConfig& config() const { return config_; }
  int64_t step_count() const { return step_; }
  const std::vector<Tensor>& params() const { return params_; }

  // "step" (i64 0-d), "exp_avg.{i}" and "exp_avg_sq.{i}" for every parameter i, on the CPU.
  std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict() (copies the values); checks every key and shape.
  void load_state_dict(const std::map<std::string, Tensor>& state);
  // Moves the moments to `device`, where the parameters have gone (nn::Module::to).
  void to(Device device);

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> exp_avg_;     // m, like each parameter
  std::vector<Tensor> exp_avg_sq_;  // v
  AdamWConfig config_;
  int64_t step_ = 0;
};

struct SgdConfig {
  float lr = 1e-2f;
  float momentum = 0.0f;
  float dampening = 0.0f;
  float weight_decay = 0.0f;  // L2: g <- g + wd p (coupled, as torch.optim.SGD)
  bool nesterov = false;
};

// torch.optim.SGD: g <- g + wd p; b <- g on the first step, else b <- mu b + (1 - dampening) g;
// g <- g + mu b (nesterov) or b; p <- p - lr g.
class SGD {
 public:
  SGD(std::vector<Tensor> params, const SgdConfig& config = {});

  void step();
  void zero_grad();

  float lr() const { return config_.lr; }
  void set_lr(float lr) { config_.lr = lr; }
  const SgdConfig& config() const { return config_; }
  int64_t step_count() const { return step_; }

  // "step" (i64 0-d) and "momentum_buffer.{i}" for every parameter with a buffer.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> momentum_;  // undefined until the parameter's first step with momentum
  SgdConfig config_;
  int64_t step_ = 0;
};

// The learning rate at optimizer step `step` (0-based): linear warm-up over `warmup` steps to
// `lr`, then cosine decay to min_lr_ratio * lr at `steps` (and that value after).
float warmup_cosine_lr(float lr, int64_t warmup, int64_t steps, float min_lr_ratio, int64_t step);

// torch.nn.utils.clip_grad_norm_: the L2 norm of all gradients together; when it exceeds
// max_norm, every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm before
// clipping. Parameters without a gradient are ignored.
float clip_grad_norm(const std::vector<Tensor>& params, float max_norm);

struct EmaConfig {
  float decay = 0.9999f;  // the largest decay used
  float min_decay = 0.0f;
  int64_t update_after_step = 0;  // shadow = param (decay 0) until then
  // Warm-up of the decay, as diffusers' EMAModel:
  //   kSteps  decay_t = min(decay, (1 + t) / (10 + t))       (diffusers' default)
  //   kPower  decay_t = min(decay, 1 - (1 + t / inv_gamma)^-power)  (use_ema_warmup=True)
  //   kNone   decay_t = decay
  // where t = step - update_after_step - 1, and decay_t = 0 while t <= 0.
  enum class Warmup { kNone, kSteps, kPower };
  Warmup warmup = Warmup::kSteps;
  float inv_gamma = 1.0f;
  float power = 2.0f / 3.0f;
};

// Exponential moving average of parameters (diffusers' EMAModel): shadow copies updated after
// each optimiser step with shadow <- shadow - (1 - decay_t) (shadow - param). Parameters that do
// not require grad are copied as they are.
class Ema {
 public:
  Ema(const std::vector<Tensor>& params, const EmaConfig& config = {});

  void step(const std::vector<Tensor>& params);  // call after the optimiser's step()
  float current_decay() const;                   // the decay the next step() would use
  // Writes the averaged weights into `params` (for evaluation or saving).
  void copy_to(const std::vector<Tensor>& params) const;
  // store() keeps a copy of `params`, restore() writes it back (evaluate with EMA weights, then
  // continue training with the raw ones).
  void store(const std::vector<Tensor>& params);
  void restore(const std::vector<Tensor>& params);

  const std::vector<Tensor>& shadow_params() const { return shadow_; }
  int64_t optimization_step() const { return optimization_step_; }
  // Restarts the average at `params` with the warm-up already behind it: the next step() uses
  // the full decay (for weights that are an average already, as a warm start's).
  void restart_at_full_decay(const std::vector<Tensor>& params);

  // "optimization_step" (i64 0-d) and "shadow.{i}", on the CPU.
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);
  // Moves the averages (and a store()d copy) to `device`, where the parameters have gone.
  void to(Device device);

 private:
  float decay_at(int64_t optimization_step) const;

  std::vector<Tensor> shadow_;
  std::vector<Tensor> stored_;
  EmaConfig config_;
  int64_t optimization_step_ = 0;
};

}  // namespace stipple::train

// AdamW, SGD, gradient clipping and EMA (see optim.h). AdamW's per-element update is the kernel
// table's adamw_step; SGD and EMA are short loops here.
#include "train/optim.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "autograd/grad_mode.h"
#include "ops/kernels.h"
#include "ops/op_util.h"

namespace stipple::train {
namespace {

void check_param(const Tensor& p, size_t i, const char* who) {
  STIPPLE_CHECK(p.defined(), who, ": parameter ", i, " is undefined");
  STIPPLE_CHECK(p.dtype() == DType::kF32 && p.is_contiguous() && p.channel_block() == 0, who,
                ": parameter ", i, " is ", p.describe(),
                "; parameters must be f32 and plain contiguous (convert them before training)");
}

// The gradient of `p` as f32 contiguous, or an undefined tensor when it has none.
Tensor grad_of(const Tensor& p, size_t i, const char* who) {
  Tensor g = p.grad();
  if (!g.defined()) return g;
  STIPPLE_CHECK(g.shape() == p.shape(), who, ": the gradient of parameter ", i, " is ",
                g.describe(), " but the parameter is ", p.describe());
  return ops::as_f32_contiguous(g);
}

// f32 zeros shaped like p, on p's device.
Tensor zeros_like(const Tensor& p) { return Tensor::zeros(p.shape(), DType::kF32).to(p.device()); }

void check_like(const Tensor& dst, const Tensor& src, const std::string& what) {
  STIPPLE_CHECK(src.defined(), "load_state_dict: ", what, " is undefined");
  STIPPLE_CHECK(is_floating(src.dtype()), "load_state_dict: ", what, " is ", src.describe(),
                "; expected floating values");
  STIPPLE_CHECK(src.shape() == dst.shape(), "load_state_dict: ", what, " is ", src.describe(),
                " but the parameter is ", dst.describe(),
                " (was the checkpoint saved for another model or parameter order?)");
}

// dst (f32 contiguous) <- src (any float tensor of the same shape, on any device); bumps dst's
// version (in place: drops caches of the old values, core/storage.h).
void copy_values(const Tensor& dst, const Tensor& src, const std::string& what) {
  check_like(dst, src, what);
  ops::assign(dst, src);
}

// A copy of `t` on the CPU (state dicts are saved from there).
Tensor host_copy(const Tensor& t) { return t.device() == Device::kCPU ? t.clone() : t.to(Device::kCPU); }

const Tensor& find(const std::map<std::string, Tensor>& state, const std::string& key) {
  const auto it = state.find(key);
  STIPPLE_CHECK(it != state.end(), "load_state_dict: the state has no \"", key,
                "\" (it was saved by another optimiser or for fewer parameters)");
  return it->second;
}

int64_t read_count(const std::map<std::string, Tensor>& state, const std::string& key) {
  const Tensor& t = find(state, key);
  STIPPLE_CHECK(t.numel() == 1, "load_state_dict: \"", key, "\" must hold one value, got ",
                t.describe());
  return t.dtype() == DType::kI64 ? t.to_vector_i64()[0]
                                  : static_cast<int64_t>(std::llround(t.to_vector_f64()[0]));
}

Tensor count_tensor(int64_t n) { return Tensor::from_vector_i64({n}, Shape{}); }

}  // namespace

// ---------------- AdamW ----------------

AdamW::AdamW(std::vector<Tensor> params, const AdamWConfig& config)
    : params_(std::move(params)), config_(config) {
  STIPPLE_CHECK(config.lr >= 0 && config.eps >= 0 && config.weight_decay >= 0,
                "AdamW: lr, eps and weight_decay must be non-negative");
  STIPPLE_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
                "AdamW: betas must be in [0, 1), got ", config.beta1, ", ", config.beta2);
  for (size_t i = 0; i < params_.size(); ++i) {
    check_param(params_[i], i, "AdamW");
    exp_avg_.push_back(zeros_like(params_[i]));
    exp_avg_sq_.push_back(zeros_like(params_[i]));
  }
}

void AdamW::step() {
  autograd::NoGradGuard no_grad;
  ++step_;
  const AdamWParams hp{config_.lr,  config_.beta1,        config_.beta2,
                       config_.eps, config_.weight_decay, step_};
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = grad_of(params_[i], i, "AdamW");
    if (!g.defined()) continue;
    const KernelTable& k = kernels_for(same_device("AdamW", params_[i], g, exp_avg_[i]));
    k.adamw_step(params_[i], g, exp_avg_[i], exp_avg_sq_[i], hp);
    params_[i].storage()->bump_version();  // in place: see core/storage.h
  }
}

void AdamW::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

std::map<std::string, Tensor> AdamW::state_dict() const {
  std::map<std::string, Tensor> s;
  s["step"] = count_tensor(step_);
  for (size_t i = 0; i < params_.size(); ++i) {
    s["exp_avg." + std::to_string(i)] = host_copy(exp_avg_[i]);
    s["exp_avg_sq." + std::to_string(i)] = host_copy(exp_avg_sq_[i]);
  }
  return s;
}

void AdamW::load_state_dict(const std::map<std::string, Tensor>& state) {
  const int64_t step = read_count(state, "step");
  STIPPLE_CHECK(step >= 0, "load_state_dict: negative step ", step);
  for (size_t i = 0; i < params_.size(); ++i) {  // check everything before changing anything
    const std::string m = "exp_avg." + std::to_string(i), v = "exp_avg_sq." + std::to_string(i);
    check_like(exp_avg_[i], find(state, m), m);
    check_like(exp_avg_sq_[i], find(state, v), v);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string m = "exp_avg." + std::to_string(i), v = "exp_avg_sq." + std::to_string(i);
    copy_values(exp_avg_[i], find(state, m), m);
    copy_values(exp_avg_sq_[i], find(state, v), v);
  }
  step_ = step;
}

void AdamW::to(Device device) {
  for (Tensor& m : exp_avg_) m = m.to(device);
  for (Tensor& v : exp_avg_sq_) v = v.to(device);
}

// ---------------- SGD ----------------

SGD::SGD(std::vector<Tensor> params, const SgdConfig& config)
    : params_(std::move(params)), momentum_(params_.size()), config_(config) {
  STIPPLE_CHECK(config.lr >= 0 && config.momentum >= 0 && config.weight_decay >= 0,
                "SGD: lr, momentum and weight_decay must be non-negative");
  STIPPLE_CHECK(!config.nesterov || (config.momentum > 0 && config.dampening == 0),
                "SGD: nesterov needs momentum > 0 and dampening 0");
  for (size_t i = 0; i < params_.size(); ++i) {
    check_param(params_[i], i, "SGD");
    STIPPLE_CHECK_KIND(params_[i].device() == Device::kCPU, kUnsupported, "SGD: parameter ", i,
                       " is on ", device_name(params_[i].device()),
                       "; SGD runs on the CPU only (AdamW runs on every device)");
  }
}

void SGD::step() {
  autograd::NoGradGuard no_grad;
  ++step_;
  const float lr = config_.lr, mu = config_.momentum, wd = config_.weight_decay;
  const float damp = 1.0f - config_.dampening;
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor g = grad_of(params_[i], i, "SGD");
    if (!g.defined()) continue;
    float* p = params_[i].data<float>();
    const float* pg = g.data<float>();
    const int64_t n = params_[i].numel();
    float* buf = nullptr;
    bool first = false;
    if (mu != 0.0f) {
      if (!momentum_[i].defined()) {
        momentum_[i] = zeros_like(params_[i]);
        first = true;
      }
      buf = momentum_[i].data<float>();
    }
    for (int64_t j = 0; j < n; ++j) {
      float d = pg[j];
      if (wd != 0.0f) d = d + wd * p[j];
      if (buf != nullptr) {
        buf[j] = first ? d : mu * buf[j] + damp * d;
        d = config_.nesterov ? d + mu * buf[j] : buf[j];
      }
      p[j] = p[j] - lr * d;
    }
    params_[i].storage()->bump_version();  // in place: see core/storage.h
  }
}

void SGD::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

std::map<std::string, Tensor> SGD::state_dict() const {
  std::map<std::string, Tensor> s;
  s["step"] = count_tensor(step_);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (momentum_[i].defined()) s["momentum_buffer." + std::to_string(i)] = momentum_[i].clone();
  }
  return s;
}

void SGD::load_state_dict(const std::map<std::string, Tensor>& state) {
  const int64_t step = read_count(state, "step");
  std::vector<Tensor> momentum(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string key = "momentum_buffer." + std::to_string(i);
    if (!state.count(key)) continue;
    momentum[i] = zeros_like(params_[i]);
    copy_values(momentum[i], state.at(key), key);
  }
  momentum_ = std::move(momentum);
  step_ = step;
}

// ---------------- gradient clipping ----------------

float warmup_cosine_lr(float lr, int64_t warmup, int64_t steps, float min_lr_ratio, int64_t step) {
  if (warmup > 0 && step < warmup)
    return lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const int64_t span = std::max<int64_t>(1, steps - warmup);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / span);
  const double min_lr = static_cast<double>(lr) * min_lr_ratio;
  return static_cast<float>(min_lr + (lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress)));
}

float clip_grad_norm(const std::vector<Tensor>& params, float max_norm) {
  STIPPLE_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got ", max_norm);
  std::vector<Tensor> grads(params.size());
  double sum_sq = 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].defined() || !params[i].grad().defined()) continue;
    grads[i] = grad_of(params[i], i, "clip_grad_norm");
    if (grads[i].device() != Device::kCPU) {
      // On the device: one f32 sum per tensor, one scalar read back.
      sum_sq += ops::sum(ops::square(grads[i])).item();
      continue;
    }
    // Eight running sums (one chain of dependent adds ran at a quarter of the rate), in a fixed
    // order: the norm does not depend on the thread count.
    const float* g = grads[i].data<float>();
    const int64_t n = grads[i].numel();
    double part[8] = {};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      for (int k = 0; k < 8; ++k) part[k] += static_cast<double>(g[j + k]) * g[j + k];
    for (; j < n; ++j) part[0] += static_cast<double>(g[j]) * g[j];
    for (double p : part) sum_sq += p;
  }
  const double norm = std::sqrt(sum_sq);
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (size_t i = 0; i < params.size(); ++i) {
      if (!grads[i].defined()) continue;
      Tensor p = params[i];
      if (grads[i].device() != Device::kCPU) {
        p.set_grad(ops::affine(grads[i], c, 0.0f));
        continue;
      }
      // A fresh tensor: the old gradient may be shared with other tensors of the graph.
      Tensor scaled = Tensor::empty(grads[i].shape());
      const float* g = grads[i].data<float>();
      float* s = scaled.data<float>();
      for (int64_t j = 0, n = grads[i].numel(); j < n; ++j) s[j] = g[j] * c;
      p.set_grad(scaled);
    }
  }
  return static_cast<float>(norm);
}

// ---------------- EMA ----------------

Ema::Ema(const std::vector<Tensor>& params, const EmaConfig& config) : config_(config) {
  STIPPLE_CHECK(config.decay >= 0 && config.decay <= 1 && config.min_decay >= 0 &&
                    config.min_decay <= config.decay,
                "Ema: need 0 <= min_decay <= decay <= 1, got min_decay ", config.min_decay,
                ", decay ", config.decay);
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], i, "Ema");
    shadow_.push_back(params[i].detach().clone());
  }
}

float Ema::decay_at(int64_t optimization_step) const {
  const int64_t t = std::max<int64_t>(0, optimization_step - config_.update_after_step - 1);
  if (t <= 0) return 0.0f;
  double d = config_.decay;
  const double td = static_cast<double>(t);
  switch (config_.warmup) {
    case EmaConfig::Warmup::kNone:
      break;
    case EmaConfig::Warmup::kSteps:
      d = std::min(d, (1.0 + td) / (10.0 + td));
      break;
    case EmaConfig::Warmup::kPower:
      d = std::min(d, 1.0 - std::pow(1.0 + td / config_.inv_gamma, -double{config_.power}));
      break;
  }
  return static_cast<float>(std::max(d, double{config_.min_decay}));
}

float Ema::current_decay() const { return decay_at(optimization_step_ + 1); }

void Ema::step(const std::vector<Tensor>& params) {
  STIPPLE_CHECK(params.size() == shadow_.size(), "Ema::step: ", params.size(),
                " parameters, but the EMA was made for ", shadow_.size());
  autograd::NoGradGuard no_grad;
  ++optimization_step_;
  const float one_minus_decay = 1.0f - decay_at(optimization_step_);
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], i, "Ema::step");
    STIPPLE_CHECK(params[i].shape() == shadow_[i].shape(), "Ema::step: parameter ", i, " is ",
                  params[i].describe(), " but its shadow is ", shadow_[i].describe());
    if (shadow_[i].device() != Device::kCPU) {
      // On the device: the same update through the ops (a new shadow tensor; nothing else holds
      // it), s - (1 - decay) (s - p), or a copy while the parameter is frozen.
      const Tensor pf = ops::as_f32_contiguous(params[i].detach());
      shadow_[i] = params[i].requires_grad()
                       ? ops::sub(shadow_[i], ops::affine(ops::sub(shadow_[i], pf),
                                                          one_minus_decay, 0.0f))
                       : pf.clone();
      continue;
    }
    float* s = shadow_[i].data<float>();
    const float* p = params[i].data<float>();
    const int64_t n = shadow_[i].numel();
    if (params[i].requires_grad()) {
      for (int64_t j = 0; j < n; ++j) s[j] = s[j] - one_minus_decay * (s[j] - p[j]);
    } else {
      std::memcpy(s, p, n * sizeof(float));
    }
    shadow_[i].storage()->bump_version();
  }
}

void Ema::restart_at_full_decay(const std::vector<Tensor>& params) {
  STIPPLE_CHECK(params.size() == shadow_.size(), "Ema::restart_at_full_decay: ", params.size(),
                " parameters, but the EMA holds ", shadow_.size());
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], i, "Ema::restart_at_full_decay");
    copy_values(shadow_[i], params[i], "param " + std::to_string(i));
  }
  // The first optimisation step whose decay is the full one (decay_at rises monotonically to
  // config.decay; a decay of 1 is never reached by the warm-ups' formulas, so stop at 2^40).
  int64_t s = 1;
  while (s < (int64_t{1} << 40) && decay_at(s + 1) < config_.decay) s *= 2;
  int64_t lo = s / 2, hi = s;  // decay_at(lo + 1) < decay <= decay_at(hi + 1), or hi at the cap
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (decay_at(mid + 1) < config_.decay ? lo : hi) = mid;
  }
  optimization_step_ = hi;
}

void Ema::copy_to(const std::vector<Tensor>& params) const {
  STIPPLE_CHECK(params.size() == shadow_.size(), "Ema::copy_to: ", params.size(),
                " parameters, but the EMA holds ", shadow_.size());
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], i, "Ema::copy_to");
    copy_values(params[i], shadow_[i], "shadow." + std::to_string(i));
  }
}

void Ema::store(const std::vector<Tensor>& params) {
  stored_.clear();
  for (const Tensor& p : params) stored_.push_back(p.detach().clone());
}

void Ema::restore(const std::vector<Tensor>& params) {
  STIPPLE_CHECK(!stored_.empty() || params.empty(), "Ema::restore: call store() first");
  STIPPLE_CHECK(params.size() == stored_.size(), "Ema::restore: ", params.size(),
                " parameters, but store() kept ", stored_.size());
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], i, "Ema::restore");
    copy_values(params[i], stored_[i], "stored." + std::to_string(i));
  }
  stored_.clear();
}

std::map<std::string, Tensor> Ema::state_dict() const {
  std::map<std::string, Tensor> s;
  s["optimization_step"] = count_tensor(optimization_step_);
  for (size_t i = 0; i < shadow_.size(); ++i) s["shadow." + std::to_string(i)] = host_copy(shadow_[i]);
  return s;
}

void Ema::load_state_dict(const std::map<std::string, Tensor>& state) {
  const int64_t step = read_count(state, "optimization_step");
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const std::string key = "shadow." + std::to_string(i);
    check_like(shadow_[i], find(state, key), key);
  }
  for (size_t i = 0; i < shadow_.size(); ++i) {
    const std::string key = "shadow." + std::to_string(i);
    copy_values(shadow_[i], find(state, key), key);
  }
  optimization_step_ = step;
}

void Ema::to(Device device) {
  for (Tensor& t : shadow_) t = t.to(device);
  for (Tensor& t : stored_) t = t.to(device);
}

}  // namespace stipple::train

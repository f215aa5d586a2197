// Module: named parameter/buffer/child registries, state_dict and checked load_state_dict.
#include "nn/module.h"

#include <set>
#include <sstream>
#include <unordered_set>

#include "autograd/grad_mode.h"
#include "ops/ops.h"

namespace stipple::nn {
namespace {

bool loadable_dtype(DType from, DType into) {
  return from == into || (is_floating(from) && is_floating(into));
}

thread_local WeightPrecision scope_precision = WeightPrecision::kF32;
thread_local bool scope_active = false;

// The dtype a layer weight from a checkpoint tensor of dtype `from` is stored in.
DType layer_weight_dtype(WeightPrecision p, DType from) {
  switch (p) {
    case WeightPrecision::kF16: return DType::kF16;
    case WeightPrecision::kBF16: return DType::kBF16;
    case WeightPrecision::kStored:
      return from == DType::kF16 || from == DType::kBF16 ? from : DType::kF32;
    case WeightPrecision::kF32: break;
  }
  return DType::kF32;
}

// Points `dst`'s TensorImpl (which the layers hold) at `src`'s storage, layout and dtype.
void point_at(const Tensor& dst, const Tensor& src) {
  TensorImpl& impl = const_cast<Tensor&>(dst).impl();
  const bool frozen = impl.storage && impl.storage->frozen();
  impl.storage = src.storage();
  impl.offset = src.storage_offset();
  impl.strides = src.strides();
  impl.dtype = src.dtype();
  impl.storage->set_frozen(frozen || src.storage()->frozen());
}

// Points the parameter `dst` at a new contiguous storage of dtype `dtype` holding `src`'s values.
void rebind_into(const Tensor& dst, const Tensor& src, DType dtype) {
  autograd::NoGradGuard no_grad;
  Tensor c = ops::to_device(ops::contiguous(ops::cast(src, dtype)), dst.device());
  if (c.storage() == src.storage()) c = c.clone();  // own the bytes; never view the file
  point_at(dst, c);
}

}  // namespace

WeightPrecision parse_weight_precision(const std::string& text) {
  if (text == "f32") return WeightPrecision::kF32;
  if (text == "stored") return WeightPrecision::kStored;
  if (text == "f16") return WeightPrecision::kF16;
  if (text == "bf16") return WeightPrecision::kBF16;
  throw Error(str_cat("unknown weight precision '", text,
                      "' (expected f32, stored, f16 or bf16)"));
}

LoadScope::LoadScope(WeightPrecision precision)
    : saved_(scope_precision), saved_active_(scope_active) {
  scope_precision = precision;
  scope_active = true;
}

LoadScope::~LoadScope() {
  scope_precision = saved_;
  scope_active = saved_active_;
}

WeightPrecision LoadScope::precision() { return scope_precision; }
bool LoadScope::active() { return scope_active; }

void Module::check_new_name(const std::string& name, const char* what) const {
  STIPPLE_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name(), ": ", what,
                " name '", name, "' must be non-empty and contain no '.'");
  auto taken = [&](const auto& list) {
    for (const auto& e : list) {
      if constexpr (std::is_same_v<std::decay_t<decltype(e)>, Entry>) {
        if (e.name == name) return true;
      } else {
        if (e.first == name) return true;
      }
    }
    return false;
  };
  STIPPLE_CHECK(!taken(params_) && !taken(buffers_) && !taken(children_), type_name(), ": ", what,
                " name '", name, "' is already registered");
}

Tensor Module::register_parameter(const std::string& name, Tensor t, bool requires_grad) {
  check_new_name(name, "parameter");
  STIPPLE_CHECK(t.defined(), type_name(), ": parameter '", name, "' is undefined");
  STIPPLE_CHECK(is_floating(t.dtype()), type_name(), ": parameter '", name, "' is ", t.describe(),
                "; integer state belongs in a buffer");
  if (!t.is_contiguous()) t = ops::contiguous(t);
  if (!t.is_leaf()) t = t.detach();
  t.set_requires_grad(requires_grad);
  params_.push_back({name, t, true});
  return t;
}

Tensor Module::register_buffer(const std::string& name, Tensor t, bool persistent) {
  check_new_name(name, "buffer");
  STIPPLE_CHECK(t.defined(), type_name(), ": buffer '", name, "' is undefined");
  if (!t.is_contiguous()) t = ops::contiguous(t);
  if (!t.is_leaf()) t = t.detach();
  buffers_.push_back({name, t, persistent});
  return t;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name, "module");
  children_.emplace_back(name, std::move(module));
}

template <typename Fn>
void Module::visit_tensors(const std::string& prefix, Fn&& fn) const {
  for (const Entry& e : params_) fn(prefix + e.name, e, true);
  for (const Entry& e : buffers_) fn(prefix + e.name, e, false);
  for (const auto& [name, child] : children_) child->visit_tensors(prefix + name + ".", fn);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  visit_tensors("", [&](const std::string& name, const Entry& e, bool is_param) {
    if (is_param && seen.insert(e.tensor.impl_ptr().get()).second) out.emplace_back(name, e.tensor);
  });
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  visit_tensors("", [&](const std::string& name, const Entry& e, bool is_param) {
    if (!is_param) out.emplace_back(name, e.tensor);
  });
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (const auto& [name, child] : children_) {
    for (const auto& [sub, m] : child->named_modules()) {
      out.emplace_back(sub.empty() ? name : name + "." + sub, m);
    }
  }
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Tensor& t : parameters()) n += t.numel();
  return n;
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  visit_tensors("", [&](const std::string& name, const Entry& e, bool) {
    if (e.persistent) out.emplace(name, e.tensor);
  });
  return out;
}

LoadResult Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict,
                                   const std::string& source) {
  // 1. Match every expected name, collecting all problems before touching any tensor.
  const std::map<std::string, Tensor> expected = state_dict();
  LoadResult result;
  std::vector<std::string> shape_errors, dtype_errors;
  std::vector<std::pair<Tensor, Tensor>> copies;  // (destination, source)
  for (const auto& [name, dst] : expected) {
    auto it = state.find(name);
    if (it == state.end()) {
      result.missing_keys.push_back(name);
      continue;
    }
    const Tensor& src = it->second;
    if (!src.defined()) {
      dtype_errors.push_back(str_cat(name, ": the state dict holds an undefined tensor"));
    } else if (src.shape() != dst.shape()) {
      shape_errors.push_back(str_cat(name, ": checkpoint ", shape_str(src.shape()), " vs model ",
                                     shape_str(dst.shape())));
    } else if (!loadable_dtype(src.dtype(), dst.dtype())) {
      dtype_errors.push_back(str_cat(name, ": checkpoint ", dtype_name(src.dtype()),
                                     " cannot load into model ", dtype_name(dst.dtype())));
    } else {
      copies.emplace_back(dst, src);
    }
  }
  for (const auto& [name, t] : state) {
    if (!expected.count(name)) result.unexpected_keys.push_back(name);
  }

  // 2. One error with everything that is wrong.
  const bool key_errors =
      strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty());
  if (key_errors || !shape_errors.empty() || !dtype_errors.empty()) {
    std::ostringstream msg;
    msg << "load_state_dict into " << type_name();
    if (!source.empty()) msg << " from " << source;
    msg << " failed:";
    if (strict && !result.missing_keys.empty()) {
      msg << "\n  " << result.missing_keys.size()
          << " missing (in the model, not in the checkpoint):";
      for (const auto& k : result.missing_keys)
        msg << "\n    " << k << " " << expected.at(k).describe();
    }
    if (strict && !result.unexpected_keys.empty()) {
      msg << "\n  " << result.unexpected_keys.size()
          << " unexpected (in the checkpoint, not in the model):";
      for (const auto& k : result.unexpected_keys) {
        const Tensor& t = state.at(k);
        msg << "\n    " << k << " " << (t.defined() ? t.describe() : "undefined");
      }
    }
    if (!shape_errors.empty()) {
      msg << "\n  " << shape_errors.size() << " shape mismatch"
          << (shape_errors.size() > 1 ? "es:" : ":");
      for (const auto& s : shape_errors) msg << "\n    " << s;
    }
    if (!dtype_errors.empty()) {
      msg << "\n  " << dtype_errors.size() << " dtype mismatch"
          << (dtype_errors.size() > 1 ? "es:" : ":");
      for (const auto& s : dtype_errors) msg << "\n    " << s;
    }
    msg << "\n  (the checkpoint does not match this model's configuration: check config.json and"
           " the model class)";
    throw Error(msg.str());
  }

  // 3. Copy, or store layer weights in the precision the LoadScope asks for.
  std::unordered_set<const TensorImpl*> layer_weights;
  const bool scoped = LoadScope::active();
  if (scoped && LoadScope::precision() != WeightPrecision::kF32) {
    for (const auto& [path, m] : named_modules()) {
      for (const Entry& e : m->params_) {
        if (m->is_layer_weight(e.name)) layer_weights.insert(e.tensor.impl_ptr().get());
      }
    }
  }
  for (const auto& [dst, src] : copies) {
    const DType want = layer_weights.count(dst.impl_ptr().get())
                           ? layer_weight_dtype(LoadScope::precision(), src.dtype())
                           : dst.dtype();
    if (want != dst.dtype()) {
      rebind_into(dst, src, want);
    } else {
      ops::assign(dst, src);  // any layout, dtype and device into dst in place
    }
    if (scoped) src.storage()->release_pages();
  }
  return result;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
  if (on) unfreeze();
}

void Module::freeze_for_inference() {
  for (const auto& [name, t] : state_dict()) t.storage()->set_frozen(true);
}

void Module::unfreeze() {
  for (const auto& [name, t] : state_dict()) t.storage()->set_frozen(false);
}

Module& Module::to(Device device) {
  autograd::NoGradGuard no_grad;
  visit_tensors("", [&](const std::string&, const Entry& e, bool) {
    if (!e.tensor.defined() || e.tensor.device() == device) return;
    const Tensor moved = e.tensor.detach().to(device);  // plain contiguous there
    TensorImpl& impl = e.tensor.impl();
    impl.storage = moved.storage();
    impl.offset = moved.storage_offset();
    impl.strides = moved.strides();
    impl.channel_block = moved.channel_block();
    impl.grad = nullptr;
  });
  return *this;
}

void Module::zero_grad() {
  for (Tensor& t : parameters()) t.zero_grad();
}

Module& Module::requires_grad_(bool on) {
  for (Tensor& t : parameters()) t.set_requires_grad(on);
  return *this;
}

void Module::reset_parameters(Generator& gen) {
  for (auto& [name, child] : children_) child->reset_parameters(gen);
}

const std::shared_ptr<Module>& ModuleList::operator[](size_t i) const {
  STIPPLE_CHECK(i < size(), "ModuleList: index ", i, " out of range for ", size(), " modules");
  return named_children()[i].second;
}

void release_weights(Module& m) {
  constexpr size_t kMin = size_t{64} << 10;  // smaller tensors are not worth a mapping
  Storage::LazyZeroScope lazy;
  for (const auto& [name, t] : m.state_dict()) {
    const size_t nbytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
    if (nbytes < kMin || t.impl().channel_block > 0) continue;
    point_at(t, Tensor::zeros(t.shape(), t.dtype()));
  }
}

void adopt_weights(Module& dst, const Module& src) {
  const std::map<std::string, Tensor> from = src.state_dict();
  for (const auto& [name, t] : dst.state_dict()) {
    auto it = from.find(name);
    STIPPLE_CHECK(it != from.end() && it->second.shape() == t.shape(), "adopt_weights: ",
                  src.type_name(), " has no ", name, " ", t.describe());
    point_at(t, it->second);
  }
}

}  // namespace stipple::nn

// Module: the base of every network, as in PyTorch. A module owns named parameters (trainable
// leaf tensors), named buffers (state that is saved but not trained) and named child modules.
// Dotted names built from the registration names equal the checkpoint keys
// (`down_blocks.0.resnets.1.conv1.weight`), so loading a checkpoint is generic: state_dict() /
// load_state_dict() with every name, shape and dtype checked.
//
// Order. named_parameters(), named_buffers() and named_modules() list the module's own entries in
// registration order, then each child's subtree in registration order (PyTorch's order). A
// parameter registered twice (tied weights) is listed once, under its first name, so an optimiser
// never updates it twice; state_dict() and load_state_dict() use every name.
//
// Loading copies values into the existing parameter and buffer tensors (so handles held by layers
// stay valid) after checking the whole dictionary first: a failed load changes nothing. A
// floating tensor loads into a floating parameter of another precision (f16/bf16/f64 checkpoints
// into f32 models and back) with a conversion; any other dtype difference is a mismatch.
//
// Leaves out: forward() (its signature differs per module; each layer declares its own), hooks,
// moving modules between devices and changing their dtype.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/storage.h"
#include "core/tensor.h"

namespace stipple {
class Generator;
}

namespace stipple::nn {

// How load_state_dict stores the weight matrices of Linear, Conv2d and Embedding layers (99.9% of
// a diffusion model's elements; biases, norms and other parameters always load as f32). kF32
// widens them (training, and the default); kStored keeps a half-precision checkpoint's f16 or
// bf16 as it is and an f32 one as f32; kF16 and kBF16 store every such weight in that precision.
// Half-precision weights are widened per layer as the kernels read them (ops::linear and
// ops::conv2d), so kStored computes exactly what kF32 does, in half the memory.
enum class WeightPrecision { kF32, kStored, kF16, kBF16 };
// Parses "f32", "stored", "f16", "bf16"; throws naming the choices otherwise.
WeightPrecision parse_weight_precision(const std::string& text);

// Loading a model for inference in as little memory as it needs. While one is alive on a thread,
// load_state_dict stores layer weights as `precision` says, the zero parameters a model is built
// with are not made resident before the checkpoint replaces them (Storage::LazyZeroScope), and
// each checkpoint tensor's file pages are handed back to the kernel once copied
// (Storage::release_pages), so loading peaks near the loaded model's size instead of the model
// plus the file. Nests; the innermost scope's precision counts.
class LoadScope {
 public:
  explicit LoadScope(WeightPrecision precision);
  ~LoadScope();
  LoadScope(const LoadScope&) = delete;
  LoadScope& operator=(const LoadScope&) = delete;
  // The innermost scope's precision, or kF32 outside any.
  static WeightPrecision precision();
  static bool active();

 private:
  WeightPrecision saved_;
  bool saved_active_;
  Storage::LazyZeroScope lazy_;
};

class Module;

// What a non-strict load_state_dict skipped (strict loads throw instead).
struct LoadResult {
  std::vector<std::string> missing_keys;     // in the module, not in the state dict
  std::vector<std::string> unexpected_keys;  // in the state dict, not in the module
};

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The class name used in messages ("Linear", "UNet2DConditionModel").
  virtual std::string type_name() const { return "Module"; }
  // Whether this module's own parameter `name` is a layer weight that LoadScope may store in
  // half precision (Linear, Conv2d and Embedding say yes for "weight").
  virtual bool is_layer_weight(const std::string& name) const {
    (void)name;
    return false;
  }

  // ---- building (call from the constructor; names are non-empty, without '.', unique) ----
  // Registers `t` as a parameter: a leaf (detached if it is not) that requires grad (floating
  // dtypes only). Returns the handle to keep as a member.
  Tensor register_parameter(const std::string& name, Tensor t, bool requires_grad = true);
  // Registers state that is not trained (running statistics, position ids, tables). Persistent
  // buffers are part of state_dict().
  Tensor register_buffer(const std::string& name, Tensor t, bool persistent = true);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    STIPPLE_CHECK(module != nullptr, type_name(), ": register_module('", name, "') got null");
    add_child(name, module);
    return module;
  }

  // ---- walking ----
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  // This module first (name ""), then every descendant with its dotted path.
  std::vector<std::pair<std::string, Module*>> named_modules();
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  int64_t num_parameters() const;  // total elements over parameters()

  // ---- checkpoints ----
  // Parameters and persistent buffers by dotted name (the tensors themselves, not copies).
  std::map<std::string, Tensor> state_dict() const;
  // Copies `state` into the parameters and persistent buffers. Every problem is reported in one
  // stipple::Error: all missing and unexpected keys by name (strict only), and every shape or
  // dtype mismatch with both sides. `source` (a file name) is named in the message when given.
  LoadResult load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true,
                             const std::string& source = "");

  // ---- modes and training helpers ----
  // This module and every descendant. train(true) also undoes freeze_for_inference().
  void train(bool on = true);
  void eval() { train(false); }
  // Marks the storage of every parameter and buffer constant (Storage::frozen), which lets the
  // CPU convolutions keep their weights in oneDNN's layout between calls instead of reordering
  // them on every call. In-place writers bump the storage version (see core/storage.h), so a
  // later optimiser step or load_state_dict is seen; train(true) or unfreeze() turn it off.
  void freeze_for_inference();
  void unfreeze();
  bool is_training() const { return training_; }
  void zero_grad();                 // drops every parameter's gradient
  // Moves every parameter and buffer to `device` in place: the tensors the module and its
  // callers hold keep their identity (and requires_grad); their data now lives there, and their
  // gradients are dropped. Returns *this.
  Module& to(Device device);
  Module& requires_grad_(bool on);  // false freezes every parameter (and true unfreezes)

  // PyTorch's default initialisation for every layer, in registration order. The base version
  // recurses into the children; layers override it for their own parameters, and models that
  // initialise specially override it, call Module::reset_parameters first, then adjust.
  virtual void reset_parameters(Generator& gen);

 private:
  struct Entry {
    std::string name;
    Tensor tensor;
    bool persistent = true;
  };
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name, const char* what) const;
  // Calls fn(prefix + name, entry, is_parameter) over the subtree, own entries first.
  template <typename Fn>
  void visit_tensors(const std::string& prefix, Fn&& fn) const;

  std::vector<Entry> params_;
  std::vector<Entry> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// Numbered children (`blocks.0`, `blocks.1`, ...), as torch.nn.ModuleList.
class ModuleList : public Module {
 public:
  std::string type_name() const override { return "ModuleList"; }

  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    return register_module(std::to_string(size()), std::move(module));
  }
  size_t size() const { return named_children().size(); }
  bool empty() const { return size() == 0; }
  const std::shared_ptr<Module>& operator[](size_t i) const;
  // The i-th child as M; throws when it is another type.
  template <typename M>
  std::shared_ptr<M> at(size_t i) const {
    auto m = std::dynamic_pointer_cast<M>((*this)[i]);
    STIPPLE_CHECK(m != nullptr, "ModuleList: child ", i, " is a ", (*this)[i]->type_name(),
                  ", not the type asked for");
    return m;
  }
};

// Low-memory pipelines keep a component's weights only for its stage. release_weights hands the
// memory of every parameter and persistent buffer of 64 KiB or more back to the system (they read
// as zeros, without being resident, until refilled); adopt_weights points each parameter and
// persistent buffer of `dst` at `src`'s tensor of the same name and shape (a freshly loaded copy of
// the same model), so `dst` holds those weights without a copy. Handles held by layers stay valid.
void release_weights(Module& m);
void adopt_weights(Module& dst, const Module& src);

}  // namespace stipple::nn

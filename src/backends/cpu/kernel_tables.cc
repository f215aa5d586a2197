#include <atomic>
#include <memory>
#include <string>
#include <type_traits>

#include "backends/cpu/fill.h"
#include "core/error.h"
#ifdef STIPPLE_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace stipple {

const KernelTable& reference_kernels() {
  static const KernelTable table = [] {
    KernelTable t{};
    t.name = "cpu-reference";
    cpu::fill_reference_data(t);
    cpu::fill_reference_elementwise(t);
    cpu::fill_reference_reduce(t);
    cpu::fill_reference_linalg(t);
    cpu::fill_reference_norm(t);
    cpu::fill_reference_attention(t);
    cpu::fill_reference_resample(t);
    cpu::fill_reference_optim(t);
    return t;
  }();
  return table;
}

const KernelTable& fast_kernels() {
#ifndef STIPPLE_WITH_FAST_CPU
  // Built without oneDNN, OpenBLAS and Highway (STIPPLE_CPU_FAST=OFF): the reference kernels.
  return reference_kernels();
#else
  static const KernelTable table = [] {
    KernelTable t = reference_kernels();
    t.name = "cpu-fast";
    cpu::fill_fast_elementwise(t);
    cpu::fill_fast_linalg(t);
    cpu::fill_fast_norm(t);
    cpu::fill_fast_attention(t);
    cpu::fill_fast_optim(t);
    cpu::fill_fast_layout(t);
    return t;
  }();
  return table;
#endif
}

#ifndef STIPPLE_WITH_FAST_CPU
// The cache of convolution weights in oneDNN's layout belongs to the fast kernels; without them
// there is nothing to bound, and the budget is only kept to be read back.
namespace ops {
namespace {
std::atomic<size_t> g_conv_weight_cache_budget{0};
}
void set_conv_weight_cache_budget(size_t bytes) { g_conv_weight_cache_budget.store(bytes); }
size_t conv_weight_cache_budget() { return g_conv_weight_cache_budget.load(); }
}  // namespace ops
#endif

namespace {
std::atomic<bool> g_use_reference{false};
}

const KernelTable& active_kernels() {
  return g_use_reference.load(std::memory_order_relaxed) ? reference_kernels() : fast_kernels();
}

void use_reference_kernels(bool on) { g_use_reference.store(on); }

const KernelTable& kernels_for(Device device) {
  if (device == Device::kCPU) return active_kernels();
  if (device == Device::kEmulated) return emulated_kernels();
#ifdef STIPPLE_WITH_CUDA
  return cuda::kernels();
#else
  throw_no_backend(device);
#endif
}

Device same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (t == nullptr || !t->defined()) continue;
    if (first == nullptr) {
      first = t;
      continue;
    }
    STIPPLE_CHECK(t->device() == first->device(), op, ": its tensors are on two devices (",
                  first->describe(), " on ", device_name(first->device()), ", ", t->describe(),
                  " on ", device_name(t->device()), "); move one with .to(Device)");
  }
  return first != nullptr ? first->device() : Device::kCPU;
}

namespace {

[[noreturn]] void throw_missing(const char* kernel, const char* table) {
  throw Error(str_cat(kernel, " has no ", table, " kernel yet; move its tensors to the CPU with ",
                      ".to(Device::kCPU) to run it there"),
              ErrorKind::kUnsupported);
}

// The stand-in for a missing entry of type F: a function with F's signature that throws. The
// entry's and the table's names come from `Names` (a local class per entry: local classes may
// have static member functions, and may be template arguments).
template <typename F>
struct Missing;
template <typename R, typename... A>
struct Missing<R (*)(A...)> {
  template <typename Names>
  static R call(A...) {
    throw_missing(Names::kernel(), Names::table());
  }
};

const char* g_missing_table = "";  // the table fill_missing_kernels last filled

}  // namespace

#define STIPPLE_FILL_MISSING(entry)                                                    \
  do {                                                                                 \
    struct Names {                                                                     \
      static const char* kernel() { return #entry; }                                   \
      static const char* table() { return g_missing_table; }                           \
    };                                                                                 \
    if (t.entry == nullptr) t.entry = &Missing<decltype(t.entry)>::template call<Names>; \
  } while (0)

void fill_missing_kernels(KernelTable& t) {
  // One table has missing entries today (CUDA's); its name is a string literal that lives on.
  g_missing_table = t.name;
  STIPPLE_FILL_MISSING(copy);
  STIPPLE_FILL_MISSING(to_blocked);
  STIPPLE_FILL_MISSING(copy_into);
  STIPPLE_FILL_MISSING(unary);
  STIPPLE_FILL_MISSING(unary_backward);
  STIPPLE_FILL_MISSING(binary);
  STIPPLE_FILL_MISSING(affine);
  STIPPLE_FILL_MISSING(pow_scalar);
  STIPPLE_FILL_MISSING(clamp);
  STIPPLE_FILL_MISSING(sum);
  STIPPLE_FILL_MISSING(max);
  STIPPLE_FILL_MISSING(matmul);
  STIPPLE_FILL_MISSING(matmul_bf16);
  STIPPLE_FILL_MISSING(conv2d);
  STIPPLE_FILL_MISSING(conv2d_backward_data);
  STIPPLE_FILL_MISSING(conv2d_backward_weight);
  STIPPLE_FILL_MISSING(group_norm);
  STIPPLE_FILL_MISSING(group_norm_backward);
  STIPPLE_FILL_MISSING(layer_norm);
  STIPPLE_FILL_MISSING(layer_norm_backward);
  STIPPLE_FILL_MISSING(softmax);
  STIPPLE_FILL_MISSING(softmax_backward);
  STIPPLE_FILL_MISSING(attention);
  STIPPLE_FILL_MISSING(attention_backward);
  STIPPLE_FILL_MISSING(upsample_nearest2x);
  STIPPLE_FILL_MISSING(upsample_nearest2x_backward);
  STIPPLE_FILL_MISSING(avg_pool2x);
  STIPPLE_FILL_MISSING(avg_pool2x_backward);
  STIPPLE_FILL_MISSING(embedding);
  STIPPLE_FILL_MISSING(embedding_backward);
  STIPPLE_FILL_MISSING(adamw_step);
}

#undef STIPPLE_FILL_MISSING

// ---------------- the emulated device ----------------

namespace {

// A tensor's view of the same bytes, its storage tagged as the emulated device.
Tensor on_emulated(const Tensor& t) {
  if (!t.defined() || t.device() == Device::kEmulated) return t;
  const std::shared_ptr<Storage>& s = t.storage();
  auto impl = std::make_shared<TensorImpl>(t.impl());
  impl->storage = Storage::wrap(s->data(), s->nbytes(), s, Device::kEmulated);
  impl->grad = nullptr;
  impl->grad_fn = nullptr;
  impl->requires_grad = false;
  return Tensor(std::move(impl));
}

void retag(Tensor& t) { t = on_emulated(t); }
void retag(GroupNormResult& r) {
  retag(r.out);
  retag(r.mean);
  retag(r.rstd);
}
void retag(LayerNormResult& r) {
  retag(r.out);
  retag(r.mean);
  retag(r.rstd);
}
void retag(AttentionResult& r) {
  retag(r.out);
  retag(r.lse);
}
template <typename T>
void retag_out(T&&) {}
void retag_out(Tensor* t) {
  if (t != nullptr) retag(*t);
}

template <typename F, F KernelTable::*M>
struct Emulated;
template <typename R, typename... A, R (*KernelTable::*M)(A...)>
struct Emulated<R (*)(A...), M> {
  static R call(A... args) {
    EmulatedKernelScope reads_allowed;
    if constexpr (std::is_void_v<R>) {
      (reference_kernels().*M)(args...);
      (retag_out(args), ...);  // the outputs a void kernel fills through pointers
    } else {
      R r = (reference_kernels().*M)(args...);
      retag(r);
      return r;
    }
  }
};

}  // namespace

#define STIPPLE_EMULATE(entry) \
  t.entry = &Emulated<decltype(t.entry), &KernelTable::entry>::call

const KernelTable& emulated_kernels() {
  static const KernelTable table = [] {
    KernelTable t{};
    t.name = "emulated";
    t.device = Device::kEmulated;
    STIPPLE_EMULATE(copy);
    STIPPLE_EMULATE(to_blocked);
    STIPPLE_EMULATE(copy_into);
    STIPPLE_EMULATE(unary);
    STIPPLE_EMULATE(unary_backward);
    STIPPLE_EMULATE(binary);
    STIPPLE_EMULATE(affine);
    STIPPLE_EMULATE(pow_scalar);
    STIPPLE_EMULATE(clamp);
    STIPPLE_EMULATE(sum);
    STIPPLE_EMULATE(max);
    STIPPLE_EMULATE(matmul);
    STIPPLE_EMULATE(matmul_bf16);
    STIPPLE_EMULATE(conv2d);
    STIPPLE_EMULATE(conv2d_backward_data);
    STIPPLE_EMULATE(conv2d_backward_weight);
    STIPPLE_EMULATE(group_norm);
    STIPPLE_EMULATE(group_norm_backward);
    STIPPLE_EMULATE(layer_norm);
    STIPPLE_EMULATE(layer_norm_backward);
    STIPPLE_EMULATE(softmax);
    STIPPLE_EMULATE(softmax_backward);
    STIPPLE_EMULATE(attention);
    STIPPLE_EMULATE(attention_backward);
    STIPPLE_EMULATE(upsample_nearest2x);
    STIPPLE_EMULATE(upsample_nearest2x_backward);
    STIPPLE_EMULATE(avg_pool2x);
    STIPPLE_EMULATE(avg_pool2x_backward);
    STIPPLE_EMULATE(embedding);
    STIPPLE_EMULATE(embedding_backward);
    STIPPLE_EMULATE(adamw_step);
    return t;
  }();
  return table;
}

#undef STIPPLE_EMULATE

}  // namespace stipple

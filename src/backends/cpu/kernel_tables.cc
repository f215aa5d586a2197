#include <atomic>

#include "backends/cpu/fill.h"

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
}

namespace {
std::atomic<bool> g_use_reference{false};
}

const KernelTable& active_kernels() {
  return g_use_reference.load(std::memory_order_relaxed) ? reference_kernels() : fast_kernels();
}

void use_reference_kernels(bool on) { g_use_reference.store(on); }

}  // namespace stipple

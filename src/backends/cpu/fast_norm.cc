// Placeholder: filled in by the fast norm kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_fast_norm(KernelTable&) {}
}  // namespace stipple::cpu

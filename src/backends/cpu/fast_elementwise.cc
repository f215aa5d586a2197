// Placeholder: filled in by the fast elementwise kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_fast_elementwise(KernelTable&) {}
}  // namespace stipple::cpu

// Placeholder: filled in by the fast linalg kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_fast_linalg(KernelTable&) {}
}  // namespace stipple::cpu

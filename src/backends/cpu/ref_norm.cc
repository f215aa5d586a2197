// Placeholder: filled in by the reference norm kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_reference_norm(KernelTable&) {}
}  // namespace stipple::cpu

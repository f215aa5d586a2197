// Placeholder: filled in by the reference linalg kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_reference_linalg(KernelTable&) {}
}  // namespace stipple::cpu

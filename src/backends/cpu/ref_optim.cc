// Placeholder: filled in by the reference optim kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_reference_optim(KernelTable&) {}
}  // namespace stipple::cpu

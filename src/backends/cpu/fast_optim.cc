// Placeholder: filled in by the fast optim kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_fast_optim(KernelTable&) {}
}  // namespace stipple::cpu

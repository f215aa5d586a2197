// Placeholder: filled in by the fast attention kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_fast_attention(KernelTable&) {}
}  // namespace stipple::cpu

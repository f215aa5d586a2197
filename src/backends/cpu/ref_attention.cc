// Placeholder: filled in by the reference attention kernels.
#include "backends/cpu/fill.h"
namespace stipple::cpu {
void fill_reference_attention(KernelTable&) {}
}  // namespace stipple::cpu

// The CUDA kernel table: every per-file fill in turn. The one entry without a CUDA kernel,
// to_blocked (the channel-blocked layout is a CPU format; CUDA convolutions take and return plain
// NCHW), is filled last by fill_missing_kernels with a function that throws an Error naming it.
#include "backends/cuda/internal.h"

namespace stipple::cuda {

const KernelTable& kernels() {
  static const KernelTable table = [] {
    KernelTable t{};
    t.name = "cuda";
    t.device = Device::kCUDA;
    fill_cuda_data(t);
    fill_cuda_elementwise(t);
    fill_cuda_reduce(t);
    fill_cuda_linalg(t);
    fill_cuda_norm(t);
    fill_cuda_attention(t);
    fill_missing_kernels(t);
    return t;
  }();
  return table;
}

}  // namespace stipple::cuda

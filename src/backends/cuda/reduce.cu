// CUDA reductions: sum and max over any set of dims (kept as size 1), and softmax over the last
// dim with its backward. Sums accumulate in double, as in the reference
// (src/backends/cpu/ref_reduce.cc, ref_norm.cc), so results differ from it only by summation
// order, far below f32 resolution.
//
// Reduction layout. When the innermost dim is reduced, a block per output walks its (contiguous)
// run of inputs. Otherwise the outputs are the inner dims: a thread per output reads coalesced
// across the warp, and the reduced range is cut into chunks along grid.y whose partial results a
// second kernel combines, so that reducing [8192, 320] to [1, 320] still fills the device.
#include <cmath>

#include "backends/cuda/internal.h"

namespace stipple::cuda {
namespace {

enum class Reduce { kSum, kMax };

template <Reduce R>
__device__ __forceinline__ double combine(double a, double v) {
  if constexpr (R == Reduce::kSum) {
    return a + v;
  } else {
    return isnan(a) || isnan(v) ? NAN : fmax(a, v);
  }
}
template <Reduce R>
__device__ __forceinline__ double identity() {
  return R == Reduce::kSum ? 0.0 : -INFINITY;
}

// A block per output o: threads stride over its R reduced elements.
template <Reduce R>
__global__ void reduce_rows_kernel(const float* x, float* out, int64_t n_out, int64_t n_red,
                                   Indexer<1> kept, Indexer<1> red) {
  __shared__ double scratch[32];
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    int64_t base;
    kept.offsets(o, &base);
    double acc = identity<R>();
    for (int64_t r = threadIdx.x; r < n_red; r += blockDim.x) {
      int64_t off;
      red.offsets(r, &off);
      acc = combine<R>(acc, x[base + off]);
    }
    // block combine
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) acc = combine<R>(acc, __shfl_xor_sync(0xffffffffu, acc, s));
    __syncthreads();
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : identity<R>();
#pragma unroll
      for (int s = 16; s > 0; s >>= 1) acc = combine<R>(acc, __shfl_xor_sync(0xffffffffu, acc, s));
      if (lane == 0) out[o] = static_cast<float>(acc);
    }
  }
}

// A thread per output o, chunk blockIdx.y of the reduced range; writes f32 directly when there is
// one chunk, else a double partial to partial[chunk * n_out + o].
template <Reduce R>
__global__ void reduce_cols_kernel(const float* x, float* out, double* partial, int64_t n_out,
                                   int64_t n_red, int64_t chunk, Indexer<1> kept, Indexer<1> red) {
  const int64_t o = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (o >= n_out) return;
  int64_t base;
  kept.offsets(o, &base);
  const int64_t r0 = blockIdx.y * chunk;
  const int64_t r1 = r0 + chunk < n_red ? r0 + chunk : n_red;
  double acc = identity<R>();
  for (int64_t r = r0; r < r1; ++r) {
    int64_t off;
    red.offsets(r, &off);
    acc = combine<R>(acc, x[base + off]);
  }
  if (partial == nullptr) {
    out[o] = static_cast<float>(acc);
  } else {
    partial[blockIdx.y * n_out + o] = acc;
  }
}

template <Reduce R>
__global__ void reduce_partials_kernel(const double* partial, float* out, int64_t n_out,
                                       int64_t chunks) {
  const int64_t o = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (o >= n_out) return;
  double acc = identity<R>();
  for (int64_t c = 0; c < chunks; ++c) acc = combine<R>(acc, partial[c * n_out + o]);
  out[o] = static_cast<float>(acc);
}

template <Reduce R>
Tensor reduce(const Tensor& x, const std::vector<int64_t>& dims) {
  require_f32(x, "reduction input", false);
  const Shape& s = x.shape();
  Shape os = s, kept_shape, kept_strides, red_shape, red_strides;
  std::vector<bool> reduced(s.size(), false);
  for (int64_t d : dims) {
    reduced[d] = true;
    os[d] = 1;
  }
  for (size_t d = 0; d < s.size(); ++d) {
    (reduced[d] ? red_shape : kept_shape).push_back(s[d]);
    (reduced[d] ? red_strides : kept_strides).push_back(x.strides()[d]);
  }
  Tensor out = dev_empty(os);
  const int64_t n_out = out.numel(), n_red = shape_numel(red_shape);
  if (n_out == 0) return out;
  const Shape* ks[1] = {&kept_strides};
  const Shape* rs[1] = {&red_strides};
  const Indexer<1> kept = make_indexer<1>(kept_shape, ks);
  const Indexer<1> red = make_indexer<1>(red_shape, rs);
  // Is the innermost dim that has more than one element reduced?
  bool inner_reduced = false;
  for (int64_t d = static_cast<int64_t>(s.size()) - 1; d >= 0; --d) {
    if (s[d] == 1) continue;
    inner_reduced = reduced[d];
    break;
  }
  if (inner_reduced) {
    const unsigned grid = n_out < (1 << 30) ? static_cast<unsigned>(n_out) : (1u << 30);
    reduce_rows_kernel<R><<<grid, kThreads, 0, stream()>>>(cf(x), mf(out), n_out, n_red, kept,
                                                           red);
    CUDA_CHECK_LAUNCH();
    return out;
  }
  // Enough chunks to give the device about 256k threads, each chunk at least 32 long.
  constexpr int64_t kTargetThreads = 256 * 1024;
  int64_t chunks = kTargetThreads / n_out;
  const int64_t max_chunks = (n_red + 31) / 32;
  if (chunks > max_chunks) chunks = max_chunks;
  if (chunks > 4096) chunks = 4096;
  if (chunks < 1) chunks = 1;
  const int64_t chunk = chunks > 1 ? (n_red + chunks - 1) / chunks : n_red;
  if (chunks > 1) chunks = (n_red + chunk - 1) / chunk;
  const dim3 grid(blocks_for(n_out), static_cast<unsigned>(chunks));
  if (chunks == 1) {
    reduce_cols_kernel<R><<<grid, kThreads, 0, stream()>>>(cf(x), mf(out), nullptr, n_out, n_red,
                                                           chunk, kept, red);
    CUDA_CHECK_LAUNCH();
    return out;
  }
  Tensor partial = dev_empty({chunks, n_out}, DType::kF64);
  double* pp = static_cast<double*>(partial.raw_data());
  reduce_cols_kernel<R><<<grid, kThreads, 0, stream()>>>(cf(x), mf(out), pp, n_out, n_red, chunk,
                                                         kept, red);
  CUDA_CHECK_LAUNCH();
  reduce_partials_kernel<R><<<blocks_for(n_out), kThreads, 0, stream()>>>(pp, mf(out), n_out,
                                                                          chunks);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor cuda_sum(const Tensor& x, const std::vector<int64_t>& dims) {
  return reduce<Reduce::kSum>(x, dims);
}
Tensor cuda_max(const Tensor& x, const std::vector<int64_t>& dims) {
  return reduce<Reduce::kMax>(x, dims);
}

// ---- softmax over the last dim: a block per row ----

// Max over the block, ignoring NaN as std::max(m, x) with m first does in the reference.
__device__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : -INFINITY;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void softmax_kernel(const float* x, float* y, int64_t rows, int64_t d) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m, fscratch);
    if (m == -INFINITY) {  // a fully masked row gives zeros, not NaN
      for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = 0.0f;
      continue;
    }
    double sum = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += exp(double{xr[i]} - m);
    sum = block_sum(sum, dscratch);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
      yr[i] = static_cast<float>(exp(double{xr[i]} - m) / sum);
  }
}

__global__ void softmax_backward_kernel(const float* y, const float* gy, float* gx, int64_t rows,
                                        int64_t d) {
  __shared__ double scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* yr = y + r * d;
    const float* gr = gy + r * d;
    double dot = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dot += double{yr[i]} * gr[i];
    dot = block_sum(dot, scratch);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
      gx[r * d + i] = static_cast<float>(yr[i] * (gr[i] - dot));
  }
}

unsigned row_grid(int64_t rows) {
  return rows < (1 << 30) ? static_cast<unsigned>(rows) : (1u << 30);
}
int row_threads(int64_t d) { return d <= 128 ? 64 : (d <= 512 ? 128 : 256); }

Tensor cuda_softmax(const Tensor& x) {
  require_f32(x, "softmax input");
  Tensor y = dev_empty(x.shape());
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  if (rows == 0) return y;
  softmax_kernel<<<row_grid(rows), row_threads(d), 0, stream()>>>(cf(x), mf(y), rows, d);
  CUDA_CHECK_LAUNCH();
  return y;
}

Tensor cuda_softmax_backward(const Tensor& y, const Tensor& grad_y) {
  require_f32(y, "softmax_backward y");
  require_f32(grad_y, "softmax_backward grad");
  Tensor gx = dev_empty(y.shape());
  const int64_t d = y.size(-1), rows = d > 0 ? y.numel() / d : 0;
  if (rows == 0) return gx;
  softmax_backward_kernel<<<row_grid(rows), row_threads(d), 0, stream()>>>(cf(y), cf(grad_y),
                                                                           mf(gx), rows, d);
  CUDA_CHECK_LAUNCH();
  return gx;
}

}  // namespace

void fill_cuda_reduce(KernelTable& t) {
  t.sum = cuda_sum;
  t.max = cuda_max;
  t.softmax = cuda_softmax;
  t.softmax_backward = cuda_softmax_backward;
}

}  // namespace stipple::cuda

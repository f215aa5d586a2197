// CUDA data movement and small per-element kernels: copy with dtype conversion from any strides,
// embedding lookup and its gradient, nearest 2x upsampling and 2x2 average pooling with their
// gradients, and the AdamW step. Each computes what its twin in src/backends/cpu/ref_data.cc,
// ref_resample.cc or ref_optim.cc computes, to the bit where the reference's arithmetic allows it.
#include <cmath>
#include <cstring>

#include "backends/cuda/internal.h"

namespace stipple::cuda {
namespace {

// ---- copy: every value goes through double, as in the reference (i64 -> f32 rounds once to
// double, then to float; f64 -> f16 rounds to float first, then to half) ----

template <typename T>
__device__ __forceinline__ double load_d(const T* p);
template <>
__device__ __forceinline__ double load_d<float>(const float* p) { return *p; }
template <>
__device__ __forceinline__ double load_d<double>(const double* p) { return *p; }
template <>
__device__ __forceinline__ double load_d<int64_t>(const int64_t* p) {
  return static_cast<double>(*p);
}

struct F16 { uint16_t bits; };
struct BF16 { uint16_t bits; };
template <>
__device__ __forceinline__ double load_d<F16>(const F16* p) { return dev_f16_to_f32(p->bits); }
template <>
__device__ __forceinline__ double load_d<BF16>(const BF16* p) { return dev_bf16_to_f32(p->bits); }

template <typename T>
__device__ __forceinline__ void store_d(T* p, double v);
template <>
__device__ __forceinline__ void store_d<float>(float* p, double v) { *p = static_cast<float>(v); }
template <>
__device__ __forceinline__ void store_d<double>(double* p, double v) { *p = v; }
template <>
__device__ __forceinline__ void store_d<int64_t>(int64_t* p, double v) {
  *p = static_cast<int64_t>(v);
}
template <>
__device__ __forceinline__ void store_d<F16>(F16* p, double v) {
  p->bits = dev_f32_to_f16(static_cast<float>(v));
}
template <>
__device__ __forceinline__ void store_d<BF16>(BF16* p, double v) {
  p->bits = dev_f32_to_bf16(static_cast<float>(v));
}

template <typename S, typename D>
__global__ void copy_convert_kernel(const S* src, D* dst, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t o;
    ix.offsets(i, &o);
    store_d(dst + i, load_d(src + o));
  }
}

// Same-type strided gather without conversion (i64 -> i64 stays exact beyond 2^53).
template <typename T>
__global__ void gather_kernel(const T* src, T* dst, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t o;
    ix.offsets(i, &o);
    dst[i] = src[o];
  }
}

// dst[offset(i)] = src[i]: writes a contiguous source into a strided view (concat, pad).
__global__ void scatter_kernel(const float* src, float* dst, int64_t n, Indexer<1> ix) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    int64_t o;
    ix.offsets(i, &o);
    dst[o] = src[i];
  }
}

void cuda_copy_into(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const Shape* strides[1] = {&dst.strides()};
  const Indexer<1> ix = make_indexer<1>(dst.shape(), strides);
  scatter_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(
      static_cast<const float*>(src.raw_data()), static_cast<float*>(dst.raw_data()), n, ix);
  CUDA_CHECK_LAUNCH();
}

template <typename S, typename D>
void launch_convert(const Tensor& src, Tensor& dst, const Indexer<1>& ix) {
  const int64_t n = src.numel();
  copy_convert_kernel<S, D><<<blocks_for(n), kThreads, 0, stream()>>>(
      static_cast<const S*>(src.raw_data()), static_cast<D*>(dst.raw_data()), n, ix);
  CUDA_CHECK_LAUNCH();
}

template <typename S>
void dispatch_dst(const Tensor& src, Tensor& dst, const Indexer<1>& ix) {
  switch (dst.dtype()) {
    case DType::kF32: return launch_convert<S, float>(src, dst, ix);
    case DType::kF64: return launch_convert<S, double>(src, dst, ix);
    case DType::kI64: return launch_convert<S, int64_t>(src, dst, ix);
    case DType::kF16: return launch_convert<S, F16>(src, dst, ix);
    case DType::kBF16: return launch_convert<S, BF16>(src, dst, ix);
  }
}

Tensor cuda_copy(const Tensor& src, DType dst_dtype) {
  STIPPLE_CHECK(src.device() == Device::kCUDA, "CUDA copy: source is not on the device");
  STIPPLE_CHECK(!src.is_blocked(), "CUDA copy: channel-blocked tensors are CPU-only");
  Tensor dst = dev_empty(src.shape(), dst_dtype);
  const int64_t n = src.numel();
  if (n == 0) return dst;
  const DType st = src.dtype();
  if (st == dst_dtype && src.is_contiguous()) {
    copy_on_device(dst.raw_data(), src.raw_data(), static_cast<size_t>(n) * dtype_size(st));
    return dst;
  }
  const Shape* strides[1] = {&src.strides()};
  const Indexer<1> ix = make_indexer<1>(src.shape(), strides);
  if (st == DType::kI64 && dst_dtype == DType::kI64) {
    gather_kernel<int64_t><<<blocks_for(n), kThreads, 0, stream()>>>(
        static_cast<const int64_t*>(src.raw_data()), static_cast<int64_t*>(dst.raw_data()), n, ix);
    CUDA_CHECK_LAUNCH();
    return dst;
  }
  switch (st) {
    case DType::kF32: dispatch_dst<float>(src, dst, ix); break;
    case DType::kF64: dispatch_dst<double>(src, dst, ix); break;
    case DType::kI64: dispatch_dst<int64_t>(src, dst, ix); break;
    case DType::kF16: dispatch_dst<F16>(src, dst, ix); break;
    case DType::kBF16: dispatch_dst<BF16>(src, dst, ix); break;
  }
  return dst;
}

// ---- embedding ----

// out[i, d] = weight[ids[i], d]; an id out of range is recorded in *bad (the first one seen wins)
// and its row left unwritten, since a kernel cannot throw.
__global__ void embedding_kernel(const float* w, const int64_t* ids, float* out, int64_t n,
                                 int64_t vocab, int64_t dim, unsigned long long* bad,
                                 int* bad_flag) {
  const int64_t total = n * dim;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t / dim, d = t % dim;
    const int64_t id = ids[i];
    if (id < 0 || id >= vocab) {
      if (atomicExch(bad_flag, 1) == 0) *bad = static_cast<unsigned long long>(id);
      continue;
    }
    out[t] = w[id * dim + d];
  }
}

Tensor cuda_embedding(const Tensor& weight, const Tensor& ids) {
  require_f32(weight, "embedding weight");
  STIPPLE_CHECK(ids.dtype() == DType::kI64 && ids.is_contiguous() && ids.device() == Device::kCUDA,
                "CUDA embedding: ids must be contiguous i64 on the device");
  const int64_t vocab = weight.size(0), dim = weight.size(1), n = ids.numel();
  Shape os = ids.shape();
  os.push_back(dim);
  Tensor out = dev_empty(os);
  if (n * dim == 0) return out;
  // One 16-byte scratch: [bad id (8 bytes)][flag (4 bytes)].
  Tensor scratch = dev_zeros({2}, DType::kI64);
  auto* bad = static_cast<unsigned long long*>(scratch.raw_data());
  int* flag = reinterpret_cast<int*>(bad + 1);
  embedding_kernel<<<blocks_for(n * dim), kThreads, 0, stream()>>>(
      cf(weight), static_cast<const int64_t*>(ids.raw_data()), mf(out), n, vocab, dim, bad, flag);
  CUDA_CHECK_LAUNCH();
  int64_t host[2] = {0, 0};
  copy_to_host(host, scratch.raw_data(), sizeof host);  // waits: the check must precede return
  int host_flag = 0;
  std::memcpy(&host_flag, &host[1], sizeof host_flag);
  STIPPLE_CHECK(host_flag == 0, "embedding: id ", host[0], " out of range [0, ", vocab, ")");
  return out;
}

// One thread per column d walks the ids in order, so repeated ids add up in the same order as in
// the reference loop: the result is bit-identical and deterministic, without atomics.
__global__ void embedding_backward_kernel(const float* g, const int64_t* ids, float* out,
                                          int64_t n, int64_t vocab, int64_t dim) {
  const int64_t d = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (d >= dim) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= vocab) continue;  // the forward already refused such ids
    out[id * dim + d] += g[i * dim + d];
  }
}

Tensor cuda_embedding_backward(const Tensor& grad_out, const Tensor& ids, int64_t vocab) {
  require_f32(grad_out, "embedding grad");
  STIPPLE_CHECK(ids.dtype() == DType::kI64 && ids.is_contiguous() && ids.device() == Device::kCUDA,
                "CUDA embedding_backward: ids must be contiguous i64 on the device");
  const int64_t dim = grad_out.size(-1), n = ids.numel();
  Tensor out = dev_zeros({vocab, dim});
  if (n == 0 || dim == 0) return out;
  embedding_backward_kernel<<<blocks_for(dim, 128), 128, 0, stream()>>>(
      cf(grad_out), static_cast<const int64_t*>(ids.raw_data()), mf(out), n, vocab, dim);
  CUDA_CHECK_LAUNCH();
  return out;
}

// ---- resampling: one thread per output element, planes of NC ----

__global__ void upsample_kernel(const float* x, float* y, int64_t planes, int64_t h, int64_t w) {
  const int64_t total = planes * 4 * h * w, w2 = 2 * w;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t ox = t % w2, oy = (t / w2) % (2 * h), p = t / (w2 * 2 * h);
    y[t] = x[(p * h + oy / 2) * w + ox / 2];
  }
}

// g [planes, 2h, 2w] -> [planes, h, w]: the four taps summed in the reference's order.
__global__ void upsample_backward_kernel(const float* g, float* out, int64_t planes, int64_t h,
                                         int64_t w) {
  const int64_t total = planes * h * w;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = t % w, y = (t / w) % h, p = t / (w * h);
    const float* r0 = g + (p * 2 * h + 2 * y) * 2 * w + 2 * x;
    const float* r1 = r0 + 2 * w;
    out[t] = __fadd_rn(__fadd_rn(__fadd_rn(r0[0], r0[1]), r1[0]), r1[1]);
  }
}

// x [planes, hin, win] -> [planes, hin/2, win/2] (odd trailing rows/cols dropped, as on the CPU).
__global__ void avg_pool_kernel(const float* x, float* out, int64_t planes, int64_t hin,
                                int64_t win) {
  const int64_t h = hin / 2, w = win / 2, total = planes * h * w;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t ox = t % w, oy = (t / w) % h, p = t / (w * h);
    const float* r0 = x + (p * hin + 2 * oy) * win + 2 * ox;
    const float* r1 = r0 + win;
    out[t] = __fmul_rn(0.25f, __fadd_rn(__fadd_rn(__fadd_rn(r0[0], r0[1]), r1[0]), r1[1]));
  }
}

// One thread per input-gradient element: a quarter of its window's gradient, 0 outside windows.
__global__ void avg_pool_backward_kernel(const float* g, float* out, int64_t planes, int64_t hin,
                                         int64_t win) {
  const int64_t h = hin / 2, w = win / 2, total = planes * hin * win;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t x = t % win, y = (t / win) % hin, p = t / (win * hin);
    const int64_t oy = y / 2, ox = x / 2;
    out[t] = oy < h && ox < w ? __fmul_rn(0.25f, g[(p * h + oy) * w + ox]) : 0.0f;
  }
}

Tensor cuda_upsample(const Tensor& x) {
  require_f32(x, "upsample input");
  const Shape& s = x.shape();
  Tensor out = dev_empty({s[0], s[1], 2 * s[2], 2 * s[3]});
  if (out.numel() == 0) return out;
  upsample_kernel<<<blocks_for(out.numel()), kThreads, 0, stream()>>>(cf(x), mf(out), s[0] * s[1],
                                                                      s[2], s[3]);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor cuda_upsample_backward(const Tensor& g) {
  require_f32(g, "upsample grad");
  const Shape& s = g.shape();
  Tensor out = dev_empty({s[0], s[1], s[2] / 2, s[3] / 2});
  if (out.numel() == 0) return out;
  upsample_backward_kernel<<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
      cf(g), mf(out), s[0] * s[1], s[2] / 2, s[3] / 2);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor cuda_avg_pool(const Tensor& x) {
  require_f32(x, "avg_pool input");
  const Shape& s = x.shape();
  Tensor out = dev_empty({s[0], s[1], s[2] / 2, s[3] / 2});
  if (out.numel() == 0) return out;
  avg_pool_kernel<<<blocks_for(out.numel()), kThreads, 0, stream()>>>(cf(x), mf(out),
                                                                      s[0] * s[1], s[2], s[3]);
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor cuda_avg_pool_backward(const Tensor& g, const Shape& xs) {
  require_f32(g, "avg_pool grad");
  Tensor out = dev_empty(xs);
  if (out.numel() == 0) return out;
  avg_pool_backward_kernel<<<blocks_for(out.numel()), kThreads, 0, stream()>>>(
      cf(g), mf(out), xs[0] * xs[1], xs[2], xs[3]);
  CUDA_CHECK_LAUNCH();
  return out;
}

// ---- AdamW: the reference's f32 arithmetic, with rounding intrinsics so that nvcc does not fuse
// multiply-adds the CPU code performs as two roundings ----

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, float b1,
                             float b2, float eps, float decay, float step_size, float bc2_sqrt) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float gi = g[i];
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(__fsub_rn(1.0f, b1), gi));
    const float vi =
        __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), gi), gi));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(step_size, __fdiv_rn(mi, denom)));
  }
}

void cuda_adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                     const AdamWParams& hp) {
  require_f32(param, "adamw param");
  require_f32(grad, "adamw grad");
  require_f32(m, "adamw m");
  require_f32(v, "adamw v");
  const int64_t n = param.numel();
  if (n == 0) return;
  // The bias corrections in double, once, exactly as the reference computes them.
  const double t = static_cast<double>(hp.step);
  const float decay = static_cast<float>(1.0 - static_cast<double>(hp.lr) * hp.weight_decay);
  const float step_size = static_cast<float>(hp.lr / (1.0 - std::pow(double{hp.beta1}, t)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{hp.beta2}, t)));
  adamw_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(mf(param), cf(grad), mf(m), mf(v), n,
                                                         hp.beta1, hp.beta2, hp.eps, decay,
                                                         step_size, bc2_sqrt);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

Tensor as_contiguous(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype && t.is_contiguous() && !t.is_blocked()) return t;
  return cuda_copy(t, dtype);
}

Tensor as_f32_contiguous(const Tensor& t) { return as_contiguous(t, DType::kF32); }

void fill_cuda_data(KernelTable& t) {
  t.copy = cuda_copy;
  t.copy_into = cuda_copy_into;
  t.embedding = cuda_embedding;
  t.embedding_backward = cuda_embedding_backward;
  t.upsample_nearest2x = cuda_upsample;
  t.upsample_nearest2x_backward = cuda_upsample_backward;
  t.avg_pool2x = cuda_avg_pool;
  t.avg_pool2x_backward = cuda_avg_pool_backward;
  t.adamw_step = cuda_adamw_step;
}

}  // namespace stipple::cuda

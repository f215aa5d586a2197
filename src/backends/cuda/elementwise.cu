// CUDA elementwise kernels: unary functions and their gradients, binary ops over broadcast views
// with any strides, affine, pow and clamp. The reference (src/backends/cpu/ref_elementwise.cc)
// computes in double and rounds to f32; these compute in f32 with CUDA's accurate (not fast-math)
// functions, so results agree to a few ulp. + - * / are exact in both (a double-rounded f32
// add, subtract, multiply or divide equals the f32 one), and so are max, min and clamp.
#include <cmath>

#include "backends/cuda/internal.h"

namespace stipple::cuda {
namespace {

using ops::BinaryOp;
using ops::UnaryOp;

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float unary_f(UnaryOp op, float x) {
  switch (op) {
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kExp: return expf(x);
    case UnaryOp::kLog: return logf(x);
    case UnaryOp::kSqrt: return sqrtf(x);
    case UnaryOp::kRsqrt: return 1.0f / sqrtf(x);
    case UnaryOp::kSigmoid: return sigmoidf(x);
    case UnaryOp::kTanh: return tanhf(x);
    case UnaryOp::kSilu: return x * sigmoidf(x);
    case UnaryOp::kGeluErf: return 0.5f * x * (1.0f + erff(x * kSqrt1_2));
    case UnaryOp::kGeluTanh:
      return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + 0.044715f * x * x * x)));
    case UnaryOp::kQuickGelu: return x * sigmoidf(1.702f * x);
    case UnaryOp::kRelu: return x > 0 ? x : 0.0f;
    case UnaryOp::kAbs: return fabsf(x);
    case UnaryOp::kSquare: return x * x;
    case UnaryOp::kSin: return sinf(x);
    case UnaryOp::kCos: return cosf(x);
    case UnaryOp::kReciprocal: return 1.0f / x;
  }
  return 0;
}

// d f / d x at x, with y = f(x).
__device__ __forceinline__ float unary_df(UnaryOp op, float x, float y) {
  switch (op) {
    case UnaryOp::kNeg: return -1.0f;
    case UnaryOp::kExp: return y;
    case UnaryOp::kLog: return 1.0f / x;
    case UnaryOp::kSqrt: return 0.5f / y;
    case UnaryOp::kRsqrt: return -0.5f * y * y * y;
    case UnaryOp::kSigmoid: return y * (1.0f - y);
    case UnaryOp::kTanh: return 1.0f - y * y;
    case UnaryOp::kSilu: {
      const float s = sigmoidf(x);
      return s * (1.0f + x * (1.0f - s));
    }
    case UnaryOp::kGeluErf:
      return 0.5f * (1.0f + erff(x * kSqrt1_2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
    case UnaryOp::kGeluTanh: {
      const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
      const float t = tanhf(u);
      return 0.5f * (1.0f + t) +
             0.5f * x * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case UnaryOp::kQuickGelu: {
      const float s = sigmoidf(1.702f * x);
      return s + 1.702f * x * s * (1.0f - s);
    }
    case UnaryOp::kRelu: return x > 0 ? 1.0f : 0.0f;
    case UnaryOp::kAbs: return x > 0 ? 1.0f : (x < 0 ? -1.0f : 0.0f);
    case UnaryOp::kSquare: return 2.0f * x;
    case UnaryOp::kSin: return cosf(x);
    case UnaryOp::kCos: return -sinf(x);
    case UnaryOp::kReciprocal: return -y * y;
  }
  return 0;
}

__device__ __forceinline__ float binary_f(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::kAdd: return __fadd_rn(a, b);
    case BinaryOp::kSub: return __fsub_rn(a, b);
    case BinaryOp::kMul: return __fmul_rn(a, b);
    case BinaryOp::kDiv: return __fdiv_rn(a, b);
    case BinaryOp::kMax: return isnan(a) || isnan(b) ? NAN : fmaxf(a, b);
    case BinaryOp::kMin: return isnan(a) || isnan(b) ? NAN : fminf(a, b);
  }
  return 0;
}

#define GRID_STRIDE(i, n)                                                          \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); \
       i += int64_t{gridDim.x} * blockDim.x)

__global__ void unary_kernel(UnaryOp op, const float* x, float* y, int64_t n) {
  GRID_STRIDE(i, n) y[i] = unary_f(op, x[i]);
}

__global__ void unary_backward_kernel(UnaryOp op, const float* x, const float* y,
                                      const float* gy, float* gx, int64_t n) {
  GRID_STRIDE(i, n) gx[i] = gy[i] * unary_df(op, x[i], y[i]);
}

__global__ void binary_contig_kernel(BinaryOp op, const float* a, const float* b, float* out,
                                     int64_t n) {
  GRID_STRIDE(i, n) out[i] = binary_f(op, a[i], b[i]);
}

__global__ void binary_strided_kernel(BinaryOp op, const float* a, const float* b, float* out,
                                      int64_t n, Indexer<2> ix) {
  GRID_STRIDE(i, n) {
    int64_t o[2];
    ix.offsets(i, o);
    out[i] = binary_f(op, a[o[0]], b[o[1]]);
  }
}

// x * scale + shift rounded once, as the reference's double expression rounds (almost always) to.
__global__ void affine_kernel(const float* x, float* y, int64_t n, float scale, float shift) {
  GRID_STRIDE(i, n) y[i] = static_cast<float>(fma(static_cast<double>(x[i]), double{scale}, double{shift}));
}

__global__ void pow_kernel(const float* x, float* y, int64_t n, float e) {
  GRID_STRIDE(i, n) y[i] = powf(x[i], e);
}

__global__ void clamp_kernel(const float* x, float* y, int64_t n, float lo, float hi) {
  GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = isnan(v) ? v : fminf(fmaxf(v, lo), hi);
  }
}

#undef GRID_STRIDE

Tensor cuda_unary(UnaryOp op, const Tensor& x) {
  require_f32(x, "unary input");
  Tensor y = dev_empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return y;
  unary_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, cf(x), mf(y), n);
  CUDA_CHECK_LAUNCH();
  return y;
}

Tensor cuda_unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy) {
  require_f32(x, "unary_backward x");
  require_f32(y, "unary_backward y");
  require_f32(gy, "unary_backward grad");
  Tensor gx = dev_empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return gx;
  unary_backward_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, cf(x), cf(y), cf(gy),
                                                                  mf(gx), n);
  CUDA_CHECK_LAUNCH();
  return gx;
}

Tensor cuda_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  require_f32(a, "binary a", false);
  require_f32(b, "binary b", false);
  STIPPLE_CHECK(a.shape() == b.shape(), "CUDA binary: shapes ", shape_str(a.shape()), " and ",
                shape_str(b.shape()), " differ (expected views expanded to one shape)");
  Tensor out = dev_empty(a.shape());
  const int64_t n = out.numel();
  if (n == 0) return out;
  if (a.is_contiguous() && b.is_contiguous()) {
    binary_contig_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, cf(a), cf(b), mf(out), n);
  } else {
    const Shape* strides[2] = {&a.strides(), &b.strides()};
    const Indexer<2> ix = make_indexer<2>(a.shape(), strides);
    binary_strided_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(op, cf(a), cf(b), mf(out), n,
                                                                     ix);
  }
  CUDA_CHECK_LAUNCH();
  return out;
}

Tensor cuda_affine(const Tensor& x, float scale, float shift) {
  require_f32(x, "affine input");
  Tensor y = dev_empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return y;
  affine_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(cf(x), mf(y), n, scale, shift);
  CUDA_CHECK_LAUNCH();
  return y;
}

Tensor cuda_pow_scalar(const Tensor& x, float e) {
  require_f32(x, "pow input");
  Tensor y = dev_empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return y;
  pow_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(cf(x), mf(y), n, e);
  CUDA_CHECK_LAUNCH();
  return y;
}

Tensor cuda_clamp(const Tensor& x, float lo, float hi) {
  require_f32(x, "clamp input");
  Tensor y = dev_empty(x.shape());
  const int64_t n = x.numel();
  if (n == 0) return y;
  clamp_kernel<<<blocks_for(n), kThreads, 0, stream()>>>(cf(x), mf(y), n, lo, hi);
  CUDA_CHECK_LAUNCH();
  return y;
}

}  // namespace

void fill_cuda_elementwise(KernelTable& t) {
  t.unary = cuda_unary;
  t.unary_backward = cuda_unary_backward;
  t.binary = cuda_binary;
  t.affine = cuda_affine;
  t.pow_scalar = cuda_pow_scalar;
  t.clamp = cuda_clamp;
}

}  // namespace stipple::cuda

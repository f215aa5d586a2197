// The primitive kernels: one declaration list that every backend fills in.
//
// A backend is a KernelTable: a function pointer per primitive. The CPU has two tables:
//   reference  plain loops, obviously correct, the yardstick (src/backends/cpu/ref_*.cc)
//   fast       oneDNN, OpenBLAS and Highway kernels (src/backends/cpu/fast_*.cc); entries it does
//              not provide fall back to the reference ones
// With -DSTIPPLE_CUDA=ON a third table, the CUDA backend's (src/backends/cuda), runs the kernels of
// tensors on the GPU. The ops in src/ops take the table of their tensors' device,
// kernels_for(x.device()); an op whose tensors are on different devices is an error that names
// both (same_device), and an entry a backend lacks is an error that names it (fill_missing_kernels),
// never host code run on device memory. Tests run a kernel from two tables on the same input and
// hold them together (tests/test_kernels_*.cc, tests/test_cuda.cc).
//
// Contract unless an entry says otherwise: float inputs are f32, contiguous, on the table's device;
// outputs are freshly allocated f32 contiguous tensors on that device. Shapes were already checked
// by the op.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/tensor.h"
#include "ops/ops.h"

namespace stipple {

struct GroupNormResult {
  Tensor out;   // like x
  Tensor mean;  // [N, groups]
  Tensor rstd;  // [N, groups]
};
struct LayerNormResult {
  Tensor out;   // like x
  Tensor mean;  // [rows]
  Tensor rstd;  // [rows]
};
struct AttentionResult {
  Tensor out;  // [B, H, Lq, Dv]
  Tensor lse;  // [B, H, Lq]: log-sum-exp of each row of scaled scores, saved for backward
};
struct AdamWParams {
  float lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based, for bias correction
};

struct KernelTable {
  const char* name;
  Device device = Device::kCPU;

  // ---- data movement ----
  // dst (allocated, same shape) = src converted to dst_dtype. src: any strides, any dtype, may be
  // channel-blocked; dst is plain contiguous.
  Tensor (*copy)(const Tensor& src, DType dst_dtype);
  // x plain contiguous NCHW f32 -> blocked nChw{block}c (C % block == 0).
  Tensor (*to_blocked)(const Tensor& x, int block);
  // Writes src (f32 contiguous) into dst, an f32 view of the same shape with any strides whose
  // elements do not overlap (a slice of a larger tensor: concat, pad).
  void (*copy_into)(const Tensor& dst, const Tensor& src);

  // ---- elementwise ----
  // x may also be channel-blocked (applied to the raw buffer; the result keeps x's layout).
  Tensor (*unary)(ops::UnaryOp op, const Tensor& x);
  // grad_x = grad_y * f'(x); y = f(x) is passed too, for rules cheaper in terms of y.
  Tensor (*unary_backward)(ops::UnaryOp op, const Tensor& x, const Tensor& y,
                           const Tensor& grad_y);
  // a and b: f32 views already expanded to `out_shape` (stride 0 on broadcast dims, any strides).
  // Both blocked with equal shape is allowed too (then the result is blocked).
  Tensor (*binary)(ops::BinaryOp op, const Tensor& a, const Tensor& b);
  Tensor (*affine)(const Tensor& x, float scale, float shift);  // blocked allowed
  Tensor (*pow_scalar)(const Tensor& x, float exponent);
  Tensor (*clamp)(const Tensor& x, float lo, float hi);

  // ---- reductions: over sorted unique `dims`, result keeps them as size 1 ----
  Tensor (*sum)(const Tensor& x, const std::vector<int64_t>& dims);
  Tensor (*max)(const Tensor& x, const std::vector<int64_t>& dims);

  // ---- linear algebra ----
  // a [Ba, M, K] (or [Ba, K, M] if trans_a), b [Bb, K, N] (or [Bb, N, K] if trans_b), Ba and Bb
  // equal or 1 (broadcast). Returns [max(Ba, Bb), M, N] = op(a) @ op(b).
  Tensor (*matmul)(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
  // The same with both operands rounded to bf16 first (ops::MatmulPrecision::kBF16): the exact
  // products of the rounded values summed in f32 (the reference sums in double), f32 out. Each
  // operand is f32 (rounded here) or bf16 (taken as it is: the ops round once and keep it).
  Tensor (*matmul_bf16)(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b);
  // Whether matmul_bf16 runs on bf16 hardware (AVX512-BF16, AMX) rather than as f32 products of
  // the rounded operands: the only difference is speed.
  bool native_bf16_matmul = false;
  // x [N, C, H, W] plain or blocked, w [O, C, kh, kw] f32 or f16 (contiguous), bias [O] or
  // undefined. The result may be channel-blocked when `allow_blocked` (inference chains);
  // otherwise plain NCHW.
  Tensor (*conv2d)(const Tensor& x, const Tensor& w, const Tensor& bias,
                   const ops::Conv2dParams& p, bool allow_blocked);
  // grad_x [N, C, H, W] from grad_y [N, O, Ho, Wo] and w; x_shape gives H, W.
  Tensor (*conv2d_backward_data)(const Tensor& grad_y, const Tensor& w, const Shape& x_shape,
                                 const ops::Conv2dParams& p);
  // grad_w [O, C, kh, kw] (and grad_b [O] when want_bias) from x and grad_y.
  void (*conv2d_backward_weight)(const Tensor& x, const Tensor& grad_y, const Shape& w_shape,
                                 const ops::Conv2dParams& p, Tensor* grad_w, Tensor* grad_b);

  // ---- normalisation ----
  // x [N, C, S] (S = product of spatial dims) plain, or [N, C, H, W] blocked (out keeps layout).
  // weight/bias [C] or undefined.
  GroupNormResult (*group_norm)(const Tensor& x, int64_t groups, const Tensor& weight,
                                const Tensor& bias, float eps);
  // Returns grad_x; fills grad_w/grad_b (sums over N and S) when non-null and weight defined.
  Tensor (*group_norm_backward)(const Tensor& x, const Tensor& grad_y, int64_t groups,
                                const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                Tensor* grad_w, Tensor* grad_b);
  // x [rows, D]; weight/bias [D] or undefined.
  LayerNormResult (*layer_norm)(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                float eps);
  Tensor (*layer_norm_backward)(const Tensor& x, const Tensor& grad_y, const Tensor& weight,
                                const Tensor& mean, const Tensor& rstd, Tensor* grad_w,
                                Tensor* grad_b);
  // Softmax over the last dim of x [rows, D].
  Tensor (*softmax)(const Tensor& x);
  Tensor (*softmax_backward)(const Tensor& y, const Tensor& grad_y);  // y = softmax(x)

  // ---- attention ----
  // q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv], f32 with unit stride over the last dim
  // and any strides over the others (heads split from projections' [B, L, H*D] rows arrive
  // without a copy); mask undefined or f32 already expanded to [B, H, Lq, Lk] (stride-0 views
  // allowed); additive. causal: key j > query i is blocked. out may come in any layout (the fast
  // kernel writes [B, Lq, H, Dv] rows).
  AttentionResult (*attention)(const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& mask, float scale, bool causal);
  // Fills grad_q, grad_k, grad_v (allocated by the kernel). q, k, v, out and grad_out come
  // contiguous.
  void (*attention_backward)(const Tensor& q, const Tensor& k, const Tensor& v,
                             const Tensor& mask, float scale, bool causal, const Tensor& out,
                             const Tensor& lse, const Tensor& grad_out, Tensor* grad_q,
                             Tensor* grad_k, Tensor* grad_v);

  // ---- resampling, lookup ----
  Tensor (*upsample_nearest2x)(const Tensor& x);           // [N, C, H, W]
  Tensor (*upsample_nearest2x_backward)(const Tensor& g);  // [N, C, 2H, 2W] -> [N, C, H, W]
  Tensor (*avg_pool2x)(const Tensor& x);
  Tensor (*avg_pool2x_backward)(const Tensor& g, const Shape& x_shape);
  Tensor (*embedding)(const Tensor& weight, const Tensor& ids);  // ids i64 contiguous
  Tensor (*embedding_backward)(const Tensor& grad_out, const Tensor& ids, int64_t vocab);

  // ---- optimiser ----
  // In place on f32 contiguous param, m, v (AdamW with decoupled weight decay, bias-corrected).
  void (*adamw_step)(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                     const AdamWParams& hp);
};

// The tables. reference_kernels() is complete; fast_kernels() copies it and overrides.
const KernelTable& reference_kernels();
const KernelTable& fast_kernels();

// The CPU table the ops use (fast by default). Tests and `--reference-kernels` switch it.
const KernelTable& active_kernels();
void use_reference_kernels(bool on);

// The table for tensors on `device`: active_kernels() for the CPU, the CUDA backend's for the GPU
// (an error of kind kUnsupported when stipple was built without it), emulated_kernels() for the
// emulated test device.
const KernelTable& kernels_for(Device device);
inline const KernelTable& kernels_for(const Tensor& t) { return kernels_for(t.device()); }

// The device of every defined tensor among `ts` (undefined ones, e.g. an absent bias, are
// skipped; kCPU when none is defined). Tensors on two devices are an error naming `op`, the
// devices and how to move one.
Device same_device(const char* op, std::initializer_list<const Tensor*> ts);
template <typename... T>
Device same_device(const char* op, const T&... ts) {
  return same_device(op, {&ts...});
}

// Sets every null entry of `t` to a function that throws an Error of kind kUnsupported naming the
// kernel and the table ("conv2d has no cuda kernel yet ..."). A backend that implements only part
// of the list calls it last.
void fill_missing_kernels(KernelTable& t);

// The emulated device's table (core/storage.h, Device::kEmulated): each entry runs the CPU
// reference kernel with host reads allowed, and hands back its outputs tagged as emulated-device
// tensors.
const KernelTable& emulated_kernels();

}  // namespace stipple

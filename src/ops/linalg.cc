// The linear-algebra ops: matmul (PyTorch semantics, batch broadcasting), linear and conv2d, each
// with its gradient rule. The ops check shapes, bring operands to the kernels' contract (f32,
// contiguous, 3-D for matmul), and keep the user's logical shapes on the way out.
//
// Matmul backward is two matmuls with transposed operands (the kernel's trans flags, no copies),
// in the precision the forward ran in (MatmulPrecision); gradients of broadcast batch dims are
// summed back with sum_to. Conv2d may return a
// channel-blocked tensor on inference paths (nothing to record, blocked layout enabled), which
// keeps chains of convolutions in oneDNN's fast layout.
#include <atomic>

#include "ops/op_util.h"

namespace stipple::ops {

namespace {

std::atomic<bool> g_blocked_layout{true};

Shape batch_dims(const Tensor& t) { return Shape(t.shape().begin(), t.shape().end() - 2); }

// One matmul operand in kernel form: a 3-D f32 contiguous tensor, possibly stored transposed.
struct Operand {
  Tensor t;            // [batch, rows, cols] or, when trans, [batch, cols, rows]
  bool trans = false;  // the kernel's trans flag
};

// Brings `x` (>= 2-D, logical [..., rows, cols]) to [B or 1, rows, cols]. A tensor whose last two
// dims are a transposed contiguous view is passed as-is with the trans flag set (no copy).
Operand to_kernel_operand(const Tensor& x, const Shape& batch) {
  const int64_t rows = x.size(-2), cols = x.size(-1);
  Tensor t = x;
  if (shape_numel(batch_dims(x)) == 1) {
    t = reshape(x, {1, rows, cols});
  } else if (batch_dims(x) != batch) {
    Shape full = batch;
    full.push_back(rows);
    full.push_back(cols);
    t = expand(x, full);  // partial broadcast: materialised below
  }
  if (t.dtype() == DType::kF32 && !t.is_blocked() && !t.is_contiguous() &&
      transpose(t, -1, -2).is_contiguous()) {
    Tensor tt = transpose(t, -1, -2);
    return {reshape(tt, {tt.numel() / (rows * cols), cols, rows}), true};
  }
  t = as_f32_contiguous(t);
  return {reshape(t, {t.numel() / (rows * cols), rows, cols}), false};
}

// The kernel table's matmul for a precision.
using MatmulKernel = Tensor (*)(const Tensor&, const Tensor&, bool, bool);
MatmulKernel matmul_kernel(const KernelTable& k, MatmulPrecision p) {
  return p == MatmulPrecision::kBF16 ? k.matmul_bf16 : k.matmul;
}

// A kernel operand in the precision's storage: bf16 operands are rounded once, here, and kept in
// bf16 for the backward pass (half the memory of the saved f32 operand, no second rounding).
Tensor in_precision(const Tensor& t, MatmulPrecision p) {
  return p == MatmulPrecision::kBF16 ? kernels_for(t).copy(t, DType::kBF16) : t;
}

// Reshapes a kernel result [B, rows, cols] to batch + [rows, cols] and sums it down to `shape`.
Tensor reduce_to(const Tensor& r, const Shape& batch, const Shape& shape) {
  Shape full = batch;
  full.push_back(r.size(1));
  full.push_back(r.size(2));
  Tensor out = reshape(r, full);
  if (full != shape) out = sum_to(out, shape);
  return out;
}

}  // namespace

thread_local MatmulPrecision t_matmul_precision = MatmulPrecision::kF32;

MatmulPrecision matmul_precision() { return t_matmul_precision; }
const char* matmul_precision_name(MatmulPrecision p) {
  return p == MatmulPrecision::kBF16 ? "bf16" : "f32";
}
MatmulPrecision parse_matmul_precision(const std::string& name) {
  if (name == "f32") return MatmulPrecision::kF32;
  if (name == "bf16") return MatmulPrecision::kBF16;
  throw Error(str_cat("unknown matmul precision '", name, "' (choose f32 or bf16)"),
              ErrorKind::kInvalidArgument);
}
MatmulPrecisionScope::MatmulPrecisionScope(MatmulPrecision p) : saved_(t_matmul_precision) {
  t_matmul_precision = p;
}
MatmulPrecisionScope::~MatmulPrecisionScope() { t_matmul_precision = saved_; }

void set_blocked_layout(bool on) { g_blocked_layout.store(on); }
bool blocked_layout_enabled() { return g_blocked_layout.load(); }

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_float(a, "matmul", "a");
  check_float(b, "matmul", "b");
  STIPPLE_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: operands must be at least 1-D, got a ",
                a.describe(), " and b ", b.describe());
  same_device("matmul", a, b);
  const MatmulPrecision precision = matmul_precision();
  Tensor out;
  Shape a2_shape, b2_shape, batch;
  Operand oa, ob;
  bool fold = false;
  {
    autograd::NoGradGuard no_grad;
    // 1-D operands as in PyTorch: a vector a is a row [1, K], a vector b is a column [K, 1].
    const Tensor a2 = a.dim() == 1 ? reshape(a, {1, a.size(0)}) : a;
    const Tensor b2 = b.dim() == 1 ? reshape(b, {b.size(0), 1}) : b;
    a2_shape = a2.shape();
    b2_shape = b2.shape();
    const int64_t m = a2.size(-2), k = a2.size(-1), n = b2.size(-1);
    STIPPLE_CHECK(k == b2.size(-2), "matmul: inner dimensions differ: a ", a.describe(), " and b ",
                  b.describe(), " (", k, " vs ", b2.size(-2), ")");
    batch = broadcast_shapes(batch_dims(a2), batch_dims(b2), "matmul");
    const int64_t nb = shape_numel(batch);
    // A batched a times one b is one tall matmul: [B*M, K] @ [K, N].
    fold = nb > 1 && shape_numel(batch_dims(b2)) == 1 && batch_dims(a2) == batch &&
           a2.is_contiguous() && a2.dtype() == DType::kF32;
    if (fold) {
      oa = {reshape(a2, {1, nb * m, k}), false};
    } else {
      oa = to_kernel_operand(a2, batch);
    }
    ob = to_kernel_operand(b2, batch);
    oa.t = in_precision(oa.t, precision);
    ob.t = in_precision(ob.t, precision);
    Tensor r = matmul_kernel(kernels_for(oa.t), precision)(oa.t, ob.t, oa.trans, ob.trans);
    Shape out_shape = batch;
    if (a.dim() > 1) out_shape.push_back(m);
    if (b.dim() > 1) out_shape.push_back(n);
    out = reshape(r, out_shape);
  }
  autograd::record("matmul", {a, b}, out,
                   [oa, ob, fold, batch, a2_shape, b2_shape, a_shape = a.shape(),
                    b_shape = b.shape(), precision](const Tensor& g,
                                                    const std::vector<bool>& needs) {
                     const MatmulKernel mm = matmul_kernel(kernels_for(g), precision);
                     const int64_t m = a2_shape[a2_shape.size() - 2];
                     const int64_t n = b2_shape.back();
                     const int64_t nb = shape_numel(batch);
                     const Tensor g3 =
                         in_precision(reshape(as_f32_contiguous(g), {nb, m, n}), precision);
                     std::vector<Tensor> grads(2);
                     if (needs[0]) {                                     // dA = dC @ B^T
                       Tensor r = mm(g3, ob.t, false, !ob.trans);  // [B, M, K]
                       grads[0] = reshape(reduce_to(r, batch, a2_shape), a_shape);
                     }
                     if (needs[1]) {  // dB = A^T @ dC
                       Tensor r;
                       if (fold) {
                         r = mm(oa.t, reshape(g3, {1, nb * m, n}), true, false);  // [1, K, N]
                         r = reshape(r, {r.size(1), r.size(2)});
                         grads[1] = reshape(sum_to(r, b2_shape), b_shape);
                       } else {
                         r = mm(oa.t, g3, !oa.trans, false);  // [B, K, N]
                         grads[1] = reshape(reduce_to(r, batch, b2_shape), b_shape);
                       }
                     }
                     return grads;
                   });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_float(x, "linear", "x");
  check_float(weight, "linear", "weight");
  STIPPLE_CHECK(x.dim() >= 1 && weight.dim() == 2,
                "linear: expected x [..., in] and weight [out, in], got x ", x.describe(),
                " and weight ", weight.describe());
  const int64_t in = weight.size(1), out_features = weight.size(0);
  STIPPLE_CHECK(x.size(-1) == in, "linear: x ", x.describe(), " has ", x.size(-1),
                " features but weight ", weight.describe(), " expects ", in);
  if (bias.defined()) {
    check_float(bias, "linear", "bias");
    STIPPLE_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "linear: bias ", bias.describe(),
                  " does not match weight ", weight.describe(), " (expected [", out_features, "])");
  }
  const int64_t rows = x.numel() / in;
  same_device("linear", x, weight, bias);
  const MatmulPrecision precision = matmul_precision();
  Tensor x3, w3, out;
  {
    autograd::NoGradGuard no_grad;
    x3 = in_precision(reshape(as_f32_contiguous(x), {1, rows, in}), precision);
    w3 = in_precision(reshape(as_f32_contiguous(weight), {1, out_features, in}), precision);
    Tensor r = matmul_kernel(kernels_for(x3), precision)(x3, w3, false, true);  // [1, rows, out]
    if (bias.defined()) {
      Tensor bv = expand(reshape(as_f32_contiguous(bias), {1, 1, out_features}), r.shape());
      r = kernels_for(r).binary(BinaryOp::kAdd, r, bv);
    }
    Shape out_shape(x.shape().begin(), x.shape().end() - 1);
    out_shape.push_back(out_features);
    out = reshape(r, out_shape);
  }
  autograd::record("linear", {x, weight, bias}, out,
                   [x3, w3, x_shape = x.shape(), w_shape = weight.shape(), rows, out_features,
                    precision](const Tensor& g, const std::vector<bool>& needs) {
                     const MatmulKernel mm = matmul_kernel(kernels_for(g), precision);
                     const Tensor g3 = reshape(as_f32_contiguous(g), {1, rows, out_features});
                     const Tensor gp = needs[0] || needs[1] ? in_precision(g3, precision) : g3;
                     std::vector<Tensor> grads(3);
                     if (needs[0]) grads[0] = reshape(mm(gp, w3, false, false), x_shape);
                     if (needs[1]) grads[1] = reshape(mm(gp, x3, true, false), w_shape);
                     if (needs[2]) grads[2] = sum(g3, {0, 1});
                     return grads;
                   });
  return out;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& p) {
  check_float(x, "conv2d", "x");
  check_float(weight, "conv2d", "weight");
  STIPPLE_CHECK(x.dim() == 4, "conv2d: x must be 4-D [N, C, H, W], got ", x.describe());
  STIPPLE_CHECK(weight.dim() == 4, "conv2d: weight must be 4-D [O, C, kh, kw], got ",
                weight.describe());
  STIPPLE_CHECK(x.size(1) == weight.size(1), "conv2d: x ", x.describe(), " has ", x.size(1),
                " channels but weight ", weight.describe(), " expects ", weight.size(1),
                " (groups = 1 only)");
  if (bias.defined()) {
    check_float(bias, "conv2d", "bias");
    STIPPLE_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "conv2d: bias ",
                  bias.describe(), " does not match weight ", weight.describe(), " (expected [",
                  weight.size(0), "])");
  }
  STIPPLE_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dilation_h >= 1 && p.dilation_w >= 1 &&
                    p.pad_h >= 0 && p.pad_w >= 0,
                "conv2d: stride and dilation must be >= 1 and padding >= 0, got stride ",
                p.stride_h, "x", p.stride_w, ", padding ", p.pad_h, "x", p.pad_w, ", dilation ",
                p.dilation_h, "x", p.dilation_w);
  const int64_t reach_h = p.dilation_h * (weight.size(2) - 1) + 1;
  const int64_t reach_w = p.dilation_w * (weight.size(3) - 1) + 1;
  STIPPLE_CHECK(x.size(2) + 2 * p.pad_h >= reach_h && x.size(3) + 2 * p.pad_w >= reach_w,
                "conv2d: input ", x.describe(), " padded by ", p.pad_h, "x", p.pad_w,
                " is smaller than the kernel ", weight.describe(), " (dilation ", p.dilation_h, "x",
                p.dilation_w, ")");

  const Device device = same_device("conv2d", x, weight, bias);
  const bool record = autograd::needs_record({&x, &weight, &bias});
  // The channel-blocked layout is the CPU's (oneDNN's); other devices keep plain NCHW.
  const bool allow_blocked = !record && blocked_layout_enabled() && device == Device::kCPU;
  Tensor xk, wk, bk, out;
  {
    autograd::NoGradGuard no_grad;
    xk = x.is_blocked() ? x : as_f32_contiguous(x);  // blocked tensors are always f32
    // f16/bf16 weights (half-precision checkpoints) go to the kernel as they are on inference
    // paths: the fast kernel converts them while reordering to its layout.
    const bool half_weight = !record && weight.is_contiguous() &&
                             (weight.dtype() == DType::kF16 || weight.dtype() == DType::kBF16);
    wk = half_weight ? weight : as_f32_contiguous(weight);
    if (bias.defined()) bk = as_f32_contiguous(bias);
    out = kernels_for(device).conv2d(xk, wk, bk, p, allow_blocked);
  }
  autograd::record("conv2d", {x, weight, bias}, out,
                   [xk, wk, p](const Tensor& g, const std::vector<bool>& needs) {
                     const KernelTable& k = kernels_for(g);
                     Tensor gy = as_f32_contiguous(g);
                     std::vector<Tensor> grads(3);
                     if (needs[0]) grads[0] = k.conv2d_backward_data(gy, wk, xk.shape(), p);
                     if (needs[1] || needs[2]) {
                       k.conv2d_backward_weight(xk, gy, wk.shape(), p,
                                                needs[1] ? &grads[1] : nullptr,
                                                needs[2] ? &grads[2] : nullptr);
                     }
                     return grads;
                   });
  return out;
}

}  // namespace stipple::ops

// Elementwise ops: unary functions, broadcasting binary ops, affine/pow/clamp, GEGLU, and the
// arithmetic operators on Tensor. Gradient rules sit next to each forward.
#include <cmath>

#include "ops/op_util.h"

namespace stipple::ops {
namespace {

// f32 input as the kernels want it; channel-blocked tensors pass through (elementwise kernels
// accept them, see kernels.h).
Tensor elementwise_input(const Tensor& x) { return x.is_blocked() ? x : as_f32_contiguous(x); }

// Per-element mask (0/1 as f32) of `pred(a, b)` over the broadcast of a and b.
template <typename Pred>
Tensor compare_mask(const Tensor& a, const Tensor& b, const Shape& shape, Pred pred) {
  const Tensor ea = as_f32_contiguous(expand(contiguous(a).to(DType::kF32), shape));
  const Tensor eb = as_f32_contiguous(expand(contiguous(b).to(DType::kF32), shape));
  Tensor m = Tensor::empty(shape);
  const float* pa = ea.data<float>();
  const float* pb = eb.data<float>();
  float* pm = m.data<float>();
  for (int64_t i = 0; i < m.numel(); ++i) pm[i] = pred(pa[i], pb[i]) ? 1.0f : 0.0f;
  return m;
}

}  // namespace

Tensor unary(UnaryOp op, const Tensor& x0) {
  check_float(x0, "unary op", "x");
  const Tensor x = elementwise_input(x0);
  Tensor out = kernels_for(x).unary(op, x);
  // The rule keeps a detached view of the output, never `out` itself: a node that owned its
  // output would form a cycle, and a graph never run backward would leak.
  const Tensor y_saved = out.detach();
  autograd::record("unary", {x0}, out, [op, x, y_saved](const Tensor& g, const std::vector<bool>&) {
    const Tensor gk = !x.is_blocked() ? as_f32_contiguous(g)
                      : g.is_blocked()  ? g
                                        : to_blocked(g, x.channel_block());
    return std::vector<Tensor>{kernels_for(x).unary_backward(op, x, y_saved, gk)};
  });
  return out;
}

Tensor neg(const Tensor& x) { return unary(UnaryOp::kNeg, x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::kExp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::kLog, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::kSqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::kRsqrt, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::kSigmoid, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::kTanh, x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::kSilu, x); }
Tensor gelu(const Tensor& x, bool tanh_approximation) {
  return unary(tanh_approximation ? UnaryOp::kGeluTanh : UnaryOp::kGeluErf, x);
}
Tensor quick_gelu(const Tensor& x) { return unary(UnaryOp::kQuickGelu, x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::kRelu, x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::kAbs, x); }
Tensor square(const Tensor& x) { return unary(UnaryOp::kSquare, x); }
Tensor sin(const Tensor& x) { return unary(UnaryOp::kSin, x); }
Tensor cos(const Tensor& x) { return unary(UnaryOp::kCos, x); }
Tensor reciprocal(const Tensor& x) { return unary(UnaryOp::kReciprocal, x); }

Tensor binary(BinaryOp op, const Tensor& a0, const Tensor& b0) {
  check_float(a0, "binary op", "a");
  check_float(b0, "binary op", "b");
  same_device("binary op", a0, b0);
  Tensor out;
  if (a0.is_blocked() && b0.is_blocked() && a0.shape() == b0.shape() &&
      a0.channel_block() == b0.channel_block()) {
    out = kernels_for(a0).binary(op, a0, b0);
  } else {
    const Tensor a = a0.is_blocked() ? contiguous(a0) : a0;
    const Tensor b = b0.is_blocked() ? contiguous(b0) : b0;
    const Shape shape = broadcast_shapes(a.shape(), b.shape(), "binary op");
    const Tensor ea = expand(a.dtype() == DType::kF32 ? a : cast(a, DType::kF32), shape);
    const Tensor eb = expand(b.dtype() == DType::kF32 ? b : cast(b, DType::kF32), shape);
    out = kernels_for(ea).binary(op, ea.detach(), eb.detach());
  }
  autograd::record(
      "binary", {a0, b0}, out, [op, a0, b0](const Tensor& g, const std::vector<bool>& needs) {
        const Tensor a = a0.detach(), b = b0.detach();
        std::vector<Tensor> grads(2);
        auto reduce_to = [&](const Tensor& t, const Tensor& like) {
          return sum_to(t, like.shape());
        };
        switch (op) {
          case BinaryOp::kAdd:
            if (needs[0]) grads[0] = reduce_to(g, a);
            if (needs[1]) grads[1] = reduce_to(g, b);
            break;
          case BinaryOp::kSub:
            if (needs[0]) grads[0] = reduce_to(g, a);
            if (needs[1]) grads[1] = reduce_to(neg(g), b);
            break;
          case BinaryOp::kMul:
            if (needs[0]) grads[0] = reduce_to(mul(g, b), a);
            if (needs[1]) grads[1] = reduce_to(mul(g, a), b);
            break;
          case BinaryOp::kDiv:
            if (needs[0]) grads[0] = reduce_to(div(g, b), a);
            if (needs[1]) grads[1] = reduce_to(neg(div(mul(g, a), mul(b, b))), b);
            break;
          case BinaryOp::kMax:
          case BinaryOp::kMin: {
            // The gradient goes to the selected input; ties split it evenly (as torch.maximum).
            const bool is_max = op == BinaryOp::kMax;
            const Shape shape = g.shape();
            const Tensor pick_a = compare_mask(a, b, shape, [is_max](float x, float y) {
              return is_max ? x > y : x < y;
            });
            const Tensor tie = compare_mask(a, b, shape, [](float x, float y) { return x == y; });
            const Tensor wa = add(pick_a, affine(tie, 0.5f, 0.0f));
            if (needs[0]) grads[0] = reduce_to(mul(g, wa), a);
            if (needs[1]) grads[1] = reduce_to(mul(g, affine(wa, -1.0f, 1.0f)), b);
            break;
          }
        }
        return grads;
      });
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kAdd, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kSub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kMul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kDiv, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kMax, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kMin, a, b); }

Tensor affine(const Tensor& x0, float scale, float shift) {
  check_float(x0, "affine", "x");
  Tensor out = kernels_for(x0).affine(elementwise_input(x0), scale, shift);
  autograd::record("affine", {x0}, out, [scale](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{affine(g, scale, 0.0f)};
  });
  return out;
}

Tensor pow(const Tensor& x0, float exponent) {
  check_float(x0, "pow", "x");
  const Tensor x = as_f32_contiguous(x0);
  Tensor out = kernels_for(x).pow_scalar(x, exponent);
  autograd::record("pow", {x0}, out, [x, exponent](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{
        mul(g, affine(kernels_for(x).pow_scalar(x, exponent - 1.0f), exponent, 0.0f))};
  });
  return out;
}

Tensor clamp(const Tensor& x0, float lo, float hi) {
  check_float(x0, "clamp", "x");
  STIPPLE_CHECK(lo <= hi, "clamp: lower bound ", lo, " above upper bound ", hi);
  const Tensor x = as_f32_contiguous(x0);
  Tensor out = kernels_for(x).clamp(x, lo, hi);
  autograd::record("clamp", {x0}, out, [x, lo, hi](const Tensor& g, const std::vector<bool>&) {
    Tensor inside = Tensor::empty(x.shape());
    const float* px = x.data<float>();
    float* pm = inside.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) pm[i] = (px[i] >= lo && px[i] <= hi) ? 1.0f : 0.0f;
    return std::vector<Tensor>{mul(g, inside)};
  });
  return out;
}

Tensor geglu(const Tensor& x) {
  check_float(x, "geglu", "x");
  STIPPLE_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, "geglu: last dim of ", x.describe(),
                " must be even");
  const std::vector<Tensor> parts = chunk(x, 2, -1);  // (hidden, gate), as diffusers' GEGLU
  return mul(parts[0], gelu(parts[1]));
}

}  // namespace stipple::ops

namespace stipple {

Tensor operator+(const Tensor& a, const Tensor& b) { return ops::add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return ops::sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return ops::mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return ops::div(a, b); }
Tensor operator+(const Tensor& a, float s) { return ops::affine(a, 1.0f, s); }
Tensor operator-(const Tensor& a, float s) { return ops::affine(a, 1.0f, -s); }
Tensor operator*(const Tensor& a, float s) { return ops::affine(a, s, 0.0f); }
Tensor operator/(const Tensor& a, float s) { return ops::affine(a, 1.0f / s, 0.0f); }
Tensor operator+(float s, const Tensor& a) { return ops::affine(a, 1.0f, s); }
Tensor operator-(float s, const Tensor& a) { return ops::affine(a, -1.0f, s); }
Tensor operator*(float s, const Tensor& a) { return ops::affine(a, s, 0.0f); }
Tensor operator-(const Tensor& a) { return ops::neg(a); }

}  // namespace stipple

// Reference elementwise kernels: plain loops in double precision, rounded to f32.
#include <algorithm>
#include <cmath>

#include "backends/cpu/fill.h"
#include "backends/cpu/strided.h"

namespace stipple::cpu {
namespace {

using ops::BinaryOp;
using ops::UnaryOp;

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double unary_f(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kExp: return std::exp(x);
    case UnaryOp::kLog: return std::log(x);
    case UnaryOp::kSqrt: return std::sqrt(x);
    case UnaryOp::kRsqrt: return 1.0 / std::sqrt(x);
    case UnaryOp::kSigmoid: return sigmoid(x);
    case UnaryOp::kTanh: return std::tanh(x);
    case UnaryOp::kSilu: return x * sigmoid(x);
    case UnaryOp::kGeluErf: return 0.5 * x * (1.0 + std::erf(x * kSqrt1_2));
    case UnaryOp::kGeluTanh:
      return 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x)));
    case UnaryOp::kQuickGelu: return x * sigmoid(1.702 * x);
    case UnaryOp::kRelu: return x > 0 ? x : 0.0;
    case UnaryOp::kAbs: return std::fabs(x);
    case UnaryOp::kSquare: return x * x;
    case UnaryOp::kSin: return std::sin(x);
    case UnaryOp::kCos: return std::cos(x);
    case UnaryOp::kReciprocal: return 1.0 / x;
  }
  return 0;
}

// d f / d x at x (y = f(x) given for convenience).
double unary_df(UnaryOp op, double x, double y) {
  switch (op) {
    case UnaryOp::kNeg: return -1.0;
    case UnaryOp::kExp: return y;
    case UnaryOp::kLog: return 1.0 / x;
    case UnaryOp::kSqrt: return 0.5 / y;
    case UnaryOp::kRsqrt: return -0.5 * y * y * y;
    case UnaryOp::kSigmoid: return y * (1.0 - y);
    case UnaryOp::kTanh: return 1.0 - y * y;
    case UnaryOp::kSilu: {
      const double s = sigmoid(x);
      return s * (1.0 + x * (1.0 - s));
    }
    case UnaryOp::kGeluErf:
      return 0.5 * (1.0 + std::erf(x * kSqrt1_2)) + x * kInvSqrt2Pi * std::exp(-0.5 * x * x);
    case UnaryOp::kGeluTanh: {
      const double u = kSqrt2OverPi * (x + 0.044715 * x * x * x);
      const double t = std::tanh(u);
      return 0.5 * (1.0 + t) +
             0.5 * x * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case UnaryOp::kQuickGelu: {
      const double s = sigmoid(1.702 * x);
      return s + 1.702 * x * s * (1.0 - s);
    }
    case UnaryOp::kRelu: return x > 0 ? 1.0 : 0.0;
    case UnaryOp::kAbs: return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0);
    case UnaryOp::kSquare: return 2.0 * x;
    case UnaryOp::kSin: return std::cos(x);
    case UnaryOp::kCos: return -std::sin(x);
    case UnaryOp::kReciprocal: return -y * y;
  }
  return 0;
}

double binary_f(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
    case BinaryOp::kMax: return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
    case BinaryOp::kMin: return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b);
  }
  return 0;
}

// An output like x: blocked when x is, plain contiguous otherwise.
Tensor empty_like_layout(const Tensor& x) {
  return x.is_blocked() ? Tensor::empty_blocked(x.shape(), x.channel_block())
                        : Tensor::empty(x.shape());
}

template <typename F>
Tensor map1(const Tensor& x, F f) {
  Tensor out = empty_like_layout(x);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) po[i] = static_cast<float>(f(static_cast<double>(px[i])));
  return out;
}

Tensor ref_unary(UnaryOp op, const Tensor& x) {
  return map1(x, [op](double v) { return unary_f(op, v); });
}

Tensor ref_unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy) {
  Tensor out = empty_like_layout(x);
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  const float* pg = gy.data<float>();
  float* po = out.data<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; ++i) po[i] = static_cast<float>(pg[i] * unary_df(op, px[i], py[i]));
  return out;
}

Tensor ref_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  if (a.is_blocked() || b.is_blocked()) {
    Tensor out = empty_like_layout(a);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    for (int64_t i = 0; i < a.numel(); ++i)
      po[i] = static_cast<float>(binary_f(op, pa[i], pb[i]));
    return out;
  }
  Tensor out = Tensor::empty(a.shape());
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  for_each_offset2(a.shape(), a.strides(), b.strides(), [&](int64_t lin, int64_t oa, int64_t ob) {
    po[lin] = static_cast<float>(binary_f(op, pa[oa], pb[ob]));
  });
  return out;
}

Tensor ref_affine(const Tensor& x, float scale, float shift) {
  return map1(x, [=](double v) { return v * scale + shift; });
}

Tensor ref_pow_scalar(const Tensor& x, float e) {
  return map1(x, [=](double v) { return std::pow(v, static_cast<double>(e)); });
}

Tensor ref_clamp(const Tensor& x, float lo, float hi) {
  return map1(x, [=](double v) { return std::isnan(v) ? v : std::min<double>(std::max<double>(v, lo), hi); });
}

}  // namespace

void fill_reference_elementwise(KernelTable& t) {
  t.unary = ref_unary;
  t.unary_backward = ref_unary_backward;
  t.binary = ref_binary;
  t.affine = ref_affine;
  t.pow_scalar = ref_pow_scalar;
  t.clamp = ref_clamp;
}

}  // namespace stipple::cpu

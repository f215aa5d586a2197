// Fast elementwise kernels: Highway SIMD with run-time dispatch (one binary for every x86-64 CPU)
// and OpenMP over chunks. Covers unary ops and their backward, binary ops when both operands are
// contiguous (or both blocked with one shape) or one is a broadcast scalar / row / channel of the
// other, affine, and bulk f16/bf16 <-> f32 conversion of contiguous tensors. Everything else falls
// back to the reference kernels captured when the table is filled.
//
// Accuracy against the reference (double precision, rounded once):
//   add, sub, mul, div, max, min, neg, abs, relu, square, f16/bf16 conversions   bit exact
//   sqrt, reciprocal, rsqrt, affine                                              <= 1-2 ulp
//   exp, log, tanh, sin, cos (hwy/contrib/math)                                  <= 4 ulp
//   sigmoid, silu, quick_gelu, gelu_tanh: written as x / (1 + exp(-k x)) so the result keeps its
//   relative accuracy for large negative x (no 1 + tanh cancellation)           ~ 1e-6 relative
//   gelu_erf: Phi(x) from erfc (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7),
//   as 1 - erfc/2 for x >= 0 and erfc/2 for x < 0, so no cancellation either    ~ 1e-6 relative
// sin and cos lanes beyond hwy's range (|x| > 39000) are computed in double, like the reference.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backends/cpu/fast_elementwise.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cpu/convert.h"
#include "backends/cpu/fill.h"

HWY_BEFORE_NAMESPACE();
namespace stipple::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Op codes as ints (ops::UnaryOp / BinaryOp values) so that every target shares one signature.
constexpr int kNeg = static_cast<int>(ops::UnaryOp::kNeg);
constexpr int kExp = static_cast<int>(ops::UnaryOp::kExp);
constexpr int kLog = static_cast<int>(ops::UnaryOp::kLog);
constexpr int kSqrt = static_cast<int>(ops::UnaryOp::kSqrt);
constexpr int kRsqrt = static_cast<int>(ops::UnaryOp::kRsqrt);
constexpr int kSigmoid = static_cast<int>(ops::UnaryOp::kSigmoid);
constexpr int kTanh = static_cast<int>(ops::UnaryOp::kTanh);
constexpr int kSilu = static_cast<int>(ops::UnaryOp::kSilu);
constexpr int kGeluErf = static_cast<int>(ops::UnaryOp::kGeluErf);
constexpr int kGeluTanh = static_cast<int>(ops::UnaryOp::kGeluTanh);
constexpr int kQuickGelu = static_cast<int>(ops::UnaryOp::kQuickGelu);
constexpr int kRelu = static_cast<int>(ops::UnaryOp::kRelu);
constexpr int kAbs = static_cast<int>(ops::UnaryOp::kAbs);
constexpr int kSquare = static_cast<int>(ops::UnaryOp::kSquare);
constexpr int kSin = static_cast<int>(ops::UnaryOp::kSin);
constexpr int kCos = static_cast<int>(ops::UnaryOp::kCos);
constexpr int kReciprocal = static_cast<int>(ops::UnaryOp::kReciprocal);

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// ---- building blocks ----

// e^x with overflow to +inf (hwy's Exp is valid up to +104) and NaN passed through.
HWY_INLINE VF ExpSafe(DF d, VF x) {
  const VF y = hn::Exp(d, hn::Min(x, hn::Set(d, 100.0f)));
  return hn::IfThenElse(hn::Eq(x, x), y, x);
}

// e^(-k x) and 1 / (1 + e^(-k x)): a sigmoid whose complement 1 - s = e s keeps full relative
// accuracy on both tails. The exponent is capped at 88 so e stays finite (e s stays 1, never
// inf * 0); below k x = -88 the sigmoid is < 1e-38 either way.
struct Sigmoid {
  VF e, s;
};
HWY_INLINE Sigmoid SigmoidOf(DF d, VF kx) {
  const VF e = ExpSafe(d, hn::Min(hn::Neg(kx), hn::Set(d, 88.0f)));
  return {e, hn::Div(hn::Set(d, 1.0f), hn::Add(hn::Set(d, 1.0f), e))};
}

// erfc(z) for z = x / sqrt 2 >= 0 (Numerical Recipes, erfcc: fractional error < 1.2e-7
// everywhere).
HWY_INLINE VF ErfcNonNeg(DF d, VF z, VF x) {
  const VF t = hn::Div(hn::Set(d, 1.0f), hn::MulAdd(hn::Set(d, 0.5f), z, hn::Set(d, 1.0f)));
  VF p = hn::Set(d, 0.17087277f);
  p = hn::MulAdd(p, t, hn::Set(d, -0.82215223f));
  p = hn::MulAdd(p, t, hn::Set(d, 1.48851587f));
  p = hn::MulAdd(p, t, hn::Set(d, -1.13520398f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.27886807f));
  p = hn::MulAdd(p, t, hn::Set(d, -0.18628806f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.09678418f));
  p = hn::MulAdd(p, t, hn::Set(d, 0.37409196f));
  p = hn::MulAdd(p, t, hn::Set(d, 1.00002368f));
  p = hn::MulAdd(p, t, hn::Set(d, -1.26551223f));
  // -z^2 - 1.26551223 + t P(t), with z^2 = x^2 / 2 from x itself: the rounding of z would
  // otherwise cost |z^2| ulp-sized relative errors in the result on the tail.
  const VF arg = hn::NegMulAdd(hn::Mul(hn::Set(d, 0.5f), x), x, p);
  return hn::Mul(t, ExpSafe(d, arg));
}

// Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF, without cancellation.
HWY_INLINE VF NormalCdf(DF d, VF x) {
  const VF ax = hn::Abs(x);
  const VF z = hn::Mul(ax, hn::Set(d, kSqrt1_2));
  const VF half_erfc = hn::Mul(hn::Set(d, 0.5f), ErfcNonNeg(d, z, ax));
  return hn::IfThenElse(hn::Ge(x, hn::Zero(d)), hn::Sub(hn::Set(d, 1.0f), half_erfc), half_erfc);
}

HWY_INLINE VF LogSafe(DF d, VF x) {
  const VF zero = hn::Zero(d);
  VF y = hn::Log(d, x);
  y = hn::IfThenElse(hn::Eq(x, zero), hn::Set(d, -INFINITY), y);
  y = hn::IfThenElse(hn::Lt(x, zero), hn::Set(d, NAN), y);
  y = hn::IfThenElse(hn::Eq(x, hn::Set(d, INFINITY)), x, y);
  return hn::IfThenElse(hn::Eq(x, x), y, x);
}

// sqrt(2/pi) (x + 0.044715 x^3), tanh-GELU's argument.
HWY_INLINE VF GeluTanhArg(DF d, VF x) {
  const VF x2 = hn::Mul(x, x);
  return hn::Mul(hn::Mul(hn::Set(d, kSqrt2OverPi), x),
                 hn::MulAdd(hn::Set(d, 0.044715f), x2, hn::Set(d, 1.0f)));
}

// True when some lane is outside hwy's sin/cos range; those vectors go through double.
HWY_INLINE bool TrigOutOfRange(DF d, VF x) {
  return !hn::AllFalse(d, hn::Not(hn::Le(hn::Abs(x), hn::Set(d, 39000.0f))));
}

template <int kOp>
HWY_INLINE VF UnaryVec(DF d, VF x) {
  const VF one = hn::Set(d, 1.0f);
  if constexpr (kOp == kNeg) return hn::Neg(x);
  if constexpr (kOp == kExp) return ExpSafe(d, x);
  if constexpr (kOp == kLog) return LogSafe(d, x);
  if constexpr (kOp == kSqrt) return hn::Sqrt(x);
  if constexpr (kOp == kRsqrt) return hn::Div(one, hn::Sqrt(x));
  if constexpr (kOp == kSigmoid) return SigmoidOf(d, x).s;
  if constexpr (kOp == kTanh) return hn::Tanh(d, x);
  if constexpr (kOp == kSilu) return hn::Mul(x, SigmoidOf(d, x).s);
  if constexpr (kOp == kGeluErf) return hn::Mul(x, NormalCdf(d, x));
  // 0.5 (1 + tanh u) = sigmoid(2 u).
  if constexpr (kOp == kGeluTanh) {
    return hn::Mul(x, SigmoidOf(d, hn::Add(GeluTanhArg(d, x), GeluTanhArg(d, x))).s);
  }
  if constexpr (kOp == kQuickGelu) {
    return hn::Mul(x, SigmoidOf(d, hn::Mul(hn::Set(d, 1.702f), x)).s);
  }
  if constexpr (kOp == kRelu) return hn::IfThenElseZero(hn::Gt(x, hn::Zero(d)), x);
  if constexpr (kOp == kAbs) return hn::Abs(x);
  if constexpr (kOp == kSquare) return hn::Mul(x, x);
  if constexpr (kOp == kSin) return hn::Sin(d, x);
  if constexpr (kOp == kCos) return hn::Cos(d, x);
  if constexpr (kOp == kReciprocal) return hn::Div(one, x);
  return x;
}

// grad_x = grad_y * f'(x), with y = f(x) where that is cheaper.
template <int kOp>
HWY_INLINE VF UnaryBackwardVec(DF d, VF x, VF y, VF g) {
  const VF one = hn::Set(d, 1.0f);
  if constexpr (kOp == kNeg) return hn::Neg(g);
  if constexpr (kOp == kExp) return hn::Mul(g, y);
  if constexpr (kOp == kLog) return hn::Div(g, x);
  if constexpr (kOp == kSqrt) return hn::Div(hn::Mul(g, hn::Set(d, 0.5f)), y);
  if constexpr (kOp == kRsqrt) {
    return hn::Mul(g, hn::Mul(hn::Set(d, -0.5f), hn::Mul(y, hn::Mul(y, y))));
  }
  if constexpr (kOp == kSigmoid) return hn::Mul(g, hn::Mul(y, hn::Sub(one, y)));
  if constexpr (kOp == kTanh) return hn::Mul(g, hn::NegMulAdd(y, y, one));
  if constexpr (kOp == kSilu) {  // s (1 + x (1 - s)), 1 - s = e s
    const Sigmoid s = SigmoidOf(d, x);
    return hn::Mul(g, hn::Mul(s.s, hn::MulAdd(x, hn::Mul(s.e, s.s), one)));
  }
  if constexpr (kOp == kGeluErf) {  // Phi(x) + x phi(x)
    const VF pdf =
        hn::Mul(hn::Set(d, kInvSqrt2Pi), ExpSafe(d, hn::Mul(hn::Set(d, -0.5f), hn::Mul(x, x))));
    return hn::Mul(g, hn::MulAdd(x, pdf, NormalCdf(d, x)));
  }
  if constexpr (kOp == kGeluTanh) {
    // With s = sigmoid(2u): 0.5 (1 + t) = s and 0.5 (1 - t^2) = 2 s (1 - s).
    const VF u = GeluTanhArg(d, x);
    const Sigmoid s = SigmoidOf(d, hn::Add(u, u));
    const VF x2 = hn::Mul(x, x);
    const VF du =
        hn::Mul(hn::Set(d, kSqrt2OverPi), hn::MulAdd(hn::Set(d, 3.0f * 0.044715f), x2, one));
    const VF s1 = hn::Mul(s.e, s.s);  // 1 - s
    const VF rest = hn::Mul(hn::Mul(hn::Add(x, x), hn::Mul(s.s, s1)), du);
    return hn::Mul(g, hn::Add(s.s, rest));
  }
  if constexpr (kOp == kQuickGelu) {  // s + 1.702 x s (1 - s)
    const VF kx = hn::Mul(hn::Set(d, 1.702f), x);
    const Sigmoid s = SigmoidOf(d, kx);
    return hn::Mul(g, hn::MulAdd(kx, hn::Mul(s.s, hn::Mul(s.e, s.s)), s.s));
  }
  if constexpr (kOp == kRelu) return hn::IfThenElseZero(hn::Gt(x, hn::Zero(d)), g);
  if constexpr (kOp == kAbs) {
    const VF zero = hn::Zero(d);
    const VF sign =
        hn::IfThenElse(hn::Gt(x, zero), one, hn::IfThenElse(hn::Lt(x, zero), hn::Neg(one), zero));
    return hn::Mul(g, sign);
  }
  if constexpr (kOp == kSquare) return hn::Mul(g, hn::Add(x, x));
  if constexpr (kOp == kSin) return hn::Mul(g, hn::Cos(d, x));
  if constexpr (kOp == kCos) return hn::Neg(hn::Mul(g, hn::Sin(d, x)));
  if constexpr (kOp == kReciprocal) return hn::Neg(hn::Mul(g, hn::Mul(y, y)));
  return g;
}

// Lanes of sin/cos (forward or backward) beyond hwy's range, in double as the reference does.
template <int kOp>
void TrigScalar(const float* x, const float* g, float* out, size_t n, bool backward) {
  for (size_t i = 0; i < n; ++i) {
    const double v = x[i];
    if (!backward) {
      out[i] = static_cast<float>(kOp == kSin ? std::sin(v) : std::cos(v));
    } else {
      out[i] = static_cast<float>(g[i] * (kOp == kSin ? std::cos(v) : -std::sin(v)));
    }
  }
}

template <int kOp>
void UnaryLoop(const float* HWY_RESTRICT x, float* HWY_RESTRICT out, int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const VF v = hn::LoadU(d, x + i);
    if constexpr (kOp == kSin || kOp == kCos) {
      if (HWY_UNLIKELY(TrigOutOfRange(d, v))) {
        TrigScalar<kOp>(x + i, nullptr, out + i, lanes, false);
        continue;
      }
    }
    hn::StoreU(UnaryVec<kOp>(d, v), d, out + i);
  }
  if (i < n) {  // the tail through a padded buffer, so it rounds like the body
    float buf[64] = {};
    const size_t rest = static_cast<size_t>(n - i);
    std::memcpy(buf, x + i, rest * sizeof(float));
    const VF v = hn::LoadU(d, buf);
    if ((kOp == kSin || kOp == kCos) && TrigOutOfRange(d, v)) {
      TrigScalar<kOp>(x + i, nullptr, out + i, rest, false);
      return;
    }
    hn::StoreU(UnaryVec<kOp>(d, v), d, buf);
    std::memcpy(out + i, buf, rest * sizeof(float));
  }
}

template <int kOp>
void UnaryBackwardLoop(const float* HWY_RESTRICT x, const float* HWY_RESTRICT y,
                       const float* HWY_RESTRICT g, float* HWY_RESTRICT out, int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const VF vx = hn::LoadU(d, x + i);
    if constexpr (kOp == kSin || kOp == kCos) {
      if (HWY_UNLIKELY(TrigOutOfRange(d, vx))) {
        TrigScalar<kOp>(x + i, g + i, out + i, lanes, true);
        continue;
      }
    }
    hn::StoreU(UnaryBackwardVec<kOp>(d, vx, hn::LoadU(d, y + i), hn::LoadU(d, g + i)), d, out + i);
  }
  if (i < n) {
    float bx[64] = {}, by[64] = {}, bg[64] = {};
    const size_t rest = static_cast<size_t>(n - i);
    std::memcpy(bx, x + i, rest * sizeof(float));
    std::memcpy(by, y + i, rest * sizeof(float));
    std::memcpy(bg, g + i, rest * sizeof(float));
    const VF vx = hn::LoadU(d, bx);
    if ((kOp == kSin || kOp == kCos) && TrigOutOfRange(d, vx)) {
      TrigScalar<kOp>(x + i, g + i, out + i, rest, true);
      return;
    }
    hn::StoreU(UnaryBackwardVec<kOp>(d, vx, hn::LoadU(d, by), hn::LoadU(d, bg)), d, bx);
    std::memcpy(out + i, bx, rest * sizeof(float));
  }
}

#define STIPPLE_UNARY_CASES(F)                                                              \
  F(kNeg)                                                                                   \
  F(kExp) F(kLog) F(kSqrt) F(kRsqrt) F(kSigmoid) F(kTanh) F(kSilu) F(kGeluErf) F(kGeluTanh) \
      F(kQuickGelu) F(kRelu) F(kAbs) F(kSquare) F(kSin) F(kCos) F(kReciprocal)

void UnaryChunk(int op, const float* x, float* out, int64_t n) {
  switch (op) {
#define STIPPLE_CASE(k) \
  case k:               \
    return UnaryLoop<k>(x, out, n);
    STIPPLE_UNARY_CASES(STIPPLE_CASE)
#undef STIPPLE_CASE
  }
}

void UnaryBackwardChunk(int op, const float* x, const float* y, const float* g, float* out,
                        int64_t n) {
  switch (op) {
#define STIPPLE_CASE(k) \
  case k:               \
    return UnaryBackwardLoop<k>(x, y, g, out, n);
    STIPPLE_UNARY_CASES(STIPPLE_CASE)
#undef STIPPLE_CASE
  }
}
#undef STIPPLE_UNARY_CASES

// ---- binary ----

template <int kOp>
HWY_INLINE VF BinaryVec(VF a, VF b) {
  constexpr int kAdd = static_cast<int>(ops::BinaryOp::kAdd);
  constexpr int kSub = static_cast<int>(ops::BinaryOp::kSub);
  constexpr int kMul = static_cast<int>(ops::BinaryOp::kMul);
  constexpr int kDiv = static_cast<int>(ops::BinaryOp::kDiv);
  constexpr int kMax = static_cast<int>(ops::BinaryOp::kMax);
  if constexpr (kOp == kAdd) return hn::Add(a, b);
  if constexpr (kOp == kSub) return hn::Sub(a, b);
  if constexpr (kOp == kMul) return hn::Mul(a, b);
  if constexpr (kOp == kDiv) return hn::Div(a, b);
  // max / min propagate NaN from either side, like the reference (a + b is NaN then).
  // (Ne is an ordered compare on x86: false for NaN. Not(Eq) is the NaN test.)
  const auto nan = hn::Not(hn::And(hn::Eq(a, a), hn::Eq(b, b)));
  if constexpr (kOp == kMax) return hn::IfThenElse(nan, hn::Add(a, b), hn::Max(a, b));
  return hn::IfThenElse(nan, hn::Add(a, b), hn::Min(a, b));
}

// mode 0: a and b both rows of n; mode 1: b is one value (*b); mode 2: a is one value (*a).
template <int kOp, int kMode>
void BinaryLoop(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, float* HWY_RESTRICT out,
                int64_t n) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF sa = kMode == 2 ? hn::Set(d, *a) : hn::Zero(d);
  const VF sb = kMode == 1 ? hn::Set(d, *b) : hn::Zero(d);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const VF va = kMode == 2 ? sa : hn::LoadU(d, a + i);
    const VF vb = kMode == 1 ? sb : hn::LoadU(d, b + i);
    hn::StoreU(BinaryVec<kOp>(va, vb), d, out + i);
  }
  if (i < n) {
    float ba[64] = {}, bb[64] = {};
    const size_t rest = static_cast<size_t>(n - i);
    if (kMode != 2) std::memcpy(ba, a + i, rest * sizeof(float));
    if (kMode != 1) std::memcpy(bb, b + i, rest * sizeof(float));
    const VF va = kMode == 2 ? sa : hn::LoadU(d, ba);
    const VF vb = kMode == 1 ? sb : hn::LoadU(d, bb);
    hn::StoreU(BinaryVec<kOp>(va, vb), d, ba);
    std::memcpy(out + i, ba, rest * sizeof(float));
  }
}

template <int kOp>
void BinaryModes(int mode, const float* a, const float* b, float* out, int64_t n) {
  if (mode == 0) return BinaryLoop<kOp, 0>(a, b, out, n);
  if (mode == 1) return BinaryLoop<kOp, 1>(a, b, out, n);
  return BinaryLoop<kOp, 2>(a, b, out, n);
}

void BinaryChunk(int op, int mode, const float* a, const float* b, float* out, int64_t n) {
  switch (static_cast<ops::BinaryOp>(op)) {
    case ops::BinaryOp::kAdd:
      return BinaryModes<0>(mode, a, b, out, n);
    case ops::BinaryOp::kSub:
      return BinaryModes<1>(mode, a, b, out, n);
    case ops::BinaryOp::kMul:
      return BinaryModes<2>(mode, a, b, out, n);
    case ops::BinaryOp::kDiv:
      return BinaryModes<3>(mode, a, b, out, n);
    case ops::BinaryOp::kMax:
      return BinaryModes<4>(mode, a, b, out, n);
    case ops::BinaryOp::kMin:
      return BinaryModes<5>(mode, a, b, out, n);
  }
}

// ---- affine ----

void AffineChunk(const float* HWY_RESTRICT x, float* HWY_RESTRICT out, int64_t n, float scale,
                 float shift) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const VF vs = hn::Set(d, scale), vt = hn::Set(d, shift);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    hn::StoreU(hn::MulAdd(hn::LoadU(d, x + i), vs, vt), d, out + i);
  }
  if (i < n) {
    float buf[64] = {};
    const size_t rest = static_cast<size_t>(n - i);
    std::memcpy(buf, x + i, rest * sizeof(float));
    hn::StoreU(hn::MulAdd(hn::LoadU(d, buf), vs, vt), d, buf);
    std::memcpy(out + i, buf, rest * sizeof(float));
  }
}

// ---- f16 / bf16 <-> f32, integer arithmetic: bit exact with core/dtype.cc on every target ----

using DI = hn::RebindToSigned<DF>;
using DH = hn::Rebind<uint16_t, DF>;

// F. Giesen's half_to_float: exponent rebias, Inf/NaN extension, subnormals renormalised by an
// exact float subtraction.
HWY_INLINE VF HalfToFloat(DF df, hn::Vec<DI> h) {
  const DI di;
  const auto shifted_exp = hn::Set(di, 0x7c00 << 13);
  auto o = hn::ShiftLeft<13>(hn::And(h, hn::Set(di, 0x7fff)));
  const auto exp = hn::And(o, shifted_exp);
  o = hn::Add(o, hn::Set(di, (127 - 15) << 23));
  const auto inf_nan = hn::Eq(exp, shifted_exp);
  const auto denorm = hn::Eq(exp, hn::Zero(di));
  o = hn::IfThenElse(inf_nan, hn::Add(o, hn::Set(di, (128 - 16) << 23)), o);
  const VF magic = hn::BitCast(df, hn::Set(di, 113 << 23));
  const VF renorm = hn::Sub(hn::BitCast(df, hn::Add(o, hn::Set(di, 1 << 23))), magic);
  o = hn::IfThenElse(denorm, hn::BitCast(di, renorm), o);
  o = hn::Or(o, hn::ShiftLeft<16>(hn::And(h, hn::Set(di, 0x8000))));
  return hn::BitCast(df, o);
}

// F. Giesen's float_to_half_fast3_rtne: round to nearest even; subnormal halves by adding a
// magic float (the FPU rounds); NaN -> 0x7e00 and overflow -> Inf, as f32_to_f16.
HWY_INLINE hn::Vec<DI> FloatToHalf(DF df, VF f) {
  const DI di;
  const auto bits = hn::BitCast(di, f);
  const auto sign = hn::And(bits, hn::Set(di, static_cast<int32_t>(0x80000000u)));
  const auto abs = hn::Xor(bits, sign);
  const auto f32_inf = hn::Set(di, 255 << 23);
  const auto f16_max_minus_1 = hn::Set(di, ((127 + 16) << 23) - 1);
  const VF denorm_magic = hn::BitCast(df, hn::Set(di, ((127 - 15) + (23 - 10) + 1) << 23));
  // subnormal (or zero) half
  const auto sub = hn::Sub(hn::BitCast(di, hn::Add(hn::BitCast(df, abs), denorm_magic)),
                           hn::BitCast(di, denorm_magic));
  // normal half
  const auto mant_odd = hn::And(hn::ShiftRight<13>(abs), hn::Set(di, 1));
  const auto norm =
      hn::ShiftRight<13>(hn::Add(hn::Add(abs, hn::Set(di, ((15 - 127) << 23) + 0xfff)), mant_odd));
  auto o = hn::IfThenElse(hn::Lt(abs, hn::Set(di, 113 << 23)), sub, norm);
  const auto special =
      hn::IfThenElse(hn::Gt(abs, f32_inf), hn::Set(di, 0x7e00), hn::Set(di, 0x7c00));
  o = hn::IfThenElse(hn::Gt(abs, f16_max_minus_1), special, o);  // abs >= 2^16
  const hn::RebindToUnsigned<DF> du;
  return hn::Or(o, hn::BitCast(di, hn::ShiftRight<16>(hn::BitCast(du, sign))));
}

HWY_INLINE VF BF16ToFloat(DF df, hn::Vec<DI> h) { return hn::BitCast(df, hn::ShiftLeft<16>(h)); }

HWY_INLINE hn::Vec<DI> FloatToBF16(VF f) {
  const DI di;
  const auto bits = hn::BitCast(di, f);
  const auto abs = hn::And(bits, hn::Set(di, 0x7fffffff));
  const hn::RebindToUnsigned<DF> du;
  const auto hi = hn::BitCast(di, hn::ShiftRight<16>(hn::BitCast(du, bits)));
  const auto lsb = hn::And(hi, hn::Set(di, 1));
  const auto rounded = hn::BitCast(
      di, hn::ShiftRight<16>(hn::BitCast(du, hn::Add(hn::Add(bits, hn::Set(di, 0x7fff)), lsb))));
  return hn::IfThenElse(hn::Gt(abs, hn::Set(di, 0x7f800000)), hn::Or(hi, hn::Set(di, 0x40)),
                        rounded);
}

// kind 0: f16 -> f32, 1: bf16 -> f32.
void HalfToFloatChunk(int kind, const uint16_t* HWY_RESTRICT src, float* HWY_RESTRICT dst,
                      int64_t n) {
  const DF df;
  const DI di;
  const DH dh;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  uint16_t hbuf[64] = {};
  float fbuf[64] = {};
  for (int64_t i = 0; i < n; i += lanes) {
    const bool tail = i + lanes > n;
    const size_t cnt = tail ? static_cast<size_t>(n - i) : static_cast<size_t>(lanes);
    const uint16_t* s = src + i;
    if (tail) {
      std::memcpy(hbuf, s, cnt * sizeof(uint16_t));
      s = hbuf;
    }
    const auto h = hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DF>(), hn::LoadU(dh, s)));
    const VF f = kind == 0 ? HalfToFloat(df, h) : BF16ToFloat(df, h);
    if (tail) {
      hn::StoreU(f, df, fbuf);
      std::memcpy(dst + i, fbuf, cnt * sizeof(float));
    } else {
      hn::StoreU(f, df, dst + i);
    }
  }
}

// kind 0: f32 -> f16, 1: f32 -> bf16.
void FloatToHalfChunk(int kind, const float* HWY_RESTRICT src, uint16_t* HWY_RESTRICT dst,
                      int64_t n) {
  const DF df;
  const DH dh;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(df));
  uint16_t hbuf[64] = {};
  float fbuf[64] = {};
  for (int64_t i = 0; i < n; i += lanes) {
    const bool tail = i + lanes > n;
    const size_t cnt = tail ? static_cast<size_t>(n - i) : static_cast<size_t>(lanes);
    const float* s = src + i;
    if (tail) {
      std::memcpy(fbuf, s, cnt * sizeof(float));
      s = fbuf;
    }
    const VF f = hn::LoadU(df, s);
    const auto h = kind == 0 ? FloatToHalf(df, f) : FloatToBF16(f);
    const auto packed = hn::DemoteTo(dh, h);  // values are in [0, 0xffff]: exact
    if (tail) {
      hn::StoreU(packed, dh, hbuf);
      std::memcpy(dst + i, hbuf, cnt * sizeof(uint16_t));
    } else {
      hn::StoreU(packed, dh, dst + i);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace stipple::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace stipple::cpu {

HWY_EXPORT(UnaryChunk);
HWY_EXPORT(UnaryBackwardChunk);
HWY_EXPORT(BinaryChunk);
HWY_EXPORT(AffineChunk);
HWY_EXPORT(HalfToFloatChunk);
HWY_EXPORT(FloatToHalfChunk);

void widen_halves(int kind, const uint16_t* src, float* dst, int64_t n) {
  HWY_DYNAMIC_DISPATCH(HalfToFloatChunk)(kind, src, dst, n);
}

void narrow_to_halves(int kind, const float* src, uint16_t* dst, int64_t n) {
  HWY_DYNAMIC_DISPATCH(FloatToHalfChunk)(kind, src, dst, n);
}

namespace {

using ops::BinaryOp;
using ops::UnaryOp;

constexpr int64_t kChunk = 1 << 14;  // elements per OpenMP work item

// Reference kernels for the cases handled here only in part.
Tensor (*g_ref_copy)(const Tensor&, DType) = nullptr;
Tensor (*g_ref_binary)(BinaryOp, const Tensor&, const Tensor&) = nullptr;

// Runs fn(begin, length) over [0, n) in chunks, in parallel when there is more than one.
template <typename Fn>
void parallel_chunks(int64_t n, Fn fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    fn(begin, std::min(kChunk, n - begin));
  }
}

// An output like x: blocked when x is, plain contiguous otherwise.
Tensor empty_like_layout(const Tensor& x) {
  return x.is_blocked() ? Tensor::empty_blocked(x.shape(), x.channel_block())
                        : Tensor::empty(x.shape());
}

Tensor fast_unary(UnaryOp op, const Tensor& x) {
  Tensor out = empty_like_layout(x);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  const int code = static_cast<int>(op);
  parallel_chunks(x.numel(), [&](int64_t b, int64_t n) {
    HWY_DYNAMIC_DISPATCH(UnaryChunk)(code, px + b, po + b, n);
  });
  return out;
}

Tensor fast_unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy) {
  Tensor out = empty_like_layout(x);
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  const float* pg = gy.data<float>();
  float* po = out.data<float>();
  const int code = static_cast<int>(op);
  parallel_chunks(x.numel(), [&](int64_t b, int64_t n) {
    HWY_DYNAMIC_DISPATCH(UnaryBackwardChunk)(code, px + b, py + b, pg + b, po + b, n);
  });
  return out;
}

Tensor fast_affine(const Tensor& x, float scale, float shift) {
  Tensor out = empty_like_layout(x);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel_chunks(x.numel(), [&](int64_t b, int64_t n) {
    HWY_DYNAMIC_DISPATCH(AffineChunk)(px + b, po + b, n, scale, shift);
  });
  return out;
}

// How a broadcast operand `y` (already expanded to `shape`) walks along a contiguous output:
// in blocks of `inner` output elements, each block either one value of y (kScalar) or a
// contiguous run of y (kRow); offsets[k] is y's offset for block k.
struct BroadcastPlan {
  enum Kind { kNone, kScalar, kRow } kind = kNone;
  int64_t inner = 1;
  std::vector<int64_t> offsets;
};

BroadcastPlan plan_broadcast(const Shape& shape, const Shape& strides) {
  BroadcastPlan plan;
  const int64_t nd = static_cast<int64_t>(shape.size());
  int64_t d = nd - 1;
  int64_t inner = 1;
  // skip trailing size-1 dims
  while (d >= 0 && shape[d] == 1) --d;
  if (d < 0) return plan;
  if (strides[d] == 0) {
    plan.kind = BroadcastPlan::kScalar;
    while (d >= 0 && (strides[d] == 0 || shape[d] == 1)) inner *= shape[d--];
  } else if (strides[d] == 1) {
    plan.kind = BroadcastPlan::kRow;
    while (d >= 0 && (shape[d] == 1 || strides[d] == inner)) inner *= shape[d--];
  } else {
    return plan;
  }
  if (inner < 8) {  // too little work per block to beat the reference walk
    plan.kind = BroadcastPlan::kNone;
    return plan;
  }
  plan.inner = inner;
  // Offsets of the outer blocks: an index counter over dims [0, d].
  const int64_t outer = shape_numel(shape) / inner;
  plan.offsets.resize(outer);
  std::vector<int64_t> idx(d + 1, 0);
  int64_t off = 0;
  for (int64_t k = 0; k < outer; ++k) {
    plan.offsets[k] = off;
    for (int64_t j = d; j >= 0; --j) {
      ++idx[j];
      off += strides[j];
      if (idx[j] < shape[j]) break;
      off -= strides[j] * shape[j];
      idx[j] = 0;
    }
  }
  return plan;
}

Tensor fast_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const int code = static_cast<int>(op);
  const bool both_blocked = a.is_blocked() && b.is_blocked() &&
                            a.channel_block() == b.channel_block() && a.shape() == b.shape();
  if (both_blocked || (a.is_contiguous() && b.is_contiguous())) {
    Tensor out = empty_like_layout(a);
    const float* pa = a.data<float>();
    const float* pb = b.data<float>();
    float* po = out.data<float>();
    parallel_chunks(a.numel(), [&](int64_t s, int64_t n) {
      HWY_DYNAMIC_DISPATCH(BinaryChunk)(code, 0, pa + s, pb + s, po + s, n);
    });
    return out;
  }
  if (a.is_blocked() || b.is_blocked()) return g_ref_binary(op, a, b);
  // One operand contiguous, the other a broadcast of something simpler.
  const bool a_contig = a.is_contiguous();
  if (!a_contig && !b.is_contiguous()) return g_ref_binary(op, a, b);
  const Tensor& full = a_contig ? a : b;
  const Tensor& bcast = a_contig ? b : a;
  const BroadcastPlan plan = plan_broadcast(bcast.shape(), bcast.strides());
  if (plan.kind == BroadcastPlan::kNone) return g_ref_binary(op, a, b);
  Tensor out = Tensor::empty(a.shape());
  const float* pf = full.data<float>();
  const float* pb = bcast.data<float>();
  float* po = out.data<float>();
  const int64_t inner = plan.inner;
  const int64_t outer = static_cast<int64_t>(plan.offsets.size());
  // mode: 0 row-row; 1 b scalar; 2 a scalar.
  const int mode = plan.kind == BroadcastPlan::kRow ? 0 : (a_contig ? 1 : 2);
  const int64_t rows_per_task = std::max<int64_t>(1, kChunk / inner);
  const int64_t tasks = (outer + rows_per_task - 1) / rows_per_task;
#pragma omp parallel for schedule(static) if (tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t end = std::min(outer, (t + 1) * rows_per_task);
    for (int64_t k = t * rows_per_task; k < end; ++k) {
      const float* row_full = pf + k * inner;
      const float* row_b = pb + plan.offsets[k];
      const float* left = a_contig ? row_full : row_b;
      const float* right = a_contig ? row_b : row_full;
      HWY_DYNAMIC_DISPATCH(BinaryChunk)(code, mode, left, right, po + k * inner, inner);
    }
  }
  return out;
}

Tensor fast_copy(const Tensor& src, DType dst_dtype) {
  const DType s = src.dtype();
  const bool half_to_f32 = (s == DType::kF16 || s == DType::kBF16) && dst_dtype == DType::kF32;
  const bool f32_to_half =
      s == DType::kF32 && (dst_dtype == DType::kF16 || dst_dtype == DType::kBF16);
  if (src.is_blocked() || !src.is_contiguous() || (!half_to_f32 && !f32_to_half)) {
    return g_ref_copy(src, dst_dtype);
  }
  Tensor out = Tensor::empty(src.shape(), dst_dtype);
  if (half_to_f32) {
    const int kind = s == DType::kF16 ? 0 : 1;
    const uint16_t* ps = src.data<uint16_t>();
    float* pd = out.data<float>();
    parallel_chunks(src.numel(), [&](int64_t b, int64_t n) {
      HWY_DYNAMIC_DISPATCH(HalfToFloatChunk)(kind, ps + b, pd + b, n);
    });
  } else {
    const int kind = dst_dtype == DType::kF16 ? 0 : 1;
    const float* ps = src.data<float>();
    uint16_t* pd = out.data<uint16_t>();
    parallel_chunks(src.numel(), [&](int64_t b, int64_t n) {
      HWY_DYNAMIC_DISPATCH(FloatToHalfChunk)(kind, ps + b, pd + b, n);
    });
  }
  return out;
}

}  // namespace

void fill_fast_elementwise(KernelTable& t) {
  // `t` starts as a copy of the reference table: keep its kernels for the fallbacks.
  g_ref_copy = t.copy;
  g_ref_binary = t.binary;
  t.copy = fast_copy;
  t.unary = fast_unary;
  t.unary_backward = fast_unary_backward;
  t.binary = fast_binary;
  t.affine = fast_affine;
}

}  // namespace stipple::cpu
#endif

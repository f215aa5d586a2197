// The fast elementwise kernels (Highway) against the reference ones: every unary op and its
// backward over a wide input range, binary ops (same shape, broadcast scalar / row / channel,
// strided fallback, channel-blocked), affine, and f16/bf16 <-> f32 conversions, which must be
// bit exact with the scalar conversions in core/dtype.h. Tolerances are stated per op (see the
// accuracy table at the top of fast_elementwise.cc).
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using ops::BinaryOp;
using ops::UnaryOp;

const KernelTable& ref() { return reference_kernels(); }
const KernelTable& fast() { return fast_kernels(); }

struct UnaryCase {
  UnaryOp op;
  const char* name;
  double atol, rtol;            // forward
  double grad_atol, grad_rtol;  // backward
  int domain;                   // 0: all reals; 1: positive; 2: nonzero
};

// Forward: ulp-level for the plain ops, hwy's stated ULP bounds for exp/log/tanh/sin/cos. The
// activations built on exp(-k x) inherit the rounding of their exponent argument, amplified by
// its size: ~1e-6 relative for sigmoid/silu/gelu_erf, up to ~1e-5 on the far negative tail of
// gelu_tanh/quick_gelu (outputs < 1e-8 there). The gelu atol covers the reference's own
// cancellation in 1 + erf(.) and 1 + tanh(.) (double, ~|x| 1e-16). Backward adds a rounding or two.
const UnaryCase kUnaryCases[] = {
    {UnaryOp::kNeg, "neg", 0, 0, 0, 0, 0},
    {UnaryOp::kExp, "exp", 0, 3e-7, 0, 4e-7, 0},
    {UnaryOp::kLog, "log", 1e-7, 5e-7, 0, 2.4e-7, 1},
    {UnaryOp::kSqrt, "sqrt", 0, 1.2e-7, 0, 2.4e-7, 1},
    {UnaryOp::kRsqrt, "rsqrt", 0, 2.4e-7, 0, 6e-7, 1},
    {UnaryOp::kSigmoid, "sigmoid", 1e-30, 1e-6, 1e-30, 1e-6, 0},
    {UnaryOp::kTanh, "tanh", 1e-7, 5e-7, 3e-7, 1e-6, 0},
    {UnaryOp::kSilu, "silu", 1e-30, 1e-6, 1e-7, 2e-6, 0},
    {UnaryOp::kGeluErf, "gelu_erf", 2e-15, 2e-6, 2e-7, 2e-6, 0},
    {UnaryOp::kGeluTanh, "gelu_tanh", 2e-15, 1e-5, 2e-7, 2e-6, 0},
    {UnaryOp::kQuickGelu, "quick_gelu", 1e-30, 1e-5, 2e-7, 2e-6, 0},
    {UnaryOp::kRelu, "relu", 0, 0, 0, 0, 0},
    {UnaryOp::kAbs, "abs", 0, 0, 0, 0, 0},
    {UnaryOp::kSquare, "square", 0, 0, 0, 0, 0},
    {UnaryOp::kSin, "sin", 3e-7, 0, 3e-7, 1e-7, 0},
    {UnaryOp::kCos, "cos", 3e-7, 0, 3e-7, 1e-7, 0},
    {UnaryOp::kReciprocal, "reciprocal", 0, 1.2e-7, 0, 3.6e-7, 2},
};

// A dense grid over [-20, 20], random values, and large magnitudes (|x| up to 1e5, past hwy's
// sin/cos range and exp's overflow). 10007 elements: not a multiple of any vector width.
Tensor unary_inputs(int domain) {
  std::vector<float> v;
  for (int i = 0; i < 4001; ++i) v.push_back(-20.0f + 0.01f * i);
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> u(-6.0f, 6.0f);
  for (int i = 0; i < 5000; ++i) v.push_back(u(gen));
  for (float big : {30.0f, 50.0f, 87.0f, 89.0f, 100.0f, 200.0f, 1e3f, 3e4f, 4e4f, 1e5f, 1e-3f,
                    1e-6f, 1e-20f, 0.0f}) {
    v.push_back(big);
    v.push_back(-big);
  }
  while (v.size() < 10007) v.push_back(u(gen) * 1e-2f);
  for (float& x : v) {
    if (domain == 1) x = std::fabs(x) * 7.3f + 1e-30f;  // positive, up to ~7e5
    if (domain == 2 && x == 0.0f) x = 0.5f;
  }
  if (domain == 1) {
    v[0] = 1e30f;
    v[1] = 1e-35f;
    v[2] = 1.0f;
  }
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
}

void check_every_unary() {
  for (const UnaryCase& c : kUnaryCases) {
    SCOPED_TRACE(c.name);
    const Tensor x = unary_inputs(c.domain);
    const Tensor want = ref().unary(c.op, x);
    const Tensor got = fast().unary(c.op, x);
    EXPECT_TENSORS_CLOSE(got, want, c.atol, c.rtol);
    for (float f : got.to_vector()) {
      if (c.op != UnaryOp::kExp) {
        EXPECT_FALSE(std::isnan(f));
      }
    }
  }
}

void check_every_unary_backward() {
  for (const UnaryCase& c : kUnaryCases) {
    SCOPED_TRACE(c.name);
    Tensor x = unary_inputs(c.domain);
    if (c.op == UnaryOp::kExp) {  // keep e^x finite: the gradient of an overflow is inf * g
      x = ref().clamp(x, -80.0f, 80.0f);
    }
    const Tensor y = ref().unary(c.op, x);
    const Tensor gy = testing::random_tensor(x.shape(), 11, -2.0f, 2.0f);
    const Tensor want = ref().unary_backward(c.op, x, y, gy);
    const Tensor got = fast().unary_backward(c.op, x, y, gy);
    EXPECT_TENSORS_CLOSE(got, want, c.grad_atol, c.grad_rtol);
  }
}

TEST(FastUnary, GeluErfKeepsRelativeAccuracyOnTheNegativeTail) {
  // Against 0.5 x erfc(-x / sqrt 2) in double (the reference's 1 + erf(x) cancels below x ~ -5).
  // Relative error < 2e-6 for x >= -8; below (outputs < 1e-14) the f32 rounding of the exponent
  // argument -x^2/2 + ... (|arg| up to ~73) allows up to half an ulp of it, ~4e-6, down to -12.
  double worst_near = 0, worst_far = 0;
  std::vector<float> v;
  for (int i = 0; i <= 2400; ++i) v.push_back(-12.0f + 0.01f * i);
  const Tensor x = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  const std::vector<float> got = fast().unary(UnaryOp::kGeluErf, x).to_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    const double want = 0.5 * v[i] * std::erfc(-v[i] / std::sqrt(2.0));
    const double rel = std::fabs(got[i] - want) / std::max(std::fabs(want), 1e-37);
    double& worst = v[i] >= -8.0f ? worst_near : worst_far;
    worst = std::max(worst, rel);
  }
  EXPECT_LT(worst_near, 2e-6) << "worst relative error for x >= -8";
  EXPECT_LT(worst_far, 5e-6) << "worst relative error for x < -8";
}

TEST(FastUnary, BlockedInputKeepsItsLayout) {
  const Tensor plain = testing::random_tensor({2, 16, 3, 5}, 3, -4.0f, 4.0f);
  const Tensor x = ref().to_blocked(plain, 8);
  for (UnaryOp op : {UnaryOp::kSilu, UnaryOp::kGeluErf, UnaryOp::kRelu}) {
    const Tensor got = fast().unary(op, x);
    ASSERT_TRUE(got.is_blocked());
    EXPECT_EQ(got.channel_block(), 8);
    EXPECT_TENSORS_CLOSE(got, ref().unary(op, x), 1e-30, 2e-6);
  }
  const Tensor a = fast().affine(x, 2.0f, -1.0f);
  ASSERT_TRUE(a.is_blocked());
  EXPECT_TENSORS_CLOSE(a, ref().affine(x, 2.0f, -1.0f), 0.0, 1.2e-7);
  const Tensor y = ref().to_blocked(testing::random_tensor({2, 16, 3, 5}, 4), 8);
  const Tensor s = fast().binary(BinaryOp::kMul, x, y);
  ASSERT_TRUE(s.is_blocked());
  EXPECT_TENSORS_CLOSE(s, ref().binary(BinaryOp::kMul, x, y), 0.0, 0.0);
}

const BinaryOp kBinaryOps[] = {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul,
                               BinaryOp::kDiv, BinaryOp::kMax, BinaryOp::kMin};

// Every binary op, both operand orders, bit exact (IEEE + - * / and max/min are exact in f32).
void expect_binary_exact(const Tensor& a, const Tensor& b, const char* what) {
  for (BinaryOp op : kBinaryOps) {
    SCOPED_TRACE(::testing::Message() << what << " op " << static_cast<int>(op));
    EXPECT_TENSORS_CLOSE(fast().binary(op, a, b), ref().binary(op, a, b), 0.0, 0.0);
    EXPECT_TENSORS_CLOSE(fast().binary(op, b, a), ref().binary(op, b, a), 0.0, 0.0);
  }
}

void check_binary_broadcasts() {
  const Shape shape = {3, 8, 9, 13};  // 2808 elements: a tail on every vector width
  const Tensor a = testing::random_tensor(shape, 1, -3.0f, 3.0f);
  expect_binary_exact(a, testing::random_tensor(shape, 2, 0.5f, 3.0f), "same shape");
  expect_binary_exact(a, testing::random_tensor({1}, 3).expand(shape), "scalar");
  expect_binary_exact(a, testing::random_tensor({13}, 4).expand(shape), "row");
  expect_binary_exact(a, testing::random_tensor({9, 13}, 5).expand(shape), "rows");
  expect_binary_exact(a, testing::random_tensor({1, 8, 1, 1}, 6).expand(shape), "channel");
  expect_binary_exact(a, testing::random_tensor({3, 1, 9, 1}, 7).expand(shape), "mixed");
  // Not contiguous on either side: the reference fallback.
  const Tensor t = testing::random_tensor({3, 8, 13, 9}, 8).transpose(2, 3);
  expect_binary_exact(a, t, "transposed");
}

TEST(FastBinary, LargeTensorsRunInParallelChunks) {
  const Shape shape = {64, 4099};
  const Tensor a = testing::random_tensor(shape, 1);
  expect_binary_exact(a, testing::random_tensor(shape, 2), "large same shape");
  expect_binary_exact(a, testing::random_tensor({4099}, 3).expand(shape), "large row");
  expect_binary_exact(a, testing::random_tensor({64, 1}, 4).expand(shape), "large column");
}

TEST(FastBinary, MaxAndMinPropagateNaN) {
  const Tensor a = Tensor::from_vector({NAN, 1.0f, 2.0f, NAN, 0.0f, -1.0f, 5.0f, 3.0f, 1.0f}, {9});
  const Tensor b = Tensor::from_vector({1.0f, NAN, 3.0f, NAN, -0.5f, -2.0f, 4.0f, NAN, 1.0f}, {9});
  for (BinaryOp op : {BinaryOp::kMax, BinaryOp::kMin}) {
    const std::vector<float> got = fast().binary(op, a, b).to_vector();
    const std::vector<float> want = ref().binary(op, a, b).to_vector();
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(std::isnan(got[i]), std::isnan(want[i])) << i;
      if (!std::isnan(want[i])) {
        EXPECT_EQ(got[i], want[i]) << i;
      }
    }
  }
}

TEST(FastAffine, MatchesReferenceWithinOneUlp) {
  const Tensor x = testing::random_tensor({100003}, 9, -100.0f, 100.0f);
  // One rounding (fused) or two (mul then add) against the reference's one: ~1 ulp.
  EXPECT_TENSORS_CLOSE(fast().affine(x, 0.18215f, 0.5f), ref().affine(x, 0.18215f, 0.5f), 1e-6,
                       2.4e-7);
}

uint32_t f32_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
float bits_f32(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

void check_half_to_float() {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    Tensor h = Tensor::empty({65536 + 3}, dt);
    uint16_t* p = h.data<uint16_t>();
    for (int i = 0; i < 65536 + 3; ++i) p[i] = static_cast<uint16_t>(i);
    const Tensor f = fast().copy(h, DType::kF32);
    EXPECT_EQ(f.dtype(), DType::kF32);
    const float* pf = f.data<float>();
    int64_t bad = 0;
    for (int i = 0; i < 65536 + 3; ++i) {
      const float want = dt == DType::kF16 ? f16_to_f32(p[i]) : bf16_to_f32(p[i]);
      if (f32_bits(pf[i]) != f32_bits(want)) {
        if (++bad < 5) ADD_FAILURE() << "pattern 0x" << std::hex << p[i];
      }
    }
    EXPECT_EQ(bad, 0);
  }
}

void check_float_to_half() {
  // Random bit patterns (every exponent), plus rounding ties, subnormal and overflow edges.
  std::vector<float> v;
  std::mt19937 gen(17);
  for (int i = 0; i < (1 << 20); ++i) v.push_back(bits_f32(gen()));
  for (uint32_t e = 0; e < 256; ++e) {
    for (uint32_t m :
         {0u, 1u, 0x1000u, 0x3000u, 0x2fffu, 0x8000u, 0x18000u, 0x7fffffu, 0x7fe000u, 0x7ff000u}) {
      v.push_back(bits_f32((e << 23) | m));
      v.push_back(bits_f32(0x80000000u | (e << 23) | m));
    }
  }
  for (float f : {65504.0f, 65519.0f, 65520.0f, 1e10f, 5.96e-8f, 2.98e-8f, 2.9802322e-8f, 6.1e-5f,
                  INFINITY, -INFINITY, NAN})
    v.push_back(f);
  v.push_back(1.0f);  // an odd length: a tail on every vector width
  const Tensor x = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  for (DType dt : {DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(dtype_name(dt));
    const Tensor h = fast().copy(x, dt);
    EXPECT_EQ(h.dtype(), dt);
    const uint16_t* p = h.data<uint16_t>();
    int64_t bad = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t want = dt == DType::kF16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      if (p[i] != want && ++bad < 5) {
        ADD_FAILURE() << "f32 0x" << std::hex << f32_bits(v[i]) << ": got 0x" << p[i] << ", want 0x"
                      << want;
      }
    }
    EXPECT_EQ(bad, 0);
    // And back: the round trip equals the scalar one.
    const Tensor back = fast().copy(h, DType::kF32);
    EXPECT_EQ(f32_bits(back.data<float>()[0]),
              f32_bits(dt == DType::kF16 ? f16_to_f32(p[0]) : bf16_to_f32(p[0])));
  }
}

TEST(FastCopy, StridedAndOtherDtypesFallBackToReference) {
  const Tensor x = testing::random_tensor({7, 9}, 3).transpose(0, 1);
  for (DType dt : {DType::kF16, DType::kBF16, DType::kF64, DType::kF32}) {
    const Tensor a = fast().copy(x, dt), b = ref().copy(x, dt);
    ASSERT_EQ(a.dtype(), dt);
    EXPECT_TENSORS_CLOSE(a, b, 0.0, 0.0);
  }
}

// Views whose rows have unit stride (a projection's column slice, a narrowed 3-D tensor) convert
// row by row in the fast kernel: bit for bit the reference's elements, in both directions, small
// and large enough to run in parallel.
TEST(FastCopy, ViewsWithUnitStrideRowsConvertRowByRow) {
  const Tensor m = testing::random_tensor({300, 257}, 5);
  const Tensor c = testing::random_tensor({3, 40, 33}, 6);
  const std::vector<Tensor> views = {m.narrow(1, 100, 130), m.narrow(1, 1, 7),
                                     c.narrow(1, 5, 20).narrow(2, 3, 29),
                                     m.narrow(0, 10, 50).narrow(1, 0, 256)};
  for (const Tensor& x : views) {
    ASSERT_FALSE(x.is_contiguous());
    for (DType dt : {DType::kF16, DType::kBF16}) {
      SCOPED_TRACE(dtype_name(dt));
      const Tensor half = fast().copy(x, dt), half_ref = ref().copy(x, dt);
      EXPECT_TENSORS_CLOSE(half, half_ref, 0.0, 0.0);
      const Tensor h = ref().copy(m, dt).narrow(1, 100, 130);  // a half-precision view
      EXPECT_TENSORS_CLOSE(fast().copy(h, DType::kF32), ref().copy(h, DType::kF32), 0.0, 0.0);
    }
  }
  const Tensor big =
      ref().copy(testing::random_tensor({64, 2048}, 7), DType::kF16).narrow(1, 512, 1024);
  EXPECT_TENSORS_CLOSE(fast().copy(big, DType::kF32), ref().copy(big, DType::kF32), 0.0, 0.0);
}

TEST(FastUnary, EveryOpMatchesReference) { check_every_unary(); }
TEST(FastUnary, EveryBackwardMatchesReference) { check_every_unary_backward(); }
TEST(FastBinary, SameShapeAndBroadcasts) { check_binary_broadcasts(); }
TEST(FastCopy, HalfToFloatIsBitExactForEveryPattern) { check_half_to_float(); }
TEST(FastCopy, FloatToHalfIsBitExact) { check_float_to_half(); }

// The same checks on every SIMD target compiled in that this CPU runs (e.g. SSE4 without FMA,
// AVX2, AVX-512), not only the one dispatch picks here.
TEST(FastElementwise, EveryCompiledTarget) {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(target);
    check_every_unary();
    check_every_unary_backward();
    check_binary_broadcasts();
    check_half_to_float();
    check_float_to_half();
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the CPU's own
}

}  // namespace
}  // namespace stipple

// Tests for matmul, linear and conv2d: the oneDNN kernels against the plain-loop reference
// kernels (forward, backward data, backward weight, blocked layouts), the ops' shape semantics
// (PyTorch matmul broadcasting), gradients by finite differences, and input errors.
//
// Tolerances (f32): the reference accumulates in double, the fast kernels in f32 with a different
// summation order, so errors grow like sqrt(K) * 1e-7 * |terms|. With inputs in [-1, 1] and at most
// a few hundred terms per output, atol = 1e-4 holds with a wide margin.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <utility>

#include "autograd/grad_mode.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;
constexpr double kAtol = 1e-4;

// max |a - b| over same-shaped f32 tensors.
double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> av = a.to_vector(), bv = b.to_vector();
  double m = 0.0;
  for (size_t i = 0; i < av.size(); ++i) m = std::max(m, std::abs(double(av[i]) - bv[i]));
  return m;
}

// Switches the ops to the reference kernels for one scope.
class ReferenceScope {
 public:
  ReferenceScope() { use_reference_kernels(true); }
  ~ReferenceScope() { use_reference_kernels(false); }
};

// ---------------------------------------------------------------- matmul kernels

struct MatmulCase {
  int64_t ba, bb, m, k, n;
  bool ta, tb;
};

class MatmulKernel : public ::testing::TestWithParam<MatmulCase> {};

// A case's operands, a [Ba, M, K] and b [Bb, K, N] as stored (transposed ones the other way).
std::pair<Tensor, Tensor> operands(const MatmulCase& c, uint64_t seed) {
  return {random_tensor(c.ta ? Shape{c.ba, c.k, c.m} : Shape{c.ba, c.m, c.k}, seed),
          random_tensor(c.tb ? Shape{c.bb, c.n, c.k} : Shape{c.bb, c.k, c.n}, seed + 1)};
}

TEST_P(MatmulKernel, FastMatchesReference) {
  const MatmulCase c = GetParam();
  const auto [a, b] = operands(c, 1);
  const Tensor ref = reference_kernels().matmul(a, b, c.ta, c.tb);
  const Tensor fast = fast_kernels().matmul(a, b, c.ta, c.tb);
  const int64_t batch = c.ba > c.bb ? c.ba : c.bb;
  ASSERT_EQ(ref.shape(), (Shape{batch, c.m, c.n}));
  ASSERT_EQ(fast.shape(), ref.shape());
  EXPECT_TENSORS_CLOSE(fast, ref, kAtol, 0.0);
}

std::vector<MatmulCase> matmul_cases() {
  std::vector<MatmulCase> cases;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      cases.push_back({1, 1, 1, 1, 1, ta, tb});
      cases.push_back({1, 1, 7, 13, 5, ta, tb});
      cases.push_back({3, 3, 7, 13, 5, ta, tb});
      cases.push_back({4, 1, 9, 6, 11, ta, tb});  // b broadcast over the batch
      cases.push_back({1, 4, 9, 6, 11, ta, tb});  // a broadcast over the batch
      cases.push_back({2, 2, 65, 130, 33, ta, tb});
    }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Linalg, MatmulKernel, ::testing::ValuesIn(matmul_cases()));

TEST(MatmulKernel, SmallNumbersExact) {
  // [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]] in both tables.
  const Tensor a = Tensor::from_vector({1, 2, 3, 4}, {1, 2, 2});
  const Tensor b = Tensor::from_vector({5, 6, 7, 8}, {1, 2, 2});
  const Tensor want = Tensor::from_vector({19, 22, 43, 50}, {1, 2, 2});
  EXPECT_TENSORS_CLOSE(reference_kernels().matmul(a, b, false, false), want, 0.0, 0.0);
  EXPECT_TENSORS_CLOSE(fast_kernels().matmul(a, b, false, false), want, 1e-6, 0.0);
}

// ---------------------------------------------------------------- bf16 matmul kernels

// Both tables' matmul_bf16 compute the exact products of the operands rounded to bf16; they
// differ only in the sums' order and precision (f32 against double), so the f32 tolerance holds.
TEST_P(MatmulKernel, Bf16FastMatchesReference) {
  const MatmulCase c = GetParam();
  const auto [a, b] = operands(c, 3);
  const Tensor ref = reference_kernels().matmul_bf16(a, b, c.ta, c.tb);
  const Tensor fast = fast_kernels().matmul_bf16(a, b, c.ta, c.tb);
  ASSERT_EQ(fast.shape(), ref.shape());
  EXPECT_TENSORS_CLOSE(fast, ref, kAtol, 0.0);
  // bf16 operands are taken as they are: rounding them first changes nothing
  const Tensor a16 = ops::cast(a, DType::kBF16), b16 = ops::cast(b, DType::kBF16);
  EXPECT_TENSORS_CLOSE(reference_kernels().matmul_bf16(a16, b16, c.ta, c.tb), ref, 0.0, 0.0);
  EXPECT_TENSORS_CLOSE(fast_kernels().matmul_bf16(a16, b, c.ta, c.tb), fast, 0.0, 0.0);
  // Rounding each operand to bf16 (8 significant bits) moves a product of terms in [-1, 1] by
  // at most 2^-8 of each term's size: the result stays within k * 2^-7 of the f32 one.
  const Tensor f32 = reference_kernels().matmul(a, b, c.ta, c.tb);
  EXPECT_TENSORS_CLOSE(ref, f32, static_cast<double>(c.k) / 128.0, 0.0);
  if (c.k >= 13) {
    EXPECT_GT(max_abs_diff(ref, f32), 1e-6) << "the operands were not rounded";
  }
}

TEST(MatmulKernel, Bf16RoundsToNearestEven) {
  // bf16 keeps 8 significant bits: 1 + 2^-10 rounds to 1; 1 + 2^-7 + 2^-8 lies halfway between
  // 1 + 2^-7 (odd last bit) and 1 + 2^-6 (even) and goes to the even one; 3 is exact.
  const float lo = 1.0f + 0.0009765625f, tie = 1.0f + 0.0078125f + 0.00390625f;
  const Tensor a = Tensor::from_vector({lo, tie, 3.0f}, {1, 1, 3});
  const Tensor b = Tensor::from_vector({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f},
                                       {1, 3, 3});
  const Tensor want = Tensor::from_vector({1.0f, 1.015625f, 3.0f}, {1, 1, 3});
  EXPECT_TENSORS_CLOSE(reference_kernels().matmul_bf16(a, b, false, false), want, 0.0, 0.0);
  EXPECT_TENSORS_CLOSE(fast_kernels().matmul_bf16(a, b, false, false), want, 0.0, 0.0);
}

// ---------------------------------------------------------------- conv kernels

struct ConvCase {
  const char* name;
  int64_t n, c, h, w, o, kh, kw;
  ops::Conv2dParams p;
  bool bias;
};

class ConvKernel : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvKernel, ForwardMatchesReference) {
  const ConvCase c = GetParam();
  const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, 3);
  const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, 4);
  const Tensor b = c.bias ? random_tensor({c.o}, 5) : Tensor();
  const Tensor ref = reference_kernels().conv2d(x, w, b, c.p, false);
  const Tensor plain = fast_kernels().conv2d(x, w, b, c.p, false);
  EXPECT_FALSE(plain.is_blocked()) << c.name;
  EXPECT_EQ(plain.shape(), ref.shape()) << c.name;
  EXPECT_TENSORS_CLOSE(plain, ref, kAtol, 0.0);
  const Tensor maybe_blocked = fast_kernels().conv2d(x, w, b, c.p, true);
  EXPECT_EQ(maybe_blocked.shape(), ref.shape()) << c.name;
  EXPECT_TENSORS_CLOSE(maybe_blocked.contiguous(), ref, kAtol, 0.0);
}

TEST_P(ConvKernel, BackwardMatchesReference) {
  const ConvCase c = GetParam();
  const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, 6);
  const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, 7);
  const Shape y_shape = reference_kernels().conv2d(x, w, Tensor(), c.p, false).shape();
  const Tensor gy = random_tensor(y_shape, 8);

  const Tensor gx_ref = reference_kernels().conv2d_backward_data(gy, w, x.shape(), c.p);
  const Tensor gx = fast_kernels().conv2d_backward_data(gy, w, x.shape(), c.p);
  EXPECT_EQ(gx.shape(), x.shape()) << c.name;
  EXPECT_TENSORS_CLOSE(gx, gx_ref, kAtol, 0.0);

  // Weight gradients sum over N * Ho * Wo terms: allow a little more.
  Tensor gw_ref, gb_ref, gw, gb;
  reference_kernels().conv2d_backward_weight(x, gy, w.shape(), c.p, &gw_ref, &gb_ref);
  fast_kernels().conv2d_backward_weight(x, gy, w.shape(), c.p, &gw, &gb);
  EXPECT_EQ(gw.shape(), w.shape()) << c.name;
  EXPECT_EQ(gb.shape(), (Shape{c.o})) << c.name;
  EXPECT_TENSORS_CLOSE(gw, gw_ref, 5e-4, 0.0);
  EXPECT_TENSORS_CLOSE(gb, gb_ref, 5e-4, 0.0);

  Tensor gw_only;
  fast_kernels().conv2d_backward_weight(x, gy, w.shape(), c.p, &gw_only, nullptr);
  EXPECT_TENSORS_CLOSE(gw_only, gw_ref, 5e-4, 0.0);
}

// Half-precision weights (f16, bf16) are widened into the kernel's layout in one pass
// (fast_linalg.cc, widen_into_layout): the result must be the reference convolution of the widened
// weights, with the weights reordered per call (not frozen), into the cache (frozen) and from it.
TEST_P(ConvKernel, HalfWeightsMatchReference) {
  const ConvCase c = GetParam();
  const Tensor x = random_tensor({c.n, c.c, c.h, c.w}, 17);
  const Tensor b = c.bias ? random_tensor({c.o}, 18) : Tensor();
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    const Tensor w = random_tensor({c.o, c.c, c.kh, c.kw}, 19).to(dtype).contiguous();
    ASSERT_EQ(w.dtype(), dtype);
    const Tensor ref = reference_kernels().conv2d(x, w.to(DType::kF32), b, c.p, false);
    for (bool frozen : {false, true, true}) {
      w.storage()->set_frozen(frozen);
      const Tensor plain = fast_kernels().conv2d(x, w, b, c.p, false);
      EXPECT_TENSORS_CLOSE(plain, ref, kAtol, 0.0);
      const Tensor maybe_blocked = fast_kernels().conv2d(x, w, b, c.p, true);
      EXPECT_TENSORS_CLOSE(maybe_blocked.contiguous(), ref, kAtol, 0.0);
    }
    w.storage()->set_frozen(false);
  }
}

ops::Conv2dParams params(int64_t stride, int64_t pad, int64_t dilation = 1) {
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = stride;
  p.pad_h = p.pad_w = pad;
  p.dilation_h = p.dilation_w = dilation;
  return p;
}

ops::Conv2dParams asymmetric() {
  ops::Conv2dParams p;
  p.stride_h = 2;
  p.stride_w = 1;
  p.pad_h = 0;
  p.pad_w = 2;
  p.dilation_h = 1;
  p.dilation_w = 2;
  return p;
}

INSTANTIATE_TEST_SUITE_P(
    Linalg, ConvKernel,
    ::testing::Values(ConvCase{"1x1", 2, 8, 5, 6, 16, 1, 1, params(1, 0), true},
                      ConvCase{"3x3_pad1", 1, 16, 9, 9, 16, 3, 3, params(1, 1), true},
                      ConvCase{"3x3_stride2", 2, 8, 11, 10, 8, 3, 3, params(2, 1), false},
                      ConvCase{"3x3_dilation2", 1, 8, 12, 12, 8, 3, 3, params(1, 2, 2), true},
                      ConvCase{"rgb_in", 1, 3, 10, 7, 16, 3, 3, params(1, 1), true},
                      ConvCase{"odd_out", 2, 5, 6, 8, 4, 3, 3, params(1, 1), true},
                      ConvCase{"few_out", 1, 32, 6, 6, 4, 3, 3, params(1, 1), true},
                      ConvCase{"wide_1x1", 1, 48, 4, 5, 32, 1, 1, params(1, 0), true},
                      ConvCase{"blocked_3x3", 2, 32, 6, 5, 48, 3, 3, params(1, 1), true},
                      ConvCase{"non_square", 1, 8, 7, 13, 8, 3, 1, asymmetric(), true},
                      ConvCase{"kernel_equals_input", 1, 4, 3, 3, 6, 3, 3, params(1, 0), true}),
    [](const ::testing::TestParamInfo<ConvCase>& info) { return std::string(info.param.name); });

TEST(ConvKernel, BlockedChainMatchesReference) {
  // conv -> conv with the activation kept blocked in between, then back to plain NCHW.
  const ops::Conv2dParams p = params(1, 1);
  const Tensor x = random_tensor({2, 16, 8, 10}, 9);
  const Tensor w1 = random_tensor({16, 16, 3, 3}, 10, -0.3f, 0.3f);
  const Tensor b1 = random_tensor({16}, 11);
  const Tensor w2 = random_tensor({24, 16, 3, 3}, 12, -0.3f, 0.3f);
  const Tensor b2 = random_tensor({24}, 13);

  const Tensor y1 = fast_kernels().conv2d(x, w1, b1, p, true);
  EXPECT_TRUE(y1.is_blocked()) << "oneDNN picked a plain layout for a 16->16 3x3 conv: "
                               << y1.describe();
  const Tensor y2 = fast_kernels().conv2d(y1, w2, b2, p, true);

  const Tensor r1 = reference_kernels().conv2d(x, w1, b1, p, false);
  const Tensor r2 = reference_kernels().conv2d(r1, w2, b2, p, false);
  EXPECT_TENSORS_CLOSE(y1.contiguous(), r1, kAtol, 0.0);
  EXPECT_TENSORS_CLOSE(y2.contiguous(), r2, 1e-3, 0.0);

  // The reference accepts a blocked input too, and so do the fast backward kernels.
  EXPECT_TENSORS_CLOSE(reference_kernels().conv2d(y1, w2, b2, p, false), r2, 1e-3, 0.0);
  const Tensor gy = random_tensor(r2.shape(), 14);
  Tensor gw_ref, gw;
  reference_kernels().conv2d_backward_weight(r1, gy, w2.shape(), p, &gw_ref, nullptr);
  fast_kernels().conv2d_backward_weight(y1, gy, w2.shape(), p, &gw, nullptr);
  EXPECT_TENSORS_CLOSE(gw, gw_ref, 1e-3, 0.0);
}

TEST(ConvKernel, LargeWeightsRunInOutputGroups) {
  // 1024 -> 520 channels, 3x3: 18.3 MiB of f32 weights, over the 16 MiB a call reorders at once
  // when the cache does not keep them (fast_linalg.cc, kWeightScratchLimit): the kernel runs in
  // groups of output channels (the last one partial). Unfrozen, f32 and f16.
  const ops::Conv2dParams p = params(1, 1);
  const Tensor x = random_tensor({2, 1024, 4, 3}, 20);
  const Tensor b = random_tensor({520}, 21);
  for (DType dtype : {DType::kF32, DType::kF16}) {
    const Tensor w = random_tensor({520, 1024, 3, 3}, 22, -0.05f, 0.05f).to(dtype).contiguous();
    const Tensor ref = reference_kernels().conv2d(x, w.to(DType::kF32), b, p, false);
    EXPECT_TENSORS_CLOSE(fast_kernels().conv2d(x, w, b, p, true).contiguous(), ref, 1e-4, 0.0);
    EXPECT_TENSORS_CLOSE(fast_kernels().conv2d(x, w, Tensor(), p, false),
                         reference_kernels().conv2d(x, w.to(DType::kF32), Tensor(), p, false),
                         1e-4, 0.0);
  }
}

TEST(ConvKernel, ExplicitlyBlockedInput) {
  // Either block on any CPU, and channel counts that fill 8-blocks but not 16-blocks.
  for (auto [block, c] : {std::pair{8, 16}, std::pair{16, 16}, std::pair{8, 24}}) {
    const Tensor x = random_tensor({1, c, 6, 7}, 15);
    const Tensor xb = ops::to_blocked(x, block);
    ASSERT_EQ(xb.channel_block(), block);
    const Tensor w = random_tensor({8, c, 3, 3}, 16);
    const Tensor ref = reference_kernels().conv2d(x, w, Tensor(), params(1, 1), false);
    EXPECT_TENSORS_CLOSE(fast_kernels().conv2d(xb, w, Tensor(), params(1, 1), false), ref, kAtol,
                         0.0);
    EXPECT_TENSORS_CLOSE(fast_kernels().conv2d(xb, w, Tensor(), params(1, 1), true).contiguous(),
                         ref, kAtol, 0.0);
  }
}

TEST(LinalgKernels, ConcurrentCallsAgree) {
  // Cached primitives and per-thread scratchpads: the same shapes from several threads at once.
  const Tensor x = random_tensor({1, 16, 9, 9}, 90);
  const Tensor w = random_tensor({16, 16, 3, 3}, 91);
  const Tensor a = random_tensor({2, 33, 17}, 92);
  const Tensor b = random_tensor({2, 17, 29}, 93);
  const Tensor conv_ref = reference_kernels().conv2d(x, w, Tensor(), params(1, 1), false);
  const Tensor mm_ref = reference_kernels().matmul(a, b, false, false);
  std::vector<Tensor> convs(4), mms(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      for (int r = 0; r < 5; ++r) {
        convs[i] = fast_kernels().conv2d(x, w, Tensor(), params(1, 1), false);
        mms[i] = fast_kernels().matmul(a, b, false, false);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    EXPECT_TENSORS_CLOSE(convs[i], conv_ref, kAtol, 0.0);
    EXPECT_TENSORS_CLOSE(mms[i], mm_ref, kAtol, 0.0);
  }
}

// ---------------------------------------------------------------- ops: shapes and values

// The op under the fast table against the same op under the reference table.
void expect_matmul_op(const Shape& as, const Shape& bs, const Shape& want) {
  const Tensor a = random_tensor(as, 17);
  const Tensor b = random_tensor(bs, 18);
  const Tensor fast = ops::matmul(a, b);
  EXPECT_EQ(fast.shape(), want) << shape_str(as) << " @ " << shape_str(bs);
  Tensor ref;
  {
    ReferenceScope scope;
    ref = ops::matmul(a, b);
  }
  EXPECT_EQ(ref.shape(), want);
  EXPECT_TENSORS_CLOSE(fast, ref, kAtol, 0.0);
}

TEST(MatmulOp, BroadcastShapes) {
  expect_matmul_op({4, 5}, {5, 6}, {4, 6});
  expect_matmul_op({2, 3, 4, 5}, {5, 6}, {2, 3, 4, 6});
  expect_matmul_op({4, 5}, {2, 5, 6}, {2, 4, 6});
  expect_matmul_op({2, 1, 4, 5}, {3, 5, 6}, {2, 3, 4, 6});
  expect_matmul_op({1, 4, 5}, {3, 5, 6}, {3, 4, 6});
  expect_matmul_op({5}, {5, 6}, {6});
  expect_matmul_op({4, 5}, {5}, {4});
  expect_matmul_op({5}, {5}, {});
  expect_matmul_op({3, 4, 5}, {5}, {3, 4});
}

TEST(MatmulOp, MatchesLoopOnTransposedViews) {
  // k.transpose(-1, -2) is passed to the kernel with its trans flag, not copied.
  const Tensor q = random_tensor({2, 3, 7, 8}, 19);
  const Tensor k = random_tensor({2, 3, 9, 8}, 20);
  const Tensor s = ops::matmul(q, ops::transpose(k, -1, -2));  // [2, 3, 7, 9]
  ASSERT_EQ(s.shape(), (Shape{2, 3, 7, 9}));
  const std::vector<float> qv = q.to_vector(), kv = k.to_vector(), sv = s.to_vector();
  double max_err = 0.0;
  for (int64_t b = 0; b < 6; ++b)
    for (int64_t i = 0; i < 7; ++i)
      for (int64_t j = 0; j < 9; ++j) {
        double acc = 0.0;
        for (int64_t d = 0; d < 8; ++d)
          acc += double(qv[(b * 7 + i) * 8 + d]) * kv[(b * 9 + j) * 8 + d];
        max_err = std::max(max_err, std::abs(acc - sv[(b * 7 + i) * 9 + j]));
      }
  EXPECT_LT(max_err, kAtol);
  // A transposed a as well.
  const Tensor at = ops::transpose(random_tensor({3, 6, 4}, 21), -1, -2);  // [3, 4, 6]
  const Tensor bm = random_tensor({6, 5}, 22);
  Tensor ref;
  {
    ReferenceScope scope;
    ref = ops::matmul(ops::contiguous(at), bm);
  }
  EXPECT_TENSORS_CLOSE(ops::matmul(at, bm), ref, kAtol, 0.0);
}

TEST(LinearOp, MatchesMatmulPlusBias) {
  const Tensor x = random_tensor({2, 5, 7}, 23);
  const Tensor w = random_tensor({3, 7}, 24);
  const Tensor b = random_tensor({3}, 25);
  const Tensor y = ops::linear(x, w, b);
  ASSERT_EQ(y.shape(), (Shape{2, 5, 3}));
  Tensor ref;
  {
    ReferenceScope scope;
    ref = ops::add(ops::matmul(x, ops::transpose(w, 0, 1)), b);
  }
  EXPECT_TENSORS_CLOSE(y, ref, kAtol, 0.0);
  EXPECT_TENSORS_CLOSE(ops::linear(x, w), ops::matmul(x, ops::transpose(w, 0, 1)), kAtol, 0.0);
}

TEST(Conv2dOp, BlockedOnlyOnInferencePaths) {
  const Tensor x = random_tensor({1, 16, 6, 6}, 26);
  Tensor w = random_tensor({16, 16, 3, 3}, 27);
  const ops::Conv2dParams p = params(1, 1);
  Tensor ref;
  {
    ReferenceScope scope;
    ref = ops::conv2d(x, w, Tensor(), p);
  }
  EXPECT_FALSE(ref.is_blocked());
  ASSERT_TRUE(ops::blocked_layout_enabled());
  {
    autograd::NoGradGuard no_grad;
    const Tensor y = ops::conv2d(x, w, Tensor(), p);
    EXPECT_TRUE(y.is_blocked()) << y.describe();
    EXPECT_TENSORS_CLOSE(y.contiguous(), ref, kAtol, 0.0);
    ops::set_blocked_layout(false);
    EXPECT_FALSE(ops::conv2d(x, w, Tensor(), p).is_blocked());
    ops::set_blocked_layout(true);
  }
  w.set_requires_grad(true);
  const Tensor y = ops::conv2d(x, w, Tensor(), p);  // recorded: must stay plain
  EXPECT_FALSE(y.is_blocked());
  EXPECT_TENSORS_CLOSE(y, ref, kAtol, 0.0);
}

// ---------------------------------------------------------------- gradients

Tensor param(const Shape& s, uint64_t seed) {
  Tensor t = random_tensor(s, seed);
  t.set_requires_grad(true);
  return t;
}

TEST(LinalgGrad, Matmul) {
  auto mm = [](const std::vector<Tensor>& in) { return ops::matmul(in[0], in[1]); };
  EXPECT_GRADCHECK("matmul 2-D", mm, (std::vector<Tensor>{param({4, 5}, 30), param({5, 3}, 31)}));
  EXPECT_GRADCHECK("matmul batched", mm,
                   (std::vector<Tensor>{param({2, 4, 5}, 32), param({2, 5, 3}, 33)}));
  EXPECT_GRADCHECK("matmul b broadcast", mm,
                   (std::vector<Tensor>{param({2, 3, 4, 5}, 34), param({5, 3}, 35)}));
  EXPECT_GRADCHECK("matmul a broadcast", mm,
                   (std::vector<Tensor>{param({4, 5}, 36), param({3, 5, 2}, 37)}));
  EXPECT_GRADCHECK("matmul partial broadcast", mm,
                   (std::vector<Tensor>{param({2, 1, 4, 5}, 38), param({1, 3, 5, 2}, 39)}));
  EXPECT_GRADCHECK("matmul vectors", mm,
                   (std::vector<Tensor>{param({5}, 40), param({2, 5, 3}, 41)}));
  auto mm_t = [](const std::vector<Tensor>& in) {
    return ops::matmul(in[0], ops::transpose(in[1], -1, -2));
  };
  EXPECT_GRADCHECK("matmul transposed view", mm_t,
                   (std::vector<Tensor>{param({2, 4, 5}, 42), param({2, 3, 5}, 43)}));
}

TEST(LinalgGrad, Linear) {
  auto lin = [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1], in[2]); };
  EXPECT_GRADCHECK("linear", lin,
                   (std::vector<Tensor>{param({2, 3, 5}, 44), param({4, 5}, 45), param({4}, 46)}));
  auto lin_nb = [](const std::vector<Tensor>& in) { return ops::linear(in[0], in[1]); };
  EXPECT_GRADCHECK("linear no bias", lin_nb,
                   (std::vector<Tensor>{param({6, 5}, 47), param({4, 5}, 48)}));
}

// ---------------------------------------------------------------- bf16 matmul precision

Tensor bf16_rounded(const Tensor& t) { return ops::cast(ops::cast(t, DType::kBF16), DType::kF32); }

// Under MatmulPrecision::kBF16, linear and matmul equal the f32 ops on bf16-rounded operands, and
// so do their gradients (the upstream gradient rounded too): d/dx of sum(y * c) is
// round(c) round(w), d/dw is round(c)^T round(x). The precision is the forward's, whatever the
// thread's is when backward runs.
TEST(MatmulPrecision, LinearAndMatmulRoundTheirOperandsForwardAndBackward) {
  const Tensor x0 = random_tensor({2, 5, 24}, 60), w0 = random_tensor({7, 24}, 61);
  const Tensor b0 = random_tensor({7}, 62), c = random_tensor({2, 5, 7}, 63);
  const Tensor m0 = random_tensor({3, 24, 6}, 64), cm = random_tensor({2, 3, 5, 6}, 65);
  auto run = [&](bool bf16, bool round_inputs, Tensor* y, Tensor* mm, std::vector<Tensor>* grads) {
    auto in = [&](const Tensor& t) {
      return (round_inputs ? bf16_rounded(t) : t.clone()).set_requires_grad(true);
    };
    Tensor x = in(x0), w = in(w0), m = in(m0), b = b0.clone().set_requires_grad(true);
    const Tensor cr = round_inputs ? bf16_rounded(c) : c;
    const Tensor cmr = round_inputs ? bf16_rounded(cm) : cm;
    {
      const ops::MatmulPrecisionScope scope(bf16 ? ops::MatmulPrecision::kBF16
                                                 : ops::MatmulPrecision::kF32);
      *y = ops::linear(x, w, b);
      *mm = ops::matmul(ops::unsqueeze(x, 1), m);  // [2, 3, 5, 6]: a broadcast batch
    }
    // backward outside the scope: the ops keep the precision they ran in
    ops::add(ops::sum(ops::mul(*y, cr)), ops::sum(ops::mul(*mm, cmr))).backward();
    *grads = {x.grad(), w.grad(), b.grad(), m.grad()};
  };
  Tensor y, mm, y_ref, mm_ref;
  std::vector<Tensor> g, g_ref;
  run(true, false, &y, &mm, &g);
  run(false, true, &y_ref, &mm_ref, &g_ref);
  EXPECT_TENSORS_CLOSE(y, y_ref, 1e-5, 0.0);
  EXPECT_TENSORS_CLOSE(mm, mm_ref, 1e-5, 0.0);
  EXPECT_TENSORS_CLOSE(g[1], g_ref[1], 1e-5, 0.0);
  EXPECT_TENSORS_CLOSE(g[3], g_ref[3], 1e-5, 0.0);
  // x's gradient sums round(c) round(w) + round(cm) round(m)^T: rounded terms, summed in f32
  EXPECT_TENSORS_CLOSE(g[0], g_ref[0], 1e-5, 0.0);
  // the bias's gradient is a plain f32 sum of c (the rounded reference summed round(c))
  EXPECT_TENSORS_CLOSE(g[2], ops::sum(c, {0, 1}), 1e-5, 0.0);
  // and the f32 path differs: the operands were rounded
  Tensor y32, mm32;
  std::vector<Tensor> g32;
  run(false, false, &y32, &mm32, &g32);
  EXPECT_GT(max_abs_diff(y, y32), 1e-5);
  EXPECT_GT(max_abs_diff(g[1], g32[1]), 1e-5);
}

TEST(MatmulPrecision, ScopeAndNames) {
  EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kF32);
  {
    const ops::MatmulPrecisionScope outer(ops::MatmulPrecision::kBF16);
    EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kBF16);
    {
      const ops::MatmulPrecisionScope inner(ops::MatmulPrecision::kF32);
      EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kF32);
    }
    EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kBF16);
    // another thread has its own (f32)
    ops::MatmulPrecision other = ops::MatmulPrecision::kBF16;
    std::thread([&] { other = ops::matmul_precision(); }).join();
    EXPECT_EQ(other, ops::MatmulPrecision::kF32);
  }
  EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kF32);
  EXPECT_EQ(ops::parse_matmul_precision("bf16"), ops::MatmulPrecision::kBF16);
  EXPECT_STREQ(ops::matmul_precision_name(ops::MatmulPrecision::kBF16), "bf16");
  EXPECT_STREQ(ops::matmul_precision_name(ops::parse_matmul_precision("f32")), "f32");
  testing::expect_error([] { ops::parse_matmul_precision("fp16"); },
                        ErrorKind::kInvalidArgument,
                        "unknown matmul precision 'fp16' (choose f32 or bf16)");
}

TEST(LinalgGrad, Conv2d) {
  auto conv = [](ops::Conv2dParams p) {
    return [p](const std::vector<Tensor>& in) { return ops::conv2d(in[0], in[1], in[2], p); };
  };
  EXPECT_GRADCHECK(
      "conv2d 3x3 pad 1", conv(params(1, 1)),
      (std::vector<Tensor>{param({2, 3, 5, 6}, 50), param({4, 3, 3, 3}, 51), param({4}, 52)}));
  EXPECT_GRADCHECK(
      "conv2d stride 2", conv(params(2, 1)),
      (std::vector<Tensor>{param({1, 8, 7, 7}, 53), param({8, 8, 3, 3}, 54), param({8}, 55)}));
  EXPECT_GRADCHECK(
      "conv2d asymmetric", conv(asymmetric()),
      (std::vector<Tensor>{param({1, 2, 7, 6}, 56), param({3, 2, 2, 3}, 57), param({3}, 58)}));
  {
    ReferenceScope scope;
    EXPECT_GRADCHECK(
        "conv2d reference dilation 2", conv(params(1, 2, 2)),
        (std::vector<Tensor>{param({1, 2, 6, 6}, 59), param({3, 2, 3, 3}, 60), param({3}, 61)}));
  }
}

// ---------------------------------------------------------------- errors

// Runs f, expects stipple::Error, and checks the message names `what`.
template <typename F>
void expect_error(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << what << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(LinalgErrors, Matmul) {
  const Tensor a = random_tensor({3, 4}, 70);
  EXPECT_THROW(ops::matmul(a, random_tensor({5, 2}, 71)), Error);
  expect_error([&] { ops::matmul(a, random_tensor({5, 2}, 71)); }, "matmul");
  expect_error(
      [&] {
        ops::matmul(random_tensor({2, 3, 4}, 72), random_tensor({3, 4, 2}, 73));
      },
      "matmul");
  expect_error([&] { ops::matmul(Tensor::zeros({3, 4}, DType::kI64), a); }, "matmul");
  expect_error([&] { ops::matmul(Tensor::scalar(1.0), a); }, "matmul");
}

TEST(LinalgErrors, Linear) {
  const Tensor x = random_tensor({2, 5}, 74);
  EXPECT_THROW(ops::linear(x, random_tensor({3, 4}, 75)), Error);
  expect_error([&] { ops::linear(x, random_tensor({3, 4}, 75)); }, "linear");
  expect_error([&] { ops::linear(x, random_tensor({3, 5, 1}, 76)); }, "weight");
  expect_error([&] { ops::linear(x, random_tensor({3, 5}, 77), random_tensor({4}, 78)); }, "bias");
}

TEST(LinalgErrors, Conv2d) {
  const Tensor x = random_tensor({1, 3, 8, 8}, 79);
  const Tensor w = random_tensor({4, 3, 3, 3}, 80);
  EXPECT_THROW(ops::conv2d(random_tensor({3, 8, 8}, 81), w), Error);
  expect_error([&] { ops::conv2d(random_tensor({3, 8, 8}, 81), w); }, "conv2d");
  expect_error([&] { ops::conv2d(x, random_tensor({4, 2, 3, 3}, 82)); }, "channels");
  expect_error([&] { ops::conv2d(x, random_tensor({4, 3, 3}, 83)); }, "weight");
  expect_error([&] { ops::conv2d(x, w, random_tensor({5}, 84)); }, "bias");
  expect_error([&] { ops::conv2d(random_tensor({1, 3, 2, 2}, 85), w); }, "smaller");
  ops::Conv2dParams bad;
  bad.stride_h = 0;
  expect_error([&] { ops::conv2d(x, w, Tensor(), bad); }, "stride");
  expect_error([&] { ops::conv2d(Tensor::zeros({1, 3, 8, 8}, DType::kI64), w); }, "conv2d");
}

}  // namespace
}  // namespace stipple

// Elementwise ops, reductions, views, resampling and losses: values against direct formulas, and
// every op's gradient against finite differences. Also the autograd engine's own behaviour:
// accumulation, shared subgraphs, the no-grad guard, and its error messages.
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

Tensor param(const Shape& s, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = random_tensor(s, seed, lo, hi);
  t.set_requires_grad(true);
  return t;
}

struct UnaryCase {
  ops::UnaryOp op;
  const char* name;
  double (*f)(double);
  float lo, hi;
};

double sigm(double x) { return 1 / (1 + std::exp(-x)); }

const UnaryCase kUnary[] = {
    {ops::UnaryOp::kNeg, "neg", [](double x) { return -x; }, -3, 3},
    {ops::UnaryOp::kExp, "exp", [](double x) { return std::exp(x); }, -3, 3},
    {ops::UnaryOp::kLog, "log", [](double x) { return std::log(x); }, 0.2f, 3},
    {ops::UnaryOp::kSqrt, "sqrt", [](double x) { return std::sqrt(x); }, 0.2f, 3},
    {ops::UnaryOp::kRsqrt, "rsqrt", [](double x) { return 1 / std::sqrt(x); }, 0.2f, 3},
    {ops::UnaryOp::kSigmoid, "sigmoid", sigm, -6, 6},
    {ops::UnaryOp::kTanh, "tanh", [](double x) { return std::tanh(x); }, -4, 4},
    {ops::UnaryOp::kSilu, "silu", [](double x) { return x * sigm(x); }, -6, 6},
    {ops::UnaryOp::kGeluErf, "gelu", [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }, -5, 5},
    {ops::UnaryOp::kGeluTanh, "gelu_tanh",
     [](double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }, -5, 5},
    {ops::UnaryOp::kQuickGelu, "quick_gelu", [](double x) { return x * sigm(1.702 * x); }, -5, 5},
    {ops::UnaryOp::kRelu, "relu", [](double x) { return x > 0 ? x : 0; }, -3, 3},
    {ops::UnaryOp::kAbs, "abs", [](double x) { return std::fabs(x); }, -3, 3},
    {ops::UnaryOp::kSquare, "square", [](double x) { return x * x; }, -3, 3},
    {ops::UnaryOp::kSin, "sin", [](double x) { return std::sin(x); }, -4, 4},
    {ops::UnaryOp::kCos, "cos", [](double x) { return std::cos(x); }, -4, 4},
    {ops::UnaryOp::kReciprocal, "reciprocal", [](double x) { return 1 / x; }, 0.3f, 3},
};

TEST(Elementwise, UnaryValuesMatchFormulas) {
  for (const auto& c : kUnary) {
    Tensor x = random_tensor({257}, 11, c.lo, c.hi);
    const std::vector<float> xv = x.to_vector();
    std::vector<float> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = static_cast<float>(c.f(xv[i]));
    // f32 result against the double formula: a few ulp (1e-6 relative, 1e-6 absolute).
    EXPECT_TRUE(testing::tensors_close(ops::unary(c.op, x), Tensor::from_vector(want, {257}),
                                       1e-6, 1e-6))
        << c.name;
  }
}

TEST(Elementwise, UnaryGradients) {
  for (const auto& c : kUnary) {
    // keep away from the kinks of relu/abs, where finite differences are meaningless
    const float lo = (c.op == ops::UnaryOp::kRelu || c.op == ops::UnaryOp::kAbs) ? 0.1f : c.lo;
    Tensor x = param({3, 7}, 5, lo, c.hi);
    const ops::UnaryOp op = c.op;
    EXPECT_GRADCHECK(c.name, Fn([op](const std::vector<Tensor>& v) { return ops::unary(op, v[0]); }),
                     std::vector<Tensor>{x});
  }
}

TEST(Elementwise, BinaryBroadcastValues) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({10, 20, 30}, {3});
  EXPECT_EQ((a + b).to_vector(), (std::vector<float>{11, 22, 33, 14, 25, 36}));
  EXPECT_EQ((a - b).to_vector(), (std::vector<float>{-9, -18, -27, -6, -15, -24}));
  Tensor col = Tensor::from_vector({2, 4}, {2, 1});
  EXPECT_EQ((a / col).to_vector(), (std::vector<float>{0.5, 1, 1.5, 1, 1.25, 1.5}));
  EXPECT_EQ(ops::maximum(a, Tensor::scalar(3.5)).to_vector(),
            (std::vector<float>{3.5, 3.5, 3.5, 4, 5, 6}));
  EXPECT_THROW(a + Tensor::zeros({2}), Error);
  // f16 inputs compute in f32
  EXPECT_EQ((a.to(DType::kF16) * b).dtype(), DType::kF32);
}

TEST(Elementwise, BinaryGradients) {
  const std::pair<ops::BinaryOp, const char*> cases[] = {
      {ops::BinaryOp::kAdd, "add"}, {ops::BinaryOp::kSub, "sub"}, {ops::BinaryOp::kMul, "mul"},
      {ops::BinaryOp::kDiv, "div"}, {ops::BinaryOp::kMax, "max"}, {ops::BinaryOp::kMin, "min"}};
  for (const auto& [op, name] : cases) {
    Tensor a = param({2, 3, 4}, 1);
    Tensor b = param({3, 1}, 2, 0.5f, 1.5f);  // broadcast; positive for div
    EXPECT_GRADCHECK(name, Fn([op = op](const std::vector<Tensor>& v) { return ops::binary(op, v[0], v[1]); }),
                     (std::vector<Tensor>{a, b}));
  }
}

TEST(Elementwise, AffinePowClampGeglu) {
  Tensor x = Tensor::from_vector({-2, -0.5, 0.5, 2}, {4});
  EXPECT_EQ(ops::affine(x, 2, 1).to_vector(), (std::vector<float>{-3, 0, 2, 5}));
  EXPECT_EQ(ops::clamp(x, -1, 1).to_vector(), (std::vector<float>{-1, -0.5, 0.5, 1}));
  EXPECT_THROW(ops::clamp(x, 1, -1), Error);
  EXPECT_GRADCHECK("affine", Fn([](const std::vector<Tensor>& v) { return ops::affine(v[0], -1.5f, 2); }),
                   std::vector<Tensor>{param({5}, 1)});
  EXPECT_GRADCHECK("pow", Fn([](const std::vector<Tensor>& v) { return ops::pow(v[0], 2.5f); }),
                   std::vector<Tensor>{param({5}, 2, 0.5f, 2.0f)});
  EXPECT_GRADCHECK("clamp", Fn([](const std::vector<Tensor>& v) { return ops::clamp(v[0], -0.5f, 0.5f); }),
                   std::vector<Tensor>{param({16}, 3)});
  Tensor g = random_tensor({2, 6}, 4);
  Tensor want = ops::mul(g.narrow(1, 0, 3), ops::gelu(g.narrow(1, 3, 3)));
  EXPECT_TRUE(testing::tensors_close(ops::geglu(g), want, 0, 0));
  EXPECT_GRADCHECK("geglu", Fn([](const std::vector<Tensor>& v) { return ops::geglu(v[0]); }),
                   std::vector<Tensor>{param({3, 8}, 5)});
  EXPECT_THROW(ops::geglu(random_tensor({2, 5}, 1)), Error);
}

TEST(Reduce, SumMeanMaxValues) {
  Tensor x = Tensor::from_vector({1, 5, 3, 4, 2, 6}, {2, 3});
  EXPECT_EQ(ops::sum(x).item(), 21.0f);
  EXPECT_EQ(ops::sum(x, {0}).to_vector(), (std::vector<float>{5, 7, 9}));
  EXPECT_EQ(ops::sum(x, {-1}, true).shape(), (Shape{2, 1}));
  EXPECT_EQ(ops::mean(x, {1}).to_vector(), (std::vector<float>{3, 4}));
  EXPECT_EQ(ops::max(x, {1}).to_vector(), (std::vector<float>{5, 6}));
  EXPECT_EQ(ops::sum_to(x, {1, 3}).to_vector(), (std::vector<float>{5, 7, 9}));
  EXPECT_THROW(ops::sum(x, {2}), Error);
  EXPECT_THROW(ops::sum(x, {1, 1}), Error);
}

TEST(Reduce, Gradients) {
  EXPECT_GRADCHECK("sum", Fn([](const std::vector<Tensor>& v) { return ops::sum(v[0], {0, 2}); }),
                   std::vector<Tensor>{param({2, 3, 4}, 1)});
  EXPECT_GRADCHECK("mean", Fn([](const std::vector<Tensor>& v) { return ops::mean(v[0], {1}, true); }),
                   std::vector<Tensor>{param({2, 3, 4}, 2)});
  EXPECT_GRADCHECK("max", Fn([](const std::vector<Tensor>& v) { return ops::max(v[0], {-1}); }),
                   std::vector<Tensor>{param({4, 5}, 3)});
  EXPECT_GRADCHECK("sum_to", Fn([](const std::vector<Tensor>& v) { return ops::sum_to(v[0], {3, 1}); }),
                   std::vector<Tensor>{param({2, 3, 4}, 4)});
}

TEST(Views, Gradients) {
  EXPECT_GRADCHECK("reshape+permute", Fn([](const std::vector<Tensor>& v) {
                     return v[0].reshape({3, 2, 4}).permute({2, 0, 1});
                   }),
                   std::vector<Tensor>{param({6, 4}, 1)});
  EXPECT_GRADCHECK("narrow", Fn([](const std::vector<Tensor>& v) { return v[0].narrow(1, 1, 2); }),
                   std::vector<Tensor>{param({3, 4}, 2)});
  EXPECT_GRADCHECK("expand", Fn([](const std::vector<Tensor>& v) { return v[0].expand({2, 3, 4}); }),
                   std::vector<Tensor>{param({3, 1}, 3)});
  EXPECT_GRADCHECK("concat", Fn([](const std::vector<Tensor>& v) { return ops::concat({v[0], v[1]}, 0); }),
                   (std::vector<Tensor>{param({2, 3}, 4), param({1, 3}, 5)}));
  EXPECT_GRADCHECK("pad", Fn([](const std::vector<Tensor>& v) { return ops::pad(v[0], {1, 2, 0, 1}); }),
                   std::vector<Tensor>{param({2, 3}, 6)});
  EXPECT_GRADCHECK("cast", Fn([](const std::vector<Tensor>& v) { return v[0].to(DType::kF64).to(DType::kF32); }),
                   std::vector<Tensor>{param({4}, 7)});
  EXPECT_GRADCHECK("chunk", Fn([](const std::vector<Tensor>& v) { return ops::chunk(v[0], 2, 1)[1]; }),
                   std::vector<Tensor>{param({2, 4}, 8)});
}

TEST(Resample, ValuesAndGradients) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4}, {1, 1, 2, 2});
  EXPECT_EQ(ops::upsample_nearest2x(x).to_vector(),
            (std::vector<float>{1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4}));
  EXPECT_EQ(ops::avg_pool2x(x).to_vector(), (std::vector<float>{2.5f}));
  EXPECT_GRADCHECK("upsample", Fn([](const std::vector<Tensor>& v) { return ops::upsample_nearest2x(v[0]); }),
                   std::vector<Tensor>{param({2, 3, 3, 2}, 1)});
  EXPECT_GRADCHECK("avg_pool", Fn([](const std::vector<Tensor>& v) { return ops::avg_pool2x(v[0]); }),
                   std::vector<Tensor>{param({2, 3, 4, 6}, 2)});
  EXPECT_THROW(ops::avg_pool2x(random_tensor({1, 1, 3, 2}, 1)), Error);
  Tensor ids = Tensor::from_vector_i64({2, 0, 2}, {3});
  EXPECT_GRADCHECK("embedding", Fn([ids](const std::vector<Tensor>& v) { return ops::embedding(v[0], ids); }),
                   std::vector<Tensor>{param({4, 5}, 3)});
  EXPECT_THROW(ops::embedding(random_tensor({4, 5}, 1), Tensor::from_vector_i64({4}, {1})), Error);
}

TEST(Dropout, KeepsExpectationAndIsSeeded) {
  Tensor x = Tensor::ones({20000});
  Generator g1(5), g2(5);
  Tensor a = ops::dropout(x, 0.25f, g1);
  Tensor b = ops::dropout(x, 0.25f, g2);
  EXPECT_EQ(a.to_vector(), b.to_vector());  // same seed, same mask
  int zeros = 0;
  for (float v : a.to_vector()) {
    EXPECT_TRUE(v == 0.0f || std::fabs(v - 1.0f / 0.75f) < 1e-6f) << v;
    zeros += v == 0.0f;
  }
  // 5000 expected zeros; binomial sd ~61: 5 sd either side
  EXPECT_NEAR(zeros, 5000, 310);
  EXPECT_NEAR(ops::mean(a).item(), 1.0f, 0.03f);
  EXPECT_TRUE(ops::dropout(x, 0.5f, g1, /*training=*/false).is_same(x));
  EXPECT_THROW(ops::dropout(x, 1.0f, g1), Error);
  Generator g3(6);
  Tensor w = param({64}, 9);
  Tensor y = ops::dropout(w, 0.5f, g3);
  ops::sum(y).backward();
  // the gradient is the mask itself: 0 where dropped, 2 where kept
  const std::vector<float> yv = y.to_vector(), gv = w.grad().to_vector();
  for (size_t i = 0; i < yv.size(); ++i) EXPECT_EQ(gv[i], yv[i] == 0.0f ? 0.0f : 2.0f);
}

TEST(Loss, MseValueAndGradient) {
  Tensor a = Tensor::from_vector({1, 2}, {2});
  Tensor b = Tensor::from_vector({0, 4}, {2});
  EXPECT_FLOAT_EQ(ops::mse_loss(a, b).item(), 2.5f);
  EXPECT_GRADCHECK("mse", Fn([](const std::vector<Tensor>& v) { return ops::mse_loss(v[0], v[1]); }),
                   (std::vector<Tensor>{param({3, 4}, 1), param({3, 4}, 2)}));
  EXPECT_THROW(ops::mse_loss(a, Tensor::zeros({3})), Error);
}

TEST(Autograd, GradcheckCatchesAWrongRule) {
  // An op whose recorded rule is off by a factor of 2 must fail the finite-difference check.
  auto wrong = [](const std::vector<Tensor>& v) {
    Tensor out = v[0].detach() * 3.0f;
    autograd::record("wrong", {v[0]}, out, [](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{g * 6.0f};
    });
    return out;
  };
  EXPECT_FALSE(testing::gradcheck("wrong", Fn(wrong), std::vector<Tensor>{param({4}, 1)}));
}

TEST(Autograd, AccumulatesAcrossBackwardCalls) {
  Tensor w = param({3}, 1);
  for (int i = 0; i < 2; ++i) ops::sum(w * 2.0f).backward();
  EXPECT_EQ(w.grad().to_vector(), (std::vector<float>{4, 4, 4}));
  w.zero_grad();
  EXPECT_FALSE(w.grad().defined());
}

TEST(Autograd, SharedSubgraphSumsGradients) {
  // y = (x*x) + (x*x)*3 through a shared node: dy/dx = 8x
  Tensor x = param({4}, 2);
  Tensor sq = x * x;
  ops::sum(sq + sq * 3.0f).backward();
  EXPECT_TRUE(testing::tensors_close(x.grad(), x.detach() * 8.0f, 1e-6, 1e-6));
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = param({2}, 3);
  Tensor y;
  {
    autograd::NoGradGuard guard;
    y = x * 2.0f;
  }
  EXPECT_FALSE(y.requires_grad());
  EXPECT_THROW(y.backward(Tensor::ones({2})), Error);
}

TEST(Autograd, ErrorsNameTheProblem) {
  Tensor x = param({2}, 4);
  Tensor y = ops::sum(x * x);
  y.backward();
  try {
    y.backward();
    FAIL() << "second backward through a freed graph must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("second time"), std::string::npos) << e.what();
  }
  EXPECT_THROW((x * x).backward(), Error);  // not a scalar and no gradient given
  Tensor i = Tensor::from_vector_i64({1}, {1});
  EXPECT_THROW(i.set_requires_grad(true), Error);
}

TEST(Autograd, ReferenceAndFastTablesAgreeOnElementwise) {
  Tensor x = random_tensor({1000}, 9, -4, 4);
  for (const auto& c : kUnary) {
    if (c.lo > 0) x = random_tensor({1000}, 9, c.lo, c.hi);
    Tensor r = reference_kernels().unary(c.op, x);
    Tensor f = fast_kernels().unary(c.op, x);
    EXPECT_TRUE(testing::tensors_close(f, r, 2e-6, 2e-6)) << c.name;
  }
}

}  // namespace
}  // namespace stipple

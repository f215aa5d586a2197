// Optimisers: AdamW and SGD against their formulas evaluated in double, the fast AdamW kernel
// against the reference one, gradient clipping, EMA (diffusers' decay schedule), checkpoint state
// round trips, and convergence on a small least-squares problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"
#include "train/optim.h"

namespace stipple {
namespace {

using train::AdamW;
using train::AdamWConfig;
using train::Ema;
using train::EmaConfig;
using train::SGD;
using train::SgdConfig;

Tensor param(const std::vector<float>& v) {
  Tensor p = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  p.set_requires_grad(true);
  return p;
}

void set_grad(Tensor& p, const std::vector<float>& g) {
  p.set_grad(Tensor::from_vector(g, p.shape()));
}

// Runs the test body with the reference and then the fast kernel table.
class OptimKernels : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { use_reference_kernels(GetParam()); }
  void TearDown() override { use_reference_kernels(false); }
};

INSTANTIATE_TEST_SUITE_P(Tables, OptimKernels, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "reference" : "fast"; });

TEST_P(OptimKernels, AdamWMatchesTheFormulaInDouble) {
  const AdamWConfig cfg{/*lr=*/0.01f, /*beta1=*/0.9f, /*beta2=*/0.99f, /*eps=*/1e-6f,
                        /*weight_decay=*/0.1f};
  const std::vector<float> p0 = {0.5f, -1.25f, 2.0f, 0.0f, 3.0f};
  const std::vector<std::vector<float>> grads = {
      {0.1f, -0.2f, 0.3f, 1e-4f, -5.0f},
      {0.05f, 0.4f, -0.3f, 0.0f, -4.0f},
      {-0.2f, 0.1f, 0.25f, -1e-4f, 2.0f},
  };
  Tensor p = param(p0);
  AdamW opt({p}, cfg);
  // Expected: decoupled decay, then Adam with bias correction (Loshchilov & Hutter, Alg. 2).
  std::vector<double> ep(p0.size()), m(p0.size(), 0.0), v(p0.size(), 0.0);
  for (size_t i = 0; i < p0.size(); ++i) ep[i] = p0[i];
  const double lr = cfg.lr, b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps, wd = cfg.weight_decay;
  for (size_t t = 1; t <= grads.size(); ++t) {
    set_grad(p, grads[t - 1]);
    opt.step();
    for (size_t i = 0; i < p0.size(); ++i) {
      const double g = grads[t - 1][i];
      ep[i] *= 1.0 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(b1, t)), v_hat = v[i] / (1 - std::pow(b2, t));
      ep[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
    const std::vector<float> got = p.to_vector();
    for (size_t i = 0; i < p0.size(); ++i) {
      // f32 arithmetic against double: a few ulp of the parameter.
      EXPECT_NEAR(got[i], ep[i], 2e-6 * std::max(1.0, std::fabs(ep[i])))
          << "step " << t << " element " << i;
    }
  }
  EXPECT_EQ(opt.step_count(), 3);
  const auto state = opt.state_dict();
  const std::vector<float> got_m = state.at("exp_avg.0").to_vector();
  const std::vector<float> got_v = state.at("exp_avg_sq.0").to_vector();
  for (size_t i = 0; i < p0.size(); ++i) {
    EXPECT_NEAR(got_m[i], m[i], 1e-6 * std::max(1.0, std::fabs(m[i])));
    EXPECT_NEAR(got_v[i], v[i], 1e-6 * std::max(1.0, std::fabs(v[i])));
  }
}

TEST_P(OptimKernels, AdamWSkipsParametersWithoutGradient) {
  Tensor a = param({1.0f, 2.0f}), b = param({3.0f});
  AdamW opt({a, b});
  set_grad(a, {0.5f, 0.5f});
  opt.step();
  EXPECT_EQ(b.to_vector(), std::vector<float>{3.0f});
  EXPECT_NE(a.to_vector(), (std::vector<float>{1.0f, 2.0f}));
}

TEST(SGD, MomentumWeightDecayAndNesterovMatchTheFormulaInDouble) {
  for (const bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov" : "heavy ball");
    SgdConfig cfg;
    cfg.lr = 0.1f;
    cfg.momentum = 0.9f;
    cfg.weight_decay = 0.01f;
    cfg.dampening = nesterov ? 0.0f : 0.1f;
    cfg.nesterov = nesterov;
    const std::vector<float> p0 = {1.0f, -2.0f, 0.5f};
    const std::vector<std::vector<float>> grads = {
        {0.3f, -0.1f, 0.0f}, {0.2f, 0.2f, -1.0f}, {-0.4f, 0.1f, 0.5f}};
    Tensor p = param(p0);
    SGD opt({p}, cfg);
    std::vector<double> ep(p0.size()), buf(p0.size(), 0.0);
    for (size_t i = 0; i < p0.size(); ++i) ep[i] = p0[i];
    for (size_t t = 0; t < grads.size(); ++t) {
      set_grad(p, grads[t]);
      opt.step();
      for (size_t i = 0; i < p0.size(); ++i) {
        double d = grads[t][i] + double{cfg.weight_decay} * ep[i];
        buf[i] = t == 0 ? d : double{cfg.momentum} * buf[i] + (1.0 - cfg.dampening) * d;
        d = nesterov ? d + double{cfg.momentum} * buf[i] : buf[i];
        ep[i] -= double{cfg.lr} * d;
      }
      const std::vector<float> got = p.to_vector();
      for (size_t i = 0; i < p0.size(); ++i) {
        EXPECT_NEAR(got[i], ep[i], 1e-6 * std::max(1.0, std::fabs(ep[i])))
            << "step " << t << " element " << i;
      }
    }
  }
}

TEST(SGD, PlainStepIsPMinusLrG) {
  Tensor p = param({1.0f, 2.0f});
  SGD opt({p}, SgdConfig{0.5f});
  set_grad(p, {1.0f, -2.0f});
  opt.step();
  EXPECT_EQ(p.to_vector(), (std::vector<float>{0.5f, 3.0f}));
  EXPECT_EQ(opt.state_dict().size(), 1u);  // only "step": no momentum buffers
}

TEST(AdamWKernel, FastMatchesReferenceOnALargeTensor) {
  const int64_t n = (1 << 20) + 13;  // several OpenMP chunks and a SIMD tail
  const Tensor p0 = testing::random_tensor({n}, 1, -2.0f, 2.0f);
  const Tensor m0 = testing::random_tensor({n}, 2, -0.1f, 0.1f);
  const Tensor v0 = testing::random_tensor({n}, 3, 0.0f, 0.01f);
  Tensor pr = p0.clone(), mr = m0.clone(), vr = v0.clone();
  Tensor pf = p0.clone(), mf = m0.clone(), vf = v0.clone();
  for (int64_t step = 1; step <= 3; ++step) {
    const Tensor g = testing::random_tensor({n}, 10 + step, -1.0f, 1.0f);
    const AdamWParams hp{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, step};
    reference_kernels().adamw_step(pr, g, mr, vr, hp);
    fast_kernels().adamw_step(pf, g, mf, vf, hp);
  }
  // Fused multiply-adds in the fast kernel: up to ~4 ulp of each tensor's largest magnitude
  // (m <= ~0.3, v <= ~0.02, p <= ~2), since m and v are sums that can cancel.
  EXPECT_TENSORS_CLOSE(mf, mr, 1.2e-7, 0.0);
  EXPECT_TENSORS_CLOSE(vf, vr, 8e-9, 0.0);
  EXPECT_TENSORS_CLOSE(pf, pr, 1e-6, 0.0);
}

TEST(ClipGradNorm, ReturnsTheTotalNormAndScalesOnlyAboveMax) {
  Tensor a = param({3.0f, 0.0f}), b = param({0.0f}), c = param({1.0f});
  set_grad(a, {3.0f, 0.0f});
  set_grad(b, {4.0f});  // c has no gradient and is ignored
  EXPECT_FLOAT_EQ(train::clip_grad_norm({a, b, c}, 10.0f), 5.0f);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<float>{3.0f, 0.0f}));  // below max: untouched

  const float norm = train::clip_grad_norm({a, b, c}, 1.0f);
  EXPECT_FLOAT_EQ(norm, 5.0f);
  const float coef = static_cast<float>(1.0 / (5.0 + 1e-6));
  EXPECT_FLOAT_EQ(a.grad().to_vector()[0], 3.0f * coef);
  EXPECT_FLOAT_EQ(b.grad().to_vector()[0], 4.0f * coef);
  EXPECT_NEAR(train::clip_grad_norm({a, b, c}, 1.0f), 1.0, 1e-5);
  EXPECT_FALSE(c.grad().defined());

  // Longer gradients (summed eight at a time, then the tail): the norm of every element.
  std::vector<float> gv(1003), hv(17);
  double want = 0.0;
  for (size_t i = 0; i < gv.size(); ++i) gv[i] = std::sin(0.37f * i) * (1.0f + i % 5);
  for (size_t i = 0; i < hv.size(); ++i) hv[i] = 0.5f - 0.1f * i;
  for (float v : gv) want += double(v) * v;
  for (float v : hv) want += double(v) * v;
  Tensor d = param(std::vector<float>(gv.size(), 0.0f)), e = param(std::vector<float>(17, 0.0f));
  set_grad(d, gv);
  set_grad(e, hv);
  EXPECT_NEAR(train::clip_grad_norm({d, e}, 1e9f), std::sqrt(want), 1e-6 * std::sqrt(want));
}

TEST(Ema, FollowsDiffusersDecaySchedule) {
  Tensor p = param({0.0f, 10.0f});
  Ema ema({p}, EmaConfig{/*decay=*/0.5f});
  EXPECT_FLOAT_EQ(ema.current_decay(), 0.0f);  // the first step copies
  std::vector<double> shadow = {0.0, 10.0};
  for (int step = 1; step <= 12; ++step) {
    const std::vector<float> pv = {static_cast<float>(step), static_cast<float>(-step)};
    std::memcpy(p.raw_data(), pv.data(), sizeof(float) * 2);
    const double t = std::max(0, step - 1);
    const double decay = t <= 0 ? 0.0 : std::min(0.5, (1 + t) / (10 + t));
    EXPECT_NEAR(ema.current_decay(), decay, 1e-7) << "step " << step;
    ema.step({p});
    for (int i = 0; i < 2; ++i) shadow[i] -= (1 - decay) * (shadow[i] - pv[i]);
    const std::vector<float> s = ema.shadow_params()[0].to_vector();
    EXPECT_NEAR(s[0], shadow[0], 1e-5) << "step " << step;
    EXPECT_NEAR(s[1], shadow[1], 1e-5) << "step " << step;
  }
  EXPECT_EQ(ema.optimization_step(), 12);
}

TEST(Ema, RestartAtFullDecaySkipsTheWarmUp) {
  for (const EmaConfig::Warmup warmup : {EmaConfig::Warmup::kSteps, EmaConfig::Warmup::kPower}) {
    Tensor p = param({1.0f, 2.0f});
    EmaConfig config{/*decay=*/0.9995f};
    config.warmup = warmup;
    config.update_after_step = 7;
    Ema ema({p}, config);
    ema.step({p});
    const std::vector<float> start = {3.0f, -4.0f};
    std::memcpy(p.raw_data(), start.data(), sizeof(float) * 2);
    ema.restart_at_full_decay({p});
    EXPECT_EQ(ema.shadow_params()[0].to_vector(), start);
    EXPECT_FLOAT_EQ(ema.current_decay(), 0.9995f);
    // the earliest such step: one fewer would still be warming up
    Ema probe({p}, config);
    probe.load_state_dict({{"optimization_step",
                            Tensor::from_vector_i64({ema.optimization_step() - 1}, {})},
                           {"shadow.0", p.detach().clone()}});
    EXPECT_LT(probe.current_decay(), 0.9995f);
    // the next step moves the shadow by (1 - decay) of the way to the parameters
    const std::vector<float> next = {13.0f, -4.0f};
    std::memcpy(p.raw_data(), next.data(), sizeof(float) * 2);
    ema.step({p});
    EXPECT_NEAR(ema.shadow_params()[0].to_vector()[0], 3.0f + 10.0f * (1 - 0.9995f), 1e-5);
  }
  Tensor p = param({1.0f});
  Ema none({p}, EmaConfig{/*decay=*/0.9f});
  EXPECT_THROW(none.restart_at_full_decay({p, p}), Error);
}

TEST(Ema, PowerWarmupUpdateAfterStepAndFrozenParameters) {
  EmaConfig cfg;
  cfg.decay = 0.999f;
  cfg.warmup = EmaConfig::Warmup::kPower;
  cfg.update_after_step = 2;
  Tensor p = param({1.0f});
  Tensor frozen = Tensor::from_vector({5.0f}, {1});  // does not require grad: copied
  Ema ema({p, frozen}, cfg);
  for (int step = 1; step <= 3; ++step) {
    EXPECT_FLOAT_EQ(ema.current_decay(), 0.0f) << step;
    ema.step({p, frozen});
  }
  // t = 4 - 2 - 1 = 1: 1 - (1 + 1)^(-2/3).
  EXPECT_NEAR(ema.current_decay(), 1.0 - std::pow(2.0, -2.0 / 3.0), 1e-6);
  std::memcpy(p.raw_data(), std::vector<float>{2.0f}.data(), 4);
  std::memcpy(frozen.raw_data(), std::vector<float>{7.0f}.data(), 4);
  const float d = ema.current_decay();
  ema.step({p, frozen});
  EXPECT_NEAR(ema.shadow_params()[0].item(), 1.0f - (1.0f - d) * (1.0f - 2.0f), 1e-6);
  EXPECT_EQ(ema.shadow_params()[1].item(), 7.0f);
}

TEST(Ema, CopyToStoreRestoreAndStateRoundTrip) {
  Tensor p = param({1.0f, 2.0f});
  Ema ema({p}, EmaConfig{0.9f});
  for (int i = 0; i < 5; ++i) {
    std::vector<float> v = {1.0f + i, 2.0f - i};
    std::memcpy(p.raw_data(), v.data(), 8);
    ema.step({p});
  }
  const std::vector<float> raw = p.to_vector();
  const std::vector<float> averaged = ema.shadow_params()[0].to_vector();
  ema.store({p});
  ema.copy_to({p});
  EXPECT_EQ(p.to_vector(), averaged);
  ema.restore({p});
  EXPECT_EQ(p.to_vector(), raw);

  Ema other({p}, EmaConfig{0.9f});
  other.load_state_dict(ema.state_dict());
  EXPECT_EQ(other.optimization_step(), 5);
  ema.step({p});
  other.step({p});
  EXPECT_EQ(other.shadow_params()[0].to_vector(), ema.shadow_params()[0].to_vector());
}

TEST(Checkpoint, AdamWStateRoundTripContinuesIdentically) {
  const std::vector<float> p0 = {0.3f, -0.7f, 1.1f, 2.0f};
  auto grad_at = [](int step) {
    return std::vector<float>{0.1f * step, -0.2f, 0.05f * step * step, 1.0f / step};
  };
  Tensor a = param(p0);
  AdamW opt_a({a}, AdamWConfig{0.05f});
  for (int s = 1; s <= 4; ++s) {
    set_grad(a, grad_at(s));
    opt_a.step();
  }
  const auto state = opt_a.state_dict();
  Tensor b = param(a.to_vector());
  AdamW opt_b({b}, AdamWConfig{0.05f});
  opt_b.load_state_dict(state);
  EXPECT_EQ(opt_b.step_count(), 4);
  for (int s = 5; s <= 8; ++s) {
    set_grad(a, grad_at(s));
    set_grad(b, grad_at(s));
    opt_a.step();
    opt_b.step();
  }
  EXPECT_EQ(a.to_vector(), b.to_vector());
}

TEST(Checkpoint, SgdStateRoundTripAndBadStateIsRefused) {
  Tensor a = param({1.0f, -1.0f});
  SgdConfig cfg;
  cfg.lr = 0.1f;
  cfg.momentum = 0.9f;
  SGD opt_a({a}, cfg);
  set_grad(a, {1.0f, 2.0f});
  opt_a.step();
  Tensor b = param(a.to_vector());
  SGD opt_b({b}, cfg);
  opt_b.load_state_dict(opt_a.state_dict());
  set_grad(a, {0.5f, -0.5f});
  set_grad(b, {0.5f, -0.5f});
  opt_a.step();
  opt_b.step();
  EXPECT_EQ(a.to_vector(), b.to_vector());

  AdamW adam({a});
  EXPECT_THROW(adam.load_state_dict(opt_a.state_dict()), Error);  // no exp_avg.0
  auto state = adam.state_dict();
  state["exp_avg.0"] = Tensor::zeros({3});
  EXPECT_THROW(adam.load_state_dict(state), Error);
  EXPECT_EQ(adam.step_count(), 0);
}

TEST(Optimisers, RefuseNonF32Parameters) {
  Tensor h = Tensor::zeros({2}, DType::kF16);
  EXPECT_THROW(AdamW({h}), Error);
  EXPECT_THROW(SGD({h}), Error);
  EXPECT_THROW(Ema({h}), Error);
}

// min_w,b mean((X w + b - y)^2) with y from known weights: both optimisers must find them.
TEST(Convergence, LeastSquaresWithAdamWAndSGD) {
  const int64_t n = 64, d = 4;
  const Tensor x = testing::random_tensor({n, d}, 7);
  const std::vector<float> w_true = {1.5f, -2.0f, 0.5f, 3.0f};
  const float b_true = 0.25f;
  std::vector<float> yv(n);
  const std::vector<float> xv = x.to_vector();
  for (int64_t i = 0; i < n; ++i) {
    float acc = b_true;
    for (int64_t j = 0; j < d; ++j) acc += xv[i * d + j] * w_true[j];
    yv[i] = acc;
  }
  const Tensor y = Tensor::from_vector(yv, {n, 1});
  for (const bool use_adam : {true, false}) {
    SCOPED_TRACE(use_adam ? "AdamW" : "SGD");
    Tensor w = Tensor::zeros({d, 1});
    w.set_requires_grad(true);
    Tensor b = Tensor::zeros({1});
    b.set_requires_grad(true);
    AdamW adam({w, b}, AdamWConfig{0.05f, 0.9f, 0.999f, 1e-8f, 0.0f});
    SgdConfig sc;
    sc.lr = 0.2f;
    sc.momentum = 0.9f;
    SGD sgd({w, b}, sc);
    float loss_value = 0;
    for (int it = 0; it < 600; ++it) {
      const Tensor loss = ops::mse_loss(ops::add(ops::matmul(x, w), b), y);
      loss_value = loss.item();
      if (use_adam) {
        adam.zero_grad();
      } else {
        sgd.zero_grad();
      }
      loss.backward();
      if (use_adam) {
        adam.step();
      } else {
        sgd.step();
      }
    }
    EXPECT_LT(loss_value, 1e-6);
    const std::vector<float> wv = w.to_vector();
    for (int64_t j = 0; j < d; ++j) EXPECT_NEAR(wv[j], w_true[j], 1e-3) << j;
    EXPECT_NEAR(b.item(), b_true, 1e-3);
  }
}

}  // namespace
}  // namespace stipple

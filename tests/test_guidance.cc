// Guidance: classifier-free guidance and its batch orders, guidance rescale, and classifier
// guidance checked exactly on a Gaussian mixture, where log p(y | x_t) and the conditional eps
// have closed forms: with scale 1, guiding the unconditional eps by the mixture's own classifier
// must give the eps of the chosen component (Bayes: grad log p(x|y) = grad log p(x) +
// grad log p(y|x)).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/grad_mode.h"
#include "ops/ops.h"
#include "schedulers/guidance.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;

TEST(Guidance, ClassifierFreeValuesAndBatchOrder) {
  Tensor u = Tensor::from_vector({1, 2}, {1, 2});
  Tensor c = Tensor::from_vector({3, 1}, {1, 2});
  // u + 7.5 (c - u)
  EXPECT_EQ(guidance::classifier_free(u, c, 7.5f).to_vector(), (std::vector<float>{16, -5.5}));
  EXPECT_EQ(guidance::classifier_free(u, c, 1.0f).to_vector(), c.to_vector());
  const Tensor sd = ops::concat({u, c}, 0);   // Stable Diffusion: [uncond, cond]
  const Tensor dit = ops::concat({c, u}, 0);  // DiT: [cond, uncond]
  EXPECT_EQ(guidance::classifier_free_batched(sd, 3.0f, guidance::CfgOrder::kUncondFirst).to_vector(),
            guidance::classifier_free(u, c, 3.0f).to_vector());
  EXPECT_EQ(guidance::classifier_free_batched(dit, 3.0f, guidance::CfgOrder::kCondFirst).to_vector(),
            guidance::classifier_free(u, c, 3.0f).to_vector());
  EXPECT_THROW(guidance::classifier_free_batched(random_tensor({3, 2}, 1), 2.0f,
                                                 guidance::CfgOrder::kUncondFirst),
               Error);
  EXPECT_THROW(guidance::classifier_free(u, random_tensor({2, 2}, 1), 2.0f), Error);
}

TEST(Guidance, RescaleMatchesConditionalStd) {
  const Tensor cond = random_tensor({2, 4, 3, 3}, 1);
  const Tensor uncond = random_tensor({2, 4, 3, 3}, 2);
  const Tensor guided = guidance::classifier_free(uncond, cond, 7.0f);
  // phi = 0 changes nothing
  EXPECT_TRUE(testing::tensors_close(guidance::rescale_guidance(guided, cond, 0.0f), guided, 1e-6, 0));
  // phi = 1: each sample's (unbiased) std equals the conditional sample's std
  const Tensor r = guidance::rescale_guidance(guided, cond, 1.0f);
  auto stdev = [](const Tensor& x, int b) {
    const std::vector<float> v = x.narrow(0, b, 1).to_vector();
    double m = 0, s = 0;
    for (float f : v) m += f;
    m /= v.size();
    for (float f : v) s += (f - m) * (f - m);
    return std::sqrt(s / (v.size() - 1));
  };
  for (int b = 0; b < 2; ++b) EXPECT_NEAR(stdev(r, b), stdev(cond, b), 1e-5) << "sample " << b;
  // phi = 0.7 mixes linearly
  const Tensor mix = guidance::rescale_guidance(guided, cond, 0.7f);
  EXPECT_TRUE(testing::tensors_close(mix, ops::add(ops::affine(r, 0.7f, 0), ops::affine(guided, 0.3f, 0)),
                                     1e-5, 1e-5));
  // the batched form applies it too
  const Tensor both = ops::concat({uncond, cond}, 0);
  EXPECT_TRUE(testing::tensors_close(
      guidance::classifier_free_batched(both, 7.0f, guidance::CfgOrder::kUncondFirst, 1.0f), r,
      1e-6, 0));
  EXPECT_THROW(guidance::rescale_guidance(guided, cond, 1.5f), Error);
}

// Two isotropic Gaussians in 2-D, noised with x_t = a x0 + sigma eps.
struct Mixture {
  double w[2] = {0.3, 0.7};
  double mu[2][2] = {{-2.0, 0.0}, {2.0, 1.0}};
  double s[2] = {0.5, 0.8};
  double a = 0.6, sigma = 0.8;
  double var(int k) const { return a * a * s[k] * s[k] + sigma * sigma; }
  double log_density(int k, double x, double y) const {
    const double dx = x - a * mu[k][0], dy = y - a * mu[k][1];
    return std::log(w[k]) - (dx * dx + dy * dy) / (2 * var(k)) - std::log(2 * M_PI * var(k));
  }
  // eps = -sigma * score; for component k alone (cond) or the whole mixture (uncond).
  std::vector<float> eps(const std::vector<float>& pts, int k) const {
    std::vector<float> out(pts.size());
    for (size_t i = 0; i < pts.size(); i += 2) {
      const double x = pts[i], y = pts[i + 1];
      double r[2] = {1, 1};
      if (k < 0) {
        const double l0 = log_density(0, x, y), l1 = log_density(1, x, y);
        const double m = std::max(l0, l1);
        const double z = std::exp(l0 - m) + std::exp(l1 - m);
        r[0] = std::exp(l0 - m) / z;
        r[1] = std::exp(l1 - m) / z;
      }
      double ex = 0, ey = 0;
      for (int c = 0; c < 2; ++c) {
        if (k >= 0 && c != k) continue;
        ex += r[c] * (x - a * mu[c][0]) / var(c);
        ey += r[c] * (y - a * mu[c][1]) / var(c);
      }
      out[i] = static_cast<float>(sigma * ex);
      out[i + 1] = static_cast<float>(sigma * ey);
    }
    return out;
  }
  // log p(y = k | x_t) with differentiable ops, x [B, 2] -> [B]
  Tensor log_posterior(const Tensor& x, int k) const {
    std::vector<Tensor> cols;
    for (int c = 0; c < 2; ++c) {
      const Tensor center = Tensor::from_vector(
          {static_cast<float>(a * mu[c][0]), static_cast<float>(a * mu[c][1])}, {2});
      const Tensor d2 = ops::sum(ops::square(ops::sub(x, center)), {1}, true);  // [B, 1]
      cols.push_back(ops::affine(d2, static_cast<float>(-1 / (2 * var(c))),
                                 static_cast<float>(std::log(w[c]) - std::log(2 * M_PI * var(c)))));
    }
    return ops::log_softmax(ops::concat(cols, 1), 1).narrow(1, k, 1).reshape({x.size(0)});
  }
};

TEST(Guidance, ClassifierGuidanceRecoversTheConditionalEps) {
  const Mixture m;
  const Tensor x = random_tensor({64, 2}, 3, -3.0f, 3.0f);
  const std::vector<float> pts = x.to_vector();
  const Tensor eps_uncond = Tensor::from_vector(m.eps(pts, -1), {64, 2});
  autograd::NoGradGuard no_grad;  // as inside a sampling loop
  for (int k = 0; k < 2; ++k) {
    const guidance::LogProbFn classifier = [&m, k](const Tensor& xt) {
      return m.log_posterior(xt, k);
    };
    const Tensor guided = guidance::classifier_guided_eps(
        eps_uncond, x, Tensor::scalar(m.sigma), 1.0f, classifier);
    EXPECT_TRUE(testing::tensors_close(guided, Tensor::from_vector(m.eps(pts, k), {64, 2}), 2e-5,
                                       2e-5))
        << "class " << k;
    // scale 0 leaves eps alone; larger scales push further along the same direction
    EXPECT_TRUE(testing::tensors_close(
        guidance::classifier_guided_eps(eps_uncond, x, Tensor::scalar(m.sigma), 0.0f, classifier),
        eps_uncond, 0, 0));
  }
  EXPECT_FALSE(autograd::grad_enabled());  // the guard's state is restored
  const guidance::LogProbFn constant = [](const Tensor& xt) { return Tensor::zeros({xt.size(0)}); };
  EXPECT_THROW(guidance::classifier_gradient(constant, x), Error);
}

}  // namespace
}  // namespace stipple

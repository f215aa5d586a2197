// Schedulers: every shared diffusers trajectory replays within 1e-4, the schedule functions
// match hand-derived values, bad configs fail with messages that name the key and value, and the
// deterministic samplers draw correct samples from a 2-D Gaussian mixture whose exact eps has a
// closed form, converging at their stated order.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>

#include "core/error.h"
#include "core/rng.h"
#include "pipelines/conformance.h"
#include "schedulers/schedule.h"
#include "schedulers/scheduler.h"
#include "schedulers/training.h"
#include "support/numerics.h"

namespace stipple::schedulers {
namespace {

// ---- schedule functions against hand-derived values ----

TEST(Schedule, BetaSchedules) {
  const std::vector<float> lin = make_betas("linear", 1000, 1e-4, 0.02);
  ASSERT_EQ(lin.size(), 1000u);
  EXPECT_FLOAT_EQ(lin[0], 1e-4f);
  EXPECT_FLOAT_EQ(lin[999], 0.02f);
  EXPECT_NEAR(lin[500], 1e-4 + 500 * (0.02 - 1e-4) / 999, 1e-8);
  const std::vector<float> sl = make_betas("scaled_linear", 1000, 0.00085, 0.012);
  EXPECT_NEAR(sl[0], 0.00085, 1e-9);
  EXPECT_NEAR(sl[999], 0.012, 1e-8);
  const double mid = std::sqrt(0.00085) + 500 * (std::sqrt(0.012) - std::sqrt(0.00085)) / 999;
  EXPECT_NEAR(sl[500], mid * mid, 1e-8);
  // Cosine: beta_0 = 1 - abar(1/T)/abar(0), abar(t) = cos((t + 0.008)/1.008 pi/2)^2; capped.
  const std::vector<float> cs = make_betas("squaredcos_cap_v2", 1000, 0, 0);
  auto abar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  EXPECT_NEAR(cs[0], 1 - abar(0.001) / abar(0), 1e-9);
  EXPECT_FLOAT_EQ(cs[999], 0.999f);
  const std::vector<float> acp = alphas_cumprod_from_betas(lin);
  EXPECT_FLOAT_EQ(acp[0], 1 - 1e-4f);
  EXPECT_NEAR(acp[1], (1 - 1e-4) * (1 - lin[1]), 1e-7);
  EXPECT_NEAR(acp[999], 4.04e-5, 1e-6);  // DDPM's schedule: almost pure noise at T
}

TEST(Schedule, ZeroTerminalSnrRescale) {
  const std::vector<float> b = make_betas("scaled_linear", 1000, 0.00085, 0.012);
  const std::vector<float> acp0 = alphas_cumprod_from_betas(b);
  const std::vector<float> acp = alphas_cumprod_from_betas(rescale_zero_terminal_snr(b));
  EXPECT_NEAR(acp[0], acp0[0], 1e-6);  // the first step keeps its SNR
  EXPECT_NEAR(acp[999], 0.0, 1e-12);   // the last has none left
  for (int t = 1; t < 1000; ++t) ASSERT_LE(acp[t], acp[t - 1]);
}

TEST(Schedule, TimestepSpacings) {
  using V = std::vector<double>;
  const V leading = make_timesteps(TimestepSpacing::kLeading, TimestepGrid::kRounded, 1000, 20, 1);
  EXPECT_EQ(leading.front(), 951);
  EXPECT_EQ(leading[1], 901);
  EXPECT_EQ(leading.back(), 1);
  const V trailing =
      make_timesteps(TimestepSpacing::kTrailing, TimestepGrid::kRounded, 1000, 20, 1);
  EXPECT_EQ(trailing.front(), 999);
  EXPECT_EQ(trailing.back(), 49);
  const V lin = make_timesteps(TimestepSpacing::kLinspace, TimestepGrid::kRounded, 1000, 20, 1);
  EXPECT_EQ(lin.front(), 999);
  EXPECT_EQ(lin[1], 946);  // round(999 * 18/19) = round(946.42)
  EXPECT_EQ(lin.back(), 0);
  const V f = make_timesteps(TimestepSpacing::kLinspace, TimestepGrid::kFloat, 1000, 20, 1);
  EXPECT_NEAR(f[1], 999.0 * 18 / 19, 1e-4);
  const V dpm =
      make_timesteps(TimestepSpacing::kLinspace, TimestepGrid::kRoundedPlus1, 1000, 20, 1);
  ASSERT_EQ(dpm.size(), 20u);
  EXPECT_EQ(dpm.front(), 999);
  EXPECT_EQ(dpm[1], 949);  // round(999 * 19/20) = round(949.05)
  EXPECT_EQ(dpm.back(), 50);
  const V trailing3 =
      make_timesteps(TimestepSpacing::kTrailing, TimestepGrid::kRounded, 1000, 3, 0);
  EXPECT_EQ(trailing3, (V{999, 666, 332}));  // round(1000, 666.67, 333.33) - 1
  EXPECT_THROW(make_timesteps(TimestepSpacing::kLeading, TimestepGrid::kRounded, 1000, 0, 0),
               Error);
}

TEST(Schedule, KarrasSigmasAndSigmaToT) {
  const std::vector<double> k = karras_sigmas(0.03, 14.6, 5);
  EXPECT_NEAR(k.front(), 14.6, 1e-12);
  EXPECT_NEAR(k.back(), 0.03, 1e-12);
  const double mid = std::pow((std::pow(14.6, 1 / 7.0) + std::pow(0.03, 1 / 7.0)) / 2, 7);
  EXPECT_NEAR(k[2], mid, 1e-12);
  // sigma_to_t inverts the training sigmas: exactly at integers, between them by log-sigma.
  const std::vector<float> sig =
      sigmas_from_alphas_cumprod(alphas_cumprod_from_betas(make_betas("linear", 1000, 1e-4, 0.02)));
  std::vector<float> logs(sig.size());
  for (size_t i = 0; i < sig.size(); ++i) logs[i] = std::log(sig[i]);
  EXPECT_NEAR(sigma_to_t(sig[500], logs), 500, 1e-3);
  const double between = std::exp((std::log(sig[300]) + std::log(sig[301])) / 2);
  EXPECT_NEAR(sigma_to_t(between, logs), 300.5, 1e-3);
  EXPECT_EQ(sigma_to_t(1e-9, logs), 0);  // below the range: clipped
  EXPECT_NEAR(interp_at(300.25, sig), 0.75 * sig[300] + 0.25 * sig[301], 1e-6);
  const AlphaSigma as = sigma_to_alpha_sigma(0.75);
  EXPECT_NEAR(as.alpha, 0.8, 1e-12);
  EXPECT_NEAR(as.sigma, 0.6, 1e-12);
}

// ---- config parsing and the name table ----

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SchedulerConfig, LenientJsonUnknownKeysAndClassDefaults) {
  const SchedulerConfig c = SchedulerConfig::from_json(R"({
    "_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity,
    "some_future_key": [1, 2], "beta_schedule": "scaled_linear", "text": "NaN -Infinity"})");
  EXPECT_EQ(c.class_name, "DPMSolverMultistepScheduler");
  EXPECT_TRUE(std::isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
  EXPECT_EQ(c.beta_schedule, "scaled_linear");
  EXPECT_EQ(c.timestep_spacing, TimestepSpacing::kLinspace);  // DPM-Solver's default
  const SchedulerConfig d = SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler"})");
  EXPECT_EQ(d.timestep_spacing, TimestepSpacing::kLeading);
  EXPECT_TRUE(d.clip_sample);  // the class default, unlike SD's config
  EXPECT_TRUE(d.set_alpha_to_one);
}

TEST(SchedulerConfig, UnsupportedValuesNameKeyAndValue) {
  const std::string e1 = error_of([] {
    SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"})");
  });
  EXPECT_NE(e1.find("beta_schedule"), std::string::npos) << e1;
  EXPECT_NE(e1.find("sigmoid"), std::string::npos) << e1;
  const std::string e2 = error_of([] {
    SchedulerConfig::from_json(R"({"_class_name": "EulerDiscreteScheduler",
                                   "prediction_type": "flow"})");
  });
  EXPECT_NE(e2.find("prediction_type"), std::string::npos) << e2;
  EXPECT_NE(e2.find("flow"), std::string::npos) << e2;
  const std::string e3 =
      error_of([] { SchedulerConfig::from_json(R"({"_class_name": "FancyScheduler"})"); });
  EXPECT_NE(e3.find("FancyScheduler"), std::string::npos) << e3;
  const std::string e4 = error_of([] {
    SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler", "steps_offset": "one"})");
  });
  EXPECT_NE(e4.find("steps_offset"), std::string::npos) << e4;
  const std::string e5 = error_of([] { SchedulerConfig::from_json("{\"_class_name\": "); });
  EXPECT_NE(e5.find("JSON"), std::string::npos) << e5;
  const std::string e6 = error_of([] { SchedulerConfig::from_json("/no/such/scheduler.json"); });
  EXPECT_NE(e6.find("/no/such/scheduler.json"), std::string::npos) << e6;
  const std::string e7 = error_of([] {
    SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler", "timestep_spacing": "log"})");
  });
  EXPECT_NE(e7.find("timestep_spacing"), std::string::npos) << e7;
}

// Found by fuzz/fuzz_json_config.cc (crash-6_scheduler_number_overflow): a number beyond a
// double made nlohmann throw out_of_range past the parse_error handler.
TEST(SchedulerConfig, NumberBeyondADoubleIsAJsonError) {
  const std::string e = error_of(
      [] { SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler", "beta_end": 1e999})"); });
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
}

TEST(SchedulerConfig, SamplerNamesMapOntoClassesAndOptions) {
  const SchedulerConfig base = SchedulerConfig::from_json(R"({"_class_name": "PNDMScheduler",
      "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
      "steps_offset": 1, "skip_prk_steps": true, "prediction_type": "v_prediction"})");
  for (const SamplerName& n : sampler_names()) {
    const SchedulerConfig c = config_for_sampler(n.name, base);
    EXPECT_EQ(c.class_name, n.class_name) << n.name;
    EXPECT_EQ(c.beta_schedule, "scaled_linear") << n.name;  // the model's schedule carries over
    EXPECT_EQ(c.prediction_type, PredictionType::kVPrediction) << n.name;
    EXPECT_NO_THROW(make_scheduler(c)) << n.name;
  }
  const SchedulerConfig k = config_for_sampler("DPM++ 2M Karras", base);
  EXPECT_EQ(k.class_name, "DPMSolverMultistepScheduler");
  EXPECT_TRUE(k.use_karras_sigmas);
  EXPECT_EQ(config_for_sampler("Euler a", base).class_name, "EulerAncestralDiscreteScheduler");
  const std::string e = error_of([&] { config_for_sampler("dpm++3m_sde", base); });
  EXPECT_NE(e.find("euler_a"), std::string::npos) << e;  // lists what exists
}

TEST(Scheduler, MisuseGetsTeachingErrors) {
  auto s =
      make_scheduler(SchedulerConfig::from_json(R"({"_class_name": "EulerDiscreteScheduler"})"));
  const Tensor x = Tensor::zeros({1, 2});
  EXPECT_NE(error_of([&] { s->step(x, 999, x); }).find("set_timesteps"), std::string::npos);
  s->set_timesteps(10);
  EXPECT_NE(error_of([&] { s->step(x, 123.5, x); }).find("timesteps()"), std::string::npos);
  auto a = make_scheduler(
      SchedulerConfig::from_json(R"({"_class_name": "EulerAncestralDiscreteScheduler"})"));
  a->set_timesteps(10);
  EXPECT_NE(error_of([&] { a->step(x, a->timesteps()[0], x); }).find("Generator"),
            std::string::npos);
  Generator g(0);
  const SchedulerOutput o = a->step(Tensor::ones({1, 2}), a->timesteps()[0], x, &g);
  EXPECT_EQ(o.prev_sample.shape(), x.shape());
}

TEST(Scheduler, AddNoiseIsTheForwardProcess) {
  auto d = make_scheduler(SchedulerConfig::from_json(R"({"_class_name": "DDIMScheduler"})"));
  d->set_timesteps(10);
  const Tensor x0 = Tensor::full({4}, 2.0), n = Tensor::full({4}, -1.0);
  const double a = d->alphas_cumprod()[500];
  EXPECT_NEAR(d->add_noise(x0, n, 500).to_vector()[0], 2 * std::sqrt(a) - std::sqrt(1 - a), 1e-6);
  auto e =
      make_scheduler(SchedulerConfig::from_json(R"({"_class_name": "EulerDiscreteScheduler"})"));
  e->set_timesteps(10);
  const double t = e->timesteps()[3], sigma = e->sigmas()[3];
  EXPECT_NEAR(e->add_noise(x0, n, t).to_vector()[0], 2 - sigma, 1e-5);
}

TEST(Training, VelocityConversionsAndMinSnr) {
  const std::vector<float> acp = alphas_cumprod_from_betas(make_betas("linear", 1000, 1e-4, 0.02));
  const Tensor x0 = ::stipple::testing::random_tensor({3, 2, 2}, 1);
  const Tensor eps = ::stipple::testing::random_tensor({3, 2, 2}, 2);
  const Tensor t = Tensor::from_vector_i64({10, 500, 990}, {3});
  const Tensor xt = add_noise(acp, x0, eps, t);
  const Tensor v = get_velocity(acp, x0, eps, t);
  const std::vector<float> x0v = x0.to_vector(), ev = eps.to_vector(), vv = v.to_vector();
  const int ts[3] = {10, 500, 990};
  for (int i = 0; i < 12; ++i) {
    const double a = acp[ts[i / 4]];
    EXPECT_NEAR(vv[i], std::sqrt(a) * ev[i] - std::sqrt(1 - a) * x0v[i], 1e-6);
  }
  for (PredictionType p :
       {PredictionType::kEpsilon, PredictionType::kVPrediction, PredictionType::kSample}) {
    const Tensor target = prediction_target(p, acp, x0, eps, t);
    EXPECT_TENSORS_CLOSE(predicted_x0(p, acp, target, xt, t), x0, 2e-3, 0);
    EXPECT_TENSORS_CLOSE(predicted_eps(p, acp, target, xt, t), eps, 2e-3, 0);
  }
  const std::vector<float> s = snr(acp, t).to_vector();
  const std::vector<float> w = min_snr_weights(PredictionType::kEpsilon, acp, t, 5.0).to_vector();
  EXPECT_NEAR(w[0], 5.0 / s[0], 1e-6);  // high SNR: clipped to gamma
  EXPECT_NEAR(w[2], 1.0, 1e-6);         // low SNR: weight 1
  const std::vector<float> wv =
      min_snr_weights(PredictionType::kVPrediction, acp, t, 5.0).to_vector();
  EXPECT_NEAR(wv[2], s[2] / (s[2] + 1), 1e-6);
}

// ---- analytic check: a 2-D Gaussian mixture with a closed-form eps ----
//
// Data: p0 = sum_k w_k N(mu_k, s_k^2 I). In the variance-exploding view x = x0 + sigma eps the
// noised density is sum_k w_k N(mu_k, (s_k^2 + sigma^2) I), so the exact denoiser output is
//   eps(x, sigma) = -sigma grad log p_sigma(x) = sigma sum_k g_k(x) (x - mu_k) / (s_k^2 + sigma^2)
// with g_k the posterior responsibilities. A scheduler's model sees the variance-preserving
// x_vp = x / sqrt(1 + sigma^2) at timestep t, with sigma(t) interpolated from the training
// sigmas exactly as the sigma-based schedulers do.

struct Mixture {
  std::vector<double> w = {0.5, 0.3, 0.2};
  std::vector<std::array<double, 2>> mu = {{-2.0, 0.0}, {2.0, 1.0}, {0.0, -2.5}};
  std::vector<double> s = {0.5, 0.4, 0.6};

  // Posterior responsibilities of the components at x under noise level sigma.
  std::array<double, 3> resp(double x, double y, double sigma) const {
    std::array<double, 3> logp;
    double mx = -1e300;
    for (int k = 0; k < 3; ++k) {
      const double v = s[k] * s[k] + sigma * sigma;
      const double dx = x - mu[k][0], dy = y - mu[k][1];
      logp[k] = std::log(w[k]) - std::log(v) - (dx * dx + dy * dy) / (2 * v);
      mx = std::max(mx, logp[k]);
    }
    double z = 0;
    for (double& l : logp) z += (l = std::exp(l - mx));
    for (double& l : logp) l /= z;
    return logp;
  }
  std::array<double, 2> eps(double x, double y, double sigma) const {
    const std::array<double, 3> g = resp(x, y, sigma);
    std::array<double, 2> e = {0, 0};
    for (int k = 0; k < 3; ++k) {
      const double v = s[k] * s[k] + sigma * sigma;
      e[0] += g[k] * (x - mu[k][0]) / v;
      e[1] += g[k] * (y - mu[k][1]) / v;
    }
    return {sigma * e[0], sigma * e[1]};
  }
};

// The linear DDPM schedule (acp_T = 4e-5: x_T is pure noise, so the prior is exact), trailing
// spacing so that every sampler starts at t = 999 and ends at sigma = 0.
std::string mixture_config(const char* cls) {
  return str_cat(R"({"_class_name": ")", cls,
                 R"(", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
      "timestep_spacing": "trailing", "set_alpha_to_one": true, "clip_sample": false,
      "skip_prk_steps": true, "steps_offset": 0})");
}

// Runs a scheduler's loop with the exact eps model on points z (N x 2, standard normal).
std::vector<double> sample_mixture(Scheduler& sch, const Mixture& m, const std::vector<float>& z,
                                   int steps) {
  sch.set_timesteps(steps);
  const std::vector<float> train = sigmas_from_alphas_cumprod(sch.alphas_cumprod());
  const int64_t n = static_cast<int64_t>(z.size() / 2);
  Tensor x = Tensor::from_vector(z, {n, 2}) * static_cast<float>(sch.init_noise_sigma());
  for (double t : sch.timesteps()) {
    const std::vector<float> in = sch.scale_model_input(x, t).to_vector();
    const double sigma = interp_at(t, train);
    const double up = std::sqrt(1 + sigma * sigma);  // x_vp -> x_ve
    std::vector<float> out(in.size());
    for (int64_t i = 0; i < n; ++i) {
      const std::array<double, 2> e = m.eps(in[2 * i] * up, in[2 * i + 1] * up, sigma);
      out[2 * i] = static_cast<float>(e[0]);
      out[2 * i + 1] = static_cast<float>(e[1]);
    }
    x = sch.step(Tensor::from_vector(out, {n, 2}), t, x).prev_sample;
  }
  const std::vector<float> r = x.to_vector();
  return std::vector<double>(r.begin(), r.end());
}

// The exact probability-flow ODE dx/dsigma = eps(x, sigma) (Karras et al. 2022, eq. 4 with
// sigma(t) = t), from sigma_start to 0, by RK4 on a Karras grid of 400 steps: the reference
// the samplers converge to.
std::vector<double> ode_reference(const Mixture& m, const std::vector<double>& x_start,
                                  double sigma_start) {
  std::vector<double> grid = karras_sigmas(1e-3, sigma_start, 400);
  grid.push_back(0.0);
  std::vector<double> x = x_start;
  for (size_t p = 0; p < x.size(); p += 2) {
    double a = x[p], b = x[p + 1];
    for (size_t i = 0; i + 1 < grid.size(); ++i) {
      const double s0 = grid[i], h = grid[i + 1] - s0;
      const auto k1 = m.eps(a, b, s0);
      const auto k2 = m.eps(a + h / 2 * k1[0], b + h / 2 * k1[1], s0 + h / 2);
      const auto k3 = m.eps(a + h / 2 * k2[0], b + h / 2 * k2[1], s0 + h / 2);
      const auto k4 = m.eps(a + h * k3[0], b + h * k3[1], s0 + h);
      a += h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0]);
      b += h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1]);
    }
    x[p] = a;
    x[p + 1] = b;
  }
  return x;
}

struct Sampler {
  const char* name;
  const char* cls;
  double min_ratio;  // asserted error ratio per doubling of steps (0: printed only)
};

const std::vector<Sampler>& deterministic_samplers() {
  static const std::vector<Sampler> k = {
      {"DDIM", "DDIMScheduler", 1.5},
      {"Euler", "EulerDiscreteScheduler", 1.5},
      {"Heun", "HeunDiscreteScheduler", 3.0},
      {"DPM++2M", "DPMSolverMultistepScheduler", 3.0},
      {"UniPC", "UniPCMultistepScheduler", 3.0},
      {"PNDM", "PNDMScheduler", 0.0},
      {"LMS", "LMSDiscreteScheduler", 0.0},
  };
  return k;
}

TEST(GaussianMixture, DeterministicSamplersDrawTheMixture) {
  const Mixture m;
  const int n = 2000;
  Generator g(1234);
  const std::vector<float> z = g.randn({n, 2}).to_vector();
  // The mixture's mean and covariance.
  double mean[2] = {0, 0}, cov[3] = {0, 0, 0};  // xx, xy, yy
  for (int k = 0; k < 3; ++k) {
    mean[0] += m.w[k] * m.mu[k][0];
    mean[1] += m.w[k] * m.mu[k][1];
  }
  for (int k = 0; k < 3; ++k) {
    const double dx = m.mu[k][0] - mean[0], dy = m.mu[k][1] - mean[1], v = m.s[k] * m.s[k];
    cov[0] += m.w[k] * (v + dx * dx);
    cov[1] += m.w[k] * dx * dy;
    cov[2] += m.w[k] * (v + dy * dy);
  }
  for (const Sampler& smp : deterministic_samplers()) {
    SCOPED_TRACE(smp.name);
    auto sch = make_scheduler(SchedulerConfig::from_json(mixture_config(smp.cls)));
    const std::vector<double> x = sample_mixture(*sch, m, z, 50);
    double mu[2] = {0, 0}, c[3] = {0, 0, 0}, weight[3] = {0, 0, 0};
    for (int i = 0; i < n; ++i) {
      mu[0] += x[2 * i] / n;
      mu[1] += x[2 * i + 1] / n;
    }
    for (int i = 0; i < n; ++i) {
      const double dx = x[2 * i] - mu[0], dy = x[2 * i + 1] - mu[1];
      c[0] += dx * dx / n;
      c[1] += dx * dy / n;
      c[2] += dy * dy / n;
      const std::array<double, 3> r = m.resp(x[2 * i], x[2 * i + 1], 0.0);
      weight[std::max_element(r.begin(), r.end()) - r.begin()] += 1.0 / n;
    }
    std::printf(
        "%-8s mean (%+.3f, %+.3f) vs (%+.3f, %+.3f); cov (%.3f, %.3f, %.3f) vs (%.3f, "
        "%.3f, %.3f); weights (%.3f, %.3f, %.3f)\n",
        smp.name, mu[0], mu[1], mean[0], mean[1], c[0], c[1], c[2], cov[0], cov[1], cov[2],
        weight[0], weight[1], weight[2]);
    // Tolerances: about 3 standard errors for 2000 samples (mean: sqrt(var/n) ~ 0.04;
    // weights: sqrt(w(1-w)/n) ~ 0.011), plus a little for the 50-step discretisation.
    EXPECT_NEAR(mu[0], mean[0], 0.15);
    EXPECT_NEAR(mu[1], mean[1], 0.15);
    for (int j = 0; j < 3; ++j) EXPECT_NEAR(c[j], cov[j], 0.12 * std::max(1.0, std::abs(cov[j])));
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(weight[k], m.w[k], 0.04);
  }
}

TEST(GaussianMixture, ErrorShrinksAtEachSamplersOrder) {
  const Mixture m;
  const int n = 2000;
  Generator g(7);
  const std::vector<float> z = g.randn({n, 2}).to_vector();
  const std::vector<int> steps = {5, 10, 20, 40};  // divisors of T: DDIM and PNDM step by T / N
  std::printf("RMS distance to the exact probability-flow ODE solution, %d points\n", n);
  std::printf("%-8s", "steps");
  for (int s : steps) std::printf(" %10d", s);
  std::printf("   ratios per doubling\n");
  for (const Sampler& smp : deterministic_samplers()) {
    auto sch = make_scheduler(SchedulerConfig::from_json(mixture_config(smp.cls)));
    sch->set_timesteps(steps[0]);
    // Every sampler starts at t = 999 from z * init_noise_sigma in its own parametrisation:
    // VE (Euler-type, x = sigma_max z) or VP (x_vp = z, i.e. x_ve = sqrt(1 + sigma^2) z).
    const std::vector<float> train = sigmas_from_alphas_cumprod(sch->alphas_cumprod());
    const double sigma_start = interp_at(sch->timesteps()[0], train);
    const double scale = sch->init_noise_sigma() == 1.0 ? std::sqrt(1 + sigma_start * sigma_start)
                                                        : sch->init_noise_sigma();
    std::vector<double> start(z.begin(), z.end());
    for (double& v : start) v *= scale;
    const std::vector<double> ref = ode_reference(m, start, sigma_start);
    std::vector<double> err;
    for (int s : steps) {
      const std::vector<double> x = sample_mixture(*sch, m, z, s);
      double sq = 0;
      for (size_t i = 0; i < x.size(); ++i) sq += (x[i] - ref[i]) * (x[i] - ref[i]);
      err.push_back(std::sqrt(sq / n));
    }
    std::printf("%-8s", smp.name);
    for (double e : err) std::printf(" %10.3g", e);
    std::printf("  ");
    for (size_t i = 1; i < err.size(); ++i) std::printf(" %5.2f", err[i - 1] / err[i]);
    std::printf("\n");
    if (smp.min_ratio > 0) {
      // Over the last two doublings (geometric mean), nearest the asymptotic regime: first
      // order halves the error per doubling, second order quarters it. The loose bounds leave
      // room for the pre-asymptotic steps (5 steps span sigma 157 -> 0).
      const double ratio = std::sqrt(err[err.size() - 3] / err.back());
      EXPECT_GT(ratio, smp.min_ratio) << smp.name;
    }
  }
}

TEST(SchedulerConformance, EverySharedCasePasses) {
  const std::string root = ::stipple::testing::shared_path("conformance/schedulers");
  if (root.empty()) GTEST_SKIP() << "../shared is absent: no diffusers scheduler trajectories";
  const std::vector<conformance::CaseRef> cases = conformance::find_cases(root);
  EXPECT_EQ(cases.size(), 22u);
  for (const conformance::CaseRef& c : cases) {
    for (const conformance::CaseResult& r : conformance::run_case(c)) {
      std::printf("%-28s max rel error %.3g %s\n", r.name.c_str(), r.max_error,
                  r.passed ? "PASS" : "FAIL");
      EXPECT_TRUE(r.passed) << r.name << ": " << r.detail;
    }
  }
}

}  // namespace
}  // namespace stipple::schedulers

// The shared denoise loop: it reaches the data distribution with an exact model, batches
// classifier-free guidance in the stated order with one model call per step, starts part-way for
// img2img, and lets a pipeline replace latents after each step.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "schedulers/schedule.h"
#include "schedulers/scheduler.h"
#include "support/numerics.h"

namespace stipple {
namespace {

schedulers::SchedulerConfig sd_config(const std::string& cls) {
  schedulers::SchedulerConfig c = schedulers::SchedulerConfig::defaults_for(cls);
  c.beta_schedule = "scaled_linear";
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.clip_sample = false;  // as SD's scheduler_config.json
  c.set_alpha_to_one = false;
  c.steps_offset = 1;
  return c;
}

// Exact eps for data x0 ~ N(mu, s^2) per element: x_t ~ N(a mu, a^2 s^2 + sigma^2).
Tensor exact_eps(const Tensor& x, double t, const std::vector<float>& acp, float mu, float s) {
  const double a = std::sqrt(acp[static_cast<size_t>(std::llround(t))]);
  const double sig = std::sqrt(1 - acp[static_cast<size_t>(std::llround(t))]);
  const double v = a * a * s * s + sig * sig;
  return ops::affine(x, static_cast<float>(sig / v), static_cast<float>(-sig * a * mu / v));
}

pipelines::DenoiseOptions guided_options(float scale, guidance::CfgOrder order) {
  pipelines::DenoiseOptions o;
  o.cfg = {scale, 0.0f, order};
  return o;
}

TEST(Denoise, ReachesTheDataDistributionWithAnExactModel) {
  auto sched = schedulers::make_scheduler(sd_config("DDIMScheduler"));
  sched->set_timesteps(50);
  Generator gen(0);
  const float mu = 0.7f, s = 0.3f;
  Tensor x = gen.randn({4000, 1, 1, 1});
  const std::vector<float> acp = sched->alphas_cumprod();
  Tensor out = pipelines::denoise(*sched, x, [&](const Tensor& in, double t) {
    return exact_eps(in, t, acp, mu, s);
  });
  const std::vector<float> v = out.to_vector();
  double m = 0, q = 0;
  for (float f : v) m += f;
  m /= v.size();
  for (float f : v) q += (f - m) * (f - m);
  const double sd = std::sqrt(q / (v.size() - 1));
  // 4000 samples: the mean's standard error is ~0.005; DDIM at 50 steps is nearly exact
  EXPECT_NEAR(m, mu, 0.03);
  EXPECT_NEAR(sd, s, 0.03);
}

TEST(Denoise, GuidanceBatchesOnceAndMatchesTheGuidedModel) {
  const float scale = 5.0f;
  for (auto order : {guidance::CfgOrder::kUncondFirst, guidance::CfgOrder::kCondFirst}) {
    auto s1 = schedulers::make_scheduler(sd_config("EulerDiscreteScheduler"));
    auto s2 = schedulers::make_scheduler(sd_config("EulerDiscreteScheduler"));
    s1->set_timesteps(8);
    s2->set_timesteps(8);
    Generator gen(1);
    const Tensor x = ops::affine(gen.randn({2, 3, 2, 2}), static_cast<float>(s1->init_noise_sigma()), 0);
    // conditional and unconditional "models": different linear maps of the input
    auto cond = [](const Tensor& in) { return ops::affine(in, 0.5f, 0.1f); };
    auto uncond = [](const Tensor& in) { return ops::affine(in, 0.3f, -0.2f); };
    int calls = 0;
    Tensor guided_loop = pipelines::denoise(
        *s1, x,
        [&](const Tensor& in, double) {
          ++calls;
          EXPECT_EQ(in.size(0), 4);  // [2B]: both halves in one call
          const auto h = ops::chunk(in, 2, 0);
          return order == guidance::CfgOrder::kUncondFirst
                     ? ops::concat({uncond(h[0]), cond(h[1])}, 0)
                     : ops::concat({cond(h[0]), uncond(h[1])}, 0);
        },
        guided_options(scale, order));
    EXPECT_EQ(calls, 8);
    Tensor direct = pipelines::denoise(*s2, x, [&](const Tensor& in, double) {
      return guidance::classifier_free(uncond(in), cond(in), scale);
    });
    EXPECT_TRUE(testing::tensors_close(guided_loop, direct, 1e-5, 1e-5));
  }
}

// A guidance interval: the steps whose sigma_t = sqrt((1 - acp) / acp) lies in [lo, hi] are
// guided (one call of 2B rows), the others take the conditional model alone (one call of B rows);
// the result is that of a model that guides inside the interval only.
TEST(Denoise, GuidanceIntervalGuidesOnlyThoseNoiseLevels) {
  const float scale = 4.0f, lo = 0.5f, hi = 3.0f;
  for (auto order : {guidance::CfgOrder::kUncondFirst, guidance::CfgOrder::kCondFirst}) {
    auto s1 = schedulers::make_scheduler(sd_config("EulerDiscreteScheduler"));
    auto s2 = schedulers::make_scheduler(sd_config("EulerDiscreteScheduler"));
    s1->set_timesteps(12);
    s2->set_timesteps(12);
    const std::vector<float> acp = s1->alphas_cumprod();
    auto sigma_at = [&](double t) {
      const double a = schedulers::interp_at(t, acp);
      return std::sqrt((1 - a) / a);
    };
    Generator gen(2);
    const Tensor x =
        ops::affine(gen.randn({2, 1, 2, 2}), static_cast<float>(s1->init_noise_sigma()), 0);
    auto cond = [](const Tensor& in) { return ops::affine(in, 0.5f, 0.1f); };
    auto uncond = [](const Tensor& in) { return ops::affine(in, 0.3f, -0.2f); };
    int guided_calls = 0, single_calls = 0;
    pipelines::DenoiseOptions o = guided_options(scale, order);
    o.cfg.interval = {lo, hi};
    Tensor limited = pipelines::denoise(
        *s1, x,
        [&](const Tensor& in, double t) {
          const bool inside = sigma_at(t) >= lo && sigma_at(t) <= hi;
          if (in.size(0) == 2) {
            ++single_calls;
            EXPECT_FALSE(inside) << "t " << t;
            return cond(in);
          }
          ++guided_calls;
          EXPECT_TRUE(inside) << "t " << t;
          const auto h = ops::chunk(in, 2, 0);
          return order == guidance::CfgOrder::kUncondFirst
                     ? ops::concat({uncond(h[0]), cond(h[1])}, 0)
                     : ops::concat({cond(h[0]), uncond(h[1])}, 0);
        },
        o);
    EXPECT_GT(guided_calls, 0);
    EXPECT_GT(single_calls, 0);
    EXPECT_EQ(guided_calls + single_calls, 12);
    Tensor direct = pipelines::denoise(*s2, x, [&](const Tensor& in, double t) {
      const bool inside = sigma_at(t) >= lo && sigma_at(t) <= hi;
      return inside ? guidance::classifier_free(uncond(in), cond(in), scale) : cond(in);
    });
    EXPECT_TRUE(testing::tensors_close(limited, direct, 1e-5, 1e-5));
  }
  EXPECT_THROW(pipelines::check_guidance_interval({2.0f, 1.0f}), Error);
  EXPECT_THROW(pipelines::check_guidance_interval({-1.0f, 1.0f}), Error);
  EXPECT_THROW(pipelines::check_guidance_interval({std::nanf(""), 1.0f}), Error);
  EXPECT_NO_THROW(pipelines::check_guidance_interval({}));
}

TEST(Denoise, BeginIndexAfterStepAndProgress) {
  auto sched = schedulers::make_scheduler(sd_config("DDIMScheduler"));
  sched->set_timesteps(10);
  std::vector<int> seen_steps;
  int last_done = 0, last_total = 0;
  pipelines::DenoiseOptions opt;
  opt.begin_index = 4;
  opt.after_step = [&](int i, double, const Tensor& lat) {
    seen_steps.push_back(i);
    return ops::affine(lat, 0.0f, 1.0f);  // replace everything by ones
  };
  opt.progress = [&](int done, int total) {
    last_done = done;
    last_total = total;
  };
  Tensor out = pipelines::denoise(
      *sched, Tensor::zeros({1, 1, 2, 2}),
      [](const Tensor& in, double) { return ops::affine(in, 0.0f, 0.0f); }, opt);
  EXPECT_EQ(seen_steps, (std::vector<int>{4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(last_done, 6);
  EXPECT_EQ(last_total, 6);
  for (float v : out.to_vector()) EXPECT_EQ(v, 1.0f);
  opt.begin_index = 10;
  EXPECT_THROW(pipelines::denoise(*sched, Tensor::zeros({1, 1, 2, 2}),
                                  [](const Tensor& in, double) { return in; }, opt),
               Error);
  // a model returning the wrong shape is named
  EXPECT_THROW(pipelines::denoise(*sched, Tensor::zeros({1, 1, 2, 2}),
                                  [](const Tensor&, double) { return Tensor::zeros({1}); }),
               Error);
}

// Classifier guidance with exact quantities: data from the mixture 0.5 N(-1, s^2) + 0.5 N(+1, s^2),
// the exact (unconditional) eps, and the exact classifier p(y = + | x_t) of the noised mixture.
// At scale 1, eps - sqrt(1 - acp) grad log p(+ | x_t) is the conditional model's eps (Dhariwal &
// Nichol 2021, eq. 14), so the samples come from the + component alone; without guidance, half.
struct Mixture {
  std::vector<float> acp;
  float s = 0.1f;
  double a(double t) const { return std::sqrt(acp[static_cast<size_t>(std::llround(t))]); }
  double v(double t) const { return a(t) * a(t) * s * s + 1 - a(t) * a(t); }
  // log N(x; a m, v) up to a constant, per element: [B, 1, 1, 1].
  Tensor log_density(const Tensor& x, double t, float m) const {
    const Tensor d = ops::affine(x, 1.0f, static_cast<float>(-a(t) * m));
    return ops::affine(ops::mul(d, d), static_cast<float>(-0.5 / v(t)), 0.0f);
  }
  // log p(y = + | x_t): [B], differentiable.
  Tensor log_p_plus(const Tensor& x, double t) const {
    const int64_t b = x.size(0);
    const Tensor both = ops::concat({log_density(x, t, -1.0f), log_density(x, t, 1.0f)}, 1);
    return ops::log_softmax(both.reshape({b, 2}), -1).narrow(1, 1, 1).reshape({b});
  }
  // eps of the mixture: sigma * sum_k w_k (x - a m_k) / v.
  Tensor eps(const Tensor& x, double t) const {
    autograd::NoGradGuard no_grad;
    const Tensor w_plus = ops::exp(log_p_plus(x, t)).reshape(x.shape());  // [B, 1, 1, 1]
    const double sig = std::sqrt(1 - a(t) * a(t));
    // sum_k w_k (x - a m_k) = x - a (w_+ - w_-) = x - a (2 w_+ - 1)
    const Tensor mean = ops::affine(w_plus, static_cast<float>(2 * a(t)), static_cast<float>(-a(t)));
    return ops::affine(ops::sub(x, mean), static_cast<float>(sig / v(t)), 0.0f);
  }
};

double fraction_positive(const Tensor& x) {
  const std::vector<float> v = x.to_vector();
  double n = 0;
  for (float f : v) n += f > 0;
  return n / static_cast<double>(v.size());
}

TEST(Denoise, ClassifierGuidanceWithAnExactClassifierSamplesTheClass) {
  auto sched = schedulers::make_scheduler(sd_config("DDIMScheduler"));
  Mixture mix;
  mix.acp = sched->alphas_cumprod();
  Generator gen(1);
  const Tensor x_T = gen.randn({2000, 1, 1, 1});
  auto model = [&](const Tensor& in, double t) { return mix.eps(in, t); };
  sched->set_timesteps(50);
  const Tensor plain = pipelines::denoise(*sched, x_T, model);
  EXPECT_NEAR(fraction_positive(plain), 0.5, 0.05);
  sched->set_timesteps(50);
  pipelines::DenoiseOptions o;
  o.classifier.scale = 1.0f;
  o.classifier.log_prob = [&](const Tensor& x, double t) { return mix.log_p_plus(x, t); };
  const Tensor guided = pipelines::denoise(*sched, x_T, model, o);
  EXPECT_GT(fraction_positive(guided), 0.99);
  const std::vector<float> v = guided.to_vector();
  double m = 0;
  for (float f : v) m += f;
  EXPECT_NEAR(m / v.size(), 1.0, 0.05);
}

// Every sampler takes the guidance at its model input (x_t in the DDPM scale: Euler's latents
// divided by sqrt(sigma^2 + 1)), after classifier-free guidance, with sqrt(1 - acp) interpolated
// at fractional (Karras) timesteps: the loop equals a model that moves its own eps that way.
TEST(Denoise, ClassifierGuidanceIsAppliedAtTheModelInputForEverySampler) {
  for (const char* cls : {"DDIMScheduler", "EulerDiscreteScheduler"}) {
    SCOPED_TRACE(cls);
    schedulers::SchedulerConfig c = sd_config(cls);
    if (std::string(cls) == "EulerDiscreteScheduler") c.use_karras_sigmas = true;
    Generator gen(2);
    const Tensor x_T = gen.randn({3, 1, 2, 2});
    const float scale = 0.7f;
    auto model = [](const Tensor& in, double t) {  // any eps: here 0.3 x + t / 1000
      return ops::affine(in, 0.3f, static_cast<float>(t / 1000.0));
    };
    // log p = -0.5 |x|^2: its gradient is -x.
    auto log_prob = [](const Tensor& x, double) {
      return ops::affine(ops::sum(ops::mul(x, x), {1, 2, 3}), -0.5f, 0.0f);
    };
    auto a = schedulers::make_scheduler(c);
    a->set_timesteps(8);
    const Tensor init = x_T * static_cast<float>(a->init_noise_sigma());
    pipelines::DenoiseOptions o;
    o.classifier.scale = scale;
    o.classifier.log_prob = log_prob;
    const Tensor got = pipelines::denoise(*a, init, model, o);
    auto b = schedulers::make_scheduler(c);
    b->set_timesteps(8);
    const std::vector<float> acp = b->alphas_cumprod();
    const Tensor want = pipelines::denoise(*b, init, [&](const Tensor& in, double t) {
      const size_t lo = static_cast<size_t>(t);
      const double ac = acp[lo] + (t - lo) * (acp[std::min(lo + 1, acp.size() - 1)] - acp[lo]);
      // eps - s sqrt(1 - acp) * (-in)
      return ops::add(model(in, t), ops::affine(in, static_cast<float>(scale * std::sqrt(1 - ac)), 0.0f));
    });
    EXPECT_TRUE(testing::close_relative(got, want, 1e-5));
  }
}

TEST(Denoise, ClassifierGuidanceRefusesAModelThatDoesNotPredictNoise) {
  schedulers::SchedulerConfig c = sd_config("DDIMScheduler");
  c.prediction_type = schedulers::PredictionType::kVPrediction;
  auto sched = schedulers::make_scheduler(c);
  sched->set_timesteps(2);
  pipelines::DenoiseOptions o;
  o.classifier.scale = 1.0f;
  o.classifier.log_prob = [](const Tensor& x, double) { return ops::sum(x, {1, 2, 3}); };
  const std::string msg = testing::error_message([&] {
    pipelines::denoise(*sched, Tensor::zeros({1, 1, 2, 2}),
                       [](const Tensor& in, double) { return in; }, o);
  });
  EXPECT_NE(msg.find("classifier guidance needs a model that predicts the noise"),
            std::string::npos) << msg;
}

}  // namespace
}  // namespace stipple

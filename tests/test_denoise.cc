// The shared denoise loop: it reaches the data distribution with an exact model, batches
// classifier-free guidance in the stated order with one model call per step, starts part-way for
// img2img, and lets a pipeline replace latents after each step.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/ops.h"
#include "pipelines/denoise.h"
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

}  // namespace
}  // namespace stipple

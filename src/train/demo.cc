#include "train/demo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "train/optim.h"

namespace stipple::train {
namespace {

constexpr int kSize = 16;
constexpr int kPixels = kSize * kSize;
constexpr int kTimeDim = 64;

// x_t [B, 256], t [B] (float timesteps) -> predicted x0 [B, 256]. An MLP with two residual
// blocks; a sinusoidal embedding of t (as in the DDPM and Transformer papers) is projected and
// added at the input and in each block.
struct MlpDenoiser {
  // w_in, b_in, w_t, b_t, then per block (w_tb, w1, b1, w2, b2), then w_out, b_out
  std::vector<Tensor> params;
  static constexpr int kBlocks = 2;

  MlpDenoiser(int hidden, Generator& gen) {
    auto uniform = [&](const Shape& s, int fan_in, float gain = 1.0f) {
      const float bound = gain / std::sqrt(static_cast<float>(fan_in));
      Tensor t = ops::affine(gen.rand(s), 2 * bound, -bound);
      t.set_requires_grad(true);
      return t;
    };
    params = {uniform({hidden, kPixels}, kPixels), uniform({hidden}, kPixels),
              uniform({hidden, kTimeDim}, kTimeDim), uniform({hidden}, kTimeDim)};
    for (int b = 0; b < kBlocks; ++b) {
      params.push_back(uniform({hidden, hidden}, hidden));
      params.push_back(uniform({hidden, hidden}, hidden));
      params.push_back(uniform({hidden}, hidden));
      params.push_back(uniform({hidden, hidden}, hidden, 0.1f));  // blocks start near identity
      params.push_back(uniform({hidden}, hidden, 0.1f));
    }
    params.push_back(uniform({kPixels, hidden}, hidden));
    params.push_back(uniform({kPixels}, hidden));
  }

  static Tensor time_embedding(const std::vector<float>& t) {
    const int half = kTimeDim / 2;
    std::vector<float> e(t.size() * kTimeDim);
    for (size_t b = 0; b < t.size(); ++b)
      for (int i = 0; i < half; ++i) {
        const double f = std::exp(-std::log(10000.0) * i / half);
        e[b * kTimeDim + i] = static_cast<float>(std::cos(t[b] * f));
        e[b * kTimeDim + half + i] = static_cast<float>(std::sin(t[b] * f));
      }
    return Tensor::from_vector(e, {static_cast<int64_t>(t.size()), kTimeDim});
  }

  Tensor forward(const Tensor& x, const std::vector<float>& t) const {
    const Tensor temb = ops::silu(ops::linear(time_embedding(t), params[2], params[3]));  // [B, H]
    Tensor h = ops::linear(x, params[0], params[1]) + temb;                               // [B, H]
    for (int b = 0; b < kBlocks; ++b) {
      const Tensor* p = &params[4 + 5 * b];
      Tensor r = ops::silu(h + ops::linear(temb, p[0]));  // [B, H]
      r = ops::silu(ops::linear(r, p[1], p[2]));          // [B, H]
      h = h + ops::linear(r, p[3], p[4]);                 // [B, H]
    }
    const size_t n = params.size();
    return ops::linear(ops::silu(h), params[n - 2], params[n - 1]);  // x0_hat [B, 256]
  }
};

}  // namespace

Tensor draw_shapes(int n, uint64_t seed) {
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Tensor out = Tensor::full({n, 1, kSize, kSize}, -1.0);
  float* p = out.data<float>();
  for (int i = 0; i < n; ++i) {
    const int kind = static_cast<int>(u(gen) * 3) % 3;  // 0 disc, 1 square, 2 ring
    const float r = 2.5f + u(gen) * 3.0f;
    const float cx = r + u(gen) * (kSize - 2 * r), cy = r + u(gen) * (kSize - 2 * r);
    for (int y = 0; y < kSize; ++y)
      for (int x = 0; x < kSize; ++x) {
        const float dx = x + 0.5f - cx, dy = y + 0.5f - cy;
        const float d = std::sqrt(dx * dx + dy * dy);
        bool on = false;
        if (kind == 0) on = d <= r;
        if (kind == 1) on = std::fabs(dx) <= r * 0.85f && std::fabs(dy) <= r * 0.85f;
        if (kind == 2) on = d <= r && d >= r - 1.5f;
        if (on) p[(i * kSize + y) * kSize + x] = 1.0f;
      }
  }
  return out;
}

DemoResult run_demo(const DemoOptions& o, const DemoProgress& progress) {
  STIPPLE_CHECK(o.train_steps >= 0 && o.batch_size > 0 && o.num_images > 0 &&
                    o.diffusion_steps >= 2 && o.hidden > 0,
                "demo: steps, batch size, image count and width must be positive");
  Generator gen(o.seed);
  // Linear beta schedule (DDPM section 4), its ends scaled by 1000 / T so that any T ends near
  // pure noise (as improved DDPM does): alpha_bar_t = prod_{s<=t} (1 - beta_s).
  const int T = o.diffusion_steps;
  const double scale = 1000.0 / T;
  std::vector<double> beta(T), alpha_bar(T);
  double prod = 1.0;
  for (int t = 0; t < T; ++t) {
    beta[t] = std::min(0.999, scale * (1e-4 + (0.02 - 1e-4) * t / (T - 1)));
    prod *= 1.0 - beta[t];
    alpha_bar[t] = prod;
  }
  MlpDenoiser model(o.hidden, gen);
  AdamW opt(model.params, AdamWConfig{o.lr, 0.9f, 0.999f, 1e-8f, 0.0f});
  DemoResult result;

  // 1. Train: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (DDPM eq. 4); the model predicts x0 and
  //    the loss is |x0_hat - x0|^2 (the x0 objective; sharper than eps for these binary images).
  auto t0 = std::chrono::steady_clock::now();
  std::mt19937 pick(static_cast<uint32_t>(o.seed + 1));
  double loss_sum = 0;
  int loss_count = 0;
  for (int step = 0; step < o.train_steps; ++step) {
    const int B = o.batch_size;
    const Tensor x0 = draw_shapes(B, o.seed * 1000003 + step + 7).reshape({B, kPixels});
    const Tensor eps = gen.randn({B, kPixels});
    std::vector<float> tf(B), a(B), s(B);
    for (int b = 0; b < B; ++b) {
      const int t = static_cast<int>(pick() % T);
      tf[b] = static_cast<float>(t);
      a[b] = static_cast<float>(std::sqrt(alpha_bar[t]));
      s[b] = static_cast<float>(std::sqrt(1.0 - alpha_bar[t]));
    }
    const Tensor xt = x0 * Tensor::from_vector(a, {B, 1}) + eps * Tensor::from_vector(s, {B, 1});
    Tensor loss = ops::mse_loss(model.forward(xt, tf), x0);
    opt.zero_grad();
    loss.backward();
    clip_grad_norm(model.params, 1.0f);
    opt.step();
    const float l = loss.item();
    if (step >= o.train_steps - 100) {
      loss_sum += l;
      ++loss_count;
    }
    if (progress) progress("train", step + 1, o.train_steps, l);
  }
  result.final_loss = loss_count ? static_cast<float>(loss_sum / loss_count) : 0.0f;
  auto t1 = std::chrono::steady_clock::now();
  result.train_seconds = std::chrono::duration<double>(t1 - t0).count();

  // 2. Sample: ancestral DDPM steps from x_T ~ N(0, I): predict x0 (clipped to [-1, 1]), then
  //    draw from the posterior q(x_{t-1} | x_t, x0) (DDPM eqs. 6-7).
  autograd::NoGradGuard no_grad;
  const int N = o.num_images;
  Tensor x = gen.randn({N, kPixels});
  for (int t = T - 1; t >= 0; --t) {
    const double ab = alpha_bar[t], ab_prev = t > 0 ? alpha_bar[t - 1] : 1.0;
    const Tensor x0 =
        ops::clamp(model.forward(x, std::vector<float>(N, static_cast<float>(t))), -1.0f, 1.0f);
    const double c0 = std::sqrt(ab_prev) * beta[t] / (1 - ab);
    const double ct = std::sqrt(1 - beta[t]) * (1 - ab_prev) / (1 - ab);
    x = x0 * static_cast<float>(c0) + x * static_cast<float>(ct);
    if (t > 0) {
      const double var = beta[t] * (1 - ab_prev) / (1 - ab);
      x = x + gen.randn({N, kPixels}) * static_cast<float>(std::sqrt(var));
    }
    if (progress) progress("sample", T - t, T, 0.0f);
  }
  result.images = ops::clamp(x, -1.0f, 1.0f).reshape({N, 1, kSize, kSize});
  result.real_images = draw_shapes(N, o.seed + 99);
  result.sample_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  return result;
}

}  // namespace stipple::train

// Fast optimiser kernel: AdamW with Highway SIMD (run-time dispatch over the host's vector ISA)
// and OpenMP over chunks. Same formula and order as the reference in ref_optim.cc; the only
// differences are fused multiply-adds where the target has them (a few ulp).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backends/cpu/fast_optim.cc"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>

#include <algorithm>
#include <cmath>

#include "backends/cpu/fill.h"

// Included once per target by foreach_target.h; the scalars are shared by every target.
#ifndef STIPPLE_BACKENDS_CPU_FAST_OPTIM_SCALARS
#define STIPPLE_BACKENDS_CPU_FAST_OPTIM_SCALARS
namespace stipple::cpu {
struct AdamWScalars {
  float b1, b2, eps, decay, step_size, bc2_sqrt;
};
}  // namespace stipple::cpu
#endif

HWY_BEFORE_NAMESPACE();
namespace stipple::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void AdamWChunk(float* HWY_RESTRICT p, const float* HWY_RESTRICT g, float* HWY_RESTRICT m,
                float* HWY_RESTRICT v, int64_t n, const AdamWScalars& s) {
  const hn::ScalableTag<float> d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  const auto b1 = hn::Set(d, s.b1), one_b1 = hn::Set(d, 1.0f - s.b1);
  const auto b2 = hn::Set(d, s.b2), one_b2 = hn::Set(d, 1.0f - s.b2);
  const auto eps = hn::Set(d, s.eps), decay = hn::Set(d, s.decay);
  const auto step_size = hn::Set(d, s.step_size), bc2_sqrt = hn::Set(d, s.bc2_sqrt);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const auto gi = hn::LoadU(d, g + i);
    const auto mi = hn::MulAdd(b1, hn::LoadU(d, m + i), hn::Mul(one_b1, gi));
    const auto vi = hn::MulAdd(b2, hn::LoadU(d, v + i), hn::Mul(hn::Mul(one_b2, gi), gi));
    hn::StoreU(mi, d, m + i);
    hn::StoreU(vi, d, v + i);
    const auto denom = hn::Add(hn::Div(hn::Sqrt(vi), bc2_sqrt), eps);
    const auto pi = hn::LoadU(d, p + i);
    hn::StoreU(hn::NegMulAdd(step_size, hn::Div(mi, denom), hn::Mul(pi, decay)), d, p + i);
  }
  for (; i < n; ++i) {
    const float gi = g[i];
    m[i] = s.b1 * m[i] + (1.0f - s.b1) * gi;
    v[i] = s.b2 * v[i] + (1.0f - s.b2) * gi * gi;
    const float denom = std::sqrt(v[i]) / s.bc2_sqrt + s.eps;
    p[i] = p[i] * s.decay - s.step_size * (m[i] / denom);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace stipple::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace stipple::cpu {

HWY_EXPORT(AdamWChunk);

namespace {

constexpr int64_t kChunk = 1 << 14;

void fast_adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                     const AdamWParams& hp) {
  const int64_t n = param.numel();
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* pm = m.data<float>();
  float* pv = v.data<float>();
  const double t = static_cast<double>(hp.step);
  AdamWScalars s;
  s.b1 = hp.beta1;
  s.b2 = hp.beta2;
  s.eps = hp.eps;
  s.decay = static_cast<float>(1.0 - static_cast<double>(hp.lr) * hp.weight_decay);
  s.step_size = static_cast<float>(hp.lr / (1.0 - std::pow(double{hp.beta1}, t)));
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{hp.beta2}, t)));
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t len = std::min(kChunk, n - begin);
    HWY_DYNAMIC_DISPATCH(AdamWChunk)(p + begin, g + begin, pm + begin, pv + begin, len, s);
  }
}

}  // namespace

void fill_fast_optim(KernelTable& t) { t.adamw_step = fast_adamw_step; }

}  // namespace stipple::cpu
#endif

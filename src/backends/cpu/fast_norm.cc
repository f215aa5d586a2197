// Fast normalisation kernels: group norm (plain [N, C, S] and channel-blocked nChw8c/nChw16c,
// which oneDNN 2.6 lacks and SD's UNet needs between blocked convs), layer norm and softmax,
// forward and backward. Highway SIMD with run-time dispatch (one binary: SSE4, AVX2, AVX-512),
// OpenMP over rows or (n, group) / (n, channel block). Statistics are two-pass (mean, then the
// mean of squared deviations) with f32 vector lanes folded into double per row or block.
// Leaves out half precision and blocked backward (training runs on plain tensors).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backends/cpu/fast_norm.cc"
// foreach_target.h must come first, then highway.h, then the contrib headers.
// clang-format off
#include <hwy/foreach_target.h>  // NOLINT: re-includes this file once per SIMD target
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>
// clang-format on

#ifndef STIPPLE_FAST_NORM_SHARED_
#define STIPPLE_FAST_NORM_SHARED_
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/fill.h"

namespace stipple::cpu::norm {

// Optional affine parameters as raw pointers (null when undefined).
inline const float* ptr_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }

}  // namespace stipple::cpu::norm
#endif  // STIPPLE_FAST_NORM_SHARED_

HWY_BEFORE_NAMESPACE();
namespace stipple::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- row primitives ----

double sum_row(const float* x, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * nl <= n; i += 2 * nl) {
    a0 = hn::Add(a0, hn::LoadU(d, x + i));
    a1 = hn::Add(a1, hn::LoadU(d, x + i + nl));
  }
  for (; i + nl <= n; i += nl) a0 = hn::Add(a0, hn::LoadU(d, x + i));
  double s = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1)));
  for (; i < n; ++i) s += x[i];
  return s;
}

// Sum of (x - mu)^2.
double sq_dev_row(const float* x, int64_t n, float mu) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const auto vm = hn::Set(d, mu);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d);
  int64_t i = 0;
  for (; i + 2 * nl <= n; i += 2 * nl) {
    const auto d0 = hn::Sub(hn::LoadU(d, x + i), vm);
    const auto d1 = hn::Sub(hn::LoadU(d, x + i + nl), vm);
    a0 = hn::MulAdd(d0, d0, a0);
    a1 = hn::MulAdd(d1, d1, a1);
  }
  for (; i + nl <= n; i += nl) {
    const auto d0 = hn::Sub(hn::LoadU(d, x + i), vm);
    a0 = hn::MulAdd(d0, d0, a0);
  }
  double s = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1)));
  for (; i < n; ++i) s += double(x[i] - mu) * (x[i] - mu);
  return s;
}

// Mean and 1/sqrt(var + eps) of x[0, n), two-pass; sums folded in chunks so f32 lanes stay short.
void mean_rstd(const float* x, int64_t n, float eps, float* mean, float* rstd) {
  constexpr int64_t kChunk = 4096;
  double s = 0;
  for (int64_t i = 0; i < n; i += kChunk) s += sum_row(x + i, std::min(kChunk, n - i));
  const double mu = n > 0 ? s / n : 0.0;
  double q = 0;
  for (int64_t i = 0; i < n; i += kChunk) {
    q += sq_dev_row(x + i, std::min(kChunk, n - i), static_cast<float>(mu));
  }
  *mean = static_cast<float>(mu);
  *rstd = static_cast<float>(1.0 / std::sqrt((n > 0 ? q / n : 0.0) + eps));
}

// y = (x - mu) * a + b. Centring first keeps tiny groups exact (x * a - mu * a would cancel).
void affine_row(const float* x, float* y, int64_t n, float mu, float a, float b) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const auto vm = hn::Set(d, mu), va = hn::Set(d, a), vb = hn::Set(d, b);
  int64_t i = 0;
  for (; i + nl <= n; i += nl) {
    hn::StoreU(hn::MulAdd(hn::Sub(hn::LoadU(d, x + i), vm), va, vb), d, y + i);
  }
  for (; i < n; ++i) y[i] = (x[i] - mu) * a + b;
}

// ---- group norm, plain [N, C, S] ----

void group_norm_plain(const float* x, int64_t nb, int64_t c, int64_t s, int64_t groups,
                      const float* w, const float* b, float eps, float* y, float* mean,
                      float* rstd) {
  const int64_t cpg = c / groups;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nb * groups; ++t) {
    const int64_t n = t / groups, g = t % groups;
    const float* xg = x + (n * c + g * cpg) * s;
    float mu, rs;
    mean_rstd(xg, cpg * s, eps, &mu, &rs);
    mean[t] = mu;
    rstd[t] = rs;
    for (int64_t ci = 0; ci < cpg; ++ci) {
      const int64_t ch = g * cpg + ci;
      const float a = rs * (w ? w[ch] : 1.0f);
      affine_row(xg + ci * s, y + (n * c + ch) * s, s, mu, a, b ? b[ch] : 0.0f);
    }
  }
}

// ---- group norm, blocked [N][C/bk][H*W][bk] ----
// A channel block's data is hw * bk floats; lane e of it is channel e % bk. Vectors walk it in
// periods of P = max(V, bk) floats (V = lanes), so a vector's k-th slot in the period always
// holds the same channels: per-channel sums and per-channel scale/shift become P-float patterns.

// One pass over a channel block: per channel, s = sum(x - k) and q = sum((x - k)^2) with the
// pivot k = the channel's first value (shifting by a sample of the channel keeps the one-pass
// variance free of cancellation).
void block_channel_sums(const float* xb, int64_t hw, int64_t bk, double* pivot, double* s_out,
                        double* q_out) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const int64_t period = std::max<int64_t>(nl, bk), nvec = period / nl;
  const int64_t total = hw * bk, full = total / period * period;
  HWY_ALIGN float pattern[64];  // pivot per slot of the period (period <= 64)
  for (int64_t e = 0; e < bk; ++e) pivot[e] = xb[e];
  for (int64_t e = 0; e < period; ++e) pattern[e] = xb[e % bk];
  std::fill(s_out, s_out + bk, 0.0);
  std::fill(q_out, q_out + bk, 0.0);
  constexpr int64_t kChunkPeriods = 256;  // fold f32 lanes into double every so often
  HWY_ALIGN float ls[64], lq[64];
  for (int64_t start = 0; start < full; start += kChunkPeriods * period) {
    const int64_t end = std::min(full, start + kChunkPeriods * period);
    for (int64_t k = 0; k < nvec; ++k) {
      const auto vc = hn::Load(d, pattern + k * nl);
      auto as = hn::Zero(d), aq = hn::Zero(d);
      for (int64_t i = start + k * nl; i < end; i += period) {
        const auto dv = hn::Sub(hn::LoadU(d, xb + i), vc);
        as = hn::Add(as, dv);
        aq = hn::MulAdd(dv, dv, aq);
      }
      hn::Store(as, d, ls + k * nl);
      hn::Store(aq, d, lq + k * nl);
    }
    for (int64_t e = 0; e < period; ++e) s_out[e % bk] += ls[e], q_out[e % bk] += lq[e];
  }
  for (int64_t i = full; i < total; ++i) {
    const double dv = xb[i] - pivot[i % bk];
    s_out[i % bk] += dv;
    q_out[i % bk] += dv * dv;
  }
}

// Two passes over memory: per-channel shifted sums (parallel over channel blocks), then the
// normalisation. Group statistics combine the channels exactly: with m = group mean,
//   sum (x - m)^2 = sum_c [q_c + 2 (k_c - m) s_c + hw (k_c - m)^2].
void group_norm_blocked(const float* x, int64_t nb, int64_t c, int64_t hw, int64_t bk,
                        int64_t groups, const float* w, const float* b, float eps, float* y,
                        float* mean, float* rstd) {
  const int64_t cpg = c / groups, nblk = c / bk;
  std::vector<double> pivot(nb * c), ch_s(nb * c), ch_q(nb * c);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nb * nblk; ++t) {
    block_channel_sums(x + t * hw * bk, hw, bk, pivot.data() + t * bk, ch_s.data() + t * bk,
                       ch_q.data() + t * bk);
  }
  std::vector<float> ch_mean(nb * c), scale(nb * c), shift(nb * c);  // y = (x - m) a + b
  for (int64_t n = 0; n < nb; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = n * c + g * cpg;
      const double len = static_cast<double>(cpg * hw);
      double s = 0;
      for (int64_t ci = 0; ci < cpg; ++ci) s += ch_s[c0 + ci] + hw * pivot[c0 + ci];
      const double m = s / len;
      double q = 0;
      for (int64_t ci = 0; ci < cpg; ++ci) {
        const double dk = pivot[c0 + ci] - m;
        q += ch_q[c0 + ci] + 2.0 * dk * ch_s[c0 + ci] + hw * dk * dk;
      }
      const float rs = static_cast<float>(1.0 / std::sqrt(std::max(0.0, q / len) + eps));
      mean[n * groups + g] = static_cast<float>(m);
      rstd[n * groups + g] = rs;
      for (int64_t ci = 0; ci < cpg; ++ci) {
        const int64_t ch = g * cpg + ci;
        ch_mean[n * c + ch] = static_cast<float>(m);
        scale[n * c + ch] = rs * (w ? w[ch] : 1.0f);
        shift[n * c + ch] = b ? b[ch] : 0.0f;
      }
    }
  }
  // Pass 3: y = (x - mean) * scale + shift per channel, the pattern repeating every period.
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const int64_t period = std::max<int64_t>(nl, bk), nvec = period / nl;
  const int64_t total = hw * bk, full = total / period * period;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nb * nblk; ++t) {
    HWY_ALIGN float mp[64], sp[64], hp[64];
    const float* mc = ch_mean.data() + t * bk;
    const float* sc = scale.data() + t * bk;
    const float* sh = shift.data() + t * bk;
    for (int64_t e = 0; e < period; ++e) mp[e] = mc[e % bk], sp[e] = sc[e % bk], hp[e] = sh[e % bk];
    const float* xb = x + t * total;
    float* yb = y + t * total;
    if (nvec == 1) {
      const auto vm = hn::Load(d, mp), va = hn::Load(d, sp), vb = hn::Load(d, hp);
      for (int64_t i = 0; i < full; i += period) {
        hn::StoreU(hn::MulAdd(hn::Sub(hn::LoadU(d, xb + i), vm), va, vb), d, yb + i);
      }
    } else {
      for (int64_t i = 0; i < full; i += period) {
        for (int64_t k = 0; k < nvec; ++k) {
          const int64_t o = i + k * nl;
          const auto xc = hn::Sub(hn::LoadU(d, xb + o), hn::Load(d, mp + k * nl));
          hn::StoreU(hn::MulAdd(xc, hn::Load(d, sp + k * nl), hn::Load(d, hp + k * nl)), d, yb + o);
        }
      }
    }
    for (int64_t i = full; i < total; ++i) yb[i] = (xb[i] - mc[i % bk]) * sc[i % bk] + sh[i % bk];
  }
}

// ---- group norm backward, plain [N, C, S] ----
// Per (n, c): ds = sum dy * x, db = sum dy. With xhat = (x - mu) * rstd and dxhat = dy * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) = a_c dy + k1 (x - mu) + k0.

// Returns sum(dy) and sets *dyx = sum(dy * x).
double dot_and_sum(const float* dy, const float* x, int64_t n, double* dyx) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  auto s = hn::Zero(d), p = hn::Zero(d);
  int64_t i = 0;
  for (; i + nl <= n; i += nl) {
    const auto g = hn::LoadU(d, dy + i);
    s = hn::Add(s, g);
    p = hn::MulAdd(g, hn::LoadU(d, x + i), p);
  }
  double ss = hn::GetLane(hn::SumOfLanes(d, s)), pp = hn::GetLane(hn::SumOfLanes(d, p));
  for (; i < n; ++i) ss += dy[i], pp += double(dy[i]) * x[i];
  *dyx = pp;
  return ss;
}

// out = a * dy + k1 * (x - mu) + k0.
void combine_row(const float* dy, const float* x, float* out, int64_t n, float a, float mu,
                 float k1, float k0) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const auto va = hn::Set(d, a), vm = hn::Set(d, mu), v1 = hn::Set(d, k1), v0 = hn::Set(d, k0);
  int64_t i = 0;
  for (; i + nl <= n; i += nl) {
    const auto xc = hn::Sub(hn::LoadU(d, x + i), vm);
    hn::StoreU(hn::MulAdd(hn::LoadU(d, dy + i), va, hn::MulAdd(xc, v1, v0)), d, out + i);
  }
  for (; i < n; ++i) out[i] = a * dy[i] + k1 * (x[i] - mu) + k0;
}

void group_norm_backward(const float* x, const float* dy, int64_t nb, int64_t c, int64_t s,
                         int64_t groups, const float* w, const float* mean, const float* rstd,
                         float* dx, double* ds_out, double* db_out) {
  const int64_t cpg = c / groups;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < nb * groups; ++t) {
    const int64_t n = t / groups, g = t % groups;
    const double mu = mean[t], rs = rstd[t];
    double sum_dxh = 0, sum_dxh_xh = 0;
    for (int64_t ci = 0; ci < cpg; ++ci) {
      const int64_t ch = g * cpg + ci, row = (n * c + ch) * s;
      double dyx;
      const double db = dot_and_sum(dy + row, x + row, s, &dyx);
      ds_out[n * c + ch] = dyx;
      db_out[n * c + ch] = db;
      const double wc = w ? w[ch] : 1.0;
      sum_dxh += wc * db;
      sum_dxh_xh += wc * (dyx - mu * db) * rs;
    }
    const double len = static_cast<double>(cpg * s);
    const double m1 = sum_dxh / len, m2 = sum_dxh_xh / len;
    // dx = rs * (w dy - m1 - (x - mu) rs m2)
    const float k1 = static_cast<float>(-rs * rs * m2);
    const float k0 = static_cast<float>(-rs * m1);
    for (int64_t ci = 0; ci < cpg; ++ci) {
      const int64_t ch = g * cpg + ci, row = (n * c + ch) * s;
      const float a = static_cast<float>(rs * (w ? w[ch] : 1.0));
      combine_row(dy + row, x + row, dx + row, s, a, static_cast<float>(mu), k1, k0);
    }
  }
}

// ---- layer norm [rows, D] ----

void layer_norm(const float* x, int64_t rows, int64_t dd, const float* w, const float* b, float eps,
                float* y, float* mean, float* rstd) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dd;
    float* yr = y + r * dd;
    float mu, rs;
    mean_rstd(xr, dd, eps, &mu, &rs);
    mean[r] = mu;
    rstd[r] = rs;
    const auto vm = hn::Set(d, mu), vr = hn::Set(d, rs);
    int64_t i = 0;
    for (; i + nl <= dd; i += nl) {
      auto v = hn::Mul(hn::Sub(hn::LoadU(d, xr + i), vm), vr);
      if (w) v = hn::Mul(v, hn::LoadU(d, w + i));
      if (b) v = hn::Add(v, hn::LoadU(d, b + i));
      hn::StoreU(v, d, yr + i);
    }
    for (; i < dd; ++i) yr[i] = (xr[i] - mu) * rs * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
  }
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); gw += dy * xhat; gb += dy
// (per-thread partial sums, added at the end).
void layer_norm_backward(const float* x, const float* dy, int64_t rows, int64_t dd, const float* w,
                         const float* mean, const float* rstd, float* dx, float* gw, float* gb) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  std::fill(gw, gw + dd, 0.0f);
  std::fill(gb, gb + dd, 0.0f);
#pragma omp parallel
  {
    std::vector<float> xh(dd), pw(dd, 0.0f), pb(dd, 0.0f);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dd;
      const float* gr = dy + r * dd;
      const auto vm = hn::Set(d, mean[r]), vr = hn::Set(d, rstd[r]);
      auto s1 = hn::Zero(d), s2 = hn::Zero(d);
      int64_t i = 0;
      for (; i + nl <= dd; i += nl) {
        const auto h = hn::Mul(hn::Sub(hn::LoadU(d, xr + i), vm), vr);
        const auto g = hn::LoadU(d, gr + i);
        const auto gwv = w ? hn::Mul(g, hn::LoadU(d, w + i)) : g;
        hn::StoreU(h, d, xh.data() + i);
        s1 = hn::Add(s1, gwv);
        s2 = hn::MulAdd(gwv, h, s2);
        hn::StoreU(hn::MulAdd(g, h, hn::LoadU(d, pw.data() + i)), d, pw.data() + i);
        hn::StoreU(hn::Add(g, hn::LoadU(d, pb.data() + i)), d, pb.data() + i);
      }
      double sum1 = hn::GetLane(hn::SumOfLanes(d, s1)), sum2 = hn::GetLane(hn::SumOfLanes(d, s2));
      for (; i < dd; ++i) {
        xh[i] = (xr[i] - mean[r]) * rstd[r];
        const float gwv = gr[i] * (w ? w[i] : 1.0f);
        sum1 += gwv;
        sum2 += double(gwv) * xh[i];
        pw[i] += gr[i] * xh[i];
        pb[i] += gr[i];
      }
      const float m1 = static_cast<float>(sum1 / dd), m2 = static_cast<float>(sum2 / dd);
      const auto v1 = hn::Set(d, m1), v2 = hn::Set(d, m2);
      float* out = dx + r * dd;
      i = 0;
      for (; i + nl <= dd; i += nl) {
        const auto g = hn::LoadU(d, gr + i);
        const auto gwv = w ? hn::Mul(g, hn::LoadU(d, w + i)) : g;
        const auto t = hn::Sub(hn::Sub(gwv, v1), hn::Mul(hn::LoadU(d, xh.data() + i), v2));
        hn::StoreU(hn::Mul(t, vr), d, out + i);
      }
      for (; i < dd; ++i) out[i] = rstd[r] * (gr[i] * (w ? w[i] : 1.0f) - m1 - xh[i] * m2);
    }
#pragma omp critical
    for (int64_t i = 0; i < dd; ++i) gw[i] += pw[i], gb[i] += pb[i];
  }
}

// ---- softmax over rows [rows, D] ----

void softmax(const float* x, int64_t rows, int64_t dd, float* y) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dd;
    float* yr = y + r * dd;
    auto vmax = hn::Set(d, -INFINITY);
    int64_t i = 0;
    for (; i + nl <= dd; i += nl) vmax = hn::Max(vmax, hn::LoadU(d, xr + i));
    float m = hn::GetLane(hn::MaxOfLanes(d, vmax));
    for (; i < dd; ++i) m = std::max(m, xr[i]);
    if (m == -INFINITY) {  // every entry masked: zeros, as in the reference
      std::fill(yr, yr + dd, 0.0f);
      continue;
    }
    const auto vm = hn::Set(d, m);
    auto acc = hn::Zero(d);
    i = 0;
    for (; i + nl <= dd; i += nl) {
      const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, xr + i), vm));
      hn::StoreU(e, d, yr + i);
      acc = hn::Add(acc, e);
    }
    double sum = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; i < dd; ++i) {
      yr[i] = std::exp(xr[i] - m);
      sum += yr[i];
    }
    const auto inv = hn::Set(d, static_cast<float>(1.0 / sum));
    i = 0;
    for (; i + nl <= dd; i += nl) hn::StoreU(hn::Mul(hn::LoadU(d, yr + i), inv), d, yr + i);
    for (; i < dd; ++i) yr[i] *= static_cast<float>(1.0 / sum);
  }
}

// dx = y * (dy - sum(dy * y)).
void softmax_backward(const float* y, const float* dy, int64_t rows, int64_t dd, float* dx) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = y + r * dd;
    const float* gr = dy + r * dd;
    float* out = dx + r * dd;
    auto acc = hn::Zero(d);
    int64_t i = 0;
    for (; i + nl <= dd; i += nl) acc = hn::MulAdd(hn::LoadU(d, yr + i), hn::LoadU(d, gr + i), acc);
    double dot = hn::GetLane(hn::SumOfLanes(d, acc));
    for (; i < dd; ++i) dot += double(yr[i]) * gr[i];
    const auto vd = hn::Set(d, static_cast<float>(dot));
    i = 0;
    for (; i + nl <= dd; i += nl) {
      hn::StoreU(hn::Mul(hn::LoadU(d, yr + i), hn::Sub(hn::LoadU(d, gr + i), vd)), d, out + i);
    }
    for (; i < dd; ++i) out[i] = yr[i] * (gr[i] - static_cast<float>(dot));
  }
}

}  // namespace stipple::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace stipple::cpu {
HWY_EXPORT(group_norm_plain);
HWY_EXPORT(group_norm_blocked);
HWY_EXPORT(group_norm_backward);
HWY_EXPORT(layer_norm);
HWY_EXPORT(layer_norm_backward);
HWY_EXPORT(softmax);
HWY_EXPORT(softmax_backward);

namespace {
using norm::ptr_or_null;

GroupNormResult group_norm(const Tensor& x, int64_t groups, const Tensor& weight,
                           const Tensor& bias, float eps) {
  const int64_t nb = x.size(0), c = x.size(1);
  const int64_t s = nb * c > 0 ? x.numel() / (nb * c) : 0;
  Tensor mean = Tensor::empty({nb, groups}), rstd = Tensor::empty({nb, groups});
  if (x.is_blocked()) {
    const int bk = x.channel_block();
    STIPPLE_ASSERT(bk <= 64);  // the per-period patterns in group_norm_blocked hold 64 floats
    Tensor out = Tensor::empty_blocked(x.shape(), bk);
    HWY_DYNAMIC_DISPATCH(group_norm_blocked)
    (x.data<float>(), nb, c, s, bk, groups, ptr_or_null(weight), ptr_or_null(bias), eps,
     out.data<float>(), mean.data<float>(), rstd.data<float>());
    return {out, mean, rstd};
  }
  Tensor out = Tensor::empty(x.shape());
  HWY_DYNAMIC_DISPATCH(group_norm_plain)
  (x.data<float>(), nb, c, s, groups, ptr_or_null(weight), ptr_or_null(bias), eps,
   out.data<float>(), mean.data<float>(), rstd.data<float>());
  return {out, mean, rstd};
}

Tensor group_norm_backward(const Tensor& x, const Tensor& grad_y, int64_t groups,
                           const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           Tensor* grad_w, Tensor* grad_b) {
  const int64_t nb = x.size(0), c = x.size(1);
  const int64_t s = nb * c > 0 ? x.numel() / (nb * c) : 0;
  Tensor gx = Tensor::empty(x.shape());
  std::vector<double> ds(nb * c), db(nb * c);
  HWY_DYNAMIC_DISPATCH(group_norm_backward)
  (x.data<float>(), grad_y.data<float>(), nb, c, s, groups, ptr_or_null(weight), mean.data<float>(),
   rstd.data<float>(), gx.data<float>(), ds.data(), db.data());
  // grad_w[c] = sum_n (ds - mu * db) * rstd ; grad_b[c] = sum_n db.
  const int64_t cpg = c / groups;
  if (grad_w) *grad_w = Tensor::empty({c});
  if (grad_b) *grad_b = Tensor::empty({c});
  for (int64_t ch = 0; ch < c; ++ch) {
    double sw = 0, sb = 0;
    for (int64_t n = 0; n < nb; ++n) {
      const int64_t t = n * groups + ch / cpg;
      sw += (ds[n * c + ch] - mean.data<float>()[t] * db[n * c + ch]) * rstd.data<float>()[t];
      sb += db[n * c + ch];
    }
    if (grad_w) grad_w->data<float>()[ch] = static_cast<float>(sw);
    if (grad_b) grad_b->data<float>()[ch] = static_cast<float>(sb);
  }
  return gx;
}

LayerNormResult layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor out = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({rows}), rstd = Tensor::empty({rows});
  HWY_DYNAMIC_DISPATCH(layer_norm)
  (x.data<float>(), rows, d, ptr_or_null(weight), ptr_or_null(bias), eps, out.data<float>(),
   mean.data<float>(), rstd.data<float>());
  return {out, mean, rstd};
}

Tensor layer_norm_backward(const Tensor& x, const Tensor& grad_y, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, Tensor* grad_w, Tensor* grad_b) {
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor gx = Tensor::empty(x.shape());
  Tensor gw = Tensor::empty({d}), gb = Tensor::empty({d});
  HWY_DYNAMIC_DISPATCH(layer_norm_backward)
  (x.data<float>(), grad_y.data<float>(), rows, d, ptr_or_null(weight), mean.data<float>(),
   rstd.data<float>(), gx.data<float>(), gw.data<float>(), gb.data<float>());
  if (grad_w) *grad_w = gw;
  if (grad_b) *grad_b = gb;
  return gx;
}

Tensor softmax(const Tensor& x) {
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  Tensor out = Tensor::empty(x.shape());
  if (rows > 0) HWY_DYNAMIC_DISPATCH(softmax)(x.data<float>(), rows, d, out.data<float>());
  return out;
}

Tensor softmax_backward(const Tensor& y, const Tensor& grad_y) {
  const int64_t d = y.size(-1), rows = d > 0 ? y.numel() / d : 0;
  Tensor gx = Tensor::empty(y.shape());
  if (rows > 0) {
    HWY_DYNAMIC_DISPATCH(softmax_backward)
    (y.data<float>(), grad_y.data<float>(), rows, d, gx.data<float>());
  }
  return gx;
}

}  // namespace

void fill_fast_norm(KernelTable& t) {
  t.group_norm = group_norm;
  t.group_norm_backward = group_norm_backward;
  t.layer_norm = layer_norm;
  t.layer_norm_backward = layer_norm_backward;
  t.softmax = softmax;
  t.softmax_backward = softmax_backward;
}

}  // namespace stipple::cpu
#endif  // HWY_ONCE

// Reference normalisation kernels: group norm, layer norm and softmax, forward and backward.
// Plain loops with double accumulators: the yardstick the fast kernels (fast_norm.cc) are tested
// against. Leaves out speed and the channel-blocked layout as a native format: a blocked group
// norm input is reordered to plain, normalised, and reordered back to the same block.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

// ---- group norm: x [N, C, S], groups of C/G channels ----

GroupNormResult group_norm_plain(const Tensor& x, int64_t groups, const Tensor& weight,
                                 const Tensor& bias, float eps) {
  const int64_t n_batch = x.size(0), channels = x.size(1);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, n_batch * channels);
  const int64_t cpg = channels / groups;
  const int64_t group_len = cpg * spatial;
  Tensor out = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({n_batch, groups});
  Tensor rstd = Tensor::empty({n_batch, groups});
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  const float* wp = weight.defined() ? weight.data<float>() : nullptr;
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t base = (n * channels + g * cpg) * spatial;
      double sum = 0;
      for (int64_t i = 0; i < group_len; ++i) sum += xp[base + i];
      const double mu = group_len > 0 ? sum / group_len : 0.0;
      double sq = 0;
      for (int64_t i = 0; i < group_len; ++i) {
        const double d = xp[base + i] - mu;
        sq += d * d;
      }
      const double var = group_len > 0 ? sq / group_len : 0.0;
      const double rs = 1.0 / std::sqrt(var + eps);
      mean.data<float>()[n * groups + g] = static_cast<float>(mu);
      rstd.data<float>()[n * groups + g] = static_cast<float>(rs);
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const double w = wp ? wp[c] : 1.0, b = bp ? bp[c] : 0.0;
        const int64_t row = (n * channels + c) * spatial;
        for (int64_t s = 0; s < spatial; ++s) {
          yp[row + s] = static_cast<float>((xp[row + s] - mu) * rs * w + b);
        }
      }
    }
  }
  return {out, mean, rstd};
}

GroupNormResult group_norm(const Tensor& x, int64_t groups, const Tensor& weight,
                           const Tensor& bias, float eps) {
  if (!x.is_blocked()) return group_norm_plain(x, groups, weight, bias, eps);
  // Blocked nChw{b}c: normalise the plain copy, then return the result in the caller's layout.
  GroupNormResult r = group_norm_plain(x.contiguous(), groups, weight, bias, eps);
  r.out = ops::to_blocked(r.out, x.channel_block());
  return r;
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over each group, dxhat = dy * w.
Tensor group_norm_backward(const Tensor& x, const Tensor& grad_y, int64_t groups,
                           const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                           Tensor* grad_w, Tensor* grad_b) {
  const int64_t n_batch = x.size(0), channels = x.size(1);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, n_batch * channels);
  const int64_t cpg = channels / groups;
  const int64_t group_len = cpg * spatial;
  Tensor gx = Tensor::empty(x.shape());
  const float* xp = x.data<float>();
  const float* gy = grad_y.data<float>();
  float* gxp = gx.data<float>();
  const float* wp = weight.defined() ? weight.data<float>() : nullptr;
  std::vector<double> gw(channels, 0.0), gb(channels, 0.0);
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const double mu = mean.data<float>()[n * groups + g];
      const double rs = rstd.data<float>()[n * groups + g];
      double sum_dxh = 0, sum_dxh_xh = 0;
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const double w = wp ? wp[c] : 1.0;
        const int64_t row = (n * channels + c) * spatial;
        for (int64_t s = 0; s < spatial; ++s) {
          const double xh = (xp[row + s] - mu) * rs;
          const double dy = gy[row + s];
          sum_dxh += dy * w;
          sum_dxh_xh += dy * w * xh;
          gw[c] += dy * xh;
          gb[c] += dy;
        }
      }
      const double m1 = group_len > 0 ? sum_dxh / group_len : 0.0;
      const double m2 = group_len > 0 ? sum_dxh_xh / group_len : 0.0;
      for (int64_t c = g * cpg; c < (g + 1) * cpg; ++c) {
        const double w = wp ? wp[c] : 1.0;
        const int64_t row = (n * channels + c) * spatial;
        for (int64_t s = 0; s < spatial; ++s) {
          const double xh = (xp[row + s] - mu) * rs;
          gxp[row + s] = static_cast<float>(rs * (gy[row + s] * w - m1 - xh * m2));
        }
      }
    }
  }
  if (grad_w) {
    *grad_w = Tensor::empty({channels});
    for (int64_t c = 0; c < channels; ++c) grad_w->data<float>()[c] = static_cast<float>(gw[c]);
  }
  if (grad_b) {
    *grad_b = Tensor::empty({channels});
    for (int64_t c = 0; c < channels; ++c) grad_b->data<float>()[c] = static_cast<float>(gb[c]);
  }
  return gx;
}

// ---- layer norm: x [rows, D] ----

LayerNormResult layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor out = Tensor::empty(x.shape());
  Tensor mean = Tensor::empty({rows});
  Tensor rstd = Tensor::empty({rows});
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  const float* wp = weight.defined() ? weight.data<float>() : nullptr;
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double sum = 0;
    for (int64_t i = 0; i < d; ++i) sum += xr[i];
    const double mu = d > 0 ? sum / d : 0.0;
    double sq = 0;
    for (int64_t i = 0; i < d; ++i) sq += (xr[i] - mu) * (xr[i] - mu);
    const double rs = 1.0 / std::sqrt((d > 0 ? sq / d : 0.0) + eps);
    mean.data<float>()[r] = static_cast<float>(mu);
    rstd.data<float>()[r] = static_cast<float>(rs);
    for (int64_t i = 0; i < d; ++i) {
      const double w = wp ? wp[i] : 1.0, b = bp ? bp[i] : 0.0;
      yp[r * d + i] = static_cast<float>((xr[i] - mu) * rs * w + b);
    }
  }
  return {out, mean, rstd};
}

Tensor layer_norm_backward(const Tensor& x, const Tensor& grad_y, const Tensor& weight,
                           const Tensor& mean, const Tensor& rstd, Tensor* grad_w, Tensor* grad_b) {
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor gx = Tensor::empty(x.shape());
  const float* xp = x.data<float>();
  const float* gy = grad_y.data<float>();
  float* gxp = gx.data<float>();
  const float* wp = weight.defined() ? weight.data<float>() : nullptr;
  std::vector<double> gw(d, 0.0), gb(d, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double mu = mean.data<float>()[r], rs = rstd.data<float>()[r];
    double sum_dxh = 0, sum_dxh_xh = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double xh = (xp[r * d + i] - mu) * rs;
      const double dy = gy[r * d + i];
      const double w = wp ? wp[i] : 1.0;
      sum_dxh += dy * w;
      sum_dxh_xh += dy * w * xh;
      gw[i] += dy * xh;
      gb[i] += dy;
    }
    const double m1 = sum_dxh / d, m2 = sum_dxh_xh / d;
    for (int64_t i = 0; i < d; ++i) {
      const double xh = (xp[r * d + i] - mu) * rs;
      const double w = wp ? wp[i] : 1.0;
      gxp[r * d + i] = static_cast<float>(rs * (gy[r * d + i] * w - m1 - xh * m2));
    }
  }
  if (grad_w) {
    *grad_w = Tensor::empty({d});
    for (int64_t i = 0; i < d; ++i) grad_w->data<float>()[i] = static_cast<float>(gw[i]);
  }
  if (grad_b) {
    *grad_b = Tensor::empty({d});
    for (int64_t i = 0; i < d; ++i) grad_b->data<float>()[i] = static_cast<float>(gb[i]);
  }
  return gx;
}

// ---- softmax over the last dim of x [rows, D] ----

// A row that is all -inf gives zeros (not NaN), matching the attention kernels.
Tensor softmax(const Tensor& x) {
  const int64_t d = x.size(-1), rows = d > 0 ? x.numel() / d : 0;
  Tensor out = Tensor::empty(x.shape());
  const float* xp = x.data<float>();
  float* yp = out.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    double m = -INFINITY;
    for (int64_t i = 0; i < d; ++i) m = std::max(m, static_cast<double>(xr[i]));
    if (m == -INFINITY) {
      for (int64_t i = 0; i < d; ++i) yp[r * d + i] = 0.0f;
      continue;
    }
    double sum = 0;
    for (int64_t i = 0; i < d; ++i) sum += std::exp(xr[i] - m);
    for (int64_t i = 0; i < d; ++i) yp[r * d + i] = static_cast<float>(std::exp(xr[i] - m) / sum);
  }
  return out;
}

// dx = y * (dy - sum(dy * y)).
Tensor softmax_backward(const Tensor& y, const Tensor& grad_y) {
  const int64_t d = y.size(-1), rows = d > 0 ? y.numel() / d : 0;
  Tensor gx = Tensor::empty(y.shape());
  const float* yp = y.data<float>();
  const float* gy = grad_y.data<float>();
  float* gxp = gx.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    double dot = 0;
    for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(yp[r * d + i]) * gy[r * d + i];
    for (int64_t i = 0; i < d; ++i) {
      gxp[r * d + i] = static_cast<float>(yp[r * d + i] * (gy[r * d + i] - dot));
    }
  }
  return gx;
}

}  // namespace

void fill_reference_norm(KernelTable& t) {
  t.group_norm = group_norm;
  t.group_norm_backward = group_norm_backward;
  t.layer_norm = layer_norm;
  t.layer_norm_backward = layer_norm_backward;
  t.softmax = softmax;
  t.softmax_backward = softmax_backward;
}

}  // namespace stipple::cpu

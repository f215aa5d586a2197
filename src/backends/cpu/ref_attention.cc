// Reference scaled dot-product attention, forward and backward: one query row at a time, with the
// whole row of scores in memory and double accumulators. The yardstick for the tiled kernels in
// fast_attention.cc; leaves out speed (no BLAS, no tiling, no threads).
//
// Semantics shared with the fast kernels: scores s_ij = scale * q_i . k_j + mask_ij, with
// s_ij = -inf where causal and j > i; out_i = softmax_j(s_i) @ v; lse_i = log sum_j exp(s_ij).
// A row whose scores are all -inf gives out_i = 0 and lse_i = -inf (not NaN), and no gradient.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

// Reads mask[b, h, i, j] through the mask's strides (it may be an expanded, stride-0 view).
struct MaskView {
  const float* base = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;
  explicit MaskView(const Tensor& m) {
    if (!m.defined()) return;
    base = m.data<float>();
    sb = m.stride(0), sh = m.stride(1), si = m.stride(2), sj = m.stride(3);
  }
  float at(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return base ? base[b * sb + h * sh + i * si + j * sj] : 0.0f;
  }
};

// Fills s[0..lk) with the scaled, masked scores of query row i of head (b, h).
void row_scores(const float* q, const float* k, int64_t lk, int64_t d, float scale,
                const MaskView& mask, bool causal, int64_t b, int64_t h, int64_t i,
                std::vector<double>& s) {
  for (int64_t j = 0; j < lk; ++j) {
    if (causal && j > i) {
      s[j] = -INFINITY;
      continue;
    }
    double dot = 0;
    for (int64_t e = 0; e < d; ++e) dot += static_cast<double>(q[e]) * k[j * d + e];
    s[j] = scale * dot + mask.at(b, h, i, j);
  }
}

// q, k, v may come strided (unit stride over D): read through contiguous copies.
AttentionResult attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                          const Tensor& mask, float scale, bool causal) {
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t nb = q.size(0), nh = q.size(1), lq = q.size(2), d = q.size(3);
  const int64_t lk = k.size(2), dv = v.size(3);
  Tensor out = Tensor::empty({nb, nh, lq, dv});
  Tensor lse = Tensor::empty({nb, nh, lq});
  const MaskView mv(mask);
  std::vector<double> s(lk), acc(dv);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t bh = b * nh + h;
      const float* qh = q.data<float>() + bh * lq * d;
      const float* kh = k.data<float>() + bh * lk * d;
      const float* vh = v.data<float>() + bh * lk * dv;
      float* oh = out.data<float>() + bh * lq * dv;
      for (int64_t i = 0; i < lq; ++i) {
        row_scores(qh + i * d, kh, lk, d, scale, mv, causal, b, h, i, s);
        double m = -INFINITY;
        for (int64_t j = 0; j < lk; ++j) m = std::max(m, s[j]);
        if (m == -INFINITY) {
          for (int64_t e = 0; e < dv; ++e) oh[i * dv + e] = 0.0f;
          lse.data<float>()[bh * lq + i] = -INFINITY;
          continue;
        }
        double sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < lk; ++j) {
          const double p = std::exp(s[j] - m);
          sum += p;
          for (int64_t e = 0; e < dv; ++e) acc[e] += p * vh[j * dv + e];
        }
        for (int64_t e = 0; e < dv; ++e) oh[i * dv + e] = static_cast<float>(acc[e] / sum);
        lse.data<float>()[bh * lq + i] = static_cast<float>(m + std::log(sum));
      }
    }
  }
  return {out, lse};
}

// With P = exp(S - lse), dP = dO V^T, D_i = dO_i . O_i and dS = P * (dP - D):
//   dV = P^T dO,  dQ = scale * dS K,  dK = scale * dS^T Q.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                        float scale, bool causal, const Tensor& out, const Tensor& lse,
                        const Tensor& grad_out, Tensor* grad_q, Tensor* grad_k, Tensor* grad_v) {
  const int64_t nb = q.size(0), nh = q.size(1), lq = q.size(2), d = q.size(3);
  const int64_t lk = k.size(2), dv = v.size(3);
  std::vector<double> gq(q.numel(), 0.0), gk(k.numel(), 0.0), gv(v.numel(), 0.0);
  const MaskView mv(mask);
  std::vector<double> s(lk);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t h = 0; h < nh; ++h) {
      const int64_t bh = b * nh + h;
      const float* qh = q.data<float>() + bh * lq * d;
      const float* kh = k.data<float>() + bh * lk * d;
      const float* vh = v.data<float>() + bh * lk * dv;
      const float* oh = out.data<float>() + bh * lq * dv;
      const float* goh = grad_out.data<float>() + bh * lq * dv;
      double* gqh = gq.data() + bh * lq * d;
      double* gkh = gk.data() + bh * lk * d;
      double* gvh = gv.data() + bh * lk * dv;
      for (int64_t i = 0; i < lq; ++i) {
        const double l = lse.data<float>()[bh * lq + i];
        if (l == -INFINITY) continue;
        row_scores(qh + i * d, kh, lk, d, scale, mv, causal, b, h, i, s);
        double di = 0;
        for (int64_t e = 0; e < dv; ++e) {
          di += static_cast<double>(goh[i * dv + e]) * oh[i * dv + e];
        }
        for (int64_t j = 0; j < lk; ++j) {
          if (s[j] == -INFINITY) continue;
          const double p = std::exp(s[j] - l);
          double dp = 0;
          for (int64_t e = 0; e < dv; ++e) {
            dp += static_cast<double>(goh[i * dv + e]) * vh[j * dv + e];
            gvh[j * dv + e] += p * goh[i * dv + e];
          }
          const double ds = p * (dp - di) * scale;
          for (int64_t e = 0; e < d; ++e) {
            gqh[i * d + e] += ds * kh[j * d + e];
            gkh[j * d + e] += ds * qh[i * d + e];
          }
        }
      }
    }
  }
  auto to_tensor = [](const std::vector<double>& src, const Shape& shape) {
    Tensor t = Tensor::empty(shape);
    float* p = t.data<float>();
    for (size_t i = 0; i < src.size(); ++i) p[i] = static_cast<float>(src[i]);
    return t;
  };
  *grad_q = to_tensor(gq, q.shape());
  *grad_k = to_tensor(gk, k.shape());
  *grad_v = to_tensor(gv, v.shape());
}

}  // namespace

void fill_reference_attention(KernelTable& t) {
  t.attention = attention;
  t.attention_backward = attention_backward;
}

}  // namespace stipple::cpu

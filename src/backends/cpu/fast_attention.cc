// Fast scaled dot-product attention on the CPU: flash-attention style tiling (Dao et al. 2022,
// "FlashAttention", Alg. 1 forward with the online softmax of Milakov & Gimelshein 2018; Alg. 2's
// recomputation from the saved log-sum-exp for backward). The full Lq x Lk score matrix is never
// built: a tile of kTileQ queries meets kTileK keys at a time.
//
//   scores         S = scale * Q K^T by a register-blocked Highway kernel (score_block) over K^T,
//                  transposed once per call so key vectors stream without packing; it beat
//                  cblas_sgemm here (D = 40 is too thin for packing to pay: 4096x4096x8x40, one
//                  thread, 273 -> 230 ms; 4096x77 7.8 -> 5.2 ms).
//   other matmuls  P V and the backward products: cblas_sgemm (OpenBLAS, OpenMP build; a Highway
//                  P V kernel measured no faster). They run inside our OpenMP parallel regions,
//                  where OpenBLAS's OpenMP build sees omp_in_parallel() and stays on one thread:
//                  no nested oversubscription, and no global openblas_set_num_threads() call that
//                  would slow other callers' matmuls.
//   row softmax    Highway, run-time dispatch (SSE4 / AVX2 / AVX-512 chosen on the host).
//   threads        forward and dQ: one task per (batch, head, query tile); dK/dV: one task per
//                  (batch, head, key tile), so every task owns the rows it writes (no atomics).
//
// Semantics equal ref_attention.cc (mask read through its strides, causal = key j > query i
// blocked, fully masked rows give zeros and lse = -inf). Leaves out dropout and half precision.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "backends/cpu/fast_attention.cc"
// foreach_target.h must come first, then highway.h, then the contrib headers.
// clang-format off
#include <hwy/foreach_target.h>  // NOLINT: re-includes this file once per SIMD target
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>
// clang-format on

#ifndef STIPPLE_FAST_ATTENTION_SHARED_
#define STIPPLE_FAST_ATTENTION_SHARED_
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/fill.h"

namespace stipple::cpu::attn {

constexpr int64_t kTileQ = 128;  // query rows per task
constexpr int64_t kTileK = 256;  // keys per inner step

// One attention problem, as raw pointers into [B, H, L, D] buffers with unit stride over D and
// any strides over B, H and L (the forward reads the projections' [B, L, H*D] rows and writes
// its output that way too; the backward is given contiguous ones).
struct Problem {
  int64_t nb, nh, lq, lk, d, dv;
  float scale;
  bool causal;
  const float* q;
  const float* k;
  const float* v;
  int64_t qb, qh, ql, kb, kh, kl, vb, vh, vl;  // element strides of q, k, v over B, H, L
  const float* mask = nullptr;  // element (b, h, i, j) at mb*b + mh*h + mi*i + mj*j
  int64_t mb = 0, mh = 0, mi = 0, mj = 0;
  // K transposed per head, [B*H][D][ldkt] with ldkt = Lk rounded up to kKeyPad, zero-padded, so
  // the score kernel streams contiguous key vectors without packing (see score_block).
  const float* kt = nullptr;
  int64_t ldkt = 0;
};

constexpr int64_t kKeyPad = 64;  // a multiple of every target's lane count

// Keys [j0, j0 + count) that query i may see under the causal rule (all of them otherwise).
inline int64_t visible_keys(const Problem& p, int64_t i, int64_t j0, int64_t count) {
  if (!p.causal) return count;
  return std::clamp<int64_t>(i - j0 + 1, 0, count);
}

}  // namespace stipple::cpu::attn
#endif  // STIPPLE_FAST_ATTENTION_SHARED_

HWY_BEFORE_NAMESPACE();
namespace stipple::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using attn::Problem;

// s[0, n) += the mask row of query i from key j0 on.
void add_mask_row(const Problem& p, int64_t b, int64_t h, int64_t i, int64_t j0, float* s,
                  int64_t n) {
  const float* m = p.mask + b * p.mb + h * p.mh + i * p.mi + j0 * p.mj;
  if (p.mj == 1) {
    const hn::ScalableTag<float> d;
    const int64_t nl = hn::Lanes(d);
    int64_t j = 0;
    for (; j + nl <= n; j += nl) {
      hn::StoreU(hn::Add(hn::LoadU(d, s + j), hn::LoadU(d, m + j)), d, s + j);
    }
    for (; j < n; ++j) s[j] += m[j];
  } else {
    for (int64_t j = 0; j < n; ++j) s[j] += m[j * p.mj];
  }
}

float row_max(const float* s, int64_t n) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  auto vm = hn::Set(d, -INFINITY);
  int64_t j = 0;
  for (; j + nl <= n; j += nl) vm = hn::Max(vm, hn::LoadU(d, s + j));
  float m = hn::GetLane(hn::MaxOfLanes(d, vm));
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// s[j] = exp(s[j] - m) for j < n (Highway's Exp gives exactly 0 for -inf); returns the sum.
float exp_sub_sum(float* s, int64_t n, float m) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const auto vm = hn::Set(d, m);
  auto acc = hn::Zero(d);
  int64_t j = 0;
  for (; j + nl <= n; j += nl) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, s + j), vm));
    hn::StoreU(e, d, s + j);
    acc = hn::Add(acc, e);
  }
  if (j < n) {
    const auto keep = hn::FirstN(d, static_cast<size_t>(n - j));
    const auto e = hn::Exp(d, hn::Sub(hn::MaskedLoad(keep, d, s + j), vm));
    const auto e0 = hn::IfThenElseZero(keep, e);
    hn::BlendedStore(e0, keep, d, s + j);
    acc = hn::Add(acc, e0);
  }
  return hn::GetLane(hn::SumOfLanes(d, acc));
}

void scale_row(float* x, int64_t n, float a) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  const auto va = hn::Set(d, a);
  int64_t j = 0;
  for (; j + nl <= n; j += nl) hn::StoreU(hn::Mul(hn::LoadU(d, x + j), va), d, x + j);
  for (; j < n; ++j) x[j] *= a;
}

// Register-blocked S[R rows][C vectors] = scale * Q[R][D] . KT[D][C vectors]: per step of the
// head dim, C key vectors are loaded once and meet R broadcast query values (R*C FMAs).
template <int R, int C>
HWY_INLINE void score_block(const float* q, int64_t ldq, const float* kt, int64_t ldk, int64_t dim,
                            float scale, float* s, int64_t lds) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  using V = hn::Vec<decltype(d)>;
  V acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = hn::Zero(d);
  for (int64_t e = 0; e < dim; ++e) {
    V kv[C];
    for (int c = 0; c < C; ++c) kv[c] = hn::LoadU(d, kt + e * ldk + c * nl);
    for (int r = 0; r < R; ++r) {
      const V qv = hn::Set(d, q[r * ldq + e]);
      for (int c = 0; c < C; ++c) acc[r][c] = hn::MulAdd(qv, kv[c], acc[r][c]);
    }
  }
  const V vs = hn::Set(d, scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) hn::StoreU(hn::Mul(acc[r][c], vs), d, s + r * lds + c * nl);
}

// Scores for nq rows and keys [0, nk) of a tile (written up to nk rounded up to a vector).
// Column blocks outside, rows inside: a block's slice of KT (D x C vectors) stays in L1 while
// every query row of the tile meets it.
void score_tile(const float* q, int64_t ldq, int64_t nq, const float* kt, int64_t ldk, int64_t dim,
                int64_t nk, float scale, float* s, int64_t lds) {
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  constexpr int kC = 4;  // 32 vector registers: 16 accumulators + 4 key vectors
#else
  constexpr int kC = 2;  // 16 registers (AVX2 and below): 8 accumulators + 2 key vectors
#endif
  const int64_t padded = (nk + nl - 1) / nl * nl;
  for (int64_t j = 0; j < padded;) {
    const bool wide = j + kC * nl <= padded;
    int64_t r = 0;
    for (; r + 4 <= nq; r += 4) {
      if (wide) {
        score_block<4, kC>(q + r * ldq, ldq, kt + j, ldk, dim, scale, s + r * lds + j, lds);
      } else {
        score_block<4, 1>(q + r * ldq, ldq, kt + j, ldk, dim, scale, s + r * lds + j, lds);
      }
    }
    for (; r < nq; ++r) {
      if (wide) {
        score_block<1, kC>(q + r * ldq, ldq, kt + j, ldk, dim, scale, s + r * lds + j, lds);
      } else {
        score_block<1, 1>(q + r * ldq, ldq, kt + j, ldk, dim, scale, s + r * lds + j, lds);
      }
    }
    j += wide ? kC * nl : nl;
  }
}

// s = scale * Q_tile K_tile^T + mask for rows [i0, i0 + nq) and keys [j0, j0 + nk); entries a
// causal query may not see are left out of `visible` (callers treat them as -inf).
void tile_scores(const Problem& p, int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0,
                 int64_t nk, float* s, int64_t lds) {
  const int64_t bh = b * p.nh + h;
  const float* q = p.q + b * p.qb + h * p.qh + i0 * p.ql;
  score_tile(q, p.ql, nq, p.kt + bh * p.d * p.ldkt + j0, p.ldkt, p.d, nk, p.scale, s, lds);
  if (p.mask) {
    for (int64_t r = 0; r < nq; ++r) {
      add_mask_row(p, b, h, i0 + r, j0, s + r * lds, attn::visible_keys(p, i0 + r, j0, nk));
    }
  }
}

// Forward for queries [i0, i0 + nq) of head (b, h), output rows ldo apart; s is kTileQ x kTileK
// scratch.
void forward_tile(const Problem& p, int64_t b, int64_t h, int64_t i0, int64_t nq, float* s,
                  float* o, int64_t ldo, float* lse) {
  const int64_t lds = attn::kTileK;
  float m[attn::kTileQ], l[attn::kTileQ];
  std::fill(m, m + nq, -INFINITY);
  std::fill(l, l + nq, 0.0f);
  for (int64_t r = 0; r < nq; ++r) std::fill(o + r * ldo, o + r * ldo + p.dv, 0.0f);
  const int64_t j_end = p.causal ? std::min(p.lk, i0 + nq) : p.lk;
  for (int64_t j0 = 0; j0 < j_end; j0 += attn::kTileK) {
    const int64_t nk = std::min(attn::kTileK, j_end - j0);
    tile_scores(p, b, h, i0, nq, j0, nk, s, lds);
    for (int64_t r = 0; r < nq; ++r) {
      float* sr = s + r * lds;
      const int64_t nv = attn::visible_keys(p, i0 + r, j0, nk);
      const float m_new = std::max(m[r], nv > 0 ? row_max(sr, nv) : -INFINITY);
      if (m_new == -INFINITY) {  // nothing visible yet: this tile adds nothing
        std::fill(sr, sr + nk, 0.0f);
        continue;
      }
      const float alpha = std::exp(m[r] - m_new);  // 0 when m[r] = -inf
      const float sum = exp_sub_sum(sr, nv, m_new);
      std::fill(sr + nv, sr + nk, 0.0f);
      if (alpha != 1.0f) scale_row(o + r * ldo, p.dv, alpha);
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
    }
    const float* v = p.v + b * p.vb + h * p.vh + j0 * p.vl;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, p.dv, nk, 1.0f, s, lds, v, p.vl,
                1.0f, o, ldo);
  }
  for (int64_t r = 0; r < nq; ++r) {
    if (l[r] > 0.0f) {
      scale_row(o + r * ldo, p.dv, 1.0f / l[r]);
      lse[r] = m[r] + std::log(l[r]);
    } else {
      std::fill(o + r * ldo, o + r * ldo + p.dv, 0.0f);
      lse[r] = -INFINITY;
    }
  }
}

// out: element (b, h, i, e) at b * ob + h * oh + i * ol + e.
void attention_forward(const Problem& p, float* out, int64_t ob, int64_t oh, int64_t ol,
                       float* lse) {
  const int64_t q_tiles = (p.lq + attn::kTileQ - 1) / attn::kTileQ;
  const int64_t tasks = p.nb * p.nh * q_tiles;
#pragma omp parallel
  {
    std::vector<float> s(attn::kTileQ * attn::kTileK);
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t bh = t / q_tiles, i0 = (t % q_tiles) * attn::kTileQ;
      const int64_t nq = std::min(attn::kTileQ, p.lq - i0);
      const int64_t b = bh / p.nh, h = bh % p.nh;
      forward_tile(p, b, h, i0, nq, s.data(), out + b * ob + h * oh + i0 * ol, ol,
                   lse + bh * p.lq + i0);
    }
  }
}

// Backward pieces for one (query tile, key tile) pair: rebuilds P = exp(S - lse) in s and
// dS = P * (dO V^T - D) * scale in ds (both nq x nk, leading dim kTileK).
void tile_grad_scores(const Problem& p, const float* lse, const float* di, const float* go,
                      int64_t b, int64_t h, int64_t i0, int64_t nq, int64_t j0, int64_t nk,
                      float* s, float* ds) {
  const int64_t bh = b * p.nh + h;
  const int64_t lds = attn::kTileK;
  tile_scores(p, b, h, i0, nq, j0, nk, s, lds);
  const hn::ScalableTag<float> d;
  const int64_t nl = hn::Lanes(d);
  for (int64_t r = 0; r < nq; ++r) {
    float* sr = s + r * lds;
    const float lr = lse[bh * p.lq + i0 + r];
    const int64_t nv = lr == -INFINITY ? 0 : attn::visible_keys(p, i0 + r, j0, nk);
    if (nv > 0) exp_sub_sum(sr, nv, lr);
    std::fill(sr + nv, sr + nk, 0.0f);
  }
  // dP = dO V^T
  const float* v = p.v + (bh * p.lk + j0) * p.dv;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, p.dv, 1.0f,
              go + (bh * p.lq + i0) * p.dv, p.dv, v, p.dv, 0.0f, ds, lds);
  for (int64_t r = 0; r < nq; ++r) {
    const float* pr = s + r * lds;
    float* dr = ds + r * lds;
    const auto vd = hn::Set(d, di[bh * p.lq + i0 + r]);
    const auto vs = hn::Set(d, p.scale);
    int64_t j = 0;
    for (; j + nl <= nk; j += nl) {
      const auto g = hn::Mul(hn::Mul(hn::LoadU(d, pr + j), hn::Sub(hn::LoadU(d, dr + j), vd)), vs);
      hn::StoreU(g, d, dr + j);
    }
    for (; j < nk; ++j) dr[j] = pr[j] * (dr[j] - di[bh * p.lq + i0 + r]) * p.scale;
  }
}

void attention_backward(const Problem& p, const float* out, const float* lse, const float* go,
                        float* gq, float* gk, float* gv) {
  const int64_t rows = p.nb * p.nh * p.lq;
  // D_i = dO_i . O_i  [B, H, Lq]
  std::vector<float> di(rows);
#pragma omp parallel for
  for (int64_t r = 0; r < rows; ++r) {
    double acc = 0;
    for (int64_t e = 0; e < p.dv; ++e) acc += double(go[r * p.dv + e]) * out[r * p.dv + e];
    di[r] = static_cast<float>(acc);
  }
  const int64_t q_tiles = (p.lq + attn::kTileQ - 1) / attn::kTileQ;
  const int64_t k_tiles = (p.lk + attn::kTileK - 1) / attn::kTileK;
#pragma omp parallel
  {
    std::vector<float> s(attn::kTileQ * attn::kTileK), ds(attn::kTileQ * attn::kTileK);
    // dK, dV: each task owns one key tile and sweeps the query tiles.
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < p.nb * p.nh * k_tiles; ++t) {
      const int64_t bh = t / k_tiles, j0 = (t % k_tiles) * attn::kTileK;
      const int64_t nk = std::min(attn::kTileK, p.lk - j0);
      float* gkt = gk + (bh * p.lk + j0) * p.d;
      float* gvt = gv + (bh * p.lk + j0) * p.dv;
      std::fill(gkt, gkt + nk * p.d, 0.0f);
      std::fill(gvt, gvt + nk * p.dv, 0.0f);
      const int64_t i_begin = p.causal ? (j0 / attn::kTileQ) * attn::kTileQ : 0;
      for (int64_t i0 = i_begin; i0 < p.lq; i0 += attn::kTileQ) {
        const int64_t nq = std::min(attn::kTileQ, p.lq - i0);
        tile_grad_scores(p, lse, di.data(), go, bh / p.nh, bh % p.nh, i0, nq, j0, nk, s.data(),
                         ds.data());
        // dV += P^T dO ; dK += dS^T Q
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, p.dv, nq, 1.0f, s.data(),
                    attn::kTileK, go + (bh * p.lq + i0) * p.dv, p.dv, 1.0f, gvt, p.dv);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, p.d, nq, 1.0f, ds.data(),
                    attn::kTileK, p.q + (bh * p.lq + i0) * p.d, p.d, 1.0f, gkt, p.d);
      }
    }
    // dQ: each task owns one query tile and sweeps the key tiles.
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < p.nb * p.nh * q_tiles; ++t) {
      const int64_t bh = t / q_tiles, i0 = (t % q_tiles) * attn::kTileQ;
      const int64_t nq = std::min(attn::kTileQ, p.lq - i0);
      float* gqt = gq + (bh * p.lq + i0) * p.d;
      std::fill(gqt, gqt + nq * p.d, 0.0f);
      const int64_t j_end = p.causal ? std::min(p.lk, i0 + nq) : p.lk;
      for (int64_t j0 = 0; j0 < j_end; j0 += attn::kTileK) {
        const int64_t nk = std::min(attn::kTileK, j_end - j0);
        tile_grad_scores(p, lse, di.data(), go, bh / p.nh, bh % p.nh, i0, nq, j0, nk, s.data(),
                         ds.data());
        // dQ += dS K
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, p.d, nk, 1.0f, ds.data(),
                    attn::kTileK, p.k + (bh * p.lk + j0) * p.d, p.d, 1.0f, gqt, p.d);
      }
    }
  }
}

}  // namespace stipple::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace stipple::cpu {
HWY_EXPORT(attention_forward);
HWY_EXPORT(attention_backward);

namespace {

attn::Problem make_problem(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                           float scale, bool causal) {
  attn::Problem p{};
  p.nb = q.size(0), p.nh = q.size(1), p.lq = q.size(2), p.lk = k.size(2);
  p.d = q.size(3), p.dv = v.size(3), p.scale = scale, p.causal = causal;
  p.q = q.data<float>(), p.k = k.data<float>(), p.v = v.data<float>();
  p.qb = q.stride(0), p.qh = q.stride(1), p.ql = q.stride(2);
  p.kb = k.stride(0), p.kh = k.stride(1), p.kl = k.stride(2);
  p.vb = v.stride(0), p.vh = v.stride(1), p.vl = v.stride(2);
  if (mask.defined()) {
    p.mask = mask.data<float>();
    p.mb = mask.stride(0), p.mh = mask.stride(1), p.mi = mask.stride(2), p.mj = mask.stride(3);
  }
  return p;
}

// K^T per head, zero-padded to attn::kKeyPad keys: [B*H][D][ldkt]. A storage like any activation
// (every element written here), so that it comes from the block cache or a denoiser's memory plan
// rather than fresh from the system on every call (10 MiB at SD 1.5's 64x64 level).
Tensor transpose_keys(const attn::Problem& p, int64_t* ldkt) {
  // One extra cache line per row: a power-of-two row stride would put all D rows of a key block
  // in the same L1 set.
  const int64_t ld = (p.lk + attn::kKeyPad - 1) / attn::kKeyPad * attn::kKeyPad + 16;
  const int64_t heads = p.nb * p.nh;
  Tensor keys = Tensor::empty({heads * p.d * ld});
  float* kt = keys.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t bh = 0; bh < heads; ++bh) {
    const float* k = p.k + bh / p.nh * p.kb + bh % p.nh * p.kh;
    float* t = kt + bh * p.d * ld;
    for (int64_t e = 0; e < p.d; ++e) {
      for (int64_t j = 0; j < p.lk; ++j) t[e * ld + j] = k[j * p.kl + e];
      std::fill(t + e * ld + p.lk, t + (e + 1) * ld, 0.0f);
    }
  }
  *ldkt = ld;
  return keys;
}

// The output is laid out [B, Lq, H, Dv] (a transposed view is returned): heads merge back into
// [B, Lq, H * Dv] without a copy.
AttentionResult attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                          float scale, bool causal) {
  attn::Problem p = make_problem(q, k, v, mask, scale, causal);
  const Tensor kt = transpose_keys(p, &p.ldkt);
  p.kt = kt.data<float>();
  const Tensor rows = Tensor::empty({p.nb, p.lq, p.nh, p.dv});
  Tensor out = rows.transpose(1, 2);  // [B, H, Lq, Dv]
  Tensor lse = Tensor::empty({p.nb, p.nh, p.lq});
  if (out.numel() == 0 && lse.numel() == 0) return {out, lse};
  HWY_DYNAMIC_DISPATCH(attention_forward)
  (p, rows.data<float>(), out.stride(0), out.stride(1), out.stride(2), lse.data<float>());
  return {out, lse};
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                        float scale, bool causal, const Tensor& out, const Tensor& lse,
                        const Tensor& grad_out, Tensor* grad_q, Tensor* grad_k, Tensor* grad_v) {
  attn::Problem p = make_problem(q, k, v, mask, scale, causal);
  const Tensor kt = transpose_keys(p, &p.ldkt);
  p.kt = kt.data<float>();
  *grad_q = Tensor::zeros(q.shape());
  *grad_k = Tensor::zeros(k.shape());
  *grad_v = Tensor::zeros(v.shape());
  if (q.numel() == 0 || k.numel() == 0) return;
  HWY_DYNAMIC_DISPATCH(attention_backward)
  (p, out.data<float>(), lse.data<float>(), grad_out.data<float>(), grad_q->data<float>(),
   grad_k->data<float>(), grad_v->data<float>());
}

}  // namespace

void fill_fast_attention(KernelTable& t) {
  t.attention = attention;
  t.attention_backward = attention_backward;
}

}  // namespace stipple::cpu
#endif  // HWY_ONCE

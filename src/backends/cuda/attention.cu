// CUDA scaled dot-product attention, forward and backward, with the semantics of the reference
// (src/backends/cpu/ref_attention.cc): s_ij = scale * q_i . k_j + mask_ij, -inf where causal and
// j > i; out_i = softmax_j(s_i) @ v; lse_i = log sum_j exp(s_ij); a row whose scores are all -inf
// gives out_i = 0, lse_i = -inf and no gradient.
//
// Forward (flash-style, Dao et al. 2022, Alg. 1): a warp per query row, a block of kWarps rows
// shares 32-key tiles of K and V in shared memory; lane j scores key j of the tile, and the row
// keeps a running max, sum and output (online softmax), so the Lq x Lk scores never exist in
// memory. Backward recomputes the probabilities from the saved lse: one kernel per query row for
// dQ (tiles over keys), one per key row for dK and dV (tiles over queries), so every gradient is
// written by exactly one warp: no atomics, deterministic. Plain CUDA cores, f32 throughout; head
// dims up to 256.
#include <cmath>

#include "backends/cuda/internal.h"

namespace stipple::cuda {
namespace {

constexpr int kWarps = 8;     // rows per block
constexpr int kTile = 32;     // keys (or queries) per shared-memory tile: one per lane
constexpr int kMaxHead = 256;  // head dims up to 8 values per lane
constexpr int kPerLane = kMaxHead / 32;

struct MaskArg {
  const float* p = nullptr;
  int64_t sb = 0, sh = 0, si = 0, sj = 0;
  __device__ __forceinline__ float at(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return p ? p[b * sb + h * sh + i * si + j * sj] : 0.0f;
  }
};

struct Dims {
  int64_t nh, lq, lk, d, dv;
  float scale;
  bool causal;
};

// The keys a block of kWarps query rows (starting at row blockIdx.x * kWarps) looks at: all of
// them, or under causal masking none past the block's last row.
__device__ int64_t key_end(const Dims& dm) {
  if (!dm.causal) return dm.lk;
  const int64_t last = blockIdx.x * int64_t{kWarps} + kWarps - 1;
  const int64_t last_row = last < dm.lq ? last : dm.lq - 1;
  return last_row + 1 < dm.lk ? last_row + 1 : dm.lk;
}

// A shared-memory row stride whose lanes (row j, same column) fall in distinct banks.
__host__ __device__ inline int64_t padded(int64_t n) { return n % 2 == 0 ? n + 1 : n; }

// Copies rows [r0, r0 + kTile) of a [rows, cols] matrix into smem [kTile][stride], zero past rows.
__device__ void load_tile(const float* src, int64_t r0, int64_t rows, int64_t cols, float* dst,
                          int64_t stride) {
  for (int64_t t = threadIdx.x; t < kTile * cols; t += blockDim.x) {
    const int64_t r = t / cols, c = t % cols;
    dst[r * stride + c] = r0 + r < rows ? src[(r0 + r) * cols + c] : 0.0f;
  }
}

__device__ __forceinline__ float dot_smem(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
  for (int64_t e = 0; e < n; ++e) acc = fmaf(a[e], b[e], acc);
  return acc;
}

// grid (ceil(lq / kWarps), B * H), kWarps * 32 threads.
__global__ void attention_forward_kernel(const float* q, const float* k, const float* v,
                                         MaskArg mask, Dims dm, float* out, float* lse) {
  extern __shared__ float smem[];
  const int64_t ks_stride = padded(dm.d);
  float* ks = smem;                           // [kTile][ks_stride]
  float* vs = ks + kTile * ks_stride;         // [kTile][dv]
  float* qs = vs + kTile * dm.dv;             // [kWarps][d]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / dm.nh, h = bh % dm.nh;
  const int64_t i = blockIdx.x * int64_t{kWarps} + warp;
  const bool active = i < dm.lq;
  const float* kh = k + bh * dm.lk * dm.d;
  const float* vh = v + bh * dm.lk * dm.dv;
  float* qrow = qs + warp * dm.d;
  if (active)
    for (int64_t e = lane; e < dm.d; e += 32) qrow[e] = q[(bh * dm.lq + i) * dm.d + e];

  const int64_t kend = key_end(dm);
  float m = -INFINITY, l = 0.0f;
  float acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.0f;

  for (int64_t j0 = 0; j0 < kend; j0 += kTile) {
    __syncthreads();  // the previous tile is no longer read (and q rows are written)
    load_tile(kh, j0, dm.lk, dm.d, ks, ks_stride);
    load_tile(vh, j0, dm.lk, dm.dv, vs, dm.dv);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    float s = -INFINITY;
    if (j < dm.lk && !(dm.causal && j > i))
      s = dm.scale * dot_smem(qrow, ks + lane * ks_stride, dm.d) + mask.at(b, h, i, j);
    const float m_new = fmaxf(m, warp_max(s));
    if (m_new == -INFINITY) continue;  // nothing unblocked yet
    const float p = s == -INFINITY ? 0.0f : expf(s - m_new);
    const float corr = m == -INFINITY ? 0.0f : expf(m - m_new);
    l = l * corr + warp_sum(p);
    m = m_new;
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) acc[t] *= corr;
    for (int jj = 0; jj < kTile; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      if (pj == 0.0f) continue;  // warp-uniform: every lane got the same pj
      const float* vrow = vs + jj * dm.dv;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int64_t e = lane + 32 * t;
        if (e < dm.dv) acc[t] = fmaf(pj, vrow[e], acc[t]);
      }
    }
  }
  if (!active) return;
  float* orow = out + (bh * dm.lq + i) * dm.dv;
  const bool any = l > 0.0f;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t e = lane + 32 * t;
    if (e < dm.dv) orow[e] = any ? acc[t] / l : 0.0f;
  }
  if (lane == 0) lse[bh * dm.lq + i] = any ? m + logf(l) : -INFINITY;
}

// D_i = dO_i . O_i, a warp per row.
__global__ void row_dot_kernel(const float* a, const float* b, float* out, int64_t rows,
                               int64_t n) {
  const int64_t r = blockIdx.x * int64_t{blockDim.x / 32} + (threadIdx.x >> 5);
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  float acc = 0.0f;
  for (int64_t e = lane; e < n; e += 32) acc = fmaf(a[r * n + e], b[r * n + e], acc);
  acc = warp_sum(acc);
  if (lane == 0) out[r] = acc;
}

// dQ_i = scale * sum_j P_ij (dP_ij - D_i) K_j, dP_ij = dO_i . V_j. A warp per query row.
__global__ void attention_dq_kernel(const float* q, const float* k, const float* v,
                                    const float* go, const float* lse, const float* di,
                                    MaskArg mask, Dims dm, float* gq) {
  extern __shared__ float smem[];
  const int64_t ks_stride = padded(dm.d), vs_stride = padded(dm.dv);
  float* ks = smem;                      // [kTile][ks_stride]
  float* vs = ks + kTile * ks_stride;    // [kTile][vs_stride]
  float* qs = vs + kTile * vs_stride;    // [kWarps][d]
  float* gos = qs + kWarps * dm.d;       // [kWarps][dv]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / dm.nh, h = bh % dm.nh;
  const int64_t i = blockIdx.x * int64_t{kWarps} + warp;
  const float row_lse = i < dm.lq ? lse[bh * dm.lq + i] : -INFINITY;
  const bool active = i < dm.lq && row_lse != -INFINITY;
  const float row_d = i < dm.lq ? di[bh * dm.lq + i] : 0.0f;
  float* qrow = qs + warp * dm.d;
  float* gorow = gos + warp * dm.dv;
  if (active) {
    for (int64_t e = lane; e < dm.d; e += 32) qrow[e] = q[(bh * dm.lq + i) * dm.d + e];
    for (int64_t e = lane; e < dm.dv; e += 32) gorow[e] = go[(bh * dm.lq + i) * dm.dv + e];
  }
  const int64_t kend = key_end(dm);
  float acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.0f;
  const float* kh = k + bh * dm.lk * dm.d;
  const float* vh = v + bh * dm.lk * dm.dv;
  for (int64_t j0 = 0; j0 < kend; j0 += kTile) {
    __syncthreads();
    load_tile(kh, j0, dm.lk, dm.d, ks, ks_stride);
    load_tile(vh, j0, dm.lk, dm.dv, vs, vs_stride);
    __syncthreads();
    if (!active) continue;
    const int64_t j = j0 + lane;
    float ds = 0.0f;
    if (j < dm.lk && !(dm.causal && j > i)) {
      const float s =
          dm.scale * dot_smem(qrow, ks + lane * ks_stride, dm.d) + mask.at(b, h, i, j);
      if (s != -INFINITY) {
        const float p = expf(s - row_lse);
        const float dp = dot_smem(gorow, vs + lane * vs_stride, dm.dv);
        ds = p * (dp - row_d) * dm.scale;
      }
    }
    for (int jj = 0; jj < kTile; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj == 0.0f) continue;
      const float* krow = ks + jj * ks_stride;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int64_t e = lane + 32 * t;
        if (e < dm.d) acc[t] = fmaf(dsj, krow[e], acc[t]);
      }
    }
  }
  if (i >= dm.lq) return;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t e = lane + 32 * t;
    if (e < dm.d) gq[(bh * dm.lq + i) * dm.d + e] = acc[t];
  }
}

// dV_j = sum_i P_ij dO_i, dK_j = scale * sum_i P_ij (dP_ij - D_i) Q_i. A warp per key row.
__global__ void attention_dkdv_kernel(const float* q, const float* k, const float* v,
                                      const float* go, const float* lse, const float* di,
                                      MaskArg mask, Dims dm, float* gk, float* gv) {
  extern __shared__ float smem[];
  const int64_t qs_stride = padded(dm.d), gos_stride = padded(dm.dv);
  float* qs = smem;                         // [kTile][qs_stride]
  float* gos = qs + kTile * qs_stride;      // [kTile][gos_stride]
  float* lses = gos + kTile * gos_stride;   // [kTile]
  float* dis = lses + kTile;                // [kTile]
  float* kr = dis + kTile;                  // [kWarps][d]
  float* vr = kr + kWarps * dm.d;           // [kWarps][dv]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t bh = blockIdx.y, b = bh / dm.nh, h = bh % dm.nh;
  const int64_t j = blockIdx.x * int64_t{kWarps} + warp;
  const bool active = j < dm.lk;
  float* krow = kr + warp * dm.d;
  float* vrow = vr + warp * dm.dv;
  if (active) {
    for (int64_t e = lane; e < dm.d; e += 32) krow[e] = k[(bh * dm.lk + j) * dm.d + e];
    for (int64_t e = lane; e < dm.dv; e += 32) vrow[e] = v[(bh * dm.lk + j) * dm.dv + e];
  }
  // Under causal masking, queries before the block's first key see none of its keys.
  int64_t i_start = 0;
  if (dm.causal) i_start = (blockIdx.x * int64_t{kWarps}) / kTile * kTile;
  float acc_k[kPerLane], acc_v[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc_k[t] = acc_v[t] = 0.0f;
  const float* qh = q + bh * dm.lq * dm.d;
  const float* goh = go + bh * dm.lq * dm.dv;
  for (int64_t i0 = i_start; i0 < dm.lq; i0 += kTile) {
    __syncthreads();
    load_tile(qh, i0, dm.lq, dm.d, qs, qs_stride);
    load_tile(goh, i0, dm.lq, dm.dv, gos, gos_stride);
    if (threadIdx.x < kTile) {
      const int64_t ii = i0 + threadIdx.x;
      lses[threadIdx.x] = ii < dm.lq ? lse[bh * dm.lq + ii] : -INFINITY;
      dis[threadIdx.x] = ii < dm.lq ? di[bh * dm.lq + ii] : 0.0f;
    }
    __syncthreads();
    if (!active) continue;
    const int64_t i = i0 + lane;
    float p = 0.0f, ds = 0.0f;
    const float row_lse = lses[lane];
    if (i < dm.lq && row_lse != -INFINITY && !(dm.causal && j > i)) {
      const float s =
          dm.scale * dot_smem(qs + lane * qs_stride, krow, dm.d) + mask.at(b, h, i, j);
      if (s != -INFINITY) {
        p = expf(s - row_lse);
        const float dp = dot_smem(gos + lane * gos_stride, vrow, dm.dv);
        ds = p * (dp - dis[lane]) * dm.scale;
      }
    }
    for (int ii = 0; ii < kTile; ++ii) {
      const float pi = __shfl_sync(0xffffffffu, p, ii);
      const float dsi = __shfl_sync(0xffffffffu, ds, ii);
      if (pi == 0.0f && dsi == 0.0f) continue;
      const float* qrow = qs + ii * qs_stride;
      const float* gorow = gos + ii * gos_stride;
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int64_t e = lane + 32 * t;
        if (e < dm.dv) acc_v[t] = fmaf(pi, gorow[e], acc_v[t]);
        if (e < dm.d) acc_k[t] = fmaf(dsi, qrow[e], acc_k[t]);
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int64_t e = lane + 32 * t;
    if (e < dm.d) gk[(bh * dm.lk + j) * dm.d + e] = acc_k[t];
    if (e < dm.dv) gv[(bh * dm.lk + j) * dm.dv + e] = acc_v[t];
  }
}

MaskArg mask_arg(const Tensor& mask) {
  MaskArg m;
  if (!mask.defined()) return m;
  require_f32(mask, "attention mask", false);
  m.p = cf(mask);
  m.sb = mask.stride(0), m.sh = mask.stride(1), m.si = mask.stride(2), m.sj = mask.stride(3);
  return m;
}

Dims dims_of(const Tensor& q, const Tensor& k, const Tensor& v, float scale, bool causal) {
  Dims d{q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), scale, causal};
  STIPPLE_CHECK_KIND(d.d <= kMaxHead && d.dv <= kMaxHead, kUnsupported,
                     "CUDA attention: head dims up to ", kMaxHead, " are supported, not ", d.d,
                     " / ", d.dv);
  return d;
}

// Launches with `smem` bytes of dynamic shared memory, raising the kernel's limit past 48 KiB.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, size_t smem, Args... args) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  kernel<<<grid, kWarps * 32, smem, stream()>>>(args...);
  CUDA_CHECK_LAUNCH();
}

dim3 grid_for(int64_t rows, int64_t heads) {
  STIPPLE_CHECK(heads <= 65535, "CUDA attention: batch * heads ", heads, " exceeds 65535");
  return dim3(static_cast<unsigned>((rows + kWarps - 1) / kWarps), static_cast<unsigned>(heads));
}

AttentionResult cuda_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                               const Tensor& mask, float scale, bool causal) {
  const Tensor q = as_f32_contiguous(q_in), k = as_f32_contiguous(k_in),
               v = as_f32_contiguous(v_in);
  const Dims dm = dims_of(q, k, v, scale, causal);
  const int64_t nbh = q.size(0) * dm.nh;
  AttentionResult r{dev_empty({q.size(0), dm.nh, dm.lq, dm.dv}),
                    dev_empty({q.size(0), dm.nh, dm.lq})};
  if (nbh == 0 || dm.lq == 0) return r;
  const size_t smem =
      sizeof(float) * (kTile * padded(dm.d) + kTile * dm.dv + kWarps * dm.d);
  launch(attention_forward_kernel, grid_for(dm.lq, nbh), smem, cf(q), cf(k), cf(v),
         mask_arg(mask), dm, mf(r.out), mf(r.lse));
  return r;
}

void cuda_attention_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                             const Tensor& mask, float scale, bool causal, const Tensor& out_in,
                             const Tensor& lse_in, const Tensor& grad_out_in, Tensor* grad_q,
                             Tensor* grad_k, Tensor* grad_v) {
  const Tensor q = as_f32_contiguous(q_in), k = as_f32_contiguous(k_in),
               v = as_f32_contiguous(v_in), out = as_f32_contiguous(out_in),
               lse = as_f32_contiguous(lse_in), go = as_f32_contiguous(grad_out_in);
  const Dims dm = dims_of(q, k, v, scale, causal);
  const int64_t nbh = q.size(0) * dm.nh;
  *grad_q = dev_zeros(q.shape());
  *grad_k = dev_zeros(k.shape());
  *grad_v = dev_zeros(v.shape());
  if (nbh == 0 || dm.lq == 0 || dm.lk == 0) return;
  const MaskArg ma = mask_arg(mask);
  Tensor di = dev_empty({nbh * dm.lq});
  const int64_t rows = nbh * dm.lq;
  row_dot_kernel<<<static_cast<unsigned>((rows + kWarps - 1) / kWarps), kWarps * 32, 0,
                   stream()>>>(cf(go), cf(out), mf(di), rows, dm.dv);
  CUDA_CHECK_LAUNCH();
  const size_t smem_dq = sizeof(float) * (kTile * padded(dm.d) + kTile * padded(dm.dv) +
                                          kWarps * (dm.d + dm.dv));
  launch(attention_dq_kernel, grid_for(dm.lq, nbh), smem_dq, cf(q), cf(k), cf(v), cf(go),
         cf(lse), cf(di), ma, dm, mf(*grad_q));
  const size_t smem_kv = sizeof(float) * (kTile * padded(dm.d) + kTile * padded(dm.dv) +
                                          2 * kTile + kWarps * (dm.d + dm.dv));
  launch(attention_dkdv_kernel, grid_for(dm.lk, nbh), smem_kv, cf(q), cf(k), cf(v), cf(go),
         cf(lse), cf(di), ma, dm, mf(*grad_k), mf(*grad_v));
}

}  // namespace

void fill_cuda_attention(KernelTable& t) {
  t.attention = cuda_attention;
  t.attention_backward = cuda_attention_backward;
}

}  // namespace stipple::cuda

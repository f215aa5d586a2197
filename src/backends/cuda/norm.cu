// CUDA normalisation kernels: layer norm and group norm, forward and backward. Statistics
// accumulate in double and outputs are computed from the double mean and rstd, as in the
// reference (src/backends/cpu/ref_norm.cc); the saved mean and rstd are their f32 roundings, and
// the backward reads those, as the reference does. Only the plain layout: a channel-blocked
// tensor never lives on the device.
#include <algorithm>
#include <cmath>

#include "backends/cuda/internal.h"

namespace stipple::cuda {
namespace {

constexpr int kNormThreads = 512;

unsigned grid_of(int64_t n) { return n < (1 << 30) ? static_cast<unsigned>(n) : (1u << 30); }

// The mean and 1/sqrt(var + eps) of the contiguous run x[0, n), in double, two passes (as the
// reference); every thread of the block takes part and gets them.
__device__ void run_stats(const float* x, int64_t n, float eps, double* scratch, double* mu,
                          double* rs) {
  double sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += x[i];
  sum = block_sum(sum, scratch);
  const double m = n > 0 ? sum / n : 0.0;
  double sq = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sq += (x[i] - m) * (x[i] - m);
  sq = block_sum(sq, scratch);
  *mu = m;
  *rs = 1.0 / sqrt((n > 0 ? sq / n : 0.0) + eps);
}

// ---- layer norm: x [rows, D], a block per row ----

__global__ void layer_norm_kernel(const float* x, const float* w, const float* b, float* y,
                                  float* mean, float* rstd, int64_t rows, int64_t d, float eps) {
  __shared__ double scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* xr = x + r * d;
    double mu, rs;
    run_stats(xr, d, eps, scratch, &mu, &rs);
    if (threadIdx.x == 0) {
      mean[r] = static_cast<float>(mu);
      rstd[r] = static_cast<float>(rs);
    }
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const double wi = w ? w[i] : 1.0, bi = b ? b[i] : 0.0;
      y[r * d + i] = static_cast<float>((xr[i] - mu) * rs * wi + bi);
    }
  }
}

__global__ void layer_norm_backward_kernel(const float* x, const float* gy, const float* w,
                                           const float* mean, const float* rstd, float* gx,
                                           int64_t rows, int64_t d) {
  __shared__ double scratch[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const double mu = mean[r], rs = rstd[r];
    double s1 = 0, s2 = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const double xh = (x[r * d + i] - mu) * rs;
      const double dxh = double{gy[r * d + i]} * (w ? w[i] : 1.0);
      s1 += dxh;
      s2 += dxh * xh;
    }
    s1 = block_sum(s1, scratch);
    s2 = block_sum(s2, scratch);
    const double m1 = s1 / d, m2 = s2 / d;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const double xh = (x[r * d + i] - mu) * rs;
      const double wi = w ? w[i] : 1.0;
      gx[r * d + i] = static_cast<float>(rs * (gy[r * d + i] * wi - m1 - xh * m2));
    }
  }
}

// Column sums for grad_w (dy * xhat) and grad_b (dy): a thread per column, chunk blockIdx.y of
// the rows; partial[(chunk * 2 + {0, 1}) * d + col].
__global__ void layer_norm_param_grad_kernel(const float* x, const float* gy, const float* mean,
                                             const float* rstd, double* partial, int64_t rows,
                                             int64_t d, int64_t chunk) {
  const int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (col >= d) return;
  const int64_t r0 = blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  double gw = 0, gb = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const double dy = gy[r * d + col];
    gw += dy * ((x[r * d + col] - double{mean[r]}) * rstd[r]);
    gb += dy;
  }
  partial[(blockIdx.y * 2 + 0) * d + col] = gw;
  partial[(blockIdx.y * 2 + 1) * d + col] = gb;
}

__global__ void finish_param_grad_kernel(const double* partial, float* gw, float* gb, int64_t d,
                                         int64_t chunks) {
  const int64_t col = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (col >= d) return;
  double w = 0, b = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    w += partial[(c * 2 + 0) * d + col];
    b += partial[(c * 2 + 1) * d + col];
  }
  if (gw) gw[col] = static_cast<float>(w);
  if (gb) gb[col] = static_cast<float>(b);
}

const float* opt_ptr(const Tensor& t, const char* what) {
  if (!t.defined()) return nullptr;
  require_f32(t, what);
  return cf(t);
}

LayerNormResult cuda_layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                float eps) {
  require_f32(x, "layer_norm input");
  const int64_t rows = x.size(0), d = x.size(1);
  LayerNormResult r{dev_empty(x.shape()), dev_empty({rows}), dev_empty({rows})};
  if (rows == 0) return r;
  layer_norm_kernel<<<grid_of(rows), kNormThreads, 0, stream()>>>(
      cf(x), opt_ptr(weight, "layer_norm weight"), opt_ptr(bias, "layer_norm bias"), mf(r.out),
      mf(r.mean), mf(r.rstd), rows, d, eps);
  CUDA_CHECK_LAUNCH();
  return r;
}

Tensor cuda_layer_norm_backward(const Tensor& x, const Tensor& grad_y, const Tensor& weight,
                                const Tensor& mean, const Tensor& rstd, Tensor* grad_w,
                                Tensor* grad_b) {
  require_f32(x, "layer_norm_backward x");
  require_f32(grad_y, "layer_norm_backward grad");
  require_f32(mean, "layer_norm_backward mean");
  require_f32(rstd, "layer_norm_backward rstd");
  const int64_t rows = x.size(0), d = x.size(1);
  Tensor gx = dev_empty(x.shape());
  if (rows > 0 && d > 0) {
    layer_norm_backward_kernel<<<grid_of(rows), kNormThreads, 0, stream()>>>(
        cf(x), cf(grad_y), opt_ptr(weight, "layer_norm weight"), cf(mean), cf(rstd), mf(gx),
        rows, d);
    CUDA_CHECK_LAUNCH();
  }
  if (!grad_w && !grad_b) return gx;
  if (grad_w) *grad_w = dev_empty({d});
  if (grad_b) *grad_b = dev_empty({d});
  if (d == 0) return gx;
  // Chunks of rows so that about 64k threads run, each over at least 32 rows.
  int64_t chunks = (int64_t{64} * 1024) / d;
  if (chunks > (rows + 31) / 32) chunks = (rows + 31) / 32;
  if (chunks > 4096) chunks = 4096;
  if (chunks < 1) chunks = 1;
  const int64_t chunk = rows > 0 ? (rows + chunks - 1) / chunks : 1;
  chunks = rows > 0 ? (rows + chunk - 1) / chunk : 1;
  Tensor partial = dev_zeros({chunks, 2, d}, DType::kF64);
  double* pp = static_cast<double*>(partial.raw_data());
  if (rows > 0) {
    layer_norm_param_grad_kernel<<<dim3(blocks_for(d), static_cast<unsigned>(chunks)), kThreads, 0,
                                   stream()>>>(cf(x), cf(grad_y), cf(mean), cf(rstd), pp, rows, d,
                                               chunk);
    CUDA_CHECK_LAUNCH();
  }
  finish_param_grad_kernel<<<blocks_for(d), kThreads, 0, stream()>>>(
      pp, grad_w ? mf(*grad_w) : nullptr, grad_b ? mf(*grad_b) : nullptr, d, chunks);
  CUDA_CHECK_LAUNCH();
  return gx;
}

// ---- group norm: x [N, C, S], a block per (n, group); a group is a contiguous run ----

__global__ void group_norm_kernel(const float* x, const float* w, const float* b, float* y,
                                  float* mean, float* rstd, int64_t n_groups_total,
                                  int64_t groups, int64_t cpg, int64_t spatial, float eps) {
  __shared__ double scratch[32];
  const int64_t len = cpg * spatial;
  for (int64_t ng = blockIdx.x; ng < n_groups_total; ng += gridDim.x) {
    const float* xg = x + ng * len;
    float* yg = y + ng * len;
    const int64_t c0 = (ng % groups) * cpg;
    double mu, rs;
    run_stats(xg, len, eps, scratch, &mu, &rs);
    if (threadIdx.x == 0) {
      mean[ng] = static_cast<float>(mu);
      rstd[ng] = static_cast<float>(rs);
    }
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      const int64_t c = c0 + i / spatial;
      const double wc = w ? w[c] : 1.0, bc = b ? b[c] : 0.0;
      yg[i] = static_cast<float>((xg[i] - mu) * rs * wc + bc);
    }
  }
}

__global__ void group_norm_backward_kernel(const float* x, const float* gy, const float* w,
                                           const float* mean, const float* rstd, float* gx,
                                           int64_t n_groups_total, int64_t groups, int64_t cpg,
                                           int64_t spatial) {
  __shared__ double scratch[32];
  const int64_t len = cpg * spatial;
  for (int64_t ng = blockIdx.x; ng < n_groups_total; ng += gridDim.x) {
    const float* xg = x + ng * len;
    const float* gg = gy + ng * len;
    const int64_t c0 = (ng % groups) * cpg;
    const double mu = mean[ng], rs = rstd[ng];
    double s1 = 0, s2 = 0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      const double xh = (xg[i] - mu) * rs;
      const double dxh = double{gg[i]} * (w ? w[c0 + i / spatial] : 1.0);
      s1 += dxh;
      s2 += dxh * xh;
    }
    s1 = block_sum(s1, scratch);
    s2 = block_sum(s2, scratch);
    const double m1 = len > 0 ? s1 / len : 0.0, m2 = len > 0 ? s2 / len : 0.0;
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
      const double xh = (xg[i] - mu) * rs;
      const double wc = w ? w[c0 + i / spatial] : 1.0;
      gx[ng * len + i] = static_cast<float>(rs * (gg[i] * wc - m1 - xh * m2));
    }
  }
}

// grad_w[c] = sum over n, s of dy * xhat; grad_b[c] = sum of dy. A block per channel.
__global__ void group_norm_param_grad_kernel(const float* x, const float* gy, const float* mean,
                                             const float* rstd, float* gw, float* gb, int64_t n,
                                             int64_t channels, int64_t groups, int64_t spatial) {
  __shared__ double scratch[32];
  const int64_t c = blockIdx.x, cpg = channels / groups, g = c / cpg;
  double sw = 0, sb = 0;
  for (int64_t img = 0; img < n; ++img) {
    const double mu = mean[img * groups + g], rs = rstd[img * groups + g];
    const int64_t row = (img * channels + c) * spatial;
    for (int64_t s = threadIdx.x; s < spatial; s += blockDim.x) {
      const double dy = gy[row + s];
      sw += dy * ((x[row + s] - mu) * rs);
      sb += dy;
    }
  }
  sw = block_sum(sw, scratch);
  sb = block_sum(sb, scratch);
  if (threadIdx.x == 0) {
    if (gw) gw[c] = static_cast<float>(sw);
    if (gb) gb[c] = static_cast<float>(sb);
  }
}

GroupNormResult cuda_group_norm(const Tensor& x, int64_t groups, const Tensor& weight,
                                const Tensor& bias, float eps) {
  require_f32(x, "group_norm input");
  const int64_t n = x.size(0), channels = x.size(1);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, n * channels);
  const int64_t cpg = channels / groups;
  GroupNormResult r{dev_empty(x.shape()), dev_empty({n, groups}), dev_empty({n, groups})};
  if (n * groups == 0) return r;
  group_norm_kernel<<<grid_of(n * groups), kNormThreads, 0, stream()>>>(
      cf(x), opt_ptr(weight, "group_norm weight"), opt_ptr(bias, "group_norm bias"), mf(r.out),
      mf(r.mean), mf(r.rstd), n * groups, groups, cpg, spatial, eps);
  CUDA_CHECK_LAUNCH();
  return r;
}

Tensor cuda_group_norm_backward(const Tensor& x, const Tensor& grad_y, int64_t groups,
                                const Tensor& weight, const Tensor& mean, const Tensor& rstd,
                                Tensor* grad_w, Tensor* grad_b) {
  require_f32(x, "group_norm_backward x");
  require_f32(grad_y, "group_norm_backward grad");
  require_f32(mean, "group_norm_backward mean");
  require_f32(rstd, "group_norm_backward rstd");
  const int64_t n = x.size(0), channels = x.size(1);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, n * channels);
  const int64_t cpg = channels / groups;
  const float* w = opt_ptr(weight, "group_norm weight");
  Tensor gx = dev_empty(x.shape());
  if (n * groups > 0) {
    group_norm_backward_kernel<<<grid_of(n * groups), kNormThreads, 0, stream()>>>(
        cf(x), cf(grad_y), w, cf(mean), cf(rstd), mf(gx), n * groups, groups, cpg, spatial);
    CUDA_CHECK_LAUNCH();
  }
  if (grad_w) *grad_w = dev_empty({channels});
  if (grad_b) *grad_b = dev_empty({channels});
  if ((grad_w || grad_b) && channels > 0) {
    group_norm_param_grad_kernel<<<static_cast<unsigned>(channels), kThreads, 0, stream()>>>(
        cf(x), cf(grad_y), cf(mean), cf(rstd), grad_w ? mf(*grad_w) : nullptr,
        grad_b ? mf(*grad_b) : nullptr, n, channels, groups, spatial);
    CUDA_CHECK_LAUNCH();
  }
  return gx;
}

}  // namespace

void fill_cuda_norm(KernelTable& t) {
  t.layer_norm = cuda_layer_norm;
  t.layer_norm_backward = cuda_layer_norm_backward;
  t.group_norm = cuda_group_norm;
  t.group_norm_backward = cuda_group_norm_backward;
}

}  // namespace stipple::cuda

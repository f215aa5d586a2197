// CUDA linear algebra: batched matmul on cuBLAS, and 2-D convolution (forward, backward data,
// backward weight) as im2col + cuBLAS GEMM.
//
// Precision: matmul_bf16 (ops::MatmulPrecision::kBF16) rounds both operands to bf16 on the device
// and runs cuBLAS's bf16 x bf16 GEMM with f32 accumulation and f32 output (bf16 tensor cores on
// sm_80 and later): the products of the rounded values are exact in f32, as in the CPU twins.
// f32 GEMMs use TF32 tensor cores unless STIPPLE_CUDA_TF32=0 (10-bit mantissa inputs,
// f32 accumulation: relative error around 1e-3 against the reference's double sums, the same
// trade PyTorch makes for convolutions by default). Half-precision conv weights are widened to
// f32 first.
//
// Convolution layout: always plain NCHW (allow_blocked is ignored; the blocked layout is a CPU
// format). im2col expands a chunk of images into columns [C*kh*kw, Ho*Wo] of at most
// kColBudget bytes (at least one image), so memory stays bounded at large resolutions; 1x1
// convolutions with stride 1 and no padding skip it and multiply the input directly.
#include <climits>

#include "backends/cuda/internal.h"

namespace stipple::cuda {

namespace {

// C = alpha op(A) op(B) + beta C in cuBLAS's strided-batched form, A and B of type `ab` (f32 or
// bf16), C f32, with the given compute type.
void gemm_ex(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
             int64_t lda, int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
             cudaDataType_t ab, float beta, float* c, int64_t ldc, int64_t stride_c,
             int64_t batch, cublasComputeType_t compute) {
  if (m == 0 || n == 0 || batch == 0) return;
  STIPPLE_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX &&
                    ldb <= INT_MAX && ldc <= INT_MAX && batch <= INT_MAX,
                "CUDA GEMM: a dimension exceeds 2^31 (", m, " x ", n, " x ", k, ", batch ", batch,
                ")");
  // cuBLAS is column-major: a row-major C [m, n] is a column-major C^T [n, m], and
  // C^T = op(B)^T op(A)^T, so B goes first with the operands' own row-major leading dims.
  CUBLAS_CHECK(cublas_api().gemm_strided_batched_ex(
      cublas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b, ab,
      static_cast<int>(ldb), stride_b, a, ab, static_cast<int>(lda), stride_a, &beta, c,
      CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch), compute,
      CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
              int64_t lda, int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
              float beta, float* c, int64_t ldc, int64_t stride_c, int64_t batch) {
  gemm_ex(ta, tb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, CUDA_R_32F, beta, c, ldc,
          stride_c, batch, tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
}

namespace {

// The operands' geometry and the output of a batched matmul (kernels.h's convention), and the
// call that fills it: `gemm(ta, tb, m, n, k, lda, stride_a, ldb, stride_b, ldc, stride_c, batch)`
// with strides in elements, the A and B pointers bound by the caller.
template <typename Gemm>
Tensor batched_matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b,
                      const Gemm& gemm) {
  const int64_t ba = a.size(0), bb = b.size(0);
  const int64_t m = trans_a ? a.size(2) : a.size(1);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  const int64_t n = trans_b ? b.size(1) : b.size(2);
  const int64_t batch = ba > bb ? ba : bb;
  Tensor out = dev_empty({batch, m, n});
  if (out.numel() == 0) return out;
  if (k == 0) {
    fill_zero(out.raw_data(), static_cast<size_t>(out.numel()) * sizeof(float));
    return out;
  }
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  if (bb == 1 && !trans_a)  // a shared right operand: the batch folds into the rows of one GEMM
    gemm(false, trans_b, batch * m, n, k, lda, 0, ldb, 0, mf(out), n, 0, 1);
  else
    gemm(trans_a, trans_b, m, n, k, lda, ba == 1 ? 0 : m * k, ldb, bb == 1 ? 0 : k * n, mf(out),
         n, m * n, batch);
  return out;
}

Tensor cuda_matmul(const Tensor& a_in, const Tensor& b_in, bool trans_a, bool trans_b) {
  const Tensor a = as_f32_contiguous(a_in);
  const Tensor b = as_f32_contiguous(b_in);
  return batched_matmul(a, b, trans_a, trans_b,
                        [&](bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda,
                            int64_t sa, int64_t ldb, int64_t sb, float* c, int64_t ldc,
                            int64_t sc, int64_t batch) {
                          gemm_f32(ta, tb, m, n, k, 1.0f, cf(a), lda, sa, cf(b), ldb, sb, 0.0f,
                                   c, ldc, sc, batch);
                        });
}

// Both operands rounded to bf16 (bf16 ones taken as they are), then the bf16 GEMM.
Tensor cuda_matmul_bf16(const Tensor& a_in, const Tensor& b_in, bool trans_a, bool trans_b) {
  const Tensor a = as_contiguous(a_in, DType::kBF16);
  const Tensor b = as_contiguous(b_in, DType::kBF16);
  return batched_matmul(a, b, trans_a, trans_b,
                        [&](bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda,
                            int64_t sa, int64_t ldb, int64_t sb, float* c, int64_t ldc,
                            int64_t sc, int64_t batch) {
                          gemm_ex(ta, tb, m, n, k, 1.0f, a.raw_data(), lda, sa, b.raw_data(), ldb,
                                  sb, CUDA_R_16BF, 0.0f, c, ldc, sc, batch, CUBLAS_COMPUTE_32F);
                        });
}

// ---- convolution ----

constexpr int64_t kColBudget = int64_t{256} << 20;

struct Geom {
  int64_t n, c, h, w, o, kh, kw, ho, wo;
  int64_t sh, sw, ph, pw, dh, dw;
  __host__ __device__ int64_t ckk() const { return c * kh * kw; }
  __host__ __device__ int64_t hw_out() const { return ho * wo; }
  bool pointwise() const { return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

Geom make_geom(const Shape& x, const Shape& w, const ops::Conv2dParams& p) {
  Geom g{x[0], x[1], x[2], x[3], w[0], w[2], w[3], 0, 0,
         p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h, p.dilation_w};
  g.ho = (g.h + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.wo = (g.w + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

// Images per im2col chunk.
int64_t images_per_chunk(const Geom& g) {
  const int64_t per_image = g.ckk() * g.hw_out() * static_cast<int64_t>(sizeof(float));
  int64_t nb = per_image > 0 ? kColBudget / per_image : g.n;
  if (nb < 1) nb = 1;
  return nb < g.n ? nb : g.n;
}

// col[img, (c*kh + i)*kw + j, oh*wo + ow] = x[img, c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] or 0.
__global__ void im2col_kernel(const float* x, float* col, int64_t images, Geom g) {
  const int64_t per_image = g.ckk() * g.hw_out();
  const int64_t total = images * per_image;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t ow = t % g.wo, oh = (t / g.wo) % g.ho;
    const int64_t r = (t / g.hw_out()) % g.ckk(), img = t / per_image;
    const int64_t j = r % g.kw, i = (r / g.kw) % g.kh, c = r / (g.kw * g.kh);
    const int64_t ih = oh * g.sh - g.ph + i * g.dh, iw = ow * g.sw - g.pw + j * g.dw;
    col[t] = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w
                 ? x[((img * g.c + c) * g.h + ih) * g.w + iw]
                 : 0.0f;
  }
}

// The adjoint of im2col as a gather: each input pixel sums the columns entries it was copied to.
__global__ void col2im_kernel(const float* col, float* x, int64_t images, Geom g) {
  const int64_t per_image = g.c * g.h * g.w;
  const int64_t total = images * per_image;
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t iw = t % g.w, ih = (t / g.w) % g.h, c = (t / (g.w * g.h)) % g.c;
    const int64_t img = t / per_image;
    const float* cimg = col + img * g.ckk() * g.hw_out();
    float acc = 0.0f;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ohs = ih + g.ph - i * g.dh;
      if (ohs < 0 || ohs % g.sh != 0) continue;
      const int64_t oh = ohs / g.sh;
      if (oh >= g.ho) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t ows = iw + g.pw - j * g.dw;
        if (ows < 0 || ows % g.sw != 0) continue;
        const int64_t ow = ows / g.sw;
        if (ow >= g.wo) continue;
        acc += cimg[((c * g.kh + i) * g.kw + j) * g.hw_out() + oh * g.wo + ow];
      }
    }
    x[t] = acc;
  }
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t total, int64_t o,
                                int64_t plane) {
  for (int64_t t = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; t < total;
       t += int64_t{gridDim.x} * blockDim.x)
    y[t] += bias[(t / plane) % o];
}

// grad_b[o] = sum over images and pixels of gy[n, o, :]; a block per o, double sums.
__global__ void bias_grad_kernel(const float* gy, float* gb, int64_t n, int64_t o, int64_t plane) {
  __shared__ double scratch[32];
  const int64_t oc = blockIdx.x;
  double acc = 0;
  for (int64_t img = 0; img < n; ++img) {
    const float* p = gy + (img * o + oc) * plane;
    for (int64_t s = threadIdx.x; s < plane; s += blockDim.x) acc += p[s];
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) gb[oc] = static_cast<float>(acc);
}

Tensor cuda_conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias,
                   const ops::Conv2dParams& p, bool /*allow_blocked*/) {
  const Tensor x = as_f32_contiguous(x_in);
  const Tensor w = as_f32_contiguous(w_in);  // f16 weights are widened here
  const Geom g = make_geom(x.shape(), w.shape(), p);
  Tensor out = dev_empty({g.n, g.o, g.ho, g.wo});
  if (out.numel() == 0) return out;
  const int64_t hw = g.hw_out(), ckk = g.ckk();
  if (ckk == 0) {
    fill_zero(out.raw_data(), static_cast<size_t>(out.numel()) * sizeof(float));
  } else if (g.pointwise()) {
    // y[n] [O, HW] = w [O, C] @ x[n] [C, HW]
    gemm_f32(false, false, g.o, hw, g.c, 1.0f, cf(w), g.c, 0, cf(x), hw, g.c * hw, 0.0f,
             mf(out), hw, g.o * hw, g.n);
  } else {
    const int64_t nb = images_per_chunk(g);
    Tensor col = dev_empty({nb, ckk, hw});
    for (int64_t n0 = 0; n0 < g.n; n0 += nb) {
      const int64_t cnt = g.n - n0 < nb ? g.n - n0 : nb;
      im2col_kernel<<<blocks_for(cnt * ckk * hw), kThreads, 0, stream()>>>(
          cf(x) + n0 * g.c * g.h * g.w, mf(col), cnt, g);
      CUDA_CHECK_LAUNCH();
      gemm_f32(false, false, g.o, hw, ckk, 1.0f, cf(w), ckk, 0, cf(col), hw, ckk * hw, 0.0f,
               mf(out) + n0 * g.o * hw, hw, g.o * hw, cnt);
    }
  }
  if (bias.defined()) {
    const Tensor b = as_f32_contiguous(bias);
    add_bias_kernel<<<blocks_for(out.numel()), kThreads, 0, stream()>>>(mf(out), cf(b),
                                                                        out.numel(), g.o, hw);
    CUDA_CHECK_LAUNCH();
  }
  return out;
}

Tensor cuda_conv2d_backward_data(const Tensor& grad_y, const Tensor& w_in, const Shape& x_shape,
                                 const ops::Conv2dParams& p) {
  const Tensor gy = as_f32_contiguous(grad_y);
  const Tensor w = as_f32_contiguous(w_in);
  const Geom g = make_geom(x_shape, w.shape(), p);
  Tensor gx = dev_empty(x_shape);
  if (gx.numel() == 0) return gx;
  const int64_t hw = g.hw_out(), ckk = g.ckk();
  if (g.o == 0 || hw == 0) {
    fill_zero(gx.raw_data(), static_cast<size_t>(gx.numel()) * sizeof(float));
    return gx;
  }
  if (g.pointwise()) {
    // gx[n] [C, HW] = w^T [C, O] @ gy[n] [O, HW]
    gemm_f32(true, false, g.c, hw, g.o, 1.0f, cf(w), g.c, 0, cf(gy), hw, g.o * hw, 0.0f, mf(gx),
             hw, g.c * hw, g.n);
    return gx;
  }
  const int64_t nb = images_per_chunk(g);
  Tensor col = dev_empty({nb, ckk, hw});
  for (int64_t n0 = 0; n0 < g.n; n0 += nb) {
    const int64_t cnt = g.n - n0 < nb ? g.n - n0 : nb;
    // col[n] [CKK, HW] = w^T [CKK, O] @ gy[n] [O, HW]
    gemm_f32(true, false, ckk, hw, g.o, 1.0f, cf(w), ckk, 0, cf(gy) + n0 * g.o * hw, hw,
             g.o * hw, 0.0f, mf(col), hw, ckk * hw, cnt);
    const int64_t total = cnt * g.c * g.h * g.w;
    col2im_kernel<<<blocks_for(total), kThreads, 0, stream()>>>(
        cf(col), mf(gx) + n0 * g.c * g.h * g.w, cnt, g);
    CUDA_CHECK_LAUNCH();
  }
  return gx;
}

void cuda_conv2d_backward_weight(const Tensor& x_in, const Tensor& grad_y, const Shape& w_shape,
                                 const ops::Conv2dParams& p, Tensor* grad_w, Tensor* grad_b) {
  const Tensor x = as_f32_contiguous(x_in);
  const Tensor gy = as_f32_contiguous(grad_y);
  const Geom g = make_geom(x.shape(), w_shape, p);
  const int64_t hw = g.hw_out(), ckk = g.ckk();
  if (grad_w) {
    *grad_w = dev_zeros(w_shape);
    if (g.n > 0 && hw > 0 && ckk > 0 && g.o > 0) {
      if (g.pointwise()) {
        for (int64_t img = 0; img < g.n; ++img) {
          // gw [O, C] += gy[img] [O, HW] @ x[img]^T [HW, C]
          gemm_f32(false, true, g.o, g.c, hw, 1.0f, cf(gy) + img * g.o * hw, hw, 0,
                   cf(x) + img * g.c * hw, hw, 0, 1.0f, mf(*grad_w), g.c, 0, 1);
        }
      } else {
        const int64_t nb = images_per_chunk(g);
        Tensor col = dev_empty({nb, ckk, hw});
        for (int64_t n0 = 0; n0 < g.n; n0 += nb) {
          const int64_t cnt = g.n - n0 < nb ? g.n - n0 : nb;
          im2col_kernel<<<blocks_for(cnt * ckk * hw), kThreads, 0, stream()>>>(
              cf(x) + n0 * g.c * g.h * g.w, mf(col), cnt, g);
          CUDA_CHECK_LAUNCH();
          for (int64_t i = 0; i < cnt; ++i) {
            // gw [O, CKK] += gy[n] [O, HW] @ col[n]^T [HW, CKK]
            gemm_f32(false, true, g.o, ckk, hw, 1.0f, cf(gy) + (n0 + i) * g.o * hw, hw, 0,
                     cf(col) + i * ckk * hw, hw, 0, 1.0f, mf(*grad_w), ckk, 0, 1);
          }
        }
      }
    }
  }
  if (grad_b) {
    *grad_b = dev_empty({g.o});
    if (g.o > 0) {
      bias_grad_kernel<<<static_cast<unsigned>(g.o), kThreads, 0, stream()>>>(cf(gy),
                                                                              mf(*grad_b), g.n,
                                                                              g.o, hw);
      CUDA_CHECK_LAUNCH();
    }
  }
}

}  // namespace

void fill_cuda_linalg(KernelTable& t) {
  t.matmul = cuda_matmul;
  t.matmul_bf16 = cuda_matmul_bf16;
  t.native_bf16_matmul = true;  // bf16 tensor cores on every target (sm_80, sm_90)
  t.conv2d = cuda_conv2d;
  t.conv2d_backward_data = cuda_conv2d_backward_data;
  t.conv2d_backward_weight = cuda_conv2d_backward_weight;
}

}  // namespace stipple::cuda

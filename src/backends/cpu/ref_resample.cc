// Reference resampling and lookup kernels: nearest 2x upsampling, 2x2 average pooling, embedding
// lookup, and their gradients. Plain loops over NCHW.
#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

Tensor ref_upsample(const Tensor& x) {
  const Shape& s = x.shape();
  const int64_t nc = s[0] * s[1], H = s[2], W = s[3];
  Tensor out = Tensor::empty({s[0], s[1], 2 * H, 2 * W});
  const float* px = x.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for
  for (int64_t p = 0; p < nc; ++p)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        po[(p * 2 * H + h) * 2 * W + w] = px[(p * H + h / 2) * W + w / 2];
  return out;
}

Tensor ref_upsample_backward(const Tensor& g) {
  const Shape& s = g.shape();
  const int64_t nc = s[0] * s[1], H = s[2] / 2, W = s[3] / 2;
  Tensor out = Tensor::empty({s[0], s[1], H, W});
  const float* pg = g.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for
  for (int64_t p = 0; p < nc; ++p)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const float* r0 = pg + (p * 2 * H + 2 * h) * 2 * W + 2 * w;
        const float* r1 = r0 + 2 * W;
        po[(p * H + h) * W + w] = r0[0] + r0[1] + r1[0] + r1[1];
      }
  return out;
}

Tensor ref_avg_pool(const Tensor& x) {
  const Shape& s = x.shape();
  const int64_t nc = s[0] * s[1], H = s[2] / 2, W = s[3] / 2, W2 = s[3];
  Tensor out = Tensor::empty({s[0], s[1], H, W});
  const float* px = x.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for
  for (int64_t p = 0; p < nc; ++p)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const float* r0 = px + (p * s[2] + 2 * h) * W2 + 2 * w;
        const float* r1 = r0 + W2;
        po[(p * H + h) * W + w] = 0.25f * (r0[0] + r0[1] + r1[0] + r1[1]);
      }
  return out;
}

Tensor ref_avg_pool_backward(const Tensor& g, const Shape& xs) {
  Tensor out = Tensor::zeros(xs);
  const int64_t nc = xs[0] * xs[1], H = xs[2] / 2, W = xs[3] / 2, W2 = xs[3];
  const float* pg = g.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for
  for (int64_t p = 0; p < nc; ++p)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const float v = 0.25f * pg[(p * H + h) * W + w];
        float* r0 = po + (p * xs[2] + 2 * h) * W2 + 2 * w;
        float* r1 = r0 + W2;
        r0[0] = r0[1] = r1[0] = r1[1] = v;
      }
  return out;
}

Tensor ref_embedding(const Tensor& weight, const Tensor& ids) {
  const int64_t V = weight.size(0), D = weight.size(1), n = ids.numel();
  Shape os = ids.shape();
  os.push_back(D);
  Tensor out = Tensor::empty(os);
  const int64_t* pi = ids.data<int64_t>();
  const float* pw = weight.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(pi[i] >= 0 && pi[i] < V, "embedding: id ", pi[i], " out of range [0, ", V, ")");
    for (int64_t d = 0; d < D; ++d) po[i * D + d] = pw[pi[i] * D + d];
  }
  return out;
}

Tensor ref_embedding_backward(const Tensor& g, const Tensor& ids, int64_t vocab) {
  const int64_t D = g.size(-1), n = ids.numel();
  Tensor out = Tensor::zeros({vocab, D});
  const int64_t* pi = ids.data<int64_t>();
  const float* pg = g.data<float>();
  float* po = out.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) po[pi[i] * D + d] += pg[i * D + d];
  return out;
}

}  // namespace

void fill_reference_resample(KernelTable& t) {
  t.upsample_nearest2x = ref_upsample;
  t.upsample_nearest2x_backward = ref_upsample_backward;
  t.avg_pool2x = ref_avg_pool;
  t.avg_pool2x_backward = ref_avg_pool_backward;
  t.embedding = ref_embedding;
  t.embedding_backward = ref_embedding_backward;
}

}  // namespace stipple::cpu

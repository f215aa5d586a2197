#include "pipelines/pipeline_util.h"

#include "core/error.h"
#include "ops/ops.h"

namespace stipple::pipelines {

NoiseSource::NoiseSource(uint64_t seed, std::vector<Tensor> injected)
    : generator_(seed), injected_(std::move(injected)) {}

Tensor NoiseSource::randn(const Shape& shape, const std::string& what) {
  if (next_ < injected_.size()) {
    const Tensor& t = injected_[next_++];
    STIPPLE_CHECK(t.numel() == shape_numel(shape), "injected noise ", next_ - 1, " for ", what,
                  " is ", t.describe(), ", the pipeline draws ", shape_str(shape));
    return t.contiguous().to(DType::kF32).reshape(shape);
  }
  return generator_.randn(shape);
}

Tensor vae_to_unit(const Tensor& x) { return ops::clamp(ops::affine(x, 0.5f, 0.5f), 0.0f, 1.0f); }

Tensor to_nhwc(const Tensor& nchw) { return nchw.permute({0, 2, 3, 1}).contiguous(); }

Tensor resize_nearest(const Tensor& x, int64_t h, int64_t w) {
  STIPPLE_CHECK(x.dim() == 4, "resize_nearest: expected [B, C, H, W], got ", x.describe());
  const int64_t n = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const std::vector<float> in = x.to_vector();
  std::vector<float> out(static_cast<size_t>(n * h * w));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) {
        const int64_t si = std::min(H - 1, i * H / h), sj = std::min(W - 1, j * W / w);
        out[(p * h + i) * w + j] = in[(p * H + si) * W + sj];
      }
  return Tensor::from_vector(out, {x.size(0), x.size(1), h, w});
}

Tensor repeat_batch(const Tensor& x, int64_t n) {
  if (n == 1) return x;
  return ops::concat(std::vector<Tensor>(static_cast<size_t>(n), x), 0);
}

}  // namespace stipple::pipelines

#include "pipelines/pipeline_util.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"

namespace stipple::pipelines {

NoiseSource::NoiseSource(uint64_t seed, std::vector<Tensor> injected, Device device)
    : generator_(seed), injected_(std::move(injected)), device_(device) {}

Tensor NoiseSource::randn(const Shape& shape, const std::string& what) {
  if (next_ < injected_.size()) {
    const Tensor& t = injected_[next_++];
    STIPPLE_CHECK(t.numel() == shape_numel(shape), "injected noise ", next_ - 1, " for ", what,
                  " is ", t.describe(), ", the pipeline draws ", shape_str(shape));
    return t.contiguous().to(DType::kF32).reshape(shape).to(device_);
  }
  return generator_.randn(shape).to(device_);
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
  return Tensor::from_vector(out, {x.size(0), x.size(1), h, w}).to(x.device());
}

namespace {

// Keys' cubic convolution weights for the four taps around a source coordinate with fraction t
// (PyTorch's upsample_bicubic2d: a = -0.75).
void cubic_weights(double t, double w[4]) {
  constexpr double a = -0.75;
  auto near = [](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };           // |x| <= 1
  auto far = [](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };       // 1 < |x| < 2
  w[0] = far(t + 1);
  w[1] = near(t);
  w[2] = near(1 - t);
  w[3] = far(2 - t);
}

// Resamples `rows` lines of `in_len` values (stride 1) to `out_len` values each.
void bicubic_lines(const float* in, float* out, int64_t rows, int64_t in_len, int64_t out_len,
                   int64_t in_stride, int64_t out_stride, int64_t step_in, int64_t step_out) {
  const double scale = static_cast<double>(in_len) / static_cast<double>(out_len);
  for (int64_t o = 0; o < out_len; ++o) {
    const double src = (o + 0.5) * scale - 0.5;
    const double f = std::floor(src);
    double w[4];
    cubic_weights(src - f, w);
    int64_t idx[4];
    for (int k = 0; k < 4; ++k)
      idx[k] = std::clamp<int64_t>(static_cast<int64_t>(f) - 1 + k, 0, in_len - 1);
    for (int64_t r = 0; r < rows; ++r) {
      const float* line = in + r * in_stride;
      double v = 0;
      for (int k = 0; k < 4; ++k) v += w[k] * line[idx[k] * step_in];
      out[r * out_stride + o * step_out] = static_cast<float>(v);
    }
  }
}

}  // namespace

Tensor resize_bicubic(const Tensor& x, int64_t h, int64_t w) {
  STIPPLE_CHECK(x.dim() == 4 && h >= 1 && w >= 1, "resize_bicubic: expected [B, C, H, W] and a "
                "positive size, got ", x.describe(), " to ", h, "x", w);
  const int64_t n = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const std::vector<float> in = x.to_vector();
  // along the width: [n*H, W] -> [n*H, w]
  std::vector<float> mid(static_cast<size_t>(n * H * w));
  bicubic_lines(in.data(), mid.data(), n * H, W, w, W, w, 1, 1);
  // along the height, for each plane: [H, w] -> [h, w], one column at a time
  std::vector<float> out(static_cast<size_t>(n * h * w));
  for (int64_t p = 0; p < n; ++p)
    bicubic_lines(mid.data() + p * H * w, out.data() + p * h * w, w, H, h, 1, 1, w, w);
  return Tensor::from_vector(out, {x.size(0), x.size(1), h, w}).to(x.device());
}

Tensor downsample_area(const Tensor& x, int64_t f) {
  STIPPLE_CHECK(x.dim() == 4 && f >= 1 && x.size(2) % f == 0 && x.size(3) % f == 0,
                "downsample_area: ", x.describe(), " is not [B, C, H, W] with H and W multiples "
                "of the factor ", f);
  const int64_t n = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), h = H / f, w = W / f;
  const std::vector<float> in = x.to_vector();
  std::vector<float> out(static_cast<size_t>(n * h * w));
  for (int64_t p = 0; p < n; ++p)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) {
        double s = 0;
        for (int64_t u = 0; u < f; ++u)
          for (int64_t v = 0; v < f; ++v) s += in[(p * H + i * f + u) * W + j * f + v];
        out[(p * h + i) * w + j] = static_cast<float>(s / static_cast<double>(f * f));
      }
  return Tensor::from_vector(out, {x.size(0), x.size(1), h, w}).to(x.device());
}

Tensor repeat_batch(const Tensor& x, int64_t n) {
  if (n == 1) return x;
  return ops::concat(std::vector<Tensor>(static_cast<size_t>(n), x), 0);
}

}  // namespace stipple::pipelines

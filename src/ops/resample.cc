// Resampling and lookup: nearest 2x upsampling (the UNet's Upsample2D), 2x2 average pooling,
// embedding lookup, and dropout.
#include "core/rng.h"
#include "ops/op_util.h"

namespace stipple::ops {
namespace {

void check_nchw(const Tensor& x, const char* op) {
  check_float(x, op, "x");
  STIPPLE_CHECK(x.dim() == 4, op, ": expects [N, C, H, W], got ", x.describe());
}

}  // namespace

Tensor upsample_nearest2x(const Tensor& x0) {
  check_nchw(x0, "upsample_nearest2x");
  Tensor out = active_kernels().upsample_nearest2x(as_f32_contiguous(x0));
  autograd::record("upsample_nearest2x", {x0}, out, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{active_kernels().upsample_nearest2x_backward(as_f32_contiguous(g))};
  });
  return out;
}

Tensor avg_pool2x(const Tensor& x0) {
  check_nchw(x0, "avg_pool2x");
  STIPPLE_CHECK(x0.size(2) % 2 == 0 && x0.size(3) % 2 == 0, "avg_pool2x: height and width of ",
                x0.describe(), " must be even");
  Tensor out = active_kernels().avg_pool2x(as_f32_contiguous(x0));
  const Shape xs = x0.shape();
  autograd::record("avg_pool2x", {x0}, out, [xs](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{active_kernels().avg_pool2x_backward(as_f32_contiguous(g), xs)};
  });
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& ids0) {
  check_float(weight, "embedding", "weight");
  STIPPLE_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got ", weight.describe());
  STIPPLE_CHECK(ids0.defined() && ids0.dtype() == DType::kI64, "embedding: ids must be i64, got ",
                ids0.describe());
  const Tensor ids = ids0.contiguous();
  Tensor out = active_kernels().embedding(as_f32_contiguous(weight), ids);
  const int64_t vocab = weight.size(0);
  autograd::record("embedding", {weight}, out,
                   [ids, vocab](const Tensor& g, const std::vector<bool>&) {
                     return std::vector<Tensor>{
                         active_kernels().embedding_backward(as_f32_contiguous(g), ids, vocab)};
                   });
  return out;
}

Tensor dropout(const Tensor& x, float p, Generator& gen, bool training) {
  check_float(x, "dropout", "x");
  STIPPLE_CHECK(p >= 0.0f && p < 1.0f, "dropout: probability ", p, " outside [0, 1)");
  if (!training || p == 0.0f) return x;
  Tensor mask = gen.rand(x.shape());
  float* pm = mask.data<float>();
  const float keep_scale = 1.0f / (1.0f - p);
  for (int64_t i = 0; i < mask.numel(); ++i) pm[i] = pm[i] >= p ? keep_scale : 0.0f;
  return mul(x, mask);
}

}  // namespace stipple::ops

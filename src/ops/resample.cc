// Resampling and lookup: nearest 2x upsampling (the UNet's Upsample2D), 2x2 average pooling,
// embedding lookup, and dropout.
#include <cstring>

#include "autograd/node.h"
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
  Tensor out = kernels_for(x0).upsample_nearest2x(as_f32_contiguous(x0));
  autograd::record("upsample_nearest2x", {x0}, out, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{kernels_for(g).upsample_nearest2x_backward(as_f32_contiguous(g))};
  });
  return out;
}

Tensor avg_pool2x(const Tensor& x0) {
  check_nchw(x0, "avg_pool2x");
  STIPPLE_CHECK(x0.size(2) % 2 == 0 && x0.size(3) % 2 == 0, "avg_pool2x: height and width of ",
                x0.describe(), " must be even");
  Tensor out = kernels_for(x0).avg_pool2x(as_f32_contiguous(x0));
  const Shape xs = x0.shape();
  autograd::record("avg_pool2x", {x0}, out, [xs](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{kernels_for(g).avg_pool2x_backward(as_f32_contiguous(g), xs)};
  });
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& ids0) {
  check_float(weight, "embedding", "weight");
  STIPPLE_CHECK(weight.dim() == 2, "embedding: weight must be [V, D], got ", weight.describe());
  STIPPLE_CHECK(ids0.defined() && ids0.dtype() == DType::kI64, "embedding: ids must be i64, got ",
                ids0.describe());
  const Tensor ids = ids0.contiguous();
  if (weight.dtype() != DType::kF32 && weight.is_contiguous() && weight.device() == Device::kCPU &&
      ids.device() == Device::kCPU && !autograd::needs_record({&weight})) {
    // A half-precision table (a text encoder loaded in its stored precision): gather the rows,
    // then widen them, instead of widening the whole vocabulary per call. (On a device the
    // table is widened whole, below.)
    const int64_t vocab = weight.size(0), d = weight.size(1);
    const size_t row_bytes = static_cast<size_t>(d) * dtype_size(weight.dtype());
    Tensor rows = Tensor::empty({ids.numel(), d}, weight.dtype());
    const int64_t* pi = ids.data<int64_t>();
    const auto* src = static_cast<const uint8_t*>(weight.raw_data());
    auto* dst = static_cast<uint8_t*>(rows.raw_data());
    for (int64_t i = 0; i < ids.numel(); ++i) {
      STIPPLE_CHECK(pi[i] >= 0 && pi[i] < vocab, "embedding: id ", pi[i], " out of range [0, ",
                    vocab, ")");
      std::memcpy(dst + static_cast<size_t>(i) * row_bytes,
                  src + static_cast<size_t>(pi[i]) * row_bytes, row_bytes);
    }
    Shape out_shape = ids.shape();
    out_shape.push_back(d);
    return reshape(as_f32_contiguous(rows), out_shape);
  }
  Tensor out = kernels_for(same_device("embedding", weight, ids)).embedding(as_f32_contiguous(weight), ids);
  const int64_t vocab = weight.size(0);
  autograd::record("embedding", {weight}, out,
                   [ids, vocab](const Tensor& g, const std::vector<bool>&) {
                     return std::vector<Tensor>{
                         kernels_for(g).embedding_backward(as_f32_contiguous(g), ids, vocab)};
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

// Reductions: sum, mean and max over dims, and sum_to (the adjoint of broadcasting).
#include <algorithm>

#include "ops/op_util.h"

namespace stipple::ops {
namespace {

std::vector<int64_t> normalize_dims(const Tensor& x, const std::vector<int64_t>& dims,
                                    const char* op) {
  std::vector<int64_t> d;
  for (int64_t v : dims) d.push_back(x.normalize_dim(v));
  std::sort(d.begin(), d.end());
  STIPPLE_CHECK(std::adjacent_find(d.begin(), d.end()) == d.end(), op, ": repeated dim");
  return d;
}

Shape drop_dims(const Shape& keep_shape, const std::vector<int64_t>& dims) {
  Shape s;
  for (size_t i = 0; i < keep_shape.size(); ++i)
    if (!std::binary_search(dims.begin(), dims.end(), static_cast<int64_t>(i)))
      s.push_back(keep_shape[i]);
  return s;
}

std::vector<int64_t> all_dims(const Tensor& x) {
  std::vector<int64_t> d(x.dim());
  for (int64_t i = 0; i < x.dim(); ++i) d[i] = i;
  return d;
}

}  // namespace

Tensor sum(const Tensor& x0, const std::vector<int64_t>& dims0, bool keepdim) {
  check_float(x0, "sum", "x");
  const std::vector<int64_t> dims = normalize_dims(x0, dims0, "sum");
  const Tensor x = as_f32_contiguous(x0);
  Tensor kept = kernels_for(x).sum(x, dims);
  Tensor out = keepdim ? kept : kept.reshape(drop_dims(kept.shape(), dims));
  const Shape in_shape = x0.shape(), kept_shape = kept.shape();
  autograd::record("sum", {x0}, out,
                   [in_shape, kept_shape](const Tensor& g, const std::vector<bool>&) {
                     return std::vector<Tensor>{
                         contiguous(expand(reshape(g, kept_shape), in_shape))};
                   });
  return out;
}

Tensor sum(const Tensor& x) { return sum(x, all_dims(x), false); }

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims0, bool keepdim) {
  check_float(x, "mean", "x");
  const std::vector<int64_t> dims = normalize_dims(x, dims0, "mean");
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  STIPPLE_CHECK(count > 0, "mean: reducing an empty dim of ", x.describe());
  return affine(sum(x, dims, keepdim), 1.0f / static_cast<float>(count), 0.0f);
}

Tensor mean(const Tensor& x) { return mean(x, all_dims(x), false); }

Tensor max(const Tensor& x0, const std::vector<int64_t>& dims0, bool keepdim) {
  check_float(x0, "max", "x");
  const std::vector<int64_t> dims = normalize_dims(x0, dims0, "max");
  for (int64_t d : dims)
    STIPPLE_CHECK(x0.shape()[d] > 0, "max: reducing an empty dim of ", x0.describe());
  const Tensor x = as_f32_contiguous(x0);
  Tensor kept = kernels_for(x).max(x, dims);
  Tensor out = keepdim ? kept : kept.reshape(drop_dims(kept.shape(), dims));
  autograd::record("max", {x0}, out, [x, kept, dims](const Tensor& g, const std::vector<bool>&) {
    // The gradient is shared evenly among the elements equal to the maximum (as torch.amax).
    const Tensor m = expand(kept, x.shape()).contiguous();
    Tensor hit = Tensor::empty(x.shape());
    const float* px = x.data<float>();
    const float* pm = m.data<float>();
    float* ph = hit.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) ph[i] = px[i] == pm[i] ? 1.0f : 0.0f;
    const Tensor count = kernels_for(hit).sum(hit, dims);
    const Tensor gk = reshape(g, kept.shape());
    return std::vector<Tensor>{mul(hit, expand(div(gk, count), x.shape()))};
  });
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  STIPPLE_CHECK(static_cast<int64_t>(shape.size()) <= x.dim(), "sum_to: cannot reduce ",
                x.describe(), " to ", shape_str(shape));
  const int64_t lead = x.dim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i < lead) {
      dims.push_back(i);
    } else if (shape[i - lead] == 1 && x.shape()[i] != 1) {
      dims.push_back(i);
    } else {
      STIPPLE_CHECK(shape[i - lead] == x.shape()[i], "sum_to: cannot reduce ", x.describe(),
                    " to ", shape_str(shape));
    }
  }
  return reshape(sum(x, dims, true), shape);
}

}  // namespace stipple::ops

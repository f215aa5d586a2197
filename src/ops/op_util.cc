#include "ops/op_util.h"

namespace stipple::ops {

Tensor as_f32_contiguous(const Tensor& x) {
  if (x.dtype() == DType::kF32 && x.is_contiguous()) return x;
  return kernels_for(x).copy(x, DType::kF32);
}

void check_float(const Tensor& x, const char* op, const char* arg) {
  STIPPLE_CHECK(x.defined(), op, ": ", arg, " is undefined");
  STIPPLE_CHECK(is_floating(x.dtype()), op, ": ", arg, " must be floating, got ", x.describe());
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    STIPPLE_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ",
                  shape_str(b), " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace stipple::ops

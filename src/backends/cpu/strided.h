// Walking the elements of a strided tensor in row-major logical order, for reference kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace stipple::cpu {

// Calls fn(linear_index, offset_a, offset_b) for every element of `shape`, where the offsets
// follow strides_a and strides_b (in elements). The last dim runs in the inner loop.
template <typename Fn>
void for_each_offset2(const Shape& shape, const Shape& strides_a, const Shape& strides_b, Fn fn) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  if (nd == 0) {
    fn(0, 0, 0);
    return;
  }
  std::vector<int64_t> idx(nd, 0);
  int64_t oa = 0, ob = 0;
  const int64_t inner = shape[nd - 1], sa = strides_a[nd - 1], sb = strides_b[nd - 1];
  for (int64_t lin = 0; lin < n; lin += inner) {
    for (int64_t i = 0; i < inner; ++i) fn(lin + i, oa + i * sa, ob + i * sb);
    // advance the outer index
    for (int64_t d = nd - 2; d >= 0; --d) {
      ++idx[d];
      oa += strides_a[d];
      ob += strides_b[d];
      if (idx[d] < shape[d]) break;
      oa -= strides_a[d] * shape[d];
      ob -= strides_b[d] * shape[d];
      idx[d] = 0;
    }
  }
}

template <typename Fn>
void for_each_offset(const Shape& shape, const Shape& strides, Fn fn) {
  for_each_offset2(shape, strides, strides, [&](int64_t lin, int64_t o, int64_t) { fn(lin, o); });
}

// Storage offset (in elements, from the tensor's first element) of logical NCHW (n, c, h, w) in a
// channel-blocked tensor.
inline int64_t blocked_offset(const Shape& nchw, int block, int64_t n, int64_t c, int64_t h,
                              int64_t w) {
  const int64_t cb = nchw[1] / block, H = nchw[2], W = nchw[3];
  return (((n * cb + c / block) * H + h) * W + w) * block + c % block;
}

}  // namespace stipple::cpu

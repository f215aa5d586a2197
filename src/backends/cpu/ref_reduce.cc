// Reference reductions (sum, max) over a set of dims of a contiguous f32 tensor, keeping the
// reduced dims as size 1. Sums accumulate in double.
#include <cmath>
#include <limits>

#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

// Shape with `dims` set to 1, and for each input element the flat index of its output element.
Shape reduced_shape(const Shape& s, const std::vector<int64_t>& dims) {
  Shape out = s;
  for (int64_t d : dims) out[d] = 1;
  return out;
}

template <typename Init, typename Combine, typename Finish>
Tensor reduce(const Tensor& x, const std::vector<int64_t>& dims, Init init, Combine combine,
              Finish finish) {
  const Shape& s = x.shape();
  const Shape os = reduced_shape(s, dims);
  const int64_t on = shape_numel(os);
  std::vector<double> acc(on, init);
  const Shape ost = contiguous_strides(os);
  const int64_t nd = static_cast<int64_t>(s.size());
  // output stride per input dim (0 on reduced dims)
  Shape step(nd);
  for (int64_t d = 0; d < nd; ++d) step[d] = os[d] == s[d] ? ost[d] : 0;
  const float* px = x.data<float>();
  const int64_t n = x.numel();
  std::vector<int64_t> idx(nd, 0);
  int64_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc[o] = combine(acc[o], static_cast<double>(px[i]));
    for (int64_t d = nd - 1; d >= 0; --d) {
      ++idx[d];
      o += step[d];
      if (idx[d] < s[d]) break;
      o -= step[d] * s[d];
      idx[d] = 0;
    }
  }
  Tensor out = Tensor::empty(os);
  float* po = out.data<float>();
  for (int64_t i = 0; i < on; ++i) po[i] = static_cast<float>(finish(acc[i]));
  return out;
}

Tensor ref_sum(const Tensor& x, const std::vector<int64_t>& dims) {
  return reduce(
      x, dims, 0.0, [](double a, double v) { return a + v; }, [](double a) { return a; });
}

Tensor ref_max(const Tensor& x, const std::vector<int64_t>& dims) {
  return reduce(
      x, dims, -std::numeric_limits<double>::infinity(),
      [](double a, double v) { return std::isnan(v) || v > a ? v : a; },
      [](double a) { return a; });
}

}  // namespace

void fill_reference_reduce(KernelTable& t) {
  t.sum = ref_sum;
  t.max = ref_max;
}

}  // namespace stipple::cpu

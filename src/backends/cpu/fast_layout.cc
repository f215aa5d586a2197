// Fast strided copy and sum reduction. Both first fold the tensor's dims into as few runs as its
// strides allow, then work a row at a time instead of an element at a time:
//   copy  f32 -> f32 from any (non-blocked) strides: memcpy of contiguous inner rows, a gather
//         loop otherwise; OpenMP over rows. Bit exact (it moves bits). f16/bf16 <-> f32 from
//         strides whose inner rows are contiguous (a column slice of a projection's weights):
//         each row converted with Highway (convert.h), bit exact like the contiguous case.
//   sum   contiguous f32 over any set of dims: each inner row is either added into a row of
//         accumulators (inner dims kept) or summed to one (inner dims reduced). Accumulates in
//         double like the reference; only the order of the additions differs, so results agree
//         to the final f32 rounding. OpenMP over the outermost kept run.
// Other cases (blocked, other dtypes) go to the kernels the table held before.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/convert.h"
#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

Tensor (*g_prev_copy)(const Tensor&, DType) = nullptr;

// A dim run: `size` elements `stride` apart.
struct Run {
  int64_t size;
  int64_t stride;
};

// Drops size-1 dims and merges neighbours that step like one dim. Never empty (a scalar is one
// run of size 1).
std::vector<Run> fold_runs(const Shape& shape, const Shape& strides) {
  std::vector<Run> runs;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!runs.empty() && runs.back().stride == strides[d] * shape[d]) {
      runs.back().size *= shape[d];
      runs.back().stride = strides[d];
    } else {
      runs.push_back({shape[d], strides[d]});
    }
  }
  if (runs.empty()) runs.push_back({1, 1});
  return runs;
}

// Offset of outer row `row` (row-major over runs[0 .. n-2]).
int64_t row_offset(const std::vector<Run>& runs, int64_t row) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(runs.size()) - 2; d >= 0; --d) {
    off += (row % runs[d].size) * runs[d].stride;
    row /= runs[d].size;
  }
  return off;
}

// A channel-blocked f32 tensor (nChw{b}c: [N][C/b][H*W][b]) as plain NCHW: per (n, channel
// block) an [H*W, b] -> [b, H*W] transpose. (The reference walks it element by element.)
Tensor unblock(const Tensor& src) {
  const Shape& sh = src.shape();
  const int64_t b = src.channel_block(), n = sh[0], c = sh[1], hw = sh[2] * sh[3];
  Tensor dst = Tensor::empty(sh);
  const float* ps = src.data<float>();
  float* pd = dst.data<float>();
  const int64_t groups = n * (c / b);
#pragma omp parallel for schedule(static) if (src.numel() > (1 << 15))
  for (int64_t g = 0; g < groups; ++g) {
    const float* s = ps + g * hw * b;  // [hw][b]
    float* d = pd + g * b * hw;        // [b][hw]: channels g*b .. g*b + b of batch g / (c / b)
    constexpr int64_t kTile = 64;
    for (int64_t p0 = 0; p0 < hw; p0 += kTile) {
      const int64_t p1 = std::min(hw, p0 + kTile);
      for (int64_t ci = 0; ci < b; ++ci)
        for (int64_t p = p0; p < p1; ++p) d[ci * hw + p] = s[p * b + ci];
    }
  }
  return dst;
}

bool is_half(DType t) { return t == DType::kF16 || t == DType::kBF16; }

Tensor fast_strided_copy(const Tensor& src, DType dst_dtype) {
  const DType st = src.dtype();
  if (src.is_blocked() && st == DType::kF32 && dst_dtype == DType::kF32 && src.dim() == 4 &&
      src.shape()[1] % src.channel_block() == 0) {
    return unblock(src);
  }
  const bool move = st == DType::kF32 && dst_dtype == DType::kF32;
  const bool widen = is_half(st) && dst_dtype == DType::kF32;
  const bool narrow = st == DType::kF32 && is_half(dst_dtype);
  if (!(move || widen || narrow) || src.is_blocked() || src.is_contiguous()) {
    return g_prev_copy(src, dst_dtype);
  }
  const std::vector<Run> runs = fold_runs(src.shape(), src.strides());
  const int64_t inner = runs.back().size;
  const int64_t istride = runs.back().stride;
  if (!move && istride != 1) return g_prev_copy(src, dst_dtype);  // converts whole rows only
  Tensor dst = Tensor::empty(src.shape(), dst_dtype);
  const int64_t rows = src.numel() / std::max<int64_t>(inner, 1);
  const int kind = st == DType::kF16 || dst_dtype == DType::kF16 ? 0 : 1;  // else bf16
  const uint16_t* ph = widen ? src.data<uint16_t>() : nullptr;  // the half-precision side
  uint16_t* qh = narrow ? dst.data<uint16_t>() : nullptr;
  const float* pf = widen ? nullptr : src.data<float>();  // the f32 side
  float* qf = narrow ? nullptr : dst.data<float>();
#pragma omp parallel for schedule(static) if (src.numel() > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = row_offset(runs, r), to = r * inner;
    if (widen) {
      widen_halves(kind, ph + from, qf + to, inner);
    } else if (narrow) {
      narrow_to_halves(kind, pf + from, qh + to, inner);
    } else if (istride == 1) {
      std::memcpy(qf + to, pf + from, inner * sizeof(float));
    } else {
      for (int64_t i = 0; i < inner; ++i) qf[to + i] = pf[from + i * istride];
    }
  }
  return dst;
}

// A run of a contiguous input: its size, whether it is summed away, and its stride in the
// output (0 when reduced).
struct SumRun {
  int64_t size;
  bool reduced;
  int64_t out_stride;
};

Tensor fast_sum(const Tensor& x, const std::vector<int64_t>& dims) {
  const Shape& s = x.shape();
  const int64_t nd = static_cast<int64_t>(s.size());
  std::vector<bool> red(nd, false);
  for (int64_t d : dims) red[d] = true;
  Shape os = s;
  for (int64_t d : dims) os[d] = 1;
  Tensor out = Tensor::empty(os);
  const int64_t on = out.numel();
  // Runs over the input, merging neighbours with the same reducedness.
  std::vector<SumRun> runs;
  for (int64_t d = 0; d < nd; ++d) {
    if (s[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == red[d]) {
      runs.back().size *= s[d];
    } else {
      runs.push_back({s[d], red[d], 0});
    }
  }
  float* po = out.data<float>();
  const float* px = x.data<float>();
  if (runs.empty() || x.numel() == 0) {  // nothing reduced over more than one element
    for (int64_t i = 0; i < on; ++i) po[i] = x.numel() == 0 ? 0.0f : px[i];
    return out;
  }
  int64_t stride = 1;
  for (int64_t k = static_cast<int64_t>(runs.size()) - 1; k >= 0; --k) {
    if (!runs[k].reduced) {
      runs[k].out_stride = stride;
      stride *= runs[k].size;
    }
  }
  std::vector<double> acc(on, 0.0);
  // Split the work over the outermost kept run when it leads (its slices touch disjoint
  // accumulators); otherwise one thread walks everything.
  const bool split = !runs.front().reduced && runs.size() > 1;
  const int64_t parts = split ? runs.front().size : 1;
  const int64_t part_len = x.numel() / parts;
  const std::vector<SumRun> sub(split ? runs.begin() + 1 : runs.begin(), runs.end());
  const int64_t inner = sub.back().size;
  const bool inner_reduced = sub.back().reduced;
  const int64_t rows = part_len / inner;
#pragma omp parallel for schedule(static) if (parts > 1 && x.numel() > (1 << 15))
  for (int64_t p = 0; p < parts; ++p) {
    const float* base = px + p * part_len;
    double* a0 = acc.data() + (split ? p * runs.front().out_stride : 0);
    for (int64_t r = 0; r < rows; ++r) {
      int64_t o = 0;
      int64_t rem = r;
      for (int64_t k = static_cast<int64_t>(sub.size()) - 2; k >= 0; --k) {
        o += (rem % sub[k].size) * sub[k].out_stride;
        rem /= sub[k].size;
      }
      const float* row = base + r * inner;
      if (inner_reduced) {
        double t = 0.0;
        for (int64_t i = 0; i < inner; ++i) t += row[i];
        a0[o] += t;
      } else {
        double* a = a0 + o;
        for (int64_t i = 0; i < inner; ++i) a[i] += row[i];
      }
    }
  }
  for (int64_t i = 0; i < on; ++i) po[i] = static_cast<float>(acc[i]);
  return out;
}

}  // namespace

void fill_fast_layout(KernelTable& t) {
  g_prev_copy = t.copy;
  t.copy = fast_strided_copy;
  t.sum = fast_sum;
}

}  // namespace stipple::cpu

// Reference data movement: copy with dtype conversion from any layout to plain contiguous, and
// the plain -> channel-blocked reorder.
#include <cstring>
#include <vector>

#include "backends/cpu/fill.h"
#include "backends/cpu/strided.h"

namespace stipple::cpu {
namespace {

double load(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kF64: return static_cast<const double*>(base)[i];
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
  }
  return 0;
}

void store(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::kF32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::kF64: static_cast<double*>(base)[i] = v; break;
    case DType::kI64: static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v); break;
    case DType::kF16: static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::kBF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(v)); break;
  }
}

Tensor ref_copy(const Tensor& src, DType dst_dtype) {
  Tensor dst = Tensor::empty(src.shape(), dst_dtype);
  const void* s = src.raw_data();
  void* d = dst.raw_data();
  const DType st = src.dtype();
  if (src.is_blocked()) {
    const Shape& sh = src.shape();
    const int b = src.channel_block();
    int64_t lin = 0;
    for (int64_t n = 0; n < sh[0]; ++n)
      for (int64_t c = 0; c < sh[1]; ++c)
        for (int64_t h = 0; h < sh[2]; ++h)
          for (int64_t w = 0; w < sh[3]; ++w)
            store(d, dst_dtype, lin++, load(s, st, blocked_offset(sh, b, n, c, h, w)));
    return dst;
  }
  if (st == DType::kI64 && dst_dtype == DType::kI64) {  // exact beyond 2^53
    const int64_t* si = static_cast<const int64_t*>(s);
    int64_t* di = static_cast<int64_t*>(d);
    for_each_offset(src.shape(), src.strides(), [&](int64_t lin, int64_t o) { di[lin] = si[o]; });
    return dst;
  }
  if (st == dst_dtype && src.is_contiguous()) {
    std::memcpy(d, s, src.numel() * dtype_size(st));
    return dst;
  }
  for_each_offset(src.shape(), src.strides(),
                  [&](int64_t lin, int64_t o) { store(d, dst_dtype, lin, load(s, st, o)); });
  return dst;
}

Tensor ref_to_blocked(const Tensor& x, int block) {
  Tensor out = Tensor::empty_blocked(x.shape(), block);
  const float* s = x.data<float>();
  float* d = out.data<float>();
  const Shape& sh = x.shape();
  int64_t lin = 0;
  for (int64_t n = 0; n < sh[0]; ++n)
    for (int64_t c = 0; c < sh[1]; ++c)
      for (int64_t h = 0; h < sh[2]; ++h)
        for (int64_t w = 0; w < sh[3]; ++w) d[blocked_offset(sh, block, n, c, h, w)] = s[lin++];
  return out;
}

void ref_copy_into(const Tensor& dst, const Tensor& src) {
  const float* ps = src.data<float>();
  float* pd = static_cast<float*>(dst.raw_data());
  const Shape& sh = dst.shape();
  const Shape& st = dst.strides();
  const int64_t nd = static_cast<int64_t>(sh.size());
  const int64_t n = dst.numel();
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  int64_t o = 0;
  for (int64_t i = 0; i < n; ++i) {
    pd[o] = ps[i];
    for (int64_t d = nd - 1; d >= 0; --d) {
      ++idx[d];
      o += st[d];
      if (idx[d] < sh[d]) break;
      o -= st[d] * sh[d];
      idx[d] = 0;
    }
  }
}

}  // namespace

void fill_reference_data(KernelTable& t) {
  t.copy = ref_copy;
  t.to_blocked = ref_to_blocked;
  t.copy_into = ref_copy_into;
}

}  // namespace stipple::cpu

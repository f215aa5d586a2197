// Little-endian integers of the on-disk dtype names safetensors and PyTorch checkpoints share
// ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32"), widened to int64 (stipple's one integer
// dtype). Sources may be unaligned.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace stipple::io {

// Whether `dtype` is one of the names widen_to_i64 reads.
inline bool widens_to_i64(const std::string& dtype) {
  return dtype == "BOOL" || dtype == "U8" || dtype == "I8" || dtype == "I16" || dtype == "U16" ||
         dtype == "I32" || dtype == "U32";
}

namespace detail {
template <typename T>
void widen(const uint8_t* src, int64_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<int64_t>(v);
  }
}
}  // namespace detail

// Widens n values of `dtype` at `src` into dst; false (nothing written) for another dtype.
inline bool widen_to_i64(const uint8_t* src, const std::string& dtype, int64_t* dst, int64_t n) {
  if (dtype == "BOOL") {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i] != 0;
  } else if (dtype == "U8") {
    detail::widen<uint8_t>(src, dst, n);
  } else if (dtype == "I8") {
    detail::widen<int8_t>(src, dst, n);
  } else if (dtype == "I16") {
    detail::widen<int16_t>(src, dst, n);
  } else if (dtype == "U16") {
    detail::widen<uint16_t>(src, dst, n);
  } else if (dtype == "I32") {
    detail::widen<int32_t>(src, dst, n);
  } else if (dtype == "U32") {
    detail::widen<uint32_t>(src, dst, n);
  } else {
    return false;
  }
  return true;
}

}  // namespace stipple::io

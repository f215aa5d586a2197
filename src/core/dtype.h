// Element types. f16 and bf16 are storage formats on the CPU: kernels compute in f32, and
// tensors are converted on load or on use. i64 holds ids, labels and integer timesteps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace stipple {

enum class DType : uint8_t { kF32, kF16, kBF16, kI64, kF64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "f32", "f16", "bf16", "i64", "f64"
bool is_floating(DType t);

// IEEE half and bfloat16, scalar conversions (round to nearest even). Bulk conversions with SIMD
// live in the CPU backend.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

}  // namespace stipple

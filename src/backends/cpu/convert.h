// Conversions the CPU kernel files share.
#pragma once

#include <cstdint>

namespace stipple::cpu {

// Widens n values, f16 (kind 0) or bf16 (kind 1), to f32 on the calling thread with the widest
// SIMD path this CPU has (fast_elementwise.cc, Highway; exact: every half value is an f32 value).
void widen_halves(int kind, const uint16_t* src, float* dst, int64_t n);
// The reverse: n f32 values rounded to f16 (kind 0) or bf16 (kind 1), to nearest even, bit exact
// with core/dtype.h's scalar conversions.
void narrow_to_halves(int kind, const float* src, uint16_t* dst, int64_t n);

}  // namespace stipple::cpu

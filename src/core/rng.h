// Generator: a seeded random source that reproduces PyTorch's CPU generator exactly, so that
// `Generator g(seed); g.randn(shape)` equals `torch.manual_seed(seed); torch.randn(shape)` and users
// get diffusers' CPU noise for the same seed. mt19937 underneath, with torch's normal and uniform
// transforms (including its 16-element vectorised Box-Muller path for sizes >= 16).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple {

class Generator {
 public:
  explicit Generator(uint64_t seed = 67280421310721ULL);
  void manual_seed(uint64_t seed);

  Tensor randn(const Shape& shape, DType dtype = DType::kF32);  // f32 or f64
  Tensor rand(const Shape& shape, DType dtype = DType::kF32);   // uniform [0, 1)

  uint32_t next_u32();
  uint64_t next_u64();

  // The whole state as bytes, for checkpoints; set_state restores it exactly.
  std::vector<uint8_t> state() const;
  void set_state(const std::vector<uint8_t>& bytes);

 private:
  static constexpr int kN = 624;
  uint32_t mt_[kN];
  int index_ = kN;
  uint64_t seed_ = 0;
  // torch caches the second value of a scalar Box-Muller pair for double and float normals.
  bool has_next_double_normal_ = false;
  double next_double_normal_ = 0.0;
  bool has_next_float_normal_ = false;
  float next_float_normal_ = 0.0f;
};

}  // namespace stipple

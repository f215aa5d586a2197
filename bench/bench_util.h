// Helpers shared by the kernel benchmarks: deterministic inputs and rate counters.
#pragma once

#include <benchmark/benchmark.h>

#include <random>

#include "core/tensor.h"

namespace stipple::bench {

// Uniform [-1, 1) f32 from a std::mt19937 seeded with `seed`.
inline Tensor random_input(const Shape& shape, uint32_t seed) {
  Tensor t = Tensor::empty(shape);
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(gen);
  return t;
}

// Reports `units` (flops or bytes) per iteration as a rate in billions per second under `name`.
inline void set_rate(benchmark::State& state, const char* name, double units) {
  state.counters[name] =
      benchmark::Counter(units * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace stipple::bench

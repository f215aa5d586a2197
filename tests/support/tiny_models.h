// Tiny random models written the way stipple's trainers write them, for tests that need a
// generator or a classifier folder without training one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "models/dit.h"
#include "models/fashion_classifier.h"

namespace stipple::testing {

// A two-layer DiT over 2-channel 4x4 latents (2 heads of 4, patch 2, 3 classes + null, learned
// sigma), for gradient checks and device tests.
models::DiTConfig tiny_dit_config();

// A tiny random pixel-space DiT for the 10 Fashion-MNIST classes (1 layer, width 8, patch 8 on
// 32x32, learned sigma), written as `stipple train` exports it (f32, or f16 when `half`) to
// `dir`; returns `dir`.
std::string write_tiny_generator(const std::string& dir, bool half = false, uint64_t seed = 10);

// A small random Fashion-MNIST classifier in eval mode; num_timesteps > 0: a noisy-image one
// (for classifier guidance).
std::shared_ptr<models::FashionClassifier> tiny_fashion_classifier(int64_t num_timesteps = 0);

}  // namespace stipple::testing

// The end-to-end demo: trains a small denoising diffusion model from scratch on procedurally drawn
// 16x16 shapes (discs, squares and rings at random places and sizes), then samples new images
// from noise with DDPM ancestral steps. Every layer of the engine takes part: tensors, the seeded
// RNG, linear layers and activations with autograd, AdamW, and the forward/reverse diffusion
// process (Ho et al. 2020, eqs. 4, 6 and 7), with the model predicting x0. It is what the README's first command runs until a
// trained model ships in models/.
//
// Leaves out: everything a real model needs (a UNet or DiT denoiser, a scheduler library,
// checkpoints); those live in src/models, src/schedulers and src/train.
#pragma once

#include <cstdint>
#include <functional>

#include "core/tensor.h"

namespace stipple::train {

struct DemoOptions {
  int train_steps = 1500;
  int batch_size = 128;
  int num_images = 16;
  int diffusion_steps = 200;  // T; linear betas 1e-4 .. 0.02 scaled by 1000 / T
  int hidden = 512;
  float lr = 2e-3f;
  uint64_t seed = 0;
};

struct DemoResult {
  Tensor images;       // [num_images, 1, 16, 16] in [-1, 1]
  Tensor real_images;  // [num_images, 1, 16, 16], drawn by the same procedure, for comparison
  float final_loss = 0;  // mean training loss over the last 100 steps
  double train_seconds = 0, sample_seconds = 0;
};

// phase is "train" or "sample"; loss is the recent mean training loss (0 while sampling).
using DemoProgress = std::function<void(const char* phase, int step, int total, float loss)>;

DemoResult run_demo(const DemoOptions& options, const DemoProgress& progress = nullptr);

// Draws n shapes as [n, 1, 16, 16] in [-1, 1] (background -1, shape +1).
Tensor draw_shapes(int n, uint64_t seed);

}  // namespace stipple::train

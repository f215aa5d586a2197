// Pieces every pipeline shares: where random draws come from (a seeded torch-exact Generator, or
// tensors injected in order, as the conformance references do), an observer that sees each
// intermediate under its reference name, and image conversions between the VAE's [-1, 1] and the
// [0, 1] images users and diffusers' output_type="np" see.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace stipple::pipelines {

// Called with a reference name ("text_encoder.0.last_hidden_state", "denoiser.sample",
// "latents_after_step", "vae_decode.0.input", "image", ...) and its value. Per-step records are
// reported once per step, in order; the conformance runner stacks them.
using Observer = std::function<void(const std::string& name, const Tensor& value)>;

// The random draws of one pipeline run, in diffusers' order. Injected tensors are used first (each
// must have the drawn shape); after them draws come from a Generator seeded with `seed`, which
// reproduces torch.Generator("cpu").manual_seed(seed) draw for draw.
class NoiseSource {
 public:
  // Draws are made on the CPU (a seed gives the same numbers everywhere) and handed out on
  // `device`.
  explicit NoiseSource(uint64_t seed, std::vector<Tensor> injected = {},
                       Device device = Device::kCPU);
  // A standard normal f32 tensor of `shape` on the device (the next injected one, or a
  // generator draw).
  Tensor randn(const Shape& shape, const std::string& what);
  // For stochastic schedulers (DDPM, Euler ancestral, DDIM with eta > 0).
  Generator* generator() { return &generator_; }

 private:
  Generator generator_;
  std::vector<Tensor> injected_;
  size_t next_ = 0;
  Device device_;
};

// Live previews during sampling: every `every` steps, the first image's current estimate as
// [1, C, H, W] in [0, 1], decoded by the pipeline (DenoiseOptions::preview).
struct Preview {
  int every = 0;  // 0: no previews
  std::function<void(const Tensor& image)> show;
  bool on() const { return every > 0 && static_cast<bool>(show); }
};

// VAE output [B, C, H, W] in [-1, 1] -> [0, 1]: clamp(x / 2 + 0.5, 0, 1).
Tensor vae_to_unit(const Tensor& x);
// [B, C, H, W] -> [B, H, W, C] (diffusers' output_type="np" layout).
Tensor to_nhwc(const Tensor& nchw);
// Nearest-neighbour resize of [B, C, H, W] to [B, C, h, w], as F.interpolate(mode="nearest"):
// source index floor(i * H / h).
Tensor resize_nearest(const Tensor& x, int64_t h, int64_t w);
// Bicubic resize of [B, C, H, W] to [B, C, h, w], as F.interpolate(mode="bicubic",
// align_corners=False): Keys' cubic convolution with a = -0.75 at source coordinate
// (i + 0.5) * H / h - 0.5, edge pixels repeated beyond the border, separable (rows, then
// columns). Not differentiable (data preparation and conditioning).
Tensor resize_bicubic(const Tensor& x, int64_t h, int64_t w);
// The mean of each factor x factor block: [B, C, H, W] -> [B, C, H/f, W/f] (F.avg_pool2d with
// kernel = stride = factor; H and W must be multiples of the factor).
Tensor downsample_area(const Tensor& x, int64_t factor);
// Repeats a [1, ...] tensor to [n, ...] (batch copies).
Tensor repeat_batch(const Tensor& x, int64_t n);

}  // namespace stipple::pipelines

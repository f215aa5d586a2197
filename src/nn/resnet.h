// The 2-D convolutional building blocks shared by the UNet and the VAE, as diffusers'
// models/resnet.py, models/downsampling.py and models/upsampling.py define them:
//   ResnetBlock2D  norm1 -> act -> conv1 (+ time_emb_proj(act(temb))) -> norm2 -> act -> conv2,
//                  plus a 1x1 conv_shortcut when the channel count changes; / output_scale_factor
//   Downsample2D   stride-2 conv named `conv` (padding 0 pads (0,1,0,1) first, as the VAE
//                  encoder does), or 2x2 average pooling when use_conv is false
//   Upsample2D     nearest 2x, then an optional 3x3 conv named `conv`
// The activation is named as in diffusers' configs (nn/activations.h: silu/swish, mish, gelu, ...).
//
// Parameter names equal diffusers' keys (norm1.weight, conv1.weight, time_emb_proj.weight,
// conv_shortcut.weight, conv.weight, ...). Inputs may be channel-blocked (the conv fast path):
// everything here either accepts that layout (conv, group_norm, activations, add) or reorders.
//
// Leaves out: FIR/Kaiming up/down kernels (`kernel="fir"|"sde_vp"`, score-SDE models),
// ConvTranspose upsampling, Upsample2D's explicit output_size other than 2x or 2x - 1 (the sizes
// a UNet input that is not a multiple of the total downscale gives), norm_type ln_norm/rms_norm
// in the resamplers, the "ada_group"/"spatial" time-embedding norms (ResnetBlockCondNorm2D), and
// dropout (inference has none; the blocks are trained here with dropout 0).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::nn {

// Constructor arguments of diffusers' ResnetBlock2D (same names and defaults).
struct ResnetBlock2DConfig {
  int64_t in_channels = 0;      // required
  int64_t out_channels = 0;     // 0: in_channels
  int64_t temb_channels = 512;  // 0: no time_emb_proj (the VAE passes None)
  int64_t groups = 32;
  int64_t groups_out = 0;  // 0: groups
  float eps = 1e-6f;
  std::string non_linearity = "swish";  // a name nn/activations.h knows
  bool skip_time_act = false;           // true: temb enters time_emb_proj without the activation
  std::string time_embedding_norm = "default";  // "default" (add) or "scale_shift"
  float output_scale_factor = 1.0f;
  int use_in_shortcut = -1;  // -1: in_channels != conv2 output channels; 0/1 forces it
  bool conv_shortcut_bias = true;
  int64_t conv_2d_out_channels = 0;  // 0: out_channels
  bool up = false;                   // nearest 2x of both branches after norm1/act (no kernel)
  bool down = false;                 // 2x2 average pooling of both branches after norm1/act
};

class ResnetBlock2D : public Module {
 public:
  explicit ResnetBlock2D(const ResnetBlock2DConfig& config);
  std::string type_name() const override { return "ResnetBlock2D"; }

  // x [B, in, H, W]; temb [B, temb_channels] or undefined. -> [B, out, H', W'].
  Tensor forward(const Tensor& x, const Tensor& temb = Tensor()) const;
  Tensor operator()(const Tensor& x, const Tensor& temb = Tensor()) const {
    return forward(x, temb);
  }

  const ResnetBlock2DConfig& config() const { return config_; }
  int64_t in_channels() const { return config_.in_channels; }
  int64_t out_channels() const { return conv2_->out_channels(); }

 private:
  ResnetBlock2DConfig config_;
  bool scale_shift_ = false;
  std::shared_ptr<GroupNorm> norm1_, norm2_;
  std::shared_ptr<Conv2d> conv1_, conv2_, conv_shortcut_;
  std::shared_ptr<Linear> time_emb_proj_;  // null without temb_channels
};

// diffusers' Downsample2D: conv3x3 stride 2 (`conv`), or avg_pool 2x2 when use_conv is false.
// `name` as diffusers: "conv" registers the conv as both `Conv2d_0` and `conv` (diffusers keeps
// both attributes, so both appear in its state dict); any other name (the UNet and VAE pass
// "op") registers `conv` only.
class Downsample2D : public Module {
 public:
  Downsample2D(int64_t channels, bool use_conv = false, int64_t out_channels = 0,
               int64_t padding = 1, const std::string& name = "conv", int64_t kernel_size = 3,
               bool bias = true);
  std::string type_name() const override { return "Downsample2D"; }

  Tensor forward(const Tensor& x) const;  // [B, C, H, W] -> [B, out, H/2, W/2]
  Tensor operator()(const Tensor& x) const { return forward(x); }

 private:
  int64_t channels_;
  bool use_conv_;
  int64_t padding_;
  std::shared_ptr<Conv2d> conv_;  // null for average pooling
};

// diffusers' Upsample2D: nearest 2x, then conv3x3 (`conv`, or `Conv2d_0` when name differs) when
// use_conv.
class Upsample2D : public Module {
 public:
  Upsample2D(int64_t channels, bool use_conv = false, int64_t out_channels = 0,
             const std::string& name = "conv", int64_t kernel_size = 3, int64_t padding = 1,
             bool bias = true);
  std::string type_name() const override { return "Upsample2D"; }

  // x [B, C, H, W] -> [B, out, 2H, 2W]. `output_h`/`output_w` (diffusers' output_size; 0: 2x)
  // may be 2H - 1 / 2W - 1 (nearest to that size = 2x then crop); other sizes are refused.
  Tensor forward(const Tensor& x, int64_t output_h = 0, int64_t output_w = 0) const;
  Tensor operator()(const Tensor& x) const { return forward(x); }

 private:
  int64_t channels_;
  std::shared_ptr<Conv2d> conv_;  // null without use_conv
};

}  // namespace stipple::nn

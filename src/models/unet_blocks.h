// The blocks of UNet2DConditionModel, as diffusers defines them (models/unets/unet_2d_blocks.py
// and models/transformers/transformer_2d.py):
//   SpatialTransformer       diffusers' Transformer2DModel with continuous input (LDM's
//                            SpatialTransformer): GroupNorm(eps 1e-6) ->
//                            proj_in (1x1 conv, or Linear after flattening when
//                            use_linear_projection) -> BasicTransformerBlocks -> proj_out ->
//                            + residual
//   DownBlock2D              resnets (+ downsampler); every output is a skip
//   CrossAttnDownBlock2D     (resnet, transformer) pairs (+ downsampler)
//   UNetMidBlock2DCrossAttn  resnet -> (transformer -> resnet) x num_layers
//   UpBlock2D                pops one skip per resnet: cat([h, skip]) -> resnet (+ upsampler)
//   CrossAttnUpBlock2D       pops one skip per (resnet, transformer) pair (+ upsampler)
// Child names equal diffusers' keys: resnets.j, attentions.j, downsamplers.0, upsamplers.0,
// norm, proj_in, transformer_blocks.k, proj_out.
//
// Layout. Under NoGradGuard the convolutions return channel-blocked tensors; group_norm, the
// activations and same-layout adds keep them. The transformer's flatten, the skip concat and the
// upsampler reorder to plain (contiguous()) where they need to.
//
// Leaves out: the other diffusers block families (Attn*, Simple*, ResnetDownsample*, K*,
// SkipDown*, DualTransformer2DModel), Transformer2DModel's patched and vectorized (discrete)
// inputs and its ada-norm variants (models/dit.h has the patched one), attention masks, FreeU, and
// gradient checkpointing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::nn {
class BasicTransformerBlock;
class ResnetBlock2D;
class Downsample2D;
class Upsample2D;
}  // namespace stipple::nn

namespace stipple::models {

// Constructor arguments of diffusers' Transformer2DModel (continuous input, layer_norm blocks).
// Named after LDM's SpatialTransformer so that it does not clash with models/dit.h's
// Transformer2DModel (the patched-input variant).
struct SpatialTransformerConfig {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;   // required
  int64_t out_channels = 0;  // 0: in_channels
  int64_t num_layers = 1;
  int64_t norm_num_groups = 32;
  int64_t cross_attention_dim = 0;  // 0: no attn2 (self-attention only)
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

class SpatialTransformer : public nn::Module {
 public:
  explicit SpatialTransformer(const SpatialTransformerConfig& config);
  std::string type_name() const override { return "Transformer2DModel"; }
  // x [B, C, H, W] (plain or blocked), context [B, T, cross_attention_dim] -> [B, Cout, H, W]
  Tensor forward(const Tensor& x, const Tensor& encoder_hidden_states) const;

 private:
  SpatialTransformerConfig config_;
  int64_t inner_dim_;
  std::shared_ptr<nn::GroupNorm> norm_;
  std::shared_ptr<nn::Linear> proj_in_linear_, proj_out_linear_;  // use_linear_projection
  std::shared_ptr<nn::Conv2d> proj_in_conv_, proj_out_conv_;      // otherwise
  std::vector<std::shared_ptr<nn::BasicTransformerBlock>> blocks_;
};

// What diffusers' get_down_block / get_up_block / get_mid_block pass to a block.
struct UNetBlockConfig {
  int64_t num_layers = 1;  // resnets in the block
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channel = 0;  // up blocks: channels coming from the block below
  int64_t temb_channels = 0;
  bool add_sample = false;  // add_downsample / add_upsample
  float resnet_eps = 1e-5f;
  int64_t resnet_groups = 32;
  std::string resnet_act_fn = "silu";
  std::string resnet_time_scale_shift = "default";
  float output_scale_factor = 1.0f;
  int64_t downsample_padding = 1;
  // Cross-attention blocks only.
  bool has_attention = false;
  int64_t num_attention_heads = 1;
  int64_t cross_attention_dim = 0;
  std::vector<int64_t> transformer_layers;  // transformer blocks per layer (num_layers entries)
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

// DownBlock2D (has_attention false) and CrossAttnDownBlock2D (true).
class UNetDownBlock : public nn::Module {
 public:
  explicit UNetDownBlock(const UNetBlockConfig& config);
  std::string type_name() const override {
    return config_.has_attention ? "CrossAttnDownBlock2D" : "DownBlock2D";
  }
  // x [B, in, H, W] -> [B, out, H', W'] (H' = ceil(H/2) with a downsampler); appends each
  // layer's output and the downsampler's output to `skips`.
  Tensor forward(const Tensor& x, const Tensor& temb, const Tensor& encoder_hidden_states,
                 std::vector<Tensor>& skips) const;

 private:
  UNetBlockConfig config_;
  std::vector<std::shared_ptr<nn::ResnetBlock2D>> resnets_;
  std::vector<std::shared_ptr<SpatialTransformer>> attentions_;
  std::shared_ptr<nn::Downsample2D> downsampler_;
};

// UNetMidBlock2DCrossAttn.
class UNetMidBlock2DCrossAttn : public nn::Module {
 public:
  explicit UNetMidBlock2DCrossAttn(const UNetBlockConfig& config);
  std::string type_name() const override { return "UNetMidBlock2DCrossAttn"; }
  // x [B, C, H, W] -> [B, C, H, W]
  Tensor forward(const Tensor& x, const Tensor& temb, const Tensor& encoder_hidden_states) const;

 private:
  std::vector<std::shared_ptr<nn::ResnetBlock2D>> resnets_;
  std::vector<std::shared_ptr<SpatialTransformer>> attentions_;
};

// UpBlock2D (has_attention false) and CrossAttnUpBlock2D (true).
class UNetUpBlock : public nn::Module {
 public:
  explicit UNetUpBlock(const UNetBlockConfig& config);
  std::string type_name() const override {
    return config_.has_attention ? "CrossAttnUpBlock2D" : "UpBlock2D";
  }
  // x [B, prev, H, W]; pops num_layers skips from the back of `skips` (last pushed first).
  // -> [B, out, H, W], or upsampled to [B, out, up_h, up_w] (0: 2H, 2W) with an upsampler.
  Tensor forward(const Tensor& x, const Tensor& temb, const Tensor& encoder_hidden_states,
                 std::vector<Tensor>& skips, int64_t up_h = 0, int64_t up_w = 0) const;
  int64_t num_layers() const { return config_.num_layers; }

 private:
  UNetBlockConfig config_;
  std::vector<std::shared_ptr<nn::ResnetBlock2D>> resnets_;
  std::vector<std::shared_ptr<SpatialTransformer>> attentions_;
  std::shared_ptr<nn::Upsample2D> upsampler_;
};

}  // namespace stipple::models

// Attention: diffusers' `Attention` module with its default `AttnProcessor` (models/
// attention_processor.py), the multi-head attention every diffusers model uses: self-attention in
// the VAE mid-block and in transformer blocks, cross-attention to text in the UNet.
//
//   x [B, C, H, W] (spatial) -> [B, HW, C]     or x [B, L, C] (sequence)
//   optional group_norm over channels (the VAE mid-block's Attention(norm_num_groups=...))
//   q = to_q(x); k = to_k(ctx); v = to_v(ctx)  (ctx = encoder_hidden_states, or x for self-attn)
//   out = to_out.0(softmax(q k^T * scale + mask) v)   (heads split from the inner dim)
//   spatial: back to [B, C, H, W];  + residual (residual_connection);  / rescale_output_factor
//
// Parameter names equal diffusers' keys: to_q.weight, to_k.bias, to_out.0.weight,
// group_norm.weight, ... (`to_out.1` is dropout and has no parameters). Old checkpoints name the
// projections query/key/value/proj_attn, sometimes as 1x1-conv weights [O, I, 1, 1];
// convert_legacy_attention_keys() maps them onto an Attention's names before load_state_dict.
//
// The upcast flags are accepted for config fidelity; stipple computes attention in f32 anyway.
//
// Leaves out: added_kv_proj_dim (UnCLIP/Kandinsky), norm_cross, qk_norm, spatial_norm (MoVQ),
// only_cross_attention, the sliced/xformers processors, and attention dropout (inference has
// none; training of these blocks uses no attention dropout).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::nn {

// Constructor arguments of diffusers' Attention (same names and defaults).
struct AttentionConfig {
  int64_t query_dim = 0;            // channels of x (required)
  int64_t cross_attention_dim = 0;  // channels of encoder_hidden_states; 0: query_dim
  int64_t heads = 8;
  int64_t dim_head = 64;
  int64_t out_dim = 0;   // 0: query_dim. When set, heads = out_dim / dim_head (as diffusers)
  bool bias = false;     // to_q, to_k, to_v
  bool out_bias = true;  // to_out.0
  bool upcast_attention = false;  // accepted; computed in f32 regardless
  bool upcast_softmax = false;    // accepted; computed in f32 regardless
  int64_t norm_num_groups = 0;    // > 0: group_norm = GroupNorm(norm_num_groups, query_dim, eps)
  float eps = 1e-5f;              // group_norm's eps
  bool residual_connection = false;
  float rescale_output_factor = 1.0f;
  bool scale_qk = true;  // scale = dim_head^-0.5 (or `scale` when > 0); false: scale 1
  float scale = 0.0f;
};

class Attention : public Module {
 public:
  explicit Attention(const AttentionConfig& config);
  std::string type_name() const override { return "Attention"; }

  // x: [B, C, H, W] or [B, L, C]. encoder_hidden_states: [B, Lk, cross_attention_dim] or
  // undefined (self-attention). attention_mask: additive f32, [B, Lk], [B, 1|Lq, Lk] or
  // [B, 1|heads, 1|Lq, Lk] (use a large negative value to block). Returns x's shape with
  // out_dim channels.
  Tensor forward(const Tensor& x, const Tensor& encoder_hidden_states = Tensor(),
                 const Tensor& attention_mask = Tensor()) const;
  Tensor operator()(const Tensor& x, const Tensor& encoder_hidden_states = Tensor(),
                    const Tensor& attention_mask = Tensor()) const {
    return forward(x, encoder_hidden_states, attention_mask);
  }

  const AttentionConfig& config() const { return config_; }
  int64_t heads() const { return heads_; }
  int64_t inner_dim() const { return inner_dim_; }
  float scale() const { return scale_; }

  const std::shared_ptr<Linear>& to_q() const { return to_q_; }
  const std::shared_ptr<Linear>& to_k() const { return to_k_; }
  const std::shared_ptr<Linear>& to_v() const { return to_v_; }
  const std::shared_ptr<Linear>& to_out() const { return to_out_; }
  const std::shared_ptr<GroupNorm>& group_norm() const { return group_norm_; }  // may be null

 private:
  AttentionConfig config_;
  int64_t heads_, inner_dim_, out_dim_;
  float scale_;
  std::shared_ptr<GroupNorm> group_norm_;
  std::shared_ptr<Linear> to_q_, to_k_, to_v_, to_out_;
};

// Rewrites the old attention key names in `state` (a checkpoint's tensors) for every Attention
// inside `model`, in place: `<path>.query|key|value|proj_attn.{weight,bias}` become
// `<path>.to_q|to_k|to_v|to_out.0.{weight,bias}`, and 1x1-conv weights [O, I, 1, 1] for those
// projections are viewed as [O, I]. Only paths of Attention modules are touched, so a tensor
// named `key` elsewhere is left alone; new-style names pass through unchanged. Returns the number
// of tensors renamed or reshaped. (diffusers: ModelMixin._convert_deprecated_attention_blocks.)
int convert_legacy_attention_keys(Module& model, std::map<std::string, Tensor>& state);

}  // namespace stipple::nn

// The transformer block of diffusers' denoisers (models/attention.py), shared by the UNet's
// spatial transformers (norm_type "layer_norm", Stable Diffusion) and DiT (norm_type
// "ada_norm_zero", Peebles & Xie 2023, Fig. 3 "DiT block with adaLN-Zero"):
//
//   FeedForward            net.0 = GELU | GEGLU | ApproximateGELU (its `proj`), net.2 = Linear
//   AdaLayerNormZero       c -> SiLU -> linear -> shift/scale/gate for attention and MLP
//   BasicTransformerBlock  x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)),
//                          with adaLN-Zero's modulation and gates around attn1 and ff
//
// Parameter names equal diffusers' keys (`norm1.linear.weight`, `attn1.to_q.weight`,
// `ff.net.0.proj.weight`, `ff.net.2.bias`, `norm1.emb.class_embedder.embedding_table.weight`).
//
// Leaves out: norm types "ada_norm", "ada_norm_single" (PixArt), "ada_norm_continuous",
// "layer_norm_i2vgen"; GLIGEN's gated fuser (attention_type "gated"); positional_embeddings;
// chunked feed-forward; and dropout (the configs of SD and DiT use 0; a nonzero value is accepted
// and not applied).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/attention.h"
#include "nn/embeddings.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::nn {

// ---------------- feed-forward ----------------

// diffusers' GELU: proj then GELU (erf, or the tanh approximation).
class GELU : public Module {
 public:
  GELU(int64_t dim_in, int64_t dim_out, bool tanh_approximation, bool bias = true);
  std::string type_name() const override { return "GELU"; }
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]
  std::shared_ptr<Linear> proj;

 private:
  bool tanh_;
};

// diffusers' GEGLU (Shazeer 2020): proj to 2*out, (hidden, gate) = chunk(2), hidden * gelu(gate).
class GEGLU : public Module {
 public:
  GEGLU(int64_t dim_in, int64_t dim_out, bool bias = true);
  std::string type_name() const override { return "GEGLU"; }
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]
  std::shared_ptr<Linear> proj;
};

// diffusers' ApproximateGELU: proj then x * sigmoid(1.702 x).
class ApproximateGELU : public Module {
 public:
  ApproximateGELU(int64_t dim_in, int64_t dim_out, bool bias = true);
  std::string type_name() const override { return "ApproximateGELU"; }
  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]
  std::shared_ptr<Linear> proj;
};

struct FeedForwardOptions {
  int64_t dim_out = 0;  // 0: dim
  int64_t mult = 4;     // inner_dim = dim * mult unless inner_dim > 0
  int64_t inner_dim = 0;
  float dropout = 0.0f;  // accepted, not applied
  // "geglu" | "gelu" | "gelu-approximate" (GELU, tanh) | "geglu-approximate" (ApproximateGELU)
  std::string activation_fn = "geglu";
  bool final_dropout = false;
  bool bias = true;
};

// diffusers' FeedForward: net.0 (activation with its projection), net.1 (dropout), net.2 (Linear).
// With a chunk size set (diffusers' enable_forward_chunking; low-memory runs) and nothing to
// record for autograd, the rows go through in chunks of that many, so the widest activation
// (GEGLU's [rows, 2 * inner]) exists for one chunk at a time; and a projection with more than
// 16 MiB of f32 weights goes in parts of its inner features (transformer_block.cc); the weights of
// each projection, or of each part, are widened once for all the row chunks.
void set_feed_forward_chunk_rows(int64_t rows);  // 0 (default): no chunking
int64_t feed_forward_chunk_rows();
class FeedForward : public Module {
 public:
  FeedForward(int64_t dim, const FeedForwardOptions& options = {});
  std::string type_name() const override { return "FeedForward"; }
  Tensor forward(const Tensor& x) const;  // [..., dim] -> [..., dim_out]
  Tensor operator()(const Tensor& x) const { return forward(x); }

  std::shared_ptr<ModuleList> net;
  // net.0's projection (GELU/GEGLU/ApproximateGELU's proj) and net.2, for initialisers.
  const std::shared_ptr<Linear>& act_proj() const { return act_proj_; }
  const std::shared_ptr<Linear>& out_proj() const { return out_proj_; }

 private:
  // net.0's activation, decided once at construction (no lookups on the forward path).
  enum class Kind { kGelu, kGeluTanh, kGeglu, kApproximateGelu };
  Kind kind_ = Kind::kGeglu;
  std::shared_ptr<Linear> act_proj_, out_proj_;
  std::vector<Tensor> forward_chunks(const std::vector<Tensor>& xs) const;
  // net.0's activation of its projection h; GEGLU with `gate` undefined splits h into
  // (hidden, gate) halves, with it takes h as the hidden half.
  Tensor activate(const Tensor& h, const Tensor& gate = Tensor()) const;
};

// ---------------- adaLN-Zero ----------------

// diffusers' AdaLayerNormZero (DiT's adaLN-Zero): emb = CombinedTimestepLabelEmbeddings when
// num_embeddings > 0; linear(SiLU(c)) -> (shift, scale, gate)_msa, (shift, scale, gate)_mlp;
// x_n = LN(x; no affine, eps 1e-6) * (1 + scale_msa) + shift_msa.
class AdaLayerNormZero : public Module {
 public:
  AdaLayerNormZero(int64_t embedding_dim, int64_t num_embeddings, bool bias = true);
  std::string type_name() const override { return "AdaLayerNormZero"; }

  struct Output {
    Tensor x;          // [B, L, D] modulated, normalised input of attn1
    Tensor gate_msa;   // [B, D]
    Tensor shift_mlp;  // [B, D]
    Tensor scale_mlp;  // [B, D]
    Tensor gate_mlp;   // [B, D]
  };
  // x [B, L, D]; either timestep [B] and class_labels i64 [B] (through `emb`) or a ready
  // conditioning vector `c` [B, D].
  Output forward(const Tensor& x, const Tensor& timestep, const Tensor& class_labels,
                 const Tensor& c = Tensor()) const;

  std::shared_ptr<CombinedTimestepLabelEmbeddings> emb;  // null without num_embeddings
  std::shared_ptr<Linear> linear;                        // D -> 6D
  std::shared_ptr<LayerNorm> norm;                       // no affine, eps 1e-6
};

// ---------------- the block ----------------

// BasicTransformerBlock's constructor arguments (diffusers names and defaults).
struct BasicTransformerBlockConfig {
  int64_t dim = 0;
  int64_t num_attention_heads = 0;
  int64_t attention_head_dim = 0;
  float dropout = 0.0f;
  int64_t cross_attention_dim = 0;  // 0: None
  std::string activation_fn = "geglu";
  int64_t num_embeds_ada_norm = 0;  // 0: None; required by "ada_norm_zero"
  bool attention_bias = false;
  bool only_cross_attention = false;
  bool double_self_attention = false;
  bool upcast_attention = false;
  bool norm_elementwise_affine = true;
  std::string norm_type = "layer_norm";  // "layer_norm" | "ada_norm_zero"
  float norm_eps = 1e-5f;
  bool final_dropout = false;
  std::string attention_type = "default";
  int64_t ff_inner_dim = 0;  // 0: 4 * dim
  bool ff_bias = true;
  bool attention_out_bias = true;
};

class BasicTransformerBlock : public Module {
 public:
  explicit BasicTransformerBlock(const BasicTransformerBlockConfig& config);
  std::string type_name() const override { return "BasicTransformerBlock"; }

  // hidden_states [B, L, D]; encoder_hidden_states [B, Lk, cross_attention_dim] or undefined;
  // masks additive as Attention takes them; timestep [B] and class_labels i64 [B] for
  // "ada_norm_zero". Returns [B, L, D].
  Tensor forward(const Tensor& hidden_states, const Tensor& encoder_hidden_states = Tensor(),
                 const Tensor& attention_mask = Tensor(),
                 const Tensor& encoder_attention_mask = Tensor(), const Tensor& timestep = Tensor(),
                 const Tensor& class_labels = Tensor()) const;

  const BasicTransformerBlockConfig& config() const { return config_; }

  // norm1 is a LayerNorm ("layer_norm") or an AdaLayerNormZero ("ada_norm_zero").
  std::shared_ptr<LayerNorm> norm1;
  std::shared_ptr<AdaLayerNormZero> norm1_ada_zero;
  std::shared_ptr<Attention> attn1;
  std::shared_ptr<LayerNorm> norm2;  // null without attn2
  std::shared_ptr<Attention> attn2;  // null without cross_attention_dim / double_self_attention
  std::shared_ptr<LayerNorm> norm3;
  std::shared_ptr<FeedForward> ff;

 private:
  BasicTransformerBlockConfig config_;
};

}  // namespace stipple::nn

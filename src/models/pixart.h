// PixArtTransformer2DModel: the text-conditioned DiT of PixArt-alpha (Chen et al. 2023, Fig. 3),
// as diffusers 0.29 builds it, with parameter names equal to its keys:
//
//   x [B, C, H, W] --pos_embed (patchify + 2-D sin-cos)--> tokens [B, N, D]
//   emb = timestep_embedder(sinusoid_256(t)) (+ pooled_text_embedder(pooled), see below)  [B, D]
//   mod = adaln_single.linear(SiLU(emb))                      [B, 6D]   ("adaLN-single")
//   ctx = caption_projection(text states)                     [B, T, D] (linear, GELU-tanh, linear)
//   block i: (shift, scale, gate)_{msa,mlp} = scale_shift_table_i [6, D] + mod
//            x += gate_msa * attn1(LN(x) * (1 + scale_msa) + shift_msa)
//            x += attn2(x, ctx)                               (cross-attention, no norm: PixArt)
//            x += gate_mlp * ff(LN(x) * (1 + scale_mlp) + shift_mlp)
//   final:  (shift, scale) = scale_shift_table [2, D] + emb;  proj_out(LN(x) * (1 + scale) + shift)
//           -> [B, N, p*p*C_out] --unpatchify--> [B, C_out, H, W]
//
// Why cross-attention (PixArt) rather than joint attention over text and image tokens
// (SD3/MMDiT): the text states come from a frozen encoder and need no updating inside the
// denoiser, the image tokens' self-attention keeps its cost, and the text length (32 here) only
// enters the cross-attention's keys.
//
// stipple's extension (config key `pooled_projection_dim`, 0 = off as in diffusers): the text
// encoder's pooled, projected embedding goes through `pooled_text_embedder` (linear, SiLU, linear;
// SD3's text_embedder) and is added to the timestep embedding, so the whole caption also steers
// every block's modulation. A small model trained briefly learns the caption's identity from it
// faster than through cross-attention alone.
//
// Leaves out: PixArt's resolution/aspect-ratio conditions (use_additional_conditions), the
// encoder attention mask (contexts are CLIP-style: padded with the end token, all attended),
// dropout.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/tensor.h"
#include "io/json.h"
#include "nn/attention.h"
#include "nn/embeddings.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/transformer_block.h"

namespace stipple {
class Generator;
}

namespace stipple::models {

struct PixArtConfig {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 72;
  int64_t in_channels = 4;
  int64_t out_channels = 8;
  int64_t num_layers = 28;
  int64_t sample_size = 128;  // latent pixels
  int64_t patch_size = 2;
  int64_t cross_attention_dim = 1152;  // = inner dim (the caption projection's output)
  int64_t caption_channels = 4096;     // the text encoder's hidden size
  int64_t pooled_projection_dim = 0;   // stipple: > 0 adds the pooled text embedding
  bool attention_bias = true;
  std::string activation_fn = "gelu-approximate";
  float norm_eps = 1e-6f;
  double interpolation_scale = 0;  // 0: max(sample_size / 64, 1), as diffusers

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  static PixArtConfig from_json(const io::JsonConfig& j);
  static PixArtConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
  void validate(const std::string& where) const;
};

// One PixArt block (BasicTransformerBlock with norm_type "ada_norm_single").
class PixArtBlock : public nn::Module {
 public:
  explicit PixArtBlock(const PixArtConfig& c);
  std::string type_name() const override { return "BasicTransformerBlock"; }
  // x [B, N, D], mod [B, 6D], ctx [B, T, D] -> [B, N, D]
  Tensor forward(const Tensor& x, const Tensor& mod, const Tensor& ctx) const;

  Tensor scale_shift_table;  // [6, D]
  std::shared_ptr<nn::LayerNorm> norm1, norm2;  // no affine
  std::shared_ptr<nn::Attention> attn1, attn2;
  std::shared_ptr<nn::FeedForward> ff;
};

class PixArtTransformer2DModel : public nn::Module {
 public:
  explicit PixArtTransformer2DModel(const PixArtConfig& config);
  std::string type_name() const override { return "PixArtTransformer2DModel"; }

  // x [B, C, H, W]; timestep [B] (f32 or i64); text [B, T, caption_channels]; pooled
  // [B, pooled_projection_dim] (only with the extension) -> [B, out_channels, H, W].
  Tensor forward(const Tensor& x, const Tensor& timestep, const Tensor& text,
                 const Tensor& pooled = Tensor()) const;

  // PixArt's initialisation: xavier_uniform Linears (zero bias), the patch projection as a
  // Linear, N(0, 0.02) for the timestep MLP, adaLN-single's linear and the caption projection,
  // scale_shift_tables ~ N(0, 1) / sqrt(D), and zero for every cross-attention output and the
  // final projection (the model starts by predicting 0).
  void reset_parameters(Generator& gen) override;

  // folder/config.json + folder/diffusion_pytorch_model.safetensors (or .fp16), strict.
  static std::shared_ptr<PixArtTransformer2DModel> from_pretrained(const std::string& folder);

  const PixArtConfig& config() const { return config_; }

 private:
  PixArtConfig config_;
  std::shared_ptr<nn::PatchEmbed> pos_embed_;
  std::shared_ptr<nn::ModuleList> blocks_;
  std::shared_ptr<nn::Timesteps> time_proj_;
  std::shared_ptr<nn::TimestepEmbedding> timestep_embedder_;
  std::shared_ptr<nn::Linear> adaln_linear_;
  std::shared_ptr<nn::Linear> caption_linear_1_, caption_linear_2_;
  std::shared_ptr<nn::Linear> pooled_linear_1_, pooled_linear_2_;  // null without the extension
  Tensor scale_shift_table_;  // [2, D]
  std::shared_ptr<nn::LayerNorm> norm_out_;
  std::shared_ptr<nn::Linear> proj_out_;
};

}  // namespace stipple::models

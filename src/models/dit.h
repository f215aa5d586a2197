// DiT: the class-conditional latent diffusion transformer of Peebles & Xie, "Scalable Diffusion
// Models with Transformers" (2023), as diffusers 0.29's DiTTransformer2DModel (and the legacy
// Transformer2DModel with patch input and norm_type "ada_norm_zero", which computes the same
// function with the same parameter names).
//
//   x [B, C, H, W] --pos_embed (patchify + 2-D sin-cos)--> tokens [B, N, D]
//   c = t_emb(t) + y_emb(y)                           (per block: transformer_blocks.i.norm1.emb)
//   tokens = DiT block with adaLN-Zero (x num_layers)  (nn/transformer_block.h)
//   final layer: shift, scale = proj_out_1(SiLU(c_0)); LN(tokens) * (1 + scale) + shift;
//                proj_out_2 -> [B, N, p*p*C_out] --unpatchify--> [B, C_out, H, W]
//
// With learned sigma (out_channels = 2 * in_channels) the first in_channels output channels are
// the noise prediction and the rest the variance interpolation; the pipeline takes the first half.
//
// Leaves out: cross-attention conditioning (text) and the other norm types of Transformer2DModel
// (its continuous-input form is the UNet's spatial transformer), PixArt's ada_norm_single.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/json.h"
#include "nn/embeddings.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/transformer_block.h"

namespace stipple {
class Generator;
}

namespace stipple::models {

// config.json of DiTTransformer2DModel / Transformer2DModel (diffusers names; each class's own
// defaults for missing keys).
struct DiTConfig {
  std::string class_name = "DiTTransformer2DModel";
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 72;
  int64_t in_channels = 4;
  int64_t out_channels = 0;  // 0: in_channels
  int64_t num_layers = 28;
  float dropout = 0.0f;
  bool attention_bias = true;
  int64_t sample_size = 32;  // latent pixels
  int64_t patch_size = 2;
  std::string activation_fn = "gelu-approximate";
  int64_t num_embeds_ada_norm = 1000;  // number of classes (the label table has one more row)
  bool upcast_attention = false;
  std::string norm_type = "ada_norm_zero";
  bool norm_elementwise_affine = false;
  float norm_eps = 1e-5f;
  int64_t cross_attention_dim = 0;   // Transformer2DModel only; 0: none
  double interpolation_scale = 1.0;  // PatchEmbed's; Transformer2DModel: max(sample/64, 1)

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t output_channels() const { return out_channels > 0 ? out_channels : in_channels; }
  // Whether the model also predicts the variance (learned sigma): out = 2 * in.
  bool learned_sigma() const { return output_channels() == 2 * in_channels; }

  // Parses and checks a config (errors name the file and key).
  static DiTConfig from_json(const io::JsonConfig& json);
  static DiTConfig from_file(const std::string& path);
  // Throws a stipple::Error naming the field when the values cannot build a model.
  void validate(const std::string& where = "DiTConfig") const;
};

class DiTTransformer2DModel : public nn::Module {
 public:
  explicit DiTTransformer2DModel(const DiTConfig& config);
  std::string type_name() const override { return "DiTTransformer2DModel"; }

  // x [B, in_channels, H, W] (H, W multiples of patch_size), timestep [B] (or 0-d / [1]) f32 or
  // i64, class_labels i64 [B] in [0, num_embeds_ada_norm] (the last is the null class).
  // Returns [B, out_channels, H, W].
  Tensor forward(const Tensor& x, const Tensor& timestep, const Tensor& class_labels,
                 const Tensor& encoder_hidden_states = Tensor()) const;

  // The conditioning vector c = t_emb + y_emb of block 0 (used by the final layer): [B, D].
  Tensor conditioning(const Tensor& timestep, const Tensor& class_labels) const;
  // [B, N, p*p*C] tokens -> [B, C, h*p, w*p] for an h x w patch grid.
  Tensor unpatchify(const Tensor& tokens, int64_t h, int64_t w) const;

  // DiT's initialisation (facebookresearch/DiT models.py initialize_weights): xavier_uniform for
  // every Linear (q/k/v with the bound of DiT's fused qkv Linear) and for the patch projection
  // seen as a Linear, zero biases, N(0, 0.02) for the label tables and the timestep MLP weights,
  // and zero for every adaLN modulation and the final layer ("adaLN-Zero": each block starts as
  // the identity and the model's output as zero). The sin-cos table is fixed.
  void reset_parameters(Generator& gen) override;

  // Reads `folder`/config.json and `folder`/diffusion_pytorch_model.safetensors (or the .fp16
  // variant), checks every tensor's name, shape and dtype, and returns the model in eval mode.
  // A Transformer2DModel config gives a Transformer2DModel.
  static std::shared_ptr<DiTTransformer2DModel> from_pretrained(const std::string& folder);

  const DiTConfig& config() const { return config_; }

  std::shared_ptr<nn::PatchEmbed> pos_embed;
  std::shared_ptr<nn::ModuleList> transformer_blocks;  // BasicTransformerBlock (ada_norm_zero)
  std::shared_ptr<nn::LayerNorm> norm_out;             // no affine, eps 1e-6
  std::shared_ptr<nn::Linear> proj_out_1;              // D -> 2D (shift, scale)
  std::shared_ptr<nn::Linear> proj_out_2;              // D -> p*p*out_channels
  std::shared_ptr<nn::BasicTransformerBlock> block(size_t i) const {
    return transformer_blocks->at<nn::BasicTransformerBlock>(i);
  }

 private:
  DiTConfig config_;
};

// diffusers' legacy Transformer2DModel with patch input and norm_type "ada_norm_zero": the same
// model and key names under the old class name.
class Transformer2DModel : public DiTTransformer2DModel {
 public:
  explicit Transformer2DModel(const DiTConfig& config) : DiTTransformer2DModel(config) {}
  std::string type_name() const override { return "Transformer2DModel"; }
};

// ---- class names (ImageNet labels for the released DiT checkpoints) ----

// `id2label` ({"0": "tench, Tinca tinca", ...}) from a DiT pipeline's model_index.json or a
// transformer config.json; empty when the file has none.
std::map<int64_t, std::string> read_id2label(const std::string& json_path);
// DiTPipeline.get_label_ids: each comma-separated synonym of every label names its id. Unknown
// names throw an error that names them. Ids given as numbers ("207") pass through.
std::vector<int64_t> get_label_ids(const std::map<int64_t, std::string>& id2label,
                                   const std::vector<std::string>& names);

}  // namespace stipple::models

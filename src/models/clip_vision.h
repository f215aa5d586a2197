// CLIPVisionModelWithProjection: CLIP's image tower (Radford et al. 2021) as transformers builds
// it, with parameter names equal to the checkpoint keys (`vision_model.embeddings.patch_embedding
// .weight`, `visual_projection.weight`, ...), so a transformers `image_encoder/` folder loads by
// name.
//
//   pixels [B, 3, S, S] -> patch conv (no bias) [B, D, S/p, S/p] -> tokens [B, N, D]
//   -> [class_embedding; tokens] + position_embedding [B, N+1, D] -> pre_layrnorm
//   -> L pre-LayerNorm blocks (bidirectional attention, the text tower's CLIPEncoderLayer)
//   -> pooled = post_layernorm(h[:, 0]) [B, D] -> image_embeds = visual_projection(pooled) [B, P]
//
// Pixels are taken as they come: stipple's CLIPs trained here see images in [-1, 1]; a caller
// running OpenAI's weights normalises with their mean and std first.
//
// Leaves out: interpolated position embeddings for other image sizes, output_attentions, and
// dropout (CLIP uses none).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/json.h"
#include "models/clip_text.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::models {

struct CLIPVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";
  float layer_norm_eps = 1e-5f;
  int64_t projection_dim = 512;

  static CLIPVisionConfig from_json(const io::JsonConfig& cfg);
  static CLIPVisionConfig from_file(const std::string& path);
  nlohmann::json to_json() const;  // transformers' config.json (CLIPVisionModelWithProjection)
  void validate(const std::string& where) const;
  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  // The same sizes as a text config, for the shared encoder layers.
  CLIPTextConfig layer_config() const;
};

struct CLIPVisionOutput {
  Tensor last_hidden_state;  // [B, N+1, D], before post_layernorm
  Tensor pooler_output;      // [B, D]
  Tensor image_embeds;       // [B, P]
};

class CLIPVisionModelWithProjection : public nn::Module {
 public:
  explicit CLIPVisionModelWithProjection(const CLIPVisionConfig& cfg);
  std::string type_name() const override { return "CLIPVisionModelWithProjection"; }

  // folder/config.json and folder/model.safetensors, every name and shape checked.
  static std::shared_ptr<CLIPVisionModelWithProjection> from_pretrained(const std::string& folder);

  CLIPVisionOutput forward(const Tensor& pixels) const;  // [B, C, S, S]
  const CLIPVisionConfig& config() const { return cfg_; }

 private:
  CLIPVisionConfig cfg_;
  Tensor class_embedding_;  // [D]
  std::shared_ptr<nn::Conv2d> patch_embedding_;
  std::shared_ptr<nn::Embedding> position_embedding_;
  std::shared_ptr<nn::LayerNorm> pre_layrnorm_, post_layernorm_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::Linear> visual_projection_;
};

}  // namespace stipple::models

// CLIPTextModel: the text encoder of Stable Diffusion 1.x/2.x (transformers' CLIPTextModel), with
// parameter names equal to the checkpoint keys (`text_model.encoder.layers.0.self_attn.q_proj
// .weight`, ...), so a transformers `text_encoder/` folder loads with every name and shape checked.
//
//   ids [B, T] -> token_embedding + position_embedding -> L pre-LayerNorm blocks
//   (x += out_proj(causal_attn(LN1(x))); x += fc2(act(fc1(LN2(x))))) -> final_layer_norm
//
// act is `quick_gelu` x*sigmoid(1.702x) (OpenAI CLIP, SD 1.x) or `gelu` (erf; OpenCLIP, SD 2.x),
// read from config.json. A causal mask always applies; no padding mask (the SD pipelines pass
// none, and every one of the 77 positions is used by cross-attention).
//
// Outputs, as transformers 4.39: last_hidden_state (after final_layer_norm), pooler_output (the
// final hidden state at the EOS position: argmax(ids) under the legacy eos_token_id == 2 of SD 1.x
// configs, else the first position equal to eos_token_id, position 0 when there is none), and
// hidden_states (0 = embeddings, i = after layer i, the last one before final_layer_norm).
// clip_skip follows the A1111 convention: 1 = the last layer, k = the output of layer -(k), then
// final_layer_norm, which is diffusers' encode_prompt with its clip_skip = k - 1. Only
// last_hidden_state depends on it.
//
// A checkpoint holding `text_projection.weight` (CLIPTextModelWithProjection, SDXL's second
// encoder) gets the bias-free projection too, and text_embeds = text_projection(pooler_output).
// The I64 buffer `text_model.embeddings.position_ids` some checkpoints store is accepted and
// ignored (a non-persistent buffer, as in transformers).
//
// Leaves out: attention masks, dropout (inference only), output_attentions, the vision tower,
// .bin checkpoints, and SDXL's "penultimate layer without final_layer_norm" convention (callers
// can take hidden_states[L-1] themselves).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/json.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::models {

struct CLIPTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // quick_gelu | gelu | gelu_new | gelu_pytorch_tanh
  float layer_norm_eps = 1e-5f;
  int64_t projection_dim = 512;  // used only with text_projection
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;  // 2 in SD 1.x configs: the legacy argmax rule
  int64_t pad_token_id = 1;

  // Reads a transformers config.json object; missing keys keep the defaults above, unknown keys
  // are ignored, and bad values throw naming the file and the key.
  static CLIPTextConfig from_json(const io::JsonConfig& cfg);
  static CLIPTextConfig from_file(const std::string& path);
  // transformers' config.json; `with_projection` names CLIPTextModelWithProjection.
  nlohmann::json to_json(bool with_projection) const;
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

struct CLIPTextOutput {
  Tensor last_hidden_state;           // [B, T, D]
  Tensor pooler_output;               // [B, D]
  Tensor text_embeds;                 // [B, P], only with text_projection
  std::vector<Tensor> hidden_states;  // L + 1 tensors [B, T, D]
};

class CLIPAttention : public nn::Module {
 public:
  // causal: the text tower's mask; the vision tower (clip_vision.h) attends both ways.
  explicit CLIPAttention(const CLIPTextConfig& cfg, bool causal = true);
  std::string type_name() const override { return "CLIPAttention"; }
  Tensor forward(const Tensor& x) const;  // [B, T, D] -> [B, T, D]

 private:
  int64_t heads_, head_dim_;
  bool causal_;
  std::shared_ptr<nn::Linear> q_proj_, k_proj_, v_proj_, out_proj_;
};

class CLIPMLP : public nn::Module {
 public:
  explicit CLIPMLP(const CLIPTextConfig& cfg);
  std::string type_name() const override { return "CLIPMLP"; }
  Tensor forward(const Tensor& x) const;  // [B, T, D] -> [B, T, D]

 private:
  std::string act_;
  std::shared_ptr<nn::Linear> fc1_, fc2_;
};

class CLIPEncoderLayer : public nn::Module {
 public:
  explicit CLIPEncoderLayer(const CLIPTextConfig& cfg, bool causal = true);
  std::string type_name() const override { return "CLIPEncoderLayer"; }
  Tensor forward(const Tensor& x) const;  // [B, T, D] -> [B, T, D]

 private:
  std::shared_ptr<CLIPAttention> self_attn_;
  std::shared_ptr<nn::LayerNorm> layer_norm1_, layer_norm2_;
  std::shared_ptr<CLIPMLP> mlp_;
};

class CLIPTextEmbeddings : public nn::Module {
 public:
  explicit CLIPTextEmbeddings(const CLIPTextConfig& cfg);
  std::string type_name() const override { return "CLIPTextEmbeddings"; }
  Tensor forward(const Tensor& ids) const;  // i64 [B, T] -> [B, T, D]
  // Textual-inversion vectors: rows for the ids vocab_size, vocab_size + 1, ... (f32 [n, D]).
  void append_tokens(const Tensor& rows);
  int64_t num_extra_tokens() const { return extra_.defined() ? extra_.size(0) : 0; }

 private:
  std::shared_ptr<nn::Embedding> token_embedding_, position_embedding_;
  int64_t vocab_size_;
  Tensor extra_;  // [n, D] or undefined
  Tensor position_ids_;  // i64 [1, max_position_embeddings], non-persistent
};

class CLIPTextModel : public nn::Module {
 public:
  explicit CLIPTextModel(const CLIPTextConfig& cfg, bool with_projection = false);
  std::string type_name() const override { return "CLIPTextModel"; }

  // Reads folder/config.json and folder/model.safetensors (every tensor name, shape and dtype
  // checked; f16/bf16 weights are converted to f32).
  static std::shared_ptr<CLIPTextModel> from_pretrained(const std::string& folder);

  // ids: i64 [B, T], T <= max_position_embeddings, every id < vocab_size + added tokens.
  CLIPTextOutput forward(const Tensor& ids, int clip_skip = 1) const;

  // Textual inversion: appends token embeddings (f32 [n, hidden_size]) for new ids, returned
  // as the first of them (vocab_size + the tokens added before), as transformers'
  // resize_token_embeddings does for diffusers' load_textual_inversion.
  int64_t add_token_embeddings(const Tensor& rows);
  int64_t num_tokens() const { return cfg_.vocab_size + embeddings_->num_extra_tokens(); }

  // The pooled position of each row (see the header comment for the two rules).
  static std::vector<int64_t> eos_positions(const Tensor& ids, int64_t eos_token_id);

  const CLIPTextConfig& config() const { return cfg_; }
  const nn::LayerNorm& final_layer_norm() const { return *final_layer_norm_; }
  bool has_projection() const { return text_projection_ != nullptr; }

 private:
  CLIPTextConfig cfg_;
  std::shared_ptr<CLIPTextEmbeddings> embeddings_;
  std::shared_ptr<nn::ModuleList> layers_;
  std::shared_ptr<nn::LayerNorm> final_layer_norm_;
  std::shared_ptr<nn::Linear> text_projection_;
};

}  // namespace stipple::models

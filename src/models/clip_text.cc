// CLIPTextModel: config parsing, the blocks (attention, MLP, encoder layer, embeddings) and the
// model, top to bottom. See clip_text.h for the architecture and what is left out.
#include "models/clip_text.h"
#include "models/component.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace stipple::models {

namespace fs = std::filesystem;

// ---------------- config ----------------

CLIPTextConfig CLIPTextConfig::from_json(const io::JsonConfig& j) {
  CLIPTextConfig c;
  c.vocab_size = j.integer("vocab_size", c.vocab_size);
  c.hidden_size = j.integer("hidden_size", c.hidden_size);
  c.intermediate_size = j.integer("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = j.integer("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = j.integer("num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings = j.integer("max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = j.string("hidden_act", c.hidden_act);
  c.layer_norm_eps = static_cast<float>(j.number("layer_norm_eps", c.layer_norm_eps));
  c.projection_dim = j.integer("projection_dim", c.projection_dim);
  c.bos_token_id = j.integer("bos_token_id", c.bos_token_id);
  c.eos_token_id = j.integer("eos_token_id", c.eos_token_id);
  c.pad_token_id = j.integer("pad_token_id", c.pad_token_id);

  const std::string& w = j.where();
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                               {"hidden_size", c.hidden_size},
                               {"intermediate_size", c.intermediate_size},
                               {"num_hidden_layers", c.num_hidden_layers},
                               {"num_attention_heads", c.num_attention_heads},
                               {"max_position_embeddings", c.max_position_embeddings},
                               {"projection_dim", c.projection_dim}}) {
    STIPPLE_CHECK(v > 0, w, ": '", key, "' must be positive, got ", v);
  }
  // Upper bounds far above any released text encoder: a corrupt config fails here.
  STIPPLE_CHECK(c.vocab_size <= 1000000 && c.hidden_size <= 16384 &&
                    c.intermediate_size <= 65536 && c.num_hidden_layers <= 256 &&
                    c.num_attention_heads <= 1024 && c.max_position_embeddings <= 65536 &&
                    c.projection_dim <= 16384,
                w, ": a size is out of range (vocab_size <= 1e6, hidden_size <= 16384, "
                "intermediate_size <= 65536, num_hidden_layers <= 256, num_attention_heads <= "
                "1024, max_position_embeddings <= 65536, projection_dim <= 16384)");
  STIPPLE_CHECK(c.hidden_size % c.num_attention_heads == 0, w, ": hidden_size ", c.hidden_size,
                " is not divisible by num_attention_heads ", c.num_attention_heads);
  STIPPLE_CHECK(c.hidden_act == "quick_gelu" || c.hidden_act == "gelu" ||
                    c.hidden_act == "gelu_new" || c.hidden_act == "gelu_pytorch_tanh",
                w, ": 'hidden_act' is '", c.hidden_act,
                "'; supported: quick_gelu (SD 1.x), gelu (SD 2.x), gelu_new, gelu_pytorch_tanh");
  STIPPLE_CHECK(c.layer_norm_eps > 0.0f, w, ": 'layer_norm_eps' must be positive");
  return c;
}

CLIPTextConfig CLIPTextConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

nlohmann::json CLIPTextConfig::to_json(bool with_projection) const {
  return {{"architectures",
           {with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"max_position_embeddings", max_position_embeddings},
          {"hidden_act", hidden_act},
          {"layer_norm_eps", layer_norm_eps},
          {"projection_dim", projection_dim},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_id},
          {"pad_token_id", pad_token_id}};
}

// ---------------- blocks ----------------

CLIPAttention::CLIPAttention(const CLIPTextConfig& cfg, bool causal)
    : heads_(cfg.num_attention_heads), head_dim_(cfg.head_dim()), causal_(causal) {
  const int64_t d = cfg.hidden_size;
  k_proj_ = register_module("k_proj", std::make_shared<nn::Linear>(d, d));
  v_proj_ = register_module("v_proj", std::make_shared<nn::Linear>(d, d));
  q_proj_ = register_module("q_proj", std::make_shared<nn::Linear>(d, d));
  out_proj_ = register_module("out_proj", std::make_shared<nn::Linear>(d, d));
}

Tensor CLIPAttention::forward(const Tensor& x) const {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  auto heads = [&](const Tensor& y) {  // [B, T, D]
    return y
        .reshape({b, t, heads_, head_dim_})  // [B, T, H, Dh]
        .transpose(1, 2);                    // [B, H, T, Dh]
  };
  const Tensor q = heads(q_proj_->forward(x));  // [B, H, T, Dh]
  const Tensor k = heads(k_proj_->forward(x));  // [B, H, T, Dh]
  const Tensor v = heads(v_proj_->forward(x));  // [B, H, T, Dh]
  // softmax(q k^T * Dh^-0.5 + causal mask) v; transformers scales q before the product.
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  Tensor o = ops::scaled_dot_product_attention(q, k, v, Tensor(), scale, causal_);  // [B, H, T, Dh]
  o = o.transpose(1, 2).contiguous().reshape({b, t, d});          // [B, T, D]
  return out_proj_->forward(o);                                   // [B, T, D]
}

CLIPMLP::CLIPMLP(const CLIPTextConfig& cfg) : act_(cfg.hidden_act) {
  fc1_ =
      register_module("fc1", std::make_shared<nn::Linear>(cfg.hidden_size, cfg.intermediate_size));
  fc2_ =
      register_module("fc2", std::make_shared<nn::Linear>(cfg.intermediate_size, cfg.hidden_size));
}

Tensor CLIPMLP::forward(const Tensor& x) const {
  Tensor h = fc1_->forward(x);  // [B, T, I]
  if (act_ == "quick_gelu") {
    h = ops::quick_gelu(h);  // [B, T, I]
  } else {
    h = ops::gelu(h, /*tanh_approximation=*/act_ != "gelu");  // [B, T, I]
  }
  return fc2_->forward(h);  // [B, T, D]
}

CLIPEncoderLayer::CLIPEncoderLayer(const CLIPTextConfig& cfg, bool causal) {
  self_attn_ = register_module("self_attn", std::make_shared<CLIPAttention>(cfg, causal));
  layer_norm1_ = register_module(
      "layer_norm1", std::make_shared<nn::LayerNorm>(cfg.hidden_size, cfg.layer_norm_eps));
  mlp_ = register_module("mlp", std::make_shared<CLIPMLP>(cfg));
  layer_norm2_ = register_module(
      "layer_norm2", std::make_shared<nn::LayerNorm>(cfg.hidden_size, cfg.layer_norm_eps));
}

Tensor CLIPEncoderLayer::forward(const Tensor& x) const {
  Tensor h = x + self_attn_->forward(layer_norm1_->forward(x));  // [B, T, D]
  return h + mlp_->forward(layer_norm2_->forward(h));            // [B, T, D]
}

CLIPTextEmbeddings::CLIPTextEmbeddings(const CLIPTextConfig& cfg) : vocab_size_(cfg.vocab_size) {
  token_embedding_ = register_module(
      "token_embedding", std::make_shared<nn::Embedding>(cfg.vocab_size, cfg.hidden_size));
  position_embedding_ = register_module(
      "position_embedding",
      std::make_shared<nn::Embedding>(cfg.max_position_embeddings, cfg.hidden_size));
  position_ids_ = register_buffer("position_ids",
                                  Tensor::arange(cfg.max_position_embeddings, DType::kI64)
                                      .reshape({1, cfg.max_position_embeddings}),
                                  /*persistent=*/false);
}

Tensor CLIPTextEmbeddings::forward(const Tensor& given_ids) const {
  // Token ids come from the tokenizer, on the CPU: they go where the weights are.
  const Tensor ids = given_ids.to(position_ids_.device());
  const int64_t t = ids.size(1);
  const Tensor pos = position_ids_.narrow(1, 0, t);  // i64 [1, T]
  if (!extra_.defined()) {
    return token_embedding_->forward(ids)        // [B, T, D]
           + position_embedding_->forward(pos);  // + [1, T, D]
  }
  // Added tokens: look up id 0 in their place, then write their rows over it.
  std::vector<int64_t> v = ids.contiguous().to_vector_i64();
  std::vector<std::pair<size_t, int64_t>> added;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] >= vocab_size_) {
      added.emplace_back(i, v[i] - vocab_size_);
      v[i] = 0;
    }
  }
  Tensor tok =
      token_embedding_->forward(Tensor::from_vector_i64(v, ids.shape()).to(ids.device()))
          .contiguous();  // [B, T, D]
  if (!added.empty()) {
    // The added rows over the looked-up ones: tok * (1 - m) + extra[row] * m, with m 1 at the
    // added tokens (exact: each element is one term plus zero).
    std::vector<int64_t> rows(v.size(), 0);
    std::vector<float> m(v.size(), 0.0f);
    for (const auto& [at, row] : added) {
      rows[at] = row;
      m[at] = 1.0f;
    }
    const Tensor mask = Tensor::from_vector(m, {ids.size(0), t, 1}).to(ids.device());
    const Tensor own = ops::embedding(extra_.to(ids.device()),
                                      Tensor::from_vector_i64(rows, ids.shape())
                                          .to(ids.device()));  // [B, T, D]
    tok = tok * (1.0f - mask) + own * mask;
  }
  return tok + position_embedding_->forward(pos);  // [B, T, D]
}

void CLIPTextEmbeddings::append_tokens(const Tensor& rows) {
  const Tensor r = rows.contiguous().to(DType::kF32);
  extra_ = extra_.defined() ? ops::concat({extra_, r}, 0).contiguous() : r.clone();
}

// ---------------- model ----------------

CLIPTextModel::CLIPTextModel(const CLIPTextConfig& cfg, bool with_projection) : cfg_(cfg) {
  auto text_model = register_module("text_model", std::make_shared<nn::Module>());
  embeddings_ =
      text_model->register_module("embeddings", std::make_shared<CLIPTextEmbeddings>(cfg));
  auto encoder = text_model->register_module("encoder", std::make_shared<nn::Module>());
  layers_ = encoder->register_module("layers", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    layers_->push_back(std::make_shared<CLIPEncoderLayer>(cfg));
  }
  final_layer_norm_ = text_model->register_module(
      "final_layer_norm", std::make_shared<nn::LayerNorm>(cfg.hidden_size, cfg.layer_norm_eps));
  if (with_projection) {
    text_projection_ = register_module(
        "text_projection",
        std::make_shared<nn::Linear>(cfg.hidden_size, cfg.projection_dim, /*bias=*/false));
  }
}

std::shared_ptr<CLIPTextModel> CLIPTextModel::from_pretrained(const std::string& folder) {
  const ComponentFiles files = find_component(folder, "CLIPTextModel", "model", "text_encoder");
  const CLIPTextConfig cfg = CLIPTextConfig::from_file(files.config);
  const fs::path weights_path(files.weights_file());
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights_path.string());
  check_config_matches(file, files.config, "text_model.embeddings.token_embedding.weight",
                       {cfg.vocab_size, cfg.hidden_size}, "[vocab_size, hidden_size]");
  std::map<std::string, Tensor> state = file.tensors();
  // The position_ids buffer is non-persistent: accept it when stored, but do not load it.
  state.erase("text_model.embeddings.position_ids");
  auto model = std::make_shared<CLIPTextModel>(cfg, state.count("text_projection.weight") > 0);
  model->load_state_dict(state, /*strict=*/true, weights_path.string());
  model->eval();
  return model;
}

std::vector<int64_t> CLIPTextModel::eos_positions(const Tensor& ids, int64_t eos_token_id) {
  STIPPLE_CHECK(ids.dim() == 2 && ids.dtype() == DType::kI64,
                "CLIPTextModel: ids must be i64 [B, T], got ", ids.describe());
  const int64_t b = ids.size(0), t = ids.size(1);
  const std::vector<int64_t> v = ids.to_vector_i64();
  std::vector<int64_t> pos(static_cast<size_t>(b), 0);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t* row = v.data() + i * t;
    int64_t best = 0;
    for (int64_t j = 0; j < t; ++j) {
      if (eos_token_id == 2) {  // legacy: argmax(ids), the first maximum
        if (row[j] > row[best]) best = j;
      } else if (row[j] == eos_token_id) {  // the first eos
        best = j;
        break;
      }
    }
    pos[static_cast<size_t>(i)] = best;
  }
  return pos;
}

int64_t CLIPTextModel::add_token_embeddings(const Tensor& rows) {
  STIPPLE_CHECK(rows.defined() && rows.dim() == 2 && rows.size(1) == cfg_.hidden_size &&
                    rows.size(0) >= 1 && rows.size(0) <= 1024,
                "CLIPTextModel: token embeddings must be [n, ", cfg_.hidden_size,
                "] with 1 <= n <= 1024, got ", rows.defined() ? rows.describe() : "none");
  const int64_t first = num_tokens();
  embeddings_->append_tokens(rows);
  return first;
}

CLIPTextOutput CLIPTextModel::forward(const Tensor& ids, int clip_skip) const {
  STIPPLE_CHECK(ids.defined() && ids.dim() == 2 && ids.dtype() == DType::kI64,
                "CLIPTextModel: input ids must be i64 [batch, tokens], got ",
                ids.defined() ? ids.describe() : std::string("an undefined tensor"));
  const int64_t b = ids.size(0), t = ids.size(1);
  STIPPLE_CHECK(t >= 1 && t <= cfg_.max_position_embeddings, "CLIPTextModel: ", t,
                " tokens, but the model has ", cfg_.max_position_embeddings,
                " positions (truncate the prompt)");
  const int64_t tokens = num_tokens();
  for (int64_t id : ids.to_vector_i64()) {
    STIPPLE_CHECK(id >= 0 && id < tokens, "CLIPTextModel: token id ", id,
                  " outside the vocabulary [0, ", tokens,
                  ") (tokenizer and text encoder do not match)");
  }
  STIPPLE_CHECK(clip_skip >= 1 && clip_skip <= cfg_.num_hidden_layers,
                "CLIPTextModel: clip_skip must be in [1, ", cfg_.num_hidden_layers, "], got ",
                clip_skip, " (1 = last layer, 2 = penultimate)");

  CLIPTextOutput out;
  Tensor h = embeddings_->forward(ids);  // [B, T, D]
  out.hidden_states.push_back(h);
  for (size_t i = 0; i < layers_->size(); ++i) {
    h = layers_->at<CLIPEncoderLayer>(i)->forward(h);  // [B, T, D]
    out.hidden_states.push_back(h);
  }
  const Tensor last = final_layer_norm_->forward(h);  // [B, T, D]
  const size_t skip_index = out.hidden_states.size() - static_cast<size_t>(clip_skip);
  // clip_skip k: the output of layer L - k + 1 (hidden_states[L + 1 - k]), normalised.
  out.last_hidden_state =
      clip_skip == 1 ? last
                     : final_layer_norm_->forward(out.hidden_states[skip_index]);  // [B, T, D]

  // Pooled output: the final hidden state at each row's EOS position.
  const std::vector<int64_t> pos = eos_positions(ids, cfg_.eos_token_id);
  std::vector<Tensor> rows;
  for (int64_t i = 0; i < b; ++i) {
    rows.push_back(last.narrow(0, i, 1)                            // [1, T, D]
                       .narrow(1, pos[static_cast<size_t>(i)], 1)  // [1, 1, D]
                       .reshape({1, cfg_.hidden_size}));           // [1, D]
  }
  out.pooler_output = ops::concat(rows, 0).contiguous();  // [B, D]
  if (text_projection_) {
    out.text_embeds = text_projection_->forward(out.pooler_output);  // [B, P]
  }
  return out;
}

}  // namespace stipple::models

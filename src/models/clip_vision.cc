// CLIPVisionModelWithProjection: config, model, loading. See clip_vision.h.
#include "models/clip_vision.h"
#include "models/component.h"

#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"

namespace stipple::models {

CLIPVisionConfig CLIPVisionConfig::from_json(const io::JsonConfig& j) {
  CLIPVisionConfig c;
  c.hidden_size = j.integer("hidden_size", c.hidden_size);
  c.intermediate_size = j.integer("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = j.integer("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = j.integer("num_attention_heads", c.num_attention_heads);
  c.num_channels = j.integer("num_channels", c.num_channels);
  c.image_size = j.integer("image_size", c.image_size);
  c.patch_size = j.integer("patch_size", c.patch_size);
  c.hidden_act = j.string("hidden_act", c.hidden_act);
  c.layer_norm_eps = static_cast<float>(j.number("layer_norm_eps", c.layer_norm_eps));
  c.projection_dim = j.integer("projection_dim", c.projection_dim);
  c.validate(j.where());
  return c;
}

CLIPVisionConfig CLIPVisionConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

nlohmann::json CLIPVisionConfig::to_json() const {
  return {{"architectures", {"CLIPVisionModelWithProjection"}},
          {"model_type", "clip_vision_model"},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"num_channels", num_channels},
          {"image_size", image_size},
          {"patch_size", patch_size},
          {"hidden_act", hidden_act},
          {"layer_norm_eps", layer_norm_eps},
          {"projection_dim", projection_dim}};
}

void CLIPVisionConfig::validate(const std::string& w) const {
  for (const auto& [key, v] : {std::pair<const char*, int64_t>{"hidden_size", hidden_size},
                               {"intermediate_size", intermediate_size},
                               {"num_hidden_layers", num_hidden_layers},
                               {"num_attention_heads", num_attention_heads},
                               {"num_channels", num_channels},
                               {"image_size", image_size},
                               {"patch_size", patch_size},
                               {"projection_dim", projection_dim}})
    STIPPLE_CHECK(v > 0 && v <= 65536, w, ": '", key, "' must be in [1, 65536], got ", v);
  STIPPLE_CHECK(hidden_size % num_attention_heads == 0, w, ": hidden_size ", hidden_size,
                " is not divisible by num_attention_heads ", num_attention_heads);
  STIPPLE_CHECK(image_size % patch_size == 0, w, ": image_size ", image_size,
                " is not a multiple of patch_size ", patch_size);
  STIPPLE_CHECK(num_hidden_layers <= 256, w, ": num_hidden_layers ", num_hidden_layers,
                " is over 256");
  STIPPLE_CHECK(hidden_act == "quick_gelu" || hidden_act == "gelu" || hidden_act == "gelu_new" ||
                    hidden_act == "gelu_pytorch_tanh",
                w, ": 'hidden_act' is '", hidden_act, "'");
}

CLIPTextConfig CLIPVisionConfig::layer_config() const {
  CLIPTextConfig t;
  t.hidden_size = hidden_size;
  t.intermediate_size = intermediate_size;
  t.num_hidden_layers = num_hidden_layers;
  t.num_attention_heads = num_attention_heads;
  t.hidden_act = hidden_act;
  t.layer_norm_eps = layer_norm_eps;
  t.projection_dim = projection_dim;
  return t;
}

CLIPVisionModelWithProjection::CLIPVisionModelWithProjection(const CLIPVisionConfig& cfg)
    : cfg_(cfg) {
  cfg_.validate("CLIPVisionConfig");
  const int64_t d = cfg.hidden_size;
  auto vision = register_module("vision_model", std::make_shared<nn::Module>());
  auto emb = vision->register_module("embeddings", std::make_shared<nn::Module>());
  class_embedding_ = emb->register_parameter("class_embedding", Tensor::zeros({d}));
  patch_embedding_ = emb->register_module(
      "patch_embedding", std::make_shared<nn::Conv2d>(cfg.num_channels, d, cfg.patch_size,
                                                      cfg.patch_size, 0, /*bias=*/false));
  position_embedding_ = emb->register_module(
      "position_embedding", std::make_shared<nn::Embedding>(cfg.num_patches() + 1, d));
  pre_layrnorm_ = vision->register_module(
      "pre_layrnorm", std::make_shared<nn::LayerNorm>(d, cfg.layer_norm_eps));
  auto encoder = vision->register_module("encoder", std::make_shared<nn::Module>());
  layers_ = encoder->register_module("layers", std::make_shared<nn::ModuleList>());
  const CLIPTextConfig lc = cfg.layer_config();
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    layers_->push_back(std::make_shared<CLIPEncoderLayer>(lc, /*causal=*/false));
  post_layernorm_ = vision->register_module(
      "post_layernorm", std::make_shared<nn::LayerNorm>(d, cfg.layer_norm_eps));
  visual_projection_ = register_module(
      "visual_projection", std::make_shared<nn::Linear>(d, cfg.projection_dim, /*bias=*/false));
}

std::shared_ptr<CLIPVisionModelWithProjection> CLIPVisionModelWithProjection::from_pretrained(
    const std::string& folder) {
  namespace fs = std::filesystem;
  const ComponentFiles files =
      find_component(folder, "CLIPVisionModelWithProjection", "model", "image_encoder");
  const CLIPVisionConfig cfg = CLIPVisionConfig::from_file(files.config);
  std::map<std::string, Tensor> state = io::SafetensorsFile::open(files.weights_file()).tensors();
  state.erase("vision_model.embeddings.position_ids");  // non-persistent in transformers
  auto model = std::make_shared<CLIPVisionModelWithProjection>(cfg);
  model->load_state_dict(state, /*strict=*/true, files.weights_file());
  model->eval();
  return model;
}

CLIPVisionOutput CLIPVisionModelWithProjection::forward(const Tensor& pixels) const {
  STIPPLE_CHECK(pixels.defined() && pixels.dim() == 4 && pixels.size(1) == cfg_.num_channels &&
                    pixels.size(2) == cfg_.image_size && pixels.size(3) == cfg_.image_size,
                "CLIPVisionModel: expected images [B, ", cfg_.num_channels, ", ", cfg_.image_size,
                ", ", cfg_.image_size, "], got ",
                pixels.defined() ? pixels.describe() : std::string("nothing"));
  const int64_t b = pixels.size(0), d = cfg_.hidden_size, n = cfg_.num_patches();
  Tensor x = patch_embedding_->forward(pixels);               // [B, D, S/p, S/p]
  x = x.reshape({b, d, n}).transpose(1, 2);                   // [B, N, D]
  const Tensor cls = class_embedding_.reshape({1, 1, d}).expand({b, 1, d});  // [B, 1, D]
  x = ops::concat({cls, x}, 1);                               // [B, N+1, D]
  const Tensor pos = Tensor::arange(n + 1, DType::kI64).reshape({1, n + 1});
  x = x + position_embedding_->forward(pos);                  // + [1, N+1, D]
  x = pre_layrnorm_->forward(x);                              // [B, N+1, D]
  for (size_t i = 0; i < layers_->size(); ++i)
    x = layers_->at<CLIPEncoderLayer>(i)->forward(x);         // [B, N+1, D]
  CLIPVisionOutput out;
  out.last_hidden_state = x;
  out.pooler_output =
      post_layernorm_->forward(x.narrow(1, 0, 1).reshape({b, d}));     // [B, D]
  out.image_embeds = visual_projection_->forward(out.pooler_output);  // [B, P]
  return out;
}

}  // namespace stipple::models

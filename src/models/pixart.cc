// PixArtTransformer2DModel: config, block, model, initialisation, loading. See pixart.h.
#include "models/pixart.h"
#include "models/component.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "nn/init.h"
#include "ops/ops.h"

namespace stipple::models {

// ---------------- config ----------------

PixArtConfig PixArtConfig::from_json(const io::JsonConfig& j) {
  PixArtConfig c;
  c.num_attention_heads = j.integer("num_attention_heads", c.num_attention_heads);
  c.attention_head_dim = j.integer("attention_head_dim", c.attention_head_dim);
  c.in_channels = j.integer("in_channels", c.in_channels);
  c.out_channels = j.integer("out_channels", c.out_channels);
  c.num_layers = j.integer("num_layers", c.num_layers);
  c.sample_size = j.integer("sample_size", c.sample_size);
  c.patch_size = j.integer("patch_size", c.patch_size);
  c.cross_attention_dim = j.integer("cross_attention_dim", c.cross_attention_dim);
  c.caption_channels = j.integer("caption_channels", c.caption_channels);
  c.pooled_projection_dim = j.integer("pooled_projection_dim", c.pooled_projection_dim);
  c.attention_bias = j.boolean("attention_bias", c.attention_bias);
  c.activation_fn = j.string("activation_fn", c.activation_fn);
  c.norm_eps = static_cast<float>(j.number("norm_eps", c.norm_eps));
  c.interpolation_scale = j.number("interpolation_scale", 0.0);
  const std::string norm = j.string("norm_type", "ada_norm_single");
  STIPPLE_CHECK(norm == "ada_norm_single", j.where(), ": norm_type \"", norm,
                "\" is not supported (PixArt uses ada_norm_single)");
  STIPPLE_CHECK(!j.boolean("use_additional_conditions", false), j.where(),
                ": use_additional_conditions (PixArt's resolution conditions) is not supported");
  c.validate(j.where());
  return c;
}

PixArtConfig PixArtConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

nlohmann::json PixArtConfig::to_json() const {
  nlohmann::json j = {{"_class_name", "PixArtTransformer2DModel"},
                      {"_diffusers_version", "0.29.0"},
                      {"num_attention_heads", num_attention_heads},
                      {"attention_head_dim", attention_head_dim},
                      {"in_channels", in_channels},
                      {"out_channels", out_channels},
                      {"num_layers", num_layers},
                      {"dropout", 0.0},
                      {"norm_num_groups", 32},
                      {"cross_attention_dim", cross_attention_dim},
                      {"attention_bias", attention_bias},
                      {"sample_size", sample_size},
                      {"patch_size", patch_size},
                      {"activation_fn", activation_fn},
                      {"num_embeds_ada_norm", 1000},
                      {"upcast_attention", false},
                      {"norm_type", "ada_norm_single"},
                      {"norm_elementwise_affine", false},
                      {"norm_eps", norm_eps},
                      {"interpolation_scale", nullptr},
                      {"use_additional_conditions", false},
                      {"caption_channels", caption_channels},
                      {"attention_type", "default"},
                      {"pooled_projection_dim", pooled_projection_dim}};
  if (interpolation_scale > 0) j["interpolation_scale"] = interpolation_scale;
  return j;
}

void PixArtConfig::validate(const std::string& w) const {
  for (const auto& [key, v] :
       {std::pair<const char*, int64_t>{"num_attention_heads", num_attention_heads},
        {"attention_head_dim", attention_head_dim},
        {"in_channels", in_channels},
        {"out_channels", out_channels},
        {"num_layers", num_layers},
        {"sample_size", sample_size},
        {"patch_size", patch_size},
        {"cross_attention_dim", cross_attention_dim},
        {"caption_channels", caption_channels}})
    STIPPLE_CHECK(v >= 1 && v <= 16384, w, ": '", key, "' must be in [1, 16384], got ", v);
  STIPPLE_CHECK(pooled_projection_dim >= 0 && pooled_projection_dim <= 16384, w,
                ": 'pooled_projection_dim' must be in [0, 16384]");
  STIPPLE_CHECK(num_layers <= 256, w, ": 'num_layers' ", num_layers, " is over 256");
  STIPPLE_CHECK(inner_dim() <= 16384 && inner_dim() % 4 == 0, w,
                ": heads x head dim = ", inner_dim(), " must be a multiple of 4 up to 16384");
  STIPPLE_CHECK(cross_attention_dim == inner_dim(), w, ": cross_attention_dim ",
                cross_attention_dim, " must equal heads x head dim ", inner_dim(),
                " (the caption projection's output)");
  STIPPLE_CHECK(sample_size % patch_size == 0, w, ": sample_size ", sample_size,
                " is not a multiple of patch_size ", patch_size);
  STIPPLE_CHECK(out_channels == in_channels || out_channels == 2 * in_channels, w,
                ": out_channels must be in_channels or twice it (learned sigma)");
  STIPPLE_CHECK(activation_fn == "gelu-approximate", w, ": activation_fn \"", activation_fn,
                "\" (PixArt uses gelu-approximate)");
}

// ---------------- block ----------------

PixArtBlock::PixArtBlock(const PixArtConfig& c) {
  const int64_t d = c.inner_dim();
  scale_shift_table = register_parameter("scale_shift_table", Tensor::zeros({6, d}));
  norm1 = register_module("norm1", std::make_shared<nn::LayerNorm>(d, c.norm_eps, false));
  nn::AttentionConfig a;
  a.query_dim = d;
  a.heads = c.num_attention_heads;
  a.dim_head = c.attention_head_dim;
  a.bias = c.attention_bias;
  attn1 = register_module("attn1", std::make_shared<nn::Attention>(a));
  norm2 = register_module("norm2", std::make_shared<nn::LayerNorm>(d, c.norm_eps, false));
  a.cross_attention_dim = c.cross_attention_dim;
  attn2 = register_module("attn2", std::make_shared<nn::Attention>(a));
  nn::FeedForwardOptions f;
  f.activation_fn = c.activation_fn;
  ff = register_module("ff", std::make_shared<nn::FeedForward>(d, f));
}

Tensor PixArtBlock::forward(const Tensor& x, const Tensor& mod, const Tensor& ctx) const {
  const int64_t b = x.size(0), d = x.size(2);
  const Tensor ss = scale_shift_table.unsqueeze(0) + mod.reshape({b, 6, d});  // [B, 6, D]
  auto part = [&](int64_t i) { return ss.narrow(1, i, 1); };                  // [B, 1, D]
  Tensor h = norm1->forward(x) * (part(1) + 1.0f) + part(0);                  // [B, N, D]
  Tensor out = x + part(2) * attn1->forward(h);                               // [B, N, D]
  out = out + attn2->forward(out, ctx);                                       // [B, N, D]
  h = norm2->forward(out) * (part(4) + 1.0f) + part(3);                       // [B, N, D]
  return out + part(5) * ff->forward(h);                                      // [B, N, D]
}

// ---------------- model ----------------

PixArtTransformer2DModel::PixArtTransformer2DModel(const PixArtConfig& config) : config_(config) {
  config_.validate("PixArtConfig");
  const PixArtConfig& c = config_;
  const int64_t d = c.inner_dim();
  nn::PatchEmbedOptions pe;
  pe.height = pe.width = c.sample_size;
  pe.patch_size = c.patch_size;
  pe.in_channels = c.in_channels;
  pe.embed_dim = d;
  pe.interpolation_scale = c.interpolation_scale > 0
                               ? c.interpolation_scale
                               : std::max<double>(static_cast<double>(c.sample_size / 64), 1.0);
  pos_embed_ = register_module("pos_embed", std::make_shared<nn::PatchEmbed>(pe));
  blocks_ = register_module("transformer_blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < c.num_layers; ++i) blocks_->push_back(std::make_shared<PixArtBlock>(c));
  norm_out_ = register_module("norm_out", std::make_shared<nn::LayerNorm>(d, 1e-6f, false));
  scale_shift_table_ = register_parameter("scale_shift_table", Tensor::zeros({2, d}));
  proj_out_ = register_module(
      "proj_out",
      std::make_shared<nn::Linear>(d, c.patch_size * c.patch_size * c.out_channels));
  auto adaln = register_module("adaln_single", std::make_shared<nn::Module>());
  auto emb = adaln->register_module("emb", std::make_shared<nn::Module>());
  time_proj_ = std::make_shared<nn::Timesteps>(256, /*flip_sin_to_cos=*/true, 0.0f);
  timestep_embedder_ =
      emb->register_module("timestep_embedder", std::make_shared<nn::TimestepEmbedding>(256, d));
  adaln_linear_ = adaln->register_module("linear", std::make_shared<nn::Linear>(d, 6 * d));
  auto cap = register_module("caption_projection", std::make_shared<nn::Module>());
  caption_linear_1_ =
      cap->register_module("linear_1", std::make_shared<nn::Linear>(c.caption_channels, d));
  caption_linear_2_ = cap->register_module("linear_2", std::make_shared<nn::Linear>(d, d));
  if (c.pooled_projection_dim > 0) {
    auto pooled = register_module("pooled_text_embedder", std::make_shared<nn::Module>());
    pooled_linear_1_ = pooled->register_module(
        "linear_1", std::make_shared<nn::Linear>(c.pooled_projection_dim, d));
    pooled_linear_2_ = pooled->register_module("linear_2", std::make_shared<nn::Linear>(d, d));
  }
}

Tensor PixArtTransformer2DModel::forward(const Tensor& x, const Tensor& timestep,
                                         const Tensor& text, const Tensor& pooled) const {
  const PixArtConfig& c = config_;
  STIPPLE_CHECK(x.defined() && x.dim() == 4 && x.size(1) == c.in_channels &&
                    x.size(2) % c.patch_size == 0 && x.size(3) % c.patch_size == 0,
                "PixArt: expected latents [B, ", c.in_channels, ", H, W] with H and W multiples of ",
                c.patch_size, ", got ", x.defined() ? x.describe() : std::string("nothing"));
  const int64_t b = x.size(0), p = c.patch_size;
  const int64_t gh = x.size(2) / p, gw = x.size(3) / p;
  STIPPLE_CHECK(text.defined() && text.dim() == 3 && text.size(0) == b &&
                    text.size(2) == c.caption_channels,
                "PixArt: expected text states [", b, ", T, ", c.caption_channels, "], got ",
                text.defined() ? text.describe() : std::string("nothing"));
  STIPPLE_CHECK(c.pooled_projection_dim == 0 ||
                    (pooled.defined() && pooled.dim() == 2 && pooled.size(0) == b &&
                     pooled.size(1) == c.pooled_projection_dim),
                "PixArt: this model needs the pooled text embedding [", b, ", ",
                c.pooled_projection_dim, "]");
  Tensor t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  if (t.size(0) == 1 && b > 1) t = t.expand({b});
  t = t.dtype() == DType::kF32 ? t : t.to(DType::kF32);

  Tensor h = pos_embed_->forward(x);                                      // [B, N, D]
  Tensor emb = timestep_embedder_->forward(time_proj_->forward(t));      // [B, D]
  if (pooled_linear_1_)
    emb = emb + pooled_linear_2_->forward(ops::silu(pooled_linear_1_->forward(pooled)));  // [B, D]
  const Tensor mod = adaln_linear_->forward(ops::silu(emb));              // [B, 6D]
  const Tensor ctx = caption_linear_2_->forward(
      ops::gelu(caption_linear_1_->forward(text), /*tanh_approximation=*/true));  // [B, T, D]
  for (size_t i = 0; i < blocks_->size(); ++i)
    h = blocks_->at<PixArtBlock>(i)->forward(h, mod, ctx);                // [B, N, D]
  const Tensor ss = scale_shift_table_.unsqueeze(0) + emb.unsqueeze(1);   // [B, 2, D]
  h = norm_out_->forward(h) * (ss.narrow(1, 1, 1) + 1.0f) + ss.narrow(1, 0, 1);  // [B, N, D]
  h = proj_out_->forward(h);                                              // [B, N, p*p*C]
  const int64_t co = c.out_channels;
  h = h.reshape({b, gh, gw, p, p, co})                                    // [B, h, w, p, p, C]
          .permute({0, 5, 1, 3, 2, 4})                                    // [B, C, h, p, w, p]
          .contiguous()
          .reshape({b, co, gh * p, gw * p});                              // [B, C, H, W]
  return h;
}

void PixArtTransformer2DModel::reset_parameters(Generator& gen) {
  using namespace nn::init;
  for (auto& [name, m] : named_modules())
    if (auto* l = dynamic_cast<nn::Linear*>(m)) basic_init(*l, gen);
  const nn::Conv2d& proj = *pos_embed_->proj;
  const int64_t k = proj.kernel_size();
  xavier_uniform_(proj.weight(), proj.in_channels() * k * k, proj.out_channels(), gen);
  if (proj.bias().defined()) fill_(proj.bias(), 0.0f);
  normal_(timestep_embedder_->linear_1->weight(), 0.02f, gen);
  normal_(timestep_embedder_->linear_2->weight(), 0.02f, gen);
  normal_(adaln_linear_->weight(), 0.02f, gen);
  normal_(caption_linear_1_->weight(), 0.02f, gen);
  normal_(caption_linear_2_->weight(), 0.02f, gen);
  if (pooled_linear_1_) {
    normal_(pooled_linear_1_->weight(), 0.02f, gen);
    normal_(pooled_linear_2_->weight(), 0.02f, gen);
  }
  const float s = 1.0f / std::sqrt(static_cast<float>(config_.inner_dim()));
  for (size_t i = 0; i < blocks_->size(); ++i) {
    const auto blk = blocks_->at<PixArtBlock>(i);
    normal_(blk->scale_shift_table, s, gen);
    zero_linear(*blk->attn2->to_out());
  }
  normal_(scale_shift_table_, s, gen);
  zero_linear(*proj_out_);
}

std::shared_ptr<PixArtTransformer2DModel> PixArtTransformer2DModel::from_pretrained(
    const std::string& folder) {
  namespace fs = std::filesystem;
  const ComponentFiles files = find_component(folder, "PixArt", "diffusion_pytorch_model");
  const PixArtConfig config = PixArtConfig::from_file(files.config);
  const fs::path weights(files.weights_file());
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights.string());
  check_config_matches(file, files.config, "pos_embed.proj.weight",
                       {config.inner_dim(), config.in_channels},
                       "[num_attention_heads * attention_head_dim, in_channels]");
  auto model = std::make_shared<PixArtTransformer2DModel>(config);
  model->load_state_dict(file.tensors(), /*strict=*/true, weights.string());
  model->eval();
  return model;
}

}  // namespace stipple::models

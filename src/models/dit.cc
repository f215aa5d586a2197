// DiT (Peebles & Xie 2023) as diffusers' DiTTransformer2DModel: config, model, initialisation,
// loading, and ImageNet class names.
#include "models/dit.h"
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
namespace {

using nn::init::basic_init;
using nn::init::fill_;
using nn::init::normal_;
using nn::init::xavier_uniform_;
using nn::init::zero_linear;

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

}  // namespace

// ---------------- config ----------------

DiTConfig DiTConfig::from_json(const io::JsonConfig& j) {
  DiTConfig c;
  c.class_name = j.string("_class_name", "DiTTransformer2DModel");
  const bool legacy = c.class_name == "Transformer2DModel";
  STIPPLE_CHECK(legacy || c.class_name == "DiTTransformer2DModel", j.where(), ": _class_name '",
                c.class_name,
                "' is not a DiT denoiser (expected DiTTransformer2DModel or Transformer2DModel)");
  if (legacy) {
    // Transformer2DModel's own defaults; the patch form needs in_channels, sample_size, patch_size.
    STIPPLE_CHECK(j.has("patch_size"), j.where(),
                  ": Transformer2DModel without 'patch_size' is the continuous-input form (the "
                  "UNet's spatial transformer), not a DiT denoiser");
    c.attention_head_dim = 88;
    c.num_layers = 1;
    c.attention_bias = false;
    c.activation_fn = "geglu";
    c.num_embeds_ada_norm = 0;
    c.norm_type = "layer_norm";
    c.norm_elementwise_affine = true;
    c.in_channels = j.integer("in_channels");
    c.sample_size = j.integer("sample_size");
  }
  c.num_attention_heads = j.integer("num_attention_heads", c.num_attention_heads);
  c.attention_head_dim = j.integer("attention_head_dim", c.attention_head_dim);
  c.in_channels = j.integer("in_channels", c.in_channels);
  c.out_channels = j.integer("out_channels", 0);
  c.num_layers = j.integer("num_layers", c.num_layers);
  c.dropout = static_cast<float>(j.number("dropout", 0.0));
  c.attention_bias = j.boolean("attention_bias", c.attention_bias);
  c.sample_size = j.integer("sample_size", c.sample_size);
  c.patch_size = j.integer("patch_size", c.patch_size);
  c.activation_fn = j.string("activation_fn", c.activation_fn);
  c.num_embeds_ada_norm = j.integer("num_embeds_ada_norm", c.num_embeds_ada_norm);
  c.upcast_attention = j.boolean("upcast_attention", false);
  c.norm_type = j.string("norm_type", c.norm_type);
  c.norm_elementwise_affine = j.boolean("norm_elementwise_affine", c.norm_elementwise_affine);
  c.norm_eps = static_cast<float>(j.number("norm_eps", 1e-5));
  if (legacy) {
    c.cross_attention_dim = j.integer("cross_attention_dim", 0);
    c.interpolation_scale = j.number("interpolation_scale",
                                     static_cast<double>(std::max<int64_t>(c.sample_size / 64, 1)));
    STIPPLE_CHECK(!j.has("num_vector_embeds"), j.where(),
                  ": 'num_vector_embeds' (VQ-Diffusion's discrete input) is not supported");
    STIPPLE_CHECK(
        !j.boolean("only_cross_attention", false) && !j.boolean("double_self_attention", false),
        j.where(),
        ": only_cross_attention/double_self_attention are not supported with "
        "patch input");
    STIPPLE_CHECK(j.string("attention_type", "default") == "default", j.where(),
                  ": attention_type '", j.string("attention_type", "default"),
                  "' is not supported");
  }
  c.validate(j.where());
  return c;
}

DiTConfig DiTConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

void DiTConfig::validate(const std::string& where) const {
  STIPPLE_CHECK(norm_type == "ada_norm_zero", where, ": norm_type '", norm_type,
                "' is not supported for a patch-input transformer (supported: ada_norm_zero)");
  STIPPLE_CHECK(num_embeds_ada_norm > 0, where,
                ": num_embeds_ada_norm (the number of classes) must be positive for "
                "ada_norm_zero, got ",
                num_embeds_ada_norm);
  STIPPLE_CHECK(num_attention_heads > 0, where, ": num_attention_heads must be positive, got ",
                num_attention_heads);
  STIPPLE_CHECK(attention_head_dim > 0, where, ": attention_head_dim must be positive, got ",
                attention_head_dim);
  // Before inner_dim(): the product of two unbounded sizes overflows.
  STIPPLE_CHECK(num_attention_heads <= 1024 && attention_head_dim <= 1024, where,
                ": num_attention_heads (", num_attention_heads, ") and attention_head_dim (",
                attention_head_dim, ") must each be at most 1024");
  STIPPLE_CHECK(inner_dim() % 4 == 0, where,
                ": num_attention_heads * attention_head_dim must be a multiple of 4 for the "
                "2-D sin-cos position table, got ",
                inner_dim());
  STIPPLE_CHECK(in_channels > 0, where, ": in_channels must be positive, got ", in_channels);
  STIPPLE_CHECK(out_channels >= 0, where, ": out_channels must be positive, got ", out_channels);
  STIPPLE_CHECK(num_layers > 0, where, ": num_layers must be positive, got ", num_layers);
  STIPPLE_CHECK(patch_size > 0, where, ": patch_size must be positive, got ", patch_size);
  STIPPLE_CHECK(sample_size >= patch_size && sample_size % patch_size == 0, where,
                ": sample_size (", sample_size, ") must be a positive multiple of patch_size (",
                patch_size, ")");
  STIPPLE_CHECK(activation_fn == "gelu" || activation_fn == "gelu-approximate" ||
                    activation_fn == "geglu" || activation_fn == "geglu-approximate",
                where, ": activation_fn '", activation_fn,
                "' is not supported (supported: gelu, gelu-approximate, geglu, geglu-approximate)");
  STIPPLE_CHECK(norm_eps > 0, where, ": norm_eps must be positive, got ", norm_eps);
  STIPPLE_CHECK(interpolation_scale > 0, where, ": interpolation_scale must be positive, got ",
                interpolation_scale);
  // Upper bounds far above any released DiT: a corrupt config fails here, naming its key.
  STIPPLE_CHECK(num_attention_heads <= 1024 && attention_head_dim <= 1024 && inner_dim() <= 16384,
                where, ": num_attention_heads x attention_head_dim = ", inner_dim(),
                " must be at most 16384 (each at most 1024)");
  STIPPLE_CHECK(num_layers <= 256, where, ": num_layers ", num_layers, " is over 256");
  STIPPLE_CHECK(in_channels <= 1024 && out_channels <= 2048, where,
                ": in_channels (at most 1024) or out_channels (at most 2048) too large");
  STIPPLE_CHECK(patch_size <= 64 && sample_size <= 16384, where,
                ": patch_size must be at most 64 and sample_size at most 16384");
  STIPPLE_CHECK(num_embeds_ada_norm <= 1000000, where, ": num_embeds_ada_norm ",
                num_embeds_ada_norm, " is over 1000000");
}

// ---------------- model ----------------

DiTTransformer2DModel::DiTTransformer2DModel(const DiTConfig& config) : config_(config) {
  config_.validate(config.class_name);
  const int64_t d = config_.inner_dim();
  nn::PatchEmbedOptions pe;
  pe.height = pe.width = config_.sample_size;
  pe.patch_size = config_.patch_size;
  pe.in_channels = config_.in_channels;
  pe.embed_dim = d;
  pe.interpolation_scale = config_.interpolation_scale;
  pos_embed = register_module("pos_embed", std::make_shared<nn::PatchEmbed>(pe));

  nn::BasicTransformerBlockConfig b;
  b.dim = d;
  b.num_attention_heads = config_.num_attention_heads;
  b.attention_head_dim = config_.attention_head_dim;
  b.dropout = config_.dropout;
  b.cross_attention_dim = config_.cross_attention_dim;
  b.activation_fn = config_.activation_fn;
  b.num_embeds_ada_norm = config_.num_embeds_ada_norm;
  b.attention_bias = config_.attention_bias;
  b.upcast_attention = config_.upcast_attention;
  b.norm_type = config_.norm_type;
  b.norm_elementwise_affine = config_.norm_elementwise_affine;
  b.norm_eps = config_.norm_eps;
  transformer_blocks = register_module("transformer_blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    transformer_blocks->push_back(std::make_shared<nn::BasicTransformerBlock>(b));
  }
  norm_out = register_module("norm_out", std::make_shared<nn::LayerNorm>(d, 1e-6f, false));
  proj_out_1 = register_module("proj_out_1", std::make_shared<nn::Linear>(d, 2 * d));
  const int64_t p = config_.patch_size;
  proj_out_2 = register_module("proj_out_2",
                               std::make_shared<nn::Linear>(d, p * p * config_.output_channels()));
}

Tensor DiTTransformer2DModel::conditioning(const Tensor& timestep,
                                           const Tensor& class_labels) const {
  return block(0)->norm1_ada_zero->emb->forward(timestep, class_labels);  // [B, D]
}

Tensor DiTTransformer2DModel::unpatchify(const Tensor& tokens, int64_t h, int64_t w) const {
  const int64_t p = config_.patch_size, c = config_.output_channels();
  const int64_t n = tokens.size(0);
  STIPPLE_CHECK(tokens.dim() == 3 && tokens.size(1) == h * w && tokens.size(2) == p * p * c,
                type_name(), ": unpatchify expected [B, ", h * w, ", ", p * p * c, "], got ",
                tokens.describe());
  Tensor x = tokens.reshape({n, h, w, p, p, c});        // [N, h, w, p, p, C]
  x = x.permute({0, 5, 1, 3, 2, 4});                    // [N, C, h, p, w, p]  ("nhwpqc->nchpwq")
  return x.contiguous().reshape({n, c, h * p, w * p});  // [N, C, H, W]
}

Tensor DiTTransformer2DModel::forward(const Tensor& x, const Tensor& timestep,
                                      const Tensor& class_labels,
                                      const Tensor& encoder_hidden_states) const {
  const int64_t p = config_.patch_size;
  STIPPLE_CHECK(x.defined() && x.dim() == 4 && x.size(1) == config_.in_channels, type_name(),
                ": expected a latent [B, ", config_.in_channels, ", H, W], got ",
                x.defined() ? x.describe() : std::string("undefined"));
  STIPPLE_CHECK(x.size(2) % p == 0 && x.size(3) % p == 0, type_name(), ": latent size ", x.size(2),
                "x", x.size(3), " must be a multiple of the patch size ", p);
  STIPPLE_CHECK(timestep.defined() && timestep.dim() <= 1, type_name(),
                ": timestep must be 0-d or [B], got ",
                timestep.defined() ? timestep.describe() : std::string("undefined"));
  STIPPLE_CHECK(class_labels.defined() && class_labels.dim() == 1 &&
                    class_labels.size(0) == x.size(0) && class_labels.dtype() == DType::kI64,
                type_name(), ": class_labels must be i64 [", x.size(0), "], got ",
                class_labels.defined() ? class_labels.describe() : std::string("undefined"));
  STIPPLE_CHECK(timestep.numel() == 1 || timestep.numel() == x.size(0), type_name(), ": ",
                timestep.numel(), " timesteps for a batch of ", x.size(0));
  const Tensor t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  const int64_t h = x.size(2) / p, w = x.size(3) / p;

  Tensor tokens = pos_embed->forward(x);  // [B, N, D], N = h*w: patchify + sin-cos positions
  for (size_t i = 0; i < transformer_blocks->size(); ++i) {
    tokens = block(i)->forward(tokens, encoder_hidden_states, Tensor(), Tensor(), t,
                               class_labels);  // [B, N, D]: DiT block with adaLN-Zero
  }
  // Final layer: adaLN from block 0's conditioning, then a linear decoder to patches.
  const Tensor c = conditioning(t, class_labels);  // [B, D]
  const std::vector<Tensor> ss = ops::chunk(proj_out_1->forward(ops::silu(c)), 2, 1);
  const Tensor shift = ss[0].unsqueeze(1), scale = ss[1].unsqueeze(1);          // [B, 1, D] each
  tokens = ops::add(ops::mul(norm_out->forward(tokens), scale + 1.0f), shift);  // [B, N, D]
  tokens = proj_out_2->forward(tokens);                                         // [B, N, p*p*C_out]
  return unpatchify(tokens, h, w);                                              // [B, C_out, H, W]
}

void DiTTransformer2DModel::reset_parameters(Generator& gen) {
  // 1. _basic_init: xavier_uniform for every Linear, zero bias. diffusers splits DiT's fused qkv
  //    Linear [3D, D] into to_q/to_k/to_v; they keep the fused layer's bound (fan_out 3D).
  for (auto& [name, m] : named_modules()) {
    if (auto* l = dynamic_cast<nn::Linear*>(m)) {
      const bool qkv = name.find(".attn1.to_q") != std::string::npos ||
                       name.find(".attn1.to_k") != std::string::npos ||
                       name.find(".attn1.to_v") != std::string::npos;
      basic_init(*l, gen, qkv ? 3 * l->out_features() : 0);
    }
  }
  // 2. Patch embedding like a Linear over the flattened kernel.
  const nn::Conv2d& proj = *pos_embed->proj;
  const int64_t k = proj.kernel_size();
  xavier_uniform_(proj.weight(), proj.in_channels() * k * k, proj.out_channels(), gen);
  if (proj.bias().defined()) fill_(proj.bias(), 0.0f);
  for (size_t i = 0; i < transformer_blocks->size(); ++i) {
    const auto& ada = *block(i)->norm1_ada_zero;
    // 3. Label table and timestep MLP weights ~ N(0, 0.02) (each block has its own copy).
    normal_(ada.emb->class_embedder->embedding_table->weight(), 0.02f, gen);
    normal_(ada.emb->timestep_embedder->linear_1->weight(), 0.02f, gen);
    normal_(ada.emb->timestep_embedder->linear_2->weight(), 0.02f, gen);
    // 4. Zero-out adaLN modulation: every block starts as the identity.
    zero_linear(*ada.linear);
  }
  // 5. Zero-out the final layer: the initial prediction is 0.
  zero_linear(*proj_out_1);
  zero_linear(*proj_out_2);
}

std::shared_ptr<DiTTransformer2DModel> DiTTransformer2DModel::from_pretrained(
    const std::string& folder) {
  namespace fs = std::filesystem;
  const ComponentFiles files = find_component(folder, "DiT", "diffusion_pytorch_model");
  const DiTConfig config = DiTConfig::from_file(files.config);
  const fs::path weights(files.weights_file());
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights.string());
  check_config_matches(file, files.config, "pos_embed.proj.weight",
                       {config.inner_dim(), config.in_channels},
                       "[num_attention_heads * attention_head_dim, in_channels]");
  std::shared_ptr<DiTTransformer2DModel> model;
  if (config.class_name == "Transformer2DModel") {
    model = std::make_shared<Transformer2DModel>(config);
  } else {
    model = std::make_shared<DiTTransformer2DModel>(config);
  }
  model->load_state_dict(file.tensors(), /*strict=*/true, weights.string());
  model->eval();
  return model;
}

// ---------------- class names ----------------

std::map<int64_t, std::string> read_id2label(const std::string& json_path) {
  const nlohmann::json j = io::read_json_file(json_path);
  std::map<int64_t, std::string> out;
  if (!j.is_object() || !j.contains("id2label") || j["id2label"].is_null()) return out;
  const nlohmann::json& m = j["id2label"];
  STIPPLE_CHECK(m.is_object(), json_path, ": 'id2label' must be an object {\"0\": \"name\", ...}");
  for (auto it = m.begin(); it != m.end(); ++it) {
    int64_t id = 0;
    try {
      size_t used = 0;
      id = std::stoll(it.key(), &used);
      STIPPLE_CHECK(used == it.key().size(), "");
    } catch (...) {
      STIPPLE_CHECK(false, json_path, ": id2label key '", it.key(), "' is not an integer");
    }
    STIPPLE_CHECK(it.value().is_string(), json_path, ": id2label['", it.key(),
                  "'] must be a string");
    out[id] = it.value().get<std::string>();
  }
  return out;
}

std::vector<int64_t> get_label_ids(const std::map<int64_t, std::string>& id2label,
                                   const std::vector<std::string>& names) {
  std::map<std::string, int64_t> by_name;
  for (const auto& [id, value] : id2label) {
    size_t start = 0;
    while (start <= value.size()) {
      const size_t comma = value.find(',', start);
      const std::string syn =
          trim(value.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (!syn.empty()) by_name[syn] = id;
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  std::vector<int64_t> ids;
  for (const std::string& raw : names) {
    const std::string name = trim(raw);
    auto it = by_name.find(name);
    if (it != by_name.end()) {
      ids.push_back(it->second);
      continue;
    }
    const bool numeric = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
      return ch >= '0' && ch <= '9';
    });
    if (numeric) {
      STIPPLE_CHECK(name.size() <= 18, "class label ", name, " is out of range");
      ids.push_back(std::stoll(name));
      continue;
    }
    std::string hint;
    for (const auto& [syn, id] : by_name) {
      if (syn.find(name) != std::string::npos || name.find(syn) != std::string::npos) {
        hint += (hint.empty() ? "" : ", ") + syn;
        if (hint.size() > 200) break;
      }
    }
    STIPPLE_CHECK(false, "unknown class label '", name, "'",
                  (id2label.empty() ? std::string(" (this model has no id2label; give class ids)")
                   : hint.empty()   ? std::string(" (give a name from id2label or a class id)")
                                    : " (did you mean: " + hint + "?)"));
  }
  return ids;
}

}  // namespace stipple::models

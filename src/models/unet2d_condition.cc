// UNet2DConditionModel: config parsing, construction (diffusers' __init__), forward, loading.
#include "models/unet2d_condition.h"
#include "models/component.h"

#include <algorithm>
#include <filesystem>

#include "io/safetensors.h"
#include "models/unet_blocks.h"
#include "nn/activations.h"
#include "nn/embeddings.h"
#include "ops/ops.h"

namespace stipple::models {
namespace {

using nlohmann::json;

std::string strip_unet_res(const std::string& type) {
  // diffusers' get_down_block/get_up_block accept the "UNetRes" prefix of old configs.
  return type.rfind("UNetRes", 0) == 0 ? type.substr(7) : type;
}

// A key that must be null (or absent) because stipple does not implement its other values.
void require_null(const io::JsonConfig& j, const std::string& key, const std::string& why) {
  if (!j.has(key)) return;
  throw Error(str_cat(j.where(), ": \"", key, "\" = ", j.raw()[key].dump(), " is not supported (",
                      why, "); only null is"));
}

// bool or list of bools, one per down block.
std::vector<bool> bool_or_list(const io::JsonConfig& j, const std::string& key, size_t n,
                               bool fallback) {
  if (!j.has(key)) return std::vector<bool>(n, fallback);
  const json& v = j.raw()[key];
  if (v.is_boolean()) return std::vector<bool>(n, v.get<bool>());
  STIPPLE_CHECK(v.is_array() && v.size() == n, j.where(), ": \"", key,
                "\" must be true/false or a list of ", n, " of them, got ", v.dump());
  std::vector<bool> out;
  for (const json& e : v) {
    STIPPLE_CHECK(e.is_boolean(), j.where(), ": \"", key, "\" must hold true/false, got ",
                  e.dump());
    out.push_back(e.get<bool>());
  }
  return out;
}

// transformer_layers_per_block: an int (every layer of every block), a list with one int per
// block, or a list of per-layer lists. `layers[i]` is the number of resnets of block i.
std::vector<std::vector<int64_t>> per_layer_counts(const io::JsonConfig& j, const std::string& key,
                                                   const std::vector<int64_t>& layers) {
  const size_t n = layers.size();
  auto as_count = [&](const json& e) {
    STIPPLE_CHECK(e.is_number_integer() && e.get<int64_t>() > 0, j.where(), ": \"", key,
                  "\" entries must be positive integers, got ", e.dump());
    return e.get<int64_t>();
  };
  std::vector<std::vector<int64_t>> out(n);
  if (!j.has(key)) {
    for (size_t i = 0; i < n; ++i) out[i].assign(layers[i], 1);
    return out;
  }
  const json& v = j.raw()[key];
  if (!v.is_array()) {
    const int64_t c = as_count(v);
    for (size_t i = 0; i < n; ++i) out[i].assign(layers[i], c);
    return out;
  }
  STIPPLE_CHECK(v.size() == n, j.where(), ": \"", key, "\" has ", v.size(),
                " entries, expected one per block (", n, ")");
  for (size_t i = 0; i < n; ++i) {
    if (!v[i].is_array()) {
      out[i].assign(layers[i], as_count(v[i]));
      continue;
    }
    STIPPLE_CHECK(static_cast<int64_t>(v[i].size()) == layers[i], j.where(), ": \"", key,
                  "\" block ", i, " lists ", v[i].size(), " layers, the block has ", layers[i]);
    for (const json& e : v[i]) out[i].push_back(as_count(e));
  }
  return out;
}

const std::vector<std::string> kDownTypes = {"CrossAttnDownBlock2D", "DownBlock2D"};
const std::vector<std::string> kUpTypes = {"CrossAttnUpBlock2D", "UpBlock2D"};

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ", ") + e;
  return s;
}

}  // namespace

// ---------------- UNet2DConditionConfig ----------------

UNet2DConditionConfig UNet2DConditionConfig::from_json(const io::JsonConfig& j) {
  UNet2DConditionConfig c;
  const std::string& where = j.where();
  c.sample_size = j.integer("sample_size", 0);
  c.in_channels = j.integer("in_channels", c.in_channels);
  c.out_channels = j.integer("out_channels", c.out_channels);
  c.center_input_sample = j.boolean("center_input_sample", false);
  c.flip_sin_to_cos = j.boolean("flip_sin_to_cos", true);
  c.freq_shift = j.number("freq_shift", 0.0);

  c.down_block_types = j.string_list("down_block_types", c.down_block_types);
  c.up_block_types = j.string_list("up_block_types", c.up_block_types);
  for (auto& t : c.down_block_types) {
    t = strip_unet_res(t);
    STIPPLE_CHECK(contains(kDownTypes, t), where, ": \"down_block_types\" entry \"", t,
                  "\" is not supported; stipple implements ", joined(kDownTypes));
  }
  for (auto& t : c.up_block_types) {
    t = strip_unet_res(t);
    STIPPLE_CHECK(contains(kUpTypes, t), where, ": \"up_block_types\" entry \"", t,
                  "\" is not supported; stipple implements ", joined(kUpTypes));
  }
  // mid_block_type: absent means the default; null means no mid block.
  if (j.raw().contains("mid_block_type")) {
    c.mid_block_type = j.has("mid_block_type") ? j.string("mid_block_type") : "";
  }
  STIPPLE_CHECK(c.mid_block_type.empty() || c.mid_block_type == "UNetMidBlock2DCrossAttn", where,
                ": \"mid_block_type\" \"", c.mid_block_type,
                "\" is not supported; stipple implements UNetMidBlock2DCrossAttn or null");

  const size_t n = c.down_block_types.size();
  STIPPLE_CHECK(n > 0, where, ": \"down_block_types\" is empty");
  c.block_out_channels = j.int_list("block_out_channels", c.block_out_channels);
  STIPPLE_CHECK(c.block_out_channels.size() == n, where, ": \"block_out_channels\" has ",
                c.block_out_channels.size(), " entries but \"down_block_types\" has ", n);
  c.layers_per_block =
      j.has("layers_per_block") ? j.int_or_list("layers_per_block", n) : std::vector<int64_t>(n, 2);
  // Bounded here, before the per-layer lists below are sized by it (validate() repeats it).
  for (size_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(c.layers_per_block[i] >= 1 && c.layers_per_block[i] <= 64, where,
                  ": layers_per_block[", i, "] = ", c.layers_per_block[i], " must be in [1, 64]");
  }

  // The naming quirk (diffusers issue #2011): without num_attention_heads, attention_head_dim
  // holds the number of heads.
  const std::string heads_key =
      j.has("num_attention_heads") ? "num_attention_heads" : "attention_head_dim";
  c.num_attention_heads =
      j.has(heads_key) ? j.int_or_list(heads_key, n) : std::vector<int64_t>(n, 8);
  c.cross_attention_dim = j.has("cross_attention_dim") ? j.int_or_list("cross_attention_dim", n)
                                                       : std::vector<int64_t>(n, 1280);
  c.only_cross_attention = bool_or_list(j, "only_cross_attention", n, false);
  c.transformer_layers_per_block =
      per_layer_counts(j, "transformer_layers_per_block", c.layers_per_block);
  std::vector<int64_t> up_layers(c.layers_per_block.rbegin(), c.layers_per_block.rend());
  for (auto& l : up_layers) l += 1;
  if (j.has("reverse_transformer_layers_per_block")) {
    c.reverse_transformer_layers_per_block =
        per_layer_counts(j, "reverse_transformer_layers_per_block", up_layers);
  } else {
    // diffusers: reversed(transformer_layers_per_block), each int repeated over the up block's
    // layers; per-layer lists there need the explicit reverse list.
    const bool nested = j.has("transformer_layers_per_block") &&
                        j.raw()["transformer_layers_per_block"].is_array() &&
                        std::any_of(j.raw()["transformer_layers_per_block"].begin(),
                                    j.raw()["transformer_layers_per_block"].end(),
                                    [](const json& e) { return e.is_array(); });
    STIPPLE_CHECK(!nested, where,
                  ": \"transformer_layers_per_block\" lists per-layer counts, which needs "
                  "\"reverse_transformer_layers_per_block\" (as diffusers requires)");
    for (size_t i = 0; i < n; ++i) {
      const int64_t count = c.transformer_layers_per_block[n - 1 - i].empty()
                                ? 1
                                : c.transformer_layers_per_block[n - 1 - i][0];
      c.reverse_transformer_layers_per_block.emplace_back(up_layers[i], count);
    }
  }
  c.use_linear_projection = j.boolean("use_linear_projection", false);
  c.upcast_attention = j.boolean("upcast_attention", false);

  // norm_num_groups null would leave the resnets without GroupNorm (diffusers fails there too).
  STIPPLE_CHECK(
      !j.raw().contains("norm_num_groups") || j.has("norm_num_groups"), where,
      ": \"norm_num_groups\" = null is not supported; the resnet blocks need a group count");
  c.norm_num_groups = j.integer("norm_num_groups", 32);
  c.norm_eps = static_cast<float>(j.number("norm_eps", 1e-5));
  c.act_fn = j.string("act_fn", "silu");
  nn::check_activation(c.act_fn, str_cat(where, ": \"act_fn\""));
  c.resnet_time_scale_shift = j.string("resnet_time_scale_shift", "default");
  STIPPLE_CHECK(
      c.resnet_time_scale_shift == "default" || c.resnet_time_scale_shift == "scale_shift", where,
      ": \"resnet_time_scale_shift\" \"", c.resnet_time_scale_shift,
      "\" is not supported; use \"default\" or \"scale_shift\"");
  const std::string time_type = j.string("time_embedding_type", "positional");
  STIPPLE_CHECK(time_type == "positional", where, ": \"time_embedding_type\" \"", time_type,
                "\" is not supported; stipple implements \"positional\"");
  c.time_embedding_dim = j.integer("time_embedding_dim", 0);
  c.time_embedding_act_fn = j.string("time_embedding_act_fn", "");
  if (!c.time_embedding_act_fn.empty())
    nn::check_activation(c.time_embedding_act_fn, str_cat(where, ": \"time_embedding_act_fn\""));
  require_null(j, "timestep_post_act", "a post-activation of the time embedding");
  require_null(j, "time_cond_proj_dim", "LCM's guidance-scale conditioning");

  // Class and additional embeddings.
  require_null(j, "class_embed_type", "class embeddings of type timestep/identity/projection");
  c.num_class_embeds = j.integer("num_class_embeds", 0);
  STIPPLE_CHECK(c.num_class_embeds >= 0, where, ": \"num_class_embeds\" must be positive");
  STIPPLE_CHECK(!(c.num_class_embeds > 0 && j.boolean("class_embeddings_concat", false)), where,
                ": \"class_embeddings_concat\" = true is not supported");
  c.addition_embed_type = j.string("addition_embed_type", "");
  STIPPLE_CHECK(c.addition_embed_type.empty() || c.addition_embed_type == "text_time", where,
                ": \"addition_embed_type\" \"", c.addition_embed_type,
                "\" is not supported; stipple implements \"text_time\" (SDXL) and null");
  if (c.addition_embed_type == "text_time") {
    c.addition_time_embed_dim = j.integer("addition_time_embed_dim", 0);
    c.projection_class_embeddings_input_dim =
        j.integer("projection_class_embeddings_input_dim", 0);
  }
  require_null(j, "encoder_hid_dim", "a projection of encoder_hidden_states");
  require_null(j, "encoder_hid_dim_type", "a projection of encoder_hidden_states");
  require_null(j, "cross_attention_norm", "a norm of encoder_hidden_states inside attention");
  STIPPLE_CHECK(!j.boolean("dual_cross_attention", false), where,
                ": \"dual_cross_attention\" = true is not supported (DualTransformer2DModel)");
  const std::string attention_type = j.string("attention_type", "default");
  STIPPLE_CHECK(attention_type == "default", where, ": \"attention_type\" \"", attention_type,
                "\" is not supported; stipple implements \"default\"");

  c.conv_in_kernel = j.integer("conv_in_kernel", 3);
  c.conv_out_kernel = j.integer("conv_out_kernel", 3);
  c.downsample_padding = j.integer("downsample_padding", 1);
  c.mid_block_scale_factor = static_cast<float>(j.number("mid_block_scale_factor", 1.0));
  // resnet_out_scale_factor and resnet_skip_time_act only reach the ResnetDownsampleBlock2D /
  // SimpleCrossAttn block families, which stipple rejects above; dropout is inactive at inference.
  c.validate(where);
  return c;
}

UNet2DConditionConfig UNet2DConditionConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

void UNet2DConditionConfig::validate(const std::string& where) const {
  const size_t n = down_block_types.size();
  STIPPLE_CHECK(n > 0, where, ": no down blocks");
  STIPPLE_CHECK(up_block_types.size() == n, where, ": ", up_block_types.size(),
                " up_block_types but ", n, " down_block_types; they must match");
  auto check_len = [&](size_t got, const char* key) {
    STIPPLE_CHECK(got == n, where, ": \"", key, "\" has ", got, " entries, expected ", n);
  };
  check_len(block_out_channels.size(), "block_out_channels");
  check_len(layers_per_block.size(), "layers_per_block");
  check_len(num_attention_heads.size(), "num_attention_heads (attention_head_dim)");
  check_len(cross_attention_dim.size(), "cross_attention_dim");
  if (addition_embed_type == "text_time") {
    STIPPLE_CHECK(addition_time_embed_dim > 0 && addition_time_embed_dim <= 65536 &&
                      addition_time_embed_dim % 2 == 0,
                  where, ": \"addition_time_embed_dim\" must be an even count in [2, 65536], got ",
                  addition_time_embed_dim);
    STIPPLE_CHECK(projection_class_embeddings_input_dim > addition_time_embed_dim &&
                      projection_class_embeddings_input_dim <= (1 << 20),
                  where, ": \"projection_class_embeddings_input_dim\" ",
                  projection_class_embeddings_input_dim,
                  " must exceed addition_time_embed_dim (the pooled text width + the time ids)");
  }
  check_len(only_cross_attention.size(), "only_cross_attention");
  check_len(transformer_layers_per_block.size(), "transformer_layers_per_block");
  check_len(reverse_transformer_layers_per_block.size(), "reverse_transformer_layers_per_block");
  STIPPLE_CHECK(in_channels > 0 && out_channels > 0, where,
                ": in_channels and out_channels must be positive, got ", in_channels, " and ",
                out_channels);
  STIPPLE_CHECK(norm_num_groups > 0, where, ": norm_num_groups must be positive, got ",
                norm_num_groups);
  for (size_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(block_out_channels[i] > 0, where, ": block_out_channels[", i,
                  "] must be positive, got ", block_out_channels[i]);
    STIPPLE_CHECK(layers_per_block[i] > 0, where, ": layers_per_block[", i,
                  "] must be positive, got ", layers_per_block[i]);
    STIPPLE_CHECK(num_attention_heads[i] > 0, where, ": the head count of block ", i,
                  " (attention_head_dim / num_attention_heads) must be positive, got ",
                  num_attention_heads[i]);
    STIPPLE_CHECK(cross_attention_dim[i] > 0, where, ": cross_attention_dim[", i,
                  "] must be positive, got ", cross_attention_dim[i]);
    STIPPLE_CHECK(block_out_channels[i] >= num_attention_heads[i], where, ": block ", i, " has ",
                  block_out_channels[i], " channels, fewer than its ", num_attention_heads[i],
                  " attention heads");
    STIPPLE_CHECK(block_out_channels[i] % norm_num_groups == 0, where, ": block_out_channels[", i,
                  "] = ", block_out_channels[i],
                  " is not divisible by norm_num_groups = ", norm_num_groups);
  }
  STIPPLE_CHECK(conv_in_kernel > 0 && conv_in_kernel % 2 == 1, where,
                ": conv_in_kernel must be a positive odd number, got ", conv_in_kernel);
  STIPPLE_CHECK(conv_out_kernel > 0 && conv_out_kernel % 2 == 1, where,
                ": conv_out_kernel must be a positive odd number, got ", conv_out_kernel);
  STIPPLE_CHECK(downsample_padding >= 0, where, ": downsample_padding must be >= 0, got ",
                downsample_padding);
  STIPPLE_CHECK(time_embed_dim() > 0, where, ": time_embedding_dim must be positive");
  STIPPLE_CHECK(block_out_channels[0] % 2 == 0, where,
                ": block_out_channels[0] = ", block_out_channels[0],
                " must be even (the sinusoidal timestep features)");
  // Upper bounds far above any released model, so a corrupt config fails here with its key
  // named instead of in an allocation of gigabytes.
  STIPPLE_CHECK(n <= 8, where, ": ", n, " down blocks; at most 8 are supported");
  STIPPLE_CHECK(in_channels <= 1024 && out_channels <= 1024, where,
                ": in_channels and out_channels must be at most 1024");
  for (size_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(block_out_channels[i] <= 16384, where, ": block_out_channels[", i, "] = ",
                  block_out_channels[i], " is over 16384");
    STIPPLE_CHECK(layers_per_block[i] <= 64, where, ": layers_per_block[", i, "] = ",
                  layers_per_block[i], " is over 64");
    STIPPLE_CHECK(cross_attention_dim[i] <= 65536, where, ": cross_attention_dim[", i, "] = ",
                  cross_attention_dim[i], " is over 65536");
    for (int64_t t : transformer_layers_per_block[i])
      STIPPLE_CHECK(t >= 0 && t <= 64, where, ": transformer_layers_per_block[", i,
                    "] holds ", t, "; each entry must be in [0, 64]");
  }
  STIPPLE_CHECK(sample_size >= 0 && sample_size <= 16384, where, ": sample_size ", sample_size,
                " must be in [0, 16384]");
}

// ---------------- UNet2DConditionModel ----------------

UNet2DConditionModel::UNet2DConditionModel(const UNet2DConditionConfig& config) : config_(config) {
  config_.validate();
  const UNet2DConditionConfig& c = config_;
  const size_t n = c.down_block_types.size();
  const int64_t c0 = c.block_out_channels[0];
  const int64_t temb = c.time_embed_dim();

  conv_in_ =
      register_module("conv_in", std::make_shared<nn::Conv2d>(c.in_channels, c0, c.conv_in_kernel,
                                                              1, (c.conv_in_kernel - 1) / 2));
  time_proj_ = register_module(
      "time_proj",
      std::make_shared<nn::Timesteps>(c0, c.flip_sin_to_cos, static_cast<float>(c.freq_shift)));
  nn::TimestepEmbeddingOptions te;
  te.act_fn = c.act_fn;
  time_embedding_ =
      register_module("time_embedding", std::make_shared<nn::TimestepEmbedding>(c0, temb, te));
  if (c.num_class_embeds > 0) {
    class_embedding_ = register_module("class_embedding",
                                       std::make_shared<nn::Embedding>(c.num_class_embeds, temb));
  }
  if (c.addition_embed_type == "text_time") {
    add_time_proj_ = register_module(
        "add_time_proj", std::make_shared<nn::Timesteps>(c.addition_time_embed_dim,
                                                         c.flip_sin_to_cos,
                                                         static_cast<float>(c.freq_shift)));
    add_embedding_ = register_module(
        "add_embedding",
        std::make_shared<nn::TimestepEmbedding>(c.projection_class_embeddings_input_dim, temb));
  }

  // What get_down_block / get_mid_block / get_up_block receive.
  auto base = [&](size_t i) {
    UNetBlockConfig b;
    b.temb_channels = temb;
    b.resnet_eps = c.norm_eps;
    b.resnet_groups = c.norm_num_groups;
    b.resnet_act_fn = c.act_fn;
    b.resnet_time_scale_shift = c.resnet_time_scale_shift;
    b.downsample_padding = c.downsample_padding;
    b.num_attention_heads = c.num_attention_heads[i];
    b.cross_attention_dim = c.cross_attention_dim[i];
    b.only_cross_attention = c.only_cross_attention[i];
    b.use_linear_projection = c.use_linear_projection;
    b.upcast_attention = c.upcast_attention;
    return b;
  };

  auto downs = register_module("down_blocks", std::make_shared<nn::ModuleList>());
  int64_t output_channel = c0;
  for (size_t i = 0; i < n; ++i) {
    UNetBlockConfig b = base(i);
    b.in_channels = output_channel;
    output_channel = c.block_out_channels[i];
    b.out_channels = output_channel;
    b.num_layers = c.layers_per_block[i];
    b.add_sample = i + 1 < n;
    b.has_attention = c.down_block_types[i] == "CrossAttnDownBlock2D";
    b.transformer_layers = c.transformer_layers_per_block[i];
    down_blocks_.push_back(downs->push_back(std::make_shared<UNetDownBlock>(b)));
  }

  if (!c.mid_block_type.empty()) {
    UNetBlockConfig b = base(n - 1);
    b.in_channels = b.out_channels = c.block_out_channels[n - 1];
    b.num_layers = 1;
    b.output_scale_factor = c.mid_block_scale_factor;
    b.has_attention = true;
    b.only_cross_attention = false;  // UNetMidBlock2DCrossAttn takes no such argument
    // diffusers passes transformer_layers_per_block[-1]; its one layer takes the first entry.
    b.transformer_layers = {c.transformer_layers_per_block[n - 1].front()};
    mid_block_ = register_module("mid_block", std::make_shared<UNetMidBlock2DCrossAttn>(b));
  }

  auto ups = register_module("up_blocks", std::make_shared<nn::ModuleList>());
  output_channel = c.block_out_channels[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;  // the matching down block
    UNetBlockConfig b = base(r);
    const int64_t prev_output_channel = output_channel;
    output_channel = c.block_out_channels[r];
    b.prev_output_channel = prev_output_channel;
    b.out_channels = output_channel;
    b.in_channels = c.block_out_channels[r == 0 ? 0 : r - 1];
    b.num_layers = c.layers_per_block[r] + 1;
    b.add_sample = i + 1 < n;
    b.has_attention = c.up_block_types[i] == "CrossAttnUpBlock2D";
    b.transformer_layers = c.reverse_transformer_layers_per_block[i];
    up_blocks_.push_back(ups->push_back(std::make_shared<UNetUpBlock>(b)));
  }

  conv_norm_out_ = register_module(
      "conv_norm_out", std::make_shared<nn::GroupNorm>(c.norm_num_groups, c0, c.norm_eps));
  conv_out_ = register_module("conv_out",
                              std::make_shared<nn::Conv2d>(c0, c.out_channels, c.conv_out_kernel, 1,
                                                           (c.conv_out_kernel - 1) / 2));
}

namespace {

// The timestep as a [B] tensor in its own dtype (diffusers: timesteps[None].expand(B)), on the
// timestep's device (read and written back: B numbers).
Tensor broadcast_timestep(const Tensor& t, int64_t batch) {
  STIPPLE_CHECK(t.defined(), "UNet2DConditionModel: timestep is undefined");
  STIPPLE_CHECK(t.dim() <= 1 && (t.numel() == 1 || t.numel() == batch),
                "UNet2DConditionModel: timestep ", t.describe(),
                " must be a scalar, [1] or [batch] with batch = ", batch);
  const int64_t reps = t.numel() == 1 ? batch : 1;
  if (t.dtype() == DType::kI64) {
    std::vector<int64_t> v = t.to_vector_i64();
    if (reps > 1) v.assign(batch, v[0]);
    return Tensor::from_vector_i64(v, {batch}).to(t.device());
  }
  if (t.dtype() == DType::kF64) {
    std::vector<double> v = t.to_vector_f64();
    if (reps > 1) v.assign(batch, v[0]);
    return Tensor::from_vector_f64(v, {batch}).to(t.device());
  }
  std::vector<float> v = t.to_vector();  // f32 (f16/bf16 values are exact in f32)
  if (reps > 1) v.assign(batch, v[0]);
  return Tensor::from_vector(v, {batch}).to(t.device());
}

}  // namespace

Tensor UNet2DConditionModel::forward(const Tensor& sample, const Tensor& timestep,
                                     const Tensor& encoder_hidden_states,
                                     const Tensor& class_labels, const IntermediateHook& hook,
                                     const AddedConditions& added) const {
  const UNet2DConditionConfig& c = config_;
  STIPPLE_CHECK(sample.defined() && sample.dim() == 4 && sample.size(1) == c.in_channels,
                "UNet2DConditionModel: sample ", sample.defined() ? sample.describe() : "undefined",
                " must be [B, ", c.in_channels, ", H, W] (in_channels = ", c.in_channels, ")");
  const int64_t batch = sample.size(0);
  // Every cross-attention block projects the context with to_k/to_v [inner, cross_attention_dim];
  // a UNet without any (an image-conditioned super-resolution UNet) takes no context.
  auto attends = [&](size_t i) {
    return c.down_block_types[i] == "CrossAttnDownBlock2D" ||
           c.up_block_types[c.up_block_types.size() - 1 - i] == "CrossAttnUpBlock2D" ||
           (mid_block_ && i + 1 == c.down_block_types.size());
  };
  bool any_attends = false;
  for (size_t i = 0; i < c.down_block_types.size(); ++i) any_attends = any_attends || attends(i);
  if (any_attends || encoder_hidden_states.defined()) {
    STIPPLE_CHECK(encoder_hidden_states.defined() && encoder_hidden_states.dim() == 3 &&
                      encoder_hidden_states.size(0) == batch,
                  "UNet2DConditionModel: encoder_hidden_states ",
                  encoder_hidden_states.defined() ? encoder_hidden_states.describe() : "undefined",
                  " must be [", batch, ", T, D]");
    const int64_t width = encoder_hidden_states.size(2);
    for (size_t i = 0; i < c.down_block_types.size(); ++i)
      STIPPLE_CHECK(!attends(i) || width == c.cross_attention_dim[i],
                    "UNet2DConditionModel: encoder_hidden_states ",
                    encoder_hidden_states.describe(), " must have cross_attention_dim = ",
                    c.cross_attention_dim[i], " features (block ", i, ")");
  }
  auto emit = [&](const std::string& path, const Tensor& value) {
    if (hook) hook(path, value);
  };
  const Tensor& context = encoder_hidden_states;  // [B, T, D]

  // 0. center the input
  Tensor x = c.center_input_sample ? ops::affine(sample, 2.0f, -1.0f) : sample;  // [B, Cin, H, W]

  // 1. time
  const Tensor t = broadcast_timestep(timestep, batch);  // [B]
  const Tensor t_emb = time_proj_->forward(t);           // [B, C0]
  emit("time_proj", t_emb);
  Tensor emb = time_embedding_->forward(t_emb);  // [B, temb]
  emit("time_embedding", emb);
  if (class_embedding_) {
    STIPPLE_CHECK(class_labels.defined(), "UNet2DConditionModel: class_labels are required ",
                  "when num_class_embeds is set (", c.num_class_embeds, ")");
    emb = emb + class_embedding_->forward(class_labels);  // [B, temb]
  }
  if (add_embedding_) {
    const Tensor aug = added_embedding(added, batch);  // [B, temb]
    emit("add_embedding", aug);
    emb = emb + aug;
  } else {
    STIPPLE_CHECK(!added.defined(), "UNet2DConditionModel: this UNet has no added conditioning ",
                  "(addition_embed_type is null) but text_embeds/time_ids were given");
  }
  if (!c.time_embedding_act_fn.empty())
    emb = nn::apply_activation(c.time_embedding_act_fn, emb);  // [B, temb]

  // 2. pre-process
  x = conv_in_->forward(x);  // [B, C0, H, W]
  emit("conv_in", x);
  std::vector<Tensor> skips = {x};

  // 3. down: every resnet/transformer output and every downsampler output becomes a skip
  for (size_t i = 0; i < down_blocks_.size(); ++i) {
    x = down_blocks_[i]->forward(x, emb, context, skips);  // [B, C_i, H/2^i', W/2^i']
    emit(str_cat("down_blocks.", i), x);
  }

  // 4. mid
  if (mid_block_) {
    x = mid_block_->forward(x, emb, context);  // [B, C_last, h, w]
    emit("mid_block", x);
  }

  // 5. up: each block pops its skips (last pushed first); upsamplers follow the skip sizes
  for (size_t i = 0; i < up_blocks_.size(); ++i) {
    const auto& block = up_blocks_[i];
    int64_t up_h = 0, up_w = 0;
    const int64_t next = static_cast<int64_t>(skips.size()) - block->num_layers() - 1;
    if (i + 1 < up_blocks_.size() && next >= 0) {
      up_h = skips[next].size(2);
      up_w = skips[next].size(3);
    }
    x = block->forward(x, emb, context, skips, up_h, up_w);  // [B, C_r, h', w']
    emit(str_cat("up_blocks.", i), x);
  }

  // 6. post-process
  x = conv_norm_out_->forward(x);  // [B, C0, H, W]
  emit("conv_norm_out", x);
  x = nn::apply_activation(c.act_fn, x);  // [B, C0, H, W]
  x = conv_out_->forward(x);              // [B, Cout, H, W]
  emit("conv_out", x);
  return x.contiguous();  // [B, Cout, H, W]
}

Tensor UNet2DConditionModel::added_embedding(const AddedConditions& added, int64_t batch) const {
  const UNet2DConditionConfig& c = config_;
  const Tensor& text = added.text_embeds;
  const Tensor& ids = added.time_ids;
  STIPPLE_CHECK(text.defined() && ids.defined(), "UNet2DConditionModel: addition_embed_type ",
                "\"text_time\" needs text_embeds (the pooled prompt) and time_ids (sizes and crops)");
  STIPPLE_CHECK(text.dim() == 2 && text.size(0) == batch && ids.dim() == 2 &&
                    ids.size(0) == batch && ids.size(1) > 0,
                "UNet2DConditionModel: text_embeds ", text.describe(), " and time_ids ",
                ids.describe(), " must be [", batch, ", P] and [", batch, ", k]");
  const int64_t width = text.size(1) + ids.size(1) * c.addition_time_embed_dim;
  STIPPLE_CHECK(width == c.projection_class_embeddings_input_dim,
                "UNet2DConditionModel: text_embeds ", text.describe(), " and ", ids.size(1),
                " time ids x ", c.addition_time_embed_dim, " channels make ", width,
                " features, but projection_class_embeddings_input_dim is ",
                c.projection_class_embeddings_input_dim);
  const Tensor flat = ids.contiguous().reshape({batch * ids.size(1)}).to(DType::kF32);  // [B*k]
  const Tensor time_embeds = add_time_proj_->forward(flat).reshape(
      {batch, ids.size(1) * c.addition_time_embed_dim});  // [B, k * d]
  const Tensor joined =
      ops::concat({text.contiguous().to(DType::kF32), time_embeds}, 1);  // [B, P + k * d]
  return add_embedding_->forward(joined);                                 // [B, temb]
}

std::shared_ptr<UNet2DConditionModel> UNet2DConditionModel::from_pretrained(
    const std::string& folder) {
  namespace fs = std::filesystem;
  // A pipeline folder (model_index.json + unet/) is accepted too.
  const ComponentFiles files =
      find_component(folder, "UNet2DConditionModel", "diffusion_pytorch_model", "unet");
  const fs::path config_path(files.config);
  const io::JsonConfig j = io::JsonConfig::from_file(config_path.string());
  const std::string cls = j.string("_class_name", "UNet2DConditionModel");
  STIPPLE_CHECK(cls == "UNet2DConditionModel", config_path.string(), ": \"_class_name\" is \"", cls,
                "\", not UNet2DConditionModel");
  const UNet2DConditionConfig config = UNet2DConditionConfig::from_json(j);
  const fs::path weights(files.weights_file());
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights.string());
  check_config_matches(file, files.config, "conv_in.weight",
                       {config.block_out_channels.at(0), config.in_channels},
                       "[block_out_channels[0], in_channels]");
  auto model = std::make_shared<UNet2DConditionModel>(config);
  model->load_state_dict(file.tensors(), /*strict=*/true, weights.string());
  model->eval();
  model->freeze_for_inference();  // convolutions keep reordered weights
  return model;
}

}  // namespace stipple::models

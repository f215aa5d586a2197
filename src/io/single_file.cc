// Single-file (CompVis-named) Stable Diffusion checkpoints: detection, the key table, loading.
// See single_file.h.
#include "io/single_file.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <utility>

#include "core/error.h"
#include "core/parse_index.h"
#include "io/json.h"
#include "io/single_file_detect.h"
#include "io/torch_checkpoint.h"

namespace stipple::io {

namespace single_file_detail {

// Older SD 1.x files name the CLIP tower without "text_model." (transformers < 4.17).
std::string canonical_name(const std::string& name) {
  static const std::string kOld = "cond_stage_model.transformer.";
  if (starts_with(name, kOld) && !starts_with(name, kClipPrefix)) {
    return kClipPrefix + name.substr(kOld.size());
  }
  return name;
}

// "found 1131 tensors: model.diffusion_model.* (686), first_stage_model.* (248), ..."
std::string describe_found(const SafetensorsFile& file) {
  std::map<std::string, int64_t> groups;
  for (const auto& [name, e] : file.entries()) {
    size_t dot = name.find('.');
    if (starts_with(name, "cond_stage_model.") || starts_with(name, "conditioner.")) {
      const size_t second = name.find('.', dot + 1);
      if (second != std::string::npos) dot = second;
    }
    groups[dot == std::string::npos ? name : name.substr(0, dot) + ".*"]++;
  }
  std::string s = str_cat("found ", file.size(), " tensors");
  int shown = 0;
  for (const auto& [g, n] : groups) {
    s += str_cat(shown == 0 ? ": " : ", ", g, " (", n, ")");
    if (++shown == 10) {
      s += ", ...";
      break;
    }
  }
  return s;
}

}  // namespace single_file_detail

namespace {

using namespace single_file_detail;
using models::AutoencoderKLConfig;
using models::UNet2DConditionConfig;


// Leaf renames (CompVis, diffusers) applied to the rest of a key after its rule's prefix.
const std::vector<std::pair<std::string, std::string>>& leaf_table(KeyKind kind) {
  static const std::vector<std::pair<std::string, std::string>> kNone;
  static const std::vector<std::pair<std::string, std::string>> kUNetResnet = {
      {"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
      {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
  static const std::vector<std::pair<std::string, std::string>> kVAEResnet = {
      {"norm1", "norm1"},
      {"conv1", "conv1"},
      {"norm2", "norm2"},
      {"conv2", "conv2"},
      {"nin_shortcut", "conv_shortcut"}};
  static const std::vector<std::pair<std::string, std::string>> kVAEAttention = {
      {"norm", "group_norm"},
      {"q", "to_q"},
      {"k", "to_k"},
      {"v", "to_v"},
      {"proj_out", "to_out.0"}};
  switch (kind) {
    case KeyKind::kUNetResnet:
      return kUNetResnet;
    case KeyKind::kVAEResnet:
      return kVAEResnet;
    case KeyKind::kVAEAttention:
      return kVAEAttention;
    case KeyKind::kSame:
      break;
  }
  return kNone;
}

// Renames `rest` (the key after the rule prefix and its '.') by the kind's leaf table; false when
// the leaf is not in it. `to_diffusers` picks the direction.
bool rename_leaf(KeyKind kind, const std::string& rest, bool to_diffusers, std::string* out) {
  if (kind == KeyKind::kSame) {
    *out = rest;
    return true;
  }
  for (const auto& [cv, df] : leaf_table(kind)) {
    const std::string& from = to_diffusers ? cv : df;
    const std::string& to = to_diffusers ? df : cv;
    if (starts_with(rest, from + ".")) {
      *out = to + rest.substr(from.size());
      return true;
    }
  }
  return false;
}

// The rule whose prefix is the longest dotted prefix of `key`, from an index prefix -> rule.
const KeyRule* find_rule(const std::map<std::string, const KeyRule*>& index, const std::string& key,
                         std::string* rest) {
  for (size_t pos = key.rfind('.'); pos != std::string::npos && pos > 0;
       pos = key.rfind('.', pos - 1)) {
    auto it = index.find(key.substr(0, pos));
    if (it != index.end()) {
      *rest = key.substr(pos + 1);
      return it->second;
    }
  }
  return nullptr;
}

// Keys inside a component's prefix that no model holds (ignored on load, counted as "other").
bool is_ignored_key(const std::string& name) {
  if (starts_with(name, kVAEPrefix + "loss.") ||
      name == "cond_stage_model.transformer.text_model.embeddings.position_ids" ||
      name == "cond_stage_model.transformer.embeddings.position_ids" ||
      name == kXLClipPrefix + "embeddings.position_ids" ||
      name == kOpenClipPrefix + "text_projection") {
    return true;
  }
  for (const std::string* p : {&kOpenClipPrefix, &kXLBigGPrefix, &kXLRefinerBigGPrefix}) {
    if (name == *p + "logit_scale" || name == *p + "attn_mask") return true;
  }
  return false;
}

std::string component_of(const std::string& canonical) {
  if (is_ignored_key(canonical)) return "other";
  if (starts_with(canonical, kUNetPrefix)) return "unet";
  if (starts_with(canonical, kVAEPrefix)) return "vae";
  if (starts_with(canonical, kClipPrefix) || starts_with(canonical, kOpenClipPrefix) ||
      starts_with(canonical, kXLClipPrefix)) {
    return "text_encoder";
  }
  if (starts_with(canonical, kXLBigGPrefix) || starts_with(canonical, kXLRefinerBigGPrefix)) {
    return "text_encoder_2";
  }
  return "other";
}

// SDXL files name their parts conditioner.embedders.*.
bool is_xl_file(const std::map<std::string, std::string>& canon) {
  return std::any_of(canon.begin(), canon.end(),
                     [](const auto& kv) { return starts_with(kv.first, "conditioner."); });
}

// OpenCLIP (SD 2.x under `O` = cond_stage_model.model., SDXL's bigG) -> transformers CLIP names;
// in_proj is split into q, k, v. Layers past the config's count are dropped (SD 2.x); with
// `projection`, text_projection [D, P] (x @ P) becomes the Linear weight [P, D].
std::map<std::string, Tensor> convert_open_clip(const SafetensorsFile& file,
                                                const models::CLIPTextConfig& config,
                                                const std::string& O, bool projection) {
  const int64_t layers = config.num_hidden_layers;
  const int64_t d = config.hidden_size;
  std::map<std::string, Tensor> out;
  std::vector<std::string> unmapped;
  static const std::vector<std::pair<std::string, std::string>> kLayer = {
      {"ln_1.", "layer_norm1."},
      {"ln_2.", "layer_norm2."},
      {"attn.out_proj.", "self_attn.out_proj."},
      {"mlp.c_fc.", "mlp.fc1."},
      {"mlp.c_proj.", "mlp.fc2."}};
  for (const auto& [name, e] : file.entries()) {
    if (!starts_with(name, O) || is_ignored_key(name)) continue;
    const std::string rest = name.substr(O.size());
    if (rest == "token_embedding.weight") {
      out["text_model.embeddings.token_embedding.weight"] = file.tensor(name);
    } else if (rest == "positional_embedding") {
      out["text_model.embeddings.position_embedding.weight"] = file.tensor(name);
    } else if (starts_with(rest, "ln_final.")) {
      out["text_model.final_layer_norm." + rest.substr(9)] = file.tensor(name);
    } else if (rest == "text_projection" && projection) {
      out["text_projection.weight"] = file.tensor(name).transpose(0, 1).contiguous();
    } else if (starts_with(rest, "transformer.resblocks.")) {
      const std::string r = rest.substr(22);
      const size_t dot = r.find('.');
      const std::optional<int64_t> index =
          dot == std::string::npos ? std::nullopt : parse_index(r.substr(0, dot));
      if (!index) {
        unmapped.push_back(name);  // not transformer.resblocks.<layer>.<leaf>
        continue;
      }
      const int64_t l = *index;
      if (l >= layers) continue;  // the last layer: SD 2.x stops at the penultimate one
      const std::string leaf = r.substr(dot + 1);
      const std::string dst = str_cat("text_model.encoder.layers.", l, ".");
      if (leaf == "attn.in_proj_weight" || leaf == "attn.in_proj_bias") {
        const Tensor t = file.tensor(name);  // [3D, D] or [3D]
        STIPPLE_CHECK(t.size(0) == 3 * d, file.path(), ": ", name, " has shape ",
                      shape_str(t.shape()), ", expected 3 * ", d, " rows");
        const std::string suffix = leaf == "attn.in_proj_weight" ? ".weight" : ".bias";
        const char* proj[3] = {"q_proj", "k_proj", "v_proj"};
        for (int k = 0; k < 3; ++k) {
          out[dst + "self_attn." + proj[k] + suffix] = t.narrow(0, k * d, d);
        }
      } else {
        bool done = false;
        for (const auto& [from, to] : kLayer) {
          if (starts_with(leaf, from)) {
            out[dst + to + leaf.substr(from.size())] = file.tensor(name);
            done = true;
            break;
          }
        }
        if (!done) unmapped.push_back(name);
      }
    } else {
      unmapped.push_back(name);
    }
  }
  STIPPLE_CHECK(unmapped.empty(), file.path(), ": ", unmapped.size(),
                " OpenCLIP tensors have no CLIPTextModel counterpart, e.g. ", unmapped[0]);
  return out;
}

std::string component_prefix(SingleFileComponent c) {
  switch (c) {
    case SingleFileComponent::kUNet:
      return kUNetPrefix;
    case SingleFileComponent::kVAE:
      return kVAEPrefix;
    case SingleFileComponent::kTextEncoder:
      return "cond_stage_model.";
    case SingleFileComponent::kTextEncoder2:
      return "conditioner.";
  }
  return "";
}

}  // namespace

const char* component_name(SingleFileComponent c) {
  switch (c) {
    case SingleFileComponent::kUNet:
      return "unet";
    case SingleFileComponent::kVAE:
      return "vae";
    case SingleFileComponent::kTextEncoder:
      return "text_encoder";
    case SingleFileComponent::kTextEncoder2:
      return "text_encoder_2";
  }
  return "?";
}

// ---- the key table ----

std::vector<KeyRule> single_file_key_table(const UNet2DConditionConfig* unet,
                                           const AutoencoderKLConfig* vae, bool clip_text) {
  std::vector<KeyRule> t;
  if (unet != nullptr) {
    const auto U = SingleFileComponent::kUNet;
    auto add = [&](const std::string& cv, const std::string& df, KeyKind k = KeyKind::kSame) {
      t.push_back({U, kUNetPrefix + cv, df, k});
    };
    const size_t n = unet->block_out_channels.size();
    add("time_embed.0", "time_embedding.linear_1");
    add("time_embed.2", "time_embedding.linear_2");
    if (unet->addition_embed_type == "text_time") {
      add("label_emb.0.0", "add_embedding.linear_1");
      add("label_emb.0.2", "add_embedding.linear_2");
    }
    add("input_blocks.0.0", "conv_in");
    int64_t i = 1;
    for (size_t b = 0; b < n; ++b) {
      const bool cross = starts_with(unet->down_block_types[b], "CrossAttn");
      for (int64_t j = 0; j < unet->layers_per_block[b]; ++j, ++i) {
        add(str_cat("input_blocks.", i, ".0"), str_cat("down_blocks.", b, ".resnets.", j),
            KeyKind::kUNetResnet);
        if (cross)
          add(str_cat("input_blocks.", i, ".1"), str_cat("down_blocks.", b, ".attentions.", j));
      }
      if (b + 1 < n) {
        add(str_cat("input_blocks.", i, ".0.op"),
            str_cat("down_blocks.", b, ".downsamplers.0.conv"));
        ++i;
      }
    }
    add("middle_block.0", "mid_block.resnets.0", KeyKind::kUNetResnet);
    add("middle_block.1", "mid_block.attentions.0");
    add("middle_block.2", "mid_block.resnets.1", KeyKind::kUNetResnet);
    int64_t o = 0;
    for (size_t u = 0; u < n; ++u) {
      const bool cross = starts_with(unet->up_block_types[u], "CrossAttn");
      const int64_t resnets = unet->layers_per_block[n - 1 - u] + 1;
      for (int64_t j = 0; j < resnets; ++j, ++o) {
        add(str_cat("output_blocks.", o, ".0"), str_cat("up_blocks.", u, ".resnets.", j),
            KeyKind::kUNetResnet);
        if (cross)
          add(str_cat("output_blocks.", o, ".1"), str_cat("up_blocks.", u, ".attentions.", j));
        if (j + 1 == resnets && u + 1 < n) {
          add(str_cat("output_blocks.", o, ".", cross ? 2 : 1, ".conv"),
              str_cat("up_blocks.", u, ".upsamplers.0.conv"));
        }
      }
    }
    add("out.0", "conv_norm_out");
    add("out.2", "conv_out");
  }
  if (vae != nullptr) {
    const auto V = SingleFileComponent::kVAE;
    auto add = [&](const std::string& cv, const std::string& df, KeyKind k = KeyKind::kSame) {
      t.push_back({V, kVAEPrefix + cv, df, k});
    };
    const int64_t n = static_cast<int64_t>(vae->block_out_channels.size());
    for (const char* part : {"encoder", "decoder"}) {
      const std::string p = part;
      add(p + ".conv_in", p + ".conv_in");
      add(p + ".conv_out", p + ".conv_out");
      add(p + ".norm_out", p + ".conv_norm_out");
      add(p + ".mid.block_1", p + ".mid_block.resnets.0", KeyKind::kVAEResnet);
      add(p + ".mid.attn_1", p + ".mid_block.attentions.0", KeyKind::kVAEAttention);
      add(p + ".mid.block_2", p + ".mid_block.resnets.1", KeyKind::kVAEResnet);
    }
    for (int64_t i = 0; i < n; ++i) {
      const bool a = starts_with(vae->down_block_types[i], "Attn");
      for (int64_t j = 0; j < vae->layers_per_block; ++j) {
        add(str_cat("encoder.down.", i, ".block.", j),
            str_cat("encoder.down_blocks.", i, ".resnets.", j), KeyKind::kVAEResnet);
        if (a) {
          add(str_cat("encoder.down.", i, ".attn.", j),
              str_cat("encoder.down_blocks.", i, ".attentions.", j), KeyKind::kVAEAttention);
        }
      }
      if (i + 1 < n) {
        add(str_cat("encoder.down.", i, ".downsample.conv"),
            str_cat("encoder.down_blocks.", i, ".downsamplers.0.conv"));
      }
    }
    for (int64_t u = 0; u < n; ++u) {  // CompVis numbers the decoder levels from the top
      const int64_t l = n - 1 - u;
      const bool a = starts_with(vae->up_block_types[u], "Attn");
      for (int64_t j = 0; j <= vae->layers_per_block; ++j) {
        add(str_cat("decoder.up.", l, ".block.", j),
            str_cat("decoder.up_blocks.", u, ".resnets.", j), KeyKind::kVAEResnet);
        if (a) {
          add(str_cat("decoder.up.", l, ".attn.", j),
              str_cat("decoder.up_blocks.", u, ".attentions.", j), KeyKind::kVAEAttention);
        }
      }
      if (u + 1 < n) {
        add(str_cat("decoder.up.", l, ".upsample.conv"),
            str_cat("decoder.up_blocks.", u, ".upsamplers.0.conv"));
      }
    }
    add("quant_conv", "quant_conv");
    add("post_quant_conv", "post_quant_conv");
  }
  if (clip_text) {
    t.push_back({SingleFileComponent::kTextEncoder, kClipPrefix.substr(0, kClipPrefix.size() - 1),
                 "text_model", KeyKind::kSame});
  }
  return t;
}

// ---- detection ----

bool looks_like_single_file(const SafetensorsFile& file) {
  for (const auto& [name, e] : file.entries()) {
    if (starts_with(name, kUNetPrefix) || starts_with(name, kVAEPrefix) ||
        starts_with(name, "cond_stage_model.") || starts_with(name, "conditioner.")) {
      return true;
    }
  }
  return false;
}

SingleFileInfo inspect_single_file(const SafetensorsFile& file, const SingleFileOptions& opt) {
  const Header h(file);
  SingleFileInfo info;
  info.path = file.path();
  info.xl = is_xl_file(h.canon());
  for (const auto& [canon, name] : h.canon()) {
    const std::string c = component_of(canon);
    const SafetensorsEntry& e = file.entry(name);
    info.num_tensors[c] += 1;
    info.num_params[c] += shape_numel(e.shape);
    info.dtypes[c][e.dtype] += 1;
  }
  info.has_unet = info.num_tensors.count("unet") > 0;
  info.has_vae = info.num_tensors.count("vae") > 0;
  info.has_text_encoder = info.num_tensors.count("text_encoder") > 0;
  info.has_text_encoder_2 = info.num_tensors.count("text_encoder_2") > 0;
  STIPPLE_CHECK(info.has_unet, file.path(),
                ": not a Stable Diffusion single-file checkpoint (no UNet under "
                "model.diffusion_model.*); ",
                describe_found(file),
                ". stipple reads SD 1.x/2.x/XL single files and diffusers folders.");
  STIPPLE_CHECK(opt.prediction_type == "epsilon" || opt.prediction_type == "v_prediction" ||
                    opt.prediction_type == "sample",
                "prediction type must be epsilon, v_prediction or sample, got \"",
                opt.prediction_type, "\"");
  info.prediction_type = opt.prediction_type;
  // Each config: read from config_dir when given (diffusers' from_single_file(config=...)),
  // else detected from the names and shapes.
  const std::filesystem::path cfg_dir(opt.config_dir);
  auto config = [&](const char* component, const std::function<nlohmann::json()>& detect) {
    if (opt.config_dir.empty()) return detect();
    const std::filesystem::path f = cfg_dir / component / "config.json";
    STIPPLE_CHECK(std::filesystem::exists(f), "the config folder ", opt.config_dir, " has no ",
                  component, "/config.json, which ", file.path(), " needs");
    return JsonConfig::from_file(f.string()).raw();
  };
  info.unet_json = config("unet", [&] { return detect_unet(h, opt, info.xl, &info.family); });
  if (info.family.empty())  // configs from config_dir: name the family by the weights
    info.family = info.xl ? (info.has_text_encoder ? "SDXL" : "SDXL refiner") : "SD";
  info.unet_config = UNet2DConditionConfig::from_json(
      JsonConfig(info.unet_json, file.path() + " (UNet config)"));
  if (info.has_vae) {
    info.vae_json = config("vae", [&] { return detect_vae(h, opt, info.xl); });
    info.vae_config = AutoencoderKLConfig::from_json(
        JsonConfig(info.vae_json, file.path() + " (VAE config)"));
  }
  const std::string& clip = info.xl ? kXLClipPrefix : kClipPrefix;
  if (info.has_text_encoder) {
    info.text_encoder_json = config("text_encoder", [&] {
      return detect_text(h, opt, &info.text_encoder_kind, clip, kOpenClipPrefix, true);
    });
    if (info.text_encoder_kind.empty())
      info.text_encoder_kind = h.has(clip + "embeddings.token_embedding.weight") ? "CLIP"
                                                                                  : "OpenCLIP";
    info.text_config = models::CLIPTextConfig::from_json(
        JsonConfig(info.text_encoder_json, file.path() + " (text encoder config)"));
  }
  if (info.has_text_encoder_2) {
    const std::string& big_g = info.has_text_encoder ? kXLBigGPrefix : kXLRefinerBigGPrefix;
    info.text_encoder_2_json = config("text_encoder_2", [&] {
      std::string kind;
      return detect_text(h, opt, &kind, "(none)", big_g, /*drop_last=*/false);
    });
    info.text_config_2 = models::CLIPTextConfig::from_json(
        JsonConfig(info.text_encoder_2_json, file.path() + " (text encoder 2 config)"));
  }
  const int64_t cross = info.unet_config.cross_attention_dim.at(0);
  const int64_t width = (info.has_text_encoder ? info.text_config.hidden_size : 0) +
                        (info.has_text_encoder_2 ? info.text_config_2.hidden_size : 0);
  STIPPLE_CHECK(!(info.has_text_encoder || info.has_text_encoder_2) || width == cross,
                file.path(), ": the text encoder", info.has_text_encoder_2 ? "s give " : " gives ",
                width, "-wide states but the UNet cross-attends to ", cross,
                "-wide context; the parts do not belong together");
  info.scheduler_json = sd_scheduler_json(opt.prediction_type);
  if (info.xl) {
    // What SDXL base and refiner ship: Euler with SD's betas.
    info.scheduler_json["_class_name"] = "EulerDiscreteScheduler";
    info.scheduler_json["interpolation_type"] = "linear";
    info.scheduler_json["use_karras_sigmas"] = false;
  }
  return info;
}

// ---- conversion ----

std::map<std::string, Tensor> convert_single_file_component(const SafetensorsFile& file,
                                                            const SingleFileInfo& info,
                                                            SingleFileComponent component) {
  const std::string prefix = component_prefix(component);
  if (component == SingleFileComponent::kTextEncoder2) {
    return convert_open_clip(file, info.text_config_2,
                             info.has_text_encoder ? kXLBigGPrefix : kXLRefinerBigGPrefix,
                             /*projection=*/true);
  }
  if (component == SingleFileComponent::kTextEncoder && info.text_encoder_kind == "OpenCLIP") {
    return convert_open_clip(file, info.text_config, kOpenClipPrefix, /*projection=*/false);
  }
  if (component == SingleFileComponent::kTextEncoder && info.xl) {
    // SDXL's CLIP ViT-L: transformers names under conditioner.embedders.0.transformer.
    std::map<std::string, Tensor> out;
    const std::string from = kXLClipPrefix.substr(0, kXLClipPrefix.size() - 11);  // ...transformer.
    for (const auto& [name, e] : file.entries()) {
      if (!starts_with(name, from) || is_ignored_key(name)) continue;
      out[name.substr(from.size())] = file.tensor(name);
    }
    return out;
  }
  const std::vector<KeyRule> table =
      single_file_key_table(component == SingleFileComponent::kUNet ? &info.unet_config : nullptr,
                            component == SingleFileComponent::kVAE ? &info.vae_config : nullptr,
                            component == SingleFileComponent::kTextEncoder);
  std::map<std::string, const KeyRule*> index;
  for (const KeyRule& r : table) index[r.compvis] = &r;
  std::map<std::string, Tensor> out;
  std::vector<std::string> unmapped;
  for (const auto& [name, e] : file.entries()) {
    const std::string canon = canonical_name(name);
    if (!starts_with(canon, prefix) || is_ignored_key(canon)) continue;
    std::string rest, leaf;
    const KeyRule* rule = find_rule(index, canon, &rest);
    if (rule == nullptr || !rename_leaf(rule->kind, rest, /*to_diffusers=*/true, &leaf)) {
      unmapped.push_back(name);
      continue;
    }
    Tensor t = file.tensor(name);
    // CompVis VAE attention projections are 1x1 convolutions; diffusers' are Linear layers.
    if (rule->kind == KeyKind::kVAEAttention && t.dim() == 4) {
      STIPPLE_CHECK(t.size(2) == 1 && t.size(3) == 1, file.path(), ": ", name, " has shape ",
                    shape_str(t.shape()), ", expected a 1x1 convolution");
      t = t.reshape({t.size(0), t.size(1)});
    }
    out[rule->diffusers + "." + leaf] = t;
  }
  if (!unmapped.empty()) {
    std::string list;
    for (size_t i = 0; i < unmapped.size() && i < 8; ++i) list += (i ? ", " : "") + unmapped[i];
    throw Error(str_cat(file.path(), ": ", unmapped.size(), " ", component_name(component),
                        " tensors do not fit the detected ", info.family, " layout: ", list,
                        unmapped.size() > 8 ? ", ..." : ""));
  }
  return out;
}

std::map<std::string, Tensor> to_single_file_names(SingleFileComponent component,
                                                   const std::map<std::string, Tensor>& state,
                                                   const UNet2DConditionConfig* unet,
                                                   const AutoencoderKLConfig* vae) {
  const std::vector<KeyRule> table =
      single_file_key_table(component == SingleFileComponent::kUNet ? unet : nullptr,
                            component == SingleFileComponent::kVAE ? vae : nullptr,
                            component == SingleFileComponent::kTextEncoder);
  std::map<std::string, const KeyRule*> index;
  for (const KeyRule& r : table) index[r.diffusers] = &r;
  std::map<std::string, Tensor> out;
  for (const auto& [name, t0] : state) {
    if (name == "text_model.embeddings.position_ids") continue;
    std::string rest, leaf;
    const KeyRule* rule = find_rule(index, name, &rest);
    STIPPLE_CHECK(rule != nullptr && rename_leaf(rule->kind, rest, /*to_diffusers=*/false, &leaf),
                  "to_single_file_names: ", component_name(component), " tensor ", name,
                  " has no CompVis name in the key table");
    Tensor t = t0;
    if (rule->kind == KeyKind::kVAEAttention && t.dim() == 2)
      t = t.reshape({t.size(0), t.size(1), 1, 1});
    out[rule->compvis + "." + leaf] = t;
  }
  return out;
}

// ---- loading ----

SingleFileModels load_single_file(const std::string& path, const SingleFileOptions& options,
                                  bool unet, bool vae, bool text_encoder) {
  STIPPLE_CHECK(std::filesystem::exists(path), "no such file: ", path);
  const SafetensorsFile file = open_weights_file(path);  // safetensors or a .ckpt
  SingleFileModels m;
  m.info = inspect_single_file(file, options);
  auto missing = [&](const char* what, const char* prefix) {
    return str_cat(path, ": no ", what, " (", prefix, "*) in this ", m.info.family, " file; ",
                   describe_found(file));
  };
  STIPPLE_CHECK(!vae || m.info.has_vae, missing("VAE", "first_stage_model."),
                ". Use a file that includes the VAE, or a diffusers folder.");
  STIPPLE_CHECK(!text_encoder || m.info.has_text_encoder || m.info.has_text_encoder_2,
                missing("text encoder", m.info.xl ? "conditioner.embedders." : "cond_stage_model."),
                ". Use a file that includes the text encoder, or a diffusers folder.");
  if (unet) {
    m.unet = std::make_shared<models::UNet2DConditionModel>(m.info.unet_config);
    m.unet->load_state_dict(convert_single_file_component(file, m.info, SingleFileComponent::kUNet),
                            /*strict=*/true, path + " (UNet)");
    m.unet->eval();
    m.unet->freeze_for_inference();  // convolutions keep reordered weights
  }
  if (vae) {
    m.vae = std::make_shared<models::AutoencoderKL>(m.info.vae_config);
    m.vae->load_checkpoint(convert_single_file_component(file, m.info, SingleFileComponent::kVAE),
                           path + " (VAE)");
    m.vae->eval();
    m.vae->freeze_for_inference();  // convolutions keep reordered weights
  }
  if (text_encoder && m.info.has_text_encoder) {
    m.text_encoder = std::make_shared<models::CLIPTextModel>(m.info.text_config);
    m.text_encoder->load_state_dict(
        convert_single_file_component(file, m.info, SingleFileComponent::kTextEncoder),
        /*strict=*/true, path + " (text encoder)");
    m.text_encoder->eval();
  }
  if (text_encoder && m.info.has_text_encoder_2) {
    m.text_encoder_2 =
        std::make_shared<models::CLIPTextModel>(m.info.text_config_2, /*with_projection=*/true);
    m.text_encoder_2->load_state_dict(
        convert_single_file_component(file, m.info, SingleFileComponent::kTextEncoder2),
        /*strict=*/true, path + " (text encoder 2)");
    m.text_encoder_2->eval();
  }
  return m;
}

}  // namespace stipple::io

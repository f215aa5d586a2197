// Model detection and the `stipple info` report. See model_info.h.
#include "pipelines/model_info.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"

namespace stipple::pipelines {

namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

// A config value as short text ("[320, 640]", "true", "768"); "" when absent or null.
std::string value_text(const nlohmann::json& j, const std::string& key) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return "";
  const nlohmann::json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  std::string s = v.dump();
  if (v.is_array()) {  // "[1,2]" -> "[1, 2]"
    std::string spaced;
    for (char c : s) {
      spaced += c;
      if (c == ',') spaced += ' ';
    }
    s = spaced;
  }
  return s;
}

void add_highlights(ComponentInfo* c, const nlohmann::json& j,
                    const std::vector<std::string>& keys) {
  for (const std::string& k : keys) {
    const std::string v = value_text(j, k);
    if (!v.empty()) c->highlights.emplace_back(k, v);
  }
}

const std::vector<std::string>& highlight_keys(const std::string& component) {
  static const std::map<std::string, std::vector<std::string>> kKeys = {
      {"unet",
       {"in_channels", "out_channels", "block_out_channels", "layers_per_block",
        "attention_head_dim", "num_attention_heads", "cross_attention_dim", "use_linear_projection",
        "upcast_attention", "sample_size", "addition_embed_type"}},
      {"vae", {"latent_channels", "block_out_channels", "layers_per_block", "scaling_factor"}},
      {"text_encoder",
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "vocab_size"}},
      {"text_encoder_2",
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "hidden_act", "projection_dim", "vocab_size"}},
      {"transformer",
       {"in_channels", "out_channels", "sample_size", "patch_size", "num_layers",
        "num_attention_heads", "attention_head_dim", "num_embeds_ada_norm", "norm_type"}},
      {"scheduler",
       {"prediction_type", "beta_schedule", "beta_start", "beta_end", "timestep_spacing",
        "steps_offset"}},
  };
  static const std::vector<std::string> kNone;
  auto it = kKeys.find(component);
  return it == kKeys.end() ? kNone : it->second;
}

// Counts, parameters and dtypes from a safetensors header.
void read_weights(ComponentInfo* c, const io::SafetensorsFile& f) {
  c->source = f.path();
  for (const auto& [name, e] : f.entries()) {
    c->num_tensors += 1;
    c->num_params += shape_numel(e.shape);
    c->dtypes[e.dtype] += 1;
  }
}

// The weights file of a diffusers/transformers component folder, or "".
std::string weights_file(const fs::path& dir) {
  for (const char* name : {"diffusion_pytorch_model.safetensors", "model.safetensors",
                           "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"}) {
    if (fs::exists(dir / name)) return (dir / name).string();
  }
  return "";
}

// Family from a denoiser's tensor names and shapes.
void detect_family(const std::string& component, const io::SafetensorsFile& f, ModelInfo* info) {
  if (component == "unet") {
    if (!f.contains("conv_in.weight")) return;
    const int64_t in_channels = f.dim("conv_in.weight", 1);
    bool linear = false, cross = false;
    int64_t cross_dim = 0;
    for (const auto& [name, e] : f.entries()) {
      if (ends_with(name, ".proj_in.weight") && e.shape.size() == 2) linear = true;
      if (ends_with(name, ".attn2.to_k.weight")) {
        cross = true;
        cross_dim = f.dim(name, 1);
      }
    }
    if (!cross) {
      info->family = "unknown";
      info->evidence = "a UNet without cross-attention (not text-conditioned)";
      return;
    }
    if (f.contains("add_embedding.linear_1.weight")) {
      // SDXL's added size/text conditioning; the refiner cross-attends to bigG alone (1280).
      info->family = "SDXL";  // inspect_folder names a refiner (no text_encoder/) after
      info->evidence = str_cat("unet weights: added text/time embedding (add_embedding), ",
                               cross_dim, "-wide cross-attention");
      return;
    }
    info->family = (linear || cross_dim == 1024) ? "SD 2.x" : "SD 1.x";
    if (in_channels == 9)
      info->family += " inpainting";
    else if (in_channels != 4)
      info->family += str_cat(" (", in_channels, "-channel input)");
    info->evidence =
        str_cat("unet weights: ", in_channels, " input channels, ", linear ? "Linear" : "1x1-conv",
                " proj_in, ", cross_dim, "-wide cross-attention");
  } else if (component == "transformer") {
    const bool patch = f.contains("pos_embed.proj.weight");
    const bool adaln = f.contains("transformer_blocks.0.norm1.linear.weight");
    if (patch && adaln) {
      info->family = "DiT";
      const bool classes =
          f.contains("transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight");
      info->evidence = str_cat("transformer weights: patch embedding, adaLN-Zero blocks",
                               classes ? ", class-label table" : "");
    } else if (patch && f.contains("adaln_single.linear.weight") &&
               f.contains("caption_projection.linear_1.weight")) {
      info->family = "PixArt (text-to-image DiT)";
      const int64_t caption = f.dim("caption_projection.linear_1.weight", 1);
      info->evidence = str_cat("transformer weights: patch embedding, adaLN-single, ", caption,
                               "-channel caption projection",
                               f.contains("pooled_text_embedder.linear_1.weight")
                                   ? ", pooled text embedding (stipple)"
                                   : "");
    }
  }
}

ModelInfo inspect_folder(const fs::path& dir) {
  ModelInfo info;
  info.path = dir.string();
  info.family = "unknown";
  std::vector<std::pair<std::string, std::string>> parts;  // component -> class name
  if (fs::exists(dir / "model_index.json")) {
    const nlohmann::json index = io::read_json_file((dir / "model_index.json").string());
    info.format =
        str_cat("diffusers pipeline folder (",
                value_text(index, "_class_name").empty() ? "no _class_name"
                                                         : value_text(index, "_class_name"),
                ")");
    for (const auto& [key, v] : index.items()) {
      if (key.empty() || key[0] == '_' || !v.is_array() || v.size() != 2 || !v[1].is_string()) {
        continue;  // metadata, or a part the pipeline does not have ([null, null])
      }
      parts.emplace_back(key, v[1].get<std::string>());
    }
  } else if (fs::exists(dir / "config.json")) {
    const nlohmann::json cfg = io::read_json_file((dir / "config.json").string());
    std::string cls = value_text(cfg, "_class_name");
    if (cls.empty() && cfg.contains("architectures") && cfg["architectures"].is_array() &&
        !cfg["architectures"].empty() && cfg["architectures"][0].is_string()) {
      cls = cfg["architectures"][0].get<std::string>();
    }
    info.format = "diffusers component folder";
    parts.emplace_back("", cls);
  } else {
    throw Error(str_cat(dir.string(),
                        ": neither model_index.json (a diffusers pipeline) nor "
                        "config.json (one component) is in this folder"));
  }

  for (const auto& [name, cls] : parts) {
    const fs::path sub = name.empty() ? dir : dir / name;
    ComponentInfo c;
    c.class_name = cls;
    // One component folder: name it by its class.
    c.name = name;
    if (c.name.empty()) {
      if (cls == "UNet2DConditionModel")
        c.name = "unet";
      else if (cls == "AutoencoderKL")
        c.name = "vae";
      else if (cls.find("CLIPText") != std::string::npos)
        c.name = "text_encoder";
      else if (cls.find("Transformer") != std::string::npos)
        c.name = "transformer";
      else
        c.name = cls;
    }
    if (!fs::exists(sub)) {
      info.notes.push_back(str_cat(name, ": listed in model_index.json but the folder is missing"));
      continue;
    }
    const fs::path cfg_path =
        fs::exists(sub / "config.json") ? sub / "config.json" : sub / "scheduler_config.json";
    nlohmann::json cfg;
    if (fs::exists(cfg_path)) cfg = io::read_json_file(cfg_path.string());
    add_highlights(&c, cfg, highlight_keys(c.name == "scheduler" ? "scheduler" : c.name));
    if (c.name == "scheduler") {
      info.scheduler_class = cls;
      info.prediction_type = value_text(cfg, "prediction_type");
      if (info.prediction_type.empty()) info.prediction_type = "epsilon";
      c.source = cfg_path.string();
    } else if (c.name == "tokenizer" || c.name == "tokenizer_2") {
      c.source = sub.string();
      if (fs::exists(sub / "vocab.json")) {
        c.highlights.emplace_back(
            "vocab", std::to_string(io::read_json_file((sub / "vocab.json").string()).size()));
      }
    } else {
      const std::string w = weights_file(sub);
      if (w.empty()) {
        info.notes.push_back(str_cat(c.name, ": no .safetensors weights in ", sub.string()));
      } else {
        const io::SafetensorsFile f = io::SafetensorsFile::open(w);
        read_weights(&c, f);
        if (info.family == "unknown") detect_family(c.name, f, &info);
      }
    }
    info.components.push_back(std::move(c));
  }
  // SDXL refiners have only text_encoder_2 (CLIP ViT-bigG); the base has both encoders.
  const auto has = [&](const char* name) {
    return std::any_of(info.components.begin(), info.components.end(),
                       [&](const ComponentInfo& c) { return c.name == name; });
  };
  if (info.family == "SDXL" && has("text_encoder_2") && !has("text_encoder"))
    info.family = "SDXL refiner";
  return info;
}

ModelInfo inspect_file(const std::string& path, const io::SingleFileOptions& options) {
  const io::SafetensorsFile f = io::open_weights_file(path);  // safetensors or .ckpt
  ModelInfo info;
  info.path = path;
  if (!io::looks_like_single_file(f)) {
    // A lone component's weights (diffusers names): identify the denoiser if it is one.
    info.format = "safetensors file (no CompVis component prefixes)";
    info.family = "unknown";
    ComponentInfo c;
    c.name = f.contains("conv_in.weight")          ? "unet"
             : f.contains("pos_embed.proj.weight") ? "transformer"
                                                   : "weights";
    read_weights(&c, f);
    detect_family(c.name, f, &info);
    info.components.push_back(std::move(c));
    info.notes.push_back("configs are not stored in a bare weights file; pass its folder");
    return info;
  }
  const io::SingleFileInfo sf = io::inspect_single_file(f, options);
  info.format = "single-file checkpoint (CompVis names)";
  info.family = sf.family;
  info.evidence =
      str_cat("tensor names and shapes: ", sf.unet_config.in_channels, " input channels, ",
              sf.unet_config.use_linear_projection ? "Linear" : "1x1-conv", " proj_in, ",
              sf.unet_config.cross_attention_dim.at(0), "-wide cross-attention",
              sf.has_text_encoder ? ", " + sf.text_encoder_kind + " text encoder" : "",
              sf.has_text_encoder_2 ? ", OpenCLIP bigG text encoder" : "");
  info.prediction_type = sf.prediction_type;
  info.scheduler_class = sf.scheduler_json.value("_class_name", "DDIMScheduler");
  auto add = [&](const std::string& name, const std::string& cls, const nlohmann::json& j) {
    ComponentInfo c;
    c.name = name;
    c.class_name = cls;
    c.source = path;
    c.num_tensors = sf.num_tensors.count(name) ? sf.num_tensors.at(name) : 0;
    c.num_params = sf.num_params.count(name) ? sf.num_params.at(name) : 0;
    if (sf.dtypes.count(name)) c.dtypes = sf.dtypes.at(name);
    add_highlights(&c, j, highlight_keys(name));
    info.components.push_back(std::move(c));
  };
  add("unet", "UNet2DConditionModel", sf.unet_json);
  if (sf.has_vae)
    add("vae", "AutoencoderKL", sf.vae_json);
  else
    info.notes.push_back("no VAE in the file (first_stage_model.*): supply one to decode");
  if (sf.has_text_encoder)
    add("text_encoder", "CLIPTextModel (" + sf.text_encoder_kind + ")", sf.text_encoder_json);
  if (sf.has_text_encoder_2)
    add("text_encoder_2", "CLIPTextModelWithProjection (OpenCLIP bigG)", sf.text_encoder_2_json);
  if (!sf.has_text_encoder && !sf.has_text_encoder_2)
    info.notes.push_back(str_cat("no text encoder in the file (",
                                 sf.xl ? "conditioner.embedders.*" : "cond_stage_model.*", ")"));
  if (sf.num_tensors.count("other")) {
    info.notes.push_back(str_cat(sf.num_tensors.at("other"), " tensors outside the three models ",
                                 "(EMA copies, schedule buffers, ...) are ignored"));
  }
  info.notes.push_back(
      "the scheduler is not stored in single files: SD's DDIM schedule "
      "(scaled_linear 0.00085..0.012) is assumed; prediction type " +
      sf.prediction_type + " unless --prediction-type says otherwise");
  return info;
}

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.1f M", n / 1e6);
  else if (n >= 1000)
    std::snprintf(buf, sizeof buf, "%.1f K", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

}  // namespace

bool is_model_path(const std::string& path) {
  return fs::is_directory(path) || ends_with(path, ".safetensors");
}

ModelInfo inspect_model(const std::string& path, const io::SingleFileOptions& options) {
  STIPPLE_CHECK(fs::exists(path), "no such file or folder: ", path);
  if (fs::is_directory(path)) return inspect_folder(fs::path(path));
  STIPPLE_CHECK(ends_with(path, ".safetensors"), path,
                ": not a model (expected a diffusers folder or a .safetensors file)");
  return inspect_file(path, options);
}

std::string format_model_info(const ModelInfo& info) {
  std::string s = str_cat(info.path, ": ", info.format, "\n");
  s += str_cat("family: ", info.family, info.evidence.empty() ? "" : " (" + info.evidence + ")",
               "\n");
  if (!info.scheduler_class.empty() || !info.prediction_type.empty()) {
    s += str_cat("scheduler: ", info.scheduler_class.empty() ? "-" : info.scheduler_class,
                 ", prediction type: ", info.prediction_type.empty() ? "-" : info.prediction_type,
                 "\n");
  }
  int64_t total = 0;
  for (const ComponentInfo& c : info.components) {
    std::string dt;
    for (const auto& [d, n] : c.dtypes) dt += str_cat(dt.empty() ? "" : " ", d, "x", n);
    char line[256];
    if (c.num_tensors > 0) {
      std::snprintf(line, sizeof line, "  %-13s %-30s %10s params %6lld tensors  %s\n",
                    c.name.c_str(), c.class_name.c_str(), human_count(c.num_params).c_str(),
                    static_cast<long long>(c.num_tensors), dt.c_str());
    } else {
      std::snprintf(line, sizeof line, "  %-13s %s\n", c.name.c_str(), c.class_name.c_str());
    }
    s += line;
    total += c.num_params;
    if (!c.highlights.empty()) {
      std::string h = "      ";
      for (size_t i = 0; i < c.highlights.size(); ++i) {
        h += str_cat(i ? ", " : "", c.highlights[i].first, " ", c.highlights[i].second);
      }
      s += h + "\n";
    }
  }
  s += str_cat("total: ", human_count(total), " parameters (", total, ")\n");
  for (const std::string& n : info.notes) s += "note: " + n + "\n";
  return s;
}

}  // namespace stipple::pipelines

// Single-file Stable Diffusion checkpoints: each part's diffusers config, read from the shapes of
// its tensors. See single_file_detect.h.
#include "io/single_file_detect.h"

#include <algorithm>

#include "io/json.h"

namespace stipple::io::single_file_detail {

using models::AutoencoderKLConfig;
using models::UNet2DConditionConfig;


// SD 2.x UNets project with Linear layers and cross-attend to OpenCLIP's 1024-wide context.
bool sd2_like(bool linear_proj, int64_t cross_dim) { return linear_proj || cross_dim == 1024; }

nlohmann::json detect_unet(const Header& h, const SingleFileOptions& opt, bool xl,
                           std::string* family) {
  const std::string& P = kUNetPrefix;
  const std::string where = h.file().path();
  STIPPLE_CHECK(xl || !h.has(P + "label_emb.0.0.weight"), where,
                ": the UNet has a class embedding (label_emb: the SD x4 upscaler or a "
                "class-conditioned model), which single-file loading does not support");
  STIPPLE_CHECK(!xl || (h.has(P + "label_emb.0.0.weight") && h.has(P + "label_emb.0.2.weight")),
                where,
                ": an SDXL file (conditioner.embedders.*) whose UNet lacks label_emb.0.0 / "
                "label_emb.0.2 (the added size and text embedding)");
  STIPPLE_CHECK(h.has(P + "input_blocks.0.0.weight") && h.has(P + "out.2.weight") &&
                    h.has(P + "time_embed.0.weight"),
                where,
                ": the UNet (model.diffusion_model.*) lacks input_blocks.0.0 / out.2 / "
                "time_embed.0; ",
                describe_found(h.file()));
  const int64_t c0 = h.dim(P + "input_blocks.0.0.weight", 0);
  const int64_t in_channels = h.dim(P + "input_blocks.0.0.weight", 1);

  // Walk input_blocks: resnets (in_layers) grouped into levels closed by downsamplers (op).
  std::vector<int64_t> channels, layers, depth;
  std::vector<bool> attn;
  std::vector<int64_t> heads_linear;
  bool linear_proj = false;
  int64_t cross_dim = 0;
  int64_t level_resnets = 0;
  for (int64_t i = 1;; ++i) {
    const std::string b = str_cat(P, "input_blocks.", i, ".");
    if (h.has(b + "0.in_layers.0.weight")) {
      if (level_resnets == 0) {  // first resnet of a level
        channels.push_back(h.dim(b + "0.out_layers.3.weight", 0));
        const bool a = h.has(b + "1.proj_in.weight");
        attn.push_back(a);
        depth.push_back(a ? h.count(b + "1.transformer_blocks.", ".norm1.weight") : 0);
        if (a) {
          linear_proj = h.shape(b + "1.proj_in.weight").size() == 2;
          cross_dim = h.dim(b + "1.transformer_blocks.0.attn2.to_k.weight", 1);
        }
      }
      ++level_resnets;
    } else if (h.has(b + "0.op.weight")) {
      STIPPLE_CHECK(level_resnets > 0, where, ": input_blocks.", i,
                    " downsamples a level with "
                    "no resnets");
      layers.push_back(level_resnets);
      level_resnets = 0;
    } else {
      break;
    }
  }
  STIPPLE_CHECK(level_resnets > 0, where, ": the UNet's input_blocks end with a downsampler");
  layers.push_back(level_resnets);
  const size_t n = channels.size();
  STIPPLE_CHECK(std::find(attn.begin(), attn.end(), true) != attn.end(), where,
                ": the UNet has no cross-attention blocks (input_blocks.*.1.proj_in); not "
                "a text-conditioned Stable Diffusion UNet");
  STIPPLE_CHECK(
      h.has(P + "middle_block.1.proj_in.weight") && h.has(P + "middle_block.2.in_layers.0.weight"),
      where, ": the UNet's middle_block is not resnet -> transformer -> resnet");

  nlohmann::json down = nlohmann::json::array(), up = nlohmann::json::array();
  nlohmann::json heads = nlohmann::json::array(), tl = nlohmann::json::array();
  bool heads_all_8 = true;
  for (size_t b = 0; b < n; ++b) {
    down.push_back(attn[b] ? "CrossAttnDownBlock2D" : "DownBlock2D");
    // Heads are not in the weights: SD 1.x uses 8 per block, SD 2.x 64-wide heads.
    int64_t hd = 8;
    if (linear_proj && channels[b] % 64 == 0) {
      hd = channels[b] / 64;
      heads_all_8 = false;
    }
    heads.push_back(hd);
    tl.push_back(std::max<int64_t>(depth[b], 1));
  }
  // The up blocks mirror the down ones; read their attention from output_blocks.
  int64_t ob = 0;
  for (size_t u = 0; u < n; ++u) {
    const bool a = h.has(str_cat(P, "output_blocks.", ob, ".1.proj_in.weight"));
    up.push_back(a ? "CrossAttnUpBlock2D" : "UpBlock2D");
    ob += layers[n - 1 - u] + 1;
  }
  const bool same_layers =
      std::all_of(layers.begin(), layers.end(), [&](int64_t v) { return v == layers[0]; });
  // Levels without attention take the mid block's depth: diffusers gives the mid block
  // transformer_layers_per_block[-1] (the SDXL refiner's last level has no attention).
  const int64_t mid_depth = h.count(P + "middle_block.1.transformer_blocks.", ".norm1.weight");
  for (size_t b = 0; b < n; ++b)
    if (!attn[b]) tl[b] = std::max<int64_t>(mid_depth, 1);
  const bool same_depth =
      std::all_of(tl.begin(), tl.end(), [&](const nlohmann::json& v) { return v == tl[0]; });

  nlohmann::json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["in_channels"] = in_channels;
  j["out_channels"] = h.dim(P + "out.2.weight", 0);
  j["block_out_channels"] = channels;
  j["down_block_types"] = down;
  j["up_block_types"] = up;
  j["mid_block_type"] = "UNetMidBlock2DCrossAttn";
  j["layers_per_block"] = same_layers ? nlohmann::json(layers[0]) : nlohmann::json(layers);
  j["attention_head_dim"] = heads_all_8 ? nlohmann::json(8) : heads;
  j["cross_attention_dim"] = cross_dim;
  j["use_linear_projection"] = linear_proj;
  j["upcast_attention"] = opt.upcast_attention;
  j["transformer_layers_per_block"] = same_depth ? tl[0] : tl;
  j["norm_num_groups"] = opt.norm_num_groups;
  // Informational: 768-pixel SD 2.x-v files use 96x96 latents, the others 64x64.
  j["sample_size"] =
      (sd2_like(linear_proj, cross_dim) && opt.prediction_type == "v_prediction") ? 96 : 64;
  const int64_t temb = h.dim(P + "time_embed.0.weight", 0);
  if (temb != 4 * c0) j["time_embedding_dim"] = temb;

  if (xl) {
    // label_emb.0.0 takes the pooled text (bigG's projection width) and 6 (base) or 5 (refiner)
    // sinusoids of the size/crop/score ids: their width follows when bigG is in the file.
    const int64_t in_dim = h.dim(P + "label_emb.0.0.weight", 1);
    int64_t per_id = opt.addition_time_embed_dim;
    const bool refiner = h.has(kXLRefinerBigGPrefix + "text_projection");
    const std::string proj = (refiner ? kXLRefinerBigGPrefix : kXLBigGPrefix) + "text_projection";
    if (h.has(proj) && h.shape(proj).size() == 2) {
      const int64_t ids = refiner ? 5 : 6, rest = in_dim - h.dim(proj, 1);
      if (rest > 0 && rest % ids == 0 && (rest / ids) % 2 == 0) per_id = rest / ids;
    }
    j["addition_embed_type"] = "text_time";
    j["addition_time_embed_dim"] = per_id;
    j["projection_class_embeddings_input_dim"] = in_dim;
    j["sample_size"] = 128;
    *family = h.has(kXLRefinerBigGPrefix + "token_embedding.weight") ? "SDXL refiner" : "SDXL";
    if (in_channels != 4) *family += str_cat(" (", in_channels, "-channel input)");
    return j;
  }
  const bool sd2 = sd2_like(linear_proj, cross_dim);
  *family = sd2 ? "SD 2.x" : "SD 1.x";
  if (in_channels == 9)
    *family += " inpainting";
  else if (in_channels != 4)
    *family += str_cat(" (", in_channels, "-channel input)");
  return j;
}

nlohmann::json detect_vae(const Header& h, const SingleFileOptions& opt, bool xl) {
  const std::string& V = kVAEPrefix;
  const std::string where = h.file().path();
  STIPPLE_CHECK(h.has(V + "encoder.conv_in.weight") && h.has(V + "decoder.conv_in.weight") &&
                    h.has(V + "decoder.conv_out.weight"),
                where,
                ": the VAE (first_stage_model.*) lacks encoder.conv_in / decoder.conv_in / "
                "decoder.conv_out; ",
                describe_found(h.file()));
  const int64_t levels = h.count(V + "encoder.down.", ".block.0.conv1.weight");
  STIPPLE_CHECK(levels > 0, where, ": the VAE has no encoder.down.0.block.0");
  const int64_t lpb = h.count(V + "encoder.down.0.block.", ".conv1.weight");
  std::vector<int64_t> channels;
  nlohmann::json down = nlohmann::json::array(), up = nlohmann::json::array();
  for (int64_t i = 0; i < levels; ++i) {
    channels.push_back(h.dim(str_cat(V, "encoder.down.", i, ".block.0.conv1.weight"), 0));
    down.push_back(h.has(str_cat(V, "encoder.down.", i, ".attn.0.q.weight"))
                       ? "AttnDownEncoderBlock2D"
                       : "DownEncoderBlock2D");
  }
  for (int64_t u = 0; u < levels; ++u) {
    up.push_back(h.has(str_cat(V, "decoder.up.", levels - 1 - u, ".attn.0.q.weight"))
                     ? "AttnUpDecoderBlock2D"
                     : "UpDecoderBlock2D");
  }
  nlohmann::json j;
  j["_class_name"] = "AutoencoderKL";
  j["in_channels"] = h.dim(V + "encoder.conv_in.weight", 1);
  j["out_channels"] = h.dim(V + "decoder.conv_out.weight", 0);
  j["block_out_channels"] = channels;
  j["down_block_types"] = down;
  j["up_block_types"] = up;
  j["layers_per_block"] = lpb;
  j["latent_channels"] = h.dim(V + "decoder.conv_in.weight", 1);
  j["norm_num_groups"] = opt.norm_num_groups;
  j["sample_size"] = 512;
  j["scaling_factor"] = xl ? 0.13025 : 0.18215;
  if (xl) j["force_upcast"] = true;
  j["use_quant_conv"] = h.has(V + "quant_conv.weight");
  j["use_post_quant_conv"] = h.has(V + "post_quant_conv.weight");
  j["mid_block_add_attention"] = h.has(V + "encoder.mid.attn_1.q.weight");
  return j;
}

// A text encoder under `clip` (transformers names) or `open_clip` (OpenCLIP names). SD 2.x drops
// OpenCLIP's last layer (`drop_last`); SDXL keeps every layer and bigG's projection.
nlohmann::json detect_text(const Header& h, const SingleFileOptions& opt, std::string* kind,
                           const std::string& clip, const std::string& open_clip, bool drop_last) {
  const std::string where = h.file().path();
  nlohmann::json j;
  j["architectures"] = {"CLIPTextModel"};
  j["model_type"] = "clip_text_model";
  int64_t hidden = 0;
  if (h.has(clip + "embeddings.token_embedding.weight")) {
    const std::string& T = clip;
    *kind = "CLIP";
    hidden = h.dim(T + "embeddings.token_embedding.weight", 1);
    j["vocab_size"] = h.dim(T + "embeddings.token_embedding.weight", 0);
    j["max_position_embeddings"] = h.dim(T + "embeddings.position_embedding.weight", 0);
    const int64_t layers = h.count(T + "encoder.layers.", ".layer_norm1.weight");
    STIPPLE_CHECK(layers > 0, where, ": the CLIP text encoder has no encoder.layers.0");
    j["num_hidden_layers"] = layers;
    j["intermediate_size"] = h.dim(T + "encoder.layers.0.mlp.fc1.weight", 0);
    j["hidden_act"] = "quick_gelu";
    j["projection_dim"] = 768;
  } else if (h.has(open_clip + "token_embedding.weight")) {
    const std::string& O = open_clip;
    *kind = "OpenCLIP";
    hidden = h.dim(O + "token_embedding.weight", 1);
    j["vocab_size"] = h.dim(O + "token_embedding.weight", 0);
    j["max_position_embeddings"] = h.dim(O + "positional_embedding", 0);
    const int64_t layers = h.count(O + "transformer.resblocks.", ".ln_1.weight");
    STIPPLE_CHECK(layers > 1, where, ": the OpenCLIP text encoder has ", layers,
                  " resblocks; SD uses the penultimate one, so at least 2 are needed");
    // SD 2.x: the penultimate layer, then ln_final; SDXL takes the penultimate layer's states
    // from the whole model.
    j["num_hidden_layers"] = drop_last ? layers - 1 : layers;
    j["intermediate_size"] = h.dim(O + "transformer.resblocks.0.mlp.c_fc.weight", 0);
    j["hidden_act"] = "gelu";
    j["projection_dim"] = 512;
    if (!drop_last) {
      STIPPLE_CHECK(h.has(O + "text_projection") && h.shape(O + "text_projection").size() == 2 &&
                        h.dim(O + "text_projection", 0) == hidden,
                    where, ": SDXL's OpenCLIP text encoder needs ", O, "text_projection [",
                    hidden, ", P] (its pooled embedding)");
      j["architectures"] = {"CLIPTextModelWithProjection"};
      j["projection_dim"] = h.dim(O + "text_projection", 1);
    }
  } else {
    throw Error(str_cat(where, ": the text encoder is neither a CLIP text model (", clip,
                        "*) nor an OpenCLIP one (", open_clip, "token_embedding); ",
                        describe_found(h.file())));
  }
  const int64_t heads =
      opt.text_num_heads > 0 ? opt.text_num_heads : std::max<int64_t>(hidden / 64, 1);
  STIPPLE_CHECK(hidden % heads == 0, where, ": text encoder width ", hidden,
                " is not a multiple of ", heads, " heads (set text_num_heads)");
  j["hidden_size"] = hidden;
  j["num_attention_heads"] = heads;
  j["layer_norm_eps"] = 1e-5;
  // The original openai/clip-vit-large-patch14 and SD 2.x text_encoder configs.
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 2;
  j["pad_token_id"] = 1;
  return j;
}

nlohmann::json sd_scheduler_json(const std::string& prediction_type) {
  nlohmann::json j;
  j["_class_name"] = "DDIMScheduler";
  j["num_train_timesteps"] = 1000;
  j["beta_start"] = 0.00085;
  j["beta_end"] = 0.012;
  j["beta_schedule"] = "scaled_linear";
  j["clip_sample"] = false;
  j["set_alpha_to_one"] = false;
  j["steps_offset"] = 1;
  j["timestep_spacing"] = "leading";
  j["prediction_type"] = prediction_type;
  return j;
}

}  // namespace stipple::io::single_file_detail

// Single-file Stable Diffusion checkpoints: the A1111/Civitai `.safetensors` files that hold a
// whole pipeline under the original CompVis (LDM) tensor names:
//   model.diffusion_model.*                       the UNet (input_blocks / middle_block / ...)
//   first_stage_model.*                           the VAE (encoder.down.i.block.j / mid.attn_1 ...)
//   cond_stage_model.transformer.text_model.*     SD 1.x: OpenAI CLIP ViT-L/14 (transformers names)
//   cond_stage_model.model.*                      SD 2.x: OpenCLIP ViT-H/14 (fused in_proj)
// and the SGM names of SDXL files:
//   conditioner.embedders.0.transformer.text_model.*  SDXL base: CLIP ViT-L/14 (text_encoder)
//   conditioner.embedders.1.model.*                   SDXL base: OpenCLIP ViT-bigG/14
//                                                     (text_encoder_2, with text_projection)
//   conditioner.embedders.0.model.*                   SDXL refiner: OpenCLIP ViT-bigG/14 only
//   model.diffusion_model.label_emb.0.0/0.2           SDXL's added size/text embedding
//
// One key table (single_file_key_table) maps CompVis names onto the diffusers module keys that
// models/ use, in both directions, as diffusers' convert_from_ckpt.py and stable-diffusion.cpp do.
// Configs are DETECTED from tensor names and shapes (never from the file name) and expressed as
// the diffusers config.json each model would have, then parsed by the models' own from_json:
//   UNet   levels and channels (resnet widths), layers_per_block, attention per level (proj_in
//          present), transformer depth, use_linear_projection (proj_in is 2-D: SD 2.x),
//          cross_attention_dim (attn2.to_k width: 768 SD 1.x, 1024 SD 2.x), in_channels (4, or 9
//          for inpainting), heads (8 per block with conv projections as SD 1.x; channels / 64
//          with linear projections as SD 2.x: [5, 10, 20, 20]).
//   VAE    levels, widths, layers_per_block, latent channels, attention blocks, quant convs.
//   CLIP   width, layers, MLP width, vocabulary, positions; heads = width / 64 (both CLIPs);
//          OpenCLIP (SD 2.x) drops its last layer, as SD 2.x uses the penultimate layer's output
//          (diffusers' converted text_encoder has 23 of the 24 layers) and acts with gelu.
//   SDXL   a UNet with label_emb is SDXL's (addition_embed_type "text_time"; the projection's
//          input width from label_emb.0.0); cross_attention_dim 2048 is the base, 1280 the
//          refiner. Both text encoders keep all their layers (SDXL takes the penultimate one's
//          states itself); bigG's text_projection is transposed into a Linear weight. The VAE
//          scales by 0.13025 and decodes in f32 (force_upcast).
// Not in the weights, hence options: GroupNorm groups (32 in every SD checkpoint), the prediction
// type (epsilon unless told; SD 2.x 768-v files need v_prediction), upcast_attention (SD 2.1-v),
// SDXL's channels per time id when the file has no bigG (else inferred; 256 in SDXL). `config_dir`
// takes every config from a diffusers folder of the same model instead (as diffusers'
// from_single_file(config=...)).
//
// Leaves out (errors that name what was found): the x4 upscaler and other class-conditioned
// UNets (label_emb without conditioner.*), LoRA files. PyTorch .ckpt files are read through
// io/torch_checkpoint.h (load_single_file takes either format).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"

namespace stipple::io {

// What cannot be read from the weights.
struct SingleFileOptions {
  std::string prediction_type = "epsilon";  // or "v_prediction" (SD 2.x 768-v), "sample"
  bool upcast_attention = false;            // SD 2.1-v sets it; no effect on f32 compute
  int64_t norm_num_groups = 32;             // UNet and VAE GroupNorm groups
  int64_t text_num_heads = 0;               // 0: hidden_size / 64 (every CLIP/OpenCLIP text tower)
  // SDXL: channels of each size/crop id's sinusoid when the file has no bigG to infer it from
  int64_t addition_time_embed_dim = 256;
  // A diffusers folder (unet/, vae/, text_encoder/, text_encoder_2/ config.json files) whose
  // configs replace detection; "" = detect everything from the weights.
  std::string config_dir;
};

enum class SingleFileComponent { kUNet, kVAE, kTextEncoder, kTextEncoder2 };
// "unet", "vae", "text_encoder", "text_encoder_2"
const char* component_name(SingleFileComponent c);

// One entry of the key table. `compvis` and `diffusers` are dotted module prefixes (a key maps
// when it starts with the prefix and a '.'); `kind` says how the rest of the key is renamed.
enum class KeyKind {
  kSame,        // the rest is kept (transformer blocks, CLIP subtrees, plain convs)
  kUNetResnet,  // in_layers.0 <-> norm1, in_layers.2 <-> conv1, emb_layers.1 <-> time_emb_proj,
                // out_layers.0 <-> norm2, out_layers.3 <-> conv2, skip_connection <-> conv_shortcut
  kVAEResnet,   // nin_shortcut <-> conv_shortcut, the rest kept
  kVAEAttention,  // norm <-> group_norm, q/k/v <-> to_q/to_k/to_v, proj_out <-> to_out.0;
                  // CompVis weights are 1x1 convs [C, C, 1, 1], diffusers' are Linear [C, C]
};
struct KeyRule {
  SingleFileComponent component;
  std::string compvis;    // full file prefix: "model.diffusion_model.input_blocks.1.0"
  std::string diffusers;  // module prefix inside the component: "down_blocks.0.resnets.0"
  KeyKind kind;
};

// The table for a UNet / VAE of the given configs (null: that part is left out) and a SD 1.x CLIP
// text encoder when `clip_text` (OpenCLIP's fused weights are converted by code, not by rules).
std::vector<KeyRule> single_file_key_table(const models::UNet2DConditionConfig* unet,
                                           const models::AutoencoderKLConfig* vae, bool clip_text);

// What detection found in a file's header (no tensor data is read).
struct SingleFileInfo {
  std::string path;
  // "SD 1.x", "SD 2.x", "SD 1.x inpainting", "SD 2.x inpainting", "SDXL", "SDXL refiner"
  std::string family;
  bool xl = false;  // SDXL's SGM layout (conditioner.embedders.*)
  bool has_unet = false, has_vae = false, has_text_encoder = false, has_text_encoder_2 = false;
  std::string text_encoder_kind;  // "CLIP" (SD 1.x, SDXL) or "OpenCLIP" (SD 2.x)
  // Detected configs, as diffusers config.json objects (also parsed into the structs below).
  nlohmann::json unet_json, vae_json, text_encoder_json, text_encoder_2_json, scheduler_json;
  models::UNet2DConditionConfig unet_config;
  models::AutoencoderKLConfig vae_config;
  models::CLIPTextConfig text_config, text_config_2;
  std::string prediction_type;
  // Tensors and parameters per component ("unet", "vae", "text_encoder", "other": EMA copies,
  // schedule buffers and other tensors outside the three models, which loading ignores).
  std::map<std::string, int64_t> num_tensors, num_params;
  std::map<std::string, std::map<std::string, int64_t>> dtypes;  // component -> dtype -> tensors
};

// Detects the family and configs from `file`'s names and shapes. Throws a stipple::Error naming
// what was found when the file is not a SD 1.x/2.x single-file checkpoint (or lacks a UNet).
SingleFileInfo inspect_single_file(const SafetensorsFile& file,
                                   const SingleFileOptions& options = {});

// True when the names look like a CompVis single-file checkpoint (any component prefix present).
bool looks_like_single_file(const SafetensorsFile& file);

// The tensors of one component under diffusers names (views of the mapping where possible).
// Throws naming every CompVis key that the table does not map.
std::map<std::string, Tensor> convert_single_file_component(const SafetensorsFile& file,
                                                            const SingleFileInfo& info,
                                                            SingleFileComponent component);

// The inverse: diffusers-named tensors of a component -> CompVis names (for writing single
// files and for tests). `unet`/`vae`/`text` configs select the table; text encoders are written
// as SD 1.x CLIP (cond_stage_model.transformer.text_model.*).
std::map<std::string, Tensor> to_single_file_names(SingleFileComponent component,
                                                   const std::map<std::string, Tensor>& state,
                                                   const models::UNet2DConditionConfig* unet,
                                                   const models::AutoencoderKLConfig* vae);

// The models of a single-file checkpoint, loaded strictly (every name and shape checked).
struct SingleFileModels {
  SingleFileInfo info;
  std::shared_ptr<models::UNet2DConditionModel> unet;
  std::shared_ptr<models::AutoencoderKL> vae;
  std::shared_ptr<models::CLIPTextModel> text_encoder;    // null for an SDXL refiner
  std::shared_ptr<models::CLIPTextModel> text_encoder_2;  // SDXL's OpenCLIP bigG
};

// Loads the components asked for (each must be in the file; the error names what was found).
// `text_encoder` covers both of SDXL's encoders.
SingleFileModels load_single_file(const std::string& path, const SingleFileOptions& options = {},
                                  bool unet = true, bool vae = true, bool text_encoder = true);

}  // namespace stipple::io

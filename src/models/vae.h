// AutoencoderKL: the VAE of Stable Diffusion (and DiT, SDXL, ...), as diffusers builds it
// (diffusers/models/autoencoders/autoencoder_kl.py and vae.py), so diffusers `vae/` folders load
// by name: config.json -> AutoencoderKLConfig, diffusion_pytorch_model.safetensors ->
// load_state_dict with every name and shape checked.
//
//   encode: image [B, 3, H, W] -> Encoder (conv_in -> down_blocks -> mid_block -> conv_norm_out
//           -> SiLU -> conv_out: 2*latent channels) -> quant_conv -> (mean, logvar) chunks,
//           logvar clamped to [-30, 20], std = exp(logvar / 2)            [B, latent, H/f, W/f]
//   decode: z -> post_quant_conv -> Decoder (conv_in -> mid_block -> up_blocks -> conv_norm_out
//           -> SiLU -> conv_out)                                           [B, 3, H, W]
// with f = 2^(levels - 1). scaling_factor / shift_factor are read from the config but not
// applied here: pipelines multiply and divide by them (as diffusers' pipelines do).
//
// Both attention key spellings load: the current one (to_q/to_k/to_v/to_out.0) and the old one
// (query/key/value/proj_attn, also as 1x1-conv weights), see nn::convert_legacy_attention_keys.
//
// Leaves out (rejected by from_json with the key and value named): block types other than
// DownEncoderBlock2D / AttnDownEncoderBlock2D / UpDecoderBlock2D / AttnUpDecoderBlock2D, and
// the Decoder's norm_type "spatial" (MoVQ). Also leaves out tiled encode and sliced
// encode/decode, posterior sampling (callers draw noise: sample = mean + std * noise) and the KL
// loss. Tiled decode (decode_tiled) is diffusers' enable_tiling() algorithm.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/json.h"
#include "nn/attention.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "nn/resnet.h"

namespace stipple::models {

// Called with a module path ("encoder.conv_in", "encoder.down_blocks.0", "quant_conv", ...) and
// that module's output, for tests and debugging.
using IntermediateHook = std::function<void(const std::string& path, const Tensor& value)>;

struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;  // resnets per encoder block; decoder blocks have one more
  std::string act_fn = "silu";   // the resnets' activation (conv_act before conv_out is SiLU)
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;  // informational (default image size)
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;             // SD3/Flux VAEs; null in SD1/2/XL
  std::vector<double> latents_mean, latents_std;  // per channel; empty when null
  bool force_upcast = true;  // diffusers runs such VAEs in f32; stipple always does
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Reads a diffusers AutoencoderKL config; missing keys take diffusers' defaults; errors name
  // the file and the key.
  static AutoencoderKLConfig from_json(const io::JsonConfig& j);
  static AutoencoderKLConfig from_file(const std::string& path);
  // The diffusers config.json (every key from_json reads, with "_class_name").
  nlohmann::json to_json() const;
  // Consistency (list lengths, block types, group divisibility); from_json calls it.
  void validate(const std::string& where = "AutoencoderKLConfig") const;

  int64_t downscale_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

// diffusers' UNetMidBlock2D as the VAE uses it (no time embedding): resnets.0, then for each
// layer attentions.i (single head over all channels, group norm, residual) and resnets.i+1.
class UNetMidBlock2D : public nn::Module {
 public:
  UNetMidBlock2D(int64_t channels, int64_t groups, float eps, const std::string& act_fn,
                 bool add_attention, int64_t num_layers = 1);
  std::string type_name() const override { return "UNetMidBlock2D"; }
  Tensor forward(const Tensor& x) const;  // [B, C, H, W] -> same

 private:
  std::vector<std::shared_ptr<nn::ResnetBlock2D>> resnets_;
  std::vector<std::shared_ptr<nn::Attention>> attentions_;  // empty without add_attention
};

// DownEncoderBlock2D / AttnDownEncoderBlock2D (resnets, optional attentions, downsamplers.0)
// and UpDecoderBlock2D / AttnUpDecoderBlock2D (resnets, optional attentions, upsamplers.0).
class VAEBlock2D : public nn::Module {
 public:
  VAEBlock2D(const std::string& block_type, int64_t in_channels, int64_t out_channels,
             int64_t num_layers, int64_t groups, float eps, const std::string& act_fn,
             bool add_resample);
  std::string type_name() const override { return block_type_; }
  Tensor forward(const Tensor& x) const;  // [B, in, H, W] -> [B, out, H/2|H|2H, ...]

 private:
  std::string block_type_;
  std::vector<std::shared_ptr<nn::ResnetBlock2D>> resnets_;
  std::vector<std::shared_ptr<nn::Attention>> attentions_;
  std::shared_ptr<nn::Downsample2D> downsampler_;
  std::shared_ptr<nn::Upsample2D> upsampler_;
};

// diffusers' vae.Encoder (double_z: conv_out gives 2 * latent_channels).
class Encoder : public nn::Module {
 public:
  explicit Encoder(const AutoencoderKLConfig& config);
  std::string type_name() const override { return "Encoder"; }
  // [B, in_channels, H, W] -> [B, 2*latent, H/f, W/f]; hook paths are prefixed with `prefix`.
  Tensor forward(const Tensor& x, const IntermediateHook& hook = nullptr,
                 const std::string& prefix = "encoder.") const;

 private:
  std::shared_ptr<nn::Conv2d> conv_in_, conv_out_;
  std::vector<std::shared_ptr<VAEBlock2D>> down_blocks_;
  std::shared_ptr<UNetMidBlock2D> mid_block_;
  std::shared_ptr<nn::GroupNorm> conv_norm_out_;
};

// diffusers' vae.Decoder (norm_type "group").
class Decoder : public nn::Module {
 public:
  explicit Decoder(const AutoencoderKLConfig& config);
  std::string type_name() const override { return "Decoder"; }
  // [B, latent, h, w] -> [B, out_channels, h*f, w*f].
  Tensor forward(const Tensor& z, const IntermediateHook& hook = nullptr,
                 const std::string& prefix = "decoder.") const;

 private:
  std::shared_ptr<nn::Conv2d> conv_in_, conv_out_;
  std::shared_ptr<UNetMidBlock2D> mid_block_;
  std::vector<std::shared_ptr<VAEBlock2D>> up_blocks_;
  std::shared_ptr<nn::GroupNorm> conv_norm_out_;
};

// The posterior q(z | x): diffusers' DiagonalGaussianDistribution, after quant_conv.
struct DiagonalGaussian {
  Tensor mean;    // [B, latent, h, w]
  Tensor logvar;  // clamped to [-30, 20]
  Tensor std;     // exp(0.5 * logvar)
  // mean + std * noise (noise ~ N(0, 1), [B, latent, h, w], drawn by the caller).
  Tensor sample(const Tensor& noise) const;
};

class AutoencoderKL : public nn::Module {
 public:
  explicit AutoencoderKL(const AutoencoderKLConfig& config);
  std::string type_name() const override { return "AutoencoderKL"; }

  // Reads `folder`/config.json and `folder`/diffusion_pytorch_model.safetensors (a pipeline
  // folder with vae/ works too; f32, f16 or bf16 weights, computed in f32) with a strict load:
  // every missing or unexpected tensor and every shape mismatch is named in one stipple::Error.
  // Old attention key names are converted first.
  static std::shared_ptr<AutoencoderKL> from_pretrained(const std::string& folder);
  // The same strict load from tensors already in memory (legacy names converted); `source`
  // names them in errors.
  void load_checkpoint(std::map<std::string, Tensor> state, const std::string& source = "");

  // image [B, in_channels, H, W] in [-1, 1] -> posterior [B, latent, h, w]; H and W that are
  // multiples of downscale_factor() give h = H / f (other sizes round as diffusers does).
  DiagonalGaussian encode(const Tensor& image, const IntermediateHook& hook = nullptr) const;
  // z [B, latent_channels, h, w] (already divided by scaling_factor) -> [B, out, h*f, w*f],
  // plain layout.
  Tensor decode(const Tensor& z, const IntermediateHook& hook = nullptr) const;
  // The same in overlapping tiles, as diffusers' tiled_decode: latent tiles of `tile` x `tile`
  // every tile * (1 - overlap) latents, each decoded alone (the peak memory is one tile's), the
  // seams blended linearly over tile * f * overlap pixels (from the tile above, then the one to
  // the left), each tile cropped to its stride. A latent no larger than one tile decodes whole.
  // On a device the tiles decode there and come back to the CPU for blending (the result is on
  // the CPU).
  Tensor decode_tiled(const Tensor& z, int64_t tile = 64, double overlap = 0.25) const;

  const AutoencoderKLConfig& config() const { return config_; }

 private:
  AutoencoderKLConfig config_;
  std::shared_ptr<Encoder> encoder_;
  std::shared_ptr<Decoder> decoder_;
  std::shared_ptr<nn::Conv2d> quant_conv_, post_quant_conv_;  // null when disabled
};

}  // namespace stipple::models

// UNet2DConditionModel: the text-conditioned denoiser of Stable Diffusion 1.x and 2.x, as
// diffusers builds it (diffusers/models/unets/unet_2d_condition.py), so diffusers `unet/` folders
// load by name: config.json -> UNet2DConditionConfig, diffusion_pytorch_model.safetensors ->
// load_state_dict with every name and shape checked.
//
//   sample [B, Cin, H, W], timestep (0-d or [B]), encoder_hidden_states [B, T, D]
//   -> time_proj (sinusoidal) -> time_embedding (MLP)                         temb [B, 4*C0]
//   -> conv_in -> down_blocks (skips pushed) -> mid_block -> up_blocks (skips popped)
//   -> conv_norm_out -> SiLU -> conv_out                                      [B, Cout, H, W]
//
// Config fields follow diffusers' meaning, including its naming quirk: `attention_head_dim` is
// the number of heads when `num_attention_heads` is null (every SD 1.x/2.x config). Per-block
// lists apply to the down blocks and are reversed for the up blocks; the mid block takes the last
// entry.
//
// SDXL's added conditioning (addition_embed_type "text_time"): the size/crop/aesthetic ints
// (time_ids [B, k]) each through a sinusoid of addition_time_embed_dim channels (add_time_proj),
// flattened and concatenated after the pooled text embedding (text_embeds [B, P]), then
// add_embedding (Linear -> SiLU -> Linear, projection_class_embeddings_input_dim -> temb) added
// to the time embedding.
//
// Leaves out (rejected by from_json with the key and value named): class_embed_type other than
// null, addition_embed_type other than "text_time", encoder_hid_proj, time_cond_proj_dim (LCM),
// fourier time embeddings, dual cross-attention, attention_type other than "default", block types
// other than CrossAttnDownBlock2D / DownBlock2D / UNetMidBlock2DCrossAttn / CrossAttnUpBlock2D /
// UpBlock2D, and activations other than SiLU. Also leaves out attention masks, ControlNet residual
// inputs, GLIGEN and LoRA scales. `upcast_attention` is accepted and has no effect: stipple
// computes attention in f32 already. `dropout` is ignored (inference).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/json.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple::nn {
class Timesteps;
class TimestepEmbedding;
}  // namespace stipple::nn

namespace stipple::models {

class UNetDownBlock;
class UNetMidBlock2DCrossAttn;
class UNetUpBlock;

struct UNet2DConditionConfig {
  int64_t sample_size = 0;  // 0 when the config has none; informational (default image size)
  int64_t in_channels = 4;  // 9 for inpainting checkpoints
  int64_t out_channels = 4;
  bool center_input_sample = false;  // sample = 2 * sample - 1 first
  bool flip_sin_to_cos = true;       // time_proj gives [cos, sin]
  double freq_shift = 0;             // downscale_freq_shift of time_proj
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // "" when null (no mid block)
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  // Per down block (resolved from int-or-list fields; the up blocks use them reversed).
  std::vector<int64_t> layers_per_block;     // resnets per down block; up blocks have one more
  std::vector<int64_t> num_attention_heads;  // heads; head_dim = channels / heads
  std::vector<int64_t> cross_attention_dim;  // context width D
  std::vector<bool> only_cross_attention;    // attn1 attends to the context too
  // Transformer blocks per (block, layer): [down block][layer] and [up block][layer].
  std::vector<std::vector<int64_t>> transformer_layers_per_block;
  std::vector<std::vector<int64_t>> reverse_transformer_layers_per_block;
  bool use_linear_projection = false;  // proj_in/proj_out Linear (SD 2.x) instead of 1x1 Conv
  bool upcast_attention = false;       // no effect in f32 (see the header comment)
  int64_t norm_num_groups = 32;        // GroupNorm groups of every resnet and conv_norm_out
  float norm_eps = 1e-5f;
  std::string act_fn = "silu";
  std::string resnet_time_scale_shift = "default";  // or "scale_shift"
  int64_t time_embedding_dim = 0;                   // 0: 4 * block_out_channels[0]
  std::string time_embedding_act_fn;                // "" (null) or "silu"
  int64_t num_class_embeds = 0;  // > 0: class_embedding table added to temb (SD x4 upscaler)
  // "text_time" (SDXL) or "" (null): see the header comment.
  std::string addition_embed_type;
  int64_t addition_time_embed_dim = 0;               // channels per time id (256 in SDXL)
  int64_t projection_class_embeddings_input_dim = 0;  // P + k * addition_time_embed_dim
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;
  int64_t downsample_padding = 1;
  float mid_block_scale_factor = 1.0f;

  // Reads a diffusers UNet2DConditionModel config; missing keys take diffusers' defaults.
  static UNet2DConditionConfig from_json(const io::JsonConfig& j);
  static UNet2DConditionConfig from_file(const std::string& path);
  // Consistency of the resolved fields (list lengths, divisibility); from_json calls it.
  void validate(const std::string& where = "UNet2DConditionConfig") const;

  int64_t time_embed_dim() const {
    return time_embedding_dim > 0 ? time_embedding_dim : 4 * block_out_channels.at(0);
  }
};

// Called with a module path ("time_proj", "down_blocks.0", "mid_block", "conv_out", ...) and
// that module's output, for tests and debugging. The value may be channel-blocked (see
// core/tensor.h): call contiguous() or to_vector() to read it.
using IntermediateHook = std::function<void(const std::string& path, const Tensor& value)>;

// SDXL's added conditioning (diffusers' added_cond_kwargs): the pooled text embedding and the
// size/crop (base) or size/crop/aesthetic-score (refiner) ids, one row per batch entry.
struct AddedConditions {
  Tensor text_embeds;  // [B, P]
  Tensor time_ids;     // [B, k], floating
  bool defined() const { return text_embeds.defined() || time_ids.defined(); }
};

class UNet2DConditionModel : public nn::Module {
 public:
  explicit UNet2DConditionModel(const UNet2DConditionConfig& config);
  std::string type_name() const override { return "UNet2DConditionModel"; }

  // Reads `folder`/config.json and `folder`/diffusion_pytorch_model.safetensors (f32, f16 or
  // bf16 weights; computed in f32) with a strict load: every missing or unexpected tensor and
  // every shape mismatch is named in one stipple::Error.
  static std::shared_ptr<UNet2DConditionModel> from_pretrained(const std::string& folder);

  // sample [B, in_channels, H, W]; timestep 0-d, [1] or [B] (i64 or floating, fractional
  // allowed); encoder_hidden_states [B, T, cross_attention_dim]; class_labels i64 [B] only when
  // num_class_embeds > 0; `added` only (and always) with addition_embed_type "text_time".
  // Returns [B, out_channels, H, W], plain (not channel-blocked). H and W need not be multiples
  // of 2^(levels-1): the upsamplers then follow the skip sizes.
  Tensor forward(const Tensor& sample, const Tensor& timestep, const Tensor& encoder_hidden_states,
                 const Tensor& class_labels = Tensor(), const IntermediateHook& hook = nullptr,
                 const AddedConditions& added = {}) const;

  const UNet2DConditionConfig& config() const { return config_; }

 private:
  // add_embedding(concat(text_embeds, add_time_proj(time_ids) flattened)) [B, temb].
  Tensor added_embedding(const AddedConditions& added, int64_t batch) const;

  UNet2DConditionConfig config_;
  std::shared_ptr<nn::Conv2d> conv_in_;
  std::shared_ptr<nn::Timesteps> time_proj_;
  std::shared_ptr<nn::TimestepEmbedding> time_embedding_;
  std::shared_ptr<nn::Embedding> class_embedding_;
  std::shared_ptr<nn::Timesteps> add_time_proj_;             // text_time only
  std::shared_ptr<nn::TimestepEmbedding> add_embedding_;     // text_time only
  std::vector<std::shared_ptr<UNetDownBlock>> down_blocks_;
  std::shared_ptr<UNetMidBlock2DCrossAttn> mid_block_;
  std::vector<std::shared_ptr<UNetUpBlock>> up_blocks_;
  std::shared_ptr<nn::GroupNorm> conv_norm_out_;
  std::shared_ptr<nn::Conv2d> conv_out_;
};

}  // namespace stipple::models

// LoRA (Hu et al. 2021) files as people download them, matched to a pipeline's modules and merged
// into their weights: W' = W + weight * (alpha / rank) * (up @ down), with alpha = rank when the
// file has none. Convolutions (LoCon) compose up [out, r, 1, 1] with down [r, in, kh, kw] into a
// [out, in, kh, kw] delta; 1x1 convolutions and Linear layers take either shape.
//
// Formats (key names; `M` is a module path):
//   kohya / A1111    lora_unet_<M with '_'>.lora_down.weight / .lora_up.weight / .alpha, and
//                    lora_te_ (SD), lora_te1_ / lora_te2_ (SDXL) for the text encoders. UNet names
//                    are diffusers' module paths (SD 1.x/2.x) or the original SGM/CompVis ones
//                    (input_blocks_4_1_..., SDXL), both matched through the model's own modules.
//   diffusers / PEFT unet.<M>.lora_A.weight / lora_B.weight (text_encoder., text_encoder_2.)
//   older diffusers  unet.<M>.lora.down.weight / lora.up.weight, and the attention-processor
//                    form unet.<...>.processor.to_q_lora.down.weight (to_out_lora = to_out.0;
//                    text encoders: to_q_lora = q_proj, to_out_lora = out_proj)
// Every key must match a module of the pipeline: the ones that do not are named in the error,
// as are keys of other adapter kinds (LoHa, LoKr, DoRA's magnitude), which stipple does not read.
//
// Why merged: stipple holds weights in f32 (the loaders widen f16/bf16), so merging once is exact
// to float rounding and costs nothing per step. The pipeline keeps the touched weights' originals
// and restores them before another set of LoRAs is merged, so switching never accumulates error.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "models/unet2d_condition.h"
#include "nn/module.h"

namespace stipple::models {

// The modules a LoRA may change, by component name ("unet", "text_encoder", "text_encoder_2").
struct LoraTargets {
  std::map<std::string, const nn::Module*> components;
  const UNet2DConditionConfig* unet_config = nullptr;  // for SGM/CompVis UNet names
};

struct LoraLayer {
  std::string component;  // "unet"
  std::string module;     // "down_blocks.0.attentions.0.proj_in"
  std::string key;        // the file's name for it
  Tensor down, up;        // [r, in(, kh, kw)], [out, r(, 1, 1)]
  double alpha = 0;       // alpha / rank scales the product
};

struct Lora {
  std::string path;
  std::string format;  // "kohya", "peft", "diffusers"
  std::vector<LoraLayer> layers;
};

// Reads `file` (safetensors or a PyTorch checkpoint, already opened) and matches every key to a
// module of `targets`; throws stipple::Error naming the keys that match nothing.
Lora read_lora(const io::SafetensorsFile& file, const LoraTargets& targets);

// W + weight * (alpha / rank) * delta for one layer, in W's dtype; throws when the shapes do not
// fit the module's weight.
Tensor merge_lora_layer(const Tensor& w, const LoraLayer& layer, double weight);

// One LoRA to apply: a file and its weight (A1111's <lora:NAME:WEIGHT>, --lora FILE:WEIGHT).
struct LoraSpec {
  std::string path;
  double weight = 1.0;
  bool operator==(const LoraSpec& o) const { return path == o.path && weight == o.weight; }
};

// Parses FILE[:WEIGHT] (the weight after the last ':' when it is a number).
LoraSpec parse_lora_spec(const std::string& text);

}  // namespace stipple::models

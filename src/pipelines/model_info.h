// Model detection for `stipple info` and loaders: given a path (a diffusers pipeline folder, one
// component folder, a DiT folder or a single-file .safetensors checkpoint), say what it is.
//
// The family (SD 1.x / SD 2.x / SD ... inpainting / DiT / unknown) is read from tensor names and
// shapes, never from file names: a UNet whose transformers project with Linear layers or
// cross-attend to 1024-wide context is SD 2.x, other cross-attention UNets are SD 1.x, 9 input
// channels make it an inpainting model; a transformer with patch embedding and adaLN-Zero blocks
// is a DiT. Components are listed with parameter counts and dtypes from the safetensors headers
// (no tensor data is read), and config highlights (channels, heads, cross-attention width,
// prediction type, scheduler class) from config.json or, for single files, from detection.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "io/single_file.h"

namespace stipple::pipelines {

struct ComponentInfo {
  std::string name;        // "unet", "vae", "text_encoder", "transformer", "tokenizer", ...
  std::string class_name;  // "UNet2DConditionModel", "CLIPTextModel", ...
  std::string source;      // the weights file (or folder) it was read from
  int64_t num_tensors = 0;
  int64_t num_params = 0;
  std::map<std::string, int64_t> dtypes;  // safetensors dtype -> number of tensors
  std::vector<std::pair<std::string, std::string>> highlights;  // key -> value text
};

struct ModelInfo {
  std::string path;
  std::string format;           // "diffusers pipeline folder", "diffusers component folder",
                                // "single-file checkpoint (CompVis names)"
  std::string family;           // "SD 1.x", "SD 2.x", "SD 1.x inpainting", "DiT", "unknown"
  std::string evidence;         // what the family was read from
  std::string prediction_type;  // "" when unknown
  std::string scheduler_class;  // "" when none
  std::vector<ComponentInfo> components;
  std::vector<std::string> notes;
};

// True for a directory or a .safetensors file (what inspect_model reads); PNGs are not models.
bool is_model_path(const std::string& path);

// Inspects `path`; throws stipple::Error naming the problem (missing file, corrupt header, a
// folder without config.json or model_index.json). `options` apply to single files.
ModelInfo inspect_model(const std::string& path, const io::SingleFileOptions& options = {});

// A human-readable report, several lines.
std::string format_model_info(const ModelInfo& info);

}  // namespace stipple::pipelines

// The one way every model finds its files in a diffusers/transformers component folder
// (unet/, vae/, text_encoder/, transformer/, image_encoder/): config.json and the weights, which
// are `<stem>.safetensors` or diffusers' fp16 variant `<stem>.fp16.safetensors`. Errors name the
// folder, what was looked for, and what to do (a PyTorch .bin must be converted; a sharded
// checkpoint is named as such).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stipple::io {
class SafetensorsFile;
}

namespace stipple::models {

struct ComponentFiles {
  std::string dir;      // the component folder
  std::string config;   // its config.json
  std::string weights;  // the safetensors file to load; "" when there is none
  std::string missing;  // why there is none: the error weights_file() raises
  // The weights file, or a kNotFound error naming what was looked for. Called after the config
  // is parsed, so a bad config is reported before missing weights.
  const std::string& weights_file() const;
};

// `what` names the model in errors ("UNet2DConditionModel"); `stem` is the weights' base name
// ("diffusion_pytorch_model" for diffusers models, "model" for transformers ones); `subfolder`
// (e.g. "unet") is also looked for under `folder`, so a pipeline folder is accepted. Throws when
// the folder or its config.json is missing.
ComponentFiles find_component(const std::string& folder, const std::string& what,
                              const std::string& stem, const std::string& subfolder = "");

// Before a model is built from a config, checks that the weights' tensor `name` starts with the
// dims `expected` (e.g. conv_in.weight: [block_out_channels[0], in_channels]) that the config
// implies; `fields` names those config fields. So a config.json that does not describe its
// weights (`{}` would build a full SD 1.5 UNet) fails at once, naming the fields, instead of after
// allocating the whole model. Absent tensors are left to the loader's key check.
void check_config_matches(const io::SafetensorsFile& weights, const std::string& config_path,
                          const std::string& name, const std::vector<int64_t>& expected,
                          const std::string& fields);

}  // namespace stipple::models

// `stipple export MODEL --out DIR [--dtype f16]`: a diffusers model folder (a training run's
// checkpoint-<step>/ or latest/, or any pipeline folder) rewritten as a folder to ship: its
// model_index.json and each component's JSON configs copied, each component's .safetensors with
// floating tensors converted to the asked dtype, training state left out. Every file is written
// atomically; other files already in DIR (a README) are kept.
//
// `stipple convert IN --out OUT [--dtype keep|f16|bf16|f32]`: any weights stipple reads, as
// safetensors. A file (.safetensors, or a PyTorch .ckpt/.pt/.pth/.bin read without running its
// pickle) becomes one .safetensors file with the same tensor names; a diffusers folder is
// exported as above with its PyTorch .bin weights rewritten as .safetensors. An existing OUT is
// replaced only with --overwrite.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace stipple::cli {

class ExportCommand {
 public:
  explicit ExportCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  std::string model_;
  std::string out_;
  std::string dtype_ = "f16";
  bool quiet_ = false;
};

class ConvertCommand {
 public:
  explicit ConvertCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  std::string in_;
  std::string out_;
  std::string dtype_ = "keep";
  bool overwrite_ = false;
  bool quiet_ = false;
};

}  // namespace stipple::cli

// `stipple export MODEL --out DIR [--dtype f16]`: a diffusers model folder (a training run's
// checkpoint-<step>/ or latest/, or any pipeline folder) rewritten as a folder to ship: its
// model_index.json and each component's JSON configs copied, each component's .safetensors with
// floating tensors converted to the asked dtype, training state left out. Every file is written
// atomically; other files already in DIR (a README) are kept.
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

}  // namespace stipple::cli

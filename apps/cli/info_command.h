// `stipple info PATH`: for a PNG, its size and generation parameters; for a model (a diffusers
// folder, a DiT folder or a single-file .safetensors), the detected family, components, parameter
// counts, dtypes and config highlights (pipelines/model_info). Parsing and formatting only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace stipple::cli {

class InfoCommand {
 public:
  explicit InfoCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  std::string path_;
  std::string prediction_type_ = "epsilon";
};

}  // namespace stipple::cli

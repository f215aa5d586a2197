// --device for the commands that run models: "cpu" (default) or "cuda" (and "emulated", the test
// device of core/storage.h). Parsed by parse_device when the command runs, so that a build
// without CUDA or a machine without a GPU is an error that says which.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace stipple::cli {

inline void add_device_option(CLI::App* cmd, std::string& device, const std::string& what) {
  cmd->add_option("--device", device, "where " + what + " runs: cpu or cuda (one GPU)")
      ->capture_default_str();
}

}  // namespace stipple::cli

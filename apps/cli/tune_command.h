// `stipple tune` (train/tune.h): fine-tune a trained class-conditional generator on a scorer's
// judgement of its own samples (online Diffusion-DPO, anchored to the starting model). Parsing
// and formatting only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "train/tune.h"

namespace stipple::cli {

class TuneCommand {
 public:
  explicit TuneCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  train::TuneConfig config_;
  std::vector<std::string> classes_;  // names or ids
  bool resume_ = false;
  bool quiet_ = false;
};

}  // namespace stipple::cli

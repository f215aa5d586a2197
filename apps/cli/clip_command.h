// `stipple train-clip`: train the emoji CLIP (train/train_clip.h), resumable, and report
// image -> caption retrieval. Parsing and formatting only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "train/train_clip.h"

namespace stipple::cli {

class ClipCommand {
 public:
  explicit ClipCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  train::ClipTrainConfig config_;
  bool resume_ = false;
  bool quiet_ = false;
};

}  // namespace stipple::cli

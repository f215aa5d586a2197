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
  int train(class TrainingJob& job);
  CLI::App* cmd_;
  train::ClipTrainConfig config_;
  bool resume_ = false;
  bool quiet_ = false;
  double dist_timeout_ = 1800;
};

}  // namespace stipple::cli

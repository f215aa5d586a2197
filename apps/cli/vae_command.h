// `stipple train-vae`: train the emoji AutoencoderKL (train/train_vae.h), resumable, and report
// PSNR/SSIM on the held-out images. Parsing and formatting only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "train/train_vae.h"

namespace stipple::cli {

class VaeCommand {
 public:
  explicit VaeCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  int train(class TrainingJob& job);
  CLI::App* cmd_;
  train::VaeTrainConfig config_;
  bool resume_ = false;
  bool quiet_ = false;
  double dist_timeout_ = 1800;
};

}  // namespace stipple::cli

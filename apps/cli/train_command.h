// `stipple train`: train a class-conditional DiT from scratch (Fashion-MNIST), with a progress
// bar, checkpoints that resume exactly (--resume), and Ctrl-C that stops with a checkpoint.
// Parsing and formatting only; the work is train::train_dit.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "train/trainer.h"

namespace stipple::cli {

class TrainCommand {
 public:
  explicit TrainCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  // The checkpoint's config with the flags given on the command line: those that fix the model or
  // the data order must agree with it; the others replace its values.
  train::TrainConfig resume_config() const;
  // --init-from: the model-shape flags not given take the folder's transformer/config.json.
  void adopt_init_shape();
  int train(train::Communicator& comm, const train::TrainConfig& config, Device device);

  CLI::App* cmd_;
  train::TrainConfig config_;  // the defaults and the flags
  std::string resume_;
  bool quiet_ = false;
  bool no_pad_ = false;
  double dist_timeout_ = 1800;
  std::string device_ = "cpu";
};

}  // namespace stipple::cli

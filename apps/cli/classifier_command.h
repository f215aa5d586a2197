// `stipple train-classifier`: train the small Fashion-MNIST CNN that `stipple eval` uses as its
// judge (models/fashion_classifier.h), report its test accuracy, and write OUT/config.json and
// OUT/model.safetensors. Parsing and formatting only; the work is train::train_classifier.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "train/train_classifier.h"

namespace stipple::cli {

class ClassifierCommand {
 public:
  explicit ClassifierCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  int train(train::Communicator& comm);
  CLI::App* cmd_;
  train::ClassifierTrainConfig config_;
  bool quiet_ = false;
  double dist_timeout_ = 1800;
};

}  // namespace stipple::cli

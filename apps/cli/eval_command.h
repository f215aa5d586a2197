// `stipple eval`: score a class-conditional generator with the Fashion-MNIST classifier: CAS and
// FID_feat next to their real-data floors, as a table, a JSON file and a sample grid. Parsing and
// formatting only; the work is train::evaluate.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "train/evaluate.h"
#include "train/evaluate_t2i.h"

namespace stipple::cli {

class EvalCommand {
 public:
  explicit EvalCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  train::EvalConfig config_;
  train::T2IEvalConfig t2i_;
  int run_text_to_image();
  std::string model_, classifier_ = "models/fashion-mnist-classifier";
  std::string data_dir_ = "/usr/share/datasets/fashion-mnist";
  std::string json_, grid_;
  int grid_columns_ = 10;
  std::string device_ = "cpu";
  std::vector<double> guidance_interval_;  // --guidance-interval LO HI
  std::string guide_model_;                // --guide-model DIR or none
  bool quiet_ = false;
};

}  // namespace stipple::cli

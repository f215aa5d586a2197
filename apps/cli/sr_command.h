// `stipple train-sr` (train/train_sr.h: an SR3 super-resolution UNet, resumable, scored against
// bicubic on held-out images) and `stipple upscale` (pipelines/upscale.h: a PNG through such a
// model). Parsing and formatting only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "pipelines/upscale.h"
#include "stipple/stipple.h"
#include "train/train_sr.h"

namespace stipple::cli {

class SrTrainCommand {
 public:
  explicit SrTrainCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  train::SrTrainConfig config_;
  bool resume_ = false;
  bool quiet_ = false;
};

class UpscaleCommand {
 public:
  explicit UpscaleCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  int evaluate(const pipelines::SuperResolutionPipeline& model);
  int run_x4();  // Stable Diffusion's x4 upscaler (a StableDiffusionUpscalePipeline folder)
  CLI::App* cmd_;
  std::string model_, image_, out_, sampler_, classifier_, data_dir_;
  std::string prompt_, negative_prompt_;
  float cfg_ = 9.0f;
  pipelines::UpscaleParams params_;
  int evaluate_ = 0;
  bool quiet_ = false;
};

// A PNG's pixels as [1, channels, H, W] in [0, 1]: alpha composited on white, RGB made grey (ITU-R
// BT.601 luma) or grey made RGB as the model needs.
Tensor image_for_channels(const Image& image, int64_t channels);

}  // namespace stipple::cli

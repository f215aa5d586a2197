// `stipple bench unet`: seconds per denoising step of an SD 1.5-shaped UNet at 512x512 with
// classifier-free guidance (batch 2, 77 context tokens), the SD VAE's decode time and the peak
// resident memory. Random seeded weights, or a single-file checkpoint's UNet/VAE (--weights).
// Parsing, timing and formatting only; the models come from the library.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "bench_pipeline.h"

namespace stipple::cli {

class BenchCommand {
 public:
  explicit BenchCommand(CLI::App& app);  // registers the subcommand and its options
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  CLI::App* unet_cmd_;
  CLI::App* checkpoint_cmd_;
  CLI::App* generate_cmd_;
  BenchCheckpointOptions checkpoint_;
  BenchGenerateOptions generate_;
  std::string dtype_ = "f32";
  std::string weights_;
  int steps_ = 3;
  int width_ = 512;
  int height_ = 512;
  uint64_t seed_ = 0;
  bool no_vae_ = false;
  bool quiet_ = false;
};

}  // namespace stipple::cli

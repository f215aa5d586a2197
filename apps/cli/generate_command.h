// `stipple generate`, `stipple img2img` and `stipple inpaint`: text-to-image, image-to-image,
// inpainting and class-to-image with any model the public API opens. A thin shell over
// stipple::Engine (include/stipple/stipple.h): parse flags, build a GenerateRequest, call,
// write PNGs.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace stipple::cli {

class GenerateCommand {
 public:
  enum class Mode { kGenerate, kImg2Img, kInpaint };
  // Registers the subcommand of `mode` and its options.
  GenerateCommand(CLI::App& app, Mode mode);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  Mode mode_;
  CLI::App* cmd_;
  std::string model_, prompt_, negative_prompt_, sampler_ = "ddim", out_ = "out.png";
  std::string init_image_, mask_;
  std::string tokenizer_;  // for single-file checkpoints
  std::string refiner_;    // SDXL: a refiner model
  std::string upscaler_;   // a cascade's super-resolution model
  int upscaler_steps_ = 0;
  int noise_level_ = -1;
  std::vector<std::string> loras_;  // FILE[:WEIGHT]
  std::string lora_dir_;
  std::string embeddings_dir_;
  bool vae_tiling_ = false;
  double refiner_switch_at_ = 0.8;
  std::string classifier_;  // classifier guidance
  double classifier_scale_ = 0;
  bool no_autoguidance_ = false;
  std::vector<std::string> class_labels_;
  std::string prompt_file_;
  int steps_ = 30, width_ = 0, height_ = 0, num_images_ = 1, clip_skip_ = 1;
  std::string prompt_syntax_ = "plain";
  float cfg_ = 7.5f;
  std::vector<double> guidance_interval_;  // --guidance-interval LO HI
  double strength_ = 0.75;
  int64_t seed_arg_ = 42;  // --seed as given
  uint64_t memory_limit_mb_ = 0;
  std::string weight_precision_ = "stored";
  bool low_memory_ = false;
  std::string device_ = "cpu";
  bool quiet_ = false;
};

}  // namespace stipple::cli

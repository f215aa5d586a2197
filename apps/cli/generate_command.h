// `stipple generate`, `stipple img2img` and `stipple inpaint`: Stable Diffusion text-to-image,
// image-to-image and inpainting from a diffusers folder, and DiT class-to-image
// (`generate --class-label`). Parsing, checking and writing PNGs only; the work is
// pipelines::StableDiffusion / pipelines::DiTPipeline.
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
  int run_dit();
  int run_pixel_dit();
  int run_text_dit();
  Mode mode_;
  CLI::App* cmd_;
  std::string model_, prompt_, negative_prompt_, sampler_ = "dpm++2m_karras", out_ = "out.png";
  std::string init_image_, mask_;
  std::string tokenizer_;  // for single-file checkpoints
  std::vector<std::string> class_labels_;
  std::string prompt_file_;
  int steps_ = 30, width_ = 0, height_ = 0, num_images_ = 1, clip_skip_ = 1;
  float cfg_ = 7.5f;
  double strength_ = 0.75;
  uint64_t seed_ = 42;     // the seed used (drawn when --seed is -1)
  int64_t seed_arg_ = 42;  // --seed as given
  bool quiet_ = false;
};

}  // namespace stipple::cli

#include "generate_command.h"

#include <cstdio>
#include <filesystem>
#include <limits>
#include <memory>
#include <sstream>

#include <stipple/stipple.h>

#include "core/error.h"
#include "io/output_path.h"
#include "io/read_file.h"
#include "models/lora.h"
#include "device_option.h"
#include "guidance_option.h"
#include "progress.h"

namespace stipple::cli {
namespace {

namespace fs = std::filesystem;

std::string sampler_list() {
  std::string s;
  for (const SamplerInfo& n : samplers()) s += str_cat(s.empty() ? "" : ", ", n.name);
  return s;
}

bool known_sampler(const std::string& name) {
  for (const SamplerInfo& n : samplers())
    if (name == n.name || name == n.a1111_name) return true;
  return false;
}

Image read_image(const std::string& path, const char* what) {
  STIPPLE_CHECK(fs::exists(path), "no such ", what, ": ", path);
  return load_png(path);
}

// Prompts from a file, one per line (empty lines skipped).
std::vector<std::string> read_prompt_file(const std::string& path) {
  std::istringstream in(io::read_file_bounded(path, "prompt file", size_t{1} << 20));
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) prompts.push_back(line);
  }
  STIPPLE_CHECK(!prompts.empty(), "prompt file ", path, " holds no prompt");
  STIPPLE_CHECK(prompts.size() <= 4096, "prompt file ", path, " holds ", prompts.size(),
                " prompts; at most 4096");
  return prompts;
}

// One PNG per image when `out` holds a %d (img_%03d.png), else one PNG (a grid when there are
// several images); each PNG carries its parameters text. Prints what it wrote.
void write_images(const GenerateResult& result, const std::string& out) {
  auto write = [](const std::string& path, const Image& image, const std::string& params) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    save_png(path, image, params);
  };
  const std::vector<GeneratedImage>& images = result.images;
  const int w = images[0].image.width, h = images[0].image.height;
  if (io::has_number_conversion(out)) {
    for (size_t i = 0; i < images.size(); ++i) {
      const std::string path = io::numbered_path(out, static_cast<int64_t>(i));
      write(path, images[i].image, images[i].parameters);
      std::printf("wrote %s (%dx%d)\n", path.c_str(), w, h);
    }
    return;
  }
  const std::string path = io::numbered_path(out, 0);  // %% -> %
  if (images.size() == 1) {
    write(path, images[0].image, images[0].parameters);
    std::printf("wrote %s (%dx%d)\n", path.c_str(), w, h);
    return;
  }
  std::vector<Image> all;
  for (const GeneratedImage& g : images) all.push_back(g.image);
  write(path, make_grid(all), result.parameters);
  std::printf("wrote %s: a grid of %zu images of %dx%d\n", path.c_str(), images.size(), w, h);
}

}  // namespace

GenerateCommand::GenerateCommand(CLI::App& app, Mode mode) : mode_(mode) {
  const char* name = mode == Mode::kGenerate  ? "generate"
                     : mode == Mode::kImg2Img ? "img2img"
                                              : "inpaint";
  const char* what =
      mode == Mode::kGenerate
          ? "Text-to-image with a Stable Diffusion 1.x/2.x model or a text-to-image DiT "
            "(--prompt), or class-to-image with a DiT (--class-label 207 or a class name)."
      : mode == Mode::kImg2Img
          ? "Image-to-image (SDEdit): noise --init-image by --strength, then denoise it toward "
            "--prompt."
          : "Inpainting: repaint the white (>= 50% grey) part of --mask in --init-image toward "
            "--prompt (9-channel inpainting UNets, or latent blending with ordinary ones).";
  cmd_ = app.add_subcommand(
      name, str_cat(what,
                    " Several images (--num-images) go to numbered files when --out holds a printf "
                    "%d (e.g. 'out/img_%03d.png'), else into one grid PNG. Each PNG carries the "
                    "generation parameters (A1111's `parameters` text; see `stipple info`)."));
  cmd_->add_option("--model", model_,
                   "a diffusers model folder (model_index.json, unet/, ...) or a single-file SD "
                   "1.x/2.x/XL checkpoint (.safetensors with A1111/CompVis/SGM names)")
      ->required();
  cmd_->add_option("--tokenizer", tokenizer_,
                   "for a single-file checkpoint: a tokenizer folder (vocab.json, merges.txt; "
                   "default: tokenizer/ beside the file)");
  if (mode == Mode::kGenerate) {
    cmd_->add_option("--refiner", refiner_,
                     "SDXL: a refiner (folder or single file) that finishes each image from "
                     "--refiner-switch-at on");
    cmd_->add_option("--refiner-switch-at", refiner_switch_at_,
                     "with --refiner: the fraction of the steps the base model runs")
        ->capture_default_str();
  }
  cmd_->add_option("--lora", loras_,
                   "Stable Diffusion 1.x/2.x/XL: a LoRA to merge, FILE[:WEIGHT] (kohya/A1111 or "
                   "diffusers/PEFT keys; .safetensors or .ckpt/.pt); repeat for several");
  cmd_->add_option("--lora-dir", lora_dir_,
                   "where the prompt's <lora:NAME:WEIGHT> tags (with --prompt-syntax a1111) find "
                   "NAME.safetensors");
  cmd_->add_option("--embeddings-dir", embeddings_dir_,
                   "Stable Diffusion: textual-inversion embeddings (.pt, .safetensors), each used "
                   "in prompts by its file name");
  cmd_->add_option("--prompt,-p", prompt_, "what to draw");
  cmd_->add_option("--negative-prompt,-n", negative_prompt_, "what to steer away from");
  cmd_->add_option("--steps", steps_,
                   "denoising steps (default: the model's: Stable Diffusion 30, DiT 30, "
                   "text-to-image DiTs 20, pixel-space DiTs 20 unless their model_index.json's "
                   "_stipple_sampling says otherwise)");
  cmd_->add_option("--cfg", cfg_,
                   "classifier-free guidance scale, <= 1 for none (default: the model's: Stable "
                   "Diffusion 7.5, SDXL 5, DiT 4, text-to-image DiTs 4, pixel-space DiTs 2 unless "
                   "their folder says otherwise: models/fashion-mnist-dit 2.5 at sigma <= 2.5)");
  add_guidance_interval_option(cmd_, guidance_interval_, "the model's (every step)");
  cmd_->add_option("--sampler", sampler_,
                   str_cat("sampler (default: the model's; `stipple info MODEL` says which): ",
                           sampler_list(), "; A1111's names (\"Euler a\", \"DPM++ 2M Karras\") "
                           "work too"));
  cmd_->add_option("--seed", seed_arg_,
                   "seed; the same seed gives diffusers' CPU noise; -1 draws a random one (as "
                   "A1111), which the PNG records")
      ->check(CLI::Range(int64_t{-1}, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  cmd_->add_option("--width", width_,
                   "image width, a multiple of 8 (default: the model's, or "
                   "the init image's)");
  cmd_->add_option("--height", height_, "image height, a multiple of 8");
  cmd_->add_option("--num-images", num_images_, "images to generate")->capture_default_str();
  cmd_->add_option("--prompt-syntax", prompt_syntax_,
                   "Stable Diffusion: plain (cut at 77 tokens, as diffusers), or a1111: (word:1.2), "
                   "[word], BREAK and past 75 tokens in chunks, as the web UI")
      ->capture_default_str()
      ->check(CLI::IsMember({"plain", "a1111"}));
  cmd_->add_option("--clip-skip", clip_skip_, "CLIP layers to skip from the end (1 = none)")
      ->capture_default_str();
  cmd_->add_option("--out,-o", out_, "PNG to write, or a pattern like 'dir/img_%03d.png'")
      ->capture_default_str();
  if (mode == Mode::kGenerate) {
    cmd_->add_option("--prompt-file", prompt_file_,
                     "text models: a file with one prompt per line (empty lines skipped); "
                     "one image each, numbered when --out holds %d");
    cmd_->add_option("--class-label", class_labels_,
                     "DiT models: class id or name (repeat for several images)");
    cmd_->add_option("--classifier", classifier_,
                     "pixel-space DiTs: classifier guidance by this noisy-image classifier "
                     "(stipple train-classifier --noisy), with --classifier-scale");
    cmd_->add_option("--classifier-scale", classifier_scale_,
                     "classifier guidance scale (Dhariwal & Nichol's s; 0: none)");
    cmd_->add_flag("--no-autoguidance", no_autoguidance_,
                   "pixel-space DiTs with a guide model (stipple info says): guide with the null "
                   "class instead of the guide model's prediction");
    cmd_->add_option("--upscaler", upscaler_,
                     "a cascade: a super-resolution model (stipple train-sr) that upscales every "
                     "image drawn");
    cmd_->add_option("--upscaler-steps", upscaler_steps_, "with --upscaler: its steps (default 30)")
        ->check(CLI::Range(1, 1000));
    cmd_->add_option("--noise-level", noise_level_,
                     "with --upscaler: the noise level the drawn image is augmented to before "
                     "upscaling (default: the upscaler's)")
        ->check(CLI::Range(0, 999));
  } else {
    cmd_->add_option("--init-image", init_image_, "PNG to start from")->required();
    if (mode == Mode::kInpaint) {
      cmd_->add_option("--mask", mask_, "PNG of the same size; white = repaint")->required();
      strength_ = 1.0;
    }
    cmd_->add_option("--strength", strength_,
                     "in [0, 1]: how much of the image is re-noised (1 = all)")
        ->capture_default_str();
  }
  cmd_->add_option("--memory-limit", memory_limit_mb_,
                   "refuse, before allocating, a generation whose working memory is estimated "
                   "above this many MiB (default: the memory the system has available)");
  cmd_->add_option("--weight-precision", weight_precision_,
                   "how weight matrices are held: stored (a half-precision checkpoint stays "
                   "f16/bf16, widened per layer: the same images as f32 in half the memory), "
                   "f32, f16 or bf16")
      ->check(CLI::IsMember({"stored", "f32", "f16", "bf16"}))
      ->capture_default_str();
  cmd_->add_flag("--low-memory", low_memory_,
                 "Stable Diffusion: hold the text encoders, UNet and VAE only during their own "
                 "stage, reading each again from the checkpoint (least memory; a little slower)");
  add_device_option(cmd_, device_, "the model");
  cmd_->add_flag("--vae-tiling", vae_tiling_,
                 "Stable Diffusion: decode in overlapping tiles (less memory for large images; "
                 "on by itself above 4x the model's native area)");
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar");
}

int GenerateCommand::run() {
  // Cheap checks first, so a bad flag fails before a model loads.
  STIPPLE_CHECK(fs::exists(model_), "no such model folder or file: ", model_);
  STIPPLE_CHECK(steps_ >= 1 && steps_ <= 10000, "--steps must be in [1, 10000], got ", steps_);
  STIPPLE_CHECK(num_images_ >= 1 && num_images_ <= 256, "--num-images must be in [1, 256], got ",
                num_images_);
  STIPPLE_CHECK(width_ >= 0 && width_ % 8 == 0, "--width must be a multiple of 8, got ", width_);
  STIPPLE_CHECK(height_ >= 0 && height_ % 8 == 0, "--height must be a multiple of 8, got ",
                height_);
  STIPPLE_CHECK(strength_ >= 0.0 && strength_ <= 1.0, "--strength must be in [0, 1], got ",
                strength_);
  STIPPLE_CHECK(known_sampler(sampler_), "unknown sampler '", sampler_,
                "'; known samplers: ", sampler_list(), " (or A1111's names: \"Euler a\", ...)");
  STIPPLE_CHECK(prompt_file_.empty() || prompt_.empty(), "give --prompt or --prompt-file, not both");
  io::has_number_conversion(out_);  // a bad --out pattern fails now, not after sampling

  GenerateRequest r;
  r.prompt = prompt_;
  if (!prompt_file_.empty()) r.prompts = read_prompt_file(prompt_file_);
  r.negative_prompt = negative_prompt_;
  r.class_labels = class_labels_;
  if (cmd_->count("--steps")) r.steps = steps_;
  if (cmd_->count("--cfg")) r.cfg_scale = cfg_;
  if (guidance_interval_.size() == 2)
    r.guidance_interval = GuidanceInterval{guidance_interval_[0], guidance_interval_[1]};
  if (cmd_->count("--sampler")) r.sampler = sampler_;
  r.seed = seed_arg_;
  r.width = width_;
  r.height = height_;
  r.batch_size = num_images_;
  r.clip_skip = clip_skip_;
  r.vae_tiling = vae_tiling_;
  r.prompt_syntax = prompt_syntax_ == "a1111" ? PromptSyntax::kA1111 : PromptSyntax::kPlain;
  if (mode_ != Mode::kGenerate) {
    r.init_image = read_image(init_image_, "init image");
    if (cmd_->count("--strength") || mode_ == Mode::kInpaint) r.strength = strength_;
  }
  if (mode_ == Mode::kInpaint) r.mask = read_image(mask_, "mask");
  STIPPLE_CHECK(refiner_.empty() || fs::exists(refiner_), "no such refiner folder or file: ",
                refiner_);
  if (mode_ == Mode::kGenerate && (!classifier_.empty() || cmd_->count("--classifier-scale"))) {
    STIPPLE_CHECK(!classifier_.empty(), "--classifier-scale needs --classifier");
    STIPPLE_CHECK(cmd_->count("--classifier-scale"), "--classifier needs --classifier-scale");
    r.classifier = classifier_;
    r.classifier_scale = classifier_scale_;
  }
  r.autoguidance = !no_autoguidance_;
  if (mode_ == Mode::kGenerate) {
    STIPPLE_CHECK(upscaler_.empty() || fs::exists(upscaler_), "no such upscaler folder: ",
                  upscaler_);
    STIPPLE_CHECK(!upscaler_.empty() || (upscaler_steps_ == 0 && noise_level_ < 0),
                  "--upscaler-steps and --noise-level need --upscaler");
    r.upscaler_steps = upscaler_steps_;
    if (noise_level_ >= 0) r.noise_level = noise_level_;
  }
  if (mode_ == Mode::kGenerate && cmd_->count("--refiner-switch-at")) {
    STIPPLE_CHECK(!refiner_.empty(), "--refiner-switch-at needs --refiner");
    r.refiner_switch_at = refiner_switch_at_;
  }

  for (const std::string& l : loras_) {
    const models::LoraSpec spec = models::parse_lora_spec(l);
    STIPPLE_CHECK(fs::is_regular_file(spec.path), "no such LoRA file: ", spec.path,
                  " (--lora FILE[:WEIGHT])");
    r.loras.push_back({spec.path, spec.weight});
  }
  STIPPLE_CHECK(lora_dir_.empty() || fs::is_directory(lora_dir_), "no such LoRA folder: ",
                lora_dir_);

  OpenOptions options;
  options.tokenizer_dir = tokenizer_;
  options.refiner = refiner_;
  options.upscaler = upscaler_;
  options.lora_dir = lora_dir_;
  options.embeddings_dir = embeddings_dir_;
  options.memory_limit_mb = memory_limit_mb_;
  options.weight_precision = weight_precision_;
  options.low_memory = low_memory_;
  options.device = device_;
  const Engine engine = Engine::open(model_, options);
  const ModelDescription& d = engine.description();
  for (const std::string& s : d.skipped_embeddings)
    std::fprintf(stderr, "note: embedding %s was skipped\n", s.c_str());
  const bool text_model = d.tasks[0] != Task::kClassToImage;
  STIPPLE_CHECK(!text_model || class_labels_.empty(), model_,
                " is a text-to-image model: give --prompt (or --prompt-file), not --class-label");
  STIPPLE_CHECK(text_model || !class_labels_.empty(), model_,
                " is a class-to-image model: give --class-label (an id such as 7, or a class "
                "name)");
  STIPPLE_CHECK(d.size_multiple != 0 || (width_ == 0 && height_ == 0), model_, " draws only ",
                d.default_width, "x", d.default_height, " images; leave out --width and --height");

  std::unique_ptr<ProgressBar> bar;
  const GenerateResult result = engine.generate(r, [&](const Progress& p) {
    if (!bar) bar = std::make_unique<ProgressBar>("sampling", p.total, !quiet_);
    bar->update(p.step);
  });
  if (bar) bar->finish();
  for (const std::string& note : result.notes) std::fprintf(stderr, "note: %s\n", note.c_str());
  write_images(result, out_);
  return 0;
}

}  // namespace stipple::cli

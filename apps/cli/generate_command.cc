#include "generate_command.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <limits>
#include <memory>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/json.h"
#include "io/output_path.h"
#include "io/read_file.h"
#include "io/png.h"
#include "ops/ops.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/text_dit_pipeline.h"
#include "progress.h"
#include "schedulers/scheduler.h"
#include "train/datasets.h"
#include "train/evaluate.h"

namespace stipple::cli {
namespace {

namespace fs = std::filesystem;

std::string sampler_list() {
  std::string s;
  for (const auto& n : schedulers::sampler_names()) s += str_cat(s.empty() ? "" : ", ", n.name);
  return s;
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// A PNG as [1, 3, H, W] in [0, 1] (grey is repeated, alpha dropped).
Tensor read_rgb(const std::string& path, const char* what) {
  STIPPLE_CHECK(fs::exists(path), "no such ", what, ": ", path);
  const io::Image img = io::read_png(path);
  const Tensor t = io::image_to_tensor(img, 0.0f, 1.0f);  // [1, C, H, W]
  if (img.channels >= 3) return t.narrow(1, 0, 3).contiguous();
  return ops::concat({t, t, t}, 1);
}

// A mask PNG as [1, 1, H, W] in [0, 1]: grey as it is, colour as PIL's convert("L").
Tensor read_mask(const std::string& path) {
  STIPPLE_CHECK(fs::exists(path), "no such mask: ", path);
  const io::Image img = io::read_png(path);
  std::vector<float> v(static_cast<size_t>(img.width) * img.height);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint8_t* px = &img.pixels[i * img.channels];
    const uint32_t l = img.channels >= 3
                           ? (px[0] * 19595u + px[1] * 38470u + px[2] * 7471u + 0x8000u) >> 16
                           : px[0];
    v[i] = static_cast<float>(l) / 255.0f;
  }
  return Tensor::from_vector(v, {1, 1, img.height, img.width});
}

// The folder's name for the PNG text ("sd_tiny" for "models/sd_tiny/").
std::string model_name(const std::string& folder) {
  fs::path p = fs::path(folder).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

bool is_dit_folder(const std::string& folder) {
  const fs::path d(folder);
  if (fs::is_directory(d / "transformer") && !fs::is_directory(d / "unet")) return true;
  if (!fs::exists(d / "model_index.json")) return false;
  const nlohmann::json j = io::read_json_file((d / "model_index.json").string());
  return j.is_object() && j.value("_class_name", "") == "DiTPipeline";
}

// Writes one PNG per image when `out` holds a printf %d (img_%03d.png), else one PNG (a grid
// when there are several images). Returns the paths written.
// `each` (optional) holds each image's own parameters text for numbered files.
std::vector<std::string> write_images(const Tensor& images, const std::string& out,
                                      const std::string& parameters,
                                      const std::vector<std::string>& each = {}) {
  auto write = [&](const std::string& path, const Tensor& chw, const std::string& params) {
    const fs::path parent = fs::path(path).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    io::write_png(path, io::tensor_to_image(chw, 0.0f, 1.0f), {{"parameters", params}});
  };
  const int64_t n = images.size(0);
  std::vector<std::string> paths;
  if (io::has_number_conversion(out)) {
    for (int64_t i = 0; i < n; ++i) {
      const std::string path = io::numbered_path(out, i);
      write(path, images.narrow(0, i, 1).contiguous(),
            static_cast<size_t>(i) < each.size() ? each[i] : parameters);
      paths.push_back(path);
    }
  } else {
    const std::string path = io::numbered_path(out, 0);  // %% -> %
    const int cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
    write(path, n == 1 ? images : io::make_grid(images, cols, 0),
          n == 1 && !each.empty() ? each[0] : parameters);
    paths.push_back(path);
  }
  return paths;
}

void report(const std::vector<std::string>& paths, const Tensor& images) {
  const long long n = images.size(0), w = images.size(3), h = images.size(2);
  if (paths.size() == 1 && n > 1) {
    std::printf("wrote %s: a grid of %lld images of %lldx%lld\n", paths[0].c_str(), n, w, h);
    return;
  }
  for (const std::string& p : paths) std::printf("wrote %s (%lldx%lld)\n", p.c_str(), w, h);
}

}  // namespace

GenerateCommand::GenerateCommand(CLI::App& app, Mode mode) : mode_(mode) {
  const char* name = mode == Mode::kGenerate  ? "generate"
                     : mode == Mode::kImg2Img ? "img2img"
                                              : "inpaint";
  const char* what =
      mode == Mode::kGenerate
          ? "Text-to-image with a Stable Diffusion 1.x/2.x diffusers folder (--prompt), or "
            "class-to-image with a DiT folder (--class-label 207 or a class name)."
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
                   "checkpoint (.safetensors with A1111/CompVis names)")
      ->required();
  cmd_->add_option("--tokenizer", tokenizer_,
                   "for a single-file checkpoint: a tokenizer folder (vocab.json, merges.txt; "
                   "default: tokenizer/ beside the file)");
  cmd_->add_option("--prompt,-p", prompt_, "what to draw");
  cmd_->add_option("--negative-prompt,-n", negative_prompt_, "what to steer away from");
  const train::EvalConfig pixel_dit;  // the pixel-space DiTs' defaults, shared with eval
  cmd_->add_option("--steps", steps_,
                   str_cat("denoising steps (pixel-space DiTs: ", pixel_dit.steps, ")"))
      ->capture_default_str();
  cmd_->add_option("--cfg", cfg_,
                   str_cat("classifier-free guidance scale (DiT's default: 4; pixel-space DiTs: ",
                           format_number(pixel_dit.cfg), ")"))
      ->capture_default_str();
  cmd_->add_option("--sampler", sampler_,
                   str_cat("sampler (pixel-space DiTs: ", pixel_dit.sampler, "): ", sampler_list()))
      ->capture_default_str();
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
  cmd_->add_option("--clip-skip", clip_skip_, "CLIP layers to skip from the end (1 = none)")
      ->capture_default_str();
  cmd_->add_option("--out,-o", out_, "PNG to write, or a pattern like 'dir/img_%03d.png'")
      ->capture_default_str();
  if (mode == Mode::kGenerate) {
    cmd_->add_option("--prompt-file", prompt_file_,
                     "text-to-image DiTs: a file with one prompt per line (empty lines skipped); "
                     "one image each, numbered when --out holds %d");
    cmd_->add_option("--class-label", class_labels_,
                     "DiT models: class id or name (repeat for several images)");
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
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar");
}

int GenerateCommand::run() {
  seed_ = seed_arg_ >= 0 ? static_cast<uint64_t>(seed_arg_) : std::random_device{}();
  // Cheap checks first, so a bad flag fails before a model loads.
  STIPPLE_CHECK(fs::exists(model_), "no such model folder or file: ", model_);
  STIPPLE_CHECK(steps_ >= 1 && steps_ <= 10000, "--steps must be in [1, 10000], got ", steps_);
  STIPPLE_CHECK(num_images_ >= 1 && num_images_ <= 256, "--num-images must be in [1, 256], got ",
                num_images_);
  STIPPLE_CHECK(width_ >= 0 && width_ % 8 == 0, "--width must be a multiple of 8, got ", width_);
  STIPPLE_CHECK(height_ >= 0 && height_ % 8 == 0, "--height must be a multiple of 8, got ",
                height_);
  STIPPLE_CHECK(strength_ >= 0.0 && strength_ <= 1.0, "--strength must be in [0, 1], got ",
                format_number(strength_));
  bool known = false;
  for (const auto& n : schedulers::sampler_names()) known = known || sampler_ == n.name;
  STIPPLE_CHECK(known, "unknown sampler '", sampler_, "'; known samplers: ", sampler_list());
  if (pipelines::TextDiTPipeline::is_folder(model_)) return run_text_dit();
  STIPPLE_CHECK(prompt_file_.empty(), "--prompt-file works with text-to-image DiT models; ",
                model_, " is not one");
  if (is_dit_folder(model_)) return run_dit();
  STIPPLE_CHECK(class_labels_.empty(), model_,
                " is a Stable Diffusion model: give --prompt instead of --class-label");

  pipelines::GenerationParams p;
  p.prompt = prompt_;
  p.negative_prompt = negative_prompt_;
  p.steps = steps_;
  p.cfg = cfg_;
  p.sampler = sampler_;
  p.seed = seed_;
  p.width = width_;
  p.height = height_;
  p.num_images = num_images_;
  p.clip_skip = clip_skip_;
  if (mode_ != Mode::kGenerate) {
    p.init_image = read_rgb(init_image_, "init image");
    p.strength = strength_;
  }
  if (mode_ == Mode::kInpaint) {
    p.mask = read_mask(mask_);
    STIPPLE_CHECK(p.mask.size(2) == p.init_image.size(2) && p.mask.size(3) == p.init_image.size(3),
                  "the mask ", mask_, " is ", p.mask.size(3), "x", p.mask.size(2),
                  " but the init image is ", p.init_image.size(3), "x", p.init_image.size(2),
                  "; they must have the same size");
  }
  const pipelines::StableDiffusion sd = pipelines::StableDiffusion::load(model_, tokenizer_);
  std::unique_ptr<ProgressBar> bar;
  p.progress = [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("sampling", total, !quiet_);
    bar->update(done);
  };
  Tensor images;
  if (mode_ == Mode::kGenerate) images = sd.run_txt2img(p);
  if (mode_ == Mode::kImg2Img) images = sd.run_img2img(p);
  if (mode_ == Mode::kInpaint) images = sd.run_inpaint(p);
  if (bar) bar->finish();

  std::string params = prompt_;
  if (!negative_prompt_.empty()) params += "\nNegative prompt: " + negative_prompt_;
  params +=
      str_cat("\nSteps: ", steps_, ", Sampler: ", sampler_, ", CFG scale: ", format_number(cfg_),
              ", Seed: ", seed_, ", Size: ", images.size(3), "x", images.size(2),
              ", Model: ", model_name(model_));
  if (mode_ != Mode::kGenerate) params += ", Denoising strength: " + format_number(strength_);
  report(write_images(images, out_, params), images);
  return 0;
}

int GenerateCommand::run_dit() {
  STIPPLE_CHECK(mode_ == Mode::kGenerate, model_,
                " is a DiT class-to-image model: use `stipple generate --class-label`");
  STIPPLE_CHECK(!class_labels_.empty(), model_,
                " is a DiT class-to-image model: give --class-label (an id such as 207, or a "
                "class name)");
  STIPPLE_CHECK(width_ == 0 && height_ == 0,
                "a DiT model draws at its own size; leave out "
                "--width and --height");
  if (!fs::exists(fs::path(model_) / "vae")) return run_pixel_dit();
  const pipelines::DiTPipeline dit = pipelines::DiTPipeline::from_pretrained(model_);
  pipelines::DiTParams p;
  const std::vector<int64_t> ids = dit.label_ids(class_labels_);
  for (int i = 0; i < num_images_; ++i)
    p.class_labels.insert(p.class_labels.end(), ids.begin(), ids.end());
  p.steps = steps_;
  p.cfg = cmd_->count("--cfg") ? cfg_ : 4.0f;
  p.sampler = sampler_;
  p.seed = seed_;
  std::unique_ptr<ProgressBar> bar;
  p.progress = [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("sampling", total, !quiet_);
    bar->update(done);
  };
  const Tensor images = dit.run(p);
  if (bar) bar->finish();
  std::string labels;
  for (int64_t id : ids) {
    auto it = dit.id2label().find(id);
    labels += str_cat(labels.empty() ? "" : ", ", id,
                      it == dit.id2label().end() ? "" : " (" + it->second + ")");
  }
  const std::string params =
      str_cat("class ", labels, "\nSteps: ", steps_, ", Sampler: ", sampler_,
              ", CFG scale: ", format_number(p.cfg), ", Seed: ", seed_, ", Size: ", images.size(3),
              "x", images.size(2), ", Model: ", model_name(model_));
  report(write_images(images, out_, params), images);
  return 0;
}

// A text-to-image DiT as `stipple train --data emoji` writes it. Defaults: 20 DPM-Solver++ (2M)
// steps, CFG 4.
int GenerateCommand::run_text_dit() {
  STIPPLE_CHECK(mode_ == Mode::kGenerate, model_,
                " is a text-to-image DiT: img2img and inpainting are not available for it yet");
  STIPPLE_CHECK(class_labels_.empty(), model_,
                " is a text-to-image model: give --prompt (or --prompt-file), not --class-label");
  STIPPLE_CHECK(width_ == 0 && height_ == 0,
                "a text-to-image DiT draws at its own size; leave out --width and --height");
  std::vector<std::string> prompts;
  if (!prompt_file_.empty()) {
    STIPPLE_CHECK(prompt_.empty(), "give --prompt or --prompt-file, not both");
    std::istringstream in(io::read_file_bounded(prompt_file_, "prompt file", size_t{1} << 20));
    std::string line;
    while (std::getline(in, line)) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) prompts.push_back(line);
    }
    STIPPLE_CHECK(!prompts.empty(), "prompt file ", prompt_file_, " holds no prompt");
    STIPPLE_CHECK(prompts.size() <= 4096, "prompt file ", prompt_file_, " holds ",
                  prompts.size(), " prompts; at most 4096");
  } else {
    STIPPLE_CHECK(!prompt_.empty(), model_, " is a text-to-image model: give --prompt");
    prompts.push_back(prompt_);
  }
  std::vector<std::string> all;
  for (int i = 0; i < num_images_; ++i) all.insert(all.end(), prompts.begin(), prompts.end());
  const pipelines::TextDiTPipeline pipe = pipelines::TextDiTPipeline::from_pretrained(model_);
  pipelines::TextDiTParams p;
  p.negative_prompt = negative_prompt_;
  p.steps = cmd_->count("--steps") ? steps_ : 20;
  p.cfg = cmd_->count("--cfg") ? static_cast<float>(cfg_) : 4.0f;
  p.sampler = cmd_->count("--sampler") ? sampler_ : "dpm++2m";
  p.seed = seed_;
  std::unique_ptr<ProgressBar> bar;
  p.progress = [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("sampling", total, !quiet_);
    bar->update(done);
  };
  // Image i with seed + i (as A1111), so an image is the same whether drawn alone or in a batch.
  p.prompts = all;
  for (size_t i = 0; i < all.size(); ++i) p.seeds.push_back(seed_ + i);
  const Tensor out = pipe.run(p);
  if (bar) bar->finish();
  // A1111's text for each image (its prompt and seed); a grid's lists every prompt, in order.
  auto text = [&](const std::string& prompt, uint64_t seed) {
    std::string t = prompt;
    if (!negative_prompt_.empty()) t += "\nNegative prompt: " + negative_prompt_;
    return t + str_cat("\nSteps: ", p.steps, ", Sampler: ", p.sampler, ", CFG scale: ",
                       format_number(p.cfg), ", Seed: ", seed, ", Size: ", out.size(3), "x",
                       out.size(2), ", Model: ", model_name(model_));
  };
  std::vector<std::string> each;
  std::string joined;
  for (size_t i = 0; i < all.size(); ++i) {
    each.push_back(text(all[i], seed_ + i));
    joined += (joined.empty() ? "" : " | ") + all[i];
  }
  report(write_images(out, out_, text(joined, seed_), each), out);
  return 0;
}

// A pixel-space DiT as `stipple train` writes it (model_index.json with no VAE, transformer/,
// scheduler/): sampled with the same code as `stipple eval`. Fashion-MNIST models were trained on
// the 28x28 images framed to 32x32, so the frame is cropped back off.
int GenerateCommand::run_pixel_dit() {
  const train::ClassGenerator gen = train::ClassGenerator::load(model_);
  const std::vector<std::string>& names = gen.class_names();
  const bool fashion = names == train::FashionMnist::class_names();
  std::vector<int64_t> ids;
  for (const std::string& l : class_labels_) {
    int64_t id = -1;
    if (fashion) {
      id = train::FashionMnist::class_index(l);
    } else if (!l.empty() && l.find_first_not_of("0123456789") == std::string::npos) {
      id = std::stoll(l);
    } else {
      for (size_t c = 0; c < names.size(); ++c)
        if (names[c] == l) id = static_cast<int64_t>(c);
    }
    STIPPLE_CHECK(id >= 0 && id < gen.num_classes(), "unknown class label '", l, "' for ", model_,
                  " (", gen.num_classes(), " classes)");
    ids.push_back(id);
  }
  std::vector<int64_t> labels;
  for (int i = 0; i < num_images_; ++i) labels.insert(labels.end(), ids.begin(), ids.end());
  // Defaults for these small models: what `stipple eval` scores them with.
  train::EvalConfig c;
  if (cmd_->count("--steps")) c.steps = steps_;
  if (cmd_->count("--sampler")) c.sampler = sampler_;
  if (cmd_->count("--cfg")) c.cfg = cfg_;
  c.seed = seed_;
  c.validate();
  std::unique_ptr<ProgressBar> bar;
  Tensor images = gen.sample(labels, c, [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("sampling", total, !quiet_);
    bar->update(done);
  });  // [N, C, S, S] in [-1, 1]
  if (bar) bar->finish();
  if (fashion && gen.image_size() == 32) images = images.narrow(2, 2, 28).narrow(3, 2, 28);
  images = ops::clamp(ops::affine(images, 0.5f, 0.5f), 0.0f, 1.0f);  // [N, C, 28, 28] in [0, 1]
  std::string label_text;
  for (int64_t id : ids)
    label_text += str_cat(label_text.empty() ? "" : ", ", id, " (", names[id], ")");
  const std::string params =
      str_cat("class ", label_text, "\nSteps: ", c.steps, ", Sampler: ", c.sampler,
              ", CFG scale: ", format_number(c.cfg), ", Seed: ", seed_, ", Size: ", images.size(3),
              "x", images.size(2), ", Model: ", model_name(model_));
  report(write_images(images, out_, params), images);
  return 0;
}

}  // namespace stipple::cli

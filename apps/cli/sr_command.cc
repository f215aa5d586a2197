#include "sr_command.h"

#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "io/png.h"
#include "ops/ops.h"
#include "io/json.h"
#include "pipelines/stable_diffusion.h"
#include "progress.h"
#include "stop_signal.h"

namespace stipple::cli {

Tensor image_for_channels(const Image& image, int64_t channels) {
  const int64_t h = image.height, w = image.width, c = image.channels;
  std::vector<float> rgb(static_cast<size_t>(3 * h * w));
  for (int64_t i = 0; i < h * w; ++i) {
    const uint8_t* p = image.pixels.data() + i * c;
    const float alpha = c == 4 ? p[3] / 255.0f : 1.0f;
    for (int k = 0; k < 3; ++k) {
      const float v = (c >= 3 ? p[k] : p[0]) / 255.0f;
      rgb[k * h * w + i] = v * alpha + (1.0f - alpha);  // on white
    }
  }
  if (channels == 3) return Tensor::from_vector(rgb, {1, 3, h, w});
  std::vector<float> grey(static_cast<size_t>(h * w));
  for (int64_t i = 0; i < h * w; ++i)
    grey[i] = 0.299f * rgb[i] + 0.587f * rgb[h * w + i] + 0.114f * rgb[2 * h * w + i];
  return Tensor::from_vector(grey, {1, 1, h, w});
}

// ---------------- train-sr ----------------

SrTrainCommand::SrTrainCommand(CLI::App& app) {
  train::SrTrainConfig& c = config_;
  cmd_ = app.add_subcommand(
      "train-sr",
      "Train a super-resolution diffusion model (SR3 with CDM's noise augmentation of the "
      "low-resolution input) on Fashion-MNIST (14x14 -> 28x28) or the emoji (16 -> 64 or "
      "32 -> 64): OUT is the model folder (stipple upscale --model OUT), with log.csv, and at "
      "the end metrics.json and compare.png (held-out images against bicubic). Ctrl-C saves; "
      "--resume continues exactly.");
  cmd_->add_option("--out", c.out_dir, "output folder (the model)")->required();
  cmd_->add_option("--data", c.data, "data set")
      ->capture_default_str()
      ->check(CLI::IsMember({"fashion-mnist", "emoji"}));
  cmd_->add_option("--data-dir", c.data_dir, "the data set's folder (default: where setup puts it)");
  cmd_->add_flag("--resume", resume_, "continue the run in --out (its settings; --steps may grow)");
  cmd_->add_option("--scale", c.scale, "upscaling factor")
      ->capture_default_str()
      ->check(CLI::IsMember({2, 4}));
  cmd_->add_option("--channels", c.block_out_channels, "UNet channels per level")
      ->capture_default_str()
      ->expected(1, 4);
  cmd_->add_option("--layers-per-block", c.layers_per_block, "resnets per level")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  cmd_->add_option("--norm-groups", c.norm_num_groups, "group norm groups")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd_->add_option("--max-noise-level", c.max_noise_level,
                   "augmentation levels trained, 0..N (of the 1000-step schedule)")
      ->capture_default_str()
      ->check(CLI::Range(0, 999));
  cmd_->add_option("--noise-level", c.noise_level, "the model's default level at sampling")
      ->capture_default_str()
      ->check(CLI::Range(0, 999));
  cmd_->add_option("--blur-prob", c.blur_prob,
                   "probability of blurring the low-res input (3x3 Gaussian, sigma 0.4-0.6)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd_->add_option("--prediction", c.prediction_type, "what the UNet predicts")
      ->capture_default_str()
      ->check(CLI::IsMember({"v_prediction", "epsilon"}));
  cmd_->add_option("--steps", c.steps, "optimizer steps")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--batch-size", c.batch_size, "images per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--lr", c.lr, "peak learning rate (AdamW; warm-up, then cosine)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--warmup", c.warmup, "warm-up steps")->capture_default_str();
  cmd_->add_option("--ema-decay", c.ema_decay, "EMA of the weights (what is saved)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.999999));
  cmd_->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--eval-images", c.eval_images, "held-out images scored at the end (0: none)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  cmd_->add_option("--eval-steps", c.eval_steps, "sampling steps for them (DPM++ 2M)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--classifier", c.classifier_dir,
                   "Fashion-MNIST: a classifier folder whose accuracy on the originals, bicubic "
                   "and SR images is reported");
  cmd_->add_option("--limit-images", c.limit_images, "train on the first N images only (tests)")
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--seed", c.seed, "weights, data order and noise")->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
}

int SrTrainCommand::run() {
  TrainingProgress shown(quiet_);
  auto progress = [&](const train::SrProgress& p) {
    char note[48];
    std::snprintf(note, sizeof note, "loss %.4f", p.loss);
    shown.update(p.step, p.total, note);
  };
  auto message = [&](const std::string& s) { shown.message(s); };
  install_stop_handlers();
  const train::SrMetrics m = train::train_sr(config_, resume_, progress, message, stop_requested);
  remove_stop_handlers();
  shown.finish();
  if (m.images == 0) {
    if (stop_requested())
      std::printf("stopped; continue with: stipple train-sr --out %s --resume\n",
                  config_.out_dir.c_str());
    else
      std::printf("wrote the model to %s (no held-out scoring)\n", config_.out_dir.c_str());
    return 0;
  }
  std::printf("held-out images (%lld): PSNR %.2f dB (bicubic %.2f), SSIM %.4f (bicubic %.4f)\n",
              static_cast<long long>(m.images), m.psnr_sr, m.psnr_bicubic, m.ssim_sr,
              m.ssim_bicubic);
  if (m.accuracy_sr >= 0)
    std::printf("classifier accuracy: originals %.1f%%, bicubic %.1f%%, SR %.1f%%\n",
                100 * m.accuracy_real, 100 * m.accuracy_bicubic, 100 * m.accuracy_sr);
  std::printf("wrote the model to %s, with compare.png and metrics.json\n",
              config_.out_dir.c_str());
  return 0;
}

// ---------------- upscale ----------------

UpscaleCommand::UpscaleCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "upscale",
      "Upscale an image with a super-resolution diffusion model: one stipple train-sr made (the "
      "PNG, RGB or greyscale as the model takes, becomes `scale` times larger), or Stable "
      "Diffusion's x4 upscaler (a StableDiffusionUpscalePipeline folder; --prompt describes the "
      "image). Or, with --evaluate N, score a train-sr model on N held-out images against "
      "bicubic.");
  cmd_->add_option("--model", model_, "super-resolution model folder")->required();
  cmd_->add_option("--image", image_, "the low-resolution PNG");
  cmd_->add_option("--out", out_, "output PNG");
  cmd_->add_option("--steps", params_.steps, "denoising steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--sampler", sampler_,
                   "sampler (as stipple generate; default: the model's own scheduler)");
  cmd_->add_option("--prompt", prompt_, "x4 upscaler: what the image shows");
  cmd_->add_option("--negative-prompt", negative_prompt_, "x4 upscaler: what it should not");
  cmd_->add_option("--cfg", cfg_, "x4 upscaler: classifier-free guidance scale")
      ->capture_default_str();
  cmd_->add_option("--noise-level", params_.noise_level,
                   "augmentation level of the input (default: the model's)")
      ->check(CLI::Range(0, 999));
  cmd_->add_option("--seed", params_.seed, "noise seed")->capture_default_str();
  cmd_->add_option("--evaluate", evaluate_,
                   "instead: upscale the first N held-out images of the model's data set and "
                   "print PSNR/SSIM against bicubic")
      ->check(CLI::Range(1, 10000));
  cmd_->add_option("--classifier", classifier_,
                   "with --evaluate on Fashion-MNIST: also the classifier's accuracy");
  cmd_->add_option("--data-dir", data_dir_, "with --evaluate: the data set's folder");
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar");
}

int UpscaleCommand::evaluate(const pipelines::SuperResolutionPipeline& model) {
  const nlohmann::json index =
      io::read_json_file((std::filesystem::path(model_) / "model_index.json").string());
  const std::string data = index.value("data", std::string("fashion-mnist"));
  const train::HeldOut heldout = train::sr_heldout_images(data, data_dir_, evaluate_);
  std::unique_ptr<ProgressBar> bar;
  pipelines::UpscaleParams p = params_;
  p.sampler = sampler_;
  const train::SrMetrics m = train::evaluate_sr(
      model, heldout, p, classifier_, out_, [&](int done, int total) {
        if (!bar) bar = std::make_unique<ProgressBar>("upscaling", total, !quiet_);
        bar->update(done, "");
      });
  if (bar) bar->finish();
  std::printf("%s, %lld held-out images, %d steps, noise level %lld: PSNR %.2f dB (bicubic "
              "%.2f), SSIM %.4f (bicubic %.4f), %.1f s\n",
              data.c_str(), static_cast<long long>(m.images), params_.steps,
              static_cast<long long>(p.noise_level < 0 ? model.default_noise_level()
                                                       : p.noise_level),
              m.psnr_sr, m.psnr_bicubic,
              m.ssim_sr, m.ssim_bicubic, m.seconds);
  if (m.accuracy_sr >= 0)
    std::printf("classifier accuracy: originals %.1f%%, bicubic %.1f%%, SR %.1f%%\n",
                100 * m.accuracy_real, 100 * m.accuracy_bicubic, 100 * m.accuracy_sr);
  return 0;
}

int UpscaleCommand::run_x4() {
  STIPPLE_CHECK(evaluate_ == 0, "--evaluate scores models from stipple train-sr, not the x4 upscaler");
  STIPPLE_CHECK(!image_.empty() && !out_.empty(), "give --image LOW.png and --out HIGH.png");
  const auto sd = pipelines::StableDiffusion::from_pretrained(model_);
  const Image in = io::read_png(image_);
  pipelines::GenerationParams p;
  p.prompt = prompt_;
  p.negative_prompt = negative_prompt_;
  p.steps = params_.steps;
  p.cfg = cfg_;
  p.sampler = sampler_;
  p.seed = params_.seed;
  p.noise_level = params_.noise_level < 0 ? 20 : static_cast<int>(params_.noise_level);
  p.init_image = image_for_channels(in, 3);
  std::unique_ptr<ProgressBar> bar;
  p.progress = [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("upscaling", total, !quiet_);
    bar->update(done, "");
  };
  const Tensor out = sd.run(p);  // [1, 3, H, W] in [0, 1]
  if (bar) bar->finish();
  io::write_png(out_, io::tensor_to_image(out, 0.0f, 1.0f),
                {{"parameters", str_cat(prompt_,
                                        negative_prompt_.empty()
                                            ? std::string()
                                            : "\nNegative prompt: " + negative_prompt_,
                                        "\nSteps: ", p.steps, ", CFG scale: ", p.cfg, ", Seed: ",
                                        p.seed, ", Noise level: ", p.noise_level, ", Size: ",
                                        out.size(3), "x", out.size(2), ", Model: ",
                                        std::filesystem::path(model_).filename().string())}});
  std::printf("wrote %s (%lldx%lld, from %dx%d)\n", out_.c_str(),
              static_cast<long long>(out.size(3)), static_cast<long long>(out.size(2)), in.width,
              in.height);
  return 0;
}

int UpscaleCommand::run() {
  const std::string index = (std::filesystem::path(model_) / "model_index.json").string();
  if (std::filesystem::is_regular_file(index) &&
      io::read_json_file(index).value("_class_name", std::string()) ==
          "StableDiffusionUpscalePipeline")
    return run_x4();
  STIPPLE_CHECK(prompt_.empty() && negative_prompt_.empty(), model_,
                " is a super-resolution model without text conditioning: leave out --prompt");
  const auto model = pipelines::SuperResolutionPipeline::from_pretrained(model_);
  if (evaluate_ > 0) {
    STIPPLE_CHECK(image_.empty(), "give --image or --evaluate, not both");
      return evaluate(model);
  }
  STIPPLE_CHECK(!image_.empty() && !out_.empty(),
                "give --image LOW.png and --out HIGH.png (or --evaluate N)");
  const Image in = io::read_png(image_);
  const Tensor low = image_for_channels(in, model.channels());  // [1, C, h, w] in [0, 1]
  pipelines::UpscaleParams p = params_;
  p.sampler = sampler_;
  const std::string sampler_name = sampler_.empty() ? "the model's own" : sampler_;
  std::unique_ptr<ProgressBar> bar;
  p.progress = [&](int done, int total) {
    if (!bar) bar = std::make_unique<ProgressBar>("upscaling", total, !quiet_);
    bar->update(done, "");
  };
  const Tensor out = model.run(low, p);  // [1, C, H, W] in [0, 1]
  if (bar) bar->finish();
  const int64_t level = p.noise_level < 0 ? model.default_noise_level() : p.noise_level;
  io::write_png(out_, io::tensor_to_image(out, 0.0f, 1.0f),
                {{"parameters", str_cat("upscale x", model.scale(), " of ", image_, "\nSteps: ",
                                        p.steps, ", Sampler: ", sampler_name, ", Seed: ", p.seed,
                                        ", Noise level: ", level, ", Size: ", out.size(3), "x",
                                        out.size(2), ", Model: ",
                                        std::filesystem::path(model_).filename().string())}});
  std::printf("wrote %s (%lldx%lld, from %dx%d)\n", out_.c_str(),
              static_cast<long long>(out.size(3)), static_cast<long long>(out.size(2)), in.width,
              in.height);
  return 0;
}

}  // namespace stipple::cli

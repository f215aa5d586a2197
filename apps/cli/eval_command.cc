#include "eval_command.h"

#include <cstdio>
#include <memory>

#include "device_option.h"
#include "guidance_option.h"
#include "core/error.h"
#include "models/fashion_classifier.h"
#include "io/atomic_file.h"
#include "pipelines/text_dit_pipeline.h"
#include "progress.h"
#include "schedulers/scheduler.h"

namespace stipple::cli {

EvalCommand::EvalCommand(CLI::App& app) {
  train::EvalConfig& c = config_;
  cmd_ = app.add_subcommand(
      "eval",
      "Score a generator trained by `stipple train`. Text-to-image models (the emoji): N prompts, "
      "one image each, judged by the CLIP trained here (caption retrieval among the 1,911 base "
      "labels, the held-out skin-tone pairs, FD_clip), next to real images. Class-conditional "
      "ones: generate N images per "
      "class, then report CAS (the accuracy of the Fashion-MNIST classifier on them) and FID_feat "
      "(a Fréchet distance in the classifier's feature space against the 10,000 test images), "
      "each next to its real-data floor (real images through the same path). Prints a table; "
      "--json and --grid write the numbers and the samples.");
  cmd_->add_option("--model", model_,
                   "generator folder: a run's checkpoint-<step>/, latest/, export/ or the run "
                   "folder")
      ->required();
  cmd_->add_option("--classifier", classifier_,
                   "classifier folder (stipple train-classifier's output)")
      ->capture_default_str();
  cmd_->add_option("--data-dir", data_dir_, "Fashion-MNIST folder (the real images)")
      ->capture_default_str();
  cmd_->add_option("--samples-per-class", c.samples_per_class, "generated images per class")
      ->capture_default_str()
      ->check(CLI::Range(2, 100000));
  cmd_->add_option("--steps", c.steps, "sampler steps (default: the model's; 20 unless its "
                   "model_index.json's _stipple_sampling says otherwise)")
      ->check(CLI::Range(1, 1000));
  std::string names;
  for (const auto& s : schedulers::sampler_names())
    names += (names.empty() ? "" : ", ") + std::string(s.name);
  cmd_->add_option("--sampler", c.sampler,
                   "one of: " + names + " (default: the model's; dpm++2m_karras unless it says)");
  cmd_->add_option("--cfg", c.cfg,
                   "classifier-free guidance scale, 1: none (default: the model's; 2 unless it "
                   "says)")
      ->check(CLI::NonNegativeNumber);
  add_guidance_interval_option(cmd_, guidance_interval_, "the model's (every step unless it says)");
  cmd_->add_option("--guidance-rescale", c.guidance_rescale,
                   "guidance rescale phi (Lin et al. 2023): each guided prediction's spread "
                   "brought back toward the conditional one's; 0: off")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd_->add_option("--guide-model", guide_model_,
                   "autoguidance: a smaller, shorter-trained generator folder whose prediction "
                   "replaces the null class's in the guided steps; none: the null class (default: "
                   "the model's _stipple_sampling guide_model, if it names one)");
  cmd_->add_option("--guide-share", c.guide_share,
                   "with a guide model: its share of the guided steps' negative prediction, the "
                   "rest the null class's (1: autoguidance alone, 0: classifier-free guidance)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd_->add_option("--guide-classifier", c.guide_dir,
                   "classifier guidance: a noisy-image classifier folder (stipple "
                   "train-classifier --noisy), with --classifier-scale");
  cmd_->add_option("--classifier-scale", c.guide_scale,
                   "classifier guidance scale (0: none; Dhariwal & Nichol's s)")
      ->capture_default_str();
  cmd_->add_flag("--unconditional", c.unconditional,
                 "give the denoiser the null class (no classifier-free guidance): only "
                 "classifier guidance steers toward the class");
  cmd_->add_option("--upscaler", c.upscaler_dir,
                   "a cascade: upscale every sample with this super-resolution model (stipple "
                   "train-sr) before scoring");
  cmd_->add_option("--upscaler-steps", c.upscaler_steps, "with --upscaler: its steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--noise-level", c.noise_level,
                   "with --upscaler: the samples' noise level before upscaling (default: the "
                   "upscaler's)")
      ->check(CLI::Range(0, 999));
  cmd_->add_option("--seed", c.seed, "noise seed")->capture_default_str();
  add_device_option(cmd_, device_, "the generator");
  cmd_->add_option("--batch-size", c.batch_size, "images per denoiser batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--prompts", t2i_.prompts, "text-to-image: base emoji prompted (one image each)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1911));
  cmd_->add_option("--clip", t2i_.clip_dir,
                   "text-to-image: the judging CLIP folder (default: the model's own towers)");
  cmd_->add_option("--data", t2i_.data_dir, "text-to-image: the emoji data folder");
  cmd_->add_option("--json", json_, "write the results as JSON to this file");
  cmd_->add_option("--grid", grid_, "write a PNG grid of the samples (a row per class)");
  cmd_->add_option("--grid-columns", grid_columns_,
                   "class-conditional: samples per row of the --grid (at most --samples-per-class)")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar");
}

int EvalCommand::run_text_to_image() {
  if (cmd_->count("--steps")) t2i_.steps = config_.steps;
  if (cmd_->count("--sampler")) t2i_.sampler = config_.sampler;
  if (cmd_->count("--cfg")) t2i_.cfg = config_.cfg;
  t2i_.seed = config_.seed;
  t2i_.grid = grid_;
  t2i_.device = parse_device(device_);
  PhasedProgress phases(quiet_);
  auto progress = [&](const std::string& phase, int done, int total) {
    phases.update(phase, done, total);
  };
  const train::T2IEvalResult r = train::evaluate_text_to_image(model_, t2i_, progress);
  phases.finish();
  std::printf("%s", r.table().c_str());
  std::printf("sampling took %.1f s\n", r.sample_seconds);
  if (!json_.empty()) {
    io::write_file_atomic(json_, r.to_json().dump(2) + "\n");
    std::printf("wrote %s\n", json_.c_str());
  }
  if (!grid_.empty()) std::printf("wrote %s\n", grid_.c_str());
  return 0;
}

int EvalCommand::run() {
  if (pipelines::TextDiTPipeline::is_folder(model_)) return run_text_to_image();
  // Load everything first, so a wrong path fails before minutes of sampling.
  const Device device = parse_device(device_);
  train::ClassGenerator generator = train::ClassGenerator::load(model_);
  if (!guide_model_.empty()) generator.set_guide_model(guide_model_ == "none" ? "" : guide_model_);
  generator.to(device);
  // The folder's sampling defaults, for what the command line leaves unsaid.
  const train::SamplingDefaults& defaults = generator.defaults();
  if (!cmd_->count("--steps")) config_.steps = defaults.steps;
  if (!cmd_->count("--sampler")) config_.sampler = defaults.sampler;
  if (!cmd_->count("--cfg")) config_.cfg = defaults.cfg;
  if (!cmd_->count("--guidance-interval")) config_.guidance_interval = defaults.guidance_interval;
  const auto classifier = models::FashionClassifier::from_pretrained(classifier_);
  STIPPLE_CHECK(config_.guide_scale == 0.0f || !config_.guide_dir.empty(),
                "--classifier-scale needs --guide-classifier (a noisy-image classifier)");
  if (!config_.guide_dir.empty())
    config_.guide = models::FashionClassifier::from_pretrained(config_.guide_dir);
  STIPPLE_CHECK(!config_.upscaler_dir.empty() ||
                    (cmd_->count("--upscaler-steps") == 0 && cmd_->count("--noise-level") == 0),
                "--upscaler-steps and --noise-level need --upscaler");
  if (!config_.upscaler_dir.empty())
    config_.upscaler = std::make_shared<const pipelines::SuperResolutionPipeline>(
        pipelines::SuperResolutionPipeline::from_pretrained(config_.upscaler_dir));
  if (guidance_interval_.size() == 2) {
    config_.guidance_interval = {static_cast<float>(guidance_interval_[0]),
                                 static_cast<float>(guidance_interval_[1])};
  }
  config_.validate();
  const train::RealData real =
      train::load_real_data(data_dir_, classifier->config().image_size == 32);
  if (!quiet_)
    std::fprintf(stderr, "evaluating %s: %d images per class, %s, %d steps, CFG %g%s%s\n",
                 generator.folder().c_str(), config_.samples_per_class, config_.sampler.c_str(),
                 config_.steps, config_.cfg,
                 generator.autoguides(config_)
                     ? str_cat(" (autoguidance by ", generator.guide_model_folder(), ")").c_str()
                     : "",
                 config_.guide_scale != 0.0f
                     ? str_cat(", classifier guidance ", config_.guide_scale).c_str()
                     : "");

  PhasedProgress phases(quiet_);
  auto progress = [&](const std::string& phase, int done, int total) {
    phases.update(phase, done, total);
  };
  train::EvalResult r = train::evaluate(generator, *classifier, real, config_, progress);
  phases.finish();
  r.classifier = classifier_;
  std::printf("%s", r.table().c_str());
  std::printf("sampling took %.1f s, the whole evaluation %.1f s\n", r.sample_seconds,
              r.total_seconds);
  if (!json_.empty()) {
    train::write_eval_json(r, json_);
    std::printf("wrote %s\n", json_.c_str());
  }
  if (!grid_.empty()) {
    train::write_eval_grid(r, grid_, grid_columns_);
    std::printf("wrote %s\n", grid_.c_str());
  }
  return 0;
}

}  // namespace stipple::cli

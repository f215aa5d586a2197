// The stipple command line: a thin shell over the library (parse, call, format). Subcommands
// arrive as their features land; each long job shows a progress bar on stderr (--quiet hides it).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "core/error.h"
#include "io/png.h"
#include "ops/ops.h"
#include "progress.h"
#include "pipelines/conformance.h"
#include "train/demo.h"
#include "bench_command.h"
#include "info_command.h"
#include "train_command.h"
#include "generate_command.h"
#ifdef STIPPLE_WITH_SERVER
#include "serve_command.h"
#endif
#include "classifier_command.h"
#include "eval_command.h"
#include "export_command.h"
#include "sr_command.h"
#include "tune_command.h"
#include "vae_command.h"
#include "clip_command.h"

namespace {

using stipple::cli::ProgressBar;

int run_demo_command(const stipple::train::DemoOptions& opt, const std::string& out, bool quiet) {
  std::unique_ptr<ProgressBar> bar;
  std::string phase;
  auto progress = [&](const char* p, int step, int total, float loss) {
    if (phase != p) {
      if (bar) bar->finish();
      phase = p;
      bar = std::make_unique<ProgressBar>(phase == "train" ? "training" : "sampling", total, !quiet);
    }
    char note[48] = "";
    if (phase == "train") std::snprintf(note, sizeof note, "loss %.4f", loss);
    bar->update(step, note);
  };
  const stipple::train::DemoResult r = stipple::train::run_demo(opt, progress);
  if (bar) bar->finish();
  // Generated images on top, real ones from the same procedure below, for comparison.
  const stipple::Tensor both = stipple::ops::concat({r.images, r.real_images}, 0);
  // Shown 4x larger (nearest neighbour) so the 16x16 shapes are visible.
  const stipple::Tensor big =
      stipple::ops::upsample_nearest2x(stipple::ops::upsample_nearest2x(both));
  const stipple::Tensor grid = stipple::io::make_grid(big, 8, 4);
  const std::string params = stipple::str_cat(
      "stipple demo: DDPM on 16x16 shapes (top: generated, bottom: drawn)\n", "Steps: ",
      opt.diffusion_steps, ", Sampler: DDPM, Seed: ", opt.seed, ", Size: 16x16, Train steps: ",
      opt.train_steps, ", Final loss: ", r.final_loss);
  stipple::io::write_png(out, stipple::io::tensor_to_image(grid), {{"parameters", params}});
  std::printf("wrote %s: %d generated shapes (top) and %d drawn ones (bottom)\n", out.c_str(),
              opt.num_images, opt.num_images);
  std::printf("training: %d steps in %.1f s (final loss %.4f); sampling: %d steps in %.1f s\n",
              opt.train_steps, r.train_seconds, r.final_loss, opt.diffusion_steps,
              r.sample_seconds);
  return 0;
}

int run_conformance_command(const std::string& dir) {
  const std::vector<stipple::conformance::CaseRef> cases = stipple::conformance::find_cases(dir);
  STIPPLE_CHECK(!cases.empty(), "no conformance cases under ", dir,
                " (expected folders like schedulers/<case>/ or rng/)");
  int total = 0, failed = 0;
  for (const auto& c : cases) {
    for (const auto& r : stipple::conformance::run_case(c)) {
      ++total;
      if (!r.passed) ++failed;
      std::printf("%-40s %-15s max rel error %-10.3g %s%s%s\n", r.name.c_str(), r.kind.c_str(),
                  r.max_error, r.passed ? "PASS" : "FAIL", r.detail.empty() ? "" : "  ",
                  r.detail.c_str());
    }
  }
  std::printf("%d of %d cases pass\n", total - failed, total);
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stipple: train and run diffusion models for image generation, in C++"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "stipple 0.1.0");

  stipple::train::DemoOptions demo;
  std::string demo_out = "demo.png";
  bool quiet = false;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo",
      "Train a small diffusion model from scratch on drawn 16x16 shapes, sample new ones from "
      "noise, and write them as a PNG grid (top: generated, bottom: drawn). About 20 s on two "
      "idle cores.");
  demo_cmd->add_option("--out", demo_out, "PNG to write")->capture_default_str();
  demo_cmd->add_option("--train-steps", demo.train_steps, "optimizer steps")
      ->capture_default_str()->check(CLI::Range(0, 1000000));
  demo_cmd->add_option("--batch-size", demo.batch_size, "images per training step")
      ->capture_default_str()->check(CLI::Range(1, 4096));
  demo_cmd->add_option("--num-images", demo.num_images, "images to generate")
      ->capture_default_str()->check(CLI::Range(1, 256));
  demo_cmd->add_option("--diffusion-steps", demo.diffusion_steps,
                       "T: noise levels of the linear schedule (training and sampling)")
      ->capture_default_str()->check(CLI::Range(2, 10000));
  demo_cmd->add_option("--seed", demo.seed, "seed for weights, noise and data")
      ->capture_default_str();
  demo_cmd->add_flag("--quiet,-q", quiet, "no progress bar");

  stipple::cli::InfoCommand info_cmd(app);
#ifdef STIPPLE_WITH_SERVER
  stipple::cli::ServeCommand serve_cmd(app);
#endif
  stipple::cli::ExportCommand export_cmd(app);
  stipple::cli::ConvertCommand convert_cmd(app);
  stipple::cli::BenchCommand bench_cmd(app);

  std::string conformance_dir;
  CLI::App* conformance_cmd = app.add_subcommand(
      "conformance",
      "Replay reference outputs computed by diffusers/torch (a folder laid out like "
      "../shared/conformance: scheduler trajectories, torch RNG draws) and print each case's max "
      "error relative to max(1, max|ref|) with PASS/FAIL; exits 1 if any case fails.");
  conformance_cmd->add_option("dir", conformance_dir, "conformance folder")->required();

  stipple::cli::TrainCommand train_cmd(app);
  using stipple::cli::GenerateCommand;
  GenerateCommand generate_cmd(app, GenerateCommand::Mode::kGenerate);
  GenerateCommand img2img_cmd(app, GenerateCommand::Mode::kImg2Img);
  GenerateCommand inpaint_cmd(app, GenerateCommand::Mode::kInpaint);
  stipple::cli::ClassifierCommand classifier_cmd(app);
  stipple::cli::EvalCommand eval_cmd(app);
  stipple::cli::VaeCommand vae_cmd(app);
  stipple::cli::ClipCommand clip_cmd(app);
  stipple::cli::SrTrainCommand train_sr_cmd(app);
  stipple::cli::UpscaleCommand upscale_cmd(app);
  stipple::cli::TuneCommand tune_cmd(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*demo_cmd) return run_demo_command(demo, demo_out, quiet);
    if (info_cmd.selected()) return info_cmd.run();
    if (export_cmd.selected()) return export_cmd.run();
    if (convert_cmd.selected()) return convert_cmd.run();
    if (bench_cmd.selected()) return bench_cmd.run();
    if (*conformance_cmd) return run_conformance_command(conformance_dir);
    if (train_cmd.selected()) return train_cmd.run();
    if (generate_cmd.selected()) return generate_cmd.run();
#ifdef STIPPLE_WITH_SERVER
    if (serve_cmd.selected()) return serve_cmd.run();
#endif
    if (img2img_cmd.selected()) return img2img_cmd.run();
    if (inpaint_cmd.selected()) return inpaint_cmd.run();
    if (classifier_cmd.selected()) return classifier_cmd.run();
    if (eval_cmd.selected()) return eval_cmd.run();
    if (vae_cmd.selected()) return vae_cmd.run();
    if (clip_cmd.selected()) return clip_cmd.run();
    if (train_sr_cmd.selected()) return train_sr_cmd.run();
    if (upscale_cmd.selected()) return upscale_cmd.run();
    if (tune_cmd.selected()) return tune_cmd.run();
  } catch (const stipple::Error& e) {
    std::fprintf(stderr, "stipple: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stipple: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

#include "tune_command.h"

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "train/evaluate.h"
#include "progress.h"
#include "stop_signal.h"

namespace stipple::cli {

TuneCommand::TuneCommand(CLI::App& app) {
  train::TuneConfig& c = config_;
  cmd_ = app.add_subcommand(
      "tune",
      "Fine-tune a class-conditional generator (a stipple train folder) on feedback from a "
      "scorer over its own samples: each round draws candidates per class and scores them by "
      "the classifier's log p(class | x); --method dpo trains on best-vs-worst pairs "
      "(Diffusion-DPO, anchored to the start by --beta), rwr on all of them weighted by "
      "exp(reward / --temperature) (anchored by --anchor). OUT is a model folder (stipple eval / "
      "generate --model OUT) with log.csv. Ctrl-C saves at the round's end; --resume continues "
      "exactly.");
  cmd_->add_option("--method", c.method,
                   "dpo: Diffusion-DPO on best-vs-worst pairs; rwr: reward-weighted regression")
      ->capture_default_str()
      ->check(CLI::IsMember({"dpo", "rwr"}));
  cmd_->add_option("--model", c.model_dir, "the starting generator (a stipple train folder)");
  cmd_->add_option("--classifier", c.classifier_dir,
                   "the scorer: a clean-image classifier folder (stipple train-classifier)");
  cmd_->add_option("--out", c.out_dir, "output folder (the tuned model)")->required();
  cmd_->add_flag("--resume", resume_, "continue the run in --out (its settings; --steps may grow)");
  cmd_->add_option("--classes", classes_, "tune only these classes (names or ids; default all)");
  cmd_->add_option("--steps", c.steps, "AdamW steps in all")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--candidates", c.candidates, "images drawn per class and round")
      ->capture_default_str()
      ->check(CLI::Range(2, 1024));
  cmd_->add_option("--min-gap", c.min_gap,
                   "reward margin for a best-vs-worst pair (nats of log-probability)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--beta", c.beta,
                   "DPO's KL weight: larger keeps the model nearer the start")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--temperature", c.temperature,
                   "rwr: candidates weighted by exp(reward / temperature)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--anchor", c.anchor, "rwr: L2 weight on the distance from the start")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--images-per-step", c.images_per_step, "rwr: candidates in each step")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--lr", c.lr, "learning rate (AdamW; warm-up, then constant)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--warmup", c.warmup, "warm-up steps")->capture_default_str();
  cmd_->add_option("--updates-per-round", c.updates_per_round,
                   "AdamW steps on each round's pairs")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  cmd_->add_option("--pairs-per-step", c.pairs_per_step, "pairs in each step's batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--timesteps-per-image", c.timesteps_per_image,
                   "(t, noise) draws per pair (dpo) or image (rwr) in a step")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--sampler", c.sampler, "sampler for the candidates")->capture_default_str();
  cmd_->add_option("--sample-steps", c.sample_steps, "sampling steps for the candidates")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--cfg", c.cfg, "classifier-free guidance for the candidates")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 100.0));
  cmd_->add_option("--checkpoint-every", c.checkpoint_every,
                   "steps between checkpoints (at a round's end)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--seed", c.seed, "candidates, pairs' noise and order")->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
}

int TuneCommand::run() {
  if (!resume_) {
    STIPPLE_CHECK(!config_.model_dir.empty(), "tune: give --model (the generator to tune)");
    STIPPLE_CHECK(!config_.classifier_dir.empty(),
                  "tune: give --classifier (the scorer: a stipple train-classifier folder)");
  }
  // class names -> ids through the model's id2label
  if (!classes_.empty()) {
    STIPPLE_CHECK(!resume_, "tune: --classes is the run's own setting; a resume keeps it");
    const train::ClassGenerator g = train::ClassGenerator::load(config_.model_dir);
    config_.classes.clear();
    for (const std::string& name : classes_) {
      int64_t id = -1;
      for (size_t i = 0; i < g.class_names().size(); ++i)
        if (g.class_names()[i] == name) id = static_cast<int64_t>(i);
      if (id < 0 && !name.empty() && name.find_first_not_of("0123456789") == std::string::npos &&
          name.size() < 10)
        id = std::stoll(name);
      std::string known;
      for (const auto& n : g.class_names()) known += (known.empty() ? "" : ", ") + n;
      STIPPLE_CHECK(id >= 0 && id < g.num_classes(), "tune: unknown class \"", name,
                    "\" (the model's classes: ", known, ", or ids 0-", g.num_classes() - 1, ")");
      config_.classes.push_back(id);
    }
  }
  TrainingProgress shown(quiet_);
  auto progress = [&](const train::TuneProgress& p) {
    char note[96];
    std::snprintf(note, sizeof note, "round %lld, %lld pairs, reward %.3f, loss %.4g",
                  static_cast<long long>(p.round), static_cast<long long>(p.pairs), p.reward,
                  p.loss);
    shown.update(p.step, p.total, note);
  };
  auto message = [&](const std::string& s) { shown.message(s); };
  install_stop_handlers();
  const train::TuneResult r =
      train::tune(config_, resume_, progress, message, stop_requested);
  remove_stop_handlers();
  shown.finish();
  if (r.stopped) {
    std::printf("stopped at step %lld; continue with: stipple tune --out %s --resume\n",
                static_cast<long long>(r.steps), config_.out_dir.c_str());
    return 0;
  }
  if (!r.round_reward.empty())
    std::printf("mean candidate reward: first round %.4f, last round %.4f (%zu rounds)\n",
                r.round_reward.front(), r.round_reward.back(), r.round_reward.size());
  std::printf("tuned %lld steps in %lld rounds (%.0f s); wrote the model to %s\n",
              static_cast<long long>(r.steps), static_cast<long long>(r.rounds), r.seconds,
              config_.out_dir.c_str());
  return 0;
}

}  // namespace stipple::cli

#include "clip_command.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>

#include "progress.h"
#include "stop_signal.h"
#include "training_job.h"
#include "train/emoji_data.h"

namespace stipple::cli {
ClipCommand::ClipCommand(CLI::App& app) {
  train::ClipTrainConfig& c = config_;
  cmd_ = app.add_subcommand(
      "train-clip",
      "Train a small CLIP (text and image towers) contrastively on the emoji images and their "
      "CLDR captions (the held-out skin-tone images are never used), then write OUT/tokenizer, "
      "OUT/text_encoder, OUT/image_encoder and OUT/metrics.json (image -> caption retrieval). "
      "Ctrl-C saves; --resume continues exactly.");
  cmd_->add_option("--out", c.out_dir, "output folder")->required();
  cmd_->add_option("--tokenizer", c.base_tokenizer,
                   "a CLIP tokenizer folder (OpenAI's vocab.json and merges.txt) to cut the "
                   "vocabulary from, e.g. ../shared/clip-tokenizer");
  cmd_->add_option("--data", c.data_dir,
                   "emoji data folder (holds node_modules/); default " +
                       train::EmojiData::default_dir());
  cmd_->add_flag("--resume", resume_, "continue the run in --out (its settings; --steps may grow)");
  cmd_->add_option("--width", c.width, "hidden size of both towers")
      ->capture_default_str()
      ->check(CLI::Range(8, 4096));
  cmd_->add_option("--layers", c.layers, "transformer layers per tower")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--heads", c.heads, "attention heads")->capture_default_str()->check(
      CLI::Range(1, 256));
  cmd_->add_option("--projection-dim", c.projection_dim, "joint embedding size")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--max-length", c.max_length, "text positions")
      ->capture_default_str()
      ->check(CLI::Range(4, 256));
  cmd_->add_option("--patch", c.patch, "image patch size (divides 64)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--steps", c.steps, "optimizer steps")->capture_default_str()->check(
      CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--batch-size", c.batch_size, "pairs per step")
      ->capture_default_str()
      ->check(CLI::Range(2, 4096));
  cmd_->add_option("--lr", c.lr, "peak learning rate (AdamW; warm-up, then cosine)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--style-prob", c.style_prob,
                   "probability of adding the vendor's style word to a caption")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd_->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--limit-images", c.limit_images, "train on the first N images only (tests)")
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--seed", c.seed, "weights, data order and captions")->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
  add_dist_timeout_option(cmd_, dist_timeout_);
}

int ClipCommand::run() {
  TrainingJob job(dist_timeout_);  // one process, or a rank of an mpirun job
  return job.run("train-clip", "--out " + config_.out_dir + " --resume", config_.batch_size,
                 [&] { return train(job); });
}

int ClipCommand::train(TrainingJob& job) {
  TrainingProgress shown(quiet_ || !job.root());
  auto progress = [&](const train::ClipProgress& p) {
    char note[64];
    std::snprintf(note, sizeof note, "loss %.4f, batch top-1 %.3f", p.loss, p.accuracy);
    shown.update(p.step, p.total, note);
  };
  auto message = [&](const std::string& s) { shown.message(s); };
  install_stop_handlers();
  const train::ClipMetrics m =
      train::train_clip(config_, resume_, progress, message, stop_requested, &job.comm());
  remove_stop_handlers();
  shown.finish();
  if (!job.root()) return 0;
  if (m.candidates == 0) {  // stopped early (here or on another rank): no evaluation
    std::printf("stopped; continue with: stipple train-clip --out %s --resume\n",
                config_.out_dir.c_str());
    return 0;
  }
  std::printf("image -> caption retrieval among %lld captions:\n",
              static_cast<long long>(m.candidates));
  std::printf("  training images: top-1 %.1f%%, top-5 %.1f%%\n", 100 * m.train_top1,
              100 * m.train_top5);
  std::printf("  held-out images: top-1 %.1f%%, top-5 %.1f%% (emoji right %.1f%%, tone right "
              "%.1f%%)\n",
              100 * m.heldout_top1, 100 * m.heldout_top5, 100 * m.heldout_emoji,
              100 * m.heldout_tone);
  std::printf("wrote %s/tokenizer, text_encoder, image_encoder, metrics.json\n",
              config_.out_dir.c_str());
  return 0;
}

}  // namespace stipple::cli

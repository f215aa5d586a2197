#include "vae_command.h"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>

#include "progress.h"
#include "stop_signal.h"
#include "training_job.h"
#include "train/emoji_data.h"

namespace stipple::cli {
VaeCommand::VaeCommand(CLI::App& app) {
  train::VaeTrainConfig& c = config_;
  cmd_ = app.add_subcommand(
      "train-vae",
      "Train an AutoencoderKL on the emoji images (64x64 RGB on white; the held-out skin-tone "
      "images are never used) with L1 + edge + KL losses, then write OUT/vae (diffusers layout, "
      "with the latent scaling factor), OUT/recon.png and OUT/metrics.json (PSNR/SSIM on the "
      "held-out images). Ctrl-C saves; --resume continues exactly.");
  cmd_->add_option("--out", c.out_dir, "output folder")->required();
  cmd_->add_option("--data", c.data_dir,
                   "emoji data folder (holds node_modules/); default " +
                       train::EmojiData::default_dir());
  cmd_->add_flag("--resume", resume_, "continue the run in --out (its settings; --steps may grow)");
  cmd_->add_option("--channels", c.block_out_channels,
                   "channels per level; n levels downsample by 2^(n-1)")
      ->capture_default_str()
      ->expected(1, 5);
  cmd_->add_option("--layers-per-block", c.layers_per_block, "resnets per encoder level")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  cmd_->add_option("--latent-channels", c.latent_channels, "latent channels")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--norm-groups", c.norm_num_groups, "group norm groups")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd_->add_option("--steps", c.steps, "optimizer steps")->capture_default_str()->check(
      CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--batch-size", c.batch_size, "images per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd_->add_option("--lr", c.lr, "peak learning rate (AdamW; warm-up, then cosine)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--kl-weight", c.kl_weight, "weight of the KL term")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--edge-weight", c.edge_weight, "weight of the edge (gradient L1) term")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd_->add_option("--limit-images", c.limit_images, "train on the first N images only (tests)")
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--seed", c.seed, "weights, data order and noise")->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
  add_dist_timeout_option(cmd_, dist_timeout_);
}

int VaeCommand::run() {
  TrainingJob job(dist_timeout_);  // one process, or a rank of an mpirun job
  return job.run("train-vae", "--out " + config_.out_dir + " --resume", config_.batch_size,
                 [&] { return train(job); });
}

int VaeCommand::train(TrainingJob& job) {
  TrainingProgress shown(quiet_ || !job.root());
  auto progress = [&](const train::VaeProgress& p) {
    char note[64];
    std::snprintf(note, sizeof note, "loss %.4f, L1 %.4f", p.loss, p.rec);
    shown.update(p.step, p.total, note);
  };
  auto message = [&](const std::string& s) { shown.message(s); };
  install_stop_handlers();
  const train::VaeMetrics m =
      train::train_vae(config_, resume_, progress, message, stop_requested, &job.comm());
  remove_stop_handlers();
  shown.finish();
  if (!job.root()) return 0;
  if (m.heldout_images == 0) {  // stopped early (here or on another rank): no evaluation
    std::printf("stopped; continue with: stipple train-vae --out %s --resume\n",
                config_.out_dir.c_str());
    return 0;
  }
  std::printf("held-out images (%lld, never trained on): PSNR %.2f dB, SSIM %.4f\n",
              static_cast<long long>(m.heldout_images), m.psnr, m.ssim);
  std::printf("training images: PSNR %.2f dB; latent scaling_factor %.5f\n", m.train_psnr,
              m.scaling_factor);
  std::printf("wrote %s/vae, %s/recon.png, %s/metrics.json\n", config_.out_dir.c_str(),
              config_.out_dir.c_str(), config_.out_dir.c_str());
  return 0;
}

}  // namespace stipple::cli

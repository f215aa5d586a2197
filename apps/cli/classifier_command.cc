#include "classifier_command.h"

#include <cstdio>
#include <memory>

#include "core/error.h"
#include "progress.h"
#include "train/datasets.h"
#include "training_job.h"

namespace stipple::cli {

ClassifierCommand::ClassifierCommand(CLI::App& app) {
  train::ClassifierTrainConfig& c = config_;
  cmd_ = app.add_subcommand(
      "train-classifier",
      "Train a small CNN classifier on Fashion-MNIST (60,000 training images framed to 32x32), "
      "print its accuracy on the 10,000 test images and write OUT/config.json and "
      "OUT/model.safetensors. `stipple eval` uses it to score generated images (CAS, FID_feat). "
      "3 epochs take a few minutes on two cores.");
  cmd_->add_option("--out", c.out_dir, "output folder")->required();
  cmd_->add_option("--data-dir", c.data_dir, "folder with the *-idx?-ubyte.gz files")
      ->capture_default_str();
  cmd_->add_option("--epochs", c.epochs, "passes over the training images")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--batch-size", c.batch_size, "images per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 60000));
  cmd_->add_option("--lr", c.lr, "peak learning rate (AdamW; warm-up, then cosine to 0)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--weight-decay", c.weight_decay, "AdamW's decoupled weight decay")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--convs-per-stage", c.model.convs_per_stage,
                   "3x3 convolutions at each of the 3 resolutions (32, 16, 8)")
      ->capture_default_str()
      ->check(CLI::Range(1, 8));
  cmd_->add_flag("--hflip", c.hflip, "random horizontal flips");
  cmd_->add_flag("--noisy", c.noisy,
                 "a noisy-image classifier for classifier guidance: trained on x_t at random "
                 "timesteps of the denoiser's schedule (linear betas 1e-4..0.02, 1000 steps), "
                 "with t as an input");
  cmd_->add_flag("--half", c.half, "store the weights in f16");
  cmd_->add_option("--seed", c.seed, "weights and data order")->capture_default_str();
  cmd_->add_option("--limit-images", c.limit_images, "train on the first N images only (tests)")
      ->check(CLI::NonNegativeNumber);
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
  add_dist_timeout_option(cmd_, dist_timeout_);
}

int ClassifierCommand::run() {
  TrainingJob job(dist_timeout_);  // one process, or a rank of an mpirun job
  quiet_ = quiet_ || !job.root();
  return job.run("train-classifier", "a new run (it has no checkpoints)", config_.batch_size,
                 [&] { return train(job.comm()); });
}

int ClassifierCommand::train(train::Communicator& comm) {
  std::unique_ptr<ProgressBar> bar;
  auto progress = [&](const train::ClassifierProgress& p) {
    if (!bar) bar = std::make_unique<ProgressBar>("training", static_cast<int>(p.total), !quiet_);
    char note[64];
    std::snprintf(note, sizeof note, "epoch %d loss %.4f acc %.3f", p.epoch, p.loss, p.accuracy);
    bar->update(static_cast<int>(p.step), note);
  };
  auto message = [&](const std::string& s) {
    if (bar) bar->finish();
    if (!quiet_) std::fprintf(stderr, "%s\n", s.c_str());
  };
  const train::ClassifierTrainResult r =
      train::train_classifier(config_, progress, message, &comm);
  if (bar) bar->finish();
  if (!comm.is_root()) return 0;
  std::printf("trained %lld steps in %.1f s; last epoch: loss %.4f, train accuracy %.2f%%\n",
              static_cast<long long>(r.steps), r.train_seconds, r.train_loss,
              100.0 * r.train_accuracy);
  std::printf("test accuracy: %.2f%% (10,000 images%s)\n", 100.0 * r.test_accuracy,
              config_.noisy ? ", clean: t = 0" : "");
  const auto& names = train::FashionMnist::class_names();
  for (size_t c = 0; c < r.test_accuracy_per_class.size(); ++c)
    std::printf("  %-12s %.2f%%\n", c < names.size() ? names[c].c_str() : "?",
                100.0 * r.test_accuracy_per_class[c]);
  if (!r.test_accuracy_per_bucket.empty()) {
    std::printf("test accuracy on noisy images (2,000 test images, t drawn in each bucket):\n");
    const int T = config_.num_train_timesteps;
    for (size_t k = 0; k < r.test_accuracy_per_bucket.size(); ++k)
      std::printf("  t in [%4d, %4d)  %.2f%%\n", static_cast<int>(k) * T / 10,
                  static_cast<int>(k + 1) * T / 10, 100.0 * r.test_accuracy_per_bucket[k]);
  }
  std::printf("wrote %s\n", config_.out_dir.c_str());
  return 0;
}

}  // namespace stipple::cli

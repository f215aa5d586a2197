#include "train_command.h"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "device_option.h"
#include "io/json.h"
#include "ops/kernels.h"
#include "progress.h"
#include "train/train_dit.h"
#include "training_job.h"

namespace stipple::cli {
namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_sigint(int) {
  // The first Ctrl-C stops after the current step with a checkpoint; a second one kills.
  g_stop = true;
  std::signal(SIGINT, SIG_DFL);
}

// SIGUSR1 stops after the current step with a checkpoint too: under mpirun, which forwards
// SIGUSR1 to every rank but turns Ctrl-C into SIGTERM followed shortly by SIGKILL.
extern "C" void on_sigusr1(int) { g_stop = true; }

// How each flag that maps to a TrainConfig key behaves on --resume.
enum class OnResume {
  kFixed,         // fixes the model, the data or their order: must equal the checkpoint's
  kOptimisation,  // taken, but the run then differs from an uninterrupted one
  kRun            // taken (cadence, outputs)
};
struct FlagKey {
  const char* flag;
  const char* key;
  OnResume kind;
};
constexpr FlagKey kFlags[] = {
    {"--depth", "depth", OnResume::kFixed},
    {"--width", "width", OnResume::kFixed},
    {"--heads", "heads", OnResume::kFixed},
    {"--patch", "patch", OnResume::kFixed},
    {"--learned-sigma", "learned_sigma", OnResume::kFixed},
    {"--batch-size", "batch_size", OnResume::kFixed},
    {"--seed", "seed", OnResume::kFixed},
    {"--no-pad", "pad_to_32", OnResume::kFixed},
    {"--hflip", "hflip", OnResume::kFixed},
    {"--downsample", "downsample", OnResume::kFixed},
    {"--prediction", "prediction_type", OnResume::kFixed},
    {"--beta-schedule", "beta_schedule", OnResume::kFixed},
    {"--timesteps", "num_train_timesteps", OnResume::kFixed},
    {"--data", "data", OnResume::kFixed},
    {"--vae", "vae_dir", OnResume::kFixed},
    {"--clip", "clip_dir", OnResume::kFixed},
    {"--limit-images", "limit_images", OnResume::kFixed},
    {"--init-from", "init_from", OnResume::kFixed},
    {"--steps", "steps", OnResume::kOptimisation},
    {"--lr", "lr", OnResume::kOptimisation},
    {"--warmup", "warmup", OnResume::kOptimisation},
    {"--lr-schedule", "lr_schedule", OnResume::kOptimisation},
    {"--min-lr-ratio", "min_lr_ratio", OnResume::kOptimisation},
    {"--weight-decay", "weight_decay", OnResume::kOptimisation},
    {"--grad-clip", "grad_clip", OnResume::kOptimisation},
    {"--ema-decay", "ema_decay", OnResume::kOptimisation},
    {"--label-drop", "label_drop_prob", OnResume::kOptimisation},
    {"--snr-gamma", "snr_gamma", OnResume::kOptimisation},
    {"--matmul-precision", "matmul_precision", OnResume::kOptimisation},
    {"--data-dir", "data_dir", OnResume::kRun},
    {"--checkpoint-every", "checkpoint_every", OnResume::kRun},
    {"--sample-every", "sample_every", OnResume::kRun},
    {"--log-every", "log_every", OnResume::kRun},
    {"--eval-every", "eval_every", OnResume::kRun},
    {"--eval-prompts", "eval_prompts", OnResume::kRun},
    {"--keep-checkpoints", "keep_checkpoints", OnResume::kRun},
    {"--sample-steps", "sample_steps", OnResume::kRun},
    {"--samples-per-class", "samples_per_class", OnResume::kRun},
    {"--cfg", "sample_cfg", OnResume::kRun},
};

}  // namespace

TrainCommand::TrainCommand(CLI::App& app) {
  train::TrainConfig& c = config_;
  cmd_ = app.add_subcommand(
      "train",
      "Train a class-conditional DiT from scratch on Fashion-MNIST (28x28 framed to 32x32). "
      "Writes OUT/checkpoint-<step>/ (diffusers layout: EMA weights, scheduler, plus "
      "training_state.safetensors), OUT/latest, OUT/log.csv, OUT/loss.png, OUT/samples/ (a row "
      "per class) and, at the end, OUT/export/ (f16 weights). --resume continues a run exactly; "
      "Ctrl-C stops with a checkpoint.");
  cmd_->add_option("--data", c.data, "data set")
      ->capture_default_str()
      ->check(CLI::IsMember({"fashion-mnist", "emoji"}));
  cmd_->add_option("--data-dir", c.data_dir,
                   "folder with the *-idx?-ubyte.gz files (emoji: the folder holding "
                   "node_modules/, default /opt/stipple-data/emoji)")
      ->capture_default_str();
  cmd_->add_option("--vae", c.vae_dir,
                   "emoji: the AutoencoderKL folder whose latents the DiT learns (train-vae)");
  cmd_->add_option("--clip", c.clip_dir,
                   "emoji: the CLIP folder whose text encoder conditions the DiT (train-clip)");
  cmd_->add_option("--limit-images", c.limit_images,
                   "emoji: train on the first N images only (tests)")
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--out", c.out_dir, "output folder (default on --resume: the run's folder)")
      ->capture_default_str();
  cmd_->add_option("--resume", resume_,
                   "continue from a checkpoint folder (OUT/latest or OUT/checkpoint-<step>)");
  cmd_->add_option("--init-from", c.init_from,
                   "start a new run from the weights of a model folder stipple exported (or a "
                   "checkpoint): its transformer's shape sets --depth/--width/--heads/--patch, "
                   "the EMA starts from it, the optimizer afresh (a larger --depth grows the "
                   "transformer: new blocks are copies that start closed, adding nothing); emoji: "
                   "its vae/ and CLIP too unless --vae/--clip are given")
      ->excludes("--resume");
  // model
  cmd_->add_option("--depth", c.depth, "DiT blocks")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--width", c.width, "hidden size (a multiple of --heads)")
      ->capture_default_str()
      ->check(CLI::Range(8, 4096));
  cmd_->add_option("--heads", c.heads, "attention heads")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--patch", c.patch, "patch size (divides 32: 2, 4 or 8)")
      ->capture_default_str()
      ->check(CLI::Range(1, 32));
  cmd_->add_flag("--learned-sigma", c.learned_sigma,
                 "2x output channels as the released DiTs (the extra ones are not trained)");
  cmd_->add_flag("--no-pad", no_pad_, "train on 28x28 (patch must divide 28)");
  cmd_->add_flag("--hflip", c.hflip, "random horizontal flips");
  cmd_->add_option("--downsample", c.downsample,
                   "train at 1/N size (block means): 2 with --no-pad gives 14x14 images, the "
                   "base of a cascade (stipple generate --upscaler)")
      ->capture_default_str()
      ->check(CLI::IsMember({1, 2, 4}));
  // optimisation
  cmd_->add_option("--steps", c.steps, "optimizer steps")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{100000000}));
  cmd_->add_option("--batch-size", c.batch_size, "images per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd_->add_option("--lr", c.lr, "peak learning rate (AdamW)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd_->add_option("--warmup", c.warmup, "linear warm-up steps")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--lr-schedule", c.lr_schedule, "after warm-up")
      ->capture_default_str()
      ->check(CLI::IsMember({"cosine", "constant"}));
  cmd_->add_option("--min-lr-ratio", c.min_lr_ratio, "cosine ends at this fraction of --lr")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd_->add_option("--weight-decay", c.weight_decay, "AdamW's decoupled weight decay")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--grad-clip", c.grad_clip, "max global gradient norm (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--ema-decay", c.ema_decay, "EMA of the weights (warmed up as diffusers)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.999999));
  cmd_->add_option("--label-drop", c.label_drop_prob,
                   "probability of the null class, for classifier-free guidance")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 0.99));
  cmd_->add_option("--snr-gamma", c.snr_gamma, "min-SNR-gamma loss weights (0: off; 5 usual)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--matmul-precision", c.matmul_precision,
                   "the step's matmul and linear products: bf16 rounds their operands to bf16 "
                   "and sums in f32 (about twice as fast on CPUs with AVX512-BF16 or AMX; "
                   "weights, optimiser and EMA stay f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
  cmd_->add_option("--prediction", c.prediction_type, "what the model predicts")
      ->capture_default_str()
      ->check(CLI::IsMember({"epsilon", "v_prediction"}));
  cmd_->add_option("--beta-schedule", c.beta_schedule, "noise schedule")
      ->capture_default_str()
      ->check(CLI::IsMember({"linear", "squaredcos_cap_v2"}));
  cmd_->add_option("--timesteps", c.num_train_timesteps, "T, training noise levels")
      ->capture_default_str()
      ->check(CLI::Range(10, 100000));
  // cadence and outputs
  cmd_->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints")
      ->capture_default_str();
  cmd_->add_option("--sample-every", c.sample_every, "steps between sample grids (0: at the end)")
      ->capture_default_str();
  cmd_->add_option("--log-every", c.log_every, "steps per log.csv row and loss.png update")
      ->capture_default_str();
  cmd_->add_option("--keep-checkpoints", c.keep_checkpoints, "newest kept (0: all)")
      ->capture_default_str();
  cmd_->add_option("--eval-every", c.eval_every,
                   "emoji: score a checkpoint every N steps into OUT/eval.csv, as stipple eval "
                   "does (0: never)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd_->add_option("--eval-prompts", c.eval_prompts, "emoji: prompts per evaluation")
      ->capture_default_str()
      ->check(CLI::Range(2, 1911));
  cmd_->add_option("--sample-steps", c.sample_steps, "DDIM steps for the grids")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd_->add_option("--samples-per-class", c.samples_per_class, "grid columns")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd_->add_option("--cfg", c.sample_cfg, "classifier-free guidance scale for the grids")
      ->capture_default_str();
  cmd_->add_option("--seed", c.seed, "weights, data order, noise")->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no progress bar or messages");
  add_dist_timeout_option(cmd_, dist_timeout_);
  add_device_option(cmd_, device_, "training");
}

train::TrainConfig TrainCommand::resume_config() const {
  const train::TrainConfig saved = train::Trainer::read_checkpoint_config(resume_);
  const nlohmann::json given = config_.to_json(), kept = saved.to_json();
  nlohmann::json merged = kept;
  bool changes_optimisation = false;
  for (const FlagKey& f : kFlags) {
    if (cmd_->count(f.flag) == 0 || given[f.key] == kept[f.key]) continue;
    STIPPLE_CHECK(f.kind != OnResume::kFixed, "cannot change ", f.flag,
                  " when resuming: the checkpoint was trained with ", f.key, " = ",
                  kept[f.key].dump(), " (start a new run with another --out instead)");
    if (f.kind == OnResume::kOptimisation) changes_optimisation = true;
    merged[f.key] = given[f.key];
  }
  // The run's folder: --out, else the folder that holds the checkpoint.
  merged["out_dir"] = cmd_->count("--out")
                          ? config_.out_dir
                          : std::filesystem::canonical(resume_).parent_path().string();
  if (changes_optimisation && !quiet_)
    std::fprintf(stderr,
                 "note: optimisation flags differ from the checkpoint's; the resumed run will "
                 "not match an uninterrupted one\n");
  return train::TrainConfig::from_json(merged, "resumed training config");
}

void TrainCommand::adopt_init_shape() {
  if (config_.init_from.empty()) return;
  const std::string path = config_.init_from + "/transformer/config.json";
  STIPPLE_CHECK(std::filesystem::is_regular_file(path), "--init-from ", config_.init_from,
                ": it has no transformer/config.json (give a model folder that stipple train "
                "exported, or one of its checkpoints)");
  const io::JsonConfig j = io::JsonConfig::from_file(path);
  auto take = [&](const char* flag, int& value, int from_file) {
    if (cmd_->count(flag) == 0) value = from_file;
  };
  const int heads = static_cast<int>(j.integer("num_attention_heads"));
  take("--depth", config_.depth, static_cast<int>(j.integer("num_layers")));
  take("--heads", config_.heads, heads);
  take("--width", config_.width, heads * static_cast<int>(j.integer("attention_head_dim")));
  take("--patch", config_.patch, static_cast<int>(j.integer("patch_size")));
  if (cmd_->count("--learned-sigma") == 0)
    config_.learned_sigma = j.integer("out_channels", 0) == 2 * j.integer("in_channels", 0);
}

int TrainCommand::run() {
  config_.pad_to_32 = !no_pad_;
  TrainingJob job(dist_timeout_);
  quiet_ = quiet_ || !job.root();  // rank 0 speaks
  // The folder a failed run continues from: --out, else the resumed run's.
  const std::string out = resume_.empty() || cmd_->count("--out")
                              ? config_.out_dir
                              : std::filesystem::path(resume_).parent_path().string();
  return job.run("train", "--resume " + out + "/latest", [&] {
    if (resume_.empty()) adopt_init_shape();
    const train::TrainConfig config = resume_.empty() ? config_ : resume_config();
    const Device device = job.use_device(device_);
    job.announce(config.batch_size);
    return train(job.comm(), config, device);
  });
}

int TrainCommand::train(train::Communicator& comm, const train::TrainConfig& config,
                        Device device) {

  std::unique_ptr<ProgressBar> bar;
  int64_t first_step = -1;
  train::TrainCallbacks cb;
  cb.progress = [&](const train::TrainProgress& p) {
    if (!bar) {
      first_step = p.step - 1;
      const std::string label =
          first_step > 0 ? str_cat("training (from step ", first_step, ")") : "training";
      bar = std::make_unique<ProgressBar>(label, static_cast<int>(p.total - first_step), !quiet_);
    }
    char note[64];
    std::snprintf(note, sizeof note, "loss %.4f, lr %.2e", p.loss, p.lr);
    bar->update(static_cast<int>(p.step - first_step), note);
  };
  cb.message = [&](const std::string& m) {
    if (!quiet_) std::fprintf(stderr, "\r\033[K%s\n", m.c_str());
  };
  cb.should_stop = [] { return g_stop.load(); };
  g_stop = false;
  std::signal(SIGINT, on_sigint);
  std::signal(SIGUSR1, on_sigusr1);
  if (config.matmul_precision == "bf16" && !quiet_ && device == Device::kCPU &&
      !active_kernels().native_bf16_matmul)
    std::fprintf(stderr,
                 "note: this CPU has no bf16 instructions (AVX512-BF16, AMX): bf16 matmuls run "
                 "as f32 products of the rounded operands, no faster than f32\n");
  const std::unique_ptr<train::Trainer> trainer =
      train::train_dit(config, resume_, cb, &comm, device);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGUSR1, SIG_DFL);
  if (!comm.is_root()) return 0;
  const train::TrainConfig& c = trainer->config();
  const bool stopped = trainer->step() < c.steps;  // on any rank's signal
  if (bar && stopped)
    bar->stop();  // the step it stopped at, not 100%
  else if (bar)
    bar->finish();

  const int64_t params = trainer->model().module().num_parameters();
  std::printf(
      "%s at step %lld of %lld: DiT depth %d, width %d, heads %d, patch %d (%.2fM "
      "parameters)\n",
      stopped ? "stopped" : "finished", static_cast<long long>(trainer->step()),
      static_cast<long long>(c.steps), c.depth, c.width, c.heads, c.patch, params / 1e6);
  std::printf("checkpoint: %s/latest (resume with --resume %s/latest)\n", c.out_dir.c_str(),
              c.out_dir.c_str());
  std::printf("logs: %s/log.csv, %s/loss.png; samples: %s/samples/\n", c.out_dir.c_str(),
              c.out_dir.c_str(), c.out_dir.c_str());
  if (!stopped && c.export_f16) std::printf("export (f16): %s/export\n", c.out_dir.c_str());
  if (comm.size() > 1)
    std::printf("gradient all-reduce on rank 0: %.2f s of %.2f s training (%.1f%%), %d ranks\n",
                trainer->allreduce_seconds(), trainer->last_run_seconds(),
                100.0 * trainer->allreduce_seconds() / std::max(1e-9, trainer->last_run_seconds()),
                comm.size());
  return 0;
}

}  // namespace stipple::cli

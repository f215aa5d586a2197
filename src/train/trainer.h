// The trainer: class-conditional diffusion training from scratch (DDPM's objective, Ho et al.
// 2020, Alg. 1, with DiT's recipe: AdamW, EMA of the weights, class dropout for classifier-free
// guidance), with checkpoints in the diffusers layout that resume exactly.
//
// One step (Trainer::train_step):
//   x0, y   = the next shuffled minibatch                      [B, C, H, W], [B]
//   t       ~ U{0, ..., T-1};  eps ~ N(0, I)                   [B], [B, C, H, W]
//   y       = null class (num_classes) with probability p       (Ho & Salimans 2022, sec. 3.2)
//   x_t     = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps              (DDPM eq. 4)
//   loss    = mean_b w_b |model(x_t, t, y)[:, :C] - target|^2   (target eps or v; w = 1 or
//                                                                min-SNR-gamma, Hang et al. 2023)
//   AdamW step at lr(step) (linear warm-up, then cosine or constant), after clipping the global
//   gradient norm; then the EMA of the weights.
// Everything random comes from two Generators (the data order's and the step's), whose states are
// saved, so resuming at step k reproduces an uninterrupted run bit for bit (with the same thread
// count: parallel reductions may group sums differently with another one).
//
// On disk (out_dir):
//   checkpoint-<step>/                    a diffusers DiT pipeline folder plus training state:
//     model_index.json                    DiTPipeline, id2label = the class names
//     transformer/config.json             the Denoiser's config
//     transformer/diffusion_pytorch_model.safetensors   EMA weights (f32)
//     scheduler/scheduler_config.json     DDIMScheduler over the training schedule
//     training_state.safetensors          raw weights, AdamW and EMA state, RNG states, data
//                                         position, step; the TrainConfig in its metadata
//   latest -> checkpoint-<step>           a symlink, replaced atomically
//   export/                               the final model: EMA weights in f16, no training state
//   log.csv, loss.png, samples/step-<step>.png, train_config.json
// Every file is written to a temporary name and renamed (io/atomic_file.h).
//
// Data parallel (train/distributed.h): with a Communicator of N ranks, every rank runs this same
// Trainer, trains on its shard of each global batch and sums gradients with the others; rank 0
// alone writes checkpoints, logs, sample grids and evaluations. The checkpoint is the same at any
// rank count, so a run resumes at another one (the same run up to the order of the gradient
// sums).
//
// Leaves out: gradient accumulation, mixed precision, and the
// learned-variance (VLB) term of improved DDPM: with learned sigma the extra channels get no loss.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"
#include "nn/module.h"
#include "schedulers/scheduler.h"
#include "train/datasets.h"
#include "train/distributed.h"
#include "train/optim.h"

namespace stipple::train {

// What the trainer trains: a class-conditional denoiser. The DiT adapter (train/dit_denoiser.h)
// is the real one; tests use small stand-ins.
class Denoiser {
 public:
  virtual ~Denoiser() = default;
  // The module whose named_parameters() are trained and saved.
  virtual nn::Module& module() = 0;
  // x [B, C, H, W], t i64 [B] in [0, T), labels i64 [B] in [0, num_classes] (the last is the
  // null class) -> [B, C_out, H, W] with C_out >= C; the first C channels are the prediction.
  virtual Tensor forward(const Tensor& x, const Tensor& t, const Tensor& labels) = 0;
  // transformer/config.json (diffusers keys, with "_class_name").
  virtual nlohmann::json config_json() const = 0;
  // Latent models: whether samples are images in [-1, 1] (clipped by the sampler) or latents.
  virtual bool pixel_space() const { return true; }
  // Samples -> images in [-1, 1] (latent models decode them with their VAE).
  virtual Tensor to_images(const Tensor& samples) const { return samples; }
  // A pipeline's own model_index.json (null: the trainer writes a DiTPipeline's), and the other
  // components it copies into every checkpoint and export folder (vae/, text_encoder/, ...).
  virtual nlohmann::json model_index() const { return nullptr; }
  virtual void write_components(const std::string& /*dir*/) const {}
  // Moves the module (and whatever else forward() and to_images() read) to `device`.
  virtual void to(Device device) { module().to(device); }
};

struct TrainConfig {
  // ---- data ----
  std::string data = "fashion-mnist";
  std::string data_dir = FashionMnist::kDefaultDir;  // emoji: this default means EmojiData's
  // ---- text-to-image (data "emoji"): the frozen components the denoiser works with ----
  std::string vae_dir;   // an AutoencoderKL folder (stipple train-vae's OUT/vae)
  std::string clip_dir;  // a CLIP folder (stipple train-clip's OUT: tokenizer/, text_encoder/, ...)
  // ---- warm start ----
  // A model folder this trainer exported or checkpointed (its transformer/, f16 or f32) whose
  // weights start the run instead of the random initialisation (Trainer::warm_start). Recorded
  // for the run's history; a resumed run takes its weights from the checkpoint instead.
  std::string init_from;
  int64_t limit_images = 0;  // > 0: the first N training images only (tests)
  bool pad_to_32 = true;  // 28x28 framed to 32x32
  int downsample = 1;     // Fashion-MNIST at 1/N size (2, with pad_to_32 off: 14x14, a cascade's base)
  bool hflip = false;
  // ---- model (DiT size) ----
  int depth = 6;
  int width = 192;  // hidden size; heads divide it
  int heads = 3;
  int patch = 2;
  bool learned_sigma = false;  // out_channels = 2 * in_channels, as the released DiTs
  // ---- optimisation ----
  int64_t steps = 20000;
  int batch_size = 64;
  float lr = 3e-4f;
  int64_t warmup = 500;
  std::string lr_schedule = "cosine";  // "cosine" (to min_lr_ratio * lr) or "constant"
  float min_lr_ratio = 0.0f;
  float weight_decay = 0.0f;
  float grad_clip = 1.0f;  // <= 0: off
  float ema_decay = 0.9995f;
  float label_drop_prob = 0.1f;
  float snr_gamma = 0.0f;  // > 0: min-SNR-gamma loss weights
  // The training step's matmul and linear products (forward and backward): "f32", or "bf16"
  // (ops::MatmulPrecision: operands rounded to bf16, f32 sums; about twice the f32 rate on CPUs
  // with AVX512-BF16 or AMX). Weights, optimiser state, EMA and sampling stay f32.
  std::string matmul_precision = "f32";
  // ---- diffusion ----
  std::string prediction_type = "epsilon";  // or "v_prediction"
  int num_train_timesteps = 1000;
  std::string beta_schedule = "linear";  // or "squaredcos_cap_v2"
  // ---- cadence and outputs ----
  int64_t checkpoint_every = 1000;
  int64_t sample_every = 1000;  // <= 0: only at the end
  int64_t log_every = 50;
  int64_t eval_every = 0;  // > 0: TrainCallbacks::evaluate on a checkpoint every N steps
  int eval_prompts = 100;  // text-to-image: prompts per evaluation
  int keep_checkpoints = 3;  // newest checkpoint-* folders kept; <= 0 keeps all
  int sample_steps = 50;     // DDIM steps for the sample grids
  int samples_per_class = 8;
  float sample_cfg = 3.0f;
  bool export_f16 = true;  // write out_dir/export at the end
  uint64_t seed = 0;
  std::string out_dir = "runs/fashion-dit";

  nlohmann::json to_json() const;
  // Missing keys keep their defaults; bad values throw naming `where` and the key.
  static TrainConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
};

// A float as the shortest decimal that reads back as the same float (for JSON: 3e-4f is written
// 0.0003, not 0.0003000000142492354).
double json_float(float f);

// Learning rate at optimizer step `step` (0-based): linear warm-up over `warmup` steps, then
// cosine decay to min_lr_ratio * lr at `steps`, or constant.
float learning_rate(const TrainConfig& config, int64_t step);

// Progress of a running job, for the CLI's progress bar.
struct TrainProgress {
  int64_t step = 0;   // steps done
  int64_t total = 0;  // config.steps
  float loss = 0;     // mean loss of the steps since the last log line
  float lr = 0;
  double steps_per_second = 0;  // since this run (or resume) started
  double eta_seconds = 0;
};
struct TrainCallbacks {
  std::function<void(const TrainProgress&)> progress;  // after every step
  std::function<void(const std::string&)> message;     // "saved checkpoint ...", lines of text
  // Asked after every step; true ends run() early with a checkpoint (Ctrl-C in the CLI).
  std::function<bool()> should_stop;
  // Every config.eval_every steps, with the checkpoint folder of that step (written first):
  // scores it and returns a line for the log (the text-to-image job fills it in).
  std::function<std::string(const std::string& checkpoint_dir, int64_t step)> evaluate;
};

// The statistics of one step (the trainer also keeps them for logs).
struct StepStats {
  float loss = 0;
  float grad_norm = 0;
  float lr = 0;
};

class Trainer {
 public:
  static constexpr int kBuckets = 10;  // timestep buckets for the loss breakdown

  // images [N, C, H, W] f32 in [-1, 1], labels i64 [N] in [0, class_names.size()). The model's
  // weights are initialised with its reset_parameters (seeded by config.seed) unless resume()
  // replaces them.
  Trainer(TrainConfig config, std::unique_ptr<Denoiser> model, Tensor images, Tensor labels,
          std::vector<std::string> class_names);

  // The TrainConfig saved in a checkpoint folder (to build the same model before resume()).
  // Throws naming the folder when it holds no training_state.safetensors.
  static TrainConfig read_checkpoint_config(const std::string& checkpoint_dir);
  // Restores weights, optimizer, EMA, RNG states, data position and step from a checkpoint
  // folder written by save_checkpoint(); checks that it fits this model and data.
  void resume(const std::string& checkpoint_dir);
  // Starts from the weights of a model folder written by export_model() or save_checkpoint() (its
  // transformer/, f16 or f32, widened to f32) instead of the random initialisation: the raw
  // weights and the EMA both take them, the EMA at its full decay from the first step (the
  // folder holds an average already, which a warming-up EMA would forget within a few hundred
  // steps), and the optimizer starts fresh at step 0 of this config's schedule. Throws naming
  // the folder when it is not such a folder or its transformer is shaped differently. A model
  // deeper than the folder's grows from it (grow_transformer_depth).
  void warm_start(const std::string& model_dir);
  // How a run begins: resume(resume_dir) when one is given, else warm_start(config.init_from)
  // when that is set, else the random initialisation.
  void begin(const std::string& resume_dir);
  // Trains on `device` from here on: the model, AdamW's moments and the EMA move there, each
  // step's batch is drawn on the CPU (the same random numbers as a CPU run) and uploaded, and
  // checkpoints are written from host copies, so a run resumes on any device. Call it before
  // run(), after begin() or before it.
  void to(Device device);
  Device device() const { return device_; }

  // Trains data-parallel with the ranks of `comm` (which must outlive the Trainer); call it on
  // every rank before resume() and run(). Without it the Trainer is a single process.
  void set_communicator(Communicator& comm);
  Communicator& communicator() { return *comm_; }
  // Seconds this process spent summing gradients with the other ranks.
  double allreduce_seconds() const { return reducer_.seconds(); }
  // Wall seconds of the last run() (steps, checkpoints, grids and evaluations).
  double last_run_seconds() const { return last_run_seconds_; }

  StepStats train_step();
  // Steps until config.steps with logs, sample grids and checkpoints at their cadence, then the
  // final checkpoint, grid and export. When callbacks.should_stop() says so, it stops after the
  // current step with a checkpoint (resume it later) and no export.
  void run(const TrainCallbacks& callbacks = {});

  // Writes a checkpoint folder (see the header comment); each file atomically.
  void save_checkpoint(const std::string& dir) const;
  // Writes model_index.json, transformer/ (EMA weights, f16 when `half`) and scheduler/.
  void export_model(const std::string& dir, bool half) const;
  // Class-conditional samples with the EMA weights: the shared denoise loop with DDIM and
  // classifier-free guidance (DiT's cond-first batch order). [labels, C, H, W] in [-1, 1].
  Tensor sample(const std::vector<int64_t>& labels, uint64_t seed, int steps, float cfg);
  // A grid with a row per class (samples_per_class each), written as a PNG with its parameters.
  void write_sample_grid(const std::string& path);
  // Rows of the sample grids: these labels instead of every class (text-to-image: fixed prompts).
  void set_sample_labels(std::vector<int64_t> labels);

  int64_t step() const { return step_; }
  const TrainConfig& config() const { return config_; }
  Denoiser& model() { return *model_; }
  const std::vector<Tensor>& params() const { return params_; }
  const Ema& ema() const { return *ema_; }
  const std::vector<float>& alphas_cumprod() const { return alphas_cumprod_; }
  // The scheduler_config.json this model samples with.
  nlohmann::json scheduler_json() const;

 private:
  struct LogRow {
    int64_t step;
    float loss, lr, grad_norm;
    std::vector<float> buckets;  // NaN where a bucket saw no sample
    double seconds;
  };
  void write_model_files(const std::string& dir, bool half) const;
  void append_log();        // closes the statistics window into a log row
  void write_logs() const;  // log.csv and loss.png
  void prune_checkpoints() const;
  std::string checkpoint_now();  // checkpoint-<step>, the latest link, pruning; returns the folder
  double run_seconds() const;    // seconds since run() started (0 outside run())

  TrainConfig config_;
  std::unique_ptr<Denoiser> model_;
  std::vector<std::string> class_names_;
  std::vector<int64_t> sample_labels_;  // empty: every class
  int64_t num_classes_;
  int64_t channels_ = 0, image_h_ = 0, image_w_ = 0;
  std::vector<Tensor> params_;
  std::vector<std::string> param_names_;
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<Ema> ema_;
  std::unique_ptr<DataLoader> loader_;
  Communicator* comm_;  // the single process, unless set_communicator()
  GradientReducer reducer_;
  Generator gen_;
  std::vector<float> alphas_cumprod_;
  schedulers::PredictionType prediction_;
  Device device_ = Device::kCPU;
  int64_t step_ = 0;
  double elapsed_before_ = 0;
  double last_run_seconds_ = 0;  // seconds spent in earlier runs (from the checkpoint)
  bool running_ = false;
  std::chrono::steady_clock::time_point run_start_;
  // Loss statistics since the last log row.
  double window_loss_ = 0, window_grad_ = 0;
  int64_t window_steps_ = 0;
  std::vector<double> bucket_sum_;
  std::vector<int64_t> bucket_count_;
  std::vector<LogRow> log_;
};

}  // namespace stipple::train

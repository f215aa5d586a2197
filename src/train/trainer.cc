#include "train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "schedulers/schedule.h"
#include "schedulers/training.h"
#include "train/grow_depth.h"
#include "train/plot.h"
#include "train/run_state.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kStateFile = "training_state.safetensors";
constexpr const char* kWeightsFile = "diffusion_pytorch_model.safetensors";
constexpr const char* kDiffusersVersion = "0.29.0";

void write_json(const std::string& path, const json& j) {
  io::write_file_atomic(path, j.dump(2) + "\n");
}

std::string bucket_name(int b, int T) {
  const int lo = b * T / Trainer::kBuckets, hi = (b + 1) * T / Trainer::kBuckets - 1;
  return str_cat("loss_t", lo, "_", hi);
}

// `tensors` with every value on the CPU (each itself when there already), for saving.
std::map<std::string, Tensor> on_host(std::map<std::string, Tensor> tensors) {
  for (auto& [name, t] : tensors) t = t.to(Device::kCPU);
  return tensors;
}

}  // namespace

// ---------------- TrainConfig ----------------

double json_float(float f) {
  char buf[32];
  for (int precision = 6; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, static_cast<double>(f));
    if (static_cast<float>(std::strtod(buf, nullptr)) == f) break;
  }
  return std::strtod(buf, nullptr);
}

json TrainConfig::to_json() const {
  return json{{"data", data},
              {"data_dir", data_dir},
              {"vae_dir", vae_dir},
              {"clip_dir", clip_dir},
              {"init_from", init_from},
              {"limit_images", limit_images},
              {"pad_to_32", pad_to_32},
              {"downsample", downsample},
              {"hflip", hflip},
              {"depth", depth},
              {"width", width},
              {"heads", heads},
              {"patch", patch},
              {"learned_sigma", learned_sigma},
              {"steps", steps},
              {"batch_size", batch_size},
              {"lr", json_float(lr)},
              {"warmup", warmup},
              {"lr_schedule", lr_schedule},
              {"min_lr_ratio", json_float(min_lr_ratio)},
              {"weight_decay", json_float(weight_decay)},
              {"grad_clip", json_float(grad_clip)},
              {"ema_decay", json_float(ema_decay)},
              {"label_drop_prob", json_float(label_drop_prob)},
              {"snr_gamma", json_float(snr_gamma)},
              {"matmul_precision", matmul_precision},
              {"prediction_type", prediction_type},
              {"num_train_timesteps", num_train_timesteps},
              {"beta_schedule", beta_schedule},
              {"checkpoint_every", checkpoint_every},
              {"sample_every", sample_every},
              {"log_every", log_every},
              {"eval_every", eval_every},
              {"eval_prompts", eval_prompts},
              {"keep_checkpoints", keep_checkpoints},
              {"sample_steps", sample_steps},
              {"samples_per_class", samples_per_class},
              {"sample_cfg", json_float(sample_cfg)},
              {"export_f16", export_f16},
              {"seed", seed},
              {"out_dir", out_dir}};
}

TrainConfig TrainConfig::from_json(const json& j, const std::string& where) {
  STIPPLE_CHECK(j.is_object(), where, ": a training config must be a JSON object");
  const io::JsonConfig c(j, where);
  TrainConfig t;
  t.data = c.string("data", t.data);
  t.data_dir = c.string("data_dir", t.data_dir);
  t.vae_dir = c.string("vae_dir", t.vae_dir);
  t.clip_dir = c.string("clip_dir", t.clip_dir);
  t.init_from = c.string("init_from", t.init_from);
  t.limit_images = c.integer("limit_images", t.limit_images);
  t.pad_to_32 = c.boolean("pad_to_32", t.pad_to_32);
  t.downsample = static_cast<int>(c.integer("downsample", t.downsample));
  t.hflip = c.boolean("hflip", t.hflip);
  t.depth = static_cast<int>(c.integer("depth", t.depth));
  t.width = static_cast<int>(c.integer("width", t.width));
  t.heads = static_cast<int>(c.integer("heads", t.heads));
  t.patch = static_cast<int>(c.integer("patch", t.patch));
  t.learned_sigma = c.boolean("learned_sigma", t.learned_sigma);
  t.steps = c.integer("steps", t.steps);
  t.batch_size = static_cast<int>(c.integer("batch_size", t.batch_size));
  t.lr = static_cast<float>(c.number("lr", t.lr));
  t.warmup = c.integer("warmup", t.warmup);
  t.lr_schedule = c.string("lr_schedule", t.lr_schedule);
  t.min_lr_ratio = static_cast<float>(c.number("min_lr_ratio", t.min_lr_ratio));
  t.weight_decay = static_cast<float>(c.number("weight_decay", t.weight_decay));
  t.grad_clip = static_cast<float>(c.number("grad_clip", t.grad_clip));
  t.ema_decay = static_cast<float>(c.number("ema_decay", t.ema_decay));
  t.label_drop_prob = static_cast<float>(c.number("label_drop_prob", t.label_drop_prob));
  t.snr_gamma = static_cast<float>(c.number("snr_gamma", t.snr_gamma));
  t.matmul_precision = c.string("matmul_precision", t.matmul_precision);
  t.prediction_type = c.string("prediction_type", t.prediction_type);
  t.num_train_timesteps = static_cast<int>(c.integer("num_train_timesteps", t.num_train_timesteps));
  t.beta_schedule = c.string("beta_schedule", t.beta_schedule);
  t.checkpoint_every = c.integer("checkpoint_every", t.checkpoint_every);
  t.sample_every = c.integer("sample_every", t.sample_every);
  t.log_every = c.integer("log_every", t.log_every);
  t.eval_every = c.integer("eval_every", t.eval_every);
  t.eval_prompts = static_cast<int>(c.integer("eval_prompts", t.eval_prompts));
  t.keep_checkpoints = static_cast<int>(c.integer("keep_checkpoints", t.keep_checkpoints));
  t.sample_steps = static_cast<int>(c.integer("sample_steps", t.sample_steps));
  t.samples_per_class = static_cast<int>(c.integer("samples_per_class", t.samples_per_class));
  t.sample_cfg = static_cast<float>(c.number("sample_cfg", t.sample_cfg));
  t.export_f16 = c.boolean("export_f16", t.export_f16);
  t.seed = static_cast<uint64_t>(c.integer("seed", static_cast<int64_t>(t.seed)));
  t.out_dir = c.string("out_dir", t.out_dir);
  t.validate();
  return t;
}

void TrainConfig::validate() const {
  STIPPLE_CHECK(depth >= 1 && width >= 1 && heads >= 1 && patch >= 1,
                "training config: depth, width, heads and patch must be positive");
  STIPPLE_CHECK(width % heads == 0, "training config: width ", width, " is not divisible by heads ",
                heads);
  STIPPLE_CHECK(steps >= 0, "training config: steps must be >= 0, got ", steps);
  STIPPLE_CHECK(batch_size >= 1, "training config: batch size must be >= 1, got ", batch_size);
  STIPPLE_CHECK(lr > 0 && std::isfinite(lr), "training config: lr must be positive, got ", lr);
  STIPPLE_CHECK(warmup >= 0, "training config: warmup must be >= 0");
  STIPPLE_CHECK(lr_schedule == "cosine" || lr_schedule == "constant",
                "training config: lr_schedule \"", lr_schedule, "\" (expected cosine or constant)");
  STIPPLE_CHECK(ema_decay >= 0 && ema_decay < 1, "training config: ema_decay must be in [0, 1)");
  STIPPLE_CHECK(label_drop_prob >= 0 && label_drop_prob < 1,
                "training config: label_drop_prob must be in [0, 1)");
  STIPPLE_CHECK(prediction_type == "epsilon" || prediction_type == "v_prediction",
                "training config: prediction_type \"", prediction_type,
                "\" (expected epsilon or v_prediction)");
  STIPPLE_CHECK(matmul_precision == "f32" || matmul_precision == "bf16",
                "training config: matmul_precision \"", matmul_precision,
                "\" (expected f32 or bf16)");
  STIPPLE_CHECK(beta_schedule == "linear" || beta_schedule == "squaredcos_cap_v2",
                "training config: beta_schedule \"", beta_schedule,
                "\" (expected linear or squaredcos_cap_v2)");
  STIPPLE_CHECK(num_train_timesteps >= 10, "training config: num_train_timesteps must be >= 10");
  STIPPLE_CHECK(sample_steps >= 1 && samples_per_class >= 1,
                "training config: sample_steps and samples_per_class must be >= 1");
  STIPPLE_CHECK(!out_dir.empty(), "training config: an output folder is needed");
  STIPPLE_CHECK(eval_every >= 0, "training config: eval_every must be >= 0");
  STIPPLE_CHECK(eval_prompts >= 2 && eval_prompts <= 1911,
                "training config: eval_prompts must be in [2, 1911], got ", eval_prompts);
  STIPPLE_CHECK(limit_images >= 0, "training config: limit_images must be >= 0");
  STIPPLE_CHECK(downsample == 1 || downsample == 2 || downsample == 4,
                "training config: downsample must be 1, 2 or 4, got ", downsample);
}

float learning_rate(const TrainConfig& c, int64_t step) {
  if (c.lr_schedule == "constant" && !(c.warmup > 0 && step < c.warmup)) return c.lr;
  return warmup_cosine_lr(c.lr, c.warmup, c.steps, c.min_lr_ratio, step);
}

// ---------------- Trainer ----------------

Trainer::Trainer(TrainConfig config, std::unique_ptr<Denoiser> model, Tensor images, Tensor labels,
                 std::vector<std::string> class_names)
    : config_(std::move(config)),
      model_(std::move(model)),
      class_names_(std::move(class_names)),
      num_classes_(static_cast<int64_t>(class_names_.size())),
      comm_(&single_process()),
      gen_(config_.seed + 1) {
  config_.validate();
  STIPPLE_CHECK(model_ != nullptr, "Trainer: no model");
  STIPPLE_CHECK(images.defined() && images.dim() == 4, "Trainer: images must be [N, C, H, W], got ",
                images.defined() ? images.describe() : std::string("nothing"));
  STIPPLE_CHECK(num_classes_ >= 1, "Trainer: at least one class name is needed");
  for (int64_t l : labels.to_vector_i64())
    STIPPLE_CHECK(l >= 0 && l < num_classes_, "Trainer: label ", l, " outside [0, ", num_classes_,
                  ")");
  channels_ = images.size(1);
  image_h_ = images.size(2);
  image_w_ = images.size(3);
  prediction_ = schedulers::parse_prediction_type(config_.prediction_type);
  alphas_cumprod_ = schedulers::alphas_cumprod_from_betas(
      schedulers::make_betas(config_.beta_schedule, config_.num_train_timesteps, 1e-4, 0.02));

  // Weights: the model's own initialisation, seeded by the run's seed.
  Generator init(config_.seed);
  nn::Module& m = model_->module();
  m.reset_parameters(init);
  m.train();
  for (const auto& [name, p] : m.named_parameters())
    if (p.requires_grad()) {
      param_names_.push_back(name);
      params_.push_back(p);
    }
  STIPPLE_CHECK(!params_.empty(), "Trainer: the model has no trainable parameters");
  optimizer_ = std::make_unique<AdamW>(
      params_, AdamWConfig{config_.lr, 0.9f, 0.999f, 1e-8f, config_.weight_decay});
  EmaConfig ema;
  ema.decay = config_.ema_decay;
  ema_ = std::make_unique<Ema>(params_, ema);
  loader_ = std::make_unique<DataLoader>(images, labels, config_.batch_size, config_.seed + 2,
                                         config_.hflip);
  bucket_sum_.assign(kBuckets, 0.0);
  bucket_count_.assign(kBuckets, 0);
}

StepStats Trainer::train_step() {
  const int T = config_.num_train_timesteps;
  // 1. data, timesteps, noise and label drops (in this order from the step's Generator), for the
  //    whole global batch on every rank
  DataLoader::Batch batch = loader_->next();
  const Tensor x0 = batch.images.to(device_);  // [B, C, H, W]
  const int64_t B = x0.size(0);
  std::vector<int64_t> tv(B);
  for (auto& t : tv) t = static_cast<int64_t>(gen_.next_u64() % static_cast<uint64_t>(T));
  const Tensor t = Tensor::from_vector_i64(tv, {B}).to(device_);  // [B]
  const Tensor noise = gen_.randn(x0.shape()).to(device_);        // [B, C, H, W]
  const std::vector<float> coin = gen_.rand({B}).to_vector();
  std::vector<int64_t> yv = batch.labels.to_vector_i64();
  for (int64_t b = 0; b < B; ++b)
    if (coin[b] < config_.label_drop_prob) yv[b] = num_classes_;  // the null class
  const Tensor y = Tensor::from_vector_i64(yv, {B}).to(device_);

  // 2. forward process and the loss (DDPM eq. 4 and Alg. 1) on this rank's shard [lo, hi) of
  //    the batch (distributed.h): (1/B) * the sum of its per-sample losses
  const Shard shard = shard_of(B, *comm_);
  const int64_t n = shard.size;
  const Tensor ts = shard.of(t);  // [n]
  const Tensor x_t = schedulers::add_noise(alphas_cumprod_, shard.of(x0), shard.of(noise), ts);
  const Tensor target = schedulers::prediction_target(prediction_, alphas_cumprod_, shard.of(x0),
                                                      shard.of(noise), ts);
  // The model's products in the configured precision; its gradients follow (ops::matmul_precision)
  const ops::MatmulPrecisionScope precision(ops::parse_matmul_precision(config_.matmul_precision));
  const Tensor out = model_->forward(x_t, ts, shard.of(y));  // [n, C_out, H, W]
  STIPPLE_CHECK(out.dim() == 4 && out.size(0) == n && out.size(1) >= channels_ &&
                    out.size(2) == x0.size(2) && out.size(3) == x0.size(3),
                "Trainer: the model returned ", out.describe(), " for an input of ", x_t.describe());
  const Tensor pred = out.size(1) == channels_ ? out : out.narrow(1, 0, channels_);
  const Tensor per_sample = ops::mean(ops::square(pred - target), {1, 2, 3});  // [n]
  Tensor loss =
      config_.snr_gamma > 0
          ? ops::mean(per_sample * schedulers::min_snr_weights(prediction_, alphas_cumprod_, ts,
                                                               config_.snr_gamma))
          : ops::mean(per_sample);
  if (!shard.whole()) loss = loss * shard.weight();

  // 3. backward, the gradient summed over ranks, clipping, AdamW at this step's learning rate,
  //    EMA
  optimizer_->zero_grad();
  loss.backward();
  reducer_.reduce(*comm_, params_, step_);
  const float max_norm =
      config_.grad_clip > 0 ? config_.grad_clip : std::numeric_limits<float>::infinity();
  StepStats s;
  s.grad_norm = clip_grad_norm(params_, max_norm);
  s.lr = learning_rate(config_, step_);
  optimizer_->set_lr(s.lr);
  optimizer_->step();
  ema_->step(params_);
  ++step_;

  // 4. statistics: the mean loss, and the unweighted loss per timestep bucket (every rank's
  //    per-sample losses gathered by one sum: zeros outside each rank's shard, the loss last)
  std::vector<float> ps(B + 1, 0.0f);
  const std::vector<float> mine = per_sample.detach().to_vector();
  std::copy(mine.begin(), mine.end(), ps.begin() + shard.begin);
  ps[B] = loss.item();
  comm_->allreduce_sum(ps.data(), ps.size(), str_cat("the loss statistics at step ", step_));
  s.loss = ps[B];
  for (int64_t b = 0; b < B; ++b) {
    const int k = static_cast<int>(tv[b] * kBuckets / T);
    bucket_sum_[k] += ps[b];
    ++bucket_count_[k];
  }
  window_loss_ += s.loss;
  window_grad_ += s.grad_norm;
  ++window_steps_;
  return s;
}

void Trainer::set_communicator(Communicator& comm) {
  STIPPLE_CHECK(step_ == 0 && !running_, "set_communicator: call it before resume() and run()");
  shard_of(config_.batch_size, comm);  // checks that every rank gets a row
  comm_ = &comm;
}

// ---------------- sampling ----------------

json Trainer::scheduler_json() const {
  return json{{"_class_name", "DDIMScheduler"},
              {"_diffusers_version", kDiffusersVersion},
              {"num_train_timesteps", config_.num_train_timesteps},
              {"beta_start", 0.0001},
              {"beta_end", 0.02},
              {"beta_schedule", config_.beta_schedule},
              {"trained_betas", nullptr},
              {"prediction_type", config_.prediction_type},
              {"clip_sample", model_->pixel_space()},
              {"clip_sample_range", 1.0},
              {"set_alpha_to_one", true},
              {"steps_offset", 0},
              {"timestep_spacing", "trailing"},
              {"rescale_betas_zero_snr", false}};
}

Tensor Trainer::sample(const std::vector<int64_t>& labels, uint64_t seed, int steps, float cfg) {
  STIPPLE_CHECK(!labels.empty(), "sample: no labels");
  for (int64_t l : labels)
    STIPPLE_CHECK(l >= 0 && l <= num_classes_, "sample: label ", l, " outside [0, ", num_classes_,
                  "]");
  autograd::NoGradGuard no_grad;
  nn::Module& m = model_->module();
  // Sample with the EMA weights, then put the raw ones back exactly.
  ema_->store(params_);
  ema_->copy_to(params_);
  m.eval();
  Tensor x;
  try {
    auto scheduler =
        schedulers::make_scheduler(schedulers::SchedulerConfig::from_json(scheduler_json().dump()));
    scheduler->set_timesteps(steps);
    const int64_t B = static_cast<int64_t>(labels.size());
    const Tensor y = Tensor::from_vector_i64(labels, {B}).to(device_);
    std::vector<int64_t> both = labels;  // DiT's order: [cond, uncond]
    both.insert(both.end(), labels.size(), num_classes_);
    const Tensor y2 = Tensor::from_vector_i64(both, {2 * B}).to(device_);
    Generator g(seed);
    x = g.randn({B, channels_, image_h_, image_w_}).to(device_);
    x = x * static_cast<float>(scheduler->init_noise_sigma());
    pipelines::DenoiseOptions opt;
    opt.cfg.scale = cfg;
    opt.cfg.order = guidance::CfgOrder::kCondFirst;
    opt.generator = &g;
    auto fn = [&](const Tensor& input, double t) {
      const int64_t n = input.size(0);
      const Tensor tt = Tensor::from_vector_i64(
          std::vector<int64_t>(n, static_cast<int64_t>(std::lround(t))), {n}).to(device_);
      const Tensor out = model_->forward(input, tt, n == B ? y : y2);  // [n, C_out, H, W]
      return out.size(1) == channels_ ? out : out.narrow(1, 0, channels_).contiguous();
    };
    x = pipelines::denoise(*scheduler, x, fn, opt);
  } catch (...) {
    m.train();
    ema_->restore(params_);
    throw;
  }
  m.train();
  ema_->restore(params_);
  return model_->pixel_space() ? ops::clamp(x, -1.0f, 1.0f) : x;
}

void Trainer::to(Device device) {
  STIPPLE_CHECK(!running_, "Trainer::to: move the run before run(), not during it");
  model_->to(device);  // params_ share the module's tensors, which move in place
  optimizer_->to(device);
  ema_->to(device);
  device_ = device;
}

void Trainer::set_sample_labels(std::vector<int64_t> labels) {
  for (int64_t l : labels)
    STIPPLE_CHECK(l >= 0 && l < num_classes_, "sample grid: label ", l, " outside [0, ",
                  num_classes_, ")");
  sample_labels_ = std::move(labels);
}

void Trainer::write_sample_grid(const std::string& path) {
  const int per = config_.samples_per_class;
  std::vector<int64_t> rows_labels = sample_labels_;
  if (rows_labels.empty())
    for (int64_t c = 0; c < num_classes_; ++c) rows_labels.push_back(c);
  std::vector<int64_t> labels;
  for (int64_t c : rows_labels)
    for (int i = 0; i < per; ++i) labels.push_back(c);
  const uint64_t seed = config_.seed + 1000;
  Tensor x = sample(labels, seed, config_.sample_steps, config_.sample_cfg);  // [N, C, H, W]
  {
    autograd::NoGradGuard no_grad;
    x = ops::clamp(model_->to_images(x), -1.0f, 1.0f).to(Device::kCPU);  // [N, 3|1, H', W']
  }
  if (x.size(2) <= 64) x = ops::upsample_nearest2x(x);
  x = ops::pad(x, {1, 1, 1, 1}, 0.0f);  // a grey frame around each image
  const Tensor grid = io::make_grid(x, per, 0);
  std::string rows;
  for (int64_t c : rows_labels) rows += (rows.empty() ? "" : " | ") + class_names_[c];
  const std::string params = str_cat(
      "class grid, one row per class: ", rows, "\nSteps: ", config_.sample_steps,
      ", Sampler: DDIM, CFG scale: ", config_.sample_cfg, ", Seed: ", seed, ", Size: ", image_w_,
      "x", image_h_, ", Model: stipple DiT depth ", config_.depth, " width ", config_.width,
      " patch ", config_.patch, ", Train step: ", step_, " (EMA weights)");
  fs::create_directories(fs::path(path).parent_path());
  io::write_png(path, io::tensor_to_image(grid), {{"parameters", params}});
}

// ---------------- checkpoints ----------------

void Trainer::write_model_files(const std::string& dir, bool half) const {
  fs::create_directories(fs::path(dir) / "transformer");
  fs::create_directories(fs::path(dir) / "scheduler");
  const json transformer = model_->config_json();
  const json own_index = model_->model_index();
  if (!own_index.is_null()) {
    write_json(dir + "/model_index.json", own_index);
    model_->write_components(dir);
  } else {
    json id2label = json::object();
    for (size_t i = 0; i < class_names_.size(); ++i) id2label[std::to_string(i)] = class_names_[i];
    write_json(dir + "/model_index.json",
               json{{"_class_name", "DiTPipeline"},
                    {"_diffusers_version", kDiffusersVersion},
                    {"transformer",
                     {"diffusers", transformer.value("_class_name", "DiTTransformer2DModel")}},
                    {"scheduler", {"diffusers", "DDIMScheduler"}},
                    {"vae", {nullptr, nullptr}},
                    {"id2label", id2label}});
  }
  write_json(dir + "/transformer/config.json", transformer);
  write_json(dir + "/scheduler/scheduler_config.json", scheduler_json());
  // The EMA weights under the model's names (persistent buffers as they are).
  std::map<std::string, Tensor> weights = model_->module().state_dict();
  const std::vector<Tensor>& shadow = ema_->shadow_params();
  for (size_t i = 0; i < params_.size(); ++i) weights[param_names_[i]] = shadow[i];
  weights = on_host(std::move(weights));
  if (half)
    for (auto& [k, v] : weights)
      if (v.dtype() == DType::kF32 || v.dtype() == DType::kF64) v = v.to(DType::kF16);
  io::save_safetensors(dir + "/transformer/" + kWeightsFile, weights, {{"format", "pt"}});
}

void Trainer::save_checkpoint(const std::string& dir) const {
  write_model_files(dir, /*half=*/false);
  std::map<std::string, Tensor> state;
  add_prefixed(state, "model.", on_host(model_->module().state_dict()));
  add_prefixed(state, "optimizer.", optimizer_->state_dict());
  add_prefixed(state, "ema.", ema_->state_dict());
  add_prefixed(state, "data.", loader_->state_dict());
  state["rng.train"] = bytes_to_tensor(gen_.state());
  state["step"] = Tensor::scalar(static_cast<double>(step_), DType::kI64);
  state["elapsed_seconds"] = Tensor::scalar(elapsed_before_ + run_seconds(), DType::kF64);
  io::save_safetensors(dir + "/" + kStateFile, state,
                       {{"format", "stipple-training-state"},
                        {"step", std::to_string(step_)},
                        {"train_config", config_.to_json().dump()}});
}

void Trainer::export_model(const std::string& dir, bool half) const {
  write_model_files(dir, half);
}

TrainConfig Trainer::read_checkpoint_config(const std::string& checkpoint_dir) {
  STIPPLE_CHECK(fs::is_directory(checkpoint_dir),
                "cannot resume: no such folder: ", checkpoint_dir);
  const std::string path = checkpoint_dir + "/" + kStateFile;
  STIPPLE_CHECK(fs::exists(path), "cannot resume from ", checkpoint_dir, ": it holds no ",
                kStateFile,
                " (an exported model has only the EMA weights); resume from OUT/latest or "
                "OUT/checkpoint-<step> of a training run");
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  const auto it = f.metadata().find("train_config");
  STIPPLE_CHECK(it != f.metadata().end(), path,
                ": no train_config in its metadata (not written by stipple train)");
  return TrainConfig::from_json(io::parse_json(it->second, path + " (train_config)"),
                                path + " (train_config)");
}

void Trainer::resume(const std::string& checkpoint_dir) {
  read_checkpoint_config(checkpoint_dir);  // checks the folder and the file, with clear errors
  const std::string path = checkpoint_dir + "/" + kStateFile;
  const std::map<std::string, Tensor> state = io::load_safetensors(path);
  for (const char* key : {"step", "rng.train", "elapsed_seconds"})
    STIPPLE_CHECK(state.count(key), path, ": missing '", key, "' (not a complete checkpoint)");
  try {
    model_->module().load_state_dict(with_prefix(state, "model."), /*strict=*/true, path);
    optimizer_->load_state_dict(with_prefix(state, "optimizer."));
    ema_->load_state_dict(with_prefix(state, "ema."));
    loader_->load_state_dict(with_prefix(state, "data."));
  } catch (const Error& e) {
    throw Error(str_cat("cannot resume from ", checkpoint_dir,
                        ": the checkpoint does not fit this model and data (", e.what(), ")"));
  }
  gen_.set_state(tensor_to_bytes(state.at("rng.train")));
  step_ = state.at("step").to_vector_i64().at(0);
  STIPPLE_CHECK(step_ >= 0 && step_ <= 100000000, path, ": step ", step_,
                " is outside [0, 1e8] (a damaged or edited training state)");
  elapsed_before_ = state.at("elapsed_seconds").to_vector_f64().at(0);
  if (const int n = comm_->is_root() ? io::remove_stale_temporaries(config_.out_dir) : 0)
    std::fprintf(stderr, "removed %d temporary file%s left by an interrupted write in %s\n", n,
                 n == 1 ? "" : "s", config_.out_dir.c_str());
  // Keep the log rows up to the resumed step (a run cut off after its last checkpoint logged
  // steps that will now be trained again).
  log_.clear();
  std::ifstream csv(config_.out_dir + "/log.csv");
  std::string line;
  std::getline(csv, line);  // header
  while (std::getline(csv, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (cells.size() < 5 + kBuckets) continue;
    LogRow r;
    try {
      r.step = std::stoll(cells[0]);
      r.loss = std::stof(cells[1]);
      r.lr = std::stof(cells[2]);
      r.grad_norm = std::stof(cells[3]);
      for (int b = 0; b < kBuckets; ++b)
        r.buckets.push_back(cells[4 + b].empty() ? NAN : std::stof(cells[4 + b]));
      r.seconds = std::stod(cells[4 + kBuckets]);
    } catch (const std::exception&) {
      continue;
    }
    if (r.step <= step_) log_.push_back(r);
  }
}

void Trainer::warm_start(const std::string& model_dir) {
  STIPPLE_CHECK(step_ == 0, "Trainer::warm_start: the run is at step ", step_,
                " already (warm-start a new run, or resume this one)");
  const std::string path = model_dir + "/transformer/diffusion_pytorch_model.safetensors";
  STIPPLE_CHECK(std::filesystem::is_regular_file(path), "cannot start from ", model_dir,
                ": it has no transformer/diffusion_pytorch_model.safetensors (give a model folder "
                "that stipple train exported or checkpointed)");
  try {
    autograd::NoGradGuard no_grad;
    model_->module().load_state_dict(
        grow_transformer_depth(io::load_safetensors(path), config_.depth), /*strict=*/true, path);
  } catch (const Error& e) {
    throw Error(str_cat("cannot start from ", model_dir, ": its transformer does not fit the model "
                        "this run trains (", e.what(), "); give the same --depth, --width, "
                        "--heads, --patch as its transformer/config.json, or a larger --depth "
                        "to grow it"));
  }
  ema_->restart_at_full_decay(params_);
}

void Trainer::begin(const std::string& resume_dir) {
  if (!resume_dir.empty())
    resume(resume_dir);
  else if (!config_.init_from.empty())
    warm_start(config_.init_from);
}

double Trainer::run_seconds() const {
  if (!running_) return 0;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start_).count();
}

void Trainer::append_log() {
  if (window_steps_ == 0) return;
  LogRow r;
  r.step = step_;
  r.loss = static_cast<float>(window_loss_ / window_steps_);
  r.grad_norm = static_cast<float>(window_grad_ / window_steps_);
  r.lr = learning_rate(config_, std::max<int64_t>(0, step_ - 1));
  for (int b = 0; b < kBuckets; ++b)
    r.buckets.push_back(bucket_count_[b] ? static_cast<float>(bucket_sum_[b] / bucket_count_[b])
                                         : NAN);
  r.seconds = elapsed_before_ + run_seconds();
  log_.push_back(r);
  window_loss_ = window_grad_ = 0;
  window_steps_ = 0;
  bucket_sum_.assign(kBuckets, 0.0);
  bucket_count_.assign(kBuckets, 0);
}

void Trainer::write_logs() const {
  std::ostringstream csv;
  csv << "step,loss,lr,grad_norm";
  for (int b = 0; b < kBuckets; ++b) csv << "," << bucket_name(b, config_.num_train_timesteps);
  csv << ",seconds\n";
  std::vector<int64_t> steps;
  std::vector<float> losses;
  char buf[64];
  for (const LogRow& r : log_) {
    std::snprintf(buf, sizeof buf, "%lld,%.6g,%.6g,%.6g", static_cast<long long>(r.step), r.loss,
                  r.lr, r.grad_norm);
    csv << buf;
    for (float b : r.buckets) {
      csv << ",";
      if (!std::isnan(b)) {
        std::snprintf(buf, sizeof buf, "%.6g", b);
        csv << buf;
      }
    }
    std::snprintf(buf, sizeof buf, ",%.2f\n", r.seconds);
    csv << buf;
    steps.push_back(r.step);
    losses.push_back(r.loss);
  }
  io::write_file_atomic(config_.out_dir + "/log.csv", csv.str());
  io::write_png(config_.out_dir + "/loss.png", plot_loss_curve(steps, losses),
                {{"Comment", "stipple train: mean loss per log interval"}});
}

void Trainer::prune_checkpoints() const {
  if (config_.keep_checkpoints <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> found;
  for (const auto& e : fs::directory_iterator(config_.out_dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || e.is_symlink() || name.rfind("checkpoint-", 0) != 0) continue;
    try {
      found.emplace_back(std::stoll(name.substr(11)), e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + config_.keep_checkpoints < found.size(); ++i)
    fs::remove_all(found[i].second);
}

std::string Trainer::checkpoint_now() {
  const std::string name = str_cat("checkpoint-", step_);
  const std::string dir = config_.out_dir + "/" + name;
  save_checkpoint(dir);
  // latest -> checkpoint-<step>: a new symlink renamed over the old one (atomic).
  const fs::path latest = fs::path(config_.out_dir) / "latest";
  const fs::path tmp = fs::path(config_.out_dir) / str_cat(".latest.tmp.", ::getpid());
  fs::remove(tmp);
  fs::create_directory_symlink(name, tmp);
  if (fs::exists(fs::symlink_status(latest)) && !fs::is_symlink(fs::symlink_status(latest)))
    fs::remove_all(latest);
  fs::rename(tmp, latest);
  prune_checkpoints();
  return dir;
}

void Trainer::run(const TrainCallbacks& cb) {
  // Rank 0 alone speaks and writes; every rank trains.
  const bool root = comm_->is_root();
  auto say = [&](const std::string& s) {
    if (root && cb.message) cb.message(s);
  };
  if (root) {
    io::create_output_dir(config_.out_dir);
    write_json(config_.out_dir + "/train_config.json", config_.to_json());
  }
  running_ = true;
  run_start_ = std::chrono::steady_clock::now();
  const int64_t first = step_;
  int64_t last_checkpoint = -1, last_grid = -1;
  // Whether evaluations run (on rank 0): every rank must take the checkpoints before them.
  const bool evaluates = comm_->any(static_cast<bool>(cb.evaluate), "the start of the run");
  auto grid = [&] {
    const std::string path = str_cat(config_.out_dir, "/samples/step-", step_, ".png");
    if (root) write_sample_grid(path);
    last_grid = step_;
    say("wrote samples " + path);
  };
  auto checkpoint = [&] {
    check_same_weights(*comm_, params_, "train", step_);  // the ranks stay identical
    if (root) say("saved checkpoint " + checkpoint_now());
    last_checkpoint = step_;
  };
  float shown_loss = 0;
  while (step_ < config_.steps) {
    const StepStats s = train_step();
    shown_loss = step_ - first == 1 ? s.loss : 0.95f * shown_loss + 0.05f * s.loss;
    if (root && cb.progress) {
      TrainProgress p;
      p.step = step_;
      p.total = config_.steps;
      p.loss = shown_loss;
      p.lr = s.lr;
      const double secs = run_seconds();
      p.steps_per_second = secs > 0 ? (step_ - first) / secs : 0;
      p.eta_seconds = p.steps_per_second > 0 ? (config_.steps - step_) / p.steps_per_second : 0;
      cb.progress(p);
    }
    if (config_.log_every > 0 && step_ % config_.log_every == 0) {
      append_log();
      if (root) write_logs();
    }
    if (config_.sample_every > 0 && step_ % config_.sample_every == 0) grid();
    if (config_.checkpoint_every > 0 && step_ % config_.checkpoint_every == 0) checkpoint();
    if (config_.eval_every > 0 && step_ % config_.eval_every == 0 && evaluates) {
      if (last_checkpoint != step_) checkpoint();
      if (root && cb.evaluate) say(cb.evaluate(str_cat(config_.out_dir, "/checkpoint-", step_), step_));
    }
    // Any rank asked to stop (its Ctrl-C or SIGUSR1): all stop at this step.
    const bool stop = comm_->any(cb.should_stop && cb.should_stop(),
                                 str_cat("the stop check at step ", step_));
    if (stop && step_ < config_.steps) {
      append_log();
      if (root) write_logs();
      if (last_checkpoint != step_) checkpoint();
      say(str_cat("stopped at step ", step_, "; continue with --resume ", config_.out_dir,
                  "/latest"));
      last_run_seconds_ = run_seconds();
      elapsed_before_ += last_run_seconds_;
      running_ = false;
      return;
    }
  }
  // The end: the last log rows, samples and checkpoint, then the shippable export.
  append_log();
  if (root) write_logs();
  if (last_grid != step_) grid();
  if (last_checkpoint != step_) checkpoint();
  if (root && config_.export_f16) {
    const std::string dir = config_.out_dir + "/export";
    export_model(dir, /*half=*/true);
    const auto bytes = fs::file_size(dir + "/transformer/" + kWeightsFile);
    say(str_cat("exported the EMA weights in f16 to ", dir, " (", (bytes + 524288) / 1048576, " MB",
                bytes > 20u * 1048576 ? "; over the 20 MB limit for models/" : "", ")"));
  }
  last_run_seconds_ = run_seconds();
  elapsed_before_ += last_run_seconds_;
  running_ = false;
}

}  // namespace stipple::train

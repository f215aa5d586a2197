// Training the SR3 super-resolution UNet: eps-prediction on the high-resolution image with the
// augmented low-resolution one concatenated; EMA; exact resume; held-out scores against bicubic.
#include "train/train_sr.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "models/fashion_classifier.h"
#include "ops/ops.h"
#include "schedulers/schedule.h"
#include "schedulers/scheduler.h"
#include "schedulers/training.h"
#include "train/datasets.h"
#include "train/emoji_data.h"
#include "train/optim.h"
#include "train/run_state.h"
#include "train/train_vae.h"
#include "train/train_classifier.h"
#include "train/trainer.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kStateFile = "training_state.safetensors";
constexpr int kTrainTimesteps = 1000;

// The schedule both the denoiser and the augmentation use: DDPM's linear betas.
json schedule_json(const char* class_name, const std::string& prediction_type = "epsilon") {
  return json{{"_class_name", class_name},
              {"_diffusers_version", "0.29.0"},
              {"num_train_timesteps", kTrainTimesteps},
              {"beta_start", 0.0001},
              {"beta_end", 0.02},
              {"beta_schedule", "linear"},
              {"prediction_type", prediction_type},
              {"clip_sample", false}};
}

json unet_json(const SrTrainConfig& c, int64_t channels, int64_t size) {
  const size_t n = c.block_out_channels.size();
  return json{{"_class_name", "UNet2DConditionModel"},
              {"_diffusers_version", "0.29.0"},
              {"sample_size", size},
              {"in_channels", 2 * channels},
              {"out_channels", channels},
              {"down_block_types", std::vector<std::string>(n, "DownBlock2D")},
              {"up_block_types", std::vector<std::string>(n, "UpBlock2D")},
              {"mid_block_type", nullptr},
              {"block_out_channels", c.block_out_channels},
              {"layers_per_block", c.layers_per_block},
              {"norm_num_groups", c.norm_num_groups},
              {"num_class_embeds", c.max_noise_level + 1}};
}

// Writes the model folder with the weights of `unet`.
void write_sr_folder(const std::string& dir, const SrTrainConfig& c,
                     const models::UNet2DConditionModel& unet, const json& unet_config,
                     int64_t channels, int64_t low_res_size) {
  fs::create_directories(dir + "/unet");
  fs::create_directories(dir + "/scheduler");
  fs::create_directories(dir + "/low_res_scheduler");
  const json index = {{"_class_name", pipelines::kSuperResolutionPipeline},
                      {"_diffusers_version", "0.29.0"},
                      {"unet", {"diffusers", "UNet2DConditionModel"}},
                      {"scheduler", {"diffusers", "DPMSolverMultistepScheduler"}},
                      {"low_res_scheduler", {"diffusers", "DDPMScheduler"}},
                      {"scale", c.scale},
                      {"channels", channels},
                      {"low_res_size", low_res_size},
                      {"max_noise_level", c.max_noise_level},
                      {"noise_level", c.noise_level},
                      {"data", c.data}};
  io::write_file_atomic(dir + "/model_index.json", index.dump(2) + "\n");
  io::write_file_atomic(dir + "/unet/config.json", unet_config.dump(2) + "\n");
  io::save_safetensors(dir + "/unet/diffusion_pytorch_model.safetensors", unet.state_dict(),
                       {{"format", "pt"}});
  io::write_file_atomic(dir + "/scheduler/scheduler_config.json",
                        schedule_json("DPMSolverMultistepScheduler", c.prediction_type).dump(2) +
                            "\n");
  io::write_file_atomic(dir + "/low_res_scheduler/scheduler_config.json",
                        schedule_json("DDPMScheduler").dump(2) + "\n");
}

// A 3x3 Gaussian blur (edges repeated) of the images whose `sigma` is > 0: CDM's blur
// augmentation of the low-resolution input.
Tensor blur3(const Tensor& x, const std::vector<float>& sigma) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  std::vector<float> v = x.contiguous().to_vector();
  std::vector<float> out = v;
  for (int64_t i = 0; i < b; ++i) {
    const float s = sigma[static_cast<size_t>(i)];
    if (s <= 0) continue;
    const float e = std::exp(-1.0f / (2 * s * s)), k[3] = {e / (1 + 2 * e), 1 / (1 + 2 * e),
                                                           e / (1 + 2 * e)};
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* p = v.data() + (i * c + ch) * h * w;
      float* q = out.data() + (i * c + ch) * h * w;
      for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx) {
          float acc = 0;
          for (int dy = -1; dy <= 1; ++dy)
            for (int dx = -1; dx <= 1; ++dx) {
              const int64_t yy = std::clamp<int64_t>(y + dy, 0, h - 1),
                            x2 = std::clamp<int64_t>(xx + dx, 0, w - 1);
              acc += k[dy + 1] * k[dx + 1] * p[yy * w + x2];
            }
          q[y * w + xx] = acc;
        }
    }
  }
  return Tensor::from_vector(out, x.shape());
}

// The training images [N, C, H, W] in [-1, 1].
Tensor training_images(const SrTrainConfig& c) {
  if (c.data == "emoji") {
    const EmojiData data = EmojiData::load(c.data_dir.empty() ? EmojiData::default_dir() : c.data_dir);
    std::vector<int64_t> idx = data.train_indices();
    if (c.limit_images > 0 && c.limit_images < static_cast<int64_t>(idx.size()))
      idx.resize(static_cast<size_t>(c.limit_images));
    return data.load_images(idx);
  }
  const FashionMnist f =
      FashionMnist::load(c.data_dir.empty() ? FashionMnist::kDefaultDir : c.data_dir, Split::kTrain);
  if (c.limit_images > 0 && c.limit_images < f.size())
    return f.images().narrow(0, 0, c.limit_images).contiguous();
  return f.images();
}

}  // namespace

// ---------------- config ----------------

json SrTrainConfig::to_json() const {
  return json{{"data", data},
              {"data_dir", data_dir},
              {"scale", scale},
              {"block_out_channels", block_out_channels},
              {"layers_per_block", layers_per_block},
              {"norm_num_groups", norm_num_groups},
              {"max_noise_level", max_noise_level},
              {"noise_level", noise_level},
              {"blur_prob", json_float(blur_prob)},
              {"prediction_type", prediction_type},
              {"steps", steps},
              {"batch_size", batch_size},
              {"lr", json_float(lr)},
              {"warmup", warmup},
              {"min_lr_ratio", json_float(min_lr_ratio)},
              {"grad_clip", json_float(grad_clip)},
              {"ema_decay", json_float(ema_decay)},
              {"checkpoint_every", checkpoint_every},
              {"log_every", log_every},
              {"eval_images", eval_images},
              {"eval_steps", eval_steps},
              {"classifier_dir", classifier_dir},
              {"seed", seed},
              {"limit_images", limit_images},
              {"out_dir", out_dir}};
}

SrTrainConfig SrTrainConfig::from_json(const json& j, const std::string& where) {
  STIPPLE_CHECK(j.is_object(), where, ": a training config must be a JSON object");
  const io::JsonConfig c(j, where);
  SrTrainConfig t;
  t.data = c.string("data", t.data);
  t.data_dir = c.string("data_dir", t.data_dir);
  t.scale = c.integer("scale", t.scale);
  t.block_out_channels = c.int_list("block_out_channels", t.block_out_channels);
  t.layers_per_block = c.integer("layers_per_block", t.layers_per_block);
  t.norm_num_groups = c.integer("norm_num_groups", t.norm_num_groups);
  t.max_noise_level = c.integer("max_noise_level", t.max_noise_level);
  t.noise_level = c.integer("noise_level", t.noise_level);
  t.blur_prob = static_cast<float>(c.number("blur_prob", t.blur_prob));
  t.prediction_type = c.string("prediction_type", t.prediction_type);
  t.steps = c.integer("steps", t.steps);
  t.batch_size = static_cast<int>(c.integer("batch_size", t.batch_size));
  t.lr = static_cast<float>(c.number("lr", t.lr));
  t.warmup = c.integer("warmup", t.warmup);
  t.min_lr_ratio = static_cast<float>(c.number("min_lr_ratio", t.min_lr_ratio));
  t.grad_clip = static_cast<float>(c.number("grad_clip", t.grad_clip));
  t.ema_decay = static_cast<float>(c.number("ema_decay", t.ema_decay));
  t.checkpoint_every = c.integer("checkpoint_every", t.checkpoint_every);
  t.log_every = c.integer("log_every", t.log_every);
  t.eval_images = static_cast<int>(c.integer("eval_images", t.eval_images));
  t.eval_steps = static_cast<int>(c.integer("eval_steps", t.eval_steps));
  t.classifier_dir = c.string("classifier_dir", t.classifier_dir);
  t.seed = static_cast<uint64_t>(c.integer("seed", static_cast<int64_t>(t.seed)));
  t.limit_images = c.integer("limit_images", t.limit_images);
  t.out_dir = c.string("out_dir", t.out_dir);
  t.validate();
  return t;
}

void SrTrainConfig::validate() const {
  STIPPLE_CHECK(data == "fashion-mnist" || data == "emoji", "train-sr: unknown data set '", data,
                "' (fashion-mnist or emoji)");
  STIPPLE_CHECK(scale == 2 || scale == 4, "train-sr: scale must be 2 or 4, got ", scale);
  STIPPLE_CHECK(!block_out_channels.empty() && block_out_channels.size() <= 4,
                "train-sr: between 1 and 4 levels of channels are needed, got ",
                block_out_channels.size());
  STIPPLE_CHECK(norm_num_groups >= 1, "train-sr: norm groups must be positive");
  for (int64_t ch : block_out_channels)
    STIPPLE_CHECK(ch >= 1 && ch <= 1024 && ch % norm_num_groups == 0 && ch % 8 == 0,
                  "train-sr: channel count ", ch, " must be in [8, 1024], a multiple of 8 and of "
                  "the ", norm_num_groups, " norm groups");
  STIPPLE_CHECK(layers_per_block >= 1 && layers_per_block <= 8,
                "train-sr: layers per block must be in [1, 8]");
  STIPPLE_CHECK(max_noise_level >= 0 && max_noise_level < kTrainTimesteps && noise_level >= 0 &&
                    noise_level <= max_noise_level,
                "train-sr: need 0 <= noise level (", noise_level, ") <= max noise level (",
                max_noise_level, ") < ", kTrainTimesteps);
  STIPPLE_CHECK(blur_prob >= 0 && blur_prob <= 1, "train-sr: blur probability must be in [0, 1]");
  STIPPLE_CHECK(prediction_type == "epsilon" || prediction_type == "v_prediction",
                "train-sr: prediction type \"", prediction_type, "\" (epsilon or v_prediction)");
  STIPPLE_CHECK(steps >= 1 && steps <= 100000000, "train-sr: steps must be in [1, 1e8]");
  STIPPLE_CHECK(batch_size >= 1 && batch_size <= 4096, "train-sr: batch size must be in [1, 4096]");
  STIPPLE_CHECK(lr > 0 && std::isfinite(lr), "train-sr: lr must be positive");
  STIPPLE_CHECK(ema_decay >= 0 && ema_decay < 1, "train-sr: EMA decay must be in [0, 1)");
  STIPPLE_CHECK(checkpoint_every >= 1 && log_every >= 1,
                "train-sr: checkpoint and log intervals must be >= 1");
  STIPPLE_CHECK(eval_images >= 0 && eval_steps >= 1, "train-sr: eval images >= 0, steps >= 1");
  STIPPLE_CHECK(!out_dir.empty(), "train-sr: an output folder is needed");
}

json SrMetrics::to_json() const {
  json j = {{"heldout_images", images},
            {"psnr_db", {{"sr", psnr_sr}, {"bicubic", psnr_bicubic}}},
            {"ssim", {{"sr", ssim_sr}, {"bicubic", ssim_bicubic}}},
            {"sampling_seconds", seconds}};
  if (accuracy_sr >= 0)
    j["classifier_accuracy"] = {
        {"real", accuracy_real}, {"bicubic", accuracy_bicubic}, {"sr", accuracy_sr}};
  return j;
}

// ---------------- evaluation ----------------

HeldOut sr_heldout_images(const std::string& data, const std::string& data_dir, int64_t count) {
  if (data == "emoji") {
    const EmojiData d = EmojiData::load(data_dir.empty() ? EmojiData::default_dir() : data_dir);
    std::vector<int64_t> idx = d.heldout_indices();
    if (count > 0 && count < static_cast<int64_t>(idx.size())) idx.resize(static_cast<size_t>(count));
    const int64_t n = static_cast<int64_t>(idx.size());
    return {d.load_images(idx), Tensor::full({n}, -1.0).to(DType::kI64)};
  }
  const FashionMnist f =
      FashionMnist::load(data_dir.empty() ? FashionMnist::kDefaultDir : data_dir, Split::kTest);
  const int64_t n = count > 0 ? std::min<int64_t>(count, f.size()) : f.size();
  return {f.images().narrow(0, 0, n).contiguous(), f.labels().narrow(0, 0, n).contiguous()};
}

SrMetrics evaluate_sr(const pipelines::SuperResolutionPipeline& model, const HeldOut& heldout,
                      const pipelines::UpscaleParams& params, const std::string& classifier_dir,
                      const std::string& compare_png,
                      const std::function<void(int, int)>& progress) {
  autograd::NoGradGuard no_grad;
  const Tensor& hi = heldout.images;  // [N, C, H, W] in [-1, 1]
  const int64_t n = hi.size(0), s = model.scale(), H = hi.size(2), W = hi.size(3);
  STIPPLE_CHECK(hi.size(1) == model.channels() && H % s == 0 && W % s == 0,
                "evaluate_sr: the held-out images ", hi.describe(), " do not fit a x", s,
                " model for ", model.channels(), "-channel images");
  const Tensor low = pipelines::downsample_area(hi, s);  // [N, C, H/s, W/s]
  const Tensor bicubic = ops::clamp(pipelines::resize_bicubic(low, H, W), -1.0f, 1.0f);
  std::vector<Tensor> parts;
  const auto start = std::chrono::steady_clock::now();
  constexpr int64_t kBatch = 50;
  for (int64_t b = 0; b < n; b += kBatch) {
    const int64_t m = std::min(kBatch, n - b);
    pipelines::UpscaleParams p = params;
    p.seed = params.seed + static_cast<uint64_t>(b);
    const Tensor unit = ops::affine(low.narrow(0, b, m), 0.5f, 0.5f);  // [0, 1]
    parts.push_back(ops::affine(model.run(unit, p), 2.0f, -1.0f));      // [-1, 1]
    if (progress) progress(static_cast<int>(b + m), static_cast<int>(n));
  }
  const Tensor sr = ops::concat(parts, 0);
  SrMetrics m;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  m.images = n;
  m.psnr_sr = psnr(sr, hi);
  m.psnr_bicubic = psnr(bicubic, hi);
  if (H >= 11 && W >= 11) {
    m.ssim_sr = ssim(sr, hi);
    m.ssim_bicubic = ssim(bicubic, hi);
  }
  if (!classifier_dir.empty() && model.channels() == 1) {
    const auto classifier = models::FashionClassifier::from_pretrained(classifier_dir);
    const std::vector<int64_t> labels = heldout.labels.to_vector_i64();
    const int64_t k = classifier->config().num_classes;
    auto accuracy_of = [&](const Tensor& x) {
      return static_cast<double>(accuracy(classify(*classifier, x), labels, k).overall);
    };
    m.accuracy_real = accuracy_of(hi);
    m.accuracy_bicubic = accuracy_of(bicubic);
    m.accuracy_sr = accuracy_of(sr);
  }
  if (!compare_png.empty()) {
    const int64_t k = std::min<int64_t>(16, n);
    const Tensor nearest = pipelines::resize_nearest(low.narrow(0, 0, k), H, W);
    const Tensor grid = io::make_grid(
        ops::concat({hi.narrow(0, 0, k), nearest, bicubic.narrow(0, 0, k), sr.narrow(0, 0, k)}, 0),
        static_cast<int>(k), 2);
    io::write_png(compare_png, io::tensor_to_image(grid),
                  {{"parameters", str_cat("stipple train-sr: held-out images; rows: original, "
                                          "the low-resolution input (x", s, ", nearest), bicubic, "
                                          "SR (", params.steps, " steps of ",
                                          params.sampler.empty() ? "its own sampler" : params.sampler,
                                          ", noise level ",
                                          params.noise_level < 0 ? model.default_noise_level()
                                                                 : params.noise_level,
                                          ")")}});
  }
  return m;
}

// ---------------- training ----------------

SrMetrics train_sr(const SrTrainConfig& config_in, bool resume,
                   const std::function<void(const SrProgress&)>& progress,
                   const std::function<void(const std::string&)>& message,
                   const std::function<bool()>& should_stop) {
  auto say = [&](const std::string& s) {
    if (message) message(s);
  };
  const std::string state_path = config_in.out_dir + "/" + kStateFile;
  RunState state;
  SrTrainConfig config = resumed_config(config_in, resume, state_path, &state);
  config.validate();

  // 1. data
  const Tensor images = training_images(config);  // [N, C, H, W]
  const int64_t n = images.size(0), channels = images.size(1), size = images.size(2);
  STIPPLE_CHECK(size % config.scale == 0 && size / config.scale >= 4,
                "train-sr: ", size, "x", size, " images cannot be reduced by ", config.scale);
  STIPPLE_CHECK(n >= config.batch_size, "train-sr: ", n, " images, fewer than the batch size ",
                config.batch_size);
  const int64_t levels = static_cast<int64_t>(config.block_out_channels.size());
  STIPPLE_CHECK(size % (int64_t{1} << (levels - 1)) == 0, "train-sr: ", size, "x", size,
                " images do not halve ", levels - 1, " times (give fewer --channels)");
  say(str_cat("train-sr: ", n, " ", config.data, " images, ", size / config.scale, "x",
              size / config.scale, " -> ", size, "x", size));

  // 2. model, optimiser, EMA, data order, RNG
  const json unet_config = unet_json(config, channels, size);
  auto unet = std::make_shared<models::UNet2DConditionModel>(
      models::UNet2DConditionConfig::from_json(io::JsonConfig(unet_config, "train-sr UNet")));
  Generator init(config.seed);
  unet->reset_parameters(init);
  unet->train();
  std::vector<Tensor> params;
  for (const auto& [name, p] : unet->named_parameters()) params.push_back(p);
  AdamW opt(params, AdamWConfig{config.lr, 0.9f, 0.999f, 1e-8f, 0.0f});
  EmaConfig ema_config;
  ema_config.decay = config.ema_decay;
  Ema ema(params, ema_config);
  DataLoader loader(images, Tensor::arange(n, DType::kI64), config.batch_size, config.seed + 2,
                    /*hflip=*/config.data == "fashion-mnist");
  Generator gen(config.seed + 1);
  int64_t step = 0;
  if (resume) {
    unet->load_state_dict(with_prefix(state.tensors, "model."), true, state_path);
    opt.load_state_dict(with_prefix(state.tensors, "optimizer."));
    ema.load_state_dict(with_prefix(state.tensors, "ema."));
    loader.load_state_dict(with_prefix(state.tensors, "data."));
    gen.set_state(state.rng);
    step = state.step;
    say(str_cat("train-sr: resumed at step ", step, " of ", config.steps));
  } else {
    say(str_cat("train-sr: UNet with ", unet->num_parameters(), " parameters"));
  }
  prepare_run_folder(config.out_dir, "train_config.json", config.to_json(), say);
  const std::vector<float> acp = schedulers::alphas_cumprod_from_betas(
      schedulers::make_betas("linear", kTrainTimesteps, 0.0001, 0.02));
  const schedulers::PredictionType prediction =
      schedulers::parse_prediction_type(config.prediction_type);

  const RunClock clock(state.elapsed_seconds);
  auto checkpoint = [&] {
    ema.store(params);
    ema.copy_to(params);
    write_sr_folder(config.out_dir, config, *unet, unet_config, channels, size / config.scale);
    ema.restore(params);
    RunState s = make_run_state(step, clock.seconds(), gen, config.to_json());
    add_prefixed(s.tensors, "model.", unet->state_dict());
    add_prefixed(s.tensors, "optimizer.", opt.state_dict());
    add_prefixed(s.tensors, "ema.", ema.state_dict());
    add_prefixed(s.tensors, "data.", loader.state_dict());
    save_run_state(state_path, s, "stipple-sr-training-state");
  };
  CsvLog log(config.out_dir + "/log.csv", "step,loss,lr,grad_norm,seconds");
  if (resume) log.resume(step);

  // 3. train
  double w_loss = 0, w_grad = 0;
  int64_t w_n = 0;
  float shown = 0;
  const int64_t first = step;
  while (step < config.steps) {
    const DataLoader::Batch batch = loader.next();
    const Tensor& x0 = batch.images;  // [B, C, H, W]
    const int64_t b = x0.size(0);
    // the draws, in this order: augmentation levels, blur coins and sigmas, low-res noise,
    // timesteps, noise
    std::vector<int64_t> aug(static_cast<size_t>(b)), tv(static_cast<size_t>(b));
    for (auto& l : aug)
      l = static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(config.max_noise_level + 1));
    const std::vector<float> coin = gen.rand({b}).to_vector(), u = gen.rand({b}).to_vector();
    std::vector<float> sigma(static_cast<size_t>(b), 0.0f);
    for (int64_t i = 0; i < b; ++i)
      if (coin[i] < config.blur_prob) sigma[i] = 0.4f + 0.2f * u[i];
    Tensor low = pipelines::downsample_area(x0, config.scale);  // [B, C, h, w]
    if (config.blur_prob > 0) low = blur3(low, sigma);
    const Tensor cond = pipelines::sr_condition(low, aug, acp, gen.randn(low.shape()), config.scale);
    for (auto& t : tv) t = static_cast<int64_t>(gen.next_u64() % kTrainTimesteps);
    const Tensor t = Tensor::from_vector_i64(tv, {b});
    const Tensor noise = gen.randn(x0.shape());
    const Tensor xt = schedulers::add_noise(acp, x0, noise, t);
    const Tensor pred = unet->forward(ops::concat({xt, cond}, 1), t, Tensor(),
                                      Tensor::from_vector_i64(aug, {b}));
    const Tensor target = schedulers::prediction_target(prediction, acp, x0, noise, t);
    const Tensor loss = ops::mean(ops::square(pred - target));
    opt.zero_grad();
    loss.backward();
    const float gn = clip_grad_norm(params, config.grad_clip > 0
                                                ? config.grad_clip
                                                : std::numeric_limits<float>::infinity());
    const float lr =
        warmup_cosine_lr(config.lr, config.warmup, config.steps, config.min_lr_ratio, step);
    opt.set_lr(lr);
    opt.step();
    ema.step(params);
    ++step;
    const float l = loss.item();
    STIPPLE_CHECK(std::isfinite(l), "train-sr: the loss became ", l, " at step ", step,
                  " (lower --lr)");
    w_loss += l, w_grad += gn, ++w_n;
    shown = step - first == 1 ? l : 0.98f * shown + 0.02f * l;
    if (progress) progress({step, config.steps, shown});
    const bool stop = should_stop && should_stop();
    if (step % config.log_every == 0 || step == config.steps || stop) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "%lld,%.6g,%.6g,%.6g,%.2f", static_cast<long long>(step),
                    w_loss / w_n, lr, w_grad / w_n, clock.seconds());
      log.append(buf);
      w_loss = w_grad = 0, w_n = 0;
    }
    if (step % config.checkpoint_every == 0 || step == config.steps || stop) checkpoint();
    if (stop && step < config.steps) {
      say(str_cat("train-sr: stopped at step ", step, "; continue with --resume"));
      return {};
    }
  }
  const double train_seconds = clock.seconds(), run_seconds = clock.this_run();

  // 4. held-out scores of the saved folder (EMA weights), next to bicubic
  SrMetrics m;
  if (config.eval_images > 0) {
    const auto model = pipelines::SuperResolutionPipeline::from_pretrained(config.out_dir);
    const HeldOut heldout = sr_heldout_images(config.data, config.data_dir, config.eval_images);
    say(str_cat("train-sr: upscaling ", heldout.images.size(0), " held-out images"));
    pipelines::UpscaleParams p;
    p.steps = config.eval_steps;
    m = evaluate_sr(model, heldout, p, config.classifier_dir,
                    config.out_dir + "/compare.png");
  }
  json mj = m.to_json();
  mj["steps"] = step;
  mj["train_seconds"] = train_seconds;
  mj["images_per_second"] =
      (step - first) * config.batch_size / std::max(1e-9, run_seconds);
  io::write_file_atomic(config.out_dir + "/metrics.json", mj.dump(2) + "\n");
  return m;
}

}  // namespace stipple::train

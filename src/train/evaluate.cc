// Evaluating a class-conditional generator: sampling, CAS, FID_feat and their real floors.
#include "train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/png.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "train/datasets.h"
#include "train/frechet.h"
#include "train/train_classifier.h"
#include "train/trainer.h"

namespace stipple::train {

namespace fs = std::filesystem;

void EvalConfig::validate() const {
  STIPPLE_CHECK(samples_per_class >= 1, "--samples-per-class must be >= 1, got ",
                samples_per_class);
  STIPPLE_CHECK(steps >= 1 && steps <= 1000, "--steps must be in [1, 1000], got ", steps);
  STIPPLE_CHECK(batch_size >= 1, "--batch-size must be >= 1, got ", batch_size);
  STIPPLE_CHECK(std::isfinite(cfg) && cfg >= 0, "--cfg must be >= 0, got ", cfg);
  pipelines::check_guidance_interval(guidance_interval);
  STIPPLE_CHECK(std::isfinite(guide_scale) && std::abs(guide_scale) <= 1000,
                "the classifier guidance scale must be in [-1000, 1000], got ", guide_scale);
  STIPPLE_CHECK(guidance_rescale >= 0.0f && guidance_rescale <= 1.0f,
                "the guidance rescale must be in [0, 1], got ", guidance_rescale);
  STIPPLE_CHECK(guide_share >= 0.0f && guide_share <= 1.0f,
                "the guide model's share must be in [0, 1], got ", guide_share);
  STIPPLE_CHECK(upscaler_steps >= 1 && upscaler_steps <= 1000,
                "the upscaler's steps must be in [1, 1000], got ", upscaler_steps);
  STIPPLE_CHECK(!unconditional || cfg <= 1.0f,
                "an unconditional run takes no classifier-free guidance (--cfg 1), got ", cfg);
  STIPPLE_CHECK(guide_scale == 0.0f || (guide && guide->noisy()),
                "classifier guidance needs a noisy-image classifier (stipple train-classifier "
                "--noisy)", guide ? str_cat("; ", guide_dir.empty() ? "this one" : guide_dir,
                                            " was trained on clean images") : std::string());
}

// ---------------- the generator ----------------

SamplingDefaults SamplingDefaults::from_model_index(const nlohmann::json& index,
                                                   const std::string& where) {
  SamplingDefaults d;
  if (!index.is_object() || !index.contains(kKey)) return d;
  const std::string at = str_cat(where, " (", kKey, ")");
  STIPPLE_CHECK(index.at(kKey).is_object(), at, " must be an object, e.g. {\"cfg\": 2}");
  const io::JsonConfig c(index.at(kKey), at);
  d.steps = static_cast<int>(c.integer("steps", d.steps));
  d.sampler = c.string("sampler", d.sampler);
  d.cfg = static_cast<float>(c.number("cfg", d.cfg));
  STIPPLE_CHECK(d.steps >= 1 && d.steps <= 1000, at, ": steps must be in [1, 1000], got ",
                d.steps);
  STIPPLE_CHECK(schedulers::find_sampler(d.sampler) != nullptr, at, ": unknown sampler \"",
                d.sampler, "\"");
  STIPPLE_CHECK(std::isfinite(d.cfg) && d.cfg >= 0 && d.cfg <= 100, at,
                ": cfg must be in [0, 100], got ", d.cfg);
  if (c.has("guidance_interval")) {
    const nlohmann::json& iv = c.raw().at("guidance_interval");
    auto bound = [&](const nlohmann::json& v) {
      if (v.is_string() && v.get<std::string>() == "inf")
        return std::numeric_limits<float>::infinity();
      STIPPLE_CHECK(v.is_number(), at, ": guidance_interval holds numbers (or \"inf\"), got ",
                    v.dump());
      return v.get<float>();
    };
    STIPPLE_CHECK(iv.is_array() && iv.size() == 2, at,
                  ": guidance_interval must be [low, high], got ", iv.dump());
    d.guidance_interval = {bound(iv[0]), bound(iv[1])};
    try {
      pipelines::check_guidance_interval(d.guidance_interval);
    } catch (const Error& e) {
      throw Error(str_cat(at, ": ", e.what()), e.kind());
    }
  }
  d.guide_model = c.string("guide_model", "");
  const fs::path g(d.guide_model);
  STIPPLE_CHECK(d.guide_model.empty() ||
                    (g.is_relative() && std::none_of(g.begin(), g.end(),
                                                     [](const fs::path& p) { return p == ".."; })),
                at, ": guide_model must name a folder inside the model's own, got \"",
                d.guide_model, "\"");
  return d;
}

namespace {
// [low, high] as model_index.json and eval's JSON write it: "inf" for no upper end.
nlohmann::json interval_json(const pipelines::GuidanceInterval& iv) {
  return {json_float(iv.lo),
          std::isfinite(iv.hi) ? nlohmann::json(json_float(iv.hi)) : nlohmann::json("inf")};
}
}  // namespace

nlohmann::json SamplingDefaults::to_json() const {
  nlohmann::json j = {{"steps", steps}, {"sampler", sampler}, {"cfg", json_float(cfg)}};
  if (guidance_interval.limited()) j["guidance_interval"] = interval_json(guidance_interval);
  if (!guide_model.empty()) j["guide_model"] = guide_model;
  return j;
}

namespace {
// A generator folder as load() takes it: the folder itself, or a run's export/ or latest/.
fs::path resolve_generator_folder(const std::string& folder) {
  const char* kHint =
      " (give a folder written by `stipple train`: a run's checkpoint-<step>/, latest/ or "
      "export/, or the run folder itself)";
  fs::path dir(folder);
  STIPPLE_CHECK(fs::is_directory(dir), "no such model folder: ", folder, kHint);
  // A run folder: its final export, else its latest checkpoint.
  if (!fs::exists(dir / "model_index.json")) {
    if (fs::exists(dir / "export" / "model_index.json")) {
      dir /= "export";
    } else if (fs::exists(dir / "latest" / "model_index.json")) {
      dir /= "latest";
    }
  }
  STIPPLE_CHECK(fs::exists(dir / "model_index.json"), folder,
                " is not a generator folder: missing model_index.json", kHint);
  STIPPLE_CHECK(!fs::exists(dir / "vae"), dir.string(),
                " has a VAE (a latent DiT); stipple eval and stipple tune take pixel-space "
                "class-conditional generators as `stipple train --data fashion-mnist` writes them");
  for (const char* part : {"transformer/config.json", "scheduler/scheduler_config.json"})
    STIPPLE_CHECK(fs::exists(dir / part), dir.string(), " is missing ", part, kHint);
  return dir;
}
}  // namespace

ClassGenerator ClassGenerator::load(const std::string& folder) {
  const fs::path dir = resolve_generator_folder(folder);
  ClassGenerator g;
  g.folder_ = dir.string();
  g.transformer_ = models::DiTTransformer2DModel::from_pretrained((dir / "transformer").string());
  g.scheduler_ = schedulers::SchedulerConfig::from_json(
      (dir / "scheduler" / "scheduler_config.json").string());
  const std::map<int64_t, std::string> id2label =
      models::read_id2label((dir / "model_index.json").string());
  const std::string index_path = (dir / "model_index.json").string();
  g.defaults_ = SamplingDefaults::from_model_index(
      io::JsonConfig::from_file(index_path).raw(), index_path);
  for (int64_t c = 0; c < g.num_classes(); ++c) {
    const auto it = id2label.find(c);
    g.class_names_.push_back(it != id2label.end() ? it->second : std::to_string(c));
  }
  if (!g.defaults_.guide_model.empty()) {
    try {
      g.set_guide_model((dir / g.defaults_.guide_model).string());
    } catch (const Error& e) {
      throw Error(str_cat(index_path, " (", SamplingDefaults::kKey, ".guide_model): ", e.what()),
                  e.kind());
    }
  }
  return g;
}

void ClassGenerator::set_guide_model(const std::string& folder) {
  if (folder.empty()) {
    guide_.reset();
    guide_folder_.clear();
    return;
  }
  const fs::path dir = resolve_generator_folder(folder);
  auto guide = models::DiTTransformer2DModel::from_pretrained((dir / "transformer").string());
  const models::DiTConfig &a = transformer_->config(), &b = guide->config();
  auto shape = [](const models::DiTConfig& c) {
    return str_cat(c.num_embeds_ada_norm, " classes, ", c.in_channels, "x", c.sample_size, "x",
                   c.sample_size, " images");
  };
  STIPPLE_CHECK(a.num_embeds_ada_norm == b.num_embeds_ada_norm && a.in_channels == b.in_channels &&
                    a.sample_size == b.sample_size,
                "the guide model ", dir.string(), " (", shape(b),
                ") cannot guide the generator ", folder_, " (", shape(a), ")");
  const schedulers::SchedulerConfig sc = schedulers::SchedulerConfig::from_json(
      (dir / "scheduler" / "scheduler_config.json").string());
  STIPPLE_CHECK(sc.prediction_type == scheduler_.prediction_type, "the guide model ", dir.string(),
                " predicts ", schedulers::to_string(sc.prediction_type), ", the generator ",
                folder_, " ", schedulers::to_string(scheduler_.prediction_type),
                ": autoguidance mixes two predictions of one kind");
  STIPPLE_CHECK(sc.num_train_timesteps == scheduler_.num_train_timesteps &&
                    sc.beta_schedule == scheduler_.beta_schedule &&
                    sc.beta_start == scheduler_.beta_start && sc.beta_end == scheduler_.beta_end &&
                    sc.trained_betas == scheduler_.trained_betas,
                "the guide model ", dir.string(), " was trained on another noise schedule than ",
                "the generator ", folder_, " (scheduler_config.json's betas differ)");
  guide->to(device_);
  guide_ = std::move(guide);
  guide_folder_ = dir.string();
}

ClassGenerator ClassGenerator::from_model(
    std::shared_ptr<models::DiTTransformer2DModel> transformer,
    schedulers::SchedulerConfig scheduler, std::vector<std::string> class_names,
    std::string folder) {
  STIPPLE_CHECK(transformer != nullptr, "ClassGenerator::from_model: no model");
  ClassGenerator g;
  g.folder_ = std::move(folder);
  g.transformer_ = std::move(transformer);
  g.scheduler_ = std::move(scheduler);
  g.class_names_ = std::move(class_names);
  STIPPLE_CHECK(static_cast<int64_t>(g.class_names_.size()) == g.num_classes(),
                "ClassGenerator::from_model: ", g.class_names_.size(), " class names for ",
                g.num_classes(), " classes");
  return g;
}

void ClassGenerator::to(Device device) {
  transformer_->to(device);
  if (guide_) guide_->to(device);
  device_ = device;
}

Tensor ClassGenerator::sample(const std::vector<int64_t>& labels, const EvalConfig& config,
                              const std::function<void(int, int)>& progress,
                              const pipelines::Preview& preview) const {
  config.validate();
  STIPPLE_CHECK(!labels.empty(), "sample: no labels");
  const int64_t K = num_classes();
  for (int64_t l : labels)
    STIPPLE_CHECK(l >= 0 && l < K, "sample: class ", l, " outside [0, ", K, ")");
  autograd::NoGradGuard no_grad;
  const int64_t N = static_cast<int64_t>(labels.size());
  const int64_t C = channels(), S = image_size();
  const schedulers::SchedulerConfig sc = schedulers::config_for_sampler(config.sampler, scheduler_);
  Generator noise_gen(config.seed);
  const Tensor noise = noise_gen.randn({N, C, S, S});  // x_T of every image
  const int64_t B = config.batch_size;
  const int batches = static_cast<int>((N + B - 1) / B);
  std::vector<Tensor> out;
  for (int b = 0; b < batches; ++b) {
    const int64_t start = b * B, m = std::min(B, N - start);
    // 1. a fresh scheduler per batch (multistep solvers keep state)
    auto scheduler = schedulers::make_scheduler(sc);
    scheduler->set_timesteps(config.steps);
    // 2. labels: [y] unguided, [y, null] with guidance (DiT's cond-first order)
    const std::vector<int64_t> ys(labels.begin() + start, labels.begin() + start + m);
    std::vector<int64_t> both = ys;
    both.insert(both.end(), ys.size(), K);  // the null class
    const Tensor y = Tensor::from_vector_i64(ys, {m});  // on the CPU, for a guiding classifier
    const Tensor y2 = Tensor::from_vector_i64(both, {2 * m}).to(device_);
    const Tensor y_model = (config.unconditional
                                ? Tensor::from_vector_i64(std::vector<int64_t>(m, K), {m})
                                : y)
                               .to(device_);  // what the denoiser is given
    // 3. x_T, scaled for the sampler
    Tensor x = noise.narrow(0, start, m).contiguous().to(device_) *
               static_cast<float>(scheduler->init_noise_sigma());  // [m, C, S, S]
    Generator step_gen(config.seed + 1 + static_cast<uint64_t>(b));
    pipelines::DenoiseOptions opt;
    opt.cfg.scale = config.cfg;
    opt.cfg.order = guidance::CfgOrder::kCondFirst;
    opt.cfg.interval = config.guidance_interval;
    opt.cfg.rescale = config.guidance_rescale;
    opt.generator = &step_gen;
    if (progress)
      opt.progress = [&](int done, int total) { progress(b * total + done, batches * total); };
    opt.preview = preview;
    opt.decode_preview = [](const Tensor& x0) {  // pixel space: [-1, 1] -> [0, 1]
      return pipelines::vae_to_unit(x0).to(Device::kCPU);
    };
    if (config.guide && config.guide_scale != 0.0f) {
      opt.classifier.scale = config.guide_scale;
      opt.classifier.log_prob = [&](const Tensor& x_t, double t) {
        // The classifier runs on the CPU; the gradient flows back to x_t's device.
        return config.guide->log_prob(x_t.to(Device::kCPU), y,
                                      Tensor::full({x_t.size(0)}, static_cast<float>(t)));
      };
    }
    // Autoguidance: the guided call's second half (where the null class would go) is the guide
    // model's prediction for the same classes.
    const bool autoguide = autoguides(config);
    auto eps = [&](const models::DiTTransformer2DModel& model, const Tensor& input, double t,
                   const Tensor& labels) {
      const int64_t n = input.size(0);
      const Tensor tt = Tensor::full({n}, t).to(device_);  // [n] f32
      const Tensor o = model.forward(input, tt, labels);   // [n, C_out, S, S]
      return o.size(1) == C ? o : o.narrow(1, 0, C).contiguous();  // learned sigma: eps only
    };
    auto fn = [&](const Tensor& input, double t) {
      const int64_t n = input.size(0);
      if (n == m) return eps(*transformer_, input, t, y_model);
      if (!autoguide) return eps(*transformer_, input, t, y2);
      const Tensor x_half = input.narrow(0, 0, m);  // both halves hold the same x_t
      const Tensor guided = eps(*guide_, x_half, t, y_model);
      if (config.guide_share >= 1.0f)
        return ops::concat({eps(*transformer_, x_half, t, y_model), guided}, 0);
      const Tensor both = eps(*transformer_, input, t, y2);  // [cond; null]
      const float s = config.guide_share;
      return ops::concat({both.narrow(0, 0, m),
                          both.narrow(0, m, m) * (1.0f - s) + guided * s},
                         0);
    };
    // 4. denoise, then the valid range
    out.push_back(
        ops::clamp(pipelines::denoise(*scheduler, x, fn, opt), -1.0f, 1.0f).to(Device::kCPU));
  }
  return out.size() == 1 ? out[0] : ops::concat(out, 0);  // [N, C, S, S]
}

// ---------------- real data ----------------

RealData load_real_data(const std::string& data_dir, bool pad_to_32) {
  const FashionMnist test = FashionMnist::load(data_dir, Split::kTest, pad_to_32);
  const FashionMnist train = FashionMnist::load(data_dir, Split::kTrain, pad_to_32);
  return {test.images(), test.labels(), train.images(), train.labels()};
}

// ---------------- metrics ----------------

namespace {

// The classifier's features [N, D] and predicted classes, in batches, without gradients.
struct FeaturePass {
  Tensor features;
  std::vector<int64_t> predictions;
};
FeaturePass feature_pass(const models::FashionClassifier& classifier, const Tensor& images,
                         const std::function<void(int, int)>& progress, int64_t batch = 500) {
  autograd::NoGradGuard no_grad;
  const int64_t n = images.size(0);
  FeaturePass r;
  std::vector<Tensor> feats;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t m = std::min(batch, n - b);
    const Tensor f = classifier.features(images.narrow(0, b, m));             // [m, D]
    const std::vector<float> logits = classifier.head_logits(f).to_vector();  // [m, K]
    const int64_t k = static_cast<int64_t>(logits.size()) / m;
    for (int64_t i = 0; i < m; ++i) {
      const float* row = logits.data() + i * k;
      r.predictions.push_back(std::max_element(row, row + k) - row);
    }
    feats.push_back(f.contiguous());
    if (progress) progress(static_cast<int>(b + m), static_cast<int>(n));
  }
  r.features = feats.size() == 1 ? feats[0] : ops::concat(feats, 0);
  return r;
}

// `per_class` indices of each class from a seeded shuffle of `labels` (class order, then the
// shuffle's order). Throws when a class has too few images.
std::vector<int64_t> balanced_subset(const std::vector<int64_t>& labels, int64_t num_classes,
                                     int64_t per_class, uint64_t seed) {
  std::vector<int64_t> order(labels.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  Generator g(seed);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[g.next_u64() % i]);
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (int64_t i : order) {
    const int64_t y = labels[i];
    if (y >= 0 && y < num_classes && static_cast<int64_t>(by_class[y].size()) < per_class)
      by_class[y].push_back(i);
  }
  std::vector<int64_t> out;
  for (int64_t c = 0; c < num_classes; ++c) {
    STIPPLE_CHECK(static_cast<int64_t>(by_class[c].size()) == per_class, "eval: the real pool has ",
                  by_class[c].size(), " images of class ", c, ", fewer than the ", per_class,
                  " the matched-N floor needs (lower --samples-per-class)");
    out.insert(out.end(), by_class[c].begin(), by_class[c].end());
  }
  return out;
}

std::string percent(float v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * v);
  return buf;
}

std::string number(double v) {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

nlohmann::json per_class_json(const std::vector<std::string>& names, const std::vector<float>& v) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t c = 0; c < v.size(); ++c)
    j[c < names.size() ? names[c] : std::to_string(c)] =
        std::isnan(v[c]) ? nlohmann::json(nullptr) : nlohmann::json(json_float(v[c]));
  return j;
}

nlohmann::json per_class_json(const std::vector<std::string>& names,
                              const std::vector<double>& v) {
  nlohmann::json j = nlohmann::json::object();
  for (size_t c = 0; c < v.size(); ++c)
    j[c < names.size() ? names[c] : std::to_string(c)] =
        std::isnan(v[c]) ? nlohmann::json(nullptr) : nlohmann::json(v[c]);
  return j;
}

}  // namespace

EvalResult evaluate(const ClassGenerator& generator, const models::FashionClassifier& classifier,
                    const RealData& real, const EvalConfig& config, const EvalProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  config.validate();
  const models::FashionClassifierConfig& cc = classifier.config();
  const int64_t K = generator.num_classes();
  STIPPLE_CHECK(cc.num_classes == K, "eval: the classifier knows ", cc.num_classes,
                " classes but the generator ", K, " (use a classifier trained on the same data)");
  STIPPLE_CHECK(cc.in_channels == generator.channels(), "eval: the classifier takes ",
                cc.in_channels, "-channel images but the generator makes ", generator.channels());
  const int64_t S = generator.image_size() * (config.upscaler ? config.upscaler->scale() : 1);
  STIPPLE_CHECK(S <= cc.image_size && (cc.image_size - S) % 2 == 0, "eval: the generator makes ", S,
                "x", S, " images; the classifier takes ", cc.image_size, "x", cc.image_size,
                " (or smaller ones it can frame)");
  STIPPLE_CHECK(real.test_images.defined() && real.test_images.size(0) >= 2,
                "eval: no real test images");
  auto phase = [&](const char* name) {
    return [&progress, name](int done, int total) {
      if (progress) progress(name, done, total);
    };
  };

  EvalResult r;
  r.config = config;
  r.class_names = generator.class_names();
  r.model = generator.folder();
  if (generator.autoguides(config)) r.guide_model = generator.guide_model_folder();
  const int64_t per = config.samples_per_class;
  for (int64_t c = 0; c < K; ++c)
    for (int64_t i = 0; i < per; ++i) r.labels.push_back(c);
  r.num_generated = static_cast<int64_t>(r.labels.size());

  // 1. generate
  const auto s0 = std::chrono::steady_clock::now();
  r.samples = generator.sample(r.labels, config, phase("sampling"));
  if (config.upscaler) {  // a cascade's second stage, batch by batch
    std::vector<Tensor> big;
    const int64_t n = r.samples.size(0);
    const int batches = static_cast<int>((n + config.batch_size - 1) / config.batch_size);
    for (int64_t b = 0; b < n; b += config.batch_size) {
      const int64_t m = std::min<int64_t>(config.batch_size, n - b);
      pipelines::UpscaleParams p;
      p.steps = config.upscaler_steps;
      p.sampler = "dpm++2m";
      p.noise_level = config.noise_level;
      p.seed = config.seed + 1000 + static_cast<uint64_t>(b / config.batch_size);
      const int index = static_cast<int>(b / config.batch_size);
      p.progress = [&](int done, int total) {
        if (progress) progress("upscaling", index * total + done, batches * total);
      };
      const Tensor unit = ops::affine(r.samples.narrow(0, b, m), 0.5f, 0.5f);
      big.push_back(ops::affine(config.upscaler->run(unit, p), 2.0f, -1.0f));
    }
    r.samples = ops::concat(big, 0);
  }
  r.sample_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();

  // 2. CAS: the classifier on the generated images
  const FeaturePass gen = feature_pass(classifier, r.samples, phase("features (generated)"));
  const Accuracy cas = accuracy(gen.predictions, r.labels, K);
  r.cas = cas.overall;
  r.cas_per_class = cas.per_class;

  // 3. the real floor of CAS: the classifier on the test images
  const FeaturePass test = feature_pass(classifier, real.test_images, phase("features (test)"));
  const Accuracy ra = accuracy(test.predictions, real.test_labels.to_vector_i64(), K);
  r.real_accuracy = ra.overall;
  r.real_accuracy_per_class = ra.per_class;
  r.num_test = real.test_images.size(0);

  // 4. FID_feat, and its floor: N real training images (matched per class) against the same test
  //    statistics
  const GaussianStats test_stats = gaussian_stats(test.features);
  r.fid_feat = frechet_distance(gaussian_stats(gen.features), test_stats);
  STIPPLE_CHECK(real.train_images.defined(), "eval: no real training images for the floor");
  const std::vector<int64_t> rows =
      balanced_subset(real.train_labels.to_vector_i64(), K, per, config.seed + 7919);
  const FeaturePass ref =
      feature_pass(classifier, gather_rows(real.train_images, rows), phase("features (real N)"));
  r.fid_floor = frechet_distance(gaussian_stats(ref.features), test_stats);
  r.fid_mean_term = frechet_mean_term(gaussian_stats(gen.features), test_stats);
  {
    const std::vector<int64_t> test_labels = real.test_labels.to_vector_i64();
    const std::vector<int64_t> train_labels = real.train_labels.to_vector_i64();
    std::vector<int64_t> ref_labels;
    for (int64_t row : rows) ref_labels.push_back(train_labels[row]);
    auto rows_of = [](const std::vector<int64_t>& labels, int64_t c) {
      std::vector<int64_t> out;
      for (size_t i = 0; i < labels.size(); ++i)
        if (labels[i] == c) out.push_back(static_cast<int64_t>(i));
      return out;
    };
    for (int64_t c = 0; c < K; ++c) {
      const std::vector<int64_t> g = rows_of(r.labels, c), t = rows_of(test_labels, c),
                                 f = rows_of(ref_labels, c);
      if (g.size() < 2 || t.size() < 2 || f.size() < 2) {
        r.fid_per_class.push_back(std::nan(""));
        r.fid_floor_per_class.push_back(std::nan(""));
        continue;
      }
      const GaussianStats tc = gaussian_stats(gather_rows(test.features, t));
      r.fid_per_class.push_back(frechet_distance(gaussian_stats(gather_rows(gen.features, g)), tc));
      r.fid_floor_per_class.push_back(
          frechet_distance(gaussian_stats(gather_rows(ref.features, f)), tc));
    }
  }
  r.floor_method = str_cat("train-vs-test at matched N: ", r.num_generated, " training images (",
                           per, " per class, seeded) against the ", r.num_test, " test images");
  r.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// ---------------- reporting ----------------

nlohmann::json EvalResult::to_json() const {
  return {{"model", model},
          {"classifier", classifier},
          {"sampler", config.sampler},
          {"steps", config.steps},
          {"cfg", json_float(config.cfg)},
          {"guidance_interval", interval_json(config.guidance_interval)},
          {"guidance_rescale", json_float(config.guidance_rescale)},
          {"autoguidance", {{"model", guide_model}}},
          {"classifier_guidance", {{"classifier", config.guide_dir},
                                   {"scale", json_float(config.guide_scale)}}},
          {"upscaler", {{"model", config.upscaler_dir},
                        {"steps", config.upscaler ? config.upscaler_steps : 0},
                        {"noise_level", config.noise_level}}},
          {"unconditional", config.unconditional},
          {"seed", config.seed},
          {"samples_per_class", config.samples_per_class},
          {"num_generated", num_generated},
          {"num_test", num_test},
          {"cas", json_float(cas)},
          {"cas_per_class", per_class_json(class_names, cas_per_class)},
          {"real_accuracy", json_float(real_accuracy)},
          {"real_accuracy_per_class", per_class_json(class_names, real_accuracy_per_class)},
          {"fid_feat", fid_feat},
          {"fid_feat_floor", fid_floor},
          {"fid_feat_floor_method", floor_method},
          {"fid_feat_mean_term", fid_mean_term},
          {"fid_feat_per_class", per_class_json(class_names, fid_per_class)},
          {"fid_feat_floor_per_class", per_class_json(class_names, fid_floor_per_class)},
          {"goals",
           {{"cas", {{"rule", "cas >= real_accuracy - 0.03"}, {"met", cas_goal_met()}}},
            {"fid_feat", {{"rule", "fid_feat <= 2 * fid_feat_floor"}, {"met", fid_goal_met()}}}}},
          {"sample_seconds", sample_seconds},
          {"total_seconds", total_seconds}};
}

std::string EvalResult::table() const {
  std::ostringstream os;
  char line[160];
  std::snprintf(line, sizeof line, "%-16s %12s %12s %14s %5s\n", "metric", "generated",
                "real floor", "goal", "met");
  os << line;
  std::snprintf(line, sizeof line, "%-16s %12s %12s %14s %5s\n", "CAS", percent(cas).c_str(),
                percent(real_accuracy).c_str(), (">= " + percent(real_accuracy - 0.03f)).c_str(),
                cas_goal_met() ? "yes" : "no");
  os << line;
  std::snprintf(line, sizeof line, "%-16s %12s %12s %14s %5s\n", "FID_feat",
                number(fid_feat).c_str(), number(fid_floor).c_str(),
                ("<= " + number(2.0 * fid_floor)).c_str(), fid_goal_met() ? "yes" : "no");
  os << line;
  std::snprintf(line, sizeof line, "%-16s %12s\n", "  |mu| term", number(fid_mean_term).c_str());
  os << line;
  os << "(" << num_generated << " generated: " << config.samples_per_class << " per class, "
     << config.sampler << ", " << config.steps << " steps, CFG " << config.cfg
     << (config.guidance_interval.limited()
             ? str_cat(" at sigma in [", config.guidance_interval.lo, ", ",
                       config.guidance_interval.hi, "]")
             : std::string())
     << (config.guidance_rescale > 0.0f ? str_cat(", rescale ", config.guidance_rescale)
                                        : std::string())
     << (guide_model.empty() ? std::string() : str_cat(", autoguidance by ", guide_model))
     << (config.guide_scale != 0.0f ? str_cat(", classifier guidance ", config.guide_scale, " (",
                                              config.guide_dir, ")")
                                    : std::string())
     << (config.unconditional ? ", the denoiser unconditional" : "")
     << ", seed " << config.seed << "; CAS floor: the classifier on " << num_test
     << " test images; FID floor: " << floor_method << ")\n\n";
  std::snprintf(line, sizeof line, "%-16s %12s %12s %12s %12s\n", "class", "CAS", "real acc",
                "FID_feat", "real floor");
  os << line;
  for (size_t c = 0; c < cas_per_class.size(); ++c) {
    std::snprintf(
        line, sizeof line, "%-16s %12s %12s %12s %12s\n",
        (c < class_names.size() ? class_names[c] : std::to_string(c)).c_str(),
        percent(cas_per_class[c]).c_str(),
        c < real_accuracy_per_class.size() ? percent(real_accuracy_per_class[c]).c_str() : "-",
        c < fid_per_class.size() ? number(fid_per_class[c]).c_str() : "-",
        c < fid_floor_per_class.size() ? number(fid_floor_per_class[c]).c_str() : "-");
    os << line;
  }
  return os.str();
}

void write_eval_json(const EvalResult& result, const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  io::write_file_atomic(path, result.to_json().dump(2) + "\n");
}

void write_eval_grid(const EvalResult& result, const std::string& path, int columns) {
  STIPPLE_CHECK(result.samples.defined(), "write_eval_grid: the result holds no samples");
  const int64_t per = result.config.samples_per_class;
  const int64_t cols = std::min<int64_t>(per, std::max(1, columns));
  const int64_t classes = result.num_generated / per;
  std::vector<Tensor> picks;
  for (int64_t c = 0; c < classes; ++c) picks.push_back(result.samples.narrow(0, c * per, cols));
  Tensor x = ops::concat(picks, 0);  // [classes * cols, C, S, S]
  if (x.size(-1) <= 64) x = ops::upsample_nearest2x(x);
  x = ops::pad(x, {1, 1, 1, 1}, 0.0f);  // a grey frame around each image
  const Tensor grid = io::make_grid(x, static_cast<int>(cols), 0);
  std::string rows;
  for (const auto& n : result.class_names) rows += (rows.empty() ? "" : ", ") + n;
  const int64_t s = result.samples.size(-1);
  const std::string params =
      str_cat("stipple eval samples, one row per class: ", rows, "\nSteps: ", result.config.steps,
              ", Sampler: ", result.config.sampler, ", CFG scale: ", result.config.cfg,
              result.guide_model.empty() ? std::string()
                                         : str_cat(", Guide model: ", result.guide_model),
              result.config.guide_scale != 0.0f
                  ? str_cat(", Classifier scale: ", result.config.guide_scale)
                  : std::string(),
              ", Seed: ", result.config.seed, ", Size: ", s, "x", s, ", Model: ", result.model,
              result.config.upscaler
                  ? str_cat(", Upscaler: ", result.config.upscaler_dir,
                            ", Upscaler steps: ", result.config.upscaler_steps)
                  : std::string(),
              ", CAS: ", percent(result.cas), ", FID_feat: ", number(result.fid_feat));
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  io::write_png(path, io::tensor_to_image(grid), {{"parameters", params}});
}

}  // namespace stipple::train

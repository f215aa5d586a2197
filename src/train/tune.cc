// Online Diffusion-DPO on a class-conditional pixel-space DiT (see tune.h for the algorithm).
#include "train/tune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/read_file.h"
#include "io/safetensors.h"
#include "models/component.h"
#include "models/dit.h"
#include "ops/ops.h"
#include "schedulers/scheduler.h"
#include "schedulers/training.h"
#include "train/evaluate.h"
#include "train/optim.h"
#include "train/run_state.h"
#include "train/trainer.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kStateFile = "tune_state.safetensors";
constexpr const char* kWeightsFile = "diffusion_pytorch_model.safetensors";

// The seed of round r's candidates: a fixed mix of the run's seed and r (SplitMix64's
// finaliser), so a resumed run draws the same candidates.
uint64_t round_seed(uint64_t seed, int64_t round) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(round + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFull;
}

}  // namespace

// ---------------- scorer ----------------

ClassifierScorer::ClassifierScorer(std::shared_ptr<const models::FashionClassifier> classifier,
                                   std::string folder)
    : classifier_(std::move(classifier)), folder_(std::move(folder)) {
  STIPPLE_CHECK(classifier_ != nullptr, "ClassifierScorer: no classifier");
  STIPPLE_CHECK(!classifier_->noisy(), "the tuning scorer must be a clean-image classifier; ",
                folder_.empty() ? "this one" : folder_,
                " was trained on noisy images (stipple train-classifier without --noisy)");
}

std::string ClassifierScorer::name() const {
  return str_cat("log p(class | x) under the classifier ", folder_.empty() ? "given" : folder_);
}

std::vector<float> ClassifierScorer::score(const Tensor& images,
                                           const std::vector<int64_t>& classes) const {
  STIPPLE_CHECK(images.dim() == 4 && images.size(0) == static_cast<int64_t>(classes.size()),
                "ClassifierScorer: ", classes.size(), " classes for images ", images.describe());
  const int64_t K = classifier_->config().num_classes;
  for (int64_t c : classes)
    STIPPLE_CHECK(c >= 0 && c < K, "ClassifierScorer: class ", c, " outside the classifier's [0, ",
                  K, ")");
  autograd::NoGradGuard no_grad;
  std::vector<float> out;
  out.reserve(classes.size());
  const int64_t n = images.size(0), chunk = 256;
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t m = std::min(chunk, n - s);
    const std::vector<int64_t> ys(classes.begin() + s, classes.begin() + s + m);
    const std::vector<float> lp =
        classifier_->log_prob(images.narrow(0, s, m).contiguous(), Tensor::from_vector_i64(ys, {m}))
            .to_vector();
    out.insert(out.end(), lp.begin(), lp.end());
  }
  return out;
}

// ---------------- config ----------------

json TuneConfig::to_json() const {
  return json{{"method", method},
              {"model_dir", model_dir},
              {"classifier_dir", classifier_dir},
              {"out_dir", out_dir},
              {"classes", classes},
              {"candidates", candidates},
              {"sample_steps", sample_steps},
              {"sampler", sampler},
              {"cfg", json_float(cfg)},
              {"min_gap", json_float(min_gap)},
              {"beta", json_float(beta)},
              {"steps", steps},
              {"updates_per_round", updates_per_round},
              {"pairs_per_step", pairs_per_step},
              {"timesteps_per_image", timesteps_per_image},
              {"images_per_step", images_per_step},
              {"temperature", json_float(temperature)},
              {"anchor", json_float(anchor)},
              {"lr", json_float(lr)},
              {"warmup", warmup},
              {"grad_clip", json_float(grad_clip)},
              {"max_empty_rounds", max_empty_rounds},
              {"checkpoint_every", checkpoint_every},
              {"seed", seed}};
}

TuneConfig TuneConfig::from_json(const json& j, const std::string& where) {
  STIPPLE_CHECK(j.is_object(), where, ": a tuning config must be a JSON object");
  const io::JsonConfig c(j, where);
  TuneConfig t;
  t.method = c.string("method", t.method);
  t.model_dir = c.string("model_dir", t.model_dir);
  t.classifier_dir = c.string("classifier_dir", t.classifier_dir);
  t.out_dir = c.string("out_dir", t.out_dir);
  t.classes = c.int_list("classes", t.classes);
  t.candidates = static_cast<int>(c.integer("candidates", t.candidates));
  t.sample_steps = static_cast<int>(c.integer("sample_steps", t.sample_steps));
  t.sampler = c.string("sampler", t.sampler);
  t.cfg = static_cast<float>(c.number("cfg", t.cfg));
  t.min_gap = static_cast<float>(c.number("min_gap", t.min_gap));
  t.beta = static_cast<float>(c.number("beta", t.beta));
  t.steps = c.integer("steps", t.steps);
  t.updates_per_round = static_cast<int>(c.integer("updates_per_round", t.updates_per_round));
  t.pairs_per_step = static_cast<int>(c.integer("pairs_per_step", t.pairs_per_step));
  t.timesteps_per_image =
      static_cast<int>(c.integer("timesteps_per_image", t.timesteps_per_image));
  t.images_per_step = static_cast<int>(c.integer("images_per_step", t.images_per_step));
  t.temperature = static_cast<float>(c.number("temperature", t.temperature));
  t.anchor = static_cast<float>(c.number("anchor", t.anchor));
  t.lr = static_cast<float>(c.number("lr", t.lr));
  t.warmup = c.integer("warmup", t.warmup);
  t.grad_clip = static_cast<float>(c.number("grad_clip", t.grad_clip));
  t.max_empty_rounds = static_cast<int>(c.integer("max_empty_rounds", t.max_empty_rounds));
  t.checkpoint_every = c.integer("checkpoint_every", t.checkpoint_every);
  t.seed = static_cast<uint64_t>(c.integer("seed", static_cast<int64_t>(t.seed)));
  t.validate();
  return t;
}

void TuneConfig::validate() const {
  STIPPLE_CHECK(method == "dpo" || method == "rwr", "tune: unknown method \"", method,
                "\" (dpo: Diffusion-DPO on best-vs-worst pairs; rwr: reward-weighted regression)");
  STIPPLE_CHECK(!model_dir.empty(), "tune: a starting model folder is needed (--model)");
  STIPPLE_CHECK(!out_dir.empty(), "tune: an output folder is needed (--out)");
  STIPPLE_CHECK(candidates >= 2 && candidates <= 1024,
                "tune: candidates per class must be in [2, 1024], got ", candidates);
  STIPPLE_CHECK(sample_steps >= 1 && sample_steps <= 1000,
                "tune: sampling steps must be in [1, 1000], got ", sample_steps);
  STIPPLE_CHECK(schedulers::find_sampler(sampler) != nullptr, "tune: unknown sampler \"", sampler,
                "\" (one of ", schedulers::sampler_list(), ")");
  STIPPLE_CHECK(std::isfinite(cfg) && cfg >= 0 && cfg <= 100, "tune: --cfg must be in [0, 100]");
  STIPPLE_CHECK(std::isfinite(min_gap) && min_gap >= 0, "tune: --min-gap must be >= 0");
  STIPPLE_CHECK(std::isfinite(beta) && beta > 0, "tune: --beta must be positive, got ", beta);
  STIPPLE_CHECK(steps >= 1 && steps <= 100000000, "tune: --steps must be in [1, 1e8]");
  STIPPLE_CHECK(updates_per_round >= 1 && updates_per_round <= 10000,
                "tune: updates per round must be in [1, 10000]");
  STIPPLE_CHECK(pairs_per_step >= 1 && pairs_per_step <= 4096,
                "tune: pairs per step must be in [1, 4096]");
  STIPPLE_CHECK(timesteps_per_image >= 1 && timesteps_per_image <= 64,
                "tune: timesteps per image must be in [1, 64]");
  STIPPLE_CHECK(images_per_step >= 1 && images_per_step <= 4096,
                "tune: images per step must be in [1, 4096]");
  STIPPLE_CHECK(std::isfinite(temperature) && temperature > 0,
                "tune: --temperature must be positive, got ", temperature);
  STIPPLE_CHECK(std::isfinite(anchor) && anchor >= 0, "tune: --anchor must be >= 0, got ", anchor);
  STIPPLE_CHECK(std::isfinite(lr) && lr > 0, "tune: --lr must be positive");
  STIPPLE_CHECK(warmup >= 0, "tune: --warmup must be >= 0");
  STIPPLE_CHECK(std::isfinite(grad_clip), "tune: the gradient clip must be finite (<= 0: off)");
  STIPPLE_CHECK(max_empty_rounds >= 1, "tune: max empty rounds must be >= 1");
  STIPPLE_CHECK(checkpoint_every >= 1, "tune: --checkpoint-every must be >= 1");
  for (int64_t c : classes) STIPPLE_CHECK(c >= 0, "tune: class ", c, " is negative");
}

// ---------------- the pieces ----------------

std::vector<std::pair<int64_t, int64_t>> preference_pairs(const std::vector<float>& rewards,
                                                          float min_gap) {
  const int64_t k = static_cast<int64_t>(rewards.size());
  std::vector<int64_t> order(static_cast<size_t>(k));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return rewards[a] > rewards[b]; });
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < k / 2; ++i) {
    const int64_t w = order[i], l = order[k - 1 - i];
    if (rewards[w] - rewards[l] >= min_gap) pairs.emplace_back(w, l);
  }
  return pairs;
}

Tensor dpo_loss(const Tensor& err_w, const Tensor& err_l, const Tensor& ref_w, const Tensor& ref_l,
                float beta) {
  STIPPLE_CHECK(err_w.dim() == 1 && err_w.shape() == err_l.shape() &&
                    err_w.shape() == ref_w.shape() && err_w.shape() == ref_l.shape(),
                "dpo_loss: the four errors must be [P] alike, got ", err_w.describe(), ", ",
                err_l.describe(), ", ", ref_w.describe(), ", ", ref_l.describe());
  const int64_t p = err_w.size(0);
  // z = -beta/2 * d; -log sigmoid(z) = -log_softmax([z, 0])[0], stable for any z
  const Tensor z = ((err_w - err_l) - (ref_w - ref_l)) * (-0.5f * beta);  // [P]
  const Tensor both = ops::concat({ops::unsqueeze(z, 1), Tensor::zeros({p, 1})}, 1);
  return ops::neg(ops::reshape(ops::log_softmax(both, 1).narrow(1, 0, 1), {p}));  // [P]
}

Tensor rwr_loss(const Tensor& err, const Tensor& weights, const std::vector<Tensor>& params,
                const std::vector<Tensor>& start, float anchor) {
  STIPPLE_CHECK(err.dim() == 1 && weights.shape() == err.shape(),
                "rwr_loss: errors and weights must be [M] alike, got ", err.describe(), ", ",
                weights.describe());
  Tensor loss = ops::mean(err * weights);
  if (anchor > 0) {
    STIPPLE_CHECK(start.size() == params.size(), "rwr_loss: ", start.size(),
                  " anchor tensors for ", params.size(), " parameters");
    for (size_t i = 0; i < params.size(); ++i)
      loss = loss + ops::sum(ops::square(params[i] - start[i])) * (0.5f * anchor);
  }
  return loss;
}

// ---------------- the run ----------------

TuneResult tune(const TuneConfig& config_in, bool resume,
                const std::function<void(const TuneProgress&)>& progress,
                const std::function<void(const std::string&)>& message,
                const std::function<bool()>& should_stop, std::shared_ptr<const Scorer> scorer) {
  auto say = [&](const std::string& s) {
    if (message) message(s);
  };
  const std::string state_path = config_in.out_dir + "/" + kStateFile;
  RunState state;
  TuneConfig config = resumed_config(config_in, resume, state_path, &state);
  if (!resume) {
    STIPPLE_CHECK(!fs::exists(state_path), "tune: ", config.out_dir,
                  " holds a tuning run already (continue it with --resume, or give another "
                  "--out)");
  }
  config.validate();

  // 1. the starting model: the frozen reference, and the policy with its weights in f32
  const ClassGenerator ref = ClassGenerator::load(config.model_dir);
  const std::string start = ref.folder();
  STIPPLE_CHECK(ref.transformer().config().cross_attention_dim == 0,
                "tune: ", start, " is text-conditioned; stipple tune tunes class-conditional "
                "pixel-space generators (stipple train's Fashion-MNIST DiT)");
  if (fs::exists(config.out_dir))
    STIPPLE_CHECK(!fs::equivalent(config.out_dir, start), "tune: --out ", config.out_dir,
                  " is the starting model's folder; give a new folder (the start is the "
                  "reference the tuning is anchored to)");
  const models::ComponentFiles files =
      models::find_component(start + "/transformer", "DiT", "diffusion_pytorch_model");
  const models::DiTConfig dit_config = models::DiTConfig::from_file(files.config);
  auto policy = std::make_shared<models::DiTTransformer2DModel>(dit_config);
  {
    autograd::NoGradGuard no_grad;
    policy->load_state_dict(ref.transformer().state_dict(), /*strict=*/true, start);
  }
  // the tuned weights are written in the start's dtype (f16 when it stores f16)
  bool half = false;
  const io::SafetensorsFile start_file = io::SafetensorsFile::open(files.weights_file());
  for (const auto& [name, e] : start_file.entries()) half = half || e.dtype == "F16";
  policy->train();
  std::vector<Tensor> params;
  for (const auto& [name, p] : policy->named_parameters()) params.push_back(p);
  const int64_t num_classes = ref.num_classes(), C = ref.channels();
  std::vector<int64_t> classes = config.classes;
  if (classes.empty()) {
    classes.resize(static_cast<size_t>(num_classes));
    std::iota(classes.begin(), classes.end(), int64_t{0});
  }
  for (int64_t c : classes)
    STIPPLE_CHECK(c < num_classes, "tune: class ", c, " outside the model's [0, ", num_classes,
                  ")");
  if (!scorer) {
    STIPPLE_CHECK(!config.classifier_dir.empty(),
                  "tune: a scorer is needed: give --classifier (a stipple train-classifier folder)");
    scorer = std::make_shared<ClassifierScorer>(
        models::FashionClassifier::from_pretrained(config.classifier_dir), config.classifier_dir);
  }

  std::vector<Tensor> anchor_to;  // the start's weights in f32, in params' order (RWR's anchor)
  if (config.method == "rwr" && config.anchor > 0) {
    autograd::NoGradGuard no_grad;
    for (const auto& [name, p] : policy->named_parameters()) anchor_to.push_back(p.clone());
  }
  AdamW opt(params, AdamWConfig{config.lr, 0.9f, 0.999f, 1e-8f, 0.0f});
  Generator gen(config.seed + 1);
  int64_t step = 0, round = 0, empty_rounds = 0;
  if (resume) {
    policy->load_state_dict(with_prefix(state.tensors, "model."), true, state_path);
    opt.load_state_dict(with_prefix(state.tensors, "optimizer."));
    gen.set_state(state.rng);
    auto counter = [&](const char* key) {
      const auto it = state.tensors.find(key);
      STIPPLE_CHECK(it != state.tensors.end(), state_path, " has no \"", key,
                    "\" (not a stipple tune state)");
      return it->second.to_vector_i64().at(0);
    };
    step = state.step;
    round = counter("round");
    empty_rounds = counter("empty_rounds");
    say(str_cat("tune: resumed at step ", step, " of ", config.steps, " (round ", round, ")"));
  } else {
    say(str_cat("tune: ", start, " (", policy->num_parameters(), " parameters), ",
                classes.size(), " classes x ", config.candidates, " candidates per round, scored "
                "by ", scorer->name()));
  }
  prepare_run_folder(config.out_dir, "tune_config.json", config.to_json(), say);
  io::create_output_dir(config.out_dir + "/transformer");
  io::create_output_dir(config.out_dir + "/scheduler");
  // The folder around the tuned weights is the start's.
  io::write_file_atomic(config.out_dir + "/model_index.json",
                        io::read_file_bounded(start + "/model_index.json", "model index"));
  io::write_file_atomic(
      config.out_dir + "/scheduler/scheduler_config.json",
      io::read_file_bounded(start + "/scheduler/scheduler_config.json", "scheduler config"));
  io::write_file_atomic(config.out_dir + "/transformer/config.json",
                        io::read_file_bounded(files.config, "transformer config"));

  const schedulers::SchedulerConfig& sc = ref.scheduler_config();
  const std::vector<float> acp = schedulers::make_scheduler(sc)->alphas_cumprod();
  const int T = sc.num_train_timesteps;
  const ClassGenerator sampler =
      ClassGenerator::from_model(policy, sc, ref.class_names(), config.out_dir);

  const RunClock clock(state.elapsed_seconds);
  auto checkpoint = [&] {
    std::map<std::string, Tensor> weights = policy->state_dict();
    if (half)
      for (auto& [k, v] : weights)
        if (v.dtype() == DType::kF32) v = v.to(DType::kF16);
    io::save_safetensors(config.out_dir + "/transformer/" + kWeightsFile, weights,
                         {{"format", "pt"}});
    RunState s = make_run_state(step, clock.seconds(), gen, config.to_json());
    add_prefixed(s.tensors, "model.", policy->state_dict());
    add_prefixed(s.tensors, "optimizer.", opt.state_dict());
    s.tensors["round"] = Tensor::scalar(static_cast<double>(round), DType::kI64);
    s.tensors["empty_rounds"] = Tensor::scalar(static_cast<double>(empty_rounds), DType::kI64);
    save_run_state(state_path, s, "stipple-tune-state");
  };
  CsvLog log(config.out_dir + "/log.csv",
             "step,round,pairs,loss,implicit_accuracy,weight_ess,reward_mean,reward_min,lr,grad_norm,"
             "seconds");
  if (resume) log.resume(step);

  TuneResult result;
  const int64_t K = config.candidates;
  int64_t last_checkpoint = step;
  while (step < config.steps) {
    // 1. candidates from the current weights
    std::vector<int64_t> labels;
    for (int64_t c : classes) labels.insert(labels.end(), static_cast<size_t>(K), c);
    EvalConfig ec;
    ec.steps = config.sample_steps;
    ec.sampler = config.sampler;
    ec.cfg = config.cfg;
    ec.seed = round_seed(config.seed, round);
    ec.batch_size = static_cast<int>(std::min<size_t>(labels.size(), 256));
    const Tensor images = sampler.sample(labels, ec);  // [N, C, S, S]
    // 2. rewards and pairs
    const std::vector<float> rewards = scorer->score(images, labels);
    STIPPLE_CHECK(rewards.size() == labels.size(), "tune: the scorer gave ", rewards.size(),
                  " rewards for ", labels.size(), " images");
    const bool dpo = config.method == "dpo";
    std::vector<std::pair<int64_t, int64_t>> pairs;  // DPO's
    for (size_t g = 0; dpo && g < classes.size(); ++g) {
      const int64_t o = static_cast<int64_t>(g) * K;
      const std::vector<float> group(rewards.begin() + o, rewards.begin() + o + K);
      for (const auto& [w, l] : preference_pairs(group, config.min_gap))
        pairs.emplace_back(o + w, o + l);
    }
    double reward_sum = 0;
    float reward_min = std::numeric_limits<float>::infinity();
    for (float r : rewards) reward_sum += r, reward_min = std::min(reward_min, r);
    const float reward_mean = static_cast<float>(reward_sum / rewards.size());
    result.round_reward.push_back(reward_mean);

    // 3. updates. DPO: a shuffled cycle of the round's pairs; RWR: of all candidates, weighted
    //    per class by K softmax(r / temperature).
    const int64_t N = static_cast<int64_t>(labels.size());
    const int64_t P = static_cast<int64_t>(pairs.size());
    std::vector<float> weight;
    double ess = 0;
    if (!dpo) {
      weight.resize(static_cast<size_t>(N));
      for (size_t g = 0; g < classes.size(); ++g) {
        const int64_t o = static_cast<int64_t>(g) * K;
        const float top = *std::max_element(rewards.begin() + o, rewards.begin() + o + K);
        double z = 0;
        for (int64_t i = o; i < o + K; ++i)
          z += weight[i] = std::exp((rewards[i] - top) / config.temperature);
        for (int64_t i = o; i < o + K; ++i) weight[i] = static_cast<float>(K * weight[i] / z);
      }
      double sw = 0, sw2 = 0;
      for (float w : weight) sw += w, sw2 += double(w) * w;
      ess = sw * sw / sw2 / N;  // effective sample size, as a share of the candidates
    }
    double loss_sum = 0, acc_sum = 0, grad_sum = 0;
    int updates = 0;
    float lr = 0;
    if (dpo && P == 0) {
      ++empty_rounds;
    } else {
      empty_rounds = 0;
      const int64_t units = dpo ? P : N;  // what the shuffled cycle runs over
      std::vector<int64_t> order(static_cast<size_t>(units));
      std::iota(order.begin(), order.end(), int64_t{0});
      for (int64_t i = units - 1; i > 0; --i)
        std::swap(order[i], order[gen.next_u64() % static_cast<uint64_t>(i + 1)]);
      int64_t cursor = 0;
      const int64_t per_step =
          std::min<int64_t>(units, dpo ? config.pairs_per_step : config.images_per_step);
      const int64_t m = per_step * config.timesteps_per_image;  // rows: (unit, draw)
      for (int u = 0; u < config.updates_per_round && step < config.steps; ++u) {
        // rows of x0: DPO the m winners then the m losers; RWR m candidates
        std::vector<int64_t> rows_w, rows_l, ys;
        std::vector<float> wv;
        for (int64_t i = 0; i < per_step; ++i, cursor = (cursor + 1) % units)
          for (int k = 0; k < config.timesteps_per_image; ++k) {
            if (dpo) {
              rows_w.push_back(pairs[order[cursor]].first);
              rows_l.push_back(pairs[order[cursor]].second);
            } else {
              rows_w.push_back(order[cursor]);
              wv.push_back(weight[order[cursor]]);
            }
            ys.push_back(labels[rows_w.back()]);
          }
        const int64_t copies = dpo ? 2 : 1;  // DPO: the pair's images share t and noise
        std::vector<int64_t> tv(static_cast<size_t>(m));
        for (auto& t : tv) t = static_cast<int64_t>(gen.next_u64() % static_cast<uint64_t>(T));
        const Tensor noise = gen.randn({m, C, images.size(2), images.size(3)});
        std::vector<int64_t> t2 = tv, y2 = ys;
        std::vector<Tensor> x0s = {gather_rows(images, rows_w)}, epss = {noise};
        if (dpo) {
          t2.insert(t2.end(), tv.begin(), tv.end());
          y2.insert(y2.end(), ys.begin(), ys.end());
          x0s.push_back(gather_rows(images, rows_l));
          epss.push_back(noise);
        }
        const Tensor x0 = x0s.size() == 1 ? x0s[0] : ops::concat(x0s, 0);
        const Tensor t = Tensor::from_vector_i64(t2, {copies * m});
        const Tensor y = Tensor::from_vector_i64(y2, {copies * m});
        const Tensor eps = epss.size() == 1 ? epss[0] : ops::concat(epss, 0);
        const Tensor xt = schedulers::add_noise(acp, x0, eps, t);
        const Tensor target = schedulers::prediction_target(sc.prediction_type, acp, x0, eps, t);
        auto errors = [&](const models::DiTTransformer2DModel& model) {
          const Tensor out = model.forward(xt, t, y);
          const Tensor pred = out.size(1) == C ? out : out.narrow(1, 0, C);
          return ops::mean(ops::square(pred - target), {1, 2, 3});  // [copies * m]
        };
        const Tensor err = errors(*policy);
        Tensor loss;
        if (dpo) {
          Tensor ref_err;
          {
            autograd::NoGradGuard no_grad;
            ref_err = errors(ref.transformer());
          }
          loss = ops::mean(dpo_loss(err.narrow(0, 0, m), err.narrow(0, m, m),
                                    ref_err.narrow(0, 0, m), ref_err.narrow(0, m, m),
                                    config.beta));
          // the tuned model prefers the winner more than the reference does: d < 0
          const std::vector<float> ew = err.narrow(0, 0, m).detach().to_vector(),
                                   el = err.narrow(0, m, m).detach().to_vector(),
                                   rw = ref_err.narrow(0, 0, m).to_vector(),
                                   rl = ref_err.narrow(0, m, m).to_vector();
          int wins = 0;
          for (int64_t i = 0; i < m; ++i) wins += (ew[i] - el[i]) - (rw[i] - rl[i]) < 0;
          acc_sum += static_cast<double>(wins) / m;
        } else {
          loss = rwr_loss(err, Tensor::from_vector(wv, {m}), params, anchor_to, config.anchor);
        }
        opt.zero_grad();
        loss.backward();
        const float gn = clip_grad_norm(params, config.grad_clip > 0
                                                    ? config.grad_clip
                                                    : std::numeric_limits<float>::infinity());
        lr = warmup_cosine_lr(config.lr, config.warmup, config.steps, 1.0f, step);
        opt.set_lr(lr);
        opt.step();
        ++step;
        const float l = loss.item();
        STIPPLE_CHECK(std::isfinite(l), "tune: the loss became ", l, " at step ", step,
                      " (lower --lr", dpo ? " or --beta)" : ")");
        loss_sum += l, grad_sum += gn, ++updates;
      }
    }
    ++round;

    // 4. log, progress, checkpoint
    TuneProgress p;
    p.step = step, p.total = config.steps, p.round = round, p.pairs = P;
    p.loss = updates ? static_cast<float>(loss_sum / updates) : 0.0f;
    p.implicit_accuracy = dpo && updates ? static_cast<float>(acc_sum / updates) : 0.0f;
    p.weight_ess = static_cast<float>(ess);
    p.reward = reward_mean;
    char row[256];
    std::snprintf(row, sizeof row, "%lld,%lld,%lld,%.6g,%.4f,%.4f,%.6g,%.6g,%.6g,%.6g,%.2f",
                  static_cast<long long>(step), static_cast<long long>(round),
                  static_cast<long long>(P), p.loss, p.implicit_accuracy, ess, reward_mean,
                  reward_min, lr, updates ? grad_sum / updates : 0.0, clock.seconds());
    log.append(row);
    if (progress) progress(p);
    const bool stop = should_stop && should_stop();
    const bool give_up = empty_rounds >= config.max_empty_rounds;
    if (step - last_checkpoint >= config.checkpoint_every || step >= config.steps || stop ||
        give_up) {
      checkpoint();
      last_checkpoint = step;
    }
    if (give_up) {
      say(str_cat("tune: ", empty_rounds, " rounds in a row gave no pair with a reward gap of ",
                  config.min_gap, " or more (the scorer ranks the candidates alike); stopped at "
                  "step ", step, " (lower --min-gap or draw more --candidates)"));
      break;
    }
    if (stop && step < config.steps) {
      say(str_cat("tune: stopped at step ", step, "; continue with --resume"));
      result.stopped = true;
      break;
    }
  }
  if (step == 0 && !fs::exists(config.out_dir + "/transformer/" + kWeightsFile)) checkpoint();
  result.steps = step;
  result.rounds = round;
  result.seconds = clock.seconds();
  return result;
}

}  // namespace stipple::train

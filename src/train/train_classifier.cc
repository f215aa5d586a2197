// Training the Fashion-MNIST classifier: AdamW on cross-entropy, warm-up + cosine learning rate.
#include "train/train_classifier.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "ops/ops.h"
#include "schedulers/schedule.h"
#include "schedulers/training.h"
#include "train/datasets.h"
#include "train/optim.h"

namespace stipple::train {

void ClassifierTrainConfig::validate() const {
  STIPPLE_CHECK(epochs >= 1, "train-classifier: --epochs must be >= 1, got ", epochs);
  STIPPLE_CHECK(batch_size >= 1 && batch_size <= 60000,
                "train-classifier: --batch-size must be in [1, 60000], got ", batch_size);
  STIPPLE_CHECK(lr > 0 && std::isfinite(lr), "train-classifier: --lr must be positive, got ", lr);
  STIPPLE_CHECK(weight_decay >= 0, "train-classifier: weight decay must be >= 0");
  STIPPLE_CHECK(limit_images >= 0, "train-classifier: --limit-images must be >= 0");
  STIPPLE_CHECK(num_train_timesteps >= 1 && num_train_timesteps <= 100000,
                "train-classifier: the number of timesteps must be in [1, 100000], got ",
                num_train_timesteps);
  model.validate("train-classifier model");
}

std::vector<int64_t> classify(const models::FashionClassifier& model, const Tensor& images,
                              int64_t batch_size, const Tensor& timesteps) {
  autograd::NoGradGuard no_grad;
  const int64_t n = images.size(0);
  const Tensor t = model.noisy() && !timesteps.defined()
                       ? Tensor::from_vector_i64(std::vector<int64_t>(n, 0), {n})
                       : timesteps;
  std::vector<int64_t> out;
  out.reserve(n);
  for (int64_t b = 0; b < n; b += batch_size) {
    const int64_t m = std::min(batch_size, n - b);
    const std::vector<float> logits =
        model.logits(images.narrow(0, b, m), t.defined() ? t.narrow(0, b, m) : Tensor())
            .to_vector();  // [m, K]
    const int64_t k = static_cast<int64_t>(logits.size()) / m;
    for (int64_t i = 0; i < m; ++i) {
      const float* row = logits.data() + i * k;
      out.push_back(std::max_element(row, row + k) - row);
    }
  }
  return out;
}

Accuracy accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels,
                  int64_t num_classes) {
  STIPPLE_CHECK(predictions.size() == labels.size(), "accuracy: ", predictions.size(),
                " predictions for ", labels.size(), " labels");
  std::vector<int64_t> right(num_classes, 0), count(num_classes, 0);
  int64_t total_right = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const int64_t y = labels[i];
    STIPPLE_CHECK(y >= 0 && y < num_classes, "accuracy: label ", y, " outside [0, ", num_classes,
                  ")");
    ++count[y];
    if (predictions[i] == y) ++right[y], ++total_right;
  }
  Accuracy a;
  a.overall = labels.empty() ? std::numeric_limits<float>::quiet_NaN()
                             : static_cast<float>(total_right) / labels.size();
  for (int64_t c = 0; c < num_classes; ++c)
    a.per_class.push_back(count[c] ? static_cast<float>(right[c]) / count[c]
                                   : std::numeric_limits<float>::quiet_NaN());
  return a;
}

ClassifierTrainResult train_classifier(
    const ClassifierTrainConfig& config,
    const std::function<void(const ClassifierProgress&)>& progress,
    const std::function<void(const std::string&)>& message, Communicator* comm_in) {
  config.validate();
  Communicator& comm = comm_in != nullptr ? *comm_in : single_process();
  const bool root = comm.is_root();  // rank 0 alone speaks, tests and writes
  auto say = [&](const std::string& s) {
    if (root && message) message(s);
  };
  // 1. data: both splits framed to 32x32 in [-1, 1]
  const FashionMnist train_set = FashionMnist::load(config.data_dir, Split::kTrain, true);
  const FashionMnist test_set = FashionMnist::load(config.data_dir, Split::kTest, true);
  STIPPLE_CHECK(train_set.images().size(-1) == config.model.image_size,
                "train-classifier: the model's image_size ", config.model.image_size,
                " does not match the framed data (", train_set.images().size(-1), ")");

  // 2. model, optimiser, data order
  models::FashionClassifierConfig mc = config.model;
  if (mc.class_names.empty()) mc.class_names = FashionMnist::class_names();
  std::vector<float> acp;  // noisy: the schedule's alphas_cumprod
  if (config.noisy) {
    mc.num_timesteps = config.num_train_timesteps;
    acp = schedulers::alphas_cumprod_from_betas(schedulers::make_betas(
        config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end));
  }
  Generator noise_gen(config.seed + 2);  // timesteps and noise of the noisy classifier
  // x_t for a batch at timesteps drawn uniformly in [lo, hi) (q(x_t | x0), DDPM eq. 4).
  auto noised = [&](const Tensor& x0, int64_t lo, int64_t hi, Tensor* t) {
    const int64_t n = x0.size(0);
    std::vector<int64_t> ts(n);
    for (int64_t& v : ts) v = lo + static_cast<int64_t>(noise_gen.next_u64() % (hi - lo));
    *t = Tensor::from_vector_i64(ts, {n});
    return schedulers::add_noise(acp, x0, noise_gen.randn(x0.shape()), *t);
  };
  auto model = std::make_shared<models::FashionClassifier>(mc);
  Generator init(config.seed);
  model->reset_parameters(init);
  model->train();
  const std::vector<Tensor> params = model->parameters();
  AdamWConfig ac;
  ac.lr = config.lr;
  ac.weight_decay = config.weight_decay;
  AdamW opt(params, ac);
  GradientReducer reducer;
  const int64_t n_train = config.limit_images > 0
                              ? std::min(config.limit_images, train_set.size())
                              : train_set.size();
  STIPPLE_CHECK(n_train >= config.batch_size, "train-classifier: ", n_train,
                " training images, fewer than the batch size ", config.batch_size);
  DataLoader loader(train_set.images().narrow(0, 0, n_train),
                    train_set.labels().narrow(0, 0, n_train), config.batch_size, config.seed + 1,
                    config.hflip);
  const int64_t per_epoch = loader.batches_per_epoch();
  const int64_t total = per_epoch * config.epochs;
  say(str_cat("training a ", model->num_parameters(), "-parameter classifier for ", config.epochs,
              " epochs (", total, " steps of ", config.batch_size, " images)"));

  // 3. train
  const auto start = std::chrono::steady_clock::now();
  ClassifierTrainResult r;
  double window_loss = 0, epoch_loss = 0;
  int64_t window_right = 0, window_seen = 0, window_steps = 0, epoch_right = 0, epoch_seen = 0;
  for (int64_t step = 0; step < total; ++step) {
    const int epoch = static_cast<int>(step / per_epoch);
    if (step % per_epoch == 0) epoch_loss = 0, epoch_right = 0, epoch_seen = 0;
    // Linear warm-up, then cosine to zero.
    const int64_t w = std::min<int64_t>(config.warmup, total / 2);
    const double lr =
        step < w
            ? config.lr * (step + 1.0) / w
            : config.lr * 0.5 * (1 + std::cos(M_PI * (step - w) / std::max<int64_t>(1, total - w)));
    opt.set_lr(static_cast<float>(lr));
    // This rank's rows of the batch (all of them in one process), their share of the mean loss,
    // and the gradient summed over ranks (train/distributed.h).
    const DataLoader::Batch batch = loader.next();
    const Shard shard = shard_of(batch.images.size(0), comm);
    const Tensor labels = shard.of(batch.labels);
    Tensor x = batch.images, t;
    if (config.noisy) x = noised(x, 0, config.num_train_timesteps, &t);  // the whole batch's
    const Tensor logits = model->logits(shard.of(x), t.defined() ? shard.of(t) : Tensor());
    Tensor loss = ops::cross_entropy(logits, labels);              // []
    if (!shard.whole()) loss = loss * shard.weight();
    opt.zero_grad();
    loss.backward();
    reducer.reduce(comm, params, step);
    opt.step();

    const std::vector<float> lv = logits.detach().to_vector();
    const std::vector<int64_t> y = labels.to_vector_i64();
    const int64_t k = logits.size(1), b = shard.batch;
    float stats[2] = {loss.item(), 0.0f};  // the batch's loss and right answers, over ranks
    for (size_t i = 0; i < y.size(); ++i) {
      const float* row = lv.data() + i * k;
      if (std::max_element(row, row + k) - row == y[i]) stats[1] += 1;
    }
    comm.allreduce_sum(stats, 2, str_cat("the loss statistics at step ", step));
    const float l = stats[0];
    const int64_t right = static_cast<int64_t>(stats[1]);
    window_loss += l, window_right += right, window_seen += b, ++window_steps;
    epoch_loss += l, epoch_right += right, epoch_seen += b;
    if (progress && root) {
      ClassifierProgress p;
      p.step = step + 1, p.total = total, p.epoch = epoch + 1;
      p.loss = static_cast<float>(window_loss / window_steps);
      p.accuracy = static_cast<float>(window_right) / window_seen;
      progress(p);
    }
    if (window_steps == 50) window_loss = 0, window_right = 0, window_seen = 0, window_steps = 0;
  }
  r.train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.steps = total;
  r.train_loss = static_cast<float>(epoch_loss / per_epoch);
  r.train_accuracy = static_cast<float>(epoch_right) / std::max<int64_t>(1, epoch_seen);
  check_same_weights(comm, params, "train-classifier", total);
  if (!root) return r;

  // 4. test
  model->eval();
  const Accuracy a = accuracy(classify(*model, test_set.images()),
                              test_set.labels().to_vector_i64(), mc.num_classes);
  r.test_accuracy = a.overall;
  r.test_accuracy_per_class = a.per_class;
  r.model = model;
  if (config.noisy) {
    noise_gen.manual_seed(config.seed + 3);
    const int64_t n = std::min<int64_t>(2000, test_set.size());
    const Tensor x0 = test_set.images().narrow(0, 0, n);
    const std::vector<int64_t> y = test_set.labels().narrow(0, 0, n).contiguous().to_vector_i64();
    const int64_t T = config.num_train_timesteps;
    for (int64_t k = 0; k < 10; ++k) {
      Tensor t;
      const Tensor xt = noised(x0, k * T / 10, std::max((k + 1) * T / 10, k * T / 10 + 1), &t);
      r.test_accuracy_per_bucket.push_back(
          accuracy(classify(*model, xt, 500, t), y, mc.num_classes).overall);
    }
  }

  // 5. save
  if (!config.out_dir.empty()) {
    model->save_pretrained(config.out_dir, config.half);
    say(str_cat("wrote ", config.out_dir, "/", models::FashionClassifier::kConfigFile, " and ",
                models::FashionClassifier::kWeightsFile, config.half ? " (f16)" : " (f32)"));
  }
  return r;
}

}  // namespace stipple::train

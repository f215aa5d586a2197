// Training the Fashion-MNIST classifier (models/fashion_classifier.h) that `stipple eval` uses as
// its judge: AdamW on cross-entropy over the 60,000 training images (framed to 32x32), a linear
// warm-up then cosine learning rate, optional horizontal flips, and the test accuracy at the end.
// `stipple train-classifier` calls train_classifier(); the output folder is what
// FashionClassifier::from_pretrained reads.
//
// Leaves out: resuming, checkpoints during training (a run takes minutes) and an EMA of weights.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/fashion_classifier.h"
#include "train/distributed.h"

namespace stipple::train {

struct ClassifierTrainConfig {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int epochs = 3;
  int batch_size = 128;
  float lr = 1e-3f;
  float weight_decay = 1e-4f;
  int64_t warmup = 100;  // steps of linear warm-up, then cosine decay to 0
  bool hflip = false;    // random horizontal flips of training images
  uint64_t seed = 0;
  bool half = false;  // store the weights in f16
  int64_t limit_images = 0;  // > 0: train on the first N training images only (tests)
  // --noisy: classify x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps at t uniform in [0, T) (ADM's
  // classifier for guidance), with the denoiser's schedule (the shipped DiT's: linear betas
  // 1e-4 to 0.02 over 1000 steps). model.num_timesteps is set to T.
  bool noisy = false;
  int num_train_timesteps = 1000;
  std::string beta_schedule = "linear";
  float beta_start = 1e-4f, beta_end = 0.02f;
  models::FashionClassifierConfig model;
  std::string out_dir;  // empty: do not save

  void validate() const;
};

struct ClassifierProgress {
  int64_t step = 0, total = 0;
  int epoch = 0;
  float loss = 0;      // running mean over the last steps
  float accuracy = 0;  // running training accuracy over the same steps
};

struct ClassifierTrainResult {
  std::shared_ptr<models::FashionClassifier> model;  // eval mode
  float train_loss = 0;                              // mean over the last epoch
  float train_accuracy = 0;                          // over the last epoch (with flips when hflip)
  float test_accuracy = 0;                           // on the 10,000 test images
  std::vector<float> test_accuracy_per_class;
  double train_seconds = 0;
  int64_t steps = 0;
  // Noisy classifiers: test accuracy in 10 equal timestep buckets ([0, T/10), ...), each on the
  // first 2,000 test images noised at a t drawn in the bucket (seeded); test_accuracy is at t = 0.
  std::vector<float> test_accuracy_per_bucket;
};

// Predicted classes of `images` ([N, C, H, W]) in batches: argmax of the logits. No gradients.
// A noisy-image classifier takes the images' timesteps (i64 [N]; none: t = 0, clean images).
std::vector<int64_t> classify(const models::FashionClassifier& model, const Tensor& images,
                              int64_t batch_size = 500, const Tensor& timesteps = Tensor());
// Accuracy over all images, and per class (NaN for a class with no image), of `predictions`.
struct Accuracy {
  float overall = 0;
  std::vector<float> per_class;
};
Accuracy accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels,
                  int64_t num_classes);

// Loads the data, trains, tests, and saves to out_dir (config.json + model.safetensors). With
// `comm`, data-parallel over its ranks (train/distributed.h); rank 0 alone tests and saves (the
// other ranks return without a model).
ClassifierTrainResult train_classifier(
    const ClassifierTrainConfig& config,
    const std::function<void(const ClassifierProgress&)>& progress = {},
    const std::function<void(const std::string&)>& message = {}, Communicator* comm = nullptr);

}  // namespace stipple::train

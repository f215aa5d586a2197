// A small CNN classifier for Fashion-MNIST, trained by stipple itself (`stipple
// train-classifier`). It is the judge of the generator: `stipple eval` reports the accuracy of
// this classifier on generated samples (CAS) and a Fréchet distance in its 128-d feature space
// (FID_feat); classifier guidance (Dhariwal & Nichol 2021, sec. 4) uses log_prob's gradient.
//
//   x [N, 1, 32, 32] in [-1, 1]  (28x28 inputs are framed with 2 pixels of -1, as the trainer does)
//   stage i (channels c_i):  conv3x3 -> GroupNorm -> SiLU  (x convs_per_stage), then avg_pool2x
//                            after every stage but the last       32 -> 16 -> 8
//   global average over H, W                                      [N, c_last]
//   fc -> SiLU = features                                         [N, feature_dim]
//   head                                                          [N, num_classes] logits
//
// Parameter names: stages.{i}.{j}.conv.weight, stages.{i}.{j}.norm.weight, fc.weight, head.weight
// (and their biases). On disk: config.json (FashionClassifierConfig::to_json) and
// model.safetensors.
//
// A noisy-image classifier (num_timesteps > 0; `stipple train-classifier --noisy`) classifies x_t
// at diffusion timestep t, as ADM's classifier for guidance does (Dhariwal & Nichol 2021,
// sec. 4): t's sinusoidal features (width c_0) -> time_mlp (Linear, SiLU: 4 c_0) ->
// time_proj.{i} (Linear to c_i), added over H, W after the first unit of stage i.
//
// Leaves out: dropout and batch norm.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple {
class Generator;
}

namespace stipple::models {

struct FashionClassifierConfig {
  int64_t in_channels = 1;
  int64_t image_size = 32;                        // the model's input side; 28 is padded to it
  std::vector<int64_t> channels = {32, 64, 128};  // one entry per stage
  int64_t convs_per_stage = 1;
  int64_t norm_num_groups = 8;  // GroupNorm groups (divides every channel count); 0: no norm
  int64_t feature_dim = 128;    // the penultimate layer (FID_feat's space)
  int64_t num_classes = 10;
  std::vector<std::string> class_names;  // optional, label order
  int64_t num_timesteps = 0;  // > 0: a noisy-image classifier taking t in [0, num_timesteps)

  nlohmann::json to_json() const;
  // Missing keys keep their defaults; errors name `where` and the key.
  static FashionClassifierConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate(const std::string& where = "FashionClassifierConfig") const;
};

// conv -> GroupNorm -> SiLU, one unit of a stage.
class ConvNormAct : public nn::Module {
 public:
  ConvNormAct(int64_t in, int64_t out, int64_t groups);
  std::string type_name() const override { return "ConvNormAct"; }
  Tensor forward(const Tensor& x) const;  // [N, in, H, W] -> [N, out, H, W]

  std::shared_ptr<nn::Conv2d> conv;
  std::shared_ptr<nn::GroupNorm> norm;  // null without norm
};

class FashionClassifier : public nn::Module {
 public:
  static constexpr const char* kConfigFile = "config.json";
  static constexpr const char* kWeightsFile = "model.safetensors";

  // Weights are zeros until reset_parameters() or a load.
  explicit FashionClassifier(const FashionClassifierConfig& config);
  std::string type_name() const override { return "FashionClassifier"; }

  // [N, C, 32, 32] (or 28x28, framed to 32 with -1) -> [N, feature_dim]: the penultimate layer.
  // A noisy-image classifier needs `timesteps` (i64 or f32 [N], in [0, num_timesteps)); the
  // others take none.
  Tensor features(const Tensor& x, const Tensor& timesteps = Tensor()) const;
  // [N, C, 32, 32] or 28x28 -> [N, num_classes].
  Tensor logits(const Tensor& x, const Tensor& timesteps = Tensor()) const;
  // Features -> logits (the last layer alone, to get both from one pass).
  Tensor head_logits(const Tensor& features) const;
  // log p(y = labels | x): [N], differentiable in x (classifier guidance takes its gradient).
  Tensor log_prob(const Tensor& x, const Tensor& labels, const Tensor& timesteps = Tensor()) const;
  bool noisy() const { return config_.num_timesteps > 0; }

  // Writes folder/config.json and folder/model.safetensors (f16 when `half`), each atomically.
  void save_pretrained(const std::string& folder, bool half = false) const;
  // Reads a folder written by save_pretrained, checking every tensor's name, shape and dtype;
  // returns the model in eval mode. Errors name the folder and what is missing or wrong.
  static std::shared_ptr<FashionClassifier> from_pretrained(const std::string& folder);

  const FashionClassifierConfig& config() const { return config_; }

  std::shared_ptr<nn::ModuleList> stages;  // ModuleList of ModuleList of ConvNormAct
  std::shared_ptr<nn::Linear> fc;
  std::shared_ptr<nn::Linear> head;
  std::shared_ptr<nn::Linear> time_mlp;         // noisy classifiers only
  std::shared_ptr<nn::ModuleList> time_proj;    // of Linear, one per stage; noisy only

 private:
  Tensor prepare_input(const Tensor& x) const;  // checks the shape, frames 28 -> 32

  FashionClassifierConfig config_;
};

}  // namespace stipple::models

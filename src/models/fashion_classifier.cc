// The Fashion-MNIST classifier: config, forward (features, logits, log_prob), saving and loading.
#include "models/fashion_classifier.h"

#include <filesystem>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "nn/embeddings.h"
#include "ops/ops.h"

namespace stipple::models {

namespace fs = std::filesystem;

// ---------------- config ----------------

nlohmann::json FashionClassifierConfig::to_json() const {
  nlohmann::json j = {{"_class_name", "FashionClassifier"}, {"in_channels", in_channels},
                      {"image_size", image_size},           {"channels", channels},
                      {"convs_per_stage", convs_per_stage}, {"norm_num_groups", norm_num_groups},
                      {"feature_dim", feature_dim},         {"num_classes", num_classes}};
  if (!class_names.empty()) j["class_names"] = class_names;
  if (num_timesteps > 0) j["num_timesteps"] = num_timesteps;
  return j;
}

FashionClassifierConfig FashionClassifierConfig::from_json(const nlohmann::json& json,
                                                           const std::string& where) {
  const io::JsonConfig j(json, where);
  const std::string cls = j.string("_class_name", "FashionClassifier");
  STIPPLE_CHECK(cls == "FashionClassifier", where, ": _class_name '", cls,
                "' is not a FashionClassifier (is this a classifier folder written by stipple "
                "train-classifier?)");
  FashionClassifierConfig c;
  c.in_channels = j.integer("in_channels", c.in_channels);
  c.image_size = j.integer("image_size", c.image_size);
  c.channels = j.int_list("channels", c.channels);
  c.convs_per_stage = j.integer("convs_per_stage", c.convs_per_stage);
  c.norm_num_groups = j.integer("norm_num_groups", c.norm_num_groups);
  c.feature_dim = j.integer("feature_dim", c.feature_dim);
  c.num_classes = j.integer("num_classes", c.num_classes);
  c.class_names = j.string_list("class_names", c.class_names);
  c.num_timesteps = j.integer("num_timesteps", c.num_timesteps);
  c.validate(where);
  return c;
}

void FashionClassifierConfig::validate(const std::string& where) const {
  STIPPLE_CHECK(in_channels > 0 && feature_dim > 0 && num_classes > 1 && convs_per_stage > 0, where,
                ": in_channels, feature_dim and convs_per_stage must be positive and "
                "num_classes at least 2");
  STIPPLE_CHECK(!channels.empty(), where, ": 'channels' needs at least one stage");
  const int64_t down = int64_t{1} << (channels.size() - 1);
  STIPPLE_CHECK(image_size > 0 && image_size % down == 0, where, ": image_size ", image_size,
                " must be divisible by ", down, " (", channels.size(),
                " stages halve it between them)");
  for (int64_t c : channels) {
    STIPPLE_CHECK(c > 0, where, ": every entry of 'channels' must be positive");
    STIPPLE_CHECK(norm_num_groups == 0 || (norm_num_groups > 0 && c % norm_num_groups == 0), where,
                  ": norm_num_groups ", norm_num_groups, " does not divide ", c, " channels");
  }
  STIPPLE_CHECK(class_names.empty() || static_cast<int64_t>(class_names.size()) == num_classes,
                where, ": ", class_names.size(), " class_names for ", num_classes, " classes");
  STIPPLE_CHECK(num_timesteps >= 0 && num_timesteps <= 100000, where, ": num_timesteps ",
                num_timesteps, " must be in [0, 100000] (0: a classifier of clean images)");
}

// ---------------- layers ----------------

ConvNormAct::ConvNormAct(int64_t in, int64_t out, int64_t groups) {
  conv = register_module("conv", std::make_shared<nn::Conv2d>(in, out, 3, 1, 1));
  if (groups > 0) norm = register_module("norm", std::make_shared<nn::GroupNorm>(groups, out));
}

Tensor ConvNormAct::forward(const Tensor& x) const {
  Tensor h = conv->forward(x);     // [N, out, H, W]
  if (norm) h = norm->forward(h);  // [N, out, H, W]
  return ops::silu(h);             // [N, out, H, W]
}

FashionClassifier::FashionClassifier(const FashionClassifierConfig& config) : config_(config) {
  config_.validate();
  stages = register_module("stages", std::make_shared<nn::ModuleList>());
  int64_t in = config_.in_channels;
  for (int64_t c : config_.channels) {
    auto stage = stages->push_back(std::make_shared<nn::ModuleList>());
    for (int64_t j = 0; j < config_.convs_per_stage; ++j) {
      stage->push_back(std::make_shared<ConvNormAct>(in, c, config_.norm_num_groups));
      in = c;
    }
  }
  fc = register_module("fc", std::make_shared<nn::Linear>(in, config_.feature_dim));
  if (config_.num_timesteps > 0) {
    const int64_t c0 = config_.channels[0];
    time_mlp = register_module("time_mlp", std::make_shared<nn::Linear>(c0, 4 * c0));
    time_proj = register_module("time_proj", std::make_shared<nn::ModuleList>());
    for (int64_t c : config_.channels) time_proj->push_back(std::make_shared<nn::Linear>(4 * c0, c));
  }
  head = register_module("head",
                         std::make_shared<nn::Linear>(config_.feature_dim, config_.num_classes));
}

Tensor FashionClassifier::prepare_input(const Tensor& x) const {
  const int64_t s = config_.image_size;
  STIPPLE_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels,
                "FashionClassifier: expected [N, ", config_.in_channels, ", ", s, ", ", s,
                "] images, got ", x.describe());
  if (x.size(2) == s && x.size(3) == s) return x;
  // Smaller images (28x28 Fashion-MNIST) are framed with the background value -1, centred.
  const int64_t dh = s - x.size(2), dw = s - x.size(3);
  STIPPLE_CHECK(dh >= 0 && dw >= 0 && dh % 2 == 0 && dw % 2 == 0, "FashionClassifier: images ",
                x.describe(), " cannot be framed to ", s, "x", s, " (give ", s, "x", s,
                " images, or 28x28 for a 32x32 model)");
  return ops::pad(x, {dw / 2, dw / 2, dh / 2, dh / 2}, -1.0f);
}

Tensor FashionClassifier::features(const Tensor& x, const Tensor& timesteps) const {
  Tensor h = prepare_input(x);  // [N, C, S, S]
  Tensor temb;                  // [N, 4 c_0]
  if (noisy()) {
    STIPPLE_CHECK(timesteps.defined() && timesteps.dim() == 1 && timesteps.size(0) == x.size(0),
                  "FashionClassifier: a noisy-image classifier needs one timestep per image ([",
                  x.size(0), "]), got ", timesteps.defined() ? timesteps.describe() : "none");
    const Tensor t = timesteps.to(DType::kF32);
    temb = ops::silu(time_mlp->forward(
        nn::timestep_embedding(t, config_.channels[0], /*flip_sin_to_cos=*/true, 0.0f)));
  } else {
    STIPPLE_CHECK(!timesteps.defined(), "FashionClassifier: this classifier was trained on clean "
                  "images and takes no timesteps (train a noisy one with --noisy)");
  }
  const size_t n_stages = stages->size();
  for (size_t i = 0; i < n_stages; ++i) {
    const auto stage = stages->at<nn::ModuleList>(i);
    for (size_t j = 0; j < stage->size(); ++j) {
      h = stage->at<ConvNormAct>(j)->forward(h);  // [N, c_i, S / 2^i, S / 2^i]
      if (j == 0 && temb.defined()) {
        const Tensor shift = time_proj->at<nn::Linear>(i)->forward(temb);  // [N, c_i]
        h = h + shift.reshape({shift.size(0), shift.size(1), 1, 1});
      }
    }
    if (i + 1 < n_stages) h = ops::avg_pool2x(h);  // [N, c_i, S / 2^(i+1), ...]
  }
  h = ops::mean(h, {2, 3});          // [N, c_last]
  return ops::silu(fc->forward(h));  // [N, feature_dim]
}

Tensor FashionClassifier::head_logits(const Tensor& features) const {
  return head->forward(features);  // [N, num_classes]
}

Tensor FashionClassifier::logits(const Tensor& x, const Tensor& timesteps) const {
  return head_logits(features(x, timesteps));
}

Tensor FashionClassifier::log_prob(const Tensor& x, const Tensor& labels,
                                   const Tensor& timesteps) const {
  const Tensor lp = ops::log_softmax(logits(x, timesteps), -1);  // [N, K]
  STIPPLE_CHECK(labels.dtype() == DType::kI64 && labels.dim() == 1 && labels.size(0) == x.size(0),
                "FashionClassifier::log_prob: labels must be i64 [", x.size(0), "], got ",
                labels.describe());
  // Pick column labels[n] of each row with a one-hot mask (differentiable in x).
  const int64_t n = lp.size(0), k = lp.size(1);
  std::vector<float> onehot(n * k, 0.0f);
  const std::vector<int64_t> y = labels.to_vector_i64();
  for (int64_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(y[i] >= 0 && y[i] < k, "FashionClassifier::log_prob: label ", y[i],
                  " outside [0, ", k, ")");
    onehot[i * k + y[i]] = 1.0f;
  }
  return ops::sum(lp * Tensor::from_vector(onehot, {n, k}), {1});  // [N]
}

// ---------------- files ----------------

void FashionClassifier::save_pretrained(const std::string& folder, bool half) const {
  fs::create_directories(folder);
  io::write_file_atomic((fs::path(folder) / kConfigFile).string(),
                        config_.to_json().dump(2) + "\n");
  std::map<std::string, Tensor> weights = state_dict();
  if (half)
    for (auto& [k, v] : weights) v = v.to(DType::kF16);
  io::save_safetensors((fs::path(folder) / kWeightsFile).string(), weights,
                       {{"format", "pt"}, {"model", "FashionClassifier"}});
}

std::shared_ptr<FashionClassifier> FashionClassifier::from_pretrained(const std::string& folder) {
  STIPPLE_CHECK(fs::is_directory(folder), "classifier: no such folder: ", folder,
                " (train one with `stipple train-classifier --out DIR`; the shipped one is "
                "models/fashion-mnist-classifier)");
  const fs::path config_path = fs::path(folder) / kConfigFile;
  const fs::path weights_path = fs::path(folder) / kWeightsFile;
  STIPPLE_CHECK(fs::exists(config_path), "classifier: ", folder, " holds no ", kConfigFile,
                " (not a classifier folder written by stipple train-classifier)");
  STIPPLE_CHECK(fs::exists(weights_path), "classifier: ", folder, " holds no ", kWeightsFile,
                " (not a classifier folder written by stipple train-classifier)");
  const FashionClassifierConfig config = FashionClassifierConfig::from_json(
      io::read_json_file(config_path.string()), config_path.string());
  auto model = std::make_shared<FashionClassifier>(config);
  model->load_state_dict(io::load_safetensors(weights_path.string()), /*strict=*/true,
                         weights_path.string());
  model->eval();
  return model;
}

}  // namespace stipple::models

#include "support/tiny_models.h"

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "models/dit.h"
#include "support/numerics.h"
#include "train/datasets.h"
#include "train/train_dit.h"

namespace stipple::testing {

models::DiTConfig tiny_dit_config() {
  models::DiTConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 4;
  c.in_channels = 2;
  c.out_channels = 4;
  c.num_layers = 2;
  c.sample_size = 4;
  c.patch_size = 2;
  c.num_embeds_ada_norm = 3;
  return c;
}

std::string write_tiny_generator(const std::string& dir, bool half, uint64_t seed) {
  namespace fs = std::filesystem;
  models::DiTConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 4;
  c.in_channels = 1;
  c.out_channels = 2;  // learned sigma: users of the model must take the first channel
  c.num_layers = 1;
  c.sample_size = 32;
  c.patch_size = 8;
  c.num_embeds_ada_norm = 10;
  train::DiTDenoiser d(c);
  // Random weights everywhere (DiT's own init zeroes the output layer).
  for (auto& [name, p] : d.dit().named_parameters()) {
    const std::vector<float> v = random_tensor(p.shape(), seed++, -0.3f, 0.3f).to_vector();
    std::copy(v.begin(), v.end(), p.data<float>());
  }
  fs::create_directories(dir + "/transformer");
  fs::create_directories(dir + "/scheduler");
  nlohmann::json id2label;
  for (int i = 0; i < 10; ++i) id2label[std::to_string(i)] = train::FashionMnist::class_names()[i];
  io::write_file_atomic(
      dir + "/model_index.json",
      nlohmann::json{{"_class_name", "DiTPipeline"}, {"id2label", id2label}}.dump());
  io::write_file_atomic(dir + "/transformer/config.json", d.config_json().dump());
  std::map<std::string, Tensor> weights = d.dit().state_dict();
  if (half)
    for (auto& [k, v] : weights)
      if (v.dtype() == DType::kF32) v = v.to(DType::kF16);
  io::save_safetensors(dir + "/transformer/diffusion_pytorch_model.safetensors", weights);
  io::write_file_atomic(dir + "/scheduler/scheduler_config.json",
                        R"({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
                            "beta_schedule": "linear", "prediction_type": "epsilon",
                            "clip_sample": true, "timestep_spacing": "trailing"})");
  return dir;
}

std::shared_ptr<models::FashionClassifier> tiny_fashion_classifier(int64_t num_timesteps) {
  models::FashionClassifierConfig c;
  c.channels = {4, 8, 8};
  c.norm_num_groups = 4;
  c.feature_dim = 6;
  c.num_timesteps = num_timesteps;
  auto m = std::make_shared<models::FashionClassifier>(c);
  Generator g(4);
  m->reset_parameters(g);
  m->eval();
  return m;
}

}  // namespace stipple::testing

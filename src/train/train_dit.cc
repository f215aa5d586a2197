#include "train/train_dit.h"

#include "core/error.h"
#include "pipelines/pipeline_util.h"
#include "train/train_t2i.h"

namespace stipple::train {

DiTDenoiser::DiTDenoiser(const models::DiTConfig& config)
    : model_(std::make_shared<models::DiTTransformer2DModel>(config)) {}

Tensor DiTDenoiser::forward(const Tensor& x, const Tensor& t, const Tensor& labels) {
  return model_->forward(x, t, labels);  // [B, out_channels, H, W]
}

nlohmann::json DiTDenoiser::config_json() const {
  const models::DiTConfig& c = model_->config();
  return {{"_class_name", "DiTTransformer2DModel"},
          {"_diffusers_version", "0.29.0"},
          {"num_attention_heads", c.num_attention_heads},
          {"attention_head_dim", c.attention_head_dim},
          {"in_channels", c.in_channels},
          {"out_channels", c.output_channels()},
          {"num_layers", c.num_layers},
          {"dropout", json_float(c.dropout)},
          {"norm_num_groups", 32},
          {"attention_bias", c.attention_bias},
          {"sample_size", c.sample_size},
          {"patch_size", c.patch_size},
          {"activation_fn", c.activation_fn},
          {"num_embeds_ada_norm", c.num_embeds_ada_norm},
          {"upcast_attention", c.upcast_attention},
          {"norm_type", c.norm_type},
          {"norm_elementwise_affine", c.norm_elementwise_affine},
          {"norm_eps", json_float(c.norm_eps)}};
}

models::DiTConfig dit_config_for(const TrainConfig& t, int64_t channels, int64_t image_size,
                                 int64_t num_classes) {
  t.validate();
  STIPPLE_CHECK(image_size % t.patch == 0, "patch size ", t.patch, " does not divide the ",
                image_size, "x", image_size,
                " images (Fashion-MNIST is framed to 32x32 unless told otherwise: use patch 2, 4 "
                "or 8)");
  models::DiTConfig c;
  c.num_attention_heads = t.heads;
  c.attention_head_dim = t.width / t.heads;
  c.in_channels = channels;
  c.out_channels = t.learned_sigma ? 2 * channels : channels;
  c.num_layers = t.depth;
  c.sample_size = image_size;
  c.patch_size = t.patch;
  c.num_embeds_ada_norm = num_classes;
  c.validate("training config");
  return c;
}

TrainingData load_training_data(const TrainConfig& config) {
  STIPPLE_CHECK(config.data == "fashion-mnist", "unknown data set '", config.data,
                "' (stipple train knows: fashion-mnist)");
  FashionMnist d = FashionMnist::load(config.data_dir, Split::kTrain, config.pad_to_32);
  if (config.downsample == 1) return {d.images(), d.labels(), FashionMnist::class_names()};
  // 28 and 32 both divide by 1, 2 and 4 (TrainConfig::validate allows no other factor)
  return {pipelines::downsample_area(d.images(), config.downsample), d.labels(),
          FashionMnist::class_names()};
}

std::unique_ptr<Trainer> train_dit(const TrainConfig& config, const std::string& resume_dir,
                                   const TrainCallbacks& callbacks, Communicator* comm,
                                   Device device) {
  if (config.data == "emoji")
    return train_text_to_image(config, resume_dir, callbacks, comm, device);
  // Check the resume folder before the slower data loading, so a typo fails at once.
  if (!resume_dir.empty()) Trainer::read_checkpoint_config(resume_dir);
  TrainingData data = load_training_data(config);
  const models::DiTConfig dit = dit_config_for(config, data.images.size(1), data.images.size(2),
                                               static_cast<int64_t>(data.class_names.size()));
  auto trainer = std::make_unique<Trainer>(config, std::make_unique<DiTDenoiser>(dit), data.images,
                                           data.labels, data.class_names);
  if (comm != nullptr) trainer->set_communicator(*comm);
  trainer->begin(resume_dir);
  trainer->to(device);
  trainer->run(callbacks);
  return trainer;
}

}  // namespace stipple::train

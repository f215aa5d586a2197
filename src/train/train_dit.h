// Training a class-conditional DiT from scratch: the adapter that lets the trainer drive
// models::DiTTransformer2DModel, the DiT config a TrainConfig asks for, and the whole job
// (load the data, build the model, resume, run) that `stipple train` calls.
//
// The DiT works in pixel space here (no VAE): in_channels is the image's channel count and
// sample_size its side, so the patch size must divide it (Fashion-MNIST is framed to 32x32).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "models/dit.h"
#include "train/trainer.h"

namespace stipple::train {

// DiT as the trainer's Denoiser.
class DiTDenoiser : public Denoiser {
 public:
  explicit DiTDenoiser(const models::DiTConfig& config);
  nn::Module& module() override { return *model_; }
  Tensor forward(const Tensor& x, const Tensor& t, const Tensor& labels) override;
  // The diffusers config.json of DiTTransformer2DModel (every key from_json reads).
  nlohmann::json config_json() const override;
  models::DiTTransformer2DModel& dit() { return *model_; }

 private:
  std::shared_ptr<models::DiTTransformer2DModel> model_;
};

// depth -> num_layers, heads -> num_attention_heads, width / heads -> attention_head_dim,
// patch -> patch_size; in_channels, sample_size and the class count from the data; out_channels
// 2 * in_channels with learned_sigma.
models::DiTConfig dit_config_for(const TrainConfig& config, int64_t channels, int64_t image_size,
                                 int64_t num_classes);

// The images and labels config.data names ("fashion-mnist": the train split of config.data_dir).
struct TrainingData {
  Tensor images, labels;
  std::vector<std::string> class_names;
};
TrainingData load_training_data(const TrainConfig& config);

// The whole job: loads the data, builds the DiT, resumes from `resume_dir` when it is not empty,
// and runs to config.steps. Returns the trainer (its step, model and EMA) for reporting. With
// `comm`, data-parallel over its ranks (Trainer::set_communicator); on `device`, the model trains
// there (Trainer::to; data-parallel runs stay on the CPU until the NCCL path).
std::unique_ptr<Trainer> train_dit(const TrainConfig& config, const std::string& resume_dir,
                                   const TrainCallbacks& callbacks = {},
                                   Communicator* comm = nullptr,
                                   Device device = Device::kCPU);

}  // namespace stipple::train

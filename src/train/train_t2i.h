// Training the emoji text-to-image denoiser: a PixArt DiT (models/pixart.h) over the latents of
// a VAE trained by `stipple train-vae`, conditioned on the frozen text tower of a CLIP trained by
// `stipple train-clip` (per-token states through cross-attention, the pooled embedding through
// adaLN), with caption dropout for classifier-free guidance. `stipple train --data emoji` runs it
// through the same Trainer as the class-conditional DiT (EMA, exact resume, logs, grids).
//
// How text fits the Trainer: captions are few (each training image has two, the plain CLDR label
// and the label with its vendor's style word), so the frozen text encoder runs once per distinct
// caption before training; the trainer's "labels" index that table, and its null label is the
// encoding of "" (the unconditional prompt, as Stable Diffusion's).
//
// Every checkpoint and export is a whole pipeline folder (model_index.json
// "StippleTextToImagePipeline": transformer/, scheduler/, vae/, text_encoder/, tokenizer/,
// image_encoder/) that `stipple generate --prompt` runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/pixart.h"
#include "models/vae.h"
#include "train/trainer.h"

namespace stipple::train {

// The prompts of the training sample grids (one row each).
const std::vector<std::string>& t2i_sample_prompts();

class TextDiTDenoiser : public Denoiser {
 public:
  // contexts [K+1, T, C] and pooled [K+1, P]: the text encoder's states for each caption id (the
  // last row is ""); vae decodes samples for the grids; vae_dir and clip_dir are copied into
  // checkpoints.
  TextDiTDenoiser(const models::PixArtConfig& config, Tensor contexts, Tensor pooled,
                  std::shared_ptr<models::AutoencoderKL> vae, std::string vae_dir,
                  std::string clip_dir);
  nn::Module& module() override { return *model_; }
  Tensor forward(const Tensor& x, const Tensor& t, const Tensor& labels) override;
  nlohmann::json config_json() const override { return model_->config().to_json(); }
  bool pixel_space() const override { return false; }
  Tensor to_images(const Tensor& latents) const override;
  void to(Device device) override;
  nlohmann::json model_index() const override;
  void write_components(const std::string& dir) const override;

 private:
  std::shared_ptr<models::PixArtTransformer2DModel> model_;
  Tensor contexts_, pooled_;  // [K+1, T*C], [K+1, P]
  int64_t tokens_, channels_;
  std::shared_ptr<models::AutoencoderKL> vae_;
  std::string vae_dir_, clip_dir_;
};

// `stipple train --data emoji`: the latents, the caption table, the model, the run.
std::unique_ptr<Trainer> train_text_to_image(const TrainConfig& config,
                                             const std::string& resume_dir,
                                             const TrainCallbacks& callbacks,
                                             Communicator* comm = nullptr,
                                             Device device = Device::kCPU);

// Copies every regular file under `src` to `dst` (same relative paths), each atomically.
void copy_folder(const std::string& src, const std::string& dst);

}  // namespace stipple::train

// The inside of stipple::Engine (include/stipple/stipple.h): what every model family implements,
// and the request as the engine hands it over, already checked and filled with the family's
// defaults.
//
//   Engine::open(path) -> registry (registry.h) -> the first Family whose detect() claims the
//   path -> its open() -> an Engine::Model with its ModelDescription.
//   Engine::generate(request) -> resolve(): task, defaults, seed, sampler, bounds -> Job ->
//   Model::run(job) -> images + A1111 parameters text.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "models/fashion_classifier.h"
#include "models/lora.h"
#include "pipelines/denoise.h"
#include "pipelines/pipeline_util.h"
#include "pipelines/upscale.h"
#include "stipple/stipple.h"

namespace stipple {

// A request after checks and defaults: every field set, the task decided.
struct Job {
  Task task = Task::kTextToImage;
  std::vector<std::string> prompts;  // text models: one image per prompt (batch repeats folded in)
  std::string negative_prompt;
  std::vector<std::string> class_labels;  // class models: one image per label, repeats folded in
  int steps = 0;
  double cfg_scale = 0;
  pipelines::GuidanceInterval guidance_interval;  // where the guidance applies (every step)
  std::string sampler;     // canonical name ("dpm++2m_karras"), or "" for the checkpoint's own
  std::string a1111_sampler;  // as A1111 writes it ("DPM++ 2M Karras")
  uint64_t seed = 0;
  int width = 0, height = 0;  // 0: the model's own
  int batch_size = 1;
  int clip_skip = 1;
  PromptSyntax prompt_syntax = PromptSyntax::kPlain;
  Tensor init_image;  // [1, 3, H, W] in [0, 1] (img2img, inpaint)
  Tensor mask;        // [1, 1, H, W] in [0, 1] (inpaint)
  double strength = 1.0;
  double refiner_switch_at = 0.8;  // SDXL with a refiner: the base's part of the schedule
  // Classifier guidance (GenerateRequest::classifier): the classifier, loaded, and its scale.
  std::shared_ptr<const models::FashionClassifier> classifier;
  std::string classifier_dir;
  double classifier_scale = 0;
  bool autoguidance = true;  // GenerateRequest::autoguidance
  // Text models: what the text encoder reads for each prompt (A1111's <lora:...> tags removed),
  // and the LoRAs each prompt's images merge (the request's, then the prompt's tags).
  std::vector<std::string> encoder_prompts;
  std::vector<std::vector<models::LoraSpec>> loras;
  std::vector<models::LoraSpec> request_loras;  // GenerateRequest::loras
  bool vae_tiling = false;
  // Upscalers and a cascade's upscaler stage: the low-res image's noise level (-1: the model's
  // default) and the stage's steps.
  int noise_level = -1;
  int upscaler_steps = 30;
  // Called after each step with (done, total); throws kCancelled when the token is set.
  std::function<void(int, int)> step;
  // Live previews (GenerateRequest::preview_every): the image being drawn, [1, C, H, W] in
  // [0, 1], shown before the step callback of the steps that have one.
  pipelines::Preview preview;
};

// The size run(job) draws: the request's, else the init image's, else the model's default.
inline std::pair<int64_t, int64_t> drawn_size(const Job& job, const ModelDescription& d) {
  const int64_t w = job.width > 0 ? job.width
                    : job.init_image.defined() ? job.init_image.size(3) : d.default_width;
  const int64_t h = job.height > 0 ? job.height
                    : job.init_image.defined() ? job.init_image.size(2) : d.default_height;
  return {w, h};
}

class Engine::Model {
 public:
  virtual ~Model() = default;
  // Images [N, C, H, W] in [0, 1] and what each one is (its prompt or class, its seed).
  struct Output {
    Tensor images;
    std::vector<std::string> what;  // per image: the prompt, or "207 (goldfish)"
    std::vector<uint64_t> seeds;    // per image
    std::vector<std::pair<std::string, std::string>> extra;  // more A1111 fields, in order
  };
  virtual Output run(const Job& job) const = 0;
  // The working memory run(job) needs beyond the loaded weights, in bytes (an upper-side
  // estimate); 0 when it is small whatever the request (fixed-size models).
  virtual uint64_t estimate_bytes(const Job&) const { return 0; }
  // Moves the model to `device` (OpenOptions::device); run() then computes there and returns
  // images on the CPU. Families that run on the CPU only say so.
  virtual void to(Device device) {
    throw Error(str_cat("the ", description.family, " family runs on the CPU only for now; leave "
                        "out the device (", device_name(device), ")"),
                ErrorKind::kUnsupported);
  }
  ModelDescription description;
  uint64_t memory_limit_mb = 0;  // OpenOptions::memory_limit_mb
  // OpenOptions::upscaler: upscales every image run() draws (a cascade); null without one.
  std::shared_ptr<const pipelines::SuperResolutionPipeline> upscaler;
  std::string lora_dir;          // OpenOptions::lora_dir
};

// One registry entry: a family of models, how to recognise them and how to load them.
struct Engine::Family {
  std::string name;   // "Stable Diffusion"
  std::string opens;  // what it reads, for errors and `model_families()`
  // Whether `path` is this family's; reads only small files (JSON, safetensors headers).
  std::function<bool(const std::string& path)> detect;
  std::function<std::unique_ptr<Engine::Model>(const std::string& path, const OpenOptions&)>
      open;
  // Which kind of this family's models `path` is ("SDXL refiner"), from small files; unset for
  // a family of one kind.
  std::function<std::string(const std::string& path)> variant;
};

}  // namespace stipple

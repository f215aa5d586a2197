// Evaluating a class-conditional generator against the Fashion-MNIST classifier (`stipple eval`):
//
//   1. load the generator (a pixel-space DiT folder written by the trainer: a checkpoint or the
//      export) and the classifier (models/fashion_classifier.h)
//   2. generate N = samples_per_class images of each class through the shared denoise loop
//      (seeded x_T, the named sampler, classifier-free guidance with DiT's cond-first batch)
//   3. CAS, the Classification Accuracy Score (Ravuri & Vinyals 2019, here in its "does the
//      classifier see the asked class" form): the classifier's accuracy on the generated images,
//      overall and per class
//   4. FID_feat: the Fréchet distance (train/frechet.h) between Gaussians fitted to the
//      classifier's penultimate features of the generated images and of the 10,000 test images
//   5. real floors through the same path: the classifier's accuracy on the test images, and the
//      Fréchet distance between N real *training* images (samples_per_class of each class, drawn
//      with the seed) and the same test images, i.e. the distance a perfect generator would get
//      at the same N (FID is biased upwards at small N, so the floor must match N)
//
// The goals (issue 5): CAS within 3 points of the real accuracy; FID_feat at most twice the
// real floor.
//
// Leaves out: Inception-based FID (no Inception weights ship here), precision/recall.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/dit.h"
#include "models/fashion_classifier.h"
#include "pipelines/denoise.h"
#include "pipelines/pipeline_util.h"
#include "pipelines/upscale.h"
#include "schedulers/scheduler.h"

namespace stipple::train {

struct EvalConfig {
  int samples_per_class = 100;
  int steps = 20;
  // The defaults of a pixel-space DiT whose folder names none (SamplingDefaults): 20
  // DPM-Solver++ (2M, Karras) steps, CFG 2 at every step. (The shipped Fashion-MNIST DiT's
  // folder asks for CFG 2.5 at sigma <= 2.5.)
  std::string sampler = "dpm++2m_karras";  // a name from schedulers::sampler_names()
  float cfg = 2.0f;                        // classifier-free guidance scale; <= 1: none
  pipelines::GuidanceInterval guidance_interval;  // default: guidance at every step
  // Guidance rescale phi in [0, 1] (Lin et al. 2023; pipelines::CfgOptions::rescale): each guided
  // prediction's per-image std brought back toward the conditional one's. 0: off.
  float guidance_rescale = 0.0f;
  uint64_t seed = 0;
  int batch_size = 100;  // images per denoiser batch (twice that many rows with guidance)
  // Classifier guidance (pipelines::ClassifierGuidanceOptions) by a noisy-image classifier
  // (`stipple train-classifier --noisy`); none when unset or the scale is 0.
  std::shared_ptr<const models::FashionClassifier> guide;
  float guide_scale = 0.0f;
  std::string guide_dir;  // where `guide` came from, for the record
  // Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
  // where the generator has a guide model (ClassGenerator::guide_model), each guided step takes
  // D_guide(x_t; y) + cfg * (D(x_t; y) - D_guide(x_t; y)) -- the guide a smaller, shorter-trained
  // DiT of the same data, given the same class -- in place of the null-class prediction. false:
  // classifier-free guidance with the null class even so.
  bool autoguidance = true;
  // The guide model's share of the guided steps' negative prediction, the rest the null class's:
  // negative = (1 - share) D(x_t; null) + share D_guide(x_t; y), so the step takes
  // D(x_t; y) + (cfg - 1) [(1 - share) (D(x_t; y) - D(x_t; null)) + share (D(x_t; y) -
  // D_guide(x_t; y))]: classifier-free guidance and autoguidance in one, in [0, 1] (1: autoguidance
  // alone; below 1 the guided steps make both calls of the generator and one of the guide).
  float guide_share = 1.0f;
  // The denoiser unconditional (every image given the null class; no classifier-free guidance),
  // so that only the classifier steers toward the class: ADM's classifier-guided setting.
  bool unconditional = false;
  // A cascade: every sample upscaled by this super-resolution model (stipple train-sr) before it
  // is scored, with its steps (DPM-Solver++ 2M) and noise level (< 0: the model's default);
  // sample seeds config.seed + 1000 + batch index.
  std::shared_ptr<const pipelines::SuperResolutionPipeline> upscaler;
  std::string upscaler_dir;  // where `upscaler` came from, for the record
  int upscaler_steps = 30;
  int noise_level = -1;

  void validate() const;
};

// A class-conditional pixel-space DiT as the trainer writes it: model_index.json, transformer/
// and scheduler/. A training run's folder (with export/ or latest) is accepted too.
// How a generator folder samples unless told otherwise: model_index.json's "_stipple_sampling"
// (diffusers skips the keys that start with "_"), e.g.
//   "_stipple_sampling": {"steps": 20, "sampler": "dpm++2m_karras", "cfg": 2.5,
//                         "guidance_interval": [0, 4], "guide_model": "guide"}
// Each field left out keeps EvalConfig's default; "inf" is the open upper end of the interval;
// "guide_model" names a folder (relative to the generator's) holding the autoguidance model
// (EvalConfig::autoguidance), laid out like the generator's own (transformer/, scheduler/).
// `stipple generate` and the Engine draw with them, `stipple eval` scores with them (for the
// options not given), and `stipple export` keeps them when it rewrites the folder.
struct SamplingDefaults {
  int steps = EvalConfig{}.steps;
  std::string sampler = EvalConfig{}.sampler;
  float cfg = EvalConfig{}.cfg;
  pipelines::GuidanceInterval guidance_interval;
  std::string guide_model;  // relative to the generator's folder; empty: none
  static constexpr const char* kKey = "_stipple_sampling";
  // From a parsed model_index.json; throws naming `where` and the field that is wrong.
  static SamplingDefaults from_model_index(const nlohmann::json& index, const std::string& where);
  nlohmann::json to_json() const;
};

class ClassGenerator {
 public:
  // Throws naming the folder and the missing part (and what to give instead).
  static ClassGenerator load(const std::string& folder);
  // A generator around a model in memory (one being tuned: samples follow its current weights).
  static ClassGenerator from_model(std::shared_ptr<models::DiTTransformer2DModel> transformer,
                                   schedulers::SchedulerConfig scheduler,
                                   std::vector<std::string> class_names, std::string folder);

  // Images [labels.size(), C, S, S] in [-1, 1]. x_T for all images is drawn at once from
  // Generator(seed), so image i does not depend on the batch size; stochastic samplers draw
  // their step noise from Generator(seed + 1 + batch index). progress(done, total) counts
  // denoiser steps over all batches; `preview` shows each batch's first image as it forms.
  Tensor sample(const std::vector<int64_t>& labels, const EvalConfig& config,
                const std::function<void(int, int)>& progress = {},
                const pipelines::Preview& preview = {}) const;

  const std::string& folder() const { return folder_; }  // the resolved model folder
  int64_t num_classes() const { return transformer_->config().num_embeds_ada_norm; }
  int64_t channels() const { return transformer_->config().in_channels; }
  int64_t image_size() const { return transformer_->config().sample_size; }
  const std::vector<std::string>& class_names() const { return class_names_; }
  const models::DiTTransformer2DModel& transformer() const { return *transformer_; }
  const schedulers::SchedulerConfig& scheduler_config() const { return scheduler_; }
  const SamplingDefaults& defaults() const { return defaults_; }
  // The autoguidance model (EvalConfig::autoguidance): the one the folder's defaults name, or
  // the one set_guide_model gave; null when none.
  const std::shared_ptr<models::DiTTransformer2DModel>& guide_model() const { return guide_; }
  const std::string& guide_model_folder() const { return guide_folder_; }
  // Whether sampling with `config` guides with the guide model: it has one, the config wants
  // autoguidance and guidance (cfg > 1), and the denoiser is not run unconditional.
  bool autoguides(const EvalConfig& config) const {
    return guide_ && config.autoguidance && config.cfg > 1.0f && !config.unconditional;
  }
  // Loads `folder` (a generator folder, as load() takes) as the guide model, on this generator's
  // device; "" drops the guide. Throws when the guide cannot stand in for this generator (other
  // image size, channels, classes or prediction type), naming both.
  void set_guide_model(const std::string& folder);
  // Moves the transformer to `device`: sample() denoises there (x_T drawn on the CPU, so a seed
  // gives the same images) and returns images on the CPU; a guiding classifier stays on the CPU.
  void to(Device device);
  Device device() const { return device_; }

 private:
  Device device_ = Device::kCPU;
  std::string folder_;
  std::shared_ptr<models::DiTTransformer2DModel> transformer_;
  schedulers::SchedulerConfig scheduler_;
  std::vector<std::string> class_names_;
  SamplingDefaults defaults_;
  std::shared_ptr<models::DiTTransformer2DModel> guide_;
  std::string guide_folder_;
};

// The real images the floors and FID_feat compare against, all [N, C, S, S] in [-1, 1].
struct RealData {
  Tensor test_images, test_labels;    // the reference set (Fashion-MNIST: the test split)
  Tensor train_images, train_labels;  // the pool the matched-N floor draws from
};
// Both Fashion-MNIST splits, framed to 32x32 when `pad_to_32`.
RealData load_real_data(const std::string& data_dir, bool pad_to_32 = true);

struct EvalResult {
  EvalConfig config;
  std::string model, classifier;
  std::string guide_model;  // the autoguidance model the guided steps used; empty: the null class
  std::vector<std::string> class_names;
  int64_t num_generated = 0, num_test = 0;
  float cas = 0;  // accuracy on generated images
  std::vector<float> cas_per_class;
  float real_accuracy = 0;  // accuracy on the test images
  std::vector<float> real_accuracy_per_class;
  double fid_feat = 0;       // generated vs test
  double fid_floor = 0;      // N real training images vs test
  double fid_mean_term = 0;  // fid_feat's |mu_gen - mu_test|^2 alone
  // Per class: the class's generated images against its test images, and the floor (its N
  // training images against the same); noisier than the whole (N per class in 128 dimensions).
  std::vector<double> fid_per_class, fid_floor_per_class;
  std::string floor_method;  // says how the floor was computed
  double sample_seconds = 0, total_seconds = 0;
  Tensor samples;               // the generated images [N, C, S, S]
  std::vector<int64_t> labels;  // their classes

  bool cas_goal_met() const { return cas >= real_accuracy - 0.03f; }
  bool fid_goal_met() const { return fid_feat <= 2.0 * fid_floor; }
  nlohmann::json to_json() const;
  // The table: metric, generated, real floor, goal, met; then CAS per class.
  std::string table() const;
};

// Progress of an evaluation: phase ("sampling", "features"), done, total.
using EvalProgress = std::function<void(const std::string&, int, int)>;

// Steps 2-5 of the header comment. The classifier and generator must agree on the class count,
// and the classifier must take the generator's images (same channels; same size, or 28 -> 32).
EvalResult evaluate(const ClassGenerator& generator, const models::FashionClassifier& classifier,
                    const RealData& real, const EvalConfig& config,
                    const EvalProgress& progress = {});

// A grid of the evaluated samples: one row per class, up to `columns` images each, 2x enlarged,
// written as a PNG (atomically) with the evaluation's parameters in its text chunk.
void write_eval_grid(const EvalResult& result, const std::string& path, int columns = 10);

// Writes result.to_json() atomically.
void write_eval_json(const EvalResult& result, const std::string& path);

}  // namespace stipple::train

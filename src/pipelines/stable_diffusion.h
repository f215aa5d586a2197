// Stable Diffusion 1.x/2.x pipelines, as diffusers 0.29's StableDiffusionPipeline,
// StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline: one class holds the
// components of a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), and
// run(params) picks text-to-image, image-to-image or inpainting from what the params hold.
//
// Text-to-image (run_txt2img):
//   1. encode prompt: tokenize to 77 (padded), CLIP last_hidden_state; with guidance the
//      negative prompt ("" when none) too, as [uncond, cond]
//   2. timesteps: the sampler's grid for `steps`
//   3. (img2img/inpaint only) encode the image with the VAE
//   4. latents: randn [B, 4, H/f, W/f] from the seeded Generator (torch-exact) * init_noise_sigma
//   5. denoise: pipelines::denoise with classifier-free guidance (uncond first)
//   6. decode: latents / scaling_factor -> VAE -> clamp(x / 2 + 0.5, 0, 1)
// Image-to-image (run_img2img; SDEdit, Meng et al. 2022): the image's posterior sample *
// scaling_factor, noised to timesteps()[begin] with begin = N - int(N * strength), then steps 5-6
// over the remaining timesteps. Inpainting (run_inpaint, stable_diffusion_inpaint.cc): 9-channel
// UNets see [latents, mask, masked-image latents]; 4-channel UNets get diffusers' latent blending
// (after each step the known region is replaced by the image latents noised to the next timestep).
//
// Random draws happen in diffusers' order (see NoiseSource), so a seed gives diffusers' CPU
// result for the same seed, and the conformance references inject theirs.
//
// SDXL (stable_diffusion_xl.cc), as diffusers 0.29's StableDiffusionXLPipeline and
// StableDiffusionXLImg2ImgPipeline: a UNet with addition_embed_type "text_time" makes the
// pipeline SDXL. The prompt goes through both text encoders (CLIP ViT-L as text_encoder, OpenCLIP
// ViT-bigG with projection as text_encoder_2; a refiner has only the second), each giving its
// penultimate layer's states without final_layer_norm, concatenated along the features
// ([B, 77, 768 + 1280]); the pooled embedding is text_encoder_2's projection. With guidance and
// no negative prompt, force_zeros_for_empty_prompt makes the negative states and pooled zeros.
// Each UNet call also takes the pooled embedding and the time ids: original size, crop top-left
// and target size as (height, width) pairs (base), or original size, crop and aesthetic score
// (refiner, requires_aesthetics_score). denoising_end stops the base part-way and hands its
// latents to a refiner, which starts at denoising_start on them without adding noise.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/single_file.h"
#include "models/clip_text.h"
#include "models/lora.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "pipelines/denoise.h"
#include "pipelines/pipeline_util.h"
#include "pipelines/prompt_weighting.h"
#include "schedulers/scheduler.h"
#include "text/clip_tokenizer.h"

namespace stipple::pipelines {

struct GenerationParams {
  std::string prompt;
  std::string negative_prompt;  // "" = the empty string as unconditional prompt (diffusers' None)
  int steps = 30;
  float cfg = 7.5f;     // guidance scale; <= 1 runs without the unconditional branch
  GuidanceInterval guidance_interval;  // the noise levels guided (denoise.h); default: all
  std::string sampler;  // a name from schedulers::sampler_names(); "" = the checkpoint's own
  double eta = 0.0;     // DDIM's eta
  uint64_t seed = 42;
  int width = 0, height = 0;  // multiples of 8; 0 = the image's size, else the UNet's default
  int num_images = 1;         // images per prompt
  int clip_skip = 1;          // A1111 convention: 1 = the last CLIP layer
  // kA1111: (emphasis:1.2), [less], BREAK, and prompts past 75 tokens in chunks
  // (pipelines/prompt_weighting.h). kPlain: plain text truncated at 77 tokens, as diffusers.
  PromptSyntax prompt_syntax = PromptSyntax::kPlain;
  // img2img and inpainting
  Tensor init_image;      // [1, 3, H, W] in [0, 1]
  Tensor mask;            // [1, 1, H, W] in [0, 1]; >= 0.5 is repainted
  double strength = 1.0;  // in [0, 1]; img2img: how much noise is added (1 = ignore the image)
  // SDXL micro-conditioning (ignored by SD 1.x/2.x): the size the model is told the image
  // originally had, the crop's top-left corner and the target size, in pixels (0 = the image's
  // width/height); the refiner's aesthetic scores.
  int original_width = 0, original_height = 0;
  int crop_left = 0, crop_top = 0;
  int target_width = 0, target_height = 0;
  double aesthetic_score = 6.0, negative_aesthetic_score = 2.5;
  // Base -> refiner hand-off (SDXL's ensemble of expert denoisers), as fractions of the noise
  // schedule: the base stops once timesteps fall below (1 - denoising_end) * num_train_timesteps
  // and returns its noisy latents (run_latents); the refiner (run_refine) takes them and runs
  // only the timesteps below (1 - denoising_start) * num_train_timesteps.
  double denoising_end = 1.0;
  double denoising_start = 0.0;
  // Decode in overlapping tiles (models::AutoencoderKL::decode_tiled, diffusers' enable_tiling):
  // the decoder's peak memory becomes one tile's. Also on by itself for images over 4x the
  // VAE's sample_size in area.
  bool vae_tiling = false;
  // The x4 upscaler (is_upscaler()): the noise level of the low-resolution image in init_image
  // (diffusers' noise_level; at most the folder's max_noise_level).
  int noise_level = 20;
  // Reproducing a diffusers run: initial latents as diffusers' `latents=` argument ([B, 4, h, w],
  // before init_noise_sigma), and noise injected in draw order (see NoiseSource).
  Tensor latents;
  std::vector<Tensor> noise;
  std::function<void(int done, int total)> progress;
  Preview preview;
  Observer observe;  // intermediates under diffusers reference names
};

class StableDiffusion {
 public:
  // Reads a diffusers StableDiffusionPipeline / StableDiffusionInpaintPipeline folder. Throws
  // naming the missing part for any other layout.
  // `low_memory`: see enable_low_memory (the components are released as soon as each is read, so
  // opening never holds them all at once).
  static StableDiffusion from_pretrained(const std::string& folder, bool low_memory = false);
  // Reads a single-file SD 1.x/2.x checkpoint (A1111/CompVis names; io/single_file.h). The file
  // holds no tokenizer: `tokenizer_dir` (vocab.json + merges.txt, e.g. a diffusers model's
  // tokenizer/ folder) is used, else a tokenizer/ folder beside the file; the scheduler is SD's.
  static StableDiffusion from_single_file(const std::string& path,
                                          const std::string& tokenizer_dir = "",
                                          const io::SingleFileOptions& options = {},
                                          bool low_memory = false);
  // A diffusers folder or a single .safetensors file, whichever `path` is.
  static StableDiffusion load(const std::string& path, const std::string& tokenizer_dir = "",
                              const io::SingleFileOptions& options = {}, bool low_memory = false);

  // Low memory (stable_diffusion_memory.cc; stable-diffusion.cpp's approach): the text encoders,
  // the UNet and the VAE hold their weights only during their own stage of a run. Each stage
  // reads its component again from the checkpoint (from the page cache once the file was read),
  // in the weight precision of the LoadScope that was active at load, and merges the current
  // LoRAs into it; the others' memory goes back to the system. The peak becomes the largest
  // component plus its activations instead of all of them together. The models' configs stay
  // available throughout. release_all() (the engine calls it after each generation) leaves
  // nothing resident.
  bool low_memory() const { return residency_ != nullptr; }
  // Moves the text encoders, the UNet and the VAE to `device`: the run_* methods then encode,
  // denoise and decode there (noise drawn on the CPU, as diffusers' CPU generator, so a seed
  // gives the same image) and return images on the CPU. Not with low memory (each stage is read
  // again from the checkpoint onto the CPU) nor for the x4 upscaler.
  void to(Device device);
  Device device() const { return device_; }
  void release_all() const;

  // Prompt embeddings: [2B, 77, D] = [negative x B, prompt x B] with guidance, else [B, 77, D];
  // with A1111's syntax [.., 77 * chunks, D]. SDXL also gives the pooled embeddings [2B or B, P].
  struct PromptEmbeddings {
    Tensor states;  // the UNet's encoder_hidden_states
    Tensor pooled;  // SDXL only
  };
  PromptEmbeddings encode_prompts(const std::string& prompt, const std::string& negative_prompt,
                                  int num_images, bool guidance, int clip_skip = 1,
                                  const Observer& observe = nullptr,
                                  PromptSyntax syntax = PromptSyntax::kPlain) const;
  Tensor encode_prompt(const std::string& prompt, const std::string& negative_prompt,
                       int num_images, bool guidance, int clip_skip = 1,
                       const Observer& observe = nullptr,
                       PromptSyntax syntax = PromptSyntax::kPlain) const {
    return encode_prompts(prompt, negative_prompt, num_images, guidance, clip_skip, observe,
                          syntax)
        .states;
  }

  // Text-to-image, image-to-image or inpainting, by what `params` holds (a mask means
  // inpainting, an init image alone img2img). Returns [B, 3, H, W] in [0, 1].
  Tensor run(const GenerationParams& params) const;
  Tensor run_txt2img(const GenerationParams& params) const;
  Tensor run_img2img(const GenerationParams& params) const;
  Tensor run_inpaint(const GenerationParams& params) const;
  // Stable Diffusion's x4 upscaler (stable_diffusion_upscale.cc): init_image [1, 3, h, w] in
  // [0, 1] -> [B, 3, 4h', 4w'] (h', w' rounded down to multiples of the VAE factor).
  Tensor run_upscale(const GenerationParams& params) const;
  // Text-to-image up to params.denoising_end, without decoding: the latents a refiner takes.
  Tensor run_latents(const GenerationParams& params) const;
  // A refiner's part of the hand-off: denoises `latents` (from run_latents, [B, 4, h, w]) over the
  // timesteps below params.denoising_start and decodes. Returns [B, 3, H, W] in [0, 1]. When no
  // timestep is below it (few steps: the base ran them all), the latents are only decoded.
  Tensor run_refine(const GenerationParams& params, const Tensor& latents) const;

  // Merges `loras` (models/lora.h) into the UNet and text encoders, after restoring the weights
  // the previous set changed; an empty list restores the model. Does nothing when the set is the
  // one already merged. On an error the model is left without LoRAs.
  void set_loras(const std::vector<models::LoraSpec>& loras);
  const std::vector<models::LoraSpec>& loras() const { return loras_; }

  // Textual inversion (stable_diffusion_embeddings.cc): every .pt, .ckpt, .bin and .safetensors
  // file in `dir` is an embedding named by its file stem, in A1111's formats (string_to_param,
  // emb_params; SDXL's clip_l + clip_g) or diffusers' learned_embeds. Its n vectors become new
  // tokens NAME, NAME_1, ... NAME_{n-1} of each text encoder (ids after the vocabulary, as
  // diffusers' load_textual_inversion), and a prompt's NAME reads as all of them. Files whose
  // vectors do not fit this model's encoders (another family's) are skipped and listed in the
  // return value's second part; the first lists the names loaded.
  std::pair<std::vector<std::string>, std::vector<std::string>> load_embeddings(
      const std::string& dir);
  // One embedding: `first` for text_encoder [n, D1] (undefined for a refiner), `second` for
  // text_encoder_2 [n, D2] (SDXL only).
  void add_embedding(const std::string& name, const Tensor& first, const Tensor& second);
  // `prompt` with each multi-vector embedding's name expanded (diffusers' maybe_convert_prompt).
  std::string expand_embeddings(const std::string& prompt) const;

  // SDXL: a UNet with added text/time conditioning (addition_embed_type "text_time").
  bool is_xl() const { return unet_->config().addition_embed_type == "text_time"; }
  // SDXL refiners condition on an aesthetic score instead of the target size.
  bool requires_aesthetics_score() const { return requires_aesthetics_score_; }

  // The VAE's downscale factor (8 for SD) and the default image size (UNet sample_size * f).
  int64_t vae_scale_factor() const { return vae_->config().downscale_factor(); }
  int64_t default_size() const;
  bool is_inpainting_model() const { return unet_->config().in_channels == 9; }
  // A StableDiffusionUpscalePipeline folder (7-channel UNet, low_res_scheduler/).
  bool is_upscaler() const { return !low_res_alphas_cumprod_.empty(); }
  int max_noise_level() const { return max_noise_level_; }

  const models::UNet2DConditionModel& unet() const { return *unet_; }
  const models::AutoencoderKL& vae() const { return *vae_; }
  // Null for an SDXL refiner, which has only text_encoder_2.
  const models::CLIPTextModel* text_encoder() const { return text_encoder_.get(); }
  const models::CLIPTextModel* text_encoder_2() const { return text_encoder_2_.get(); }
  const text::ClipTokenizer& tokenizer() const { return *tokenizer_; }
  const schedulers::SchedulerConfig& scheduler_config() const { return scheduler_config_; }

 private:
  struct Run;  // one run's checked sizes, scheduler, noise and embeddings
  // Checks that the loaded components fit together; `where` names the source in errors.
  void check_components(const std::string& where) const;
  Run prepare(const GenerationParams& params, bool needs_image) const;
  // SDXL: both encoders' (or the refiner's one) states and pooled embedding, for one text.
  PromptEmbeddings encode_xl(const std::string& text, int clip_skip, PromptSyntax syntax,
                             int call, const Observer& observe) const;
  PromptEmbeddings encode_prompts_xl(const std::string& prompt, const std::string& negative_prompt,
                                     int num_images, bool guidance, int clip_skip,
                                     const Observer& observe, PromptSyntax syntax) const;
  // SDXL's time ids [2B or B, 6 (or 5 for a refiner)] for a run of the given size.
  Tensor xl_time_ids(const GenerationParams& params, int64_t width, int64_t height,
                     int64_t batch, bool guided) const;
  // Reads the SDXL parts of a diffusers folder (text_encoder_2/, tokenizer_2/, model_index.json
  // flags); `sd` already holds the UNet.
  static void load_xl_parts(StableDiffusion& sd, const std::string& folder);
  // The x4 upscaler's low_res_scheduler/ and max_noise_level (model_index.json).
  static void load_upscaler_parts(StableDiffusion& sd, const std::string& folder);
  // The SDXL pipeline flags a model_index.json registers, with diffusers' defaults.
  void read_xl_flags(const std::string& model_index_path);
  // The posterior sample of `image` ([1, 3, H, W] in [-1, 1]) * scaling_factor; `index` numbers
  // the VAE call for the observer.
  Tensor encode_image(const Tensor& image, NoiseSource& noise, int index,
                      const Observer& observe) const;
  // `tiled`: AutoencoderKL::decode_tiled with sample_size / f latent tiles.
  Tensor decode(const Tensor& latents, const Observer& observe, bool tiled = false) const;
  bool use_tiling(const GenerationParams& params, const Tensor& latents) const;
  // Text-to-image's x_T: params.latents or a draw, times init_noise_sigma.
  Tensor initial_latents(Run& run, const GenerationParams& params) const;
  // Steps 5-6; without `decode_result` the final latents are returned instead of images.
  Tensor denoise_and_decode(
      Run& run, Tensor latents, const GenerationParams& params,
      const std::function<Tensor(const Tensor&)>& extra_channels,
      const std::function<Tensor(int, double, const Tensor&)>& after_step,
      bool decode_result = true) const;
  // The end index for denoising_end `fraction` over timesteps()[begin:] (-1 when it is not in
  // (0, 1)): the steps whose timestep is at or above round(T - fraction * T).
  static int end_index_for(const schedulers::Scheduler& scheduler, int begin, double fraction);

  // Low memory: the components a stage needs. need() makes `parts` resident; with `exclusive`
  // the others are released first. Nothing happens unless low_memory().
  enum class Part { kText, kUNet, kVAE };
  void need(std::initializer_list<Part> parts, bool exclusive) const;
  // A part's modules by component name ("text_encoder", "text_encoder_2" for kText).
  std::vector<std::pair<std::string, nn::Module*>> modules_of(Part part) const;
  struct Residency;
  void enable_low_memory(const std::string& path, const io::SingleFileOptions& options);
  // Merges loras_ into the components in `only` (all when empty); fills lora_originals_ for
  // those it changed when `keep_originals`.
  void merge_loras(const std::vector<std::string>& only, bool keep_originals);

  std::shared_ptr<models::UNet2DConditionModel> unet_;
  std::shared_ptr<models::AutoencoderKL> vae_;
  std::shared_ptr<models::CLIPTextModel> text_encoder_;
  std::shared_ptr<text::ClipTokenizer> tokenizer_;
  std::shared_ptr<models::CLIPTextModel> text_encoder_2_;  // SDXL
  std::shared_ptr<text::ClipTokenizer> tokenizer_2_;       // SDXL
  bool force_zeros_for_empty_prompt_ = true;               // SDXL base (model_index.json)
  bool requires_aesthetics_score_ = false;                 // SDXL refiner (model_index.json)
  std::vector<models::LoraSpec> loras_;                    // merged now
  std::map<std::string, int64_t> embeddings_;              // name -> vectors
  // The original values of the weights loras_ changed: component -> weight name -> tensor.
  std::map<std::string, std::map<std::string, Tensor>> lora_originals_;
  schedulers::SchedulerConfig scheduler_config_;
  std::vector<float> low_res_alphas_cumprod_;  // the x4 upscaler's low_res_scheduler
  int max_noise_level_ = 0;
  std::shared_ptr<Residency> residency_;  // low memory only
  Device device_ = Device::kCPU;
};

// One run's checked sizes, scheduler, random draws and prompt embeddings.
struct StableDiffusion::Run {
  int64_t width = 0, height = 0, batch = 1;  // image size; batch = num_images
  std::unique_ptr<schedulers::Scheduler> scheduler;
  std::unique_ptr<NoiseSource> noise;
  Tensor prompt_embeds;  // [2B, 77, D] with guidance, else [B, 77, D]
  models::AddedConditions added;  // SDXL: pooled [2B or B, P] and time ids [2B or B, k]
  Tensor class_labels;            // the x4 upscaler: the noise level, [2B or B]
  bool guided = false;
  int end_index = -1;  // SDXL denoising_end: the loop stops before timesteps()[end_index]
  Tensor init_image;    // [1, 3, H, W] in [-1, 1] (img2img, inpaint)
  int begin_index = 0;  // first step of timesteps() (strength < 1)
};

}  // namespace stipple::pipelines

// stipple's public C++ API: open a model, generate images.
//
//   #include <stipple/stipple.h>
//
//   stipple::Engine engine = stipple::Engine::open("models/fashion-mnist-dit");
//   stipple::GenerateRequest request;
//   request.class_labels = {"sneaker"};       // or request.prompt = "red apple" for text models
//   request.seed = 1;
//   stipple::GenerateResult result = engine.generate(request, [](const stipple::Progress& p) {
//     std::printf("step %d of %d\n", p.step, p.total);
//   });
//   stipple::save_png("sneaker.png", result.images[0].image, result.images[0].parameters);
//
// One registry maps every supported model to its pipeline and defaults: Stable Diffusion 1.x/2.x
// and SDXL with its refiner (diffusers folders, inpainting folders and single-file checkpoints),
// DiT (latent, diffusers'
// DiTPipeline), stipple's pixel-space class-conditional DiTs and its text-to-image DiTs. The
// request says what to do: a mask means inpainting, an init image alone image-to-image, class
// labels class-to-image, else text-to-image; Engine::description() says which of these a model
// can do, and with which defaults.
//
// Errors are stipple::Error (stipple/error.h) with a kind and a message that names the problem.
//
// Threads: every Engine call that computes (open, generate) holds one process-wide lock, so any
// number of threads may share Engines safely; generations run one at a time, each on all cores
// (OpenMP; OMP_NUM_THREADS). Cancel tokens and progress callbacks may be used across threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "stipple/error.h"
#include "stipple/prompt_syntax.h"

namespace stipple {

// An 8-bit image: row-major, interleaved channels (1 grey, 3 RGB, 4 RGBA).
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // width * height * channels bytes
};

enum class Task { kTextToImage, kImageToImage, kInpaint, kClassToImage, kUpscale };
// "txt2img", "img2img", "inpaint", "class2img", "upscale"
const char* to_string(Task task);

// A LoRA to merge into a Stable Diffusion model for a generation: a file (kohya/A1111 or
// diffusers/PEFT keys, safetensors or a PyTorch checkpoint) and its weight.
struct LoraWeights {
  std::string path;
  double weight = 1.0;
};

// Classifier-free guidance at some noise levels only (Kynkaanniemi et al. 2024): the steps whose
// sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod) lies in [low, high] are guided, the others
// take the conditional prediction alone (one model call instead of two). Guidance at high noise
// mostly narrows the layouts drawn; leaving it out there keeps the images more varied. The
// default guides every step.
struct GuidanceInterval {
  double low = 0;
  double high = std::numeric_limits<double>::infinity();
  bool limited() const { return low > 0 || high < std::numeric_limits<double>::infinity(); }
};

// What one generation asks for. Fields left at their defaults take the model's defaults.
struct GenerateRequest {
  // Text models: the prompt, or several prompts (one image each, in order; `prompt` is then
  // ignored). Class models: class_labels, each a class name or an id ("207").
  std::string prompt;
  std::vector<std::string> prompts;
  std::string negative_prompt;
  std::vector<std::string> class_labels;
  int steps = 0;                        // 0: the model's default
  std::optional<double> cfg_scale;      // classifier-free guidance; <= 1 turns it off
  std::optional<GuidanceInterval> guidance_interval;  // unset: the model's default
  std::string sampler;                  // "" = default; "dpm++2m_karras" or A1111's "DPM++ 2M Karras"
  int64_t seed = -1;                    // -1: a random seed (reported in the result)
  int width = 0, height = 0;            // 0: the model's (or the init image's) size
  int batch_size = 1;                   // images per prompt (or per class label)
  int clip_skip = 1;                    // text encoder layers skipped from the end (1 = none)
  PromptSyntax prompt_syntax = PromptSyntax::kPlain;  // how Stable Diffusion reads the prompts
  std::optional<Image> init_image;      // image-to-image and inpainting
  std::optional<Image> mask;            // inpainting: white (>= 50% grey) is repainted
  std::optional<double> strength;       // in [0, 1]: how much of init_image is re-noised
  // > 0: every that many steps, Progress::preview shows the image being drawn (the sampler's
  // current estimate of the clean image, decoded; costs one decode each time).
  int preview_every = 0;
  // SDXL opened with a refiner (OpenOptions::refiner): the fraction of the noise schedule the
  // base model runs before the refiner takes over (A1111's "refiner switch at"; default 0.8).
  std::optional<double> refiner_switch_at;
  // Class models of stipple's own (pixel-space DiTs): classifier guidance (Dhariwal & Nichol
  // 2021) by a noisy-image classifier folder (`stipple train-classifier --noisy`) at
  // classifier_scale; combines with classifier-free guidance. Scale 0: none.
  std::string classifier;
  double classifier_scale = 0;
  // Class models with a guide model (ModelDescription::guide_model): the guided steps take the
  // guide's prediction in place of the null class's (autoguidance); false: the null class's
  // (plain classifier-free guidance).
  bool autoguidance = true;
  // Stable Diffusion 1.x/2.x/XL: LoRAs merged for this request (and unmerged after). With
  // prompt_syntax kA1111 a prompt's <lora:NAME:WEIGHT> tags add OpenOptions::lora_dir's
  // NAME.safetensors (or .ckpt, .pt) for that prompt's images, and are removed from its text.
  std::vector<LoraWeights> loras;
  // Stable Diffusion: decode in overlapping tiles (the VAE's memory becomes one tile's; seams are
  // blended). Also on by itself for images over 4x the VAE's native size in area.
  bool vae_tiling = false;
  // Upscalers (task kUpscale: init_image is the low-resolution image) and the upscaler stage of
  // a cascade (OpenOptions::upscaler): the noise level the low-resolution image is augmented to
  // before the upscaler sees it (in [0, the model's max_noise_level]; unset: the model's default).
  std::optional<int> noise_level;
  // The upscaler stage of a cascade: its denoising steps (0: 30).
  int upscaler_steps = 0;
};

// Called after every denoising step (and from the generating thread).
struct Progress {
  int step = 0, total = 0;  // steps done and planned, over all images of the request
  double elapsed_seconds = 0;
  // On the steps with a new preview (GenerateRequest::preview_every): the image being drawn
  // (8-bit, the request's size); null on the others. Valid during the callback only.
  const Image* preview = nullptr;
};
using ProgressCallback = std::function<void(const Progress&)>;

// Cancels a generation from any thread; generate() checks it after every step and then throws
// stipple::Error of kind kCancelled. Copies share one flag.
class CancelToken {
 public:
  CancelToken() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void cancel() const { flag_->store(true); }
  void reset() const { flag_->store(false); }
  bool cancelled() const { return flag_->load(); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

struct GeneratedImage {
  Image image;
  uint64_t seed = 0;       // the seed this image was drawn with (A1111's seed + i)
  std::string prompt;      // its prompt, or its class ("207 (goldfish)")
  std::string parameters;  // A1111's `parameters` text, as PNGs carry it
};

struct GenerateResult {
  Task task = Task::kTextToImage;
  std::vector<GeneratedImage> images;
  std::string parameters;  // one text for all images together (what a grid PNG carries)
  // The settings used, after the model's defaults filled the request in.
  int steps = 0;
  double cfg_scale = 0;
  GuidanceInterval guidance_interval;
  std::string sampler;        // "dpm++2m_karras"
  std::string a1111_sampler;  // "DPM++ 2M Karras"
  int width = 0, height = 0;  // of every image
  double strength = 0;        // img2img and inpaint; 0 otherwise
  uint64_t seed = 0;          // of the first image
  // Request fields the model did not use, each said once (e.g. "negative_prompt: class models
  // have no text"). Empty when everything was honoured.
  std::vector<std::string> notes;
};

// What a model is and what it does by default.
struct ModelDescription {
  std::string path;         // as given to open()
  std::string name;         // the folder's or file's name ("sd_tiny"), as PNG parameters name it
  std::string family;       // "SD 1.x", "SD 2.x", "SD 1.x inpainting", "SDXL", "SDXL refiner",
                            // "DiT", "text-to-image DiT", "pixel-space DiT"
  std::string pipeline;     // diffusers' pipeline class it loads as
  std::vector<Task> tasks;  // what generate() can do with it
  int default_steps = 0;
  double default_cfg_scale = 0;
  GuidanceInterval default_guidance_interval;
  std::string default_sampler;
  int default_width = 0, default_height = 0;
  int size_multiple = 0;  // width and height must be multiples of this; 0: only its own size
  int channels = 3;                      // of the images it draws (1: grey)
  std::vector<std::string> class_names;  // class models: the name of each id ("" when none)
  // Class models: the folder name of the smaller model that guides this one (autoguidance,
  // Karras et al. 2024: its prediction stands in for the null class's); empty: none.
  std::string guide_model;
  std::string refiner;                   // SDXL: the refiner's name when one was opened
  std::string upscaler;                  // a cascade's upscaler name (OpenOptions::upscaler)
  std::string device = "cpu";            // where it runs (OpenOptions::device)
  int scale = 1;                         // upscalers: output size / input size
  // OpenOptions::embeddings_dir's files that do not fit this model (another family's), each
  // with the reason.
  std::vector<std::string> skipped_embeddings;
};

struct OpenOptions {
  // Single-file checkpoints carry no tokenizer: a folder with vocab.json and merges.txt (default:
  // tokenizer/ beside the file).
  std::string tokenizer_dir;
  // Single-file checkpoints do not store their objective: "epsilon" (default) or "v_prediction"
  // (SD 2.x 768-v).
  std::string prediction_type = "epsilon";
  // open() refuses a model whose weights, and generate() a request whose estimated working
  // memory, exceed this many MiB, before allocating (0: the memory the system has available at
  // that moment).
  uint64_t memory_limit_mb = 0;
  // SDXL: a refiner (diffusers folder or single file) that finishes text-to-image generations
  // from GenerateRequest::refiner_switch_at on (diffusers' "ensemble of expert denoisers").
  std::string refiner;
  // A cascade (GLIDE, Imagen, CDM): a super-resolution model folder (stipple train-sr) that
  // upscales every image this model draws, with GenerateRequest::upscaler_steps and noise_level.
  std::string upscaler;
  // Where <lora:NAME:WEIGHT> prompt tags find NAME.safetensors ("" = tags are refused).
  std::string lora_dir;
  // Stable Diffusion: textual-inversion embeddings (A1111's .pt/.safetensors, SDXL's clip_l +
  // clip_g, diffusers' learned_embeds), each usable in prompts by its file name.
  std::string embeddings_dir;
  // The precision the layers' weight matrices are held in: "stored" (a half-precision
  // checkpoint's f16/bf16 as it is, widened per layer as it runs: the same images as "f32" in
  // half the memory), "f32", "f16" or "bf16" (f32 checkpoints narrowed on load).
  std::string weight_precision = "stored";
  // Stable Diffusion: hold the text encoders, the UNet and the VAE in memory only during their
  // own stage of a generation, reading each again from the checkpoint when its stage comes
  // (stable-diffusion.cpp's approach); keep no derived caches (the convolutions' reordered
  // weights, freed activation blocks), return freed blocks of 1 MiB or more to the system at once,
  // and run feed-forward layers in chunks of rows (process-wide settings, kept once set). The
  // peak becomes the UNet's weights plus its activations; each generation reads the checkpoint
  // once more (from the page cache) and runs a little slower.
  bool low_memory = false;
  // Where the model runs: "cpu" (default) or "cuda" (a build with -DSTIPPLE_CUDA=ON and a GPU).
  // Noise is drawn on the CPU, so a seed gives the same image on either (up to the kernels'
  // rounding). Stable Diffusion (not with low_memory), DiT and stipple's own DiTs run on a GPU;
  // the upscalers run on the CPU (a cascade's upscaler too).
  std::string device = "cpu";
};

// What Engine::probe learns of a model without loading it.
struct ModelProbe {
  std::string name;    // as ModelDescription::name will be
  std::string family;   // the registry family that claims it
  std::string variant;  // its kind within the family ("SD 1.x", "SDXL", "SDXL refiner"), or ""
  uint64_t weights_bytes = 0;  // its weights' size in memory (every float tensor as f32)
};

class Engine {
 public:
  // Opens a diffusers folder, a training run's checkpoint folder or a single .safetensors file.
  // Throws kNotFound for a missing path or component, kUnsupported for a model no family claims.
  static Engine open(const std::string& path, const OpenOptions& options = {});
  // Which family would open `path` and its name, reading only small files; throws as open()
  // does for a path no family claims.
  static ModelProbe probe(const std::string& path);
  ~Engine();
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;

  const ModelDescription& description() const;

  // Runs `request`; throws stipple::Error (kInvalidArgument naming the field, kCancelled, ...).
  GenerateResult generate(const GenerateRequest& request, const ProgressCallback& progress = {},
                          const CancelToken* cancel = nullptr) const;

  struct Family;  // one registry entry (src/engine/registry.h)
  class Model;    // the loaded pipeline behind the engine

 private:
  explicit Engine(std::unique_ptr<Model> model);
  std::unique_ptr<Model> model_;
};

// The model families the registry knows, in the order it tries them: name and what it opens.
struct FamilyInfo {
  std::string name, opens;
};
std::vector<FamilyInfo> model_families();

// Sampler names generate() accepts (A1111's spellings are accepted too), with one line each.
struct SamplerInfo {
  std::string name, a1111_name, description;
};
std::vector<SamplerInfo> samplers();

// The LoRA files in a folder (what <lora:NAME:WEIGHT> tags can name; A1111's /sdapi/v1/loras),
// sorted by name: .safetensors, .ckpt and .pt, not in subfolders. A file whose header cannot be
// read is listed with `error` set. Throws kNotFound naming a folder that does not exist.
struct LoraFile {
  std::string name;   // the file name without its extension
  std::string alias;  // kohya's ss_output_name from the metadata, else the name
  std::string path;
  std::map<std::string, std::string> metadata;  // a .safetensors file's "__metadata__"
  std::string error;
};
std::vector<LoraFile> list_loras(const std::string& dir);

// PNG in and out. Writing is atomic (a temporary file, then rename) and refuses to replace
// anything but a regular file; `parameters` becomes the tEXt chunk A1111 reads.
std::vector<uint8_t> encode_png(const Image& image, const std::string& parameters = "");
void save_png(const std::string& path, const Image& image, const std::string& parameters = "");
// Reads a PNG (8/16-bit, grey, RGB, RGBA, palette) as 8-bit; `parameters` receives its text.
Image load_png(const std::string& path, std::string* parameters = nullptr);
Image decode_png(const std::vector<uint8_t>& bytes, std::string* parameters = nullptr);
// Tiles images of one size and channel count into a grid with `columns` columns (0: square-ish).
Image make_grid(const std::vector<Image>& images, int columns = 0);

// The machine's memory as /proc/meminfo and /proc/self/statm report it, in bytes (0 when
// unknown): what generate() checks its estimates against, and what a server reports.
struct SystemMemory {
  uint64_t total = 0, available = 0, process_resident = 0;
};
SystemMemory system_memory();

const char* version();  // "0.1.0"

}  // namespace stipple

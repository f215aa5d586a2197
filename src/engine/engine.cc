// stipple::Engine (include/stipple/stipple.h): routing through the registry, checking a request
// against the model's description and filling in its defaults, progress and cancel, and the
// A1111 parameters text of each image.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <new>
#include <optional>
#include <random>

#include <malloc.h>
#include <unistd.h>

#include "core/block_cache.h"
#include "core/error.h"
#include "core/storage.h"
#include "engine/model.h"
#include "engine/registry.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "nn/module.h"
#include "nn/transformer_block.h"
#include "ops/ops.h"
#include "schedulers/scheduler.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;

// --low-memory's cache of freed blocks: an upper bound only, since the cache never holds blocks
// that would push the process past its high-water mark.
constexpr size_t kLowMemoryBlockCacheBytes = size_t{256} << 20;
// ... and the room it leaves under that mark for memory that is not storages (kernels' scratch
// and reorders): without it the peak rose 36 MiB over the uncached one for SD 1.5 at 512x512.
constexpr size_t kLowMemoryPeakHeadroomBytes = size_t{48} << 20;

// The lock every computing Engine call holds (see the header's note on threads).
std::mutex& engine_mutex() {
  static std::mutex m;
  return m;
}

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::string engine::model_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string name = fs::is_regular_file(p) ? p.stem().string() : p.filename().string();
  const bool run_part =
      name == "latest" || name == "export" || name.rfind("checkpoint-", 0) == 0;
  if (run_part && !p.parent_path().filename().empty())
    name = p.parent_path().filename().string() + "/" + name;
  return name;
}

namespace {

using engine::model_name;

// A training run's folder opens as its export, else its latest checkpoint.
std::string resolve_run_folder(const std::string& path) {
  const fs::path dir(path);
  if (!fs::is_directory(dir) || fs::exists(dir / "model_index.json")) return path;
  for (const char* sub : {"export", "latest"})
    if (fs::is_regular_file(dir / sub / "model_index.json")) return (dir / sub).string();
  return path;
}

bool has_task(const ModelDescription& d, Task t) {
  for (Task x : d.tasks)
    if (x == t) return true;
  return false;
}

std::string task_list(const ModelDescription& d) {
  std::string s;
  for (Task t : d.tasks) s += str_cat(s.empty() ? "" : ", ", to_string(t));
  return s;
}

// An 8-bit image as [1, 3, H, W] in [0, 1] (grey repeated, alpha dropped).
Tensor rgb_tensor(const Image& img, const char* field) {
  STIPPLE_CHECK(img.width > 0 && img.height > 0 && img.channels >= 1 && img.channels <= 4 &&
                    img.pixels.size() ==
                        static_cast<size_t>(img.width) * img.height * img.channels,
                field, ": not a valid image (", img.width, "x", img.height, "x", img.channels,
                " with ", img.pixels.size(), " bytes)");
  STIPPLE_CHECK(static_cast<uint64_t>(img.width) * img.height <= io::kMaxPngPixels, field,
                " is ", img.width, "x", img.height, "; at most ", io::kMaxPngPixels / 1000000,
                " megapixels are accepted");
  const Tensor t = io::image_to_tensor(img, 0.0f, 1.0f);
  if (img.channels >= 3) return t.narrow(1, 0, 3).contiguous();
  const Tensor grey = t.narrow(1, 0, 1).contiguous();
  return ops::concat({grey, grey, grey}, 1);
}

// A mask as [1, 1, H, W] in [0, 1]: grey as it is, colour as PIL's convert("L").
Tensor mask_tensor(const Image& img) {
  rgb_tensor(img, "mask");  // the same checks
  std::vector<float> v(static_cast<size_t>(img.width) * img.height);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint8_t* px = &img.pixels[i * img.channels];
    const uint32_t l = img.channels >= 3
                           ? (px[0] * 19595u + px[1] * 38470u + px[2] * 7471u + 0x8000u) >> 16
                           : px[0];
    v[i] = static_cast<float>(l) / 255.0f;
  }
  return Tensor::from_vector(v, {1, 1, img.height, img.width});
}

Task decide_task(const GenerateRequest& r) {
  if (r.mask) return Task::kInpaint;
  if (r.init_image) return Task::kImageToImage;
  if (!r.class_labels.empty()) return Task::kClassToImage;
  return Task::kTextToImage;
}

// The request checked against the model and filled with its defaults.
// The LoRA files a folder offers, in the order a tag's NAME is looked up (list_loras lists them).
constexpr const char* kLoraExtensions[] = {".safetensors", ".ckpt", ".pt"};

// Removes A1111's <lora:NAME> and <lora:NAME:WEIGHT> tags from `prompt`, adding dir/NAME's file
// to `loras`. Names are file names in `dir`, never paths (a server's clients name LoRAs).
void take_lora_tags(std::string& prompt, const std::string& dir,
                    std::vector<models::LoraSpec>* loras) {
  for (size_t at = prompt.find("<lora:"); at != std::string::npos; at = prompt.find("<lora:", at)) {
    const size_t close = prompt.find('>', at);
    STIPPLE_CHECK(close != std::string::npos, "the prompt's <lora: tag at character ", at,
                  " has no closing '>'");
    const std::string body = prompt.substr(at + 6, close - at - 6);
    models::LoraSpec spec = models::parse_lora_spec(body);
    const std::string name = spec.path;
    STIPPLE_CHECK(!name.empty() && name.find('/') == std::string::npos &&
                      name.find('\\') == std::string::npos && name[0] != '.',
                  "<lora:", body, ">: a LoRA is named by its file name in the LoRA folder");
    STIPPLE_CHECK(std::isfinite(spec.weight) && std::abs(spec.weight) <= 100, "<lora:", body,
                  ">: the weight must be in [-100, 100]");
    STIPPLE_CHECK_KIND(!dir.empty(), kInvalidArgument, "<lora:", body,
                       "> needs a LoRA folder (OpenOptions::lora_dir, --lora-dir)");
    spec.path.clear();
    for (const char* ext : kLoraExtensions) {
      const fs::path f = fs::path(dir) / (name + ext);
      if (fs::is_regular_file(f)) {
        spec.path = f.string();
        break;
      }
    }
    STIPPLE_CHECK_KIND(!spec.path.empty(), kNotFound, "<lora:", body, ">: no ", name,
                       ".safetensors (or .ckpt, .pt) in ", dir);
    loras->push_back(spec);
    prompt.erase(at, close - at + 1);
  }
}

Job resolve(const GenerateRequest& r, const ModelDescription& d, const std::string& lora_dir,
            std::vector<std::string>& notes) {
  Job job;
  // An upscaler's only task is upscaling the init image; other models decide by the request.
  job.task = has_task(d, Task::kUpscale) ? Task::kUpscale : decide_task(r);
  const std::string who = str_cat(d.name, " (", d.family, ")");
  const bool class_model = has_task(d, Task::kClassToImage);
  if (!has_task(d, job.task)) {
    STIPPLE_CHECK(!(class_model && job.task == Task::kTextToImage), who,
                  " is a class-to-image model: give class labels (a class name or id), not a "
                  "prompt");
    STIPPLE_CHECK(!(!class_model && job.task == Task::kClassToImage), who,
                  " is a text-to-image model: give a prompt, not class labels");
    throw Error(str_cat(who, " cannot do ", to_string(job.task), "; it does ", task_list(d)),
                ErrorKind::kUnsupported);
  }
  STIPPLE_CHECK(!r.mask || r.init_image, "a mask needs an init_image to repaint");
  if (job.task == Task::kUpscale) {
    STIPPLE_CHECK(r.init_image.has_value(), who,
                  " is an upscaler: give init_image, the low-resolution image to upscale");
    STIPPLE_CHECK(!r.mask, who, " is an upscaler; it does not inpaint (leave out the mask)");
    STIPPLE_CHECK(r.class_labels.empty(), who, " is an upscaler; it takes no class labels");
    if (!r.prompt.empty() && d.pipeline != "StableDiffusionUpscalePipeline")
      notes.push_back("prompt: this upscaler has no text conditioning; it was not used");
  }
  STIPPLE_CHECK(!r.noise_level || (*r.noise_level >= 0 && *r.noise_level <= 999),
                "noise_level must be in [0, 999] (and at most the upscaler's max_noise_level), got ",
                r.noise_level.value_or(0));
  job.noise_level = r.noise_level.value_or(-1);
  STIPPLE_CHECK(r.upscaler_steps >= 0 && r.upscaler_steps <= 1000,
                "upscaler_steps must be in [0, 1000] (0: 30), got ", r.upscaler_steps);
  job.upscaler_steps = r.upscaler_steps > 0 ? r.upscaler_steps : 30;
  if (job.task != Task::kUpscale && d.upscaler.empty()) {
    if (r.noise_level)
      notes.push_back("noise_level: it applies to upscalers; it was not used");
    if (r.upscaler_steps > 0)
      notes.push_back("upscaler_steps: no upscaler was opened with this model; it was not used");
  }
  STIPPLE_CHECK(r.batch_size >= 1 && r.batch_size <= 256, "batch_size must be in [1, 256], got ",
                r.batch_size);
  STIPPLE_CHECK(r.prompts.size() <= 4096, "at most 4096 prompts per request, got ",
                r.prompts.size());
  STIPPLE_CHECK(r.class_labels.size() <= 4096, "at most 4096 class labels per request, got ",
                r.class_labels.size());
  // Prompts longer than any text encoder reads (77 tokens, or 32 chunks of 75 with
  // prompt_syntax kA1111) only cost time to parse.
  constexpr size_t kMaxPromptBytes = 65536;
  auto check_length = [&](const std::string& p, const char* what) {
    STIPPLE_CHECK(p.size() <= kMaxPromptBytes, "the ", what, " is ", p.size(),
                  " bytes long; at most ", kMaxPromptBytes, " are accepted");
  };
  check_length(r.prompt, "prompt");
  check_length(r.negative_prompt, "negative prompt");
  for (const std::string& p : r.prompts) check_length(p, "prompt");
  if (job.task == Task::kClassToImage) {
    for (int i = 0; i < r.batch_size; ++i)
      job.class_labels.insert(job.class_labels.end(), r.class_labels.begin(),
                              r.class_labels.end());
    if (!r.prompt.empty() || !r.prompts.empty())
      notes.push_back("prompt: a class-to-image model draws class_labels; the prompt was not used");
    if (!r.negative_prompt.empty())
      notes.push_back("negative_prompt: a class-to-image model has no text; it was not used");
  } else {
    const std::vector<std::string> prompts =
        r.prompts.empty() ? std::vector<std::string>{r.prompt} : r.prompts;
    for (int i = 0; i < r.batch_size; ++i)
      job.prompts.insert(job.prompts.end(), prompts.begin(), prompts.end());
    job.negative_prompt = r.negative_prompt;
  }
  // LoRAs: the request's for every prompt, then each prompt's <lora:NAME:WEIGHT> tags.
  std::vector<models::LoraSpec> request_loras;
  for (const LoraWeights& l : r.loras) {
    STIPPLE_CHECK_KIND(fs::is_regular_file(l.path), kNotFound, "no such LoRA file: ", l.path);
    STIPPLE_CHECK(std::isfinite(l.weight) && std::abs(l.weight) <= 100,
                  "a LoRA weight must be in [-100, 100], got ", format_number(l.weight));
    request_loras.push_back({l.path, l.weight});
  }
  for (const std::string& p : job.prompts) {
    std::string text = p;
    std::vector<models::LoraSpec> loras = request_loras;
    if (r.prompt_syntax != PromptSyntax::kPlain) take_lora_tags(text, lora_dir, &loras);
    job.encoder_prompts.push_back(text);
    job.loras.push_back(std::move(loras));
  }
  job.request_loras = request_loras;
  job.vae_tiling = r.vae_tiling;
  const bool any_lora = std::any_of(job.loras.begin(), job.loras.end(),
                                    [](const auto& l) { return !l.empty(); });
  STIPPLE_CHECK_KIND(!any_lora || d.family.rfind("SD", 0) == 0, kUnsupported,
                     "LoRAs are merged into Stable Diffusion models; ", who, " is a ", d.family,
                     " model");
  const size_t count = job.prompts.size() + job.class_labels.size();
  STIPPLE_CHECK(count <= 4096, "a request draws at most 4096 images; this one asks for ", count,
                " (prompts or class labels x batch_size)");

  job.steps = r.steps == 0 ? d.default_steps : r.steps;
  STIPPLE_CHECK(job.steps >= 1 && job.steps <= 10000, "steps must be in [1, 10000], got ",
                r.steps);
  job.cfg_scale = r.cfg_scale.value_or(d.default_cfg_scale);
  STIPPLE_CHECK(std::isfinite(job.cfg_scale) && job.cfg_scale >= 0 && job.cfg_scale <= 100,
                "cfg_scale must be in [0, 100] (<= 1 turns guidance off), got ",
                format_number(job.cfg_scale));
  const GuidanceInterval interval = r.guidance_interval.value_or(d.default_guidance_interval);
  job.guidance_interval = {static_cast<float>(interval.low), static_cast<float>(interval.high)};
  pipelines::check_guidance_interval(job.guidance_interval);
  job.autoguidance = r.autoguidance;
  const std::string sampler = r.sampler.empty() ? d.default_sampler : r.sampler;
  const schedulers::SamplerName* s = schedulers::find_sampler(sampler);
  STIPPLE_CHECK(s != nullptr, "unknown sampler \"", sampler, "\"; known: ",
                schedulers::sampler_list(), " (A1111's names, e.g. \"DPM++ 2M Karras\", work too)");
  job.sampler = s->name;
  job.a1111_sampler = s->a1111;

  STIPPLE_CHECK(r.seed >= -1, "seed must be -1 (random) or a non-negative integer, got ", r.seed);
  job.seed = r.seed >= 0 ? static_cast<uint64_t>(r.seed) : std::random_device{}();

  STIPPLE_CHECK(r.width >= 0 && r.height >= 0 && r.width <= 4096 && r.height <= 4096,
                "width and height must be in [0, 4096] (0: the model's), got ", r.width, "x",
                r.height);
  if (d.size_multiple == 0) {
    STIPPLE_CHECK((r.width == 0 || r.width == d.default_width) &&
                      (r.height == 0 || r.height == d.default_height),
                  who, " draws only ", d.default_width, "x", d.default_height,
                  " images; leave width and height at 0");
  } else {
    STIPPLE_CHECK(r.width % d.size_multiple == 0 && r.height % d.size_multiple == 0,
                  "width and height must be multiples of ", d.size_multiple, " for ", who,
                  ", got ", r.width, "x", r.height);
    job.width = r.width;
    job.height = r.height;
  }
  STIPPLE_CHECK(r.preview_every >= 0, "preview_every must be 0 (none) or a step count, got ",
                r.preview_every);
  STIPPLE_CHECK(r.clip_skip >= 1 && r.clip_skip <= 24, "clip_skip must be in [1, 24], got ",
                r.clip_skip);
  job.clip_skip = r.clip_skip;
  job.prompt_syntax = r.prompt_syntax;
  if (r.clip_skip != 1 && d.family.rfind("SD", 0) != 0)
    notes.push_back("clip_skip: only Stable Diffusion models use it; it was not used");
  if (r.prompt_syntax != PromptSyntax::kPlain && d.family.rfind("SD", 0) != 0 &&
      job.task != Task::kClassToImage)
    notes.push_back("prompt_syntax: only Stable Diffusion models read A1111's prompt syntax; "
                    "the prompt was read as plain text");

  const double default_strength = job.task == Task::kInpaint ? 1.0 : 0.75;
  job.strength = r.strength.value_or(default_strength);
  STIPPLE_CHECK(std::isfinite(job.strength) && job.strength >= 0 && job.strength <= 1,
                "strength must be in [0, 1], got ", format_number(job.strength));
  if (r.strength && job.task == Task::kTextToImage)
    notes.push_back("strength: it applies to init images; it was not used");
  if (r.refiner_switch_at) {
    STIPPLE_CHECK(std::isfinite(*r.refiner_switch_at) && *r.refiner_switch_at > 0 &&
                      *r.refiner_switch_at < 1,
                  "refiner_switch_at must be between 0 and 1 (the fraction of the steps the base ",
                  "model runs), got ", format_number(*r.refiner_switch_at));
    job.refiner_switch_at = *r.refiner_switch_at;
    if (d.refiner.empty())
      notes.push_back("refiner_switch_at: no refiner was opened with this model; it was not used");
    else if (job.task != Task::kTextToImage)
      notes.push_back("refiner_switch_at: the refiner finishes text-to-image only; it was not used");
  }
  if (r.classifier_scale != 0 || !r.classifier.empty()) {
    STIPPLE_CHECK(std::isfinite(r.classifier_scale) && std::abs(r.classifier_scale) <= 1000,
                  "classifier_scale must be in [-1000, 1000], got ",
                  format_number(r.classifier_scale));
    STIPPLE_CHECK(d.family == "pixel-space DiT", "classifier guidance steers stipple's own "
                  "class-to-image models (pixel-space DiTs); ", d.name, " is a ", d.family,
                  " model");
    STIPPLE_CHECK(!r.classifier.empty(), "classifier_scale needs a classifier (a noisy-image "
                  "classifier folder, stipple train-classifier --noisy)");
    auto classifier = models::FashionClassifier::from_pretrained(r.classifier);
    STIPPLE_CHECK(classifier->noisy(), "classifier guidance needs a noisy-image classifier "
                  "(stipple train-classifier --noisy); ", r.classifier,
                  " was trained on clean images");
    job.classifier = std::move(classifier);
    job.classifier_dir = r.classifier;
    job.classifier_scale = r.classifier_scale;
    if (r.classifier_scale == 0)
      notes.push_back("classifier: the classifier_scale is 0; it was not used");
  }
  if (r.init_image) job.init_image = rgb_tensor(*r.init_image, "init_image");
  if (r.mask) {
    job.mask = mask_tensor(*r.mask);
    STIPPLE_CHECK(r.mask->width == r.init_image->width && r.mask->height == r.init_image->height,
                  "the mask is ", r.mask->width, "x", r.mask->height, " but the init image is ",
                  r.init_image->width, "x", r.init_image->height, "; they must be the same size");
  }
  return job;
}

// Refuses a job whose working memory would not fit, before anything is allocated.
void check_memory(const Engine::Model& model, const Job& job) {
  const uint64_t need = model.estimate_bytes(job);
  if (need == 0) return;
  const bool set = model.memory_limit_mb > 0;
  const uint64_t limit = set ? model.memory_limit_mb << 20 : system_memory().available;
  if (limit == 0 || need <= limit) return;
  const auto [w, h] = drawn_size(job, model.description);
  throw Error(str_cat("generating ", w, "x", h, " with ",
                      model.description.name, " needs about ", (need >> 20) + 1, " MiB, more than ",
                      set ? "the memory limit of " : "the ", limit >> 20,
                      set ? " MiB" : " MiB the system has available",
                      "; ask for a smaller image",
                      set ? " or raise the limit" : " or free memory"),
              ErrorKind::kResourceExhausted);
}

// A1111's parameters text: the prompt, the negative prompt, then "Steps: ..., Seed: ...".
std::string parameters_text(const Job& job, const ModelDescription& d, const std::string& what,
                            uint64_t seed, int64_t width, int64_t height) {
  std::string t = job.task == Task::kClassToImage ? "class " + what : what;
  if (!job.negative_prompt.empty()) t += "\nNegative prompt: " + job.negative_prompt;
  t += str_cat("\nSteps: ", job.steps, ", Sampler: ", job.a1111_sampler,
               ", CFG scale: ", format_number(job.cfg_scale), ", Seed: ", seed, ", Size: ", width,
               "x", height, ", Model: ", d.name);
  if (job.task == Task::kImageToImage || job.task == Task::kInpaint)
    t += ", Denoising strength: " + format_number(job.strength);
  if (job.clip_skip > 1) t += str_cat(", Clip skip: ", job.clip_skip);
  if (job.cfg_scale > 1 && job.guidance_interval.limited())
    t += str_cat(", Guidance interval: ", format_number(job.guidance_interval.lo), " to ",
                 format_number(job.guidance_interval.hi));
  // The request's LoRAs (a prompt's own <lora:...> tags are in its text already).
  if (!job.request_loras.empty()) {
    t += ", Lora: ";
    for (size_t k = 0; k < job.request_loras.size(); ++k)
      t += str_cat(k ? " " : "", fs::path(job.request_loras[k].path).stem().string(), ":",
                   format_number(job.request_loras[k].weight));
  }
  if (!d.refiner.empty() && job.task == Task::kTextToImage)
    t += str_cat(", Refiner: ", d.refiner, ", Refiner switch at: ",
                 format_number(job.refiner_switch_at));
  if (job.cfg_scale > 1 && job.autoguidance && !d.guide_model.empty())
    t += ", Guide model: " + d.guide_model;
  if (job.classifier_scale != 0)
    t += str_cat(", Classifier: ", fs::path(job.classifier_dir).filename().string(),
                 ", Classifier scale: ", format_number(job.classifier_scale));
  if (job.task == Task::kUpscale && job.noise_level >= 0)
    t += str_cat(", Noise level: ", job.noise_level);
  if (!d.upscaler.empty() && job.task != Task::kUpscale) {
    t += str_cat(", Upscaler: ", d.upscaler, ", Upscaler steps: ", job.upscaler_steps);
    if (job.noise_level >= 0) t += str_cat(", Noise level: ", job.noise_level);
  }
  return t;
}

}  // namespace

const char* to_string(Task task) {
  switch (task) {
    case Task::kTextToImage: return "txt2img";
    case Task::kImageToImage: return "img2img";
    case Task::kInpaint: return "inpaint";
    case Task::kClassToImage: return "class2img";
    case Task::kUpscale: return "upscale";
  }
  return "?";
}

Engine::Engine(std::unique_ptr<Model> model) : model_(std::move(model)) {}
Engine::~Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

namespace {

// The family that claims `given` (a training run folder resolved to its export or latest), or an
// error naming what the registry opens.
std::pair<const Engine::Family*, std::string> find_family(const std::string& given) {
  STIPPLE_CHECK(!given.empty(), "no model path given");
  STIPPLE_CHECK_KIND(fs::exists(given), kNotFound, "no such model folder or file: ", given);
  const std::string path = resolve_run_folder(given);
  for (const Engine::Family& family : engine::registry())
    if (family.detect(path)) return {&family, path};
  std::string known;
  for (const Engine::Family& f : engine::registry()) known += str_cat("\n  ", f.name, ": ", f.opens);
  const bool component = fs::is_directory(path) && !fs::exists(fs::path(path) / "model_index.json");
  throw Error(str_cat(given, " is not a model stipple can open",
                      component ? " (the folder has no model_index.json: give the pipeline "
                                  "folder, not one of its components)"
                                : "",
                      "; it opens:", known),
              ErrorKind::kUnsupported);
}

// The weights of the model at `path` (already resolved) as stipple holds them, from the
// safetensors headers alone: matrices and kernels (2 or more dims) at `precision`, every other
// floating-point tensor in f32.
uint64_t weights_bytes(const std::string& path,
                       nn::WeightPrecision precision = nn::WeightPrecision::kF32) {
  uint64_t bytes = 0;
  auto add = [&bytes, precision](const fs::path& file) {
    const io::SafetensorsFile f = io::open_weights_file(file.string());
    for (const auto& [name, e] : f.entries()) {
      if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16" && e.dtype != "F64") continue;
      const bool half =
          e.shape.size() >= 2 &&
          (precision == nn::WeightPrecision::kF16 || precision == nn::WeightPrecision::kBF16 ||
           (precision == nn::WeightPrecision::kStored && (e.dtype == "F16" || e.dtype == "BF16")));
      bytes += static_cast<uint64_t>(shape_numel(e.shape)) * (half ? 2 : 4);
    }
  };
  std::error_code ec;
  if (fs::is_regular_file(path)) {
    add(path);
  } else {
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_regular_file(ec) && it->path().extension() == ".safetensors") add(it->path());
  }
  return bytes;
}

}  // namespace

Engine Engine::open(const std::string& given, const OpenOptions& options) {
  const auto [family, path] = find_family(given);
  // The device first: a build without CUDA or a machine without a GPU is said before loading.
  const Device device = parse_device(options.device);
  // The weights' memory, from the safetensors headers, before anything is allocated.
  if (!options.refiner.empty()) {
    STIPPLE_CHECK_KIND(fs::exists(options.refiner), kNotFound, "no such refiner model: ",
                       options.refiner);
  }
  nn::WeightPrecision precision;
  try {
    precision = nn::parse_weight_precision(options.weight_precision);
  } catch (const Error& e) {
    throw Error(e.what(), ErrorKind::kInvalidArgument);
  }
  const uint64_t need = weights_bytes(path, precision) +
                        (options.refiner.empty() ? 0 : weights_bytes(options.refiner, precision));
  const bool set = options.memory_limit_mb > 0;
  const uint64_t limit = set ? options.memory_limit_mb << 20 : system_memory().available;
  if (limit > 0 && need > limit)
    throw Error(str_cat("loading ", given, " needs about ", (need >> 20) + 1,
                        " MiB for its weights, more than ",
                        set ? "the memory limit of " : "the ", limit >> 20,
                        set ? " MiB; raise the limit" : " MiB the system has available; free memory"),
                ErrorKind::kResourceExhausted);
  std::lock_guard<std::mutex> lock(engine_mutex());
  std::unique_ptr<Model> model;
  if (options.low_memory) {
    // No cache of reordered convolution weights (rebuilt per call), freed activation blocks kept
    // only under the process's high-water mark (core/storage.cc: the cache never raises the
    // peak), other allocations of 1 MiB or more (kernels' own buffers; storages that large are
    // mapped by core/storage.cc in every mode) straight from and back to the system (glibc's
    // heap keeps freed memory resident and fragments it: 2.3 GB instead of 2.0 GB at SD 1.5's
    // peak, when storages still came from it), and feed-forward layers in chunks of 1024 rows (with the denoiser's activations laid
    // out once per generation, core/memory_plan.h, SD 1.5's step peaked at its 32x32 level's
    // 2048-row GEGLU projection: 1905-1909 MiB with 2048-row chunks, 1892 with 1024). The
    // pipeline also trims the heap between stages (StableDiffusion::need).
    // STIPPLE_CONV_WEIGHT_CACHE_MB and STIPPLE_BLOCK_CACHE_MB, when set, still rule
    // (docs/benchmarks.md).
    if (std::getenv("STIPPLE_CONV_WEIGHT_CACHE_MB") == nullptr) {
      ops::set_conv_weight_cache_budget(0);
    }
    if (std::getenv("STIPPLE_BLOCK_CACHE_MB") == nullptr) {
      Storage::set_cache_budget(kLowMemoryBlockCacheBytes);
      set_block_cache_peak_bound(true, kLowMemoryPeakHeadroomBytes);
    }
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    nn::set_feed_forward_chunk_rows(1024);
  }
  try {
    nn::LoadScope scope(precision);
    model = family->open(path, options);
  } catch (const std::bad_alloc&) {
    throw Error(str_cat("not enough memory to load ", given, " (", family->name, ")"),
                ErrorKind::kResourceExhausted);
  }
  STIPPLE_CHECK_KIND(options.refiner.empty() || !model->description.refiner.empty(),
                     kInvalidArgument, "a refiner finishes SDXL generations, but ", given,
                     " is a ", model->description.family, " model");
  if (!options.upscaler.empty()) {
    STIPPLE_CHECK_KIND(fs::exists(options.upscaler), kNotFound, "no such upscaler model: ",
                       options.upscaler);
    STIPPLE_CHECK_KIND(!has_task(model->description, Task::kUpscale), kInvalidArgument, given,
                       " is an upscaler itself; a cascade's upscaler follows a generator");
    try {
      model->upscaler = std::make_shared<const pipelines::SuperResolutionPipeline>(
          pipelines::SuperResolutionPipeline::from_pretrained(options.upscaler));
    } catch (const Error& e) {
      throw Error(str_cat("the upscaler ", options.upscaler, ": ", e.what()),
                  ErrorKind::kInvalidArgument);
    }
    model->description.upscaler = model_name(options.upscaler);
    model->description.scale = static_cast<int>(model->upscaler->scale());
  }
  if (device != Device::kCPU) model->to(device);
  model->description.device = device_name(device);
  model->memory_limit_mb = options.memory_limit_mb;
  model->lora_dir = options.lora_dir;
  model->description.path = given;
  model->description.name = model_name(path);
  return Engine(std::move(model));
}

ModelProbe Engine::probe(const std::string& given) {
  const auto [family, path] = find_family(given);
  ModelProbe p;
  p.name = model_name(path);
  p.family = family->name;
  if (family->variant) p.variant = family->variant(path);
  p.weights_bytes = weights_bytes(path);
  return p;
}

const ModelDescription& Engine::description() const { return model_->description; }

GenerateResult Engine::generate(const GenerateRequest& request, const ProgressCallback& progress,
                                const CancelToken* cancel) const {
  const ModelDescription& d = model_->description;
  GenerateResult result;
  Job job = resolve(request, d, model_->lora_dir, result.notes);
  result.task = job.task;
  const auto start = std::chrono::steady_clock::now();
  std::optional<Image> preview;  // drawn since the last step callback
  if (request.preview_every > 0 && progress) {
    job.preview.every = request.preview_every;
    job.preview.show = [&preview](const Tensor& image) {
      preview = io::tensor_to_image(image.contiguous(), 0.0f, 1.0f);
    };
  }
  job.step = [&](int done, int total) {
    if (progress) {
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress(Progress{done, total, s, preview ? &*preview : nullptr});
      preview.reset();
    }
    if (cancel != nullptr && cancel->cancelled())
      throw Error(str_cat("generation cancelled after step ", done, " of ", total),
                  ErrorKind::kCancelled);
  };
  STIPPLE_CHECK_KIND(cancel == nullptr || !cancel->cancelled(), kCancelled,
                     "generation cancelled before it started");
  check_memory(*model_, job);
  std::lock_guard<std::mutex> lock(engine_mutex());
  Model::Output out;
  try {
    out = model_->run(job);
  } catch (const std::bad_alloc&) {
    throw Error(str_cat("not enough memory to generate ", job.prompts.size() +
                        job.class_labels.size(), " image(s) with ", d.name),
                ErrorKind::kResourceExhausted);
  }
  if (model_->upscaler && job.task != Task::kUpscale) {
    // A cascade: each image through the upscaler with its own seed; progress restarts for the
    // upscaler's steps.
    const pipelines::SuperResolutionPipeline& sr = *model_->upscaler;
    const int64_t count = out.images.size(0);
    std::vector<Tensor> big;
    for (int64_t i = 0; i < count; ++i) {
      pipelines::UpscaleParams p;
      p.steps = job.upscaler_steps;
      p.noise_level = job.noise_level;
      p.seed = out.seeds[static_cast<size_t>(i)];
      p.progress = [&job, i, count](int done, int total) {
        job.step(static_cast<int>(i * total + done), static_cast<int>(count * total));
      };
      const Tensor up = sr.run(out.images.narrow(0, i, 1), p);  // [1, C', sH, sW]
      big.push_back(pipelines::to_channels(up, out.images.size(1)));
    }
    out.images = big.size() == 1 ? big[0] : ops::concat(big, 0);
  }
  const int64_t n = out.images.size(0), h = out.images.size(2), w = out.images.size(3);
  STIPPLE_ASSERT(static_cast<size_t>(n) == out.what.size() &&
                 out.what.size() == out.seeds.size());
  for (int64_t i = 0; i < n; ++i) {
    GeneratedImage g;
    g.image = io::tensor_to_image(out.images.narrow(0, i, 1).contiguous(), 0.0f, 1.0f);
    g.seed = out.seeds[i];
    g.prompt = out.what[i];
    g.parameters = parameters_text(job, d, out.what[i], g.seed, w, h);
    result.images.push_back(std::move(g));
  }
  // One text for all the images together (a grid): each distinct prompt or class once.
  std::vector<std::string> distinct;
  for (const std::string& what : out.what)
    if (std::find(distinct.begin(), distinct.end(), what) == distinct.end())
      distinct.push_back(what);
  std::string joined;
  for (const std::string& what : distinct)
    joined += str_cat(joined.empty() ? "" : (job.task == Task::kClassToImage ? ", " : " | "), what);
  result.parameters = parameters_text(job, d, joined, job.seed, w, h);
  result.steps = job.steps;
  result.cfg_scale = job.cfg_scale;
  result.guidance_interval = {job.guidance_interval.lo, job.guidance_interval.hi};
  result.sampler = job.sampler;
  result.a1111_sampler = job.a1111_sampler;
  result.width = static_cast<int>(w);
  result.height = static_cast<int>(h);
  result.strength =
      job.task == Task::kImageToImage || job.task == Task::kInpaint ? job.strength : 0.0;
  result.seed = job.seed;
  return result;
}

std::vector<FamilyInfo> model_families() {
  std::vector<FamilyInfo> out;
  for (const Engine::Family& f : engine::registry()) out.push_back({f.name, f.opens});
  return out;
}

std::vector<SamplerInfo> samplers() {
  std::vector<SamplerInfo> out;
  for (const schedulers::SamplerName& s : schedulers::sampler_names())
    out.push_back({s.name, s.a1111, s.description});
  return out;
}

std::vector<uint8_t> encode_png(const Image& image, const std::string& parameters) {
  const std::string bytes =
      io::encode_png(image, parameters.empty() ? std::map<std::string, std::string>{}
                                               : std::map<std::string, std::string>{
                                                     {"parameters", parameters}});
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

void save_png(const std::string& path, const Image& image, const std::string& parameters) {
  io::write_png(path, image,
                parameters.empty() ? std::map<std::string, std::string>{}
                                   : std::map<std::string, std::string>{{"parameters", parameters}});
}

Image load_png(const std::string& path, std::string* parameters) {
  std::map<std::string, std::string> text;
  Image img = io::read_png(path, &text);
  if (parameters) *parameters = text.count("parameters") ? text["parameters"] : "";
  return img;
}

Image decode_png(const std::vector<uint8_t>& bytes, std::string* parameters) {
  std::map<std::string, std::string> text;
  Image img = io::decode_png(std::string(bytes.begin(), bytes.end()), "PNG data", &text);
  if (parameters) *parameters = text.count("parameters") ? text["parameters"] : "";
  return img;
}

Image make_grid(const std::vector<Image>& images, int columns) {
  STIPPLE_CHECK(!images.empty(), "make_grid: no images");
  for (const Image& img : images)
    STIPPLE_CHECK(img.width == images[0].width && img.height == images[0].height &&
                      img.channels == images[0].channels,
                  "make_grid: images differ in size (", img.width, "x", img.height, "x",
                  img.channels, " vs ", images[0].width, "x", images[0].height, "x",
                  images[0].channels, ")");
  std::vector<Tensor> t;
  for (const Image& img : images) t.push_back(io::image_to_tensor(img, 0.0f, 1.0f));
  const int n = static_cast<int>(images.size());
  const int cols =
      columns > 0 ? columns : static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  return io::tensor_to_image(io::make_grid(ops::concat(t, 0), cols, 0), 0.0f, 1.0f);
}

SystemMemory system_memory() {
  SystemMemory m;
  if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::sscanf(line, "MemTotal: %llu kB", &kb) == 1) m.total = kb * 1024;
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) m.available = kb * 1024;
    }
    std::fclose(f);
  }
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    unsigned long long pages = 0, resident = 0;
    if (std::fscanf(f, "%llu %llu", &pages, &resident) == 2)
      m.process_resident = resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    std::fclose(f);
  }
  return m;
}

std::vector<LoraFile> list_loras(const std::string& dir) {
  STIPPLE_CHECK_KIND(fs::is_directory(dir), kNotFound, "no such LoRA folder: ", dir);
  std::vector<LoraFile> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string ext = e.path().extension().string();
    if (!e.is_regular_file(ec) ||
        std::find(std::begin(kLoraExtensions), std::end(kLoraExtensions), ext) ==
            std::end(kLoraExtensions))
      continue;
    LoraFile f;
    f.name = e.path().stem().string();
    f.path = e.path().string();
    if (ext == ".safetensors") {
      try {
        f.metadata = io::SafetensorsFile::open(f.path).metadata();
      } catch (const std::exception& err) {
        f.error = err.what();
      }
    }
    const auto alias = f.metadata.find("ss_output_name");
    f.alias = alias != f.metadata.end() && !alias->second.empty() ? alias->second : f.name;
    out.push_back(std::move(f));
  }
  std::sort(out.begin(), out.end(), [](const LoraFile& a, const LoraFile& b) {
    return a.name != b.name ? a.name < b.name : a.path < b.path;
  });
  return out;
}

const char* version() { return "0.1.0"; }

}  // namespace stipple

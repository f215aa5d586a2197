// The model families behind stipple::Engine: each is a detect() that reads only small files, an
// open() that loads the pipeline, and a Model whose run() turns a checked Job into images. The
// registry (registry.cc) lists them in the order they are tried.
#include "engine/registry.h"

#include <cmath>
#include <filesystem>
#include <optional>

#include "core/error.h"
#include "io/json.h"
#include "models/dit.h"
#include "ops/ops.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/model_info.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/text_dit_pipeline.h"
#include "pipelines/upscale.h"
#include "schedulers/scheduler.h"
#include "train/datasets.h"
#include "train/evaluate.h"

namespace stipple::engine {
namespace {

namespace fs = std::filesystem;

// model_index.json of a folder, or nullopt when there is none.
std::optional<nlohmann::json> model_index(const std::string& path) {
  const fs::path index = fs::path(path) / "model_index.json";
  if (!fs::is_regular_file(index)) return std::nullopt;
  nlohmann::json j = io::read_json_file(index.string());
  if (!j.is_object()) return std::nullopt;
  return j;
}

std::string class_name_of(const std::string& path) {
  const auto j = model_index(path);
  if (!j || !j->contains("_class_name") || !(*j)["_class_name"].is_string()) return "";
  return (*j)["_class_name"].get<std::string>();
}

// Whether model_index.json lists the component as [null, null] (diffusers' "none").
bool listed_as_none(const nlohmann::json& index, const char* component) {
  const auto it = index.find(component);
  return it != index.end() && it->is_array() && it->size() == 2 && (*it)[0].is_null();
}

// Each of `n` images run alone with seed + i (A1111's convention: an image is the same whether
// drawn alone or in a batch); `one(i, progress)` draws image i. Progress counts over all images.
template <typename One>
Tensor each_image(const Job& job, int64_t n, One one) {
  std::vector<Tensor> images;
  for (int64_t i = 0; i < n; ++i) {
    images.push_back(one(i, [&job, i, n](int done, int total) {
      if (job.step) job.step(static_cast<int>(i * total + done), static_cast<int>(n * total));
    }));
  }
  return images.size() == 1 ? images[0] : ops::concat(images, 0);
}

// ---------------- Stable Diffusion 1.x / 2.x / XL ----------------

class StableDiffusionModel : public Engine::Model {
 public:
  explicit StableDiffusionModel(pipelines::StableDiffusion sd) : sd_(std::move(sd)) {}
  const pipelines::StableDiffusion& pipeline() const { return sd_; }
  void to(Device device) override {
    sd_.to(device);
    if (refiner_) refiner_->to(device);
  }
  void set_refiner(pipelines::StableDiffusion refiner) {
    refiner_ = std::make_unique<pipelines::StableDiffusion>(std::move(refiner));
  }

  Output run(const Job& job) const override {
    Output out;
    const int64_t n = static_cast<int64_t>(job.prompts.size());
    out.images = each_image(job, n, [&](int64_t i, const std::function<void(int, int)>& step) {
      // The image's LoRAs (merged once for a run of images that share them).
      sd_.set_loras(job.loras.empty() ? std::vector<models::LoraSpec>{} : job.loras[i]);
      pipelines::GenerationParams p;
      p.prompt = job.encoder_prompts.empty() ? job.prompts[i] : job.encoder_prompts[i];
      p.negative_prompt = job.negative_prompt;
      p.steps = job.steps;
      p.cfg = static_cast<float>(job.cfg_scale);
      p.guidance_interval = job.guidance_interval;
      p.sampler = job.sampler;
      p.seed = job.seed + i;
      p.width = job.width;
      p.height = job.height;
      p.clip_skip = job.clip_skip;
      p.prompt_syntax = job.prompt_syntax;
      p.vae_tiling = job.vae_tiling;
      p.progress = step;
      p.preview = job.preview;
      if (job.task == Task::kTextToImage && refiner_) return refined(p, job, step);
      if (job.task == Task::kTextToImage) return sd_.run_txt2img(p);
      p.init_image = job.init_image;
      p.strength = job.strength;
      if (job.task == Task::kImageToImage) return sd_.run_img2img(p);
      p.mask = job.mask;
      return sd_.run_inpaint(p);
    });
    for (int64_t i = 0; i < n; ++i) {
      out.what.push_back(job.prompts[i]);
      out.seeds.push_back(job.seed + i);
    }
    // Low memory: nothing stays resident between generations.
    sd_.release_all();
    if (refiner_) refiner_->release_all();
    return out;
  }

  // SDXL base then refiner: the base stops at refiner_switch_at and hands its latents over.
  // Progress runs over job.steps in all: the base's part, then the refiner's.
  Tensor refined(pipelines::GenerationParams p, const Job& job,
                 const std::function<void(int, int)>& step) const {
    const double f = job.refiner_switch_at;
    const int steps = job.steps;
    p.denoising_end = f;
    p.progress = [&](int done, int total) {
      if (step) step(static_cast<int>(std::lround(f * steps * done / total)), steps);
    };
    const Tensor latents = sd_.run_latents(p);
    pipelines::GenerationParams q = p;
    q.denoising_end = 1.0;
    q.denoising_start = f;
    q.width = q.height = 0;
    q.progress = [&](int done, int total) {
      if (step)
        step(static_cast<int>(std::lround(f * steps + (1 - f) * steps * done / total)), steps);
    };
    return refiner_->run_refine(q, latents);
  }

  // Images are drawn one at a time; the peak is the VAE at full resolution (about 8 live tensors
  // of its first block's width) or the UNet on latents (about 12 of its first width, twice the
  // rows with guidance), whichever is larger.
  uint64_t estimate_bytes(const Job& job) const override {
    const auto [width, height] = drawn_size(job, description);
    const uint64_t w = static_cast<uint64_t>(width), h = static_cast<uint64_t>(height);
    const uint64_t f = sd_.vae_scale_factor();
    const uint64_t vae = 8 * sd_.vae().config().block_out_channels.at(0) * w * h * 4;
    const uint64_t unet = 12 * 2 * sd_.unet().config().block_out_channels.at(0) * (w / f) *
                          (h / f) * 4;
    return std::max(vae, unet) + (uint64_t{64} << 20);
  }

 private:
  // mutable: generations merge their LoRAs into it (under the engine's lock).
  mutable pipelines::StableDiffusion sd_;
  std::unique_ptr<pipelines::StableDiffusion> refiner_;  // SDXL's, when opened with one
};

bool is_stable_diffusion(const std::string& path) {
  if (fs::is_regular_file(path)) {
    // safetensors, or a PyTorch checkpoint (read without running its pickle)
    const std::string ext = fs::path(path).extension().string();
    return ext == ".safetensors" || ext == ".ckpt" || ext == ".pt" || ext == ".pth";
  }
  if (!fs::is_directory(path)) return false;
  const std::string cls = class_name_of(path);
  if (cls.rfind("StableDiffusion", 0) == 0) return true;
  return cls.empty() && fs::is_directory(fs::path(path) / "unet");
}

std::unique_ptr<Engine::Model> open_stable_diffusion(const std::string& path,
                                                     const OpenOptions& options) {
  io::SingleFileOptions single;
  single.prediction_type = options.prediction_type;
  const pipelines::ModelInfo info = pipelines::inspect_model(path, single);
  STIPPLE_CHECK_KIND(info.family.rfind("SD", 0) == 0, kUnsupported, path,
                     " is not a Stable Diffusion 1.x/2.x/XL model (detected: ", info.family,
                     info.evidence.empty() ? "" : "; " + info.evidence, ")");
  pipelines::StableDiffusion loaded =
      pipelines::StableDiffusion::load(path, options.tokenizer_dir, single, options.low_memory);
  std::vector<std::string> skipped;
  if (!options.embeddings_dir.empty())
    skipped = loaded.load_embeddings(options.embeddings_dir).second;
  auto m = std::make_unique<StableDiffusionModel>(std::move(loaded));
  m->description.skipped_embeddings = skipped;
  const pipelines::StableDiffusion& sd = m->pipeline();
  ModelDescription& d = m->description;
  d.family = info.family;
  d.pipeline = sd.is_inpainting_model() ? "StableDiffusionInpaintPipeline"
                                        : "StableDiffusionPipeline";
  d.tasks = sd.is_inpainting_model()
                ? std::vector<Task>{Task::kInpaint}
                : std::vector<Task>{Task::kTextToImage, Task::kImageToImage, Task::kInpaint};
  d.default_steps = 30;
  d.default_cfg_scale = 7.5;
  d.default_sampler = "dpm++2m_karras";
  if (sd.is_xl()) {
    // diffusers' SDXL defaults (guidance 5) with the sampler its model card uses, DPM-Solver++
    // multistep; 1024x1024 from the UNet's sample_size.
    d.pipeline = sd.text_encoder() ? "StableDiffusionXLPipeline"
                                   : "StableDiffusionXLImg2ImgPipeline";
    d.default_cfg_scale = 5.0;
    d.default_sampler = "dpm++2m";
    // A refiner alone refines images: image-to-image (and inpainting through it).
    if (!sd.text_encoder()) d.tasks = {Task::kImageToImage, Task::kInpaint};
  }
  if (!options.refiner.empty()) {
    STIPPLE_CHECK_KIND(sd.is_xl() && sd.text_encoder(), kInvalidArgument,
                       "a refiner finishes SDXL base generations, but ", path, " is a ",
                       info.family, " model");
    const pipelines::ModelInfo ri = pipelines::inspect_model(options.refiner, single);
    STIPPLE_CHECK_KIND(ri.family.rfind("SDXL", 0) == 0, kUnsupported, options.refiner,
                       " is not an SDXL refiner (detected: ", ri.family, ")");
    pipelines::StableDiffusion refiner = pipelines::StableDiffusion::load(
        options.refiner, options.tokenizer_dir, single, options.low_memory);
    if (!options.embeddings_dir.empty()) refiner.load_embeddings(options.embeddings_dir);
    STIPPLE_CHECK_KIND(refiner.vae_scale_factor() == sd.vae_scale_factor() &&
                           refiner.unet().config().in_channels ==
                               sd.unet().config().out_channels,
                       kInvalidArgument, options.refiner,
                       " cannot refine ", path, "'s latents (a different latent space)");
    d.refiner = model_name(options.refiner);
    m->set_refiner(std::move(refiner));
  }
  d.default_width = d.default_height = static_cast<int>(sd.default_size());
  d.size_multiple = static_cast<int>(std::max<int64_t>(8, sd.vae_scale_factor()));
  return m;
}

// ---------------- DiT (latent, diffusers' DiTPipeline) ----------------

class LatentDiTModel : public Engine::Model {
 public:
  explicit LatentDiTModel(pipelines::DiTPipeline dit) : dit_(std::move(dit)) {}
  const pipelines::DiTPipeline& pipeline() const { return dit_; }
  void to(Device device) override { dit_.to(device); }

  Output run(const Job& job) const override {
    const std::vector<int64_t> ids = dit_.label_ids(job.class_labels);
    Output out;
    out.images = each_image(job, static_cast<int64_t>(ids.size()),
                            [&](int64_t i, const std::function<void(int, int)>& step) {
                              pipelines::DiTParams p;
                              p.class_labels = {ids[i]};
                              p.steps = job.steps;
                              p.cfg = static_cast<float>(job.cfg_scale);
                              p.guidance_interval = job.guidance_interval;
                              p.sampler = job.sampler;
                              p.seed = job.seed + i;
                              p.progress = step;
                              p.preview = job.preview;
                              return dit_.run(p);
                            });
    for (size_t i = 0; i < ids.size(); ++i) {
      const auto it = dit_.id2label().find(ids[i]);
      out.what.push_back(
          str_cat(ids[i], it == dit_.id2label().end() ? "" : " (" + it->second + ")"));
      out.seeds.push_back(job.seed + i);
    }
    return out;
  }

 private:
  pipelines::DiTPipeline dit_;
};

// A DiT folder: model_index.json naming DiTPipeline, or transformer/ without unet/.
bool is_dit_folder(const std::string& path) {
  if (!fs::is_directory(path)) return false;
  const std::string cls = class_name_of(path);
  if (!cls.empty()) return cls == "DiTPipeline";
  return fs::is_directory(fs::path(path) / "transformer") &&
         !fs::is_directory(fs::path(path) / "unet");
}

// Pixel space when model_index.json lists vae as none, or (with no word on it and no vae/
// folder) when the transformer draws 1 or 3 channels; every other DiT is latent and needs vae/.
bool is_pixel_dit(const std::string& path) {
  if (!is_dit_folder(path)) return false;
  const auto index = model_index(path);
  if (index && listed_as_none(*index, "vae")) return true;
  if ((index && index->contains("vae")) || fs::exists(fs::path(path) / "vae")) return false;
  const fs::path config = fs::path(path) / "transformer" / "config.json";
  if (!fs::is_regular_file(config)) return false;
  const nlohmann::json c = io::read_json_file(config.string());
  const int64_t channels = c.is_object() ? c.value("in_channels", int64_t{4}) : 4;
  return channels == 1 || channels == 3;
}

std::unique_ptr<Engine::Model> open_latent_dit(const std::string& path, const OpenOptions&) {
  STIPPLE_CHECK_KIND(fs::is_directory(fs::path(path) / "vae"), kNotFound, path,
                     " is a latent DiT (its transformer works on VAE latents) but has no vae/ "
                     "folder to decode them; add the VAE it was trained with (config.json and "
                     "diffusion_pytorch_model.safetensors)");
  auto m = std::make_unique<LatentDiTModel>(pipelines::DiTPipeline::from_pretrained(path));
  const pipelines::DiTPipeline& dit = m->pipeline();
  ModelDescription& d = m->description;
  d.family = "DiT";
  d.pipeline = "DiTPipeline";
  d.tasks = {Task::kClassToImage};
  d.default_steps = 30;
  d.default_cfg_scale = 4.0;
  d.default_sampler = "dpm++2m_karras";
  d.default_width = d.default_height = static_cast<int>(dit.image_size());
  for (int64_t c = 0; c < dit.num_classes(); ++c) {
    const auto it = dit.id2label().find(c);
    d.class_names.push_back(it == dit.id2label().end() ? "" : it->second);
  }
  return m;
}

// ---------------- stipple's pixel-space class-conditional DiT ----------------

class PixelDiTModel : public Engine::Model {
 public:
  explicit PixelDiTModel(train::ClassGenerator gen)
      : gen_(std::move(gen)), fashion_(gen_.class_names() == train::FashionMnist::class_names()) {}
  const train::ClassGenerator& generator() const { return gen_; }
  void to(Device device) override { gen_.to(device); }
  // Fashion-MNIST models are trained on the 28x28 images framed to 32x32: the frame is cropped.
  int64_t drawn_size() const { return fashion_ && gen_.image_size() == 32 ? 28 : gen_.image_size(); }

  Output run(const Job& job) const override {
    std::vector<int64_t> ids;
    for (const std::string& label : job.class_labels) ids.push_back(class_id(label));
    Output out;
    Tensor images = each_image(job, static_cast<int64_t>(ids.size()),
                               [&](int64_t i, const std::function<void(int, int)>& step) {
                                 train::EvalConfig c;
                                 c.steps = job.steps;
                                 c.sampler = job.sampler;
                                 c.cfg = static_cast<float>(job.cfg_scale);
                                 c.guidance_interval = job.guidance_interval;
                                 c.seed = job.seed + i;
                                 c.guide = job.classifier;
                                 c.guide_scale = static_cast<float>(job.classifier_scale);
                                 c.guide_dir = job.classifier_dir;
                                 c.autoguidance = job.autoguidance;
                                 c.validate();
                                 return gen_.sample({ids[i]}, c, step, preview(job));
                               });  // [N, C, S, S] in [-1, 1]
    if (drawn_size() != gen_.image_size()) {
      const int64_t off = (gen_.image_size() - drawn_size()) / 2;
      images = images.narrow(2, off, drawn_size()).narrow(3, off, drawn_size());
    }
    out.images = ops::clamp(ops::affine(images, 0.5f, 0.5f), 0.0f, 1.0f);
    for (size_t i = 0; i < ids.size(); ++i) {
      out.what.push_back(str_cat(ids[i], " (", gen_.class_names()[ids[i]], ")"));
      out.seeds.push_back(job.seed + i);
    }
    return out;
  }

 private:
  // The job's previews, cropped as the images are.
  pipelines::Preview preview(const Job& job) const {
    pipelines::Preview p = job.preview;
    if (!p.on() || drawn_size() == gen_.image_size()) return p;
    const int64_t off = (gen_.image_size() - drawn_size()) / 2, size = drawn_size();
    p.show = [show = job.preview.show, off, size](const Tensor& image) {
      show(image.narrow(2, off, size).narrow(3, off, size).contiguous());
    };
    return p;
  }
  int64_t class_id(const std::string& label) const {
    if (fashion_) return train::FashionMnist::class_index(label);
    std::map<int64_t, std::string> id2label;
    for (size_t c = 0; c < gen_.class_names().size(); ++c)
      id2label[static_cast<int64_t>(c)] = gen_.class_names()[c];
    const int64_t id = models::get_label_ids(id2label, {label})[0];
    STIPPLE_CHECK(id >= 0 && id < gen_.num_classes(), "class label ", label, " is out of range: ",
                  gen_.folder(), " has ", gen_.num_classes(), " classes (0 to ",
                  gen_.num_classes() - 1, ")");
    return id;
  }
  train::ClassGenerator gen_;
  bool fashion_;
};

std::unique_ptr<Engine::Model> open_pixel_dit(const std::string& path, const OpenOptions&) {
  auto m = std::make_unique<PixelDiTModel>(train::ClassGenerator::load(path));
  const train::ClassGenerator& gen = m->generator();
  ModelDescription& d = m->description;
  d.family = "pixel-space DiT";
  d.pipeline = "DiTPipeline";
  d.tasks = {Task::kClassToImage};
  const train::SamplingDefaults& defaults = gen.defaults();  // what `stipple eval` scores with
  d.default_steps = defaults.steps;
  d.default_cfg_scale = defaults.cfg;
  d.default_guidance_interval = {defaults.guidance_interval.lo, defaults.guidance_interval.hi};
  d.default_sampler = defaults.sampler;
  if (gen.guide_model())
    d.guide_model = fs::path(gen.guide_model_folder()).filename().string();
  d.default_width = d.default_height = static_cast<int>(m->drawn_size());
  d.channels = static_cast<int>(gen.channels());
  d.class_names = gen.class_names();
  return m;
}

// ---------------- stipple's text-to-image DiT ----------------

class TextDiTModel : public Engine::Model {
 public:
  explicit TextDiTModel(pipelines::TextDiTPipeline pipe) : pipe_(std::move(pipe)) {}
  const pipelines::TextDiTPipeline& pipeline() const { return pipe_; }
  void to(Device device) override { pipe_.to(device); }

  Output run(const Job& job) const override {
    pipelines::TextDiTParams p;
    p.prompts = job.prompts;
    p.negative_prompt = job.negative_prompt;
    p.steps = job.steps;
    p.cfg = static_cast<float>(job.cfg_scale);
    p.guidance_interval = job.guidance_interval;
    p.sampler = job.sampler;
    p.seed = job.seed;
    for (size_t i = 0; i < job.prompts.size(); ++i) p.seeds.push_back(job.seed + i);
    p.progress = job.step;
    p.preview = job.preview;
    Output out;
    out.images = pipe_.run(p);  // batched; image i still depends only on its own seed
    out.what = job.prompts;
    out.seeds = p.seeds;
    return out;
  }

 private:
  pipelines::TextDiTPipeline pipe_;
};

std::unique_ptr<Engine::Model> open_text_dit(const std::string& path, const OpenOptions&) {
  auto m = std::make_unique<TextDiTModel>(pipelines::TextDiTPipeline::from_pretrained(path));
  ModelDescription& d = m->description;
  d.family = "text-to-image DiT";
  d.pipeline = pipelines::TextDiTPipeline::kClassName;
  d.tasks = {Task::kTextToImage};
  d.default_steps = 20;
  d.default_cfg_scale = 4.0;
  d.default_sampler = "dpm++2m";
  d.default_width = d.default_height = static_cast<int>(m->pipeline().image_size());
  return m;
}

// ---------------- upscalers: stipple's SR3 models and Stable Diffusion's x4 ----------------

class SuperResolutionModel : public Engine::Model {
 public:
  explicit SuperResolutionModel(pipelines::SuperResolutionPipeline pipe) : pipe_(std::move(pipe)) {}
  const pipelines::SuperResolutionPipeline& pipeline() const { return pipe_; }

  Output run(const Job& job) const override {
    const int64_t n = static_cast<int64_t>(job.prompts.size());  // batch_size copies
    Output out;
    out.images = each_image(job, n, [&](int64_t i, const std::function<void(int, int)>& step) {
      pipelines::UpscaleParams p;
      p.steps = job.steps;
      p.sampler = job.sampler;
      p.noise_level = job.noise_level;
      p.seed = job.seed + static_cast<uint64_t>(i);
      p.progress = step;
      return pipe_.run(job.init_image, p);
    });
    for (int64_t i = 0; i < n; ++i) {
      out.what.push_back(str_cat("upscale x", pipe_.scale()));
      out.seeds.push_back(job.seed + static_cast<uint64_t>(i));
    }
    return out;
  }

 private:
  pipelines::SuperResolutionPipeline pipe_;
};

bool is_super_resolution(const std::string& path) {
  return class_name_of(path) == pipelines::kSuperResolutionPipeline;
}

std::unique_ptr<Engine::Model> open_super_resolution(const std::string& path, const OpenOptions&) {
  auto m = std::make_unique<SuperResolutionModel>(
      pipelines::SuperResolutionPipeline::from_pretrained(path));
  ModelDescription& d = m->description;
  d.family = "super-resolution";
  d.pipeline = pipelines::kSuperResolutionPipeline;
  d.tasks = {Task::kUpscale};
  d.default_steps = 30;
  d.default_cfg_scale = 0;
  d.default_sampler = "dpm++2m";
  d.channels = static_cast<int>(m->pipeline().channels());
  d.scale = static_cast<int>(m->pipeline().scale());
  return m;
}

class X4UpscalerModel : public Engine::Model {
 public:
  explicit X4UpscalerModel(pipelines::StableDiffusion sd) : sd_(std::move(sd)) {}

  Output run(const Job& job) const override {
    const int64_t n = static_cast<int64_t>(job.prompts.size());
    Output out;
    out.images = each_image(job, n, [&](int64_t i, const std::function<void(int, int)>& step) {
      pipelines::GenerationParams p;
      p.prompt = job.encoder_prompts[static_cast<size_t>(i)];
      p.negative_prompt = job.negative_prompt;
      p.steps = job.steps;
      p.cfg = static_cast<float>(job.cfg_scale);
      p.guidance_interval = job.guidance_interval;
      p.sampler = job.sampler;
      p.seed = job.seed + static_cast<uint64_t>(i);
      p.init_image = job.init_image;
      p.noise_level = job.noise_level >= 0 ? job.noise_level : 20;  // diffusers' default
      p.clip_skip = job.clip_skip;
      p.prompt_syntax = job.prompt_syntax;
      p.vae_tiling = job.vae_tiling;
      p.progress = step;
      return sd_.run_upscale(p);
    });
    out.what = job.prompts;
    for (int64_t i = 0; i < n; ++i) out.seeds.push_back(job.seed + static_cast<uint64_t>(i));
    return out;
  }

 private:
  pipelines::StableDiffusion sd_;
};

bool is_x4_upscaler(const std::string& path) {
  return class_name_of(path) == "StableDiffusionUpscalePipeline";
}

std::unique_ptr<Engine::Model> open_x4_upscaler(const std::string& path, const OpenOptions&) {
  pipelines::StableDiffusion sd = pipelines::StableDiffusion::from_pretrained(path);
  STIPPLE_CHECK_KIND(sd.is_upscaler(), kUnsupported, path,
                     " says StableDiffusionUpscalePipeline but its UNet is not the x4 "
                     "upscaler's (7 input channels, noise-level class embeddings)");
  const int64_t f = sd.vae_scale_factor();
  auto m = std::make_unique<X4UpscalerModel>(std::move(sd));
  ModelDescription& d = m->description;
  d.family = "SD x4 upscaler";
  d.pipeline = "StableDiffusionUpscalePipeline";
  d.tasks = {Task::kUpscale};
  d.default_steps = 30;
  d.default_cfg_scale = 9.0;
  d.default_sampler = "ddim";
  d.scale = static_cast<int>(f);
  return m;
}

}  // namespace

const std::vector<Engine::Family>& registry() {
  // Tried in this order; the first whose detect() says yes opens the model. A new family is one
  // line here (and its open/detect above).
  static const std::vector<Engine::Family> kFamilies = {
      {"text-to-image DiT", "a StippleTextToImagePipeline folder (stipple train --data emoji)",
       pipelines::TextDiTPipeline::is_folder, open_text_dit, {}},
      {"pixel-space DiT", "a DiTPipeline folder without a VAE (stipple train)", is_pixel_dit,
       open_pixel_dit, {}},
      {"DiT", "a diffusers DiTPipeline folder (transformer/, vae/, scheduler/)", is_dit_folder,
       open_latent_dit, {}},
      {"super-resolution", "a StippleSuperResolutionPipeline folder (stipple train-sr)",
       is_super_resolution, open_super_resolution, {}},
      {"SD x4 upscaler", "a diffusers StableDiffusionUpscalePipeline folder", is_x4_upscaler,
       open_x4_upscaler, {}},
      {"Stable Diffusion", "a diffusers StableDiffusion(Inpaint)Pipeline folder or a single-file "
       "SD 1.x/2.x .safetensors checkpoint", is_stable_diffusion, open_stable_diffusion,
       [](const std::string& path) { return pipelines::inspect_model(path).family; }},
  };
  return kFamilies;
}

}  // namespace stipple::engine

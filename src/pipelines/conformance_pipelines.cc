// Conformance runners for whole pipelines (txt2img, img2img, inpaint_legacy, inpaint,
// dit_pipeline): each reference run is replayed with its stored initial latents and injected
// noise, and every intermediate the reference stores (text embeddings, each denoiser call's input
// and output, latents after each step, VAE calls, the image) is compared under its own name.
// Tolerances, from ../shared/conformance/README.md: 1e-3 relative to max(1, max|ref|) on latents
// and intermediates, 2e-3 absolute on the final [0, 1] image (and the decoder output before it).
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "pipelines/conformance.h"
#include "pipelines/conformance_util.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/stable_diffusion.h"

namespace stipple::conformance {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kLatentTolerance = 1e-3;
constexpr double kImageTolerance = 2e-3;

// Observed values by name, in call order.
struct Recorder {
  std::map<std::string, std::vector<Tensor>> values;
  pipelines::Observer observer() {
    return [this](const std::string& name, const Tensor& v) {
      values[name].push_back(v.contiguous().to(DType::kF32).clone());
    };
  }
  // One tensor per name: the single record, or the records stacked on a new leading dim.
  Tensor stacked(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) return Tensor();
    if (it->second.size() == 1) return it->second.front();
    std::vector<Tensor> parts;
    for (const Tensor& t : it->second) parts.push_back(t.unsqueeze(0));
    return ops::concat(parts, 0);
  }
};

// Tensors that are the run's inputs rather than its results.
bool is_input(const std::string& name) {
  return name == "image_in" || name == "mask_in" || name == "latents_init" ||
         name.rfind("noise.", 0) == 0;
}

std::vector<Tensor> injected_noise(const io::SafetensorsFile& ref) {
  std::vector<Tensor> out;
  for (int k = 0; ref.contains(str_cat("noise.", k)); ++k)
    out.push_back(ref.tensor(str_cat("noise.", k)));
  return out;
}

// NHWC [1, H, W, C] -> NCHW [1, C, H, W].
Tensor nchw(const Tensor& nhwc) { return nhwc.permute({0, 3, 1, 2}).contiguous(); }

CaseResult compare_all(const io::SafetensorsFile& ref, const Recorder& rec, detail::Checker c) {
  for (const std::string& key : ref.names()) {
    if (is_input(key)) continue;
    const bool image = key == "image" || (key.find("vae_decode.") == 0 &&
                                             key.find(".output") != std::string::npos);
    c.check(key, rec.stacked(key), ref.tensor(key), image ? kImageTolerance : kLatentTolerance);
  }
  return c.result();
}

// The run settings a reference .json states (prompt, steps, guidance, size, SDXL's size and crop
// conditioning, the sampler when the run swapped the folder's scheduler).
pipelines::GenerationParams params_from(const json& meta) {
  pipelines::GenerationParams p;
  p.prompt = meta.at("prompt").get<std::string>();
  if (meta.contains("negative_prompt") && meta["negative_prompt"].is_string())
    p.negative_prompt = meta["negative_prompt"].get<std::string>();
  p.steps = meta.at("num_inference_steps").get<int>();
  p.cfg = meta.at("guidance_scale").get<float>();
  p.eta = meta.value("eta", 0.0);
  p.width = meta.at("width").get<int>();
  p.height = meta.at("height").get<int>();
  p.strength = meta.value("strength", 1.0);
  auto pair = [&](const char* key, int* first, int* second) {
    if (meta.contains(key) && meta[key].is_array()) {
      *first = meta[key].at(0).get<int>();
      *second = meta[key].at(1).get<int>();
    }
  };
  pair("original_size", &p.original_height, &p.original_width);
  pair("crops_coords_top_left", &p.crop_top, &p.crop_left);
  pair("target_size", &p.target_height, &p.target_width);
  p.aesthetic_score = meta.value("aesthetic_score", 6.0);
  p.negative_aesthetic_score = meta.value("negative_aesthetic_score", 2.5);
  if (meta.value("scheduler_setup", "").find("DPMSolverMultistepScheduler") != std::string::npos)
    p.sampler = "dpm++2m";
  return p;
}

// Records under "<prefix>.<name>" (the hand-off reference keeps base.* and refiner.* apart).
pipelines::Observer prefixed(const std::string& prefix, const pipelines::Observer& inner) {
  return [prefix, inner](const std::string& name, const Tensor& v) {
    if (name == "image") return inner(name, v);
    inner(prefix + "." + name, v);
  };
}

// SDXL's base -> refiner hand-off: the base in `d` stops at denoising_end and its latents go to
// the refiner folder beside it (sdxl_refiner_tiny).
CaseResult handoff_case(const fs::path& d, const std::string& name) {
  const json meta = detail::read_json((d / "reference" / "refiner_handoff.json").string());
  const auto ref =
      io::SafetensorsFile::open((d / "reference" / "refiner_handoff.safetensors").string());
  const pipelines::StableDiffusion base = pipelines::StableDiffusion::from_pretrained(d.string());
  const pipelines::StableDiffusion refiner =
      pipelines::StableDiffusion::from_pretrained((d.parent_path() / "sdxl_refiner_tiny").string());
  pipelines::GenerationParams p = params_from(meta);
  const double frac = meta.at("high_noise_frac").get<double>();
  Recorder rec;
  p.latents = ref.tensor("latents_init");
  p.denoising_end = frac;
  p.observe = prefixed("base", rec.observer());
  const Tensor handoff = base.run_latents(p);
  rec.observer()("handoff_latents", handoff);
  pipelines::GenerationParams q = params_from(meta);
  q.width = q.height = 0;
  q.denoising_start = frac;
  q.observe = prefixed("refiner", rec.observer());
  refiner.run_refine(q, handoff);
  return compare_all(ref, rec, detail::Checker("refiner_handoff", name, kLatentTolerance));
}

CaseResult sd_case(const std::string& kind, const fs::path& d, const std::string& name) {
  const json meta = detail::read_json((d / "reference" / (kind + ".json")).string());
  const auto ref = io::SafetensorsFile::open((d / "reference" / (kind + ".safetensors")).string());
  const pipelines::StableDiffusion sd = pipelines::StableDiffusion::from_pretrained(d.string());
  pipelines::GenerationParams p = params_from(meta);
  if (ref.contains("latents_init")) p.latents = ref.tensor("latents_init");
  if (ref.contains("image_in")) p.init_image = nchw(ref.tensor("image_in"));
  if (ref.contains("mask_in")) p.mask = nchw(ref.tensor("mask_in"));
  p.noise = injected_noise(ref);
  Recorder rec;
  p.observe = rec.observer();
  if (kind.rfind("txt2img", 0) == 0) {  // txt2img, and SDXL's txt2img_euler, txt2img_negative
    sd.run_txt2img(p);
  } else if (kind == "img2img") {
    sd.run_img2img(p);
  } else {
    STIPPLE_CHECK(sd.is_inpainting_model() == (kind == "inpaint"), d.string(), ": a ", kind,
                  " case needs a ", kind == "inpaint" ? "9" : "4", "-channel UNet");
    sd.run_inpaint(p);
  }
  return compare_all(ref, rec, detail::Checker(kind, name, kLatentTolerance));
}

CaseResult dit_case(const fs::path& d, const std::string& name) {
  const json meta = detail::read_json((d / "reference" / "dit_pipeline.json").string());
  const auto ref = io::SafetensorsFile::open((d / "reference" / "dit_pipeline.safetensors").string());
  const pipelines::DiTPipeline dit = pipelines::DiTPipeline::from_pretrained(d.string());
  pipelines::DiTParams p;
  p.class_labels = meta.at("class_labels").get<std::vector<int64_t>>();
  p.steps = meta.at("num_inference_steps").get<int>();
  p.cfg = meta.at("guidance_scale").get<float>();
  p.noise = injected_noise(ref);
  Recorder rec;
  p.observe = rec.observer();
  dit.run(p);
  return compare_all(ref, rec, detail::Checker("dit_pipeline", name, kLatentTolerance));
}

}  // namespace

CaseResult run_pipeline_case(const std::string& kind, const std::string& dir,
                             const std::string& name) {
  try {
    if (kind == "dit_pipeline") return dit_case(fs::path(dir), name);
    if (kind == "refiner_handoff") return handoff_case(fs::path(dir), name);
    return sd_case(kind, fs::path(dir), name);
  } catch (const std::exception& e) {
    return detail::error_result(kind, name, kLatentTolerance, e.what());
  }
}

}  // namespace stipple::conformance

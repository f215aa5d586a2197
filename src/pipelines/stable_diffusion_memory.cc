// Low-memory Stable Diffusion (see StableDiffusion::low_memory in stable_diffusion.h): each
// component's weights are resident only during its stage of a run, and read again from the
// checkpoint when the stage comes round.
#include <algorithm>
#include <filesystem>
#include <malloc.h>
#include <functional>
#include <map>

#include "core/error.h"
#include "nn/module.h"
#include "pipelines/stable_diffusion.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

struct StableDiffusion::Residency {
  // A freshly loaded copy of a part's modules, in the order modules_of() lists them.
  std::map<Part, std::function<std::vector<std::shared_ptr<nn::Module>>()>> load;
  std::map<Part, bool> resident;
  nn::WeightPrecision precision = nn::WeightPrecision::kF32;  // of the LoadScope at open
};

namespace {

const char* part_name(int part) {
  static const char* kNames[] = {"the text encoders", "the UNet", "the VAE"};
  return kNames[part];
}

}  // namespace

std::vector<std::pair<std::string, nn::Module*>> StableDiffusion::modules_of(Part part) const {
  if (part == Part::kUNet) return {{"unet", unet_.get()}};
  if (part == Part::kVAE) return {{"vae", vae_.get()}};
  std::vector<std::pair<std::string, nn::Module*>> out;
  if (text_encoder_) out.emplace_back("text_encoder", text_encoder_.get());
  if (text_encoder_2_) out.emplace_back("text_encoder_2", text_encoder_2_.get());
  return out;
}

void StableDiffusion::enable_low_memory(const std::string& path,
                                        const io::SingleFileOptions& options) {
  auto r = std::make_shared<Residency>();
  r->precision = nn::LoadScope::active() ? nn::LoadScope::precision() : nn::WeightPrecision::kF32;
  const bool two_encoders = static_cast<bool>(text_encoder_2_);
  const bool first_encoder = static_cast<bool>(text_encoder_);
  if (fs::is_directory(path)) {
    const fs::path d(path);
    r->load[Part::kUNet] = [d] {
      return std::vector<std::shared_ptr<nn::Module>>{
          models::UNet2DConditionModel::from_pretrained((d / "unet").string())};
    };
    r->load[Part::kVAE] = [d] {
      return std::vector<std::shared_ptr<nn::Module>>{
          models::AutoencoderKL::from_pretrained((d / "vae").string())};
    };
    r->load[Part::kText] = [d, first_encoder, two_encoders] {
      std::vector<std::shared_ptr<nn::Module>> out;
      if (first_encoder)
        out.push_back(models::CLIPTextModel::from_pretrained((d / "text_encoder").string()));
      if (two_encoders)
        out.push_back(models::CLIPTextModel::from_pretrained((d / "text_encoder_2").string()));
      return out;
    };
  } else {
    r->load[Part::kUNet] = [path, options] {
      return std::vector<std::shared_ptr<nn::Module>>{
          io::load_single_file(path, options, true, false, false).unet};
    };
    r->load[Part::kVAE] = [path, options] {
      return std::vector<std::shared_ptr<nn::Module>>{
          io::load_single_file(path, options, false, true, false).vae};
    };
    r->load[Part::kText] = [path, options, first_encoder, two_encoders] {
      const io::SingleFileModels m = io::load_single_file(path, options, false, false, true);
      std::vector<std::shared_ptr<nn::Module>> out;
      if (first_encoder) out.push_back(m.text_encoder);
      if (two_encoders) out.push_back(m.text_encoder_2);
      return out;
    };
  }
  residency_ = std::move(r);
  for (Part p : {Part::kText, Part::kUNet, Part::kVAE}) residency_->resident[p] = true;
  release_all();
}

void StableDiffusion::release_all() const { need({}, /*exclusive=*/true); }

void StableDiffusion::need(std::initializer_list<Part> parts, bool exclusive) const {
  if (!residency_) return;
  Residency& r = *residency_;
  auto wanted = [&](Part p) { return std::find(parts.begin(), parts.end(), p) != parts.end(); };
  if (exclusive) {
    for (auto& [part, resident] : r.resident) {
      if (!resident || wanted(part)) continue;
      for (const auto& [name, m] : modules_of(part)) nn::release_weights(*m);
      resident = false;
    }
  }
  // What the released components and the last stage's activations freed goes back to the
  // system, not only to the heap (glibc keeps freed memory below the heap's top resident).
  if (exclusive) malloc_trim(0);
  // const: the loaded weights are the same model's; only where they live changes.
  auto* self = const_cast<StableDiffusion*>(this);
  for (Part part : parts) {
    if (r.resident[part]) continue;
    std::vector<std::shared_ptr<nn::Module>> fresh;
    try {
      nn::LoadScope scope(r.precision);
      fresh = r.load.at(part)();
    } catch (const Error& e) {
      throw Error(str_cat("low memory: reading ", part_name(static_cast<int>(part)),
                          " again failed (was the checkpoint changed or removed?): ", e.what()),
                  e.kind());
    }
    const auto modules = modules_of(part);
    std::vector<std::string> names;
    for (size_t i = 0; i < modules.size(); ++i) {
      nn::adopt_weights(*modules[i].second, *fresh.at(i));
      names.push_back(modules[i].first);
    }
    fresh.clear();
    // LoRAs touch the UNet and the text encoders, never the VAE.
    if (part != Part::kVAE) self->merge_loras(names, /*keep_originals=*/false);
    r.resident[part] = true;
  }
}

}  // namespace stipple::pipelines

// SDXL's parts of the Stable Diffusion pipeline (see stable_diffusion.h): the two text encoders,
// the added size/crop/aesthetic conditioning, and the base -> refiner hand-off, as diffusers 0.29's
// StableDiffusionXLPipeline and StableDiffusionXLImg2ImgPipeline compute them.
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/json.h"
#include "io/torch_checkpoint.h"
#include "ops/ops.h"
#include "pipelines/stable_diffusion.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

void StableDiffusion::load_xl_parts(StableDiffusion& sd, const std::string& folder) {
  const fs::path d(folder);
  sd.text_encoder_2_ = models::CLIPTextModel::from_pretrained((d / "text_encoder_2").string());
  STIPPLE_CHECK(sd.text_encoder_2_->has_projection(), (d / "text_encoder_2").string(),
                ": SDXL's second text encoder must be a CLIPTextModelWithProjection (its "
                "text_projection gives the pooled prompt embedding)");
  sd.tokenizer_2_ = std::make_shared<text::ClipTokenizer>(
      text::ClipTokenizer::from_folder((d / "tokenizer_2").string()));
  sd.read_xl_flags((d / "model_index.json").string());
}

void StableDiffusion::read_xl_flags(const std::string& model_index_path) {
  const io::JsonConfig index = io::JsonConfig::from_file(model_index_path);
  force_zeros_for_empty_prompt_ = index.boolean("force_zeros_for_empty_prompt", true);
  requires_aesthetics_score_ = index.boolean("requires_aesthetics_score", false);
}

StableDiffusion::PromptEmbeddings StableDiffusion::encode_xl(const std::string& text,
                                                             int clip_skip, PromptSyntax syntax,
                                                             int call,
                                                             const Observer& observe) const {
  // text_encoder (if any) then text_encoder_2, each with its own tokenizer (they differ in the
  // padding token); diffusers takes hidden_states[-(clip_skip + 2)] with its clip_skip, which
  // is hidden_states[L - k] with A1111's k (1 = the penultimate layer), never final_layer_norm.
  std::vector<std::pair<const models::CLIPTextModel*, const text::ClipTokenizer*>> encoders;
  if (text_encoder_) encoders.emplace_back(text_encoder_.get(), tokenizer_.get());
  encoders.emplace_back(text_encoder_2_.get(), tokenizer_2_.get());
  std::vector<Tensor> states;
  Tensor pooled;
  for (size_t e = 0; e < encoders.size(); ++e) {
    const models::CLIPTextModel& enc = *encoders[e].first;
    const text::ClipTokenizer& tok = *encoders[e].second;
    const int64_t layers = enc.config().num_hidden_layers;
    STIPPLE_CHECK(clip_skip >= 1 && clip_skip < layers, "clip_skip ", clip_skip,
                  " is outside [1, ", layers - 1, "] for SDXL's text encoders (1 = the layer "
                  "SDXL was trained on, the penultimate)");
    const int64_t layer = layers - clip_skip;
    auto hidden = [&](const Tensor& ids, Tensor* pooled_out) {
      const models::CLIPTextOutput out = enc.forward(ids);
      if (pooled_out != nullptr)
        *pooled_out = enc.has_projection() ? out.text_embeds : out.pooler_output;
      return out.hidden_states.at(static_cast<size_t>(layer));  // [1, 77, D_e]
    };
    const std::string name =
        str_cat(e + 1 == encoders.size() ? "text_encoder_2." : "text_encoder.", call);
    if (syntax == PromptSyntax::kPlain) {
      const int64_t length = std::min(tok.model_max_length(), enc.config().max_position_embeddings);
      const Tensor ids = tok.encode_batch({text}, length);  // [1, 77]
      const Tensor h = hidden(ids, &pooled);                // [1, 77, D_e]
      if (observe) {
        observe(name + ".input_ids", ids);
        observe(name + ".hidden_states_penultimate", h);
        if (e + 1 == encoders.size()) observe(name + ".text_embeds", pooled);
      }
      states.push_back(h);
    } else {
      // A1111: the same 75-token chunks through each encoder, weighted per token; the pooled
      // embedding is the first chunk's, unweighted.
      const std::vector<TokenChunk> chunks =
          a1111_token_chunks(tok, text, syntax == PromptSyntax::kA1111);
      bool first = true;
      states.push_back(encode_token_chunks(
          [&](const Tensor& ids) {
            Tensor p;
            const Tensor h = hidden(ids, first ? &p : nullptr);
            if (first) pooled = p;
            first = false;
            return h;
          },
          chunks));
    }
  }
  if (states.size() > 1) {
    STIPPLE_CHECK(states[0].size(1) == states[1].size(1), "the two SDXL tokenizers split \"",
                  text, "\" into different chunk counts (", states[0].size(1) / 77, " and ",
                  states[1].size(1) / 77, "); their vocabularies must be the same");
  }
  return {states.size() == 1 ? states[0] : ops::concat(states, 2), pooled};  // [1, T, D1 + D2]
}

StableDiffusion::PromptEmbeddings StableDiffusion::encode_prompts_xl(
    const std::string& prompt, const std::string& negative_prompt, int num_images, bool guidance,
    int clip_skip, const Observer& observe, PromptSyntax syntax) const {
  autograd::NoGradGuard no_grad;
  PromptEmbeddings cond = encode_xl(prompt, clip_skip, syntax, 0, observe);
  PromptEmbeddings uncond;
  if (guidance) {
    if (negative_prompt.empty() && force_zeros_for_empty_prompt_) {
      // force_zeros_for_empty_prompt: no negative prompt means zeros, not the encoding of "".
      uncond = {Tensor::zeros(cond.states.shape()).to(device_),
                Tensor::zeros(cond.pooled.shape()).to(device_)};
    } else {
      uncond = encode_xl(negative_prompt, clip_skip, syntax, 1, observe);
    }
    // A1111's syntax: the shorter side padded with zero states to the longer one's chunks.
    const int64_t t = std::max(cond.states.size(1), uncond.states.size(1));
    auto pad = [&](Tensor& s) {
      if (s.size(1) < t) {
        s = ops::concat({s, Tensor::zeros({1, t - s.size(1), s.size(2)}).to(device_)}, 1);
      }
    };
    pad(cond.states);
    pad(uncond.states);
  }
  PromptEmbeddings out;
  out.states = repeat_batch(cond.states, num_images);  // [B, T, D]
  out.pooled = repeat_batch(cond.pooled, num_images);  // [B, P]
  if (guidance) {
    out.states = ops::concat({repeat_batch(uncond.states, num_images), out.states}, 0);
    out.pooled = ops::concat({repeat_batch(uncond.pooled, num_images), out.pooled}, 0);
  }
  return out;
}

Tensor StableDiffusion::xl_time_ids(const GenerationParams& p, int64_t width, int64_t height,
                                    int64_t batch, bool guided) const {
  auto size = [](int given, int64_t image, const char* what) {
    STIPPLE_CHECK(given >= 0 && given <= (1 << 20), what, " must be in [0, 1048576] pixels, got ",
                  given);
    return static_cast<float>(given > 0 ? given : image);
  };
  const float oh = size(p.original_height, height, "original height");
  const float ow = size(p.original_width, width, "original width");
  const float th = size(p.target_height, height, "target height");
  const float tw = size(p.target_width, width, "target width");
  STIPPLE_CHECK(p.crop_top >= 0 && p.crop_left >= 0 && p.crop_top <= (1 << 20) &&
                    p.crop_left <= (1 << 20),
                "the crop's top-left corner must be in [0, 1048576] pixels, got (", p.crop_top,
                ", ", p.crop_left, ")");
  const float ct = static_cast<float>(p.crop_top), cl = static_cast<float>(p.crop_left);
  std::vector<float> pos, neg;
  if (requires_aesthetics_score_) {
    STIPPLE_CHECK(std::isfinite(p.aesthetic_score) && std::isfinite(p.negative_aesthetic_score),
                  "the aesthetic scores must be numbers");
    pos = {oh, ow, ct, cl, static_cast<float>(p.aesthetic_score)};
    neg = {oh, ow, ct, cl, static_cast<float>(p.negative_aesthetic_score)};
  } else {
    pos = neg = {oh, ow, ct, cl, th, tw};
  }
  const int64_t k = static_cast<int64_t>(pos.size());
  const Tensor cond = repeat_batch(Tensor::from_vector(pos, {1, k}).to(device_), batch);  // [B, k]
  if (!guided) return cond;
  return ops::concat({repeat_batch(Tensor::from_vector(neg, {1, k}).to(device_), batch), cond},
                     0);  // [2B, k]
}

namespace {

// diffusers' discrete cutoff for denoising_start/denoising_end: round(T - fraction * T).
int timestep_cutoff(const schedulers::Scheduler& s, double fraction) {
  const int T = s.config().num_train_timesteps;
  return static_cast<int>(std::llround(T - fraction * T));
}

}  // namespace

int StableDiffusion::end_index_for(const schedulers::Scheduler& s, int begin, double fraction) {
  const std::vector<double>& ts = s.timesteps();
  if (!(fraction > 0.0 && fraction < 1.0)) return -1;
  const int cutoff = timestep_cutoff(s, fraction);
  int n = 0;
  for (size_t i = static_cast<size_t>(begin); i < ts.size(); ++i) n += ts[i] >= cutoff ? 1 : 0;
  STIPPLE_CHECK(n > 0, "denoising_end ", fraction, " leaves no step: every timestep of the ",
                "schedule is below ", cutoff, "; raise denoising_end or the steps");
  return begin + n;
}

Tensor StableDiffusion::run_latents(const GenerationParams& p) const {
  autograd::NoGradGuard no_grad;
  Run r = prepare(p, /*needs_image=*/false);
  return denoise_and_decode(r, initial_latents(r, p), p, nullptr, nullptr, /*decode=*/false);
}

Tensor StableDiffusion::run_refine(const GenerationParams& params, const Tensor& latents) const {
  autograd::NoGradGuard no_grad;
  const int64_t f = vae_scale_factor();
  STIPPLE_CHECK(latents.defined() && latents.dim() == 4 && latents.size(0) >= 1 &&
                    latents.size(1) == unet_->config().out_channels,
                "the refiner takes latents [B, ", unet_->config().out_channels, ", h, w], got ",
                latents.defined() ? latents.describe() : "none");
  STIPPLE_CHECK(params.denoising_start > 0.0 && params.denoising_start < 1.0,
                "denoising_start must be between 0 and 1 (the fraction of the schedule the base "
                "model ran), got ",
                params.denoising_start);
  GenerationParams p = params;
  p.width = static_cast<int>(latents.size(3) * f);
  p.height = static_cast<int>(latents.size(2) * f);
  Run r = prepare(p, /*needs_image=*/false);
  // get_timesteps with denoising_start: the last n timesteps below the cutoff (one more for a
  // second-order sampler when n is even, so the hand-off never splits a Heun step).
  const std::vector<double>& ts = r.scheduler->timesteps();
  const int cutoff = timestep_cutoff(*r.scheduler, p.denoising_start);
  int n = 0;
  for (double t : ts) n += t < cutoff ? 1 : 0;
  if (r.scheduler->order() == 2 && n % 2 == 0) ++n;
  n = std::min<int>(n, static_cast<int>(ts.size()));
  // The base ran every step of this schedule (each timestep is at or above the cutoff): its
  // latents are finished, and the refiner only decodes them.
  if (n == 0) return decode(latents.contiguous(), p.observe, use_tiling(p, latents));
  r.begin_index = static_cast<int>(ts.size()) - n;
  r.scheduler->set_begin_index(r.begin_index);
  r.end_index = -1;
  // The base's latents, repeated to the batch when they are fewer (prepare_latents); no noise.
  Tensor x = latents.contiguous();
  if (x.size(0) < r.batch) x = ops::concat(std::vector<Tensor>(r.batch / x.size(0), x), 0);
  STIPPLE_CHECK(x.size(0) == r.batch, "the refiner got ", latents.size(0), " latents for ",
                r.batch, " images");
  return denoise_and_decode(r, x, p, nullptr, nullptr);
}

void StableDiffusion::set_loras(const std::vector<models::LoraSpec>& loras) {
  if (loras == loras_) return;
  std::map<std::string, nn::Module*> components;
  for (Part part : {Part::kUNet, Part::kText})
    for (const auto& [name, m] : modules_of(part)) components[name] = m;
  // 1. Restore what the previous set changed (low memory: drop the merged components; each
  // stage reads its component again and merges the new set).
  if (low_memory()) release_all();
  for (auto& [name, originals] : lora_originals_)
    components.at(name)->load_state_dict(originals, /*strict=*/false);
  lora_originals_.clear();
  loras_.clear();
  if (loras.empty()) return;
  loras_ = loras;
  try {
    if (low_memory()) {
      // The files are checked against the model now, so their errors belong to this request.
      models::LoraTargets targets;
      for (const auto& [name, m] : components) targets.components[name] = m;
      targets.unet_config = &unet_->config();
      for (const models::LoraSpec& spec : loras)
        models::read_lora(io::open_weights_file(spec.path), targets);
    } else {
      merge_loras({}, /*keep_originals=*/true);
    }
  } catch (...) {
    loras_.clear();
    throw;
  }
}

void StableDiffusion::merge_loras(const std::vector<std::string>& only, bool keep_originals) {
  if (loras_.empty()) return;
  std::map<std::string, nn::Module*> components;
  for (Part part : {Part::kUNet, Part::kText})
    for (const auto& [name, m] : modules_of(part)) components[name] = m;
  auto wanted = [&](const std::string& name) {
    return only.empty() || std::find(only.begin(), only.end(), name) != only.end();
  };
  // Every merged weight, computed before any is written (an error leaves the model as is).
  models::LoraTargets targets;
  for (const auto& [name, m] : components) targets.components[name] = m;
  targets.unet_config = &unet_->config();
  std::map<std::string, std::map<std::string, Tensor>> current, originals, merged;
  for (const auto& [name, m] : components)
    if (wanted(name)) current[name] = m->state_dict();
  for (const models::LoraSpec& spec : loras_) {
    const models::Lora lora = models::read_lora(io::open_weights_file(spec.path), targets);
    for (const models::LoraLayer& layer : lora.layers) {
      if (!wanted(layer.component)) continue;
      const std::string key = layer.module + ".weight";
      std::map<std::string, Tensor>& done = merged[layer.component];
      const Tensor& w = done.count(key) ? done.at(key) : current.at(layer.component).at(key);
      if (keep_originals && !originals[layer.component].count(key))
        originals[layer.component][key] = current.at(layer.component).at(key).clone();
      done[key] = models::merge_lora_layer(w, layer, spec.weight);
    }
  }
  for (const auto& [name, weights] : merged)
    components.at(name)->load_state_dict(weights, /*strict=*/false);
  if (keep_originals) lora_originals_ = std::move(originals);
}

}  // namespace stipple::pipelines

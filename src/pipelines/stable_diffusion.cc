#include "pipelines/stable_diffusion.h"

#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "nn/module.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/prompt_weighting.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

StableDiffusion StableDiffusion::from_pretrained(const std::string& folder, bool low_memory) {
  if (fs::is_directory(fs::path(folder) / "transformer") &&
      !fs::is_directory(fs::path(folder) / "unet")) {
    throw Error(str_cat(folder,
                        " holds a transformer/ (a DiT class-to-image model), not a Stable "
                        "Diffusion unet/; generate from it with --class-label"));
  }
  const fs::path d(folder);
  const bool xl = fs::is_directory(d / "text_encoder_2");
  if (xl) {
    check_pipeline_layout(folder, "Stable Diffusion XL",
                          {"unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"});
  } else {
    check_pipeline_layout(folder, "Stable Diffusion",
                          {"unet", "vae", "text_encoder", "tokenizer", "scheduler"});
  }
  StableDiffusion sd;
  // Low memory: each component is released as soon as it is read.
  auto done = [low_memory](nn::Module& m) {
    if (low_memory) nn::release_weights(m);
  };
  sd.unet_ = models::UNet2DConditionModel::from_pretrained((d / "unet").string());
  done(*sd.unet_);
  sd.vae_ = models::AutoencoderKL::from_pretrained((d / "vae").string());
  done(*sd.vae_);
  // An SDXL refiner has no text_encoder/ (model_index.json lists it as null).
  if (!xl || fs::is_directory(d / "text_encoder")) {
    sd.text_encoder_ = models::CLIPTextModel::from_pretrained((d / "text_encoder").string());
    done(*sd.text_encoder_);
    sd.tokenizer_ = std::make_shared<text::ClipTokenizer>(
        text::ClipTokenizer::from_folder((d / "tokenizer").string()));
  }
  if (xl) load_xl_parts(sd, folder);
  if (xl) done(*sd.text_encoder_2_);
  sd.scheduler_config_ =
      schedulers::SchedulerConfig::from_json((d / "scheduler" / "scheduler_config.json").string());
  if (sd.unet_->config().in_channels == 7) load_upscaler_parts(sd, folder);
  sd.check_components(folder);
  if (low_memory) sd.enable_low_memory(folder, {});
  return sd;
}

StableDiffusion StableDiffusion::from_single_file(const std::string& path,
                                                  const std::string& tokenizer_dir,
                                                  const io::SingleFileOptions& options,
                                                  bool low_memory) {
  const fs::path beside = fs::path(path).parent_path() / "tokenizer";
  const std::string tok = !tokenizer_dir.empty()     ? tokenizer_dir
                          : fs::is_directory(beside) ? beside.string()
                                                     : std::string();
  STIPPLE_CHECK(!tok.empty(), path,
                " is a single-file checkpoint, which holds no tokenizer: give a tokenizer folder "
                "(vocab.json and merges.txt, such as a diffusers model's tokenizer/) with "
                "--tokenizer, or put one beside the file as tokenizer/");
  io::SingleFileModels m;
  if (low_memory) {
    // One component at a time, each released as soon as it is read.
    m = io::load_single_file(path, options, true, false, false);
    nn::release_weights(*m.unet);
    m.vae = io::load_single_file(path, options, false, true, false).vae;
    nn::release_weights(*m.vae);
    const io::SingleFileModels t = io::load_single_file(path, options, false, false, true);
    m.text_encoder = t.text_encoder;
    m.text_encoder_2 = t.text_encoder_2;
    if (m.text_encoder) nn::release_weights(*m.text_encoder);
    if (m.text_encoder_2) nn::release_weights(*m.text_encoder_2);
  } else {
    m = io::load_single_file(path, options);
  }
  StableDiffusion sd;
  sd.unet_ = m.unet;
  sd.vae_ = m.vae;
  sd.text_encoder_ = m.text_encoder;
  const text::ClipTokenizer tokenizer = text::ClipTokenizer::from_folder(tok);
  if (m.text_encoder) sd.tokenizer_ = std::make_shared<text::ClipTokenizer>(tokenizer);
  if (m.text_encoder_2) {
    // SDXL: the second tokenizer is tokenizer_2/ beside the given one (a diffusers SDXL folder),
    // else the same files padding with "!", which is what SDXL's tokenizer_2 is.
    const fs::path beside_2 = fs::path(tok).parent_path() / "tokenizer_2";
    sd.text_encoder_2_ = m.text_encoder_2;
    sd.tokenizer_2_ = std::make_shared<text::ClipTokenizer>(
        fs::is_directory(beside_2) && fs::path(tok).filename() == "tokenizer"
            ? text::ClipTokenizer::from_folder(beside_2.string())
            : tokenizer.with_pad_token("!"));
    // The pipeline flags of SDXL base and refiner (their model_index.json), or config_dir's.
    const bool refiner = !m.text_encoder;
    sd.force_zeros_for_empty_prompt_ = !refiner;
    sd.requires_aesthetics_score_ = refiner;
    const fs::path index = fs::path(options.config_dir) / "model_index.json";
    if (!options.config_dir.empty() && fs::exists(index)) sd.read_xl_flags(index.string());
  }
  sd.scheduler_config_ = schedulers::SchedulerConfig::from_json(m.info.scheduler_json.dump());
  sd.check_components(path);
  if (low_memory) sd.enable_low_memory(path, options);
  return sd;
}

StableDiffusion StableDiffusion::load(const std::string& path, const std::string& tokenizer_dir,
                                      const io::SingleFileOptions& options, bool low_memory) {
  STIPPLE_CHECK(fs::exists(path), "no such model folder or file: ", path);
  if (fs::is_directory(path)) return from_pretrained(path, low_memory);
  return from_single_file(path, tokenizer_dir, options, low_memory);
}

void StableDiffusion::check_components(const std::string& where) const {
  const int64_t ctx = (text_encoder_ ? text_encoder_->config().hidden_size : 0) +
                      (text_encoder_2_ ? text_encoder_2_->config().hidden_size : 0);
  const std::vector<int64_t>& want = unet_->config().cross_attention_dim;
  STIPPLE_CHECK(want.empty() || want.front() == ctx, where, ": the text encoder",
                text_encoder_2_ ? "s give " : " gives ", ctx,
                "-wide embeddings but the UNet's cross_attention_dim is ", want.front());
  STIPPLE_CHECK(is_xl() == static_cast<bool>(text_encoder_2_), where,
                is_xl() ? ": an SDXL UNet (addition_embed_type \"text_time\") needs "
                          "text_encoder_2 and tokenizer_2"
                        : ": text_encoder_2 is only used with an SDXL UNet (addition_embed_type "
                          "\"text_time\"), which this UNet is not");
  const int64_t in = unet_->config().in_channels;
  STIPPLE_CHECK(in == 4 || in == 9 || (in == 7 && is_upscaler()), where, ": UNet in_channels ",
                in, " (expected 4, 9 for an inpainting UNet, or 7 for the x4 upscaler with its "
                "low_res_scheduler/)");
}

int64_t StableDiffusion::default_size() const {
  const int64_t s = unet_->config().sample_size > 0 ? unet_->config().sample_size : 64;
  return s * vae_scale_factor();
}

StableDiffusion::PromptEmbeddings StableDiffusion::encode_prompts(
    const std::string& prompt_text, const std::string& negative_text, int num_images,
    bool guidance, int clip_skip, const Observer& observe, PromptSyntax syntax) const {
  STIPPLE_CHECK(num_images >= 1, "num_images must be at least 1, got ", num_images);
  need({Part::kText}, /*exclusive=*/true);
  // Multi-vector embeddings' names read as all their tokens.
  const std::string prompt = expand_embeddings(prompt_text);
  const std::string negative_prompt = expand_embeddings(negative_text);
  if (is_xl()) {
    return encode_prompts_xl(prompt, negative_prompt, num_images, guidance, clip_skip, observe,
                             syntax);
  }
  STIPPLE_CHECK(clip_skip >= 1 && clip_skip <= text_encoder_->config().num_hidden_layers,
                "clip_skip ", clip_skip, " is outside [1, ",
                text_encoder_->config().num_hidden_layers, "]");
  if (syntax != PromptSyntax::kPlain) {
    // A1111's chunks, the shorter prompt padded with empty chunks to the longer one's count.
    const bool emphasis = syntax == PromptSyntax::kA1111;
    std::vector<TokenChunk> c = a1111_token_chunks(*tokenizer_, prompt, emphasis), u;
    if (guidance) u = a1111_token_chunks(*tokenizer_, negative_prompt, emphasis);
    while (guidance && c.size() < u.size()) c.push_back(empty_token_chunk(*tokenizer_));
    while (guidance && u.size() < c.size()) u.push_back(empty_token_chunk(*tokenizer_));
    const Tensor cond = repeat_batch(encode_token_chunks(*text_encoder_, c, clip_skip), num_images);
    if (!guidance) return {cond, Tensor()};
    const Tensor uncond =
        repeat_batch(encode_token_chunks(*text_encoder_, u, clip_skip), num_images);
    return {ops::concat({uncond, cond}, 0), Tensor()};  // [2B, 77 * chunks, D], uncond first
  }
  const int64_t length =
      std::min(tokenizer_->model_max_length(), text_encoder_->config().max_position_embeddings);
  int call = 0;
  auto embed = [&](const std::string& text) {
    const Tensor ids = tokenizer_->encode_batch({text}, length);                // [1, 77]
    const Tensor h = text_encoder_->forward(ids, clip_skip).last_hidden_state;  // [1, 77, D]
    if (observe) {
      observe(str_cat("text_encoder.", call, ".input_ids"), ids);
      observe(str_cat("text_encoder.", call, ".last_hidden_state"), h);
    }
    ++call;
    return repeat_batch(h, num_images);  // [B, 77, D]
  };
  const Tensor cond = embed(prompt);
  if (!guidance) return {cond, Tensor()};
  const Tensor uncond = embed(negative_prompt);
  return {ops::concat({uncond, cond}, 0), Tensor()};  // [2B, 77, D], uncond first
}

StableDiffusion::Run StableDiffusion::prepare(const GenerationParams& p, bool needs_image) const {
  STIPPLE_CHECK(p.steps >= 1 && p.steps <= 10000, "steps must be in [1, 10000], got ", p.steps);
  STIPPLE_CHECK(p.num_images >= 1 && p.num_images <= 256, "num_images must be in [1, 256], got ",
                p.num_images);
  STIPPLE_CHECK(std::isfinite(p.cfg), "the guidance scale must be a number");
  STIPPLE_CHECK(p.strength >= 0.0 && p.strength <= 1.0, "strength must be in [0, 1], got ",
                p.strength);
  Run r;
  r.batch = p.num_images;
  r.width = p.width;
  r.height = p.height;
  if (needs_image) {
    STIPPLE_CHECK(p.init_image.defined(), "this pipeline needs an init image");
    const Tensor& im = p.init_image;
    STIPPLE_CHECK(im.dim() == 4 && im.size(0) == 1 && im.size(1) == 3,
                  "the init image must be [1, 3, H, W], got ", im.describe());
    const int64_t h = im.size(2), w = im.size(3);
    if (r.width == 0) r.width = w;
    if (r.height == 0) r.height = h;
    STIPPLE_CHECK(r.width == w && r.height == h, "the init image is ", w, "x", h,
                  " but the requested size is ", r.width, "x", r.height,
                  "; resize the image or leave out width and height");
    if (p.mask.defined()) {
      STIPPLE_CHECK(p.mask.dim() == 4 && p.mask.size(0) == 1 && p.mask.size(1) == 1,
                    "the mask must be [1, 1, H, W], got ", p.mask.describe());
      STIPPLE_CHECK(p.mask.size(2) == h && p.mask.size(3) == w, "the mask is ", p.mask.size(3), "x",
                    p.mask.size(2), " but the init image is ", w, "x", h,
                    "; they must have the same size");
    }
    r.init_image = ops::affine(im.to(device_).contiguous(), 2.0f, -1.0f);  // [1, 3, H, W] in [-1, 1]
  }
  if (r.width == 0) r.width = default_size();
  if (r.height == 0) r.height = default_size();
  const int64_t f = vae_scale_factor();
  STIPPLE_CHECK(r.width > 0 && r.height > 0 && r.width % 8 == 0 && r.height % 8 == 0 &&
                    r.width % f == 0 && r.height % f == 0,
                "width and height must be positive multiples of ", std::max<int64_t>(8, f),
                ", got ", r.width, "x", r.height);

  schedulers::SchedulerConfig sc =
      p.sampler.empty() ? scheduler_config_
                        : schedulers::config_for_sampler(p.sampler, scheduler_config_);
  sc.eta = p.eta;
  r.scheduler = schedulers::make_scheduler(sc);
  r.scheduler->set_timesteps(p.steps);
  if (needs_image) {
    // diffusers' get_timesteps: skip the first N - int(N * strength) steps
    const int init_timestep = std::min(static_cast<int>(p.steps * p.strength), p.steps);
    const int t_start = std::max(p.steps - init_timestep, 0);
    r.begin_index = t_start * r.scheduler->order();
    STIPPLE_CHECK(r.begin_index < static_cast<int>(r.scheduler->timesteps().size()), "strength ",
                  p.strength, " with ", p.steps,
                  " steps leaves no denoising step; raise the strength or the steps");
    r.scheduler->set_begin_index(r.begin_index);
  }
  STIPPLE_CHECK(p.denoising_end > 0.0 && p.denoising_end <= 1.0,
                "denoising_end must be in (0, 1], got ", p.denoising_end);
  r.end_index = end_index_for(*r.scheduler, r.begin_index, p.denoising_end);
  r.noise = std::make_unique<NoiseSource>(p.seed, p.noise, device_);
  r.guided = p.cfg > 1.0f;
  const PromptEmbeddings e = encode_prompts(p.prompt, p.negative_prompt, p.num_images, r.guided,
                                            p.clip_skip, p.observe, p.prompt_syntax);
  r.prompt_embeds = e.states;
  if (p.observe) p.observe("denoiser.encoder_hidden_states", r.prompt_embeds);
  if (is_xl()) {
    r.added.text_embeds = e.pooled;
    r.added.time_ids = xl_time_ids(p, r.width, r.height, r.batch, r.guided);
    if (p.observe) {
      p.observe("denoiser.text_embeds", r.added.text_embeds);
      p.observe("denoiser.time_ids", r.added.time_ids);
    }
  }
  return r;
}

Tensor StableDiffusion::encode_image(const Tensor& image, NoiseSource& noise, int index,
                                     const Observer& observe) const {
  need({Part::kVAE}, /*exclusive=*/false);
  const models::DiagonalGaussian post = vae_->encode(image);  // [1, 4, h, w]
  if (observe) {
    observe(str_cat("vae_encode.", index, ".input"), image);
    observe(str_cat("vae_encode.", index, ".mean"), post.mean);
    observe(str_cat("vae_encode.", index, ".std"), post.std);
  }
  const Tensor eps = noise.randn(post.mean.shape(), "the VAE posterior sample");
  return post.sample(eps) * static_cast<float>(vae_->config().scaling_factor);
}

bool StableDiffusion::use_tiling(const GenerationParams& p, const Tensor& latents) const {
  const int64_t tile = std::max<int64_t>(vae_->config().sample_size / vae_scale_factor(), 8);
  return p.vae_tiling || latents.size(2) * latents.size(3) > 4 * tile * tile;
}

Tensor StableDiffusion::decode(const Tensor& latents, const Observer& observe, bool tiled) const {
  need({Part::kVAE}, /*exclusive=*/false);  // previews decode while the UNet is resident
  const Tensor z = latents / static_cast<float>(vae_->config().scaling_factor);
  const int64_t tile = std::max<int64_t>(vae_->config().sample_size / vae_scale_factor(), 8);
  const Tensor decoded = (tiled ? vae_->decode_tiled(z, tile) : vae_->decode(z))
                             .contiguous();  // [B, 3, H, W] in [-1, 1]
  const Tensor images = vae_to_unit(decoded).to(Device::kCPU);  // [B, 3, H, W] in [0, 1]
  if (observe) {
    observe("vae_decode.0.input", z);
    observe("vae_decode.0.output", decoded);
    observe("image", to_nhwc(images));
  }
  return images;
}

Tensor StableDiffusion::denoise_and_decode(
    Run& r, Tensor latents, const GenerationParams& p,
    const std::function<Tensor(const Tensor&)>& extra_channels,
    const std::function<Tensor(int, double, const Tensor&)>& after_step,
    bool decode_result) const {
  const Observer& observe = p.observe;
  const DenoiseFn model = [&](const Tensor& input, double t) {
    // [N, 4, h, w], plus the inpainting channels of a 9-channel UNet
    const Tensor x = extra_channels ? ops::concat({input, extra_channels(input)}, 1) : input;
    const Tensor ts = Tensor::from_vector({static_cast<float>(t)}, {1}).to(device_);
    // [uncond, cond] conditioning: the last N rows (the conditional ones at an unguided step of
    // a guided run)
    const int64_t n = input.size(0);
    const auto rows = [n](const Tensor& c) {
      return !c.defined() || c.size(0) == n ? c : c.narrow(0, c.size(0) - n, n);
    };
    const models::AddedConditions added{rows(r.added.text_embeds), rows(r.added.time_ids)};
    const Tensor out = unet_->forward(x, ts, rows(r.prompt_embeds), rows(r.class_labels), nullptr,
                                      added);  // [N, 4, h, w]
    if (observe) {
      observe("denoiser.sample", x);
      observe("denoiser.timestep", Tensor::from_vector({static_cast<float>(t)}, {1}));
      observe("denoiser.timestep_as_passed", ts);
      observe("denoiser.out", out);
    }
    return out;
  };
  DenoiseOptions opt;
  opt.cfg.scale = p.cfg;
  opt.cfg.order = guidance::CfgOrder::kUncondFirst;
  opt.cfg.interval = p.guidance_interval;
  opt.begin_index = r.begin_index;
  opt.end_index = r.end_index;
  opt.generator = r.noise->generator();
  opt.progress = p.progress;
  opt.preview = p.preview;
  opt.decode_preview = [&](const Tensor& x0) { return decode(x0, {}); };
  opt.after_step = [&](int i, double t, const Tensor& x) {
    Tensor out = after_step ? after_step(i, t, x) : Tensor();
    if (observe) observe("latents_after_step", out.defined() ? out : x);
    return out;
  };
  // 5. denoise
  need({Part::kUNet}, /*exclusive=*/true);
  latents = denoise(*r.scheduler, latents, model, opt);  // [B, 4, h, w]
  if (!decode_result) return latents;
  // 6. decode
  need({Part::kVAE}, /*exclusive=*/true);
  return decode(latents, observe, use_tiling(p, latents));
}

void StableDiffusion::to(Device device) {
  STIPPLE_CHECK_KIND(device == Device::kCPU || !low_memory(), kUnsupported,
                     "low-memory mode reads each stage's weights again onto the CPU; on ",
                     device_name(device), " leave it out");
  STIPPLE_CHECK_KIND(device == Device::kCPU || !is_upscaler(), kUnsupported,
                     "the x4 upscaler runs on the CPU only for now");
  for (nn::Module* m : std::initializer_list<nn::Module*>{text_encoder_.get(), text_encoder_2_.get(),
                                                          unet_.get(), vae_.get()})
    if (m != nullptr) m->to(device);
  device_ = device;
}

Tensor StableDiffusion::run(const GenerationParams& params) const {
  if (is_upscaler()) return run_upscale(params);
  if (params.mask.defined()) return run_inpaint(params);
  if (params.init_image.defined()) return run_img2img(params);
  return run_txt2img(params);
}

Tensor StableDiffusion::run_txt2img(const GenerationParams& p) const {
  autograd::NoGradGuard no_grad;
  // 1.-2. encode prompt, timesteps
  Run r = prepare(p, /*needs_image=*/false);
  // 5.-6. denoise, decode
  return denoise_and_decode(r, initial_latents(r, p), p, nullptr, nullptr);
}

Tensor StableDiffusion::initial_latents(Run& r, const GenerationParams& p) const {
  // 4. latents: x_T ~ N(0, I) [B, 4, H/f, W/f], scaled by init_noise_sigma
  const int64_t f = vae_scale_factor();
  const Shape shape = {r.batch, unet_->config().out_channels, r.height / f, r.width / f};
  Tensor latents;
  if (p.latents.defined()) {
    STIPPLE_CHECK(p.latents.shape() == shape, "latents must be ", shape_str(shape), ", got ",
                  p.latents.describe());
    latents = p.latents.contiguous().to(device_);
  } else {
    latents = r.noise->randn(shape, "the initial latents");
  }
  return latents * static_cast<float>(r.scheduler->init_noise_sigma());
}

Tensor StableDiffusion::run_img2img(const GenerationParams& p) const {
  autograd::NoGradGuard no_grad;
  STIPPLE_CHECK(!is_inpainting_model(),
                "this is a 9-channel inpainting model: give it a mask (inpaint)");
  // 1.-2. encode prompt, timesteps from strength
  Run r = prepare(p, /*needs_image=*/true);
  // 3. encode the image: posterior sample * scaling_factor, one per image
  const Tensor init =
      repeat_batch(encode_image(r.init_image, *r.noise, 0, p.observe), r.batch);  // [B, 4, h, w]
  // 4. latents: the image noised to the first remaining timestep (DDPM eq. 4)
  const Tensor noise = r.noise->randn(init.shape(), "the img2img noise");
  const Tensor latents =
      r.scheduler->add_noise(init, noise, r.scheduler->timesteps()[r.begin_index]);
  // 5.-6. denoise over timesteps()[begin:], decode
  return denoise_and_decode(r, latents, p, nullptr, nullptr);
}

}  // namespace stipple::pipelines

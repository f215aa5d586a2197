// The text-to-image DiT pipeline (see text_dit_pipeline.h).
#include "pipelines/text_dit_pipeline.h"

#include <cmath>
#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/json.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/pipeline_util.h"
#include "schedulers/guidance.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

bool TextDiTPipeline::is_folder(const std::string& folder) {
  const fs::path index = fs::path(folder) / "model_index.json";
  if (!fs::is_regular_file(index)) return false;
  const nlohmann::json j = io::read_json_file(index.string());
  return j.is_object() && j.value("_class_name", "") == kClassName;
}

TextDiTPipeline TextDiTPipeline::from_pretrained(const std::string& folder) {
  check_pipeline_layout(folder, kClassName,
                        {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"});
  TextDiTPipeline p;
  p.transformer_ = models::PixArtTransformer2DModel::from_pretrained(folder + "/transformer");
  p.vae_ = models::AutoencoderKL::from_pretrained(folder + "/vae");
  p.text_encoder_ = models::CLIPTextModel::from_pretrained(folder + "/text_encoder");
  p.tokenizer_ = std::make_shared<text::ClipTokenizer>(
      text::ClipTokenizer::from_folder(folder + "/tokenizer"));
  p.scheduler_config_ = schedulers::SchedulerConfig::from_json(
      folder + "/scheduler/scheduler_config.json");
  const models::PixArtConfig& c = p.transformer_->config();
  STIPPLE_CHECK(c.caption_channels == p.text_encoder_->config().hidden_size, folder,
                ": the transformer expects text states of ", c.caption_channels,
                " channels but the text encoder gives ", p.text_encoder_->config().hidden_size);
  STIPPLE_CHECK(c.pooled_projection_dim == 0 ||
                    (p.text_encoder_->has_projection() &&
                     p.text_encoder_->config().projection_dim == c.pooled_projection_dim),
                folder, ": the transformer needs a pooled text embedding of ",
                c.pooled_projection_dim, " (a text encoder with that text_projection)");
  STIPPLE_CHECK(c.in_channels == p.vae_->config().latent_channels, folder,
                ": the transformer works on ", c.in_channels, " latent channels but the VAE has ",
                p.vae_->config().latent_channels);
  return p;
}

int64_t TextDiTPipeline::image_size() const {
  return transformer_->config().sample_size * vae_->config().downscale_factor();
}

std::pair<Tensor, Tensor> encode_text_condition(const models::CLIPTextModel& encoder,
                                                const text::ClipTokenizer& tokenizer,
                                                const std::vector<std::string>& texts,
                                                bool pooled) {
  autograd::NoGradGuard no_grad;
  const int64_t len = encoder.config().max_position_embeddings;
  const models::CLIPTextOutput o = encoder.forward(tokenizer.encode_batch(texts, len));
  if (!pooled) return {o.last_hidden_state, Tensor()};
  const Tensor& e = o.text_embeds;  // [B, P]
  const float root = std::sqrt(static_cast<float>(e.size(1)));
  return {o.last_hidden_state, e * ops::rsqrt(ops::sum(ops::square(e), {1}, true) + 1e-12f) * root};
}

std::pair<Tensor, Tensor> TextDiTPipeline::encode(const std::vector<std::string>& prompts) const {
  return encode_text_condition(*text_encoder_, *tokenizer_, prompts,
                               transformer_->config().pooled_projection_dim > 0);
}

Tensor TextDiTPipeline::run(const TextDiTParams& params) const {
  autograd::NoGradGuard no_grad;
  const int64_t b = static_cast<int64_t>(params.prompts.size());
  STIPPLE_CHECK(b > 0, "text-to-image: give at least one prompt");
  STIPPLE_CHECK(params.steps >= 1, "text-to-image: steps must be at least 1, got ", params.steps);
  STIPPLE_CHECK(params.seeds.empty() || static_cast<int64_t>(params.seeds.size()) == b,
                "text-to-image: ", params.seeds.size(), " seeds for ", b, " prompts");
  const models::PixArtConfig& cfg = transformer_->config();

  // x_T for every image: in order from one generator, or each from its own seed
  NoiseSource noise(params.seeds.empty() ? params.seed : params.seeds[0], {}, device_);
  const int64_t c = cfg.in_channels, s = cfg.sample_size;
  Tensor latents;  // [B, C, s, s]
  if (params.seeds.empty()) {
    latents = noise.randn({b, c, s, s}, "the initial latents");
  } else {
    std::vector<Tensor> each;
    for (uint64_t seed : params.seeds)
      each.push_back(Generator(seed).randn({1, c, s, s}).to(device_));
    latents = ops::concat(each, 0);
  }

  // batches of kMaxBatch, progress over all of them
  const int batches = static_cast<int>((b + kMaxBatch - 1) / kMaxBatch);
  std::vector<Tensor> images;
  for (int k = 0; k < batches; ++k) {
    const int64_t first = k * kMaxBatch, n = std::min(kMaxBatch, b - first);
    const std::vector<std::string> prompts(params.prompts.begin() + first,
                                           params.prompts.begin() + first + n);
    std::function<void(int, int)> progress;
    if (params.progress)
      progress = [&](int done, int total) {
        params.progress(k * total + done, batches * total);
      };
    images.push_back(
        run_batch(params, prompts, latents.narrow(0, first, n), noise.generator(), progress));
  }
  return ops::concat(images, 0);  // [B, 3, H, W] in [0, 1]
}

Tensor TextDiTPipeline::run_batch(const TextDiTParams& params,
                                  const std::vector<std::string>& prompts, Tensor latents,
                                  Generator* noise,
                                  const std::function<void(int, int)>& progress) const {
  const int64_t b = static_cast<int64_t>(prompts.size());
  const int64_t c = transformer_->config().in_channels;
  std::unique_ptr<schedulers::Scheduler> scheduler = schedulers::make_scheduler(
      params.sampler.empty() ? scheduler_config_
                             : schedulers::config_for_sampler(params.sampler, scheduler_config_));

  // 1. text: [cond..., uncond...] (cond first, as in training's sample grids)
  const bool guided = params.cfg > 1.0f;
  std::vector<std::string> texts = prompts;
  if (guided) texts.insert(texts.end(), static_cast<size_t>(b), params.negative_prompt);
  const auto [states, pooled] = encode(texts);  // [B or 2B, T, C], [B or 2B, P]

  // 2. x_T scaled for the sampler
  scheduler->set_timesteps(params.steps);
  latents = latents * static_cast<float>(scheduler->init_noise_sigma());

  // 3. denoise
  const DenoiseFn model = [&](const Tensor& input, double t) {
    const int64_t n = input.size(0);
    const Tensor ts = Tensor::full({n}, t).to(device_);  // [N]
    const Tensor st = n == states.size(0) ? states : states.narrow(0, 0, n);
    const Tensor po = !pooled.defined() || n == pooled.size(0) ? pooled : pooled.narrow(0, 0, n);
    const Tensor out = transformer_->forward(input, ts, st, po);  // [N, C_out, s, s]
    return out.size(1) == c ? out : out.narrow(1, 0, c).contiguous();
  };
  DenoiseOptions opt;
  opt.cfg.scale = params.cfg;
  opt.cfg.order = guidance::CfgOrder::kCondFirst;
  opt.cfg.interval = params.guidance_interval;
  opt.generator = noise;
  opt.progress = progress;
  opt.preview = params.preview;
  // latents -> images [B, 3, H, W] in [0, 1] on the CPU (the previews' and the result's)
  const auto decode = [&](const Tensor& x0) {
    const Tensor z = x0 / static_cast<float>(vae_->config().scaling_factor);
    return vae_to_unit(vae_->decode(z).contiguous()).to(Device::kCPU);
  };
  opt.decode_preview = decode;
  latents = denoise(*scheduler, latents, model, opt);  // [B, C, s, s]

  // 4. decode
  return decode(latents);
}

void TextDiTPipeline::to(Device device) {
  text_encoder_->to(device);
  transformer_->to(device);
  vae_->to(device);
  device_ = device;
}

}  // namespace stipple::pipelines

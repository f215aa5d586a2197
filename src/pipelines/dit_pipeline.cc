#include "pipelines/dit_pipeline.h"

#include <filesystem>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"
#include "pipelines/denoise.h"

namespace stipple::pipelines {

namespace fs = std::filesystem;

void check_pipeline_layout(const std::string& folder, const std::string& pipeline,
                           const std::vector<std::string>& components) {
  STIPPLE_CHECK(fs::exists(folder), "no such model folder: ", folder);
  STIPPLE_CHECK(fs::is_directory(folder), folder, " is not a folder; a ", pipeline,
                " model is a diffusers folder with model_index.json and ",
                str_cat(components.size()), " component folders");
  const fs::path d(folder);
  std::string missing;
  auto need = [&](const fs::path& p) {
    if (!fs::exists(p)) missing += str_cat(missing.empty() ? "" : ", ", p.lexically_relative(d).generic_string());
  };
  need(d / "model_index.json");
  for (const std::string& c : components) {
    if (!fs::is_directory(d / c)) {
      missing += str_cat(missing.empty() ? "" : ", ", c, "/");
      continue;
    }
    if (c == "scheduler") {
      need(d / c / "scheduler_config.json");
    } else if (c == "tokenizer" || c == "tokenizer_2") {
      need(d / c / "vocab.json");
      need(d / c / "merges.txt");
    } else {
      need(d / c / "config.json");
    }
  }
  std::string expected;
  for (const std::string& c : components) expected += " " + c + "/";
  STIPPLE_CHECK(missing.empty(), folder, " is not a diffusers ", pipeline, " folder: missing ",
                missing, " (expected model_index.json and", expected, ")");
}

DiTPipeline DiTPipeline::from_pretrained(const std::string& folder) {
  check_pipeline_layout(folder, "DiTPipeline", {"transformer", "vae", "scheduler"});
  const fs::path d(folder);
  DiTPipeline p;
  p.transformer_ = models::DiTTransformer2DModel::from_pretrained((d / "transformer").string());
  p.vae_ = models::AutoencoderKL::from_pretrained((d / "vae").string());
  p.scheduler_config_ =
      schedulers::SchedulerConfig::from_json((d / "scheduler" / "scheduler_config.json").string());
  p.id2label_ = models::read_id2label((d / "model_index.json").string());
  if (p.id2label_.empty())
    p.id2label_ = models::read_id2label((d / "transformer" / "config.json").string());
  return p;
}

int64_t DiTPipeline::image_size() const {
  return transformer_->config().sample_size * vae_->config().downscale_factor();
}

std::vector<int64_t> DiTPipeline::label_ids(const std::vector<std::string>& names) const {
  std::vector<int64_t> ids = models::get_label_ids(id2label_, names);
  for (int64_t id : ids)
    STIPPLE_CHECK(id >= 0 && id < num_classes(), "class label ", id, " is outside [0, ",
                  num_classes(), ") of this model");
  return ids;
}

Tensor DiTPipeline::run(const DiTParams& params) const {
  autograd::NoGradGuard no_grad;
  const auto& cfg = transformer_->config();
  const int64_t b = static_cast<int64_t>(params.class_labels.size());
  STIPPLE_CHECK(b > 0, "DiTPipeline: give at least one class label");
  for (int64_t id : params.class_labels)
    STIPPLE_CHECK(id >= 0 && id < num_classes(), "class label ", id, " is outside [0, ",
                  num_classes(), ") of this model");
  STIPPLE_CHECK(params.steps >= 1, "DiTPipeline: steps must be at least 1, got ", params.steps);
  auto observe = [&](const std::string& name, const Tensor& v) {
    if (params.observe) params.observe(name, v);
  };
  NoiseSource noise(params.seed, params.noise);
  std::unique_ptr<schedulers::Scheduler> scheduler = schedulers::make_scheduler(
      params.sampler.empty() ? scheduler_config_
                             : schedulers::config_for_sampler(params.sampler, scheduler_config_));

  // 1. class labels: [labels, null x B] with guidance (cond first)
  const bool guided = params.cfg > 1.0f;
  std::vector<int64_t> labels = params.class_labels;
  if (guided) labels.insert(labels.end(), static_cast<size_t>(b), cfg.num_embeds_ada_norm);
  const Tensor label_tensor =
      Tensor::from_vector_i64(labels, {static_cast<int64_t>(labels.size())})
          .to(device_);  // [2B] or [B]

  // 2. timesteps and the initial noise x_T
  scheduler->set_timesteps(params.steps);
  const int64_t c = cfg.in_channels, s = cfg.sample_size;
  Tensor latents = noise.randn({b, c, s, s}, "the initial latents").to(device_);  // [B, C, s, s]
  latents = latents * static_cast<float>(scheduler->init_noise_sigma());

  // 3. denoise: guidance on the eps channels only; the learned sigma is dropped
  observe("denoiser.class_labels", label_tensor);
  const DenoiseFn model = [&](const Tensor& input, double t) {
    const int64_t n = input.size(0);
    const Tensor ts = Tensor::full({n}, t).to(device_);  // [N]
    observe("denoiser.sample", input);
    observe("denoiser.timestep", Tensor::full({1}, t));
    observe("denoiser.timestep_as_passed", ts);
    // [cond, uncond] labels: the first N (the conditional ones at an unguided step)
    const Tensor labels = n == label_tensor.size(0) ? label_tensor : label_tensor.narrow(0, 0, n);
    const Tensor out = transformer_->forward(input, ts, labels);  // [N, C_out, s, s]
    observe("denoiser.out", out);
    return out.narrow(1, 0, c).contiguous();  // [N, C, s, s]: eps; the learned sigma is dropped
  };
  DenoiseOptions opt;
  opt.cfg.scale = params.cfg;
  opt.cfg.order = guidance::CfgOrder::kCondFirst;
  opt.cfg.interval = params.guidance_interval;
  opt.generator = noise.generator();
  opt.progress = params.progress;
  opt.preview = params.preview;
  opt.decode_preview = [&](const Tensor& x0) {
    return vae_to_unit(vae_->decode(x0 / static_cast<float>(vae_->config().scaling_factor)));
  };
  opt.after_step = [&](int, double, const Tensor& x) {
    // diffusers steps the doubled batch, whose halves stay equal
    observe("scheduler_prev_sample", guided ? ops::concat({x, x}, 0) : x);
    return Tensor();
  };
  latents = denoise(*scheduler, latents, model, opt);  // [B, C, s, s]

  // 4. decode
  const Tensor z = latents / static_cast<float>(vae_->config().scaling_factor);
  observe("vae_decode.0.input", z);
  const Tensor decoded = vae_->decode(z).contiguous();  // [B, 3, H, W] in [-1, 1]
  observe("vae_decode.0.output", decoded);
  const Tensor images = vae_to_unit(decoded);
  observe("image", to_nhwc(images));
  return images.to(Device::kCPU);
}

void DiTPipeline::to(Device device) {
  transformer_->to(device);
  vae_->to(device);
  device_ = device;
}

}  // namespace stipple::pipelines

#include "bench_command.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/single_file.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "progress.h"

namespace stipple::cli {
namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

// SD 1.5's UNet (runwayml/stable-diffusion-v1-5 unet/config.json).
models::UNet2DConditionConfig sd15_unet_config() {
  nlohmann::json j;
  j["block_out_channels"] = {320, 640, 1280, 1280};
  j["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                           "DownBlock2D"};
  j["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                         "CrossAttnUpBlock2D"};
  j["layers_per_block"] = 2;
  j["cross_attention_dim"] = 768;
  j["attention_head_dim"] = 8;
  j["in_channels"] = 4;
  j["out_channels"] = 4;
  j["sample_size"] = 64;
  return models::UNet2DConditionConfig::from_json(io::JsonConfig(j, "SD 1.5 UNet config"));
}

// SD's VAE (128/256/512/512, 2 resnets per block, 4 latent channels).
models::AutoencoderKLConfig sd_vae_config() {
  nlohmann::json j;
  j["block_out_channels"] = {128, 256, 512, 512};
  j["down_block_types"] = {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                           "DownEncoderBlock2D"};
  j["up_block_types"] = {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                         "UpDecoderBlock2D"};
  j["layers_per_block"] = 2;
  j["latent_channels"] = 4;
  j["sample_size"] = 512;
  return models::AutoencoderKLConfig::from_json(io::JsonConfig(j, "SD VAE config"));
}

// Rounds every parameter to f16 in place: the values a half-precision checkpoint would give.
// They stay f32 in memory and are computed in f32 (oneDNN 2.6 has no f16 compute on AVX2).
void round_to_f16(nn::Module& m) {
  for (auto& [name, p] : m.named_parameters()) {
    const Tensor r = p.to(DType::kF16).to(DType::kF32).contiguous();
    std::memcpy(p.raw_data(), r.raw_data(), static_cast<size_t>(p.numel()) * sizeof(float));
  }
}

}  // namespace

BenchCommand::BenchCommand(CLI::App& app) {
  cmd_ = app.add_subcommand("bench",
                            "Time whole models on this machine (see `stipple bench unet --help`).");
  cmd_->require_subcommand(1);
  unet_cmd_ = cmd_->add_subcommand(
      "unet",
      "Seconds per denoising step of an SD 1.5-shaped UNet (320/640/1280/1280, cross-attention "
      "768, 8 heads) with classifier-free guidance (batch 2, 77 context tokens), the SD VAE's "
      "decode time (128/256/512/512) and the peak resident memory. Weights are random (seeded) "
      "unless --weights names a single-file checkpoint. Takes minutes on two cores.");
  unet_cmd_
      ->add_option("--dtype", dtype_,
                   "weight precision: f32, or f16 (weights rounded to half precision as "
                   "an f16 checkpoint gives them; still held and computed in f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16"}));
  unet_cmd_
      ->add_option("--weights", weights_,
                   "single-file .safetensors checkpoint (SD 1.x/2.x) whose UNet and VAE to "
                   "time instead of random weights")
      ->check(CLI::ExistingFile);
  unet_cmd_->add_option("--steps", steps_, "denoising steps to time")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  unet_cmd_->add_option("--width", width_, "image width (multiple of 8)")
      ->capture_default_str()
      ->check(CLI::Range(64, 2048));
  unet_cmd_->add_option("--height", height_, "image height (multiple of 8)")
      ->capture_default_str()
      ->check(CLI::Range(64, 2048));
  unet_cmd_->add_option("--seed", seed_, "seed for the random weights and inputs")
      ->capture_default_str();
  unet_cmd_->add_flag("--no-vae", no_vae_, "skip the VAE decode");
  unet_cmd_->add_flag("--quiet,-q", quiet_, "no progress bar");
}

int BenchCommand::run() {
  STIPPLE_CHECK(width_ % 8 == 0 && height_ % 8 == 0,
                "--width and --height must be multiples of "
                "8, got ",
                width_, "x", height_);
  autograd::NoGradGuard no_grad;  // inference: convolutions keep the blocked layout
  Generator gen(seed_);

  // 1. The models.
  double t0 = now_s();
  std::shared_ptr<models::UNet2DConditionModel> unet;
  std::shared_ptr<models::AutoencoderKL> vae;
  std::string source = "random weights (seed " + std::to_string(seed_) + ")";
  if (!weights_.empty()) {
    const io::SafetensorsFile f = io::SafetensorsFile::open(weights_);
    const bool has_vae = io::inspect_single_file(f).has_vae;
    io::SingleFileModels m = io::load_single_file(weights_, {}, true, has_vae && !no_vae_, false);
    unet = m.unet;
    vae = m.vae;
    source = weights_ + " (" + m.info.family + ")";
  } else {
    unet = std::make_shared<models::UNet2DConditionModel>(sd15_unet_config());
    unet->reset_parameters(gen);
    unet->eval();
    if (!no_vae_) {
      vae = std::make_shared<models::AutoencoderKL>(sd_vae_config());
      vae->reset_parameters(gen);
      vae->eval();
    }
  }
  if (dtype_ == "f16") {
    round_to_f16(*unet);
    if (vae) round_to_f16(*vae);
  }
  const double build_s = now_s() - t0;
  const auto& cfg = unet->config();
  std::printf(
      "UNet: %s, %.1f M parameters, block_out_channels %lld/%lld/..., cross-attention "
      "%lld, weights %s%s\n",
      source.c_str(), unet->num_parameters() / 1e6,
      static_cast<long long>(cfg.block_out_channels.at(0)),
      static_cast<long long>(cfg.block_out_channels.at(1)),
      static_cast<long long>(cfg.cross_attention_dim.at(0)), dtype_.c_str(),
      dtype_ == "f16" ? " (rounded to f16, held and computed in f32)" : "");
  std::printf("built in %.1f s; peak RSS so far %.0f MB\n", build_s, peak_rss_mb());

  // 2. Denoising steps: one batched call with the unconditional and conditional halves (CFG).
  const int64_t h = height_ / 8, w = width_ / 8;
  const Tensor latents = gen.randn({2, cfg.in_channels, h, w});              // [2, 4, h, w]
  const Tensor context = gen.randn({2, 77, cfg.cross_attention_dim.at(0)});  // [2, 77, D]
  const Tensor timestep = Tensor::scalar(500, DType::kI64);
  std::vector<double> step_s;
  {
    ProgressBar bar("unet steps", steps_, !quiet_);
    for (int i = 0; i < steps_; ++i) {
      const double s = now_s();
      const Tensor out = unet->forward(latents, timestep, context);  // [2, 4, h, w]
      step_s.push_back(now_s() - s);
      bar.update(i + 1);
      STIPPLE_CHECK(out.size(0) == 2, "unexpected UNet output ", out.describe());
    }
    bar.finish();
  }
  double later = 0;
  for (size_t i = 1; i < step_s.size(); ++i) later += step_s[i];
  std::printf("unet %dx%d, batch 2 (CFG), 77 tokens: ", width_, height_);
  for (size_t i = 0; i < step_s.size(); ++i) std::printf("%s%.2f", i ? ", " : "", step_s[i]);
  std::printf(" s/step");
  if (step_s.size() > 1) {
    std::printf("; mean after the first: %.2f s/step", later / (step_s.size() - 1));
  }
  std::printf("\n");

  // 3. VAE decode of one latent.
  if (vae) {
    const int64_t f = vae->config().downscale_factor();
    const Tensor z = gen.randn({1, vae->config().latent_channels, height_ / f, width_ / f});
    const double s = now_s();
    const Tensor image = vae->decode(z);  // [1, 3, H, W]
    std::printf("vae decode %lldx%lld: %.2f s\n", static_cast<long long>(image.size(3)),
                static_cast<long long>(image.size(2)), now_s() - s);
  }
  std::printf("peak resident memory: %.0f MB\n", peak_rss_mb());
  return 0;
}

}  // namespace stipple::cli

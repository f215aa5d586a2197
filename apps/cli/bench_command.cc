#include "bench_command.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "device_option.h"
#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/single_file.h"
#include "io/torch_checkpoint.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "progress.h"

namespace stipple::cli {
namespace {

// The peak resident memory of the process from construction to stop(), sampled every 2 ms from
// /proc/self/statm (getrusage's peak also covers drawing the random weights in f32).
class RssSampler {
 public:
  RssSampler()
      : thread_([this] {
          while (!stop_.load()) {
            peak_mb_.store(std::max(peak_mb_.load(), current_rss_mb()));
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          }
        }) {}
  ~RssSampler() { stop(); }
  double stop() {  // MB
    if (thread_.joinable()) {
      stop_.store(true);
      thread_.join();
    }
    return std::max(peak_mb_.load(), current_rss_mb());
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<double> peak_mb_{0};
  std::thread thread_;
};

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

// Stores every weight matrix and kernel (parameters of 2 or more dims: Linear and Conv2d
// weights, 99.9% of the elements) as f16, as a half-precision checkpoint ships them; biases and
// norm parameters stay f32. The handles the layers hold see the change (same TensorImpl).
// Convolutions convert f16 weights to f32 while reordering them; matmuls convert per call
// (oneDNN 2.6 has no f16 compute on these CPUs).
void store_as_f16(nn::Module& m) {
  for (auto& [name, p] : m.named_parameters()) {
    if (p.dim() < 2 || p.dtype() != DType::kF32) continue;
    const Tensor h = p.to(DType::kF16).contiguous();
    TensorImpl& impl = p.impl();
    impl.storage = h.storage();
    impl.offset = h.storage_offset();
    impl.strides = h.strides();
    impl.dtype = DType::kF16;
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
                   "weight precision: f32, or f16 (weight matrices and kernels stored in half "
                   "precision as an f16 checkpoint ships them; computed in f32)")
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

  checkpoint_cmd_ = cmd_->add_subcommand(
      "checkpoint",
      "Write a diffusers folder with SD 1.5's or SDXL's real shapes and seeded random weights, "
      "for `stipple bench generate` (SD 1.5: 1.1 B parameters, 2.1 GB in f16; SDXL: 3.5 B, "
      "6.9 GB).");
  checkpoint_cmd_->add_option("--family", checkpoint_.family, "sd15 or sdxl")
      ->check(CLI::IsMember({"sd15", "sdxl"}))
      ->capture_default_str();
  checkpoint_cmd_->add_option("--out", checkpoint_.out, "a new folder")->required();
  checkpoint_cmd_
      ->add_option("--tokenizer", checkpoint_.tokenizer,
                   "a CLIP tokenizer folder (vocab.json, merges.txt) to copy in")
      ->required()
      ->check(CLI::ExistingDirectory);
  checkpoint_cmd_->add_option("--dtype", checkpoint_.dtype, "f16 or f32")
      ->check(CLI::IsMember({"f16", "f32"}))
      ->capture_default_str();
  checkpoint_cmd_->add_option("--seed", checkpoint_.seed)->capture_default_str();

  generate_cmd_ = cmd_->add_subcommand(
      "generate",
      "Time one text-to-image generation through the engine (open, text encoding, steps, VAE "
      "decode) and report the process's peak resident memory.");
  generate_cmd_->add_option("--model", generate_.model, "a model folder or file")->required();
  generate_cmd_
      ->add_option("--weight-precision", generate_.weight_precision, "stored, f32, f16 or bf16")
      ->check(CLI::IsMember({"stored", "f32", "f16", "bf16"}))
      ->capture_default_str();
  generate_cmd_->add_flag("--low-memory", generate_.low_memory,
                          "each component resident only during its stage");
  add_device_option(generate_cmd_, generate_.device, "the model");
  generate_cmd_->add_option("--steps", generate_.steps)
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  generate_cmd_->add_option("--width", generate_.width, "0: the model's default")
      ->check(CLI::Range(0, 4096));
  generate_cmd_->add_option("--height", generate_.height, "0: the model's default")
      ->check(CLI::Range(0, 4096));
  generate_cmd_->add_option("--sampler", generate_.sampler, "default: the model's");
  generate_cmd_->add_flag("--verbose", generate_.verbose,
                          "resident and tensor memory after each step");
}

int BenchCommand::run() {
  if (checkpoint_cmd_->parsed()) return bench_checkpoint(checkpoint_);
  if (generate_cmd_->parsed()) return bench_generate(generate_);
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
    const io::SafetensorsFile f = io::open_weights_file(weights_);
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
    store_as_f16(*unet);
    if (vae) store_as_f16(*vae);
  }
  unet->freeze_for_inference();  // weights are constant: convolutions keep them reordered
  if (vae) vae->freeze_for_inference();
  Storage::trim_cache();  // the blocks freed while building are not activation-sized
  const double build_s = now_s() - t0;
  const auto& cfg = unet->config();
  std::printf(
      "UNet: %s, %.1f M parameters, block_out_channels %lld/%lld/..., cross-attention "
      "%lld, weights %s%s\n",
      source.c_str(), unet->num_parameters() / 1e6,
      static_cast<long long>(cfg.block_out_channels.at(0)),
      static_cast<long long>(cfg.block_out_channels.at(1)),
      static_cast<long long>(cfg.cross_attention_dim.at(0)), dtype_.c_str(),
      dtype_ == "f16" ? " (weights stored as f16, computed in f32)" : "");
  std::printf("built in %.1f s; peak RSS so far %.0f MB\n", build_s, peak_rss_mb());
  // Random weights are drawn in f32 first; a checkpoint would load without that peak. The
  // inference peak is measured on its own from here.
  RssSampler rss;

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
  std::printf("peak resident memory: %.0f MB (steps and decode alone: %.0f MB)\n", peak_rss_mb(),
              rss.stop());
  return 0;
}

}  // namespace stipple::cli

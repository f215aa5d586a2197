#include "bench_pipeline.h"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include <stipple/stipple.h>

#include "autograd/grad_mode.h"
#include "core/block_cache.h"
#ifdef STIPPLE_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#include "core/error.h"
#include "core/rng.h"
#include "core/storage.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "nn/module.h"

namespace stipple::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The published configs (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0)
// with the fields stipple reads.
json unet_config(bool xl) {
  json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["in_channels"] = 4;
  j["out_channels"] = 4;
  j["layers_per_block"] = 2;
  j["act_fn"] = "silu";
  j["norm_num_groups"] = 32;
  j["flip_sin_to_cos"] = true;
  j["freq_shift"] = 0;
  if (xl) {
    j["block_out_channels"] = {320, 640, 1280};
    j["down_block_types"] = {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
    j["up_block_types"] = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"};
    j["attention_head_dim"] = {5, 10, 20};
    j["transformer_layers_per_block"] = {1, 2, 10};
    j["cross_attention_dim"] = 2048;
    j["addition_embed_type"] = "text_time";
    j["addition_time_embed_dim"] = 256;
    j["projection_class_embeddings_input_dim"] = 2816;
    j["use_linear_projection"] = true;
    j["sample_size"] = 128;
  } else {
    j["block_out_channels"] = {320, 640, 1280, 1280};
    j["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"};
    j["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"};
    j["attention_head_dim"] = 8;
    j["cross_attention_dim"] = 768;
    j["sample_size"] = 64;
  }
  return j;
}

json vae_config(bool xl) {
  json j;
  j["_class_name"] = "AutoencoderKL";
  j["in_channels"] = 3;
  j["out_channels"] = 3;
  j["latent_channels"] = 4;
  j["layers_per_block"] = 2;
  j["norm_num_groups"] = 32;
  j["act_fn"] = "silu";
  j["block_out_channels"] = {128, 256, 512, 512};
  j["down_block_types"] = std::vector<std::string>(4, "DownEncoderBlock2D");
  j["up_block_types"] = std::vector<std::string>(4, "UpDecoderBlock2D");
  j["sample_size"] = xl ? 1024 : 512;
  j["scaling_factor"] = xl ? 0.13025 : 0.18215;
  j["force_upcast"] = xl;
  return j;
}

// CLIP ViT-L/14's text tower (SD 1.x, SDXL's first encoder) or OpenCLIP ViT-bigG/14's with its
// projection (SDXL's second).
json text_config(bool big_g) {
  json j;
  j["architectures"] = {big_g ? "CLIPTextModelWithProjection" : "CLIPTextModel"};
  j["model_type"] = "clip_text_model";
  j["vocab_size"] = 49408;
  j["max_position_embeddings"] = 77;
  j["hidden_size"] = big_g ? 1280 : 768;
  j["intermediate_size"] = big_g ? 5120 : 3072;
  j["num_attention_heads"] = big_g ? 20 : 12;
  j["num_hidden_layers"] = big_g ? 32 : 12;
  j["projection_dim"] = big_g ? 1280 : 768;
  j["hidden_act"] = big_g ? "gelu" : "quick_gelu";
  j["layer_norm_eps"] = 1e-5;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 2;
  j["pad_token_id"] = 1;
  return j;
}

json scheduler_config() {
  json j;
  j["_class_name"] = "EulerDiscreteScheduler";
  j["beta_start"] = 0.00085;
  j["beta_end"] = 0.012;
  j["beta_schedule"] = "scaled_linear";
  j["num_train_timesteps"] = 1000;
  j["prediction_type"] = "epsilon";
  j["steps_offset"] = 1;
  j["timestep_spacing"] = "leading";
  return j;
}

void write_json(const fs::path& path, const json& j) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  STIPPLE_CHECK(f.good(), "cannot write ", path.string());
}

// Writes `m`'s state with seeded random weights in `dtype`: matrices and kernels ~ N(0, 1/fan_in)
// (activations keep their scale through the layers), other tensors as the module built them
// (norm scales 1, biases 0). The module was built under a LazyZeroScope and is never written, so
// only the file's tensors become resident.
void write_random(const nn::Module& m, const fs::path& file, DType dtype, Generator& gen) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : m.state_dict()) {
    if (t.dim() >= 2) {
      const double fan_in = static_cast<double>(t.numel() / t.size(0));
      out[name] = (gen.randn(t.shape()) * static_cast<float>(1.0 / std::sqrt(fan_in)))
                      .to(dtype)
                      .contiguous();
    } else {
      out[name] = t.to(t.dtype() == DType::kF32 ? dtype : t.dtype()).contiguous();
    }
  }
  fs::create_directories(file.parent_path());
  io::save_safetensors(file.string(), out);
}

}  // namespace

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double current_rss_mb() {
  long pages = 0, resident = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1048576.0;
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}

int bench_checkpoint(const BenchCheckpointOptions& o) {
  autograd::NoGradGuard no_grad;
  const bool xl = o.family == "sdxl";
  const fs::path out(o.out);
  STIPPLE_CHECK(!fs::exists(out) || fs::is_empty(out), o.out,
                " exists and is not empty; give a new folder");
  for (const char* f : {"vocab.json", "merges.txt"})
    STIPPLE_CHECK(fs::is_regular_file(fs::path(o.tokenizer) / f), "no ", f, " in ", o.tokenizer,
                  " (--tokenizer: a CLIP tokenizer folder)");
  const DType dtype = o.dtype == "f16" ? DType::kF16 : DType::kF32;
  Generator gen(o.seed);
  const double t0 = now_s();
  auto component = [&](const std::string& sub, const json& config, const char* weights,
                       auto build) {
    write_json(out / sub / "config.json", config);
    Storage::LazyZeroScope lazy;
    const auto model = build(io::JsonConfig(config, sub + "/config.json"));
    write_random(*model, out / sub / weights, dtype, gen);
    std::printf("%s: %.1f M parameters\n", sub.c_str(), model->num_parameters() / 1e6);
  };
  component("unet", unet_config(xl), "diffusion_pytorch_model.safetensors",
            [](const io::JsonConfig& c) {
              return std::make_shared<models::UNet2DConditionModel>(
                  models::UNet2DConditionConfig::from_json(c));
            });
  component("vae", vae_config(xl), "diffusion_pytorch_model.safetensors",
            [](const io::JsonConfig& c) {
              return std::make_shared<models::AutoencoderKL>(
                  models::AutoencoderKLConfig::from_json(c));
            });
  component("text_encoder", text_config(false), "model.safetensors", [](const io::JsonConfig& c) {
    return std::make_shared<models::CLIPTextModel>(models::CLIPTextConfig::from_json(c));
  });
  if (xl) {
    component("text_encoder_2", text_config(true), "model.safetensors",
              [](const io::JsonConfig& c) {
                return std::make_shared<models::CLIPTextModel>(
                    models::CLIPTextConfig::from_json(c), /*with_projection=*/true);
              });
  }
  for (const std::string& tok : xl ? std::vector<std::string>{"tokenizer", "tokenizer_2"}
                                   : std::vector<std::string>{"tokenizer"}) {
    fs::create_directories(out / tok);
    for (const auto& entry : fs::directory_iterator(o.tokenizer)) {
      const std::string name = entry.path().filename().string();
      if (name == "vocab.json" || name == "merges.txt" || name == "special_tokens_map.json" ||
          name == "tokenizer_config.json")
        fs::copy_file(entry.path(), out / tok / name);
    }
  }
  write_json(out / "scheduler" / "scheduler_config.json", scheduler_config());
  json index;
  index["_class_name"] = xl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline";
  index["unet"] = {"diffusers", "UNet2DConditionModel"};
  index["vae"] = {"diffusers", "AutoencoderKL"};
  index["text_encoder"] = {"transformers", "CLIPTextModel"};
  index["tokenizer"] = {"transformers", "CLIPTokenizer"};
  index["scheduler"] = {"diffusers", "EulerDiscreteScheduler"};
  if (xl) {
    index["text_encoder_2"] = {"transformers", "CLIPTextModelWithProjection"};
    index["tokenizer_2"] = {"transformers", "CLIPTokenizer"};
    index["force_zeros_for_empty_prompt"] = true;
  }
  write_json(out / "model_index.json", index);
  std::printf("wrote a random %s checkpoint (%s weights, seed %llu) to %s in %.0f s\n",
              xl ? "SDXL" : "SD 1.5", o.dtype.c_str(), static_cast<unsigned long long>(o.seed),
              o.out.c_str(), now_s() - t0);
  return 0;
}

int bench_generate(const BenchGenerateOptions& o) {
  const double t0 = now_s();
  OpenOptions open;
  open.weight_precision = o.weight_precision;
  open.low_memory = o.low_memory;
  open.device = o.device;
  const Engine engine = Engine::open(o.model, open);
  const double load_s = now_s() - t0;
  const double load_rss = peak_rss_mb();
  GenerateRequest r;
  r.prompt = "a photograph of an astronaut riding a horse";
  r.steps = o.steps;
  r.width = o.width;
  r.height = o.height;
  r.sampler = o.sampler;
  r.seed = 1;
  std::vector<double> at;  // time of each step's end
  // The resident memory sampled every 5 ms, with the stage it peaked in (steps done so far: 0 =
  // text encoding and the first step, all = the VAE decode).
  std::atomic<int> stage{0};
  std::atomic<bool> done{false};
  double sampled_peak = 0;
  int peak_stage = 0;
  std::thread sampler([&] {
    while (!done.load()) {
      const double mb = current_rss_mb();
      if (mb > sampled_peak) {
        sampled_peak = mb;
        peak_stage = stage.load();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  const double g0 = now_s();
  Storage::reset_peak_bytes();
  const size_t fresh0 = block_cache_fresh_bytes();
  const GenerateResult result = engine.generate(r, [&](const Progress& p) {
    if (p.step > static_cast<int>(at.size())) {
      at.push_back(now_s());
      stage.store(p.step);
      if (o.verbose)
        std::printf(
            "step %d: %.1f s, resident %.0f MB, tensors %.0f MB (peak %.0f MB; storages outside "
            "lazy zero mappings), freed blocks cached %.0f MB, fresh from the system so far "
            "%.0f MB\n",
            p.step, at.back() - g0, current_rss_mb(), Storage::live_bytes() / 1048576.0,
            Storage::peak_live_bytes() / 1048576.0, Storage::cached_bytes() / 1048576.0,
            static_cast<double>(block_cache_fresh_bytes() - fresh0) / 1048576.0);
    }
  });
  const double end = now_s();
  done.store(true);
  sampler.join();
  STIPPLE_CHECK(!at.empty() && !result.images.empty(), "the generation reported no steps");
  std::vector<double> step_s;
  for (size_t i = 1; i < at.size(); ++i) step_s.push_back(at[i] - at[i - 1]);
  double mean = 0;
  for (double s : step_s) mean += s;
  mean = step_s.empty() ? at[0] - g0 : mean / static_cast<double>(step_s.size());
  const ModelDescription& d = engine.description();
  std::printf(
      "%s (%s), %dx%d, %d steps, CFG %.1f, weights %s%s\n"
      "open %.1f s (peak RSS %.0f MB); text encoding + first step %.2f s; %.2f s/step after the "
      "first; last step to image (VAE decode) %.2f s; whole generation %.1f s\n"
      "peak resident memory: %.0f MB (the generation's own, sampled: %.0f MB, %s); blocks fresh "
      "from the system in the generation: %.0f MB\n",
      d.name.c_str(), d.family.c_str(), result.images[0].image.width,
      result.images[0].image.height, result.steps, result.cfg_scale, o.weight_precision.c_str(),
      o.low_memory ? ", low memory" : "", load_s, load_rss, at[0] - g0, mean, end - at.back(),
      end - g0, peak_rss_mb(), sampled_peak,
      peak_stage == 0                         ? "while encoding the prompt or in the first step"
      : peak_stage >= static_cast<int>(at.size()) ? "while decoding"
                                              : "during the steps",
      static_cast<double>(block_cache_fresh_bytes() - fresh0) / 1048576.0);
#ifdef STIPPLE_WITH_CUDA
  if (d.device == "cuda")
    std::printf("GPU memory: peak %.0f MB held by tensors, %.0f MB cached (%s)\n",
                static_cast<double>(cuda::peak_allocated_bytes()) / 1048576.0,
                static_cast<double>(cuda::cached_bytes()) / 1048576.0,
                cuda::device_description().c_str());
#endif
  return 0;
}

}  // namespace stipple::cli

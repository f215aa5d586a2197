// SDXL against diffusers 0.29.2 (tests/data/sdxl_tiny, sdxl_refiner_tiny and
// sdxl_tiny_single_file.safetensors, made by tools/refgen/make_sdxl_sets.py): the UNet's added
// text/time conditioning, the two text encoders' prompt embeddings (penultimate states, pooled
// projection, zeros for no negative prompt), text-to-image with DPM-Solver++ and Euler, the
// refiner's img2img with aesthetic scores, the base -> refiner hand-off, and the SGM single file.
// Tolerances are ../shared/conformance/README.md's: 1e-3 relative to max(1, max|ref|) on
// latents and intermediates, 2e-3 absolute on the [0, 1] image.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include <stipple/stipple.h>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "ops/ops.h"
#include "pipelines/conformance.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;
using pipelines::StableDiffusion;

std::string data(const std::string& rel) { return testing::test_data_path(rel); }

::testing::AssertionResult close(const Tensor& a, const Tensor& ref, double tol = 1e-3) {
  return testing::close_relative(a, ref, tol);
}

void expect_case(const std::string& kind, const std::string& folder) {
  const conformance::CaseResult r =
      conformance::run_pipeline_case(kind, data(folder), folder + "/" + kind);
  std::printf("%-32s max rel error %.3g %s\n", r.name.c_str(), r.max_error,
              r.passed ? "PASS" : "FAIL");
  EXPECT_TRUE(r.passed) << r.name << ": " << r.detail;
}

TEST(SDXL, UNetAddedConditioningMatchesDiffusers) {
  for (const std::string folder : {"sdxl_tiny", "sdxl_refiner_tiny"}) {
    SCOPED_TRACE(folder);
    const auto unet = models::UNet2DConditionModel::from_pretrained(data(folder + "/unet"));
    EXPECT_EQ(unet->config().addition_embed_type, "text_time");
    const auto ref = io::SafetensorsFile::open(data(folder + "/reference/unet_io.safetensors"));
    autograd::NoGradGuard no_grad;
    const models::AddedConditions added{ref.tensor("text_embeds"), ref.tensor("time_ids")};
    std::map<std::string, Tensor> inter;
    const Tensor out_a =
        unet->forward(ref.tensor("sample"), ref.tensor("timestep_a"),
                      ref.tensor("encoder_hidden_states"), Tensor(),
                      [&](const std::string& path, const Tensor& v) {
                        inter[path] = v.contiguous().clone();
                      },
                      added);
    EXPECT_TRUE(close(out_a, ref.tensor("out_a")));
    for (const char* name : {"time_proj", "time_embedding", "add_embedding", "conv_in",
                             "down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0",
                             "up_blocks.1", "conv_norm_out"}) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(inter.count(name));
      EXPECT_TRUE(close(inter[name], ref.tensor(std::string("inter_a.") + name)));
    }
    const Tensor out_b = unet->forward(ref.tensor("sample"), ref.tensor("timestep_b"),
                                       ref.tensor("encoder_hidden_states"), Tensor(), nullptr,
                                       added);
    EXPECT_TRUE(close(out_b, ref.tensor("out_b")));
  }
}

TEST(SDXL, UNetRejectsMissingOrMisfitAddedConditioning) {
  const auto unet = models::UNet2DConditionModel::from_pretrained(data("sdxl_tiny/unet"));
  const auto ref = io::SafetensorsFile::open(data("sdxl_tiny/reference/unet_io.safetensors"));
  autograd::NoGradGuard no_grad;
  auto message = [&](const models::AddedConditions& added) {
    try {
      unet->forward(ref.tensor("sample"), ref.tensor("timestep_a"),
                    ref.tensor("encoder_hidden_states"), Tensor(), nullptr, added);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({}).find("needs text_embeds"), std::string::npos);
  // A refiner's 5 time ids in the base: the widths no longer add up.
  const Tensor five = ref.tensor("time_ids").narrow(1, 0, 5).contiguous();
  EXPECT_NE(message({ref.tensor("text_embeds"), five}).find("projection_class_embeddings_input_dim"),
            std::string::npos);
}

TEST(SDXL, PromptEmbeddingsMatchDiffusersEncodePrompt) {
  const StableDiffusion sd = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  ASSERT_TRUE(sd.is_xl());
  const auto ref = io::SafetensorsFile::open(data("sdxl_tiny/reference/text_encoders.safetensors"));
  const std::vector<std::string> prompts = {
      "a red circle", "A photo of an astronaut riding a horse on Mars, highly detailed"};
  const std::vector<std::string> negatives = {"blurry, low quality", "ugly"};
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(prompts[i]);
    auto row = [&](const std::string& name) { return ref.tensor(name).narrow(0, i, 1); };
    // The positive half; no guidance.
    const auto cond = sd.encode_prompts(prompts[i], "", 1, false);
    EXPECT_TRUE(close(cond.states, row("encode.prompt_embeds")));
    EXPECT_TRUE(close(cond.pooled, row("encode.pooled_prompt_embeds")));
    // No negative prompt: force_zeros_for_empty_prompt gives zeros, uncond first.
    const auto zeros = sd.encode_prompts(prompts[i], "", 1, true);
    EXPECT_TRUE(close(zeros.states.narrow(0, 0, 1), row("encode.neg_none.negative_prompt_embeds")));
    EXPECT_TRUE(
        close(zeros.pooled.narrow(0, 0, 1), row("encode.neg_none.negative_pooled_prompt_embeds")));
    EXPECT_TRUE(close(zeros.states.narrow(0, 1, 1), row("encode.prompt_embeds")));
    // A negative prompt is encoded like the prompt.
    const auto neg = sd.encode_prompts(prompts[i], negatives[i], 1, true);
    EXPECT_TRUE(close(neg.states.narrow(0, 0, 1), row("encode.neg_text.negative_prompt_embeds")));
    EXPECT_TRUE(
        close(neg.pooled.narrow(0, 0, 1), row("encode.neg_text.negative_pooled_prompt_embeds")));
  }
}

TEST(SDXL, TextToImageMatchesDiffusers) {
  expect_case("txt2img", "sdxl_tiny");           // DPM-Solver++ (2M), no negative: zeros
  expect_case("txt2img_euler", "sdxl_tiny");     // the folder's Euler
  expect_case("txt2img_negative", "sdxl_tiny");  // negative prompt, sizes and crop given
}

TEST(SDXL, RefinerImageToImageMatchesDiffusers) { expect_case("img2img", "sdxl_refiner_tiny"); }

TEST(SDXL, BaseToRefinerHandOffMatchesDiffusers) { expect_case("refiner_handoff", "sdxl_tiny"); }

TEST(SDXL, SingleFileLoadsTheSameWeights) {
  io::SingleFileOptions opt;
  opt.config_dir = data("sdxl_tiny");
  const std::string path = data("sdxl_tiny_single_file.safetensors");
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  const io::SingleFileInfo info = io::inspect_single_file(file, opt);
  EXPECT_TRUE(info.xl);
  EXPECT_EQ(info.family, "SDXL");
  EXPECT_TRUE(info.has_text_encoder && info.has_text_encoder_2 && info.has_vae);
  const io::SingleFileModels m = io::load_single_file(path, opt);
  ASSERT_TRUE(m.text_encoder && m.text_encoder_2);
  const StableDiffusion folder = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  auto same = [](const nn::Module& a, const nn::Module& b, const std::string& what) {
    const auto sa = a.state_dict(), sb = b.state_dict();
    ASSERT_EQ(sa.size(), sb.size()) << what;
    for (const auto& [name, t] : sa) {
      ASSERT_TRUE(sb.count(name)) << what << ": " << name;
      EXPECT_TRUE(testing::tensors_close(t.contiguous(), sb.at(name).contiguous(), 0.0))
          << what << ": " << name;
    }
  };
  same(*m.unet, folder.unet(), "unet");
  same(*m.vae, folder.vae(), "vae");
  same(*m.text_encoder, *folder.text_encoder(), "text_encoder");
  same(*m.text_encoder_2, *folder.text_encoder_2(), "text_encoder_2");
}

TEST(SDXL, SingleFileDetectsTheLayoutFromTheWeights) {
  // Without config_dir the configs come from names and shapes; the tiny model's head counts are
  // not SDXL's 64-wide heads, so only the structure is checked here.
  const io::SafetensorsFile file =
      io::SafetensorsFile::open(data("sdxl_tiny_single_file.safetensors"));
  io::SingleFileOptions opt;
  opt.norm_num_groups = 4;  // the tiny model's; SD checkpoints use 32
  const io::SingleFileInfo info = io::inspect_single_file(file, opt);
  EXPECT_EQ(info.family, "SDXL");
  const models::UNet2DConditionConfig& u = info.unet_config;
  EXPECT_EQ(u.addition_embed_type, "text_time");
  EXPECT_EQ(u.projection_class_embeddings_input_dim, 80);
  EXPECT_EQ(u.addition_time_embed_dim, 8);  // (80 - bigG's 32-wide projection) / 6 ids
  EXPECT_EQ(u.cross_attention_dim.at(0), 72);
  EXPECT_EQ(u.block_out_channels, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(u.down_block_types.at(0), "DownBlock2D");
  EXPECT_EQ(u.transformer_layers_per_block.at(1), (std::vector<int64_t>{2, 2}));
  EXPECT_TRUE(u.use_linear_projection);
  EXPECT_DOUBLE_EQ(info.vae_config.scaling_factor, 0.13025);
  EXPECT_EQ(info.text_config.hidden_size, 32);
  EXPECT_EQ(info.text_config.num_hidden_layers, 3);
  EXPECT_EQ(info.text_config_2.hidden_size, 40);
  EXPECT_EQ(info.text_config_2.num_hidden_layers, 3);  // all layers kept
  EXPECT_EQ(info.text_config_2.projection_dim, 32);
}

TEST(SDXL, SingleFileTextToImageMatchesTheFolder) {
  io::SingleFileOptions opt;
  opt.config_dir = data("sdxl_tiny");
  const StableDiffusion file = StableDiffusion::from_single_file(
      data("sdxl_tiny_single_file.safetensors"), data("sdxl_tiny/tokenizer"), opt);
  const StableDiffusion folder = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  pipelines::GenerationParams p;
  p.prompt = "a red circle";
  p.steps = 2;
  p.cfg = 5.0f;
  p.width = 96;
  p.height = 64;
  EXPECT_TRUE(close(file.run_txt2img(p), folder.run_txt2img(p), 1e-6));
}

TEST(SDXL, DerivedSecondTokenizerPadsWithExclamationMark) {
  // SDXL's tokenizer_2 is tokenizer/ padding with "!": a single file needs only one folder.
  const auto tok = text::ClipTokenizer::from_folder(data("sdxl_tiny/tokenizer"));
  const auto tok2 = text::ClipTokenizer::from_folder(data("sdxl_tiny/tokenizer_2"));
  const auto derived = tok.with_pad_token("!");
  for (const std::string text : {"a red circle!", "hello ! world", ""}) {
    EXPECT_EQ(derived.encode_padded(text, 77), tok2.encode_padded(text, 77)) << text;
  }
  EXPECT_THROW(tok.with_pad_token("no-such-symbol"), Error);
}

TEST(SDXL, HandOffFractionsAreChecked) {
  const StableDiffusion base = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  pipelines::GenerationParams p;
  p.prompt = "x";
  p.steps = 2;
  p.width = 96;
  p.height = 64;
  p.denoising_end = 1.5;
  EXPECT_THROW(base.run_latents(p), Error);
  p.denoising_end = 1.0;
  const Tensor latents = base.run_latents(p);
  pipelines::GenerationParams q = p;
  q.denoising_start = 0.0;
  EXPECT_THROW(base.run_refine(q, latents), Error);
  q.denoising_start = 0.5;
  EXPECT_THROW(base.run_refine(q, Tensor::zeros({1, 3, 8, 12})), Error);
}

TEST(SDXL, EngineRunsBaseThenRefiner) {
  OpenOptions opt;
  opt.refiner = data("sdxl_refiner_tiny");
  const Engine e = Engine::open(data("sdxl_tiny"), opt);
  const ModelDescription& d = e.description();
  EXPECT_EQ(d.family, "SDXL");
  EXPECT_EQ(d.pipeline, "StableDiffusionXLPipeline");
  EXPECT_EQ(d.default_sampler, "dpm++2m");
  EXPECT_DOUBLE_EQ(d.default_cfg_scale, 5.0);
  EXPECT_EQ(d.refiner, "sdxl_refiner_tiny");
  GenerateRequest r;
  r.prompt = "a red circle";
  r.steps = 10;
  r.width = 96;
  r.height = 64;
  r.seed = 3;
  r.sampler = "euler";
  r.refiner_switch_at = 0.7;
  int last_step = 0, last_total = 0;
  const GenerateResult out = e.generate(r, [&](const Progress& p) {
    EXPECT_GE(p.step, last_step);
    last_step = p.step;
    last_total = p.total;
  });
  EXPECT_EQ(last_step, 10);
  EXPECT_EQ(last_total, 10);
  EXPECT_NE(out.parameters.find("Refiner: sdxl_refiner_tiny, Refiner switch at: 0.7"),
            std::string::npos)
      << out.parameters;
  EXPECT_TRUE(out.notes.empty());

  // The same as the pipelines composed by hand: base to 0.7, refiner from there.
  const StableDiffusion base = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  const StableDiffusion refiner = StableDiffusion::from_pretrained(data("sdxl_refiner_tiny"));
  pipelines::GenerationParams p;
  p.prompt = r.prompt;
  p.steps = 10;
  p.cfg = 5.0f;
  p.sampler = "euler";
  p.seed = 3;
  p.width = 96;
  p.height = 64;
  p.denoising_end = 0.7;
  const Tensor latents = base.run_latents(p);
  pipelines::GenerationParams q = p;
  q.denoising_end = 1.0;
  q.denoising_start = 0.7;
  const Tensor images = refiner.run_refine(q, latents);  // [1, 3, 64, 96] in [0, 1]
  const Image& img = out.images.at(0).image;
  ASSERT_EQ(img.width, 96);
  ASSERT_EQ(img.height, 64);
  const std::vector<float> ref = images.contiguous().to_vector();
  int off = 0;
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 96; ++x)
      for (int c = 0; c < 3; ++c) {
        const float want = ref[(c * 64 + y) * 96 + x] * 255.0f;
        off += std::abs(img.pixels[(y * 96 + x) * 3 + c] - want) > 1.0f;
      }
  EXPECT_EQ(off, 0);
}

TEST(SDXL, RefinerWithNoStepLeftDecodesTheBaseLatents) {
  // 4 DPM-Solver++ steps are 801, 601, 401, 201: all at or above the 0.8 cutoff (200), so the
  // base runs them all and the refiner decodes (the tiny refiner shares the base's VAE).
  const StableDiffusion base = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  const StableDiffusion refiner = StableDiffusion::from_pretrained(data("sdxl_refiner_tiny"));
  pipelines::GenerationParams p;
  p.prompt = "a red circle";
  p.steps = 4;
  p.cfg = 5.0f;
  p.sampler = "dpm++2m";
  p.width = 96;
  p.height = 64;
  const Tensor whole = base.run_txt2img(p);
  p.denoising_end = 0.8;
  pipelines::GenerationParams q = p;
  q.denoising_end = 1.0;
  q.denoising_start = 0.8;
  EXPECT_TRUE(close(refiner.run_refine(q, base.run_latents(p)), whole, 1e-6));
}

TEST(SDXL, EngineRefinerErrorsAndNotes) {
  {
    OpenOptions opt;
    opt.refiner = data("no-such-refiner");
    try {
      Engine::open(data("sdxl_tiny"), opt);
      FAIL() << "a missing refiner opened";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    }
  }
  {
    // A refiner for a model that is not SDXL base.
    OpenOptions opt;
    opt.refiner = data("sdxl_refiner_tiny");
    try {
      Engine::open(data("sdxl_refiner_tiny"), opt);
      FAIL() << "a refiner refined a refiner";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("refiner"), std::string::npos) << e.what();
    }
  }
  // Without a refiner, refiner_switch_at is noted and ignored; a bad value is refused.
  const Engine e = Engine::open(data("sdxl_tiny"));
  GenerateRequest r;
  r.prompt = "x";
  r.steps = 2;
  r.width = 96;
  r.height = 64;
  r.refiner_switch_at = 0.5;
  const GenerateResult out = e.generate(r);
  ASSERT_EQ(out.notes.size(), 1u);
  EXPECT_NE(out.notes[0].find("no refiner"), std::string::npos) << out.notes[0];
  r.refiner_switch_at = 1.5;
  EXPECT_THROW(e.generate(r), Error);
  // The refiner alone does image-to-image only.
  const Engine alone = Engine::open(data("sdxl_refiner_tiny"));
  EXPECT_EQ(alone.description().family, "SDXL refiner");
  EXPECT_EQ(alone.description().tasks.front(), Task::kImageToImage);
}

}  // namespace
}  // namespace stipple

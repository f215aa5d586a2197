// The public API (include/stipple/stipple.h): every family opens through the registry with its
// defaults; generate() decides the task from the request, fills defaults, reports each image's
// seed and A1111 text, draws image i of a batch exactly as it draws it alone with seed + i,
// calls progress every step and stops on a cancel token; bad requests and paths are errors of
// the right kind whose message names the field or the file.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <stipple/stipple.h>

#include "core/error.h"
#include "ops/kernels.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "support/numerics.h"
#include "support/tiny_models.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;
using ::stipple::testing::shared_path;

const std::string kFashion = std::string(STIPPLE_SOURCE_DIR) + "/models/fashion-mnist-dit";

using ::stipple::testing::expect_error;

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / str_cat("stipple_engine_", name, "_", ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(Engine, OpensThePixelDiTWithItsDefaults) {
  const Engine e = Engine::open(kFashion);
  const ModelDescription& d = e.description();
  EXPECT_EQ(d.family, "pixel-space DiT");
  EXPECT_EQ(d.name, "fashion-mnist-dit");
  ASSERT_EQ(d.tasks.size(), 1u);
  EXPECT_EQ(d.tasks[0], Task::kClassToImage);
  EXPECT_EQ(d.default_steps, 30);
  // The folder's own sampling defaults (model_index.json's _stipple_sampling): UniPC, guidance
  // 2 at noise levels up to sigma 2.5.
  EXPECT_EQ(d.default_cfg_scale, 2.0);
  EXPECT_EQ(d.default_guidance_interval.low, 0.0);
  EXPECT_EQ(d.default_guidance_interval.high, 2.5);
  EXPECT_EQ(d.default_sampler, "unipc");
  EXPECT_EQ(d.default_width, 28);
  EXPECT_EQ(d.channels, 1);
  ASSERT_EQ(d.class_names.size(), 10u);
  EXPECT_EQ(d.class_names[7], "sneaker");
}

TEST(Engine, ClassToImageWithSeedsProgressAndText) {
  const Engine e = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"sneaker"};
  r.steps = 3;
  r.seed = 5;
  r.batch_size = 2;
  std::vector<Progress> seen;
  const GenerateResult out = e.generate(r, [&](const Progress& p) { seen.push_back(p); });
  EXPECT_EQ(out.task, Task::kClassToImage);
  ASSERT_EQ(out.images.size(), 2u);
  EXPECT_EQ(out.images[0].seed, 5u);
  EXPECT_EQ(out.images[1].seed, 6u);
  EXPECT_EQ(out.images[0].image.width, 28);
  EXPECT_EQ(out.images[0].image.channels, 1);
  EXPECT_EQ(out.images[0].image.pixels.size(), 28u * 28u);
  EXPECT_EQ(out.images[1].parameters,
            "class 7 (sneaker)\nSteps: 3, Sampler: UniPC, CFG scale: 2, Seed: 6, "
            "Size: 28x28, Model: fashion-mnist-dit, Guidance interval: 0 to 2.5");
  EXPECT_TRUE(out.notes.empty());
  // Progress: every step of both images, counted over the request.
  ASSERT_EQ(seen.size(), 6u);
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].step, static_cast<int>(i + 1));
    EXPECT_EQ(seen[i].total, 6);
  }
  // Image 1 of the batch is the image drawn alone with seed 6 (A1111's seed + i).
  GenerateRequest alone = r;
  alone.batch_size = 1;
  alone.seed = 6;
  EXPECT_EQ(e.generate(alone).images[0].image.pixels, out.images[1].image.pixels);
  // ...and a different seed draws a different image.
  EXPECT_NE(out.images[0].image.pixels, out.images[1].image.pixels);
}

TEST(Engine, SamplerNamesInBothSpellingsAndRandomSeeds) {
  const Engine e = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"bag"};
  r.steps = 2;
  r.seed = 3;
  r.sampler = "Euler a";
  const GenerateResult a = e.generate(r);
  r.sampler = "euler_a";
  const GenerateResult b = e.generate(r);
  EXPECT_EQ(a.images[0].image.pixels, b.images[0].image.pixels);
  EXPECT_NE(a.images[0].parameters.find("Sampler: Euler a,"), std::string::npos);
  r.seed = -1;  // random, and reported
  const GenerateResult c = e.generate(r);
  EXPECT_NE(c.images[0].parameters.find(str_cat("Seed: ", c.images[0].seed, ",")),
            std::string::npos);
  r.seed = static_cast<int64_t>(c.images[0].seed);
  EXPECT_EQ(e.generate(r).images[0].image.pixels, c.images[0].image.pixels);
}

TEST(Engine, CancelStopsAfterTheCurrentStep) {
  const Engine e = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"coat"};
  r.steps = 10;
  CancelToken cancel;
  int calls = 0;
  expect_error(
      [&] {
        e.generate(
            r,
            [&](const Progress& p) {
              ++calls;
              if (p.step == 2) cancel.cancel();
            },
            &cancel);
      },
      ErrorKind::kCancelled, "cancelled after step 2 of 10");
  EXPECT_EQ(calls, 2);
  // A token already set stops before any work; reset, it lets the next run through.
  expect_error([&] { e.generate(r, {}, &cancel); }, ErrorKind::kCancelled, "before it started");
  cancel.reset();
  r.steps = 1;
  EXPECT_EQ(e.generate(r, {}, &cancel).images.size(), 1u);
}

TEST(Engine, BadRequestsNameTheField) {
  const Engine e = Engine::open(kFashion);
  auto with = [&](auto edit) {
    GenerateRequest r;
    r.class_labels = {"dress"};
    r.steps = 1;
    edit(r);
    return [&e, r] { e.generate(r); };
  };
  const auto invalid = ErrorKind::kInvalidArgument;
  expect_error(with([](GenerateRequest& r) { r.class_labels.clear(); r.prompt = "a dress"; }),
               invalid, "is a class-to-image model: give class labels");
  expect_error(with([](GenerateRequest& r) { r.class_labels = {"spaceship"}; }), invalid,
               "unknown Fashion-MNIST class 'spaceship'");
  expect_error(with([](GenerateRequest& r) { r.class_labels = {"99999999999999999999999"}; }),
               invalid, "99999999999999999999999");
  expect_error(with([](GenerateRequest& r) { r.steps = 20000; }), invalid, "steps must be in");
  expect_error(with([](GenerateRequest& r) { r.cfg_scale = 1e308; }), invalid, "cfg_scale");
  expect_error(with([](GenerateRequest& r) { r.cfg_scale = std::nan(""); }), invalid,
               "cfg_scale");
  expect_error(with([](GenerateRequest& r) { r.sampler = "nope"; }), invalid,
               "unknown sampler \"nope\"");
  expect_error(with([](GenerateRequest& r) { r.seed = -2; }), invalid, "seed must be -1");
  expect_error(with([](GenerateRequest& r) { r.width = 64; }), invalid, "draws only 28x28");
  expect_error(with([](GenerateRequest& r) { r.batch_size = 0; }), invalid, "batch_size");
  expect_error(with([](GenerateRequest& r) { r.init_image = Image{2, 2, 3, {}}; }),
               ErrorKind::kUnsupported, "cannot do img2img");
  // Fields a class model does not use are reported, not silently dropped.
  GenerateRequest r;
  r.class_labels = {"dress"};
  r.steps = 1;
  r.negative_prompt = "blurry";
  const GenerateResult out = e.generate(r);
  ASSERT_EQ(out.notes.size(), 1u);
  EXPECT_NE(out.notes[0].find("negative_prompt"), std::string::npos);
}

TEST(Engine, PathsThatAreNotModels) {
  expect_error([] { Engine::open("/nonexistent/model"); }, ErrorKind::kNotFound,
               "no such model folder or file: /nonexistent/model");
  expect_error([] { Engine::open(std::string(STIPPLE_SOURCE_DIR) + "/docs"); },
               ErrorKind::kUnsupported, "is not a model stipple can open");
  expect_error([] { Engine::open(""); }, ErrorKind::kInvalidArgument, "no model path");
}

// OpenOptions::device: the model runs there (the emulated device: host memory behind the device
// interface, the CPU's reference kernels) and draws the CPU's images; an unknown name, a device
// this build or machine lacks, and low memory on a device are errors that say so.
TEST(Engine, TheDeviceOptionRunsTheModelThere) {
  const std::string emoji = std::string(STIPPLE_SOURCE_DIR) + "/models/emoji-t2i";
  const std::string sd = shared_path("conformance/sd_tiny");
  use_reference_kernels(true);
  auto same_images = [](const GenerateResult& a, const GenerateResult& b) {
    ASSERT_EQ(a.images.size(), b.images.size());
    for (size_t i = 0; i < a.images.size(); ++i)
      EXPECT_EQ(a.images[i].image.pixels, b.images[i].image.pixels) << "image " << i;
  };
  OpenOptions on;
  on.device = "emulated";
  GenerateRequest r;
  r.class_labels = {"bag"};
  r.steps = 3;
  r.seed = 4;
  const Engine fashion = Engine::open(kFashion, on);
  EXPECT_EQ(fashion.description().device, "emulated");
  EXPECT_EQ(Engine::open(kFashion).description().device, "cpu");
  same_images(Engine::open(kFashion).generate(r), fashion.generate(r));
  GenerateRequest t;
  t.prompts = {"rocket"};
  t.steps = 2;
  t.seed = 1;
  same_images(Engine::open(emoji).generate(t), Engine::open(emoji, on).generate(t));
  if (!sd.empty()) {
    GenerateRequest q;
    q.prompt = "a fox";
    q.steps = 2;
    q.seed = 5;
    same_images(Engine::open(sd).generate(q), Engine::open(sd, on).generate(q));
    OpenOptions low = on;
    low.low_memory = true;
    expect_error([&] { Engine::open(sd, low); }, ErrorKind::kUnsupported, "leave it out");
  }
  use_reference_kernels(false);
  OpenOptions bad;
  bad.device = "gpu";
  expect_error([&] { Engine::open(kFashion, bad); }, ErrorKind::kInvalidArgument,
               "unknown device 'gpu' (expected cpu or cuda)");
  bad.device = "cuda";  // this machine has no GPU (and the build may lack CUDA)
  try {
    Engine::open(kFashion, bad);
    SUCCEED() << "a GPU is present";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("device 'cuda': ", 0), 0u) << e.what();
  }
}

TEST(Engine, LatentDiTWithoutItsVaeIsAnErrorNotLatentsInAPng) {
  const std::string dit = shared_path("conformance/dit_tiny");
  if (dit.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const fs::path tmp = temp_dir("novae");
  fs::copy(dit, tmp / "dit", fs::copy_options::recursive);
  fs::remove_all(tmp / "dit" / "vae");
  expect_error([&] { Engine::open((tmp / "dit").string()); }, ErrorKind::kNotFound,
               "is a latent DiT (its transformer works on VAE latents) but has no vae/");
  fs::remove_all(tmp);
}

TEST(Engine, LatentDiTClassToImage) {
  const std::string dit = shared_path("conformance/dit_tiny");
  if (dit.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const Engine e = Engine::open(dit);
  EXPECT_EQ(e.description().family, "DiT");
  GenerateRequest r;
  r.class_labels = {"207"};
  r.steps = 2;
  r.seed = 0;
  const GenerateResult out = e.generate(r);
  ASSERT_EQ(out.images.size(), 1u);
  EXPECT_EQ(out.images[0].image.width, e.description().default_width);
  EXPECT_EQ(out.images[0].image.channels, 3);
}

TEST(Engine, StableDiffusionTasksAndFp16Variants) {
  const std::string sd = shared_path("conformance/sd_tiny");
  if (sd.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  // diffusers' fp16 variant file names, in every component that has weights.
  const fs::path tmp = temp_dir("fp16");
  fs::copy(sd, tmp / "sd", fs::copy_options::recursive);
  fs::remove_all(tmp / "sd" / "reference");
  for (const char* part : {"unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model",
                           "text_encoder/model"}) {
    const fs::path from = tmp / "sd" / (std::string(part) + ".safetensors");
    fs::rename(from, tmp / "sd" / (std::string(part) + ".fp16.safetensors"));
  }
  const Engine plain = Engine::open(sd);
  const Engine variant = Engine::open((tmp / "sd").string());
  EXPECT_EQ(plain.description().family, "SD 1.x");
  EXPECT_EQ(plain.description().tasks.size(), 3u);
  GenerateRequest r;
  r.prompt = "a red circle";
  r.steps = 2;
  r.seed = 7;
  r.width = r.height = 16;
  r.sampler = "ddim";
  const GenerateResult a = plain.generate(r);
  EXPECT_EQ(variant.generate(r).images[0].image.pixels, a.images[0].image.pixels);
  EXPECT_EQ(a.images[0].parameters,
            "a red circle\nSteps: 2, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 16x16, "
            "Model: sd_tiny");
  // img2img and inpainting through the same request type.
  r.init_image = a.images[0].image;
  r.strength = 0.5;
  const GenerateResult i2i = plain.generate(r);
  EXPECT_EQ(i2i.task, Task::kImageToImage);
  EXPECT_NE(i2i.images[0].parameters.find("Denoising strength: 0.5"), std::string::npos);
  Image mask{16, 16, 1, std::vector<uint8_t>(256, 0)};
  for (int i = 0; i < 128; ++i) mask.pixels[i] = 255;
  r.mask = mask;
  const GenerateResult inpaint = plain.generate(r);
  EXPECT_EQ(inpaint.task, Task::kInpaint);
  // The unmasked half keeps the init image, nearly (latent blending through the VAE).
  r.mask = Image{8, 8, 1, std::vector<uint8_t>(64, 0)};
  expect_error([&] { plain.generate(r); }, ErrorKind::kInvalidArgument, "the same size");
  r.mask.reset();
  r.init_image.reset();
  r.class_labels = {"3"};
  r.prompt.clear();
  expect_error([&] { plain.generate(r); }, ErrorKind::kInvalidArgument,
               "is a text-to-image model: give a prompt");
  fs::remove_all(tmp);
}

// A guidance interval: outside it a step takes the conditional prediction alone, so an interval
// that holds no step draws what guidance off draws (bit for bit: the same conditional calls), one
// that holds every step what full guidance draws; the parameters text says the interval.
TEST(Engine, GuidanceIntervalGuidesOnlyItsNoiseLevels) {
  std::vector<std::string> models = {kFashion};
  const std::string sd = shared_path("conformance/sd_tiny");
  if (!sd.empty()) models.push_back(sd);  // [uncond, cond] order: the conditional rows last
  for (const std::string& path : models) {
    SCOPED_TRACE(path);
    const Engine e = Engine::open(path);
    GenerateRequest r;
    if (path == kFashion) {
      r.class_labels = {"sandal"};
    } else {
      r.prompt = "a red circle";
      r.width = r.height = 16;
    }
    r.steps = 4;
    r.seed = 9;
    r.cfg_scale = 3.0;
    if (path == kFashion) {  // its folder's default interval (model_index.json)
      EXPECT_NE(e.generate(r).images[0].parameters.find("Guidance interval: 0 to 2.5"),
                std::string::npos);
    }
    r.guidance_interval = GuidanceInterval{};  // every step
    const GenerateResult full = e.generate(r);
    EXPECT_EQ(full.images[0].parameters.find("Guidance interval"), std::string::npos);
    r.guidance_interval = GuidanceInterval{0.0, 1e9};
    EXPECT_EQ(e.generate(r).images[0].image.pixels, full.images[0].image.pixels);
    r.guidance_interval = GuidanceInterval{1e8, 1e9};
    const GenerateResult none = e.generate(r);
    EXPECT_NE(none.images[0].parameters.find("Guidance interval: 1e+08 to 1e+09"),
              std::string::npos)
        << none.images[0].parameters;
    EXPECT_EQ(none.guidance_interval.low, 1e8);
    GenerateRequest off = r;
    off.guidance_interval.reset();
    off.cfg_scale = 1.0;
    EXPECT_EQ(e.generate(off).images[0].image.pixels, none.images[0].image.pixels);
    EXPECT_NE(full.images[0].image.pixels, none.images[0].image.pixels);
    r.guidance_interval = GuidanceInterval{2.0, 1.0};
    expect_error([&] { e.generate(r); }, ErrorKind::kInvalidArgument, "guidance interval");
  }
}

// Autoguidance: a folder whose sampling defaults name a guide model guides with it (described,
// said in the parameters); `autoguidance = false` draws what the same folder draws without one.
TEST(Engine, AutoguidanceByTheFoldersGuideModel) {
  const fs::path dir = temp_dir("autoguidance");
  const std::string plain = testing::write_tiny_generator((dir / "plain").string());
  const std::string guided = testing::write_tiny_generator((dir / "guided").string());
  testing::write_tiny_generator((dir / "guided" / "small").string(), false, 5);
  nlohmann::json idx = io::read_json_file(guided + "/model_index.json");
  idx["_stipple_sampling"] = {{"cfg", 3}, {"guide_model", "small"}};
  io::write_file_atomic(guided + "/model_index.json", idx.dump(2));
  const Engine with = Engine::open(guided), without = Engine::open(plain);
  EXPECT_EQ(with.description().guide_model, "small");
  EXPECT_EQ(without.description().guide_model, "");
  GenerateRequest r;
  r.class_labels = {"bag"};
  r.steps = 3;
  r.seed = 4;
  r.cfg_scale = 3.0;
  const GenerateResult a = with.generate(r);
  EXPECT_NE(a.images[0].parameters.find("Guide model: small"), std::string::npos)
      << a.images[0].parameters;
  const GenerateResult b = without.generate(r);
  EXPECT_EQ(b.images[0].parameters.find("Guide model"), std::string::npos);
  EXPECT_NE(a.images[0].image.pixels, b.images[0].image.pixels);
  r.autoguidance = false;
  const GenerateResult c = with.generate(r);
  EXPECT_EQ(c.images[0].image.pixels, b.images[0].image.pixels);
  EXPECT_EQ(c.images[0].parameters.find("Guide model"), std::string::npos);
  fs::remove_all(dir);
}

// Live previews: every `preview_every` steps (not after the last), the image being drawn at the
// request's size, converging to the final image; none unless asked for.
TEST(Engine, PreviewsShowTheImageAsItForms) {
  auto previews_of = [](const Engine& e, GenerateRequest r) {
    std::vector<std::pair<int, Image>> seen;
    const GenerateResult out = e.generate(r, [&](const Progress& p) {
      if (p.preview) seen.emplace_back(p.step, *p.preview);
    });
    return std::make_pair(seen, out.images[0].image);
  };
  auto mean_abs_diff = [](const Image& a, const Image& b) {
    double sum = 0;
    for (size_t i = 0; i < a.pixels.size(); ++i) sum += std::abs(a.pixels[i] - b.pixels[i]);
    return sum / static_cast<double>(a.pixels.size());
  };
  const Engine fashion = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {"trouser"};
  r.seed = 3;
  r.steps = 12;
  r.sampler = "ddim";  // forms an x0 estimate at every step
  // Guidance at every step: the model's own interval guides only the last steps, which then
  // move the image after the previews.
  r.cfg_scale = 2.0;
  r.guidance_interval = GuidanceInterval{};
  EXPECT_TRUE(previews_of(fashion, r).first.empty());
  r.preview_every = 4;
  const auto [seen, final_image] = previews_of(fashion, r);
  ASSERT_EQ(seen.size(), 2u);  // after steps 4 and 8
  EXPECT_EQ(seen[0].first, 4);
  EXPECT_EQ(seen[1].first, 8);
  EXPECT_EQ(seen[1].second.width, final_image.width);
  EXPECT_EQ(seen[1].second.channels, final_image.channels);
  EXPECT_LT(mean_abs_diff(seen[1].second, final_image), mean_abs_diff(seen[0].second, final_image));
  EXPECT_LT(mean_abs_diff(seen[1].second, final_image), 40.0);
  // A latent model's previews are decoded by its VAE.
  const std::string sd = shared_path("conformance/sd_tiny");
  if (sd.empty()) return;
  GenerateRequest t;
  t.prompt = "a red circle";
  t.steps = 4;
  t.width = t.height = 16;
  t.preview_every = 2;
  const auto [latent_seen, latent_final] = previews_of(Engine::open(sd), t);
  ASSERT_EQ(latent_seen.size(), 1u);
  EXPECT_EQ(latent_seen[0].second.width, 16);
  EXPECT_EQ(latent_seen[0].second.channels, 3);
}

TEST(Engine, RefusesAModelWhoseWeightsWouldNotFitBeforeLoading) {
  OpenOptions tight;
  tight.memory_limit_mb = 4;  // the fashion DiT's weights are ~23 MiB as f32
  expect_error([&] { Engine::open(kFashion, tight); }, ErrorKind::kResourceExhausted,
               "MiB for its weights, more than the memory limit of 4 MiB");
  EXPECT_GT(Engine::probe(kFashion).weights_bytes, uint64_t{20} << 20);
  EXPECT_EQ(Engine::probe(kFashion).name, "fashion-mnist-dit");
  EXPECT_EQ(Engine::probe(kFashion).family, "pixel-space DiT");
}

TEST(Engine, RefusesAGenerationThatWouldNotFitBeforeAllocating) {
  const std::string sd = shared_path("conformance/sd_tiny");
  if (sd.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  OpenOptions options;
  options.memory_limit_mb = 100;
  const Engine e = Engine::open(sd, options);
  GenerateRequest r;
  r.prompt = "x";
  r.steps = 1;
  r.width = r.height = 4096;  // the tiny VAE alone would need gigabytes at this size
  expect_error([&] { e.generate(r); }, ErrorKind::kResourceExhausted,
               "generating 4096x4096 with sd_tiny needs about ");
  r.width = r.height = 16;
  EXPECT_EQ(e.generate(r).images.size(), 1u);
}

TEST(Engine, AConfigThatDoesNotDescribeItsWeightsFailsBeforeBuilding) {
  const std::string sd = shared_path("conformance/sd_tiny");
  if (sd.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const fs::path tmp = temp_dir("emptyconfig");
  fs::copy(sd, tmp / "sd", fs::copy_options::recursive);
  fs::remove_all(tmp / "sd" / "reference");
  // `{}` means diffusers' defaults: a full SD 1.5 UNet (3.4 GB) that these weights do not fit.
  for (const char* part : {"unet", "vae"}) {
    const fs::path config = tmp / "sd" / part / "config.json";
    const fs::path kept = tmp / "kept.json";
    fs::copy_file(config, kept, fs::copy_options::overwrite_existing);
    std::ofstream(config) << "{}";
    expect_error([&] { Engine::open((tmp / "sd").string()); }, ErrorKind::kInvalidArgument,
                 "[block_out_channels[0], in_channels] = [");
    fs::copy_file(kept, config, fs::copy_options::overwrite_existing);
  }
  fs::remove_all(tmp);
}

TEST(Engine, ComponentFolderSaysWhatItLacks) {
  const std::string sd = shared_path("conformance/sd_tiny");
  if (sd.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  expect_error([&] { Engine::open(sd + "/unet"); }, ErrorKind::kUnsupported,
               "has no model_index.json");
}

TEST(Engine, PngRoundTripAndGrid) {
  Image img{3, 2, 3, {}};
  for (int i = 0; i < 18; ++i) img.pixels.push_back(static_cast<uint8_t>(i * 13));
  std::string text;
  const Image back = decode_png(encode_png(img, "a cat\nSteps: 1"), &text);
  EXPECT_EQ(back.pixels, img.pixels);
  EXPECT_EQ(text, "a cat\nSteps: 1");
  const Image grid = make_grid({img, img, img, img});
  EXPECT_EQ(grid.width, 6);
  EXPECT_EQ(grid.height, 4);
  EXPECT_EQ(grid.pixels[(2 * 6 + 3) * 3 + 1], img.pixels[1]);  // image 3's first pixel
  try {
    decode_png(std::vector<uint8_t>{1, 2, 3});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not a PNG file"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace stipple

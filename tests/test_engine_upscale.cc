// Upscaling through the public API: the x4 upscaler and stipple's super-resolution models open
// as families whose task is kUpscale (init_image is the low-resolution image), and a generator
// opened with OpenOptions::upscaler becomes a cascade whose images come out `scale` times larger.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <stipple/stipple.h>
#include <string>

#include "core/error.h"
#include "support/numerics.h"
#include "train/datasets.h"
#include "train/train_sr.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;

const std::string kFashion = std::string(STIPPLE_SOURCE_DIR) + "/models/fashion-mnist-dit";

using ::stipple::testing::expect_error;

Image test_image(int w, int h, int channels) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = channels;
  for (int i = 0; i < w * h * channels; ++i) im.pixels.push_back(static_cast<uint8_t>(i * 37 % 251));
  return im;
}

// A tiny super-resolution model trained for two steps (once per test binary).
const std::string& tiny_sr() {
  static const std::string dir = [] {
    const fs::path d =
        fs::temp_directory_path() / str_cat("stipple_engine_upscale_", ::getpid(), "_sr");
    fs::remove_all(d);
    train::SrTrainConfig c;
    c.block_out_channels = {8, 16};
    c.norm_num_groups = 4;
    c.layers_per_block = 1;
    c.steps = 2;
    c.batch_size = 4;
    c.limit_images = 8;
    c.eval_images = 0;
    c.out_dir = d.string();
    train::train_sr(c, false);
    return d.string();
  }();
  return dir;
}

bool have_fashion() {
  return fs::exists(std::string(train::FashionMnist::kDefaultDir) + "/train-images-idx3-ubyte.gz");
}

TEST(EngineUpscale, X4UpscalerIsAFamilyWhoseTaskIsUpscaling) {
  const std::string x4 = testing::test_data_path("x4_upscaler_tiny");
  EXPECT_EQ(Engine::probe(x4).family, "SD x4 upscaler");
  const Engine e = Engine::open(x4);
  const ModelDescription& d = e.description();
  EXPECT_EQ(d.family, "SD x4 upscaler");
  ASSERT_EQ(d.tasks.size(), 1u);
  EXPECT_EQ(d.tasks[0], Task::kUpscale);
  EXPECT_EQ(d.scale, 4);
  GenerateRequest r;
  r.prompt = "a red circle";
  r.init_image = test_image(24, 16, 3);
  r.steps = 2;
  r.seed = 5;
  r.noise_level = 30;
  r.batch_size = 2;
  int calls = 0;
  const GenerateResult res = e.generate(r, [&](const Progress&) { ++calls; });
  EXPECT_EQ(res.task, Task::kUpscale);
  ASSERT_EQ(res.images.size(), 2u);
  EXPECT_EQ(res.images[0].image.width, 96);
  EXPECT_EQ(res.images[0].image.height, 64);
  EXPECT_EQ(res.images[1].seed, 6u);
  EXPECT_EQ(calls, 4);
  EXPECT_NE(res.images[0].parameters.find("Noise level: 30"), std::string::npos)
      << res.images[0].parameters;
  // image 1 of the batch is the image drawn alone with seed 6
  r.batch_size = 1;
  r.seed = 6;
  EXPECT_EQ(e.generate(r).images[0].image.pixels, res.images[1].image.pixels);

  GenerateRequest none;
  none.prompt = "x";
  expect_error([&] { e.generate(none); }, ErrorKind::kInvalidArgument, "give init_image");
  r.noise_level = 351;
  expect_error([&] { e.generate(r); }, ErrorKind::kInvalidArgument, "noise level 351");
}

TEST(EngineUpscale, SuperResolutionModelAndACascade) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST is not installed";
  const Engine sr = Engine::open(tiny_sr());
  EXPECT_EQ(sr.description().family, "super-resolution");
  EXPECT_EQ(sr.description().scale, 2);
  EXPECT_EQ(sr.description().channels, 1);
  GenerateRequest r;
  r.init_image = test_image(9, 7, 3);  // RGB in, a greyscale model: taken as luma
  r.steps = 2;
  r.seed = 1;
  r.prompt = "ignored";
  const GenerateResult up = sr.generate(r);
  ASSERT_EQ(up.images.size(), 1u);
  EXPECT_EQ(up.images[0].image.width, 18);
  EXPECT_EQ(up.images[0].image.height, 14);
  EXPECT_EQ(up.images[0].image.channels, 1);
  ASSERT_EQ(up.notes.size(), 1u);
  EXPECT_NE(up.notes[0].find("no text conditioning"), std::string::npos);

  // a cascade: the Fashion-MNIST DiT's 28x28 garments, upscaled x2
  OpenOptions o;
  o.upscaler = tiny_sr();
  const Engine cascade = Engine::open(kFashion, o);
  EXPECT_FALSE(cascade.description().upscaler.empty());
  GenerateRequest c;
  c.class_labels = {"bag", "sneaker"};
  c.steps = 2;
  c.upscaler_steps = 2;
  c.noise_level = 5;
  c.seed = 3;
  int calls = 0;
  const GenerateResult res = cascade.generate(c, [&](const Progress&) { ++calls; });
  ASSERT_EQ(res.images.size(), 2u);
  EXPECT_EQ(res.images[0].image.width, 56);
  EXPECT_EQ(res.images[0].image.height, 56);
  EXPECT_EQ(calls, 4 + 4);  // the base's steps, then the upscaler's
  EXPECT_NE(res.images[0].parameters.find("Upscaler: "), std::string::npos);
  EXPECT_NE(res.images[0].parameters.find("Upscaler steps: 2, Noise level: 5"), std::string::npos)
      << res.images[0].parameters;

  OpenOptions bad;
  bad.upscaler = kFashion;
  expect_error([&] { Engine::open(kFashion, bad); }, ErrorKind::kInvalidArgument,
               "the upscaler " + kFashion);
  bad.upscaler = "/nonexistent/sr";
  expect_error([&] { Engine::open(kFashion, bad); }, ErrorKind::kNotFound, "/nonexistent/sr");
  OpenOptions twice;
  twice.upscaler = tiny_sr();
  expect_error([&] { Engine::open(tiny_sr(), twice); }, ErrorKind::kInvalidArgument,
               "is an upscaler itself");
}

class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override {
    fs::remove_all(fs::temp_directory_path() /
                   str_cat("stipple_engine_upscale_", ::getpid(), "_sr"));
  }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

}  // namespace
}  // namespace stipple

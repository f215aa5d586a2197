// Super-resolution (pipelines/upscale.h, train/train_sr.h): the resampling helpers against
// PyTorch's F.interpolate / avg_pool2d, the SR3 conditioning, exact resume of `train-sr`, and the
// pipeline on a tiny trained model.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "pipelines/pipeline_util.h"
#include "pipelines/upscale.h"
#include "schedulers/schedule.h"
#include "schedulers/scheduler.h"
#include "support/numerics.h"
#include "train/datasets.h"
#include "train/train_sr.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("stipple_test_upscale_" + std::to_string(::getpid())) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

bool have_fashion() {
  return fs::exists(std::string(train::FashionMnist::kDefaultDir) + "/train-images-idx3-ubyte.gz");
}

TEST(Resample, BicubicMatchesTorchInterpolate) {
  // torch 1.13: F.interpolate(x, size=..., mode="bicubic", align_corners=False)
  const Tensor x = Tensor::from_vector({0.0f, 1.0f, 0.5f, 2.0f, -1.0f, 0.25f}, {1, 1, 2, 3});
  const std::vector<float> up = {
      -0.3609009f, 0.135273f,  0.9609947f,  1.2058029f,  0.7314529f,  0.4541664f,
      0.4432373f,  0.4780045f, 0.5365524f,  0.5333099f,  0.470108f,   0.4324417f,
      1.7677002f,  1.0425034f, -0.162529f,  -0.5743256f, 0.0396576f,  0.3966599f,
      2.5718384f,  1.3852348f, -0.5869713f, -1.2468185f, -0.2216873f, 0.3749352f};
  const std::vector<float> odd = {-0.3029445f, 0.3960489f, 1.1736114f, 0.8716424f, 0.4591183f,
                                  1.0960002f,  0.5849997f, 0.0f,       0.1575002f, 0.411f,
                                  2.4949441f,  0.7739508f, -1.1736108f, -0.5566416f, 0.362882f};
  const std::vector<float> a = pipelines::resize_bicubic(x, 4, 6).to_vector();
  const std::vector<float> b = pipelines::resize_bicubic(x, 3, 5).to_vector();
  ASSERT_EQ(a.size(), up.size());
  ASSERT_EQ(b.size(), odd.size());
  for (size_t i = 0; i < up.size(); ++i) EXPECT_NEAR(a[i], up[i], 2e-6) << i;
  for (size_t i = 0; i < odd.size(); ++i) EXPECT_NEAR(b[i], odd[i], 2e-6) << i;
  // a constant stays constant, batches and channels are independent
  const Tensor c = Tensor::full({2, 3, 5, 4}, 0.25);
  for (float v : pipelines::resize_bicubic(c, 10, 8).to_vector()) EXPECT_NEAR(v, 0.25f, 1e-6);
}

TEST(Resample, AreaDownsampleIsTheBlockMean) {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
                                       {1, 1, 4, 4});
  EXPECT_EQ(pipelines::downsample_area(x, 2).to_vector(),
            (std::vector<float>{3.5f, 5.5f, 11.5f, 13.5f}));
  EXPECT_THROW(pipelines::downsample_area(Tensor::zeros({1, 1, 5, 4}), 2), Error);
}

TEST(Upscale, ConditionNoisesTheLowResImageThenUpsamples) {
  const std::vector<float> acp =
      schedulers::alphas_cumprod_from_betas(schedulers::make_betas("linear", 1000, 1e-4, 0.02));
  Generator g(3);
  const Tensor low = g.randn({2, 1, 4, 4}), noise = g.randn({2, 1, 4, 4});
  const Tensor cond = pipelines::sr_condition(low, {0, 100}, acp, noise, 2);  // [2, 1, 8, 8]
  ASSERT_EQ(cond.shape(), (Shape{2, 1, 8, 8}));
  // row 0: level 0 is the clean image; row 1: sqrt(acp) low + sqrt(1 - acp) noise
  const std::vector<float> clean = pipelines::resize_bicubic(low.narrow(0, 0, 1), 8, 8).to_vector();
  const std::vector<float> l = low.to_vector(), n = noise.to_vector();
  std::vector<float> mixed(16);
  for (int i = 0; i < 16; ++i)
    mixed[i] = std::sqrt(acp[100]) * l[16 + i] + std::sqrt(1 - acp[100]) * n[16 + i];
  const std::vector<float> noisy =
      pipelines::resize_bicubic(Tensor::from_vector(mixed, {1, 1, 4, 4}), 8, 8).to_vector();
  const std::vector<float> got = cond.to_vector();
  for (int i = 0; i < 64; ++i) {
    EXPECT_FLOAT_EQ(got[i], clean[i]) << i;
    EXPECT_NEAR(got[64 + i], noisy[i], 1e-6) << i;
  }
  EXPECT_THROW(pipelines::sr_condition(low, {0, 1000}, acp, noise, 2), Error);
}

train::SrTrainConfig tiny_sr(const std::string& out) {
  train::SrTrainConfig c;
  c.block_out_channels = {8, 16};
  c.norm_num_groups = 4;
  c.layers_per_block = 1;
  c.max_noise_level = 50;
  c.noise_level = 10;
  c.blur_prob = 0.5f;
  c.steps = 4;
  c.batch_size = 4;
  c.lr = 1e-3f;
  c.warmup = 1;
  c.checkpoint_every = 2;
  c.log_every = 1;
  c.eval_images = 0;
  c.limit_images = 16;
  c.out_dir = out;
  return c;
}

TEST(TrainSr, ResumeIsBitExactAndTheFolderUpscales) {
  if (!have_fashion()) GTEST_SKIP() << "Fashion-MNIST is not installed";
  const train::SrTrainConfig a = tiny_sr(temp_dir("sr_a"));
  train::train_sr(a, false);
  train::SrTrainConfig b = tiny_sr(temp_dir("sr_b"));
  b.steps = 2;
  train::train_sr(b, false);
  b.steps = 4;
  train::train_sr(b, true);
  const auto sa = io::load_safetensors(a.out_dir + "/training_state.safetensors");
  const auto sb = io::load_safetensors(b.out_dir + "/training_state.safetensors");
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, t] : sa) {
    ASSERT_TRUE(sb.count(name)) << name;
    if (name == "elapsed_seconds") continue;  // wall time
    const Tensor ca = t.contiguous(), cb = sb.at(name).contiguous();
    ASSERT_EQ(ca.shape(), cb.shape()) << name;
    EXPECT_EQ(std::memcmp(ca.raw_data(), cb.raw_data(), ca.numel() * dtype_size(ca.dtype())), 0)
        << name;
  }

  // The folder: a pixel-space x2 model for greyscale images
  const auto model = pipelines::SuperResolutionPipeline::from_pretrained(a.out_dir);
  EXPECT_EQ(model.scale(), 2);
  EXPECT_EQ(model.channels(), 1);
  EXPECT_EQ(model.default_noise_level(), 10);
  EXPECT_EQ(model.unet().config().in_channels, 2);
  EXPECT_EQ(model.scheduler_config().prediction_type, schedulers::PredictionType::kVPrediction);
  pipelines::UpscaleParams p;
  p.steps = 3;
  p.sampler = "dpm++2m";
  p.seed = 7;
  Generator g(1);
  const Tensor low = g.rand({2, 1, 7, 9});  // any size, in [0, 1]
  const Tensor out = model.run(low, p);
  ASSERT_EQ(out.shape(), (Shape{2, 1, 14, 18}));
  for (float v : out.to_vector()) ASSERT_TRUE(v >= 0.0f && v <= 1.0f);
  EXPECT_EQ(out.to_vector(), model.run(low, p).to_vector());  // seeded
  p.noise_level = 0;
  EXPECT_NE(out.to_vector(), model.run(low, p).to_vector());  // the level is an input

  // errors name the problem
  p.noise_level = 51;
  const std::string level = testing::error_message([&] { model.run(low, p); });
  EXPECT_NE(level.find("above this model's maximum 50"), std::string::npos) << level;
  p.noise_level = -1;
  // an RGB input is taken as its luma
  const Tensor rgb = g.rand({1, 3, 7, 9});
  EXPECT_EQ(model.run(rgb, p).to_vector(),
            model.run(pipelines::to_channels(rgb, 1), p).to_vector());
  EXPECT_NE(testing::error_message([&] { model.run(Tensor::zeros({1, 2, 7, 7}), p); })
                .find("[B, 1 or 3, h, w]"),
            std::string::npos);
  // another pipeline's folder (the x4 upscaler's, which has unet/ and scheduler/ too)
  const std::string other = testing::error_message([&] {
    pipelines::SuperResolutionPipeline::from_pretrained(testing::test_data_path("x4_upscaler_tiny"));
  });
  EXPECT_NE(other.find("is \"StableDiffusionUpscalePipeline\", not StippleSuperResolutionPipeline"),
            std::string::npos)
      << other;

  // held-out scoring against bicubic runs on the folder
  const train::HeldOut heldout = train::sr_heldout_images("fashion-mnist", "", 4);
  ASSERT_EQ(heldout.images.shape(), (Shape{4, 1, 28, 28}));
  pipelines::UpscaleParams ep;
  ep.steps = 2;
  const train::SrMetrics m = train::evaluate_sr(model, heldout, ep, "", "");
  EXPECT_EQ(m.images, 4);
  EXPECT_GT(m.psnr_bicubic, 10.0);
  EXPECT_GT(m.psnr_sr, 0.0);
  EXPECT_LT(m.accuracy_sr, 0.0);  // no classifier given
}

TEST(TrainSr, ConfigErrorsNameTheSetting) {
  train::SrTrainConfig c = tiny_sr("/tmp/unused");
  c.scale = 3;
  EXPECT_NE(testing::error_message([&] { c.validate(); }).find("scale must be 2 or 4"),
            std::string::npos);
  c = tiny_sr("/tmp/unused");
  c.noise_level = 60;
  EXPECT_NE(testing::error_message([&] { c.validate(); }).find("noise level (60)"),
            std::string::npos);
  c = tiny_sr("/tmp/unused");
  c.block_out_channels = {12};
  EXPECT_NE(testing::error_message([&] { c.validate(); }).find("channel count 12"),
            std::string::npos);
  c = tiny_sr("/nonexistent/run");
  EXPECT_NE(testing::error_message([&] { train::train_sr(c, true); }).find("cannot resume"),
            std::string::npos);
}

class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override {
    fs::remove_all(fs::temp_directory_path() /
                   ("stipple_test_upscale_" + std::to_string(::getpid())));
  }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

}  // namespace
}  // namespace stipple

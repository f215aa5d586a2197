// Pipelines against diffusers: every reference run of ../shared/conformance (txt2img, img2img,
// legacy and 9-channel inpainting, DiT) replayed with its stored noise, each intermediate within
// the README's tolerance (1e-3 relative to max(1, max|ref|) on latents, 2e-3 absolute on the
// [0, 1] image); plus the errors a user meets (sizes, strength, masks, folder layouts).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "pipelines/conformance.h"
#include "pipelines/dit_pipeline.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple::pipelines {
namespace {

namespace fs = std::filesystem;
using ::stipple::testing::shared_path;

void expect_case_passes(const std::string& kind, const std::string& folder) {
  const std::string dir = shared_path("conformance/" + folder);
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const conformance::CaseResult r = conformance::run_pipeline_case(kind, dir, folder + "/" + kind);
  std::printf("%-28s max rel error %.3g %s\n", r.name.c_str(), r.max_error,
              r.passed ? "PASS" : "FAIL");
  EXPECT_TRUE(r.passed) << r.name << ": " << r.detail;
  EXPECT_LE(r.max_error, 2e-3);
}

TEST(PipelineConformance, Txt2Img) { expect_case_passes("txt2img", "sd_tiny"); }
TEST(PipelineConformance, Img2Img) { expect_case_passes("img2img", "sd_tiny"); }
TEST(PipelineConformance, InpaintLegacy) { expect_case_passes("inpaint_legacy", "sd_tiny"); }
TEST(PipelineConformance, Inpaint9Channel) { expect_case_passes("inpaint", "sd_tiny_inpaint"); }
TEST(PipelineConformance, DiT) { expect_case_passes("dit_pipeline", "dit_tiny"); }

TEST(PipelineConformance, EverySharedModelCasePasses) {
  const std::string root = shared_path("conformance");
  if (root.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  int n = 0;
  for (const conformance::CaseRef& c : conformance::find_cases(root)) {
    // Schedulers and rng are test_schedulers' and test_rng's; pipelines are the tests above.
    if (c.kind == "scheduler" || c.kind == "rng" || c.kind == "txt2img" || c.kind == "img2img" ||
        c.kind == "inpaint_legacy" || c.kind == "inpaint" || c.kind == "dit_pipeline")
      continue;
    for (const conformance::CaseResult& r : conformance::run_case(c)) {
      ++n;
      EXPECT_TRUE(r.passed) << r.name << ": " << r.detail;
    }
  }
  EXPECT_EQ(n, 6);  // UNet, 2 VAEs, CLIP, DiT, tokenization
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class StableDiffusionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = shared_path("conformance/sd_tiny");
    if (dir_.empty()) GTEST_SKIP() << "../shared/conformance is absent";
    sd_ = std::make_unique<StableDiffusion>(StableDiffusion::from_pretrained(dir_));
  }
  GenerationParams small() const {
    GenerationParams p;
    p.prompt = "a red circle";
    p.steps = 2;
    p.width = p.height = 16;
    return p;
  }
  std::string dir_;
  std::unique_ptr<StableDiffusion> sd_;
};

TEST_F(StableDiffusionTest, SeedGivesTorchNoiseAndIsDeterministic) {
  GenerationParams p = small();
  p.seed = 7;
  p.num_images = 2;
  const Tensor a = sd_->run(p);
  EXPECT_EQ(a.shape(), (Shape{2, 3, 16, 16}));
  for (float v : a.to_vector()) ASSERT_TRUE(v >= 0.0f && v <= 1.0f);
  // The seeded run equals a run given torch.manual_seed(7); torch.randn([2, 4, 8, 8]) as latents.
  GenerationParams q = small();
  q.num_images = 2;
  q.latents = Generator(7).randn({2, 4, 8, 8});
  EXPECT_TENSORS_CLOSE(sd_->run(q), a, 0, 0);
  p.seed = 8;
  EXPECT_FALSE(::stipple::testing::tensors_close(sd_->run(p), a, 1e-6));
}

TEST_F(StableDiffusionTest, EncodePromptOrderAndBatch) {
  const Tensor e = sd_->encode_prompt("a red circle", "blurry", 3, true);
  EXPECT_EQ(e.shape(), (Shape{6, 77, 32}));
  const Tensor cond = sd_->encode_prompt("a red circle", "", 1, false);
  EXPECT_TENSORS_CLOSE(e.narrow(0, 5, 1), cond, 0, 0);  // [uncond x 3, cond x 3]
  const Tensor neg = sd_->encode_prompt("blurry", "", 1, false);
  EXPECT_TENSORS_CLOSE(e.narrow(0, 0, 1), neg, 0, 0);
}

TEST_F(StableDiffusionTest, BadParamsGetClearErrors) {
  GenerationParams p = small();
  p.width = 20;
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("multiples of 8"), std::string::npos);
  p = small();
  p.sampler = "nonsense";
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("nonsense"), std::string::npos);
  p = small();
  p.init_image = Tensor::full({1, 3, 16, 16}, 0.5);
  p.strength = 1.5;
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("strength must be in [0, 1]"), std::string::npos);
  p.strength = 0.5;
  p.mask = Tensor::ones({1, 1, 8, 8});
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("same size"), std::string::npos);
  p.mask = Tensor();
  p.width = p.height = 24;
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("init image is 16x16"), std::string::npos);
  p = small();
  p.init_image = Tensor::full({1, 3, 16, 16}, 0.5);
  p.strength = 0.1;  // int(2 * 0.1) = 0 steps
  EXPECT_NE(error_of([&] { sd_->run(p); }).find("leaves no denoising step"), std::string::npos);
}

TEST_F(StableDiffusionTest, Img2ImgStrengthSkipsSteps) {
  GenerationParams p = small();
  p.steps = 4;
  p.strength = 0.5;
  p.init_image = Tensor::full({1, 3, 16, 16}, 0.25);
  int calls = 0;
  p.progress = [&](int, int total) {
    ++calls;
    EXPECT_EQ(total, 2);
  };
  EXPECT_EQ(sd_->run(p).shape(), (Shape{1, 3, 16, 16}));
  EXPECT_EQ(calls, 2);
}

TEST(PipelineLayout, WrongFolderNamesTheMissingPart) {
  const fs::path tmp = fs::temp_directory_path() / str_cat("stipple_pipe_", ::getpid());
  fs::create_directories(tmp / "unet");
  std::ofstream(tmp / "model_index.json") << "{}";
  const std::string e = error_of([&] { StableDiffusion::from_pretrained(tmp.string()); });
  EXPECT_NE(e.find("missing unet/config.json, vae/, text_encoder/, tokenizer/, scheduler/"),
            std::string::npos)
      << e;
  EXPECT_NE(error_of([&] { StableDiffusion::from_pretrained("/nonexistent/model"); })
                .find("no such model folder"),
            std::string::npos);
  const std::string d = error_of([&] { DiTPipeline::from_pretrained(tmp.string()); });
  EXPECT_NE(d.find("transformer/"), std::string::npos) << d;
  fs::remove_all(tmp);
}

TEST(DiTPipelineTest, LabelsAndGuidanceOff) {
  const std::string dir = shared_path("conformance/dit_tiny");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const DiTPipeline dit = DiTPipeline::from_pretrained(dir);
  EXPECT_EQ(dit.label_ids({"207"}), (std::vector<int64_t>{207}));
  EXPECT_FALSE(error_of([&] { dit.label_ids({"1000"}); }).empty());
  DiTParams p;
  p.class_labels = {1, 2, 3};
  p.steps = 2;
  p.cfg = 1.0f;
  const Tensor img = dit.run(p);
  EXPECT_EQ(img.shape(), (Shape{3, 3, 32, 32}));
}

}  // namespace
}  // namespace stipple::pipelines

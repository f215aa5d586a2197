// Stable Diffusion's x4 upscaler against diffusers 0.29.2 (tests/data/x4_upscaler_tiny, made by
// tools/refgen/make_upscaler_set.py): the 7-channel UNet with noise-level class embeddings, the
// x4 VAE, and whole StableDiffusionUpscalePipeline runs replayed with their stored noise. The
// tolerances are the set README's: forwards 1e-4 and per-step tensors 1e-3 of max(1, max|ref|),
// the final image 2e-3 absolute.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::close_relative;

std::string set_dir() { return testing::test_data_path("x4_upscaler_tiny"); }

std::map<std::string, Tensor> reference(const std::string& name) {
  return io::load_safetensors(set_dir() + "/reference/" + name + ".safetensors");
}

TEST(X4Upscaler, UNetWithNoiseLevelClassLabelsMatchesDiffusers) {
  const auto unet = models::UNet2DConditionModel::from_pretrained(set_dir() + "/unet");
  EXPECT_EQ(unet->config().in_channels, 7);
  EXPECT_EQ(unet->config().num_class_embeds, 1000);
  const auto ref = reference("unet_io");
  for (const char* c : {"a", "b"}) {
    const std::string k(c);
    const Tensor out = unet->forward(ref.at("sample"), ref.at("timestep_" + k),
                                     ref.at("encoder_hidden_states"), ref.at("class_labels_" + k));
    EXPECT_TRUE(close_relative(out, ref.at("out_" + k), 1e-4)) << "case " << k;
  }
  // 12x20: not a multiple of the UNet's 8, so the upsamplers follow the skip sizes
  const Tensor out_c = unet->forward(ref.at("sample_c"), ref.at("timestep_c"),
                                     ref.at("encoder_hidden_states_c"), ref.at("class_labels_c"));
  EXPECT_TRUE(close_relative(out_c, ref.at("out_c"), 1e-4));
}

TEST(X4Upscaler, VaeDecodesFourTimesLarger) {
  const auto vae = models::AutoencoderKL::from_pretrained(set_dir() + "/vae");
  EXPECT_EQ(vae->config().downscale_factor(), 4);
  EXPECT_NEAR(vae->config().scaling_factor, 0.08333, 1e-9);
  const auto ref = reference("vae_io");
  EXPECT_TRUE(close_relative(vae->decode(ref.at("z")), ref.at("decoded"), 1e-4));
  const models::DiagonalGaussian post = vae->encode(ref.at("image"));
  EXPECT_TRUE(close_relative(post.mean, ref.at("latent_mean"), 1e-4));
  EXPECT_TRUE(close_relative(post.logvar, ref.at("latent_logvar"), 1e-4));
}

class X4Pipeline : public ::testing::TestWithParam<const char*> {};

TEST_P(X4Pipeline, WholeRunMatchesDiffusers) {
  const std::string name = GetParam();
  const auto sd = pipelines::StableDiffusion::from_pretrained(set_dir());
  ASSERT_TRUE(sd.is_upscaler());
  EXPECT_EQ(sd.max_noise_level(), 350);
  const auto ref = reference(name);
  const io::JsonConfig j =
      io::JsonConfig::from_file(set_dir() + "/reference/" + name + ".json");
  pipelines::GenerationParams p;
  p.prompt = j.string("prompt");
  p.negative_prompt = j.has("negative_prompt") ? j.string("negative_prompt") : "";
  p.steps = static_cast<int>(j.integer("num_inference_steps"));
  p.cfg = static_cast<float>(j.number("guidance_scale"));
  p.noise_level = static_cast<int>(j.integer("noise_level"));
  p.init_image = ref.at("image_in").permute({0, 3, 1, 2}).contiguous();  // NHWC -> NCHW
  p.noise = {ref.at("noise.0"), ref.at("noise.1")};
  std::map<std::string, std::vector<Tensor>> seen;
  p.observe = [&](const std::string& key, const Tensor& v) {
    seen[key].push_back(v.contiguous().clone());
  };
  const Tensor image = sd.run(p);  // [1, 3, 4h, 4w]
  EXPECT_TRUE(close_relative(seen.at("low_res.image_preprocessed")[0],
                             ref.at("low_res.image_preprocessed"), 1e-6));
  EXPECT_TRUE(close_relative(seen.at("low_res.noised_image")[0], ref.at("low_res.noised_image"),
                             1e-5));
  EXPECT_EQ(seen.at("denoiser.class_labels")[0].to_vector_i64(),
            ref.at("denoiser.class_labels").to_vector_i64());
  EXPECT_TRUE(close_relative(seen.at("denoiser.encoder_hidden_states")[0],
                             ref.at("denoiser.encoder_hidden_states"), 1e-4));
  const auto& steps = seen.at("latents_after_step");
  ASSERT_EQ(static_cast<int64_t>(steps.size()), ref.at("latents_after_step").size(0));
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_TRUE(close_relative(seen.at("denoiser.sample")[i],
                               ref.at("denoiser.sample").narrow(0, static_cast<int64_t>(i), 1).squeeze(0), 1e-3))
        << "step " << i;
    EXPECT_TRUE(close_relative(steps[i],
                               ref.at("latents_after_step").narrow(0, static_cast<int64_t>(i), 1).squeeze(0),
                               1e-3))
        << "step " << i;
  }
  EXPECT_TRUE(close_relative(seen.at("vae_decode.0.input")[0], ref.at("vae_decode.0.input"), 1e-3));
  if (ref.count("image")) {
    EXPECT_TENSORS_CLOSE(seen.at("image")[0], ref.at("image"), 2e-3, 0.0);
    EXPECT_EQ(image.shape(), (Shape{1, 3, ref.at("image").size(1), ref.at("image").size(2)}));
  }
}

INSTANTIATE_TEST_SUITE_P(Runs, X4Pipeline,
                         ::testing::Values("upscale", "upscale_nocfg", "upscale_6steps"));

TEST(X4Upscaler, BadInputIsNamed) {
  const auto sd = pipelines::StableDiffusion::from_pretrained(set_dir());
  pipelines::GenerationParams p;
  p.prompt = "x";
  p.steps = 1;
  EXPECT_NE(testing::error_message([&] { sd.run(p); }).find("needs the low-resolution image"),
            std::string::npos);
  p.init_image = Tensor::zeros({1, 3, 16, 16});
  p.noise_level = 351;
  EXPECT_NE(testing::error_message([&] { sd.run(p); }).find("noise level 351 is outside [0, 350]"),
            std::string::npos);
  p.noise_level = 20;
  p.init_image = Tensor::zeros({1, 3, 2, 2});
  EXPECT_NE(testing::error_message([&] { sd.run(p); }).find("needs at least 4x4"),
            std::string::npos);
}

}  // namespace
}  // namespace stipple

// A1111's extras routes on `stipple serve`: /sdapi/v1/upscalers lists the upscaler models served
// (Stable Diffusion's x4 upscaler here, the tiny reference folder), extra-single-image and
// extra-batch-images upscale base64 PNGs through them, say what they cannot honour in html_info,
// and bad requests get a 4xx naming the problem while the server keeps serving.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <stipple/stipple.h>

#include <string>

#include "../apps/server/server.h"
#include "support/numerics.h"
#include "support/serving.h"

namespace stipple::server {
namespace {

using nlohmann::json;

Image test_image(int w, int h) {
  Image im;
  im.width = w;
  im.height = h;
  im.channels = 3;
  for (int i = 0; i < w * h * 3; ++i) im.pixels.push_back(static_cast<uint8_t>(i * 37 % 251));
  return im;
}

std::string png_b64(const Image& im) { return base64_encode(encode_png(im)); }

ServerOptions with_x4() {
  ServerOptions o;
  o.models = {testing::test_data_path("x4_upscaler_tiny"), kFashion};
  return o;
}

TEST(ServerExtras, UpscalersListsNoneAndTheUpscalerModels) {
  Serving s(with_x4());
  const auto [status, list] = s.get("/sdapi/v1/upscalers");
  ASSERT_EQ(status, 200) << list.dump();
  ASSERT_EQ(list.size(), 2u) << list.dump();  // the Fashion-MNIST DiT is no upscaler
  EXPECT_EQ(list[0]["name"], "None");
  EXPECT_EQ(list[1]["name"], "x4_upscaler_tiny");
  EXPECT_EQ(list[1]["model_name"], "SD x4 upscaler");
}

TEST(ServerExtras, ExtraSingleImageUpscalesAndCarriesTheParameters) {
  Serving s(with_x4());
  const json body = {{"image", png_b64(test_image(12, 8))},
                     {"upscaler_1", "x4_upscaler_tiny"},
                     {"upscaling_resize", 4},
                     {"steps", 2},
                     {"seed", 3},
                     {"prompt", "a red circle"}};
  const auto [status, reply] = s.post("/sdapi/v1/extra-single-image", body.dump());
  ASSERT_EQ(status, 200) << reply.dump();
  std::string params;
  const Image out = decode_png(base64_decode(reply["image"].get<std::string>(), "image"), &params);
  EXPECT_EQ(out.width, 48);
  EXPECT_EQ(out.height, 32);
  EXPECT_NE(params.find("Seed: 3"), std::string::npos) << params;
  EXPECT_EQ(reply["html_info"], "<p></p>");
  // the same seed, the same pixels
  const auto [status2, again] = s.post("/sdapi/v1/extra-single-image", body.dump());
  ASSERT_EQ(status2, 200);
  EXPECT_EQ(again["image"], reply["image"]);

  // what it cannot honour is said: another factor, face restoration, a second upscaler
  json other = body;
  other["upscaling_resize"] = 2;
  other["gfpgan_visibility"] = 0.5;
  other["upscaler_2"] = "Lanczos";
  const auto [status3, noted] = s.post("/sdapi/v1/extra-single-image", other.dump());
  ASSERT_EQ(status3, 200) << noted.dump();
  const std::string info = noted["html_info"];
  EXPECT_NE(info.find("upscales by 4, not 2"), std::string::npos) << info;
  EXPECT_NE(info.find("gfpgan_visibility is not available"), std::string::npos) << info;
  EXPECT_NE(info.find("upscaler_2 is not available"), std::string::npos) << info;

  // "None": the image as it is
  const auto [status4, none] = s.post(
      "/sdapi/v1/extra-single-image",
      json{{"image", png_b64(test_image(5, 4))}, {"upscaler_1", "None"}}.dump());
  ASSERT_EQ(status4, 200);
  EXPECT_EQ(decode_png(base64_decode(none["image"].get<std::string>(), "image")).pixels,
            test_image(5, 4).pixels);
}

TEST(ServerExtras, ExtraBatchImagesUpscalesEveryImage) {
  Serving s(with_x4());
  const json body = {{"imageList", {{{"data", png_b64(test_image(8, 8))}, {"name", "a.png"}},
                                    {{"data", png_b64(test_image(4, 8))}, {"name", "b.png"}}}},
                     {"upscaler_1", "x4_upscaler_tiny"},
                     {"steps", 2}};
  const auto [status, reply] = s.post("/sdapi/v1/extra-batch-images", body.dump());
  ASSERT_EQ(status, 200) << reply.dump();
  ASSERT_EQ(reply["images"].size(), 2u);
  EXPECT_EQ(decode_png(base64_decode(reply["images"][1].get<std::string>(), "x")).width, 16);
}

TEST(ServerExtras, BadRequestsAreNamedAndTheServerKeepsServing) {
  Serving s(with_x4());
  auto expect = [&](const std::string& path, const json& body, int want, const std::string& part) {
    const auto [status, reply] = s.post(path, body.dump());
    EXPECT_EQ(status, want) << body.dump() << " -> " << reply.dump();
    EXPECT_NE(reply.value("detail", std::string()).find(part), std::string::npos)
        << reply.dump();
  };
  const std::string single = "/sdapi/v1/extra-single-image";
  const std::string img = png_b64(test_image(4, 4));
  expect(single, json::object(), 400, "image is required");
  expect(single, {{"image", "not base64!"}, {"upscaler_1", "x4_upscaler_tiny"}}, 400, "image");
  expect(single, {{"image", base64_encode({1, 2, 3})}, {"upscaler_1", "x4_upscaler_tiny"}}, 400,
         "image: ");
  expect(single, {{"image", img}, {"upscaler_1", "R-ESRGAN 4x+"}}, 404,
         "unknown model \"R-ESRGAN 4x+\"");
  expect(single, {{"image", img}, {"upscaler_1", "fashion-mnist-dit"}}, 400,
         "DiT model, not an upscaler");
  expect(single, {{"image", img}, {"upscaler_1", "x4_upscaler_tiny"}, {"noise_level", 999}}, 400,
         "noise level 999");
  expect(single, {{"image", img}, {"upscaler_1", "x4_upscaler_tiny"}, {"steps", 100000}}, 400,
         "steps must be in");
  const std::string batch = "/sdapi/v1/extra-batch-images";
  expect(batch, {{"imageList", json::array()}}, 400, "imageList must be a list");
  expect(batch, {{"imageList", {42}}, {"upscaler_1", "x4_upscaler_tiny"}}, 400,
         "imageList[0] must be an object");
  const auto [status, health] = s.get("/healthz");
  EXPECT_EQ(status, 200);
}

}  // namespace
}  // namespace stipple::server

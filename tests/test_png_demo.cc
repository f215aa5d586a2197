// PNG round trips with text chunks, unreadable-image errors, the grid helper, and a short run of
// the end-to-end demo (its loss must fall and its samples must be finite and in range).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "io/png.h"
#include "support/numerics.h"
#include "train/demo.h"

namespace stipple {
namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "stipple_test_png";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

TEST(Png, RoundTripWithParameters) {
  io::Image img{5, 3, 3, {}};
  for (int i = 0; i < 5 * 3 * 3; ++i) img.pixels.push_back(static_cast<uint8_t>(i * 17));
  const std::string path = temp_path("rgb.png");
  const std::string params = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler, Seed: 1";
  io::write_png(path, img, {{"parameters", params}});
  std::map<std::string, std::string> text;
  const io::Image back = io::read_png(path, &text);
  EXPECT_EQ(back.width, 5);
  EXPECT_EQ(back.height, 3);
  EXPECT_EQ(back.channels, 3);
  EXPECT_EQ(back.pixels, img.pixels);
  EXPECT_EQ(text["parameters"], params);
  // no temporary file left behind
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(path).parent_path()))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Png, TensorConversionAndGrid) {
  Tensor t = Tensor::from_vector({-1, 0, 1, 0.5f}, {1, 1, 2, 2});
  io::Image img = io::tensor_to_image(t);
  EXPECT_EQ(img.pixels, (std::vector<uint8_t>{0, 128, 255, 191}));
  Tensor back = io::image_to_tensor(img);
  EXPECT_TRUE(testing::tensors_close(back, t, 1.001 / 255, 0));  // half an 8-bit step
  Tensor grid = io::make_grid(testing::random_tensor({3, 1, 4, 4}, 1), 2, 1);
  EXPECT_EQ(grid.shape(), (Shape{1, 9, 9}));
}

TEST(Png, UnreadableFilesGiveClearErrors) {
  const std::string not_png = temp_path("not.png");
  std::ofstream(not_png) << "hello, not an image";
  try {
    io::read_png(not_png);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a PNG"), std::string::npos) << e.what();
  }
  EXPECT_THROW(io::read_png(temp_path("missing.png")), Error);
  // a truncated PNG
  io::Image img{8, 8, 1, std::vector<uint8_t>(64, 200)};
  const std::string good = temp_path("good.png");
  io::write_png(good, img);
  std::ifstream in(good, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string cut = temp_path("cut.png");
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  EXPECT_THROW(io::read_png(cut), Error);
}

TEST(Demo, ShortRunLearnsAndSamples) {
  train::DemoOptions o;
  o.train_steps = 120;
  o.batch_size = 32;
  o.hidden = 64;
  o.num_images = 4;
  o.diffusion_steps = 50;
  std::vector<float> losses;
  const train::DemoResult r =
      train::run_demo(o, [&](const char* phase, int, int, float loss) {
        if (std::string(phase) == "train") losses.push_back(loss);
      });
  ASSERT_EQ(losses.size(), 120u);
  double first = 0, last = 0;
  for (int i = 0; i < 20; ++i) {
    first += losses[i];
    last += losses[losses.size() - 1 - i];
  }
  EXPECT_LT(last, 0.8 * first) << "training loss did not fall: " << first / 20 << " -> "
                               << last / 20;
  EXPECT_EQ(r.images.shape(), (Shape{4, 1, 16, 16}));
  for (float v : r.images.to_vector()) {
    ASSERT_TRUE(std::isfinite(v));
    EXPECT_LE(std::fabs(v), 1.0f);
  }
}

}  // namespace
}  // namespace stipple

// PNG round trips with text chunks, unreadable-image errors, the grid helper, and a short run of
// the end-to-end demo (its loss must fall and its samples must be finite and in range).
#include <gtest/gtest.h>
#include <zlib.h>

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

// A PNG chunk: big-endian length, type, body, CRC of type and body.
std::string png_chunk(const std::string& type, const std::string& body) {
  std::string out;
  auto be32 = [&](uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
  };
  const std::string typed = type + body;
  be32(static_cast<uint32_t>(body.size()));
  out += typed;
  be32(static_cast<uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(typed.data()), static_cast<uInt>(typed.size()))));
  return out;
}

// A 4x4 8-bit grey PNG whose columns are 0, 85, 170, 255, with `extra` chunks before IDAT.
std::string grey_png_4x4(const std::string& extra) {
  const std::string ihdr("\0\0\0\4\0\0\0\4\x08\0\0\0\0", 13);  // 4x4, 8-bit grey
  std::string raw;
  for (int y = 0; y < 4; ++y) raw += std::string("\0\0\x55\xaa\xff", 5);  // filter 0, 4 pixels
  std::string z(compressBound(raw.size()), '\0');
  uLongf n = z.size();
  compress(reinterpret_cast<Bytef*>(z.data()), &n, reinterpret_cast<const Bytef*>(raw.data()),
           raw.size());
  z.resize(n);
  return "\x89PNG\r\n\x1a\n" + png_chunk("IHDR", ihdr) + extra + png_chunk("IDAT", z) +
         png_chunk("IEND", "");
}

// Found by fuzz/fuzz_png.cc: a grey PNG with a tRNS chunk decoded to 2 channels (grey + alpha),
// which no Image consumer handles. It is RGBA now, as grey+alpha PNGs are.
TEST(Png, GreyWithTransparencyChunkDecodesAsRgba) {
  const std::string bytes = grey_png_4x4(png_chunk("tRNS", std::string("\0\0", 2)));  // grey 0
  const io::Image img = io::decode_png(bytes, "trns.png");
  ASSERT_EQ(img.channels, 4);
  ASSERT_EQ(img.pixels.size(), 4u * 4 * 4);
  EXPECT_EQ(std::vector<uint8_t>(img.pixels.begin(), img.pixels.begin() + 8),
            (std::vector<uint8_t>{0, 0, 0, 0, 85, 85, 85, 255}));
  // Without tRNS it stays one grey channel.
  const io::Image grey = io::decode_png(grey_png_4x4(""), "grey.png");
  EXPECT_EQ(grey.channels, 1);
  EXPECT_EQ(grey.pixels, (std::vector<uint8_t>{0, 85, 170, 255, 0, 85, 170, 255, 0, 85, 170, 255,
                                               0, 85, 170, 255}));
}

// iTXt chunks (UTF-8; A1111 writes its parameters so for prompts outside Latin-1) were read as
// empty strings: their length is in itxt_length, not text_length.
TEST(Png, InternationalTextChunkIsRead) {
  const std::string value = "caf\xc3\xa9 \xe2\x98\x95, Steps: 20";
  // keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty translated
  // keyword, NUL, then the text.
  const std::string itxt = std::string("parameters\0\0\0\0\0", 15) + value;
  std::map<std::string, std::string> text;
  io::decode_png(grey_png_4x4(png_chunk("iTXt", itxt) +
                              png_chunk("tEXt", std::string("Software\0stipple", 16))),
                 "itxt.png", &text);
  EXPECT_EQ(text["parameters"], value);
  EXPECT_EQ(text["Software"], "stipple");
}

// Found by fuzz/fuzz_png.cc (fuzz/corpus/png/crash-ztxt_declares_800mb): a 205-byte PNG whose
// zTXt chunk declared 838860924 bytes made libpng allocate them before reading (a 15 s timeout
// under ASan, up to 2 GiB per chunk). Chunk lengths are now checked against the file first.
TEST(Png, ChunkLongerThanTheFileIsRefusedBeforeAllocation) {
  std::string bytes = grey_png_4x4(png_chunk("zTXt", std::string("parameters\0\0x", 13)));
  const size_t ztxt = bytes.find("zTXt") - 4;
  bytes.replace(ztxt, 4, std::string("\x32\x00\x00\x7c", 4));  // 838860924
  try {
    io::decode_png(bytes, "forged.png");
    FAIL() << "decoded a PNG with a forged chunk length";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("forged.png"), std::string::npos) << msg;
    EXPECT_NE(msg.find("zTXt chunk at byte 33 declares 838860924 data bytes"), std::string::npos)
        << msg;
  }
  // Cut inside IDAT: the same error, naming IDAT; bytes after IEND are ignored as before.
  const std::string good = grey_png_4x4("");
  EXPECT_THROW(io::decode_png(good.substr(0, good.size() - 20), "cut.png"), Error);
  EXPECT_EQ(io::decode_png(good + "trailing", "t.png").channels, 1);
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

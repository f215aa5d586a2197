// IDX reading (gzip and raw, and the errors for missing, corrupt and truncated files), the
// Fashion-MNIST loader on the real files when they are installed, class-name lookup, and the
// DataLoader's deterministic order, flips and exact save/restore of its position.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "support/numerics.h"
#include "train/datasets.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;

std::string temp_dir() {
  const fs::path p =
      fs::temp_directory_path() / ("stipple_test_datasets_" + std::to_string(::getpid()));
  fs::create_directories(p);
  return p.string();
}

std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims,
                               const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out = {0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims)
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(d >> s));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

void write_raw(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

std::string error_of(const std::function<void()>& fn) { return testing::error_message(fn); }

TEST(Idx, ReadsGzipAndRaw) {
  const std::string dir = temp_dir();
  const std::vector<uint8_t> data = {1, 2, 3, 4, 5, 6};
  write_gz(dir + "/a.gz", idx_bytes({2, 3}, data));
  write_raw(dir + "/a.idx", idx_bytes({2, 3}, data));
  for (const char* name : {"/a.gz", "/a.idx"}) {
    const IdxArray a = read_idx(dir + name);
    EXPECT_EQ(a.dims, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(a.data, data);
  }
  fs::remove_all(dir);
}

TEST(Idx, ErrorsNameTheProblem) {
  const std::string dir = temp_dir();
  EXPECT_NE(error_of([&] { read_idx(dir + "/none.gz"); }).find("no such file"), std::string::npos);

  write_gz(dir + "/short.gz", idx_bytes({10, 3}, {1, 2, 3}));
  const std::string truncated = error_of([&] { read_idx(dir + "/short.gz"); });
  EXPECT_NE(truncated.find("truncated"), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("short.gz"), std::string::npos) << truncated;

  write_gz(dir + "/magic.gz", {7, 7, 7, 7, 1, 2});
  EXPECT_NE(error_of([&] { read_idx(dir + "/magic.gz"); }).find("not an IDX file"),
            std::string::npos);

  std::vector<uint8_t> f32 = idx_bytes({1}, {0, 0, 0, 0});
  f32[2] = 0x0D;
  write_gz(dir + "/f32.gz", f32);
  EXPECT_NE(error_of([&] { read_idx(dir + "/f32.gz"); }).find("not supported"), std::string::npos);

  // A gzip stream cut in half: zlib's error reaches the message.
  std::vector<uint8_t> big(5000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 7919 % 251);
  write_gz(dir + "/cut.gz", idx_bytes({5000}, big));
  const auto size = fs::file_size(dir + "/cut.gz");
  fs::resize_file(dir + "/cut.gz", size / 2);
  const std::string cut = error_of([&] { read_idx(dir + "/cut.gz"); });
  EXPECT_NE(cut.find("cut.gz"), std::string::npos) << cut;
  EXPECT_TRUE(cut.find("truncated") != std::string::npos ||
              cut.find("corrupt") != std::string::npos)
      << cut;
  fs::remove_all(dir);
}

TEST(FashionMnist, MissingFolderTeaches) {
  const std::string msg =
      error_of([] { FashionMnist::load("/nonexistent/fashion", Split::kTrain); });
  EXPECT_NE(msg.find("/nonexistent/fashion"), std::string::npos) << msg;
  EXPECT_NE(msg.find("dataset-fashion-mnist"), std::string::npos) << msg;
}

TEST(FashionMnist, LoadsASyntheticFolder) {
  const std::string dir = temp_dir();
  std::vector<uint8_t> pixels(3 * 28 * 28, 0);
  pixels[0] = 255;            // image 0, top-left
  pixels[28 * 28 + 27] = 51;  // image 1, top-right
  write_gz(dir + "/t10k-images-idx3-ubyte.gz", idx_bytes({3, 28, 28}, pixels));
  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", idx_bytes({3}, {9, 0, 4}));
  const FashionMnist d = FashionMnist::load(dir, Split::kTest);
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.images().shape(), (Shape{3, 1, 28, 28}));
  EXPECT_EQ(d.labels().to_vector_i64(), (std::vector<int64_t>{9, 0, 4}));
  const std::vector<float> v = d.images().to_vector();
  EXPECT_FLOAT_EQ(v[0], 1.0f);
  EXPECT_FLOAT_EQ(v[1], -1.0f);
  EXPECT_FLOAT_EQ(v[28 * 28 + 27], 51 / 127.5f - 1.0f);

  const FashionMnist p = FashionMnist::load(dir, Split::kTest, /*pad_to_32=*/true);
  EXPECT_EQ(p.images().shape(), (Shape{3, 1, 32, 32}));
  const std::vector<float> pv = p.images().to_vector();
  EXPECT_FLOAT_EQ(pv[0], -1.0f);          // the frame
  EXPECT_FLOAT_EQ(pv[2 * 32 + 2], 1.0f);  // the old top-left pixel
  // The train split is missing from this folder: the message names the file.
  const std::string msg = error_of([&] { FashionMnist::load(dir, Split::kTrain); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte.gz"), std::string::npos) << msg;

  write_gz(dir + "/t10k-labels-idx1-ubyte.gz", idx_bytes({3}, {9, 0, 12}));
  EXPECT_NE(error_of([&] { FashionMnist::load(dir, Split::kTest); }).find("label 12"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(FashionMnist, RealFiles) {
  if (!fs::exists(std::string(FashionMnist::kDefaultDir) + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "Fashion-MNIST not installed (scripts/setup.sh installs it)";
  const FashionMnist test = FashionMnist::load(FashionMnist::kDefaultDir, Split::kTest, true);
  ASSERT_EQ(test.size(), 10000);
  EXPECT_EQ(test.images().shape(), (Shape{10000, 1, 32, 32}));
  std::vector<int64_t> counts(10, 0);
  for (int64_t l : test.labels().to_vector_i64()) ++counts.at(l);
  for (int64_t c : counts) EXPECT_EQ(c, 1000);  // balanced classes
  const std::vector<float> v = test.images().to_vector();
  float lo = 1, hi = -1;
  double mean = 0;
  for (float x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    mean += x;
  }
  mean /= v.size();
  EXPECT_FLOAT_EQ(lo, -1.0f);
  EXPECT_FLOAT_EQ(hi, 1.0f);
  EXPECT_LT(mean, -0.2);  // mostly black background
}

TEST(FashionMnist, ClassNames) {
  EXPECT_EQ(FashionMnist::class_names().size(), 10u);
  EXPECT_EQ(FashionMnist::class_index("T-Shirt"), 0);
  EXPECT_EQ(FashionMnist::class_index("top"), 0);
  EXPECT_EQ(FashionMnist::class_index("t-shirt/top"), 0);
  EXPECT_EQ(FashionMnist::class_index("Trouser"), 1);
  EXPECT_EQ(FashionMnist::class_index("ankle boot"), 9);
  EXPECT_EQ(FashionMnist::class_index("Ankle-Boot"), 9);
  EXPECT_EQ(FashionMnist::class_index("ankle_boot"), 9);
  EXPECT_EQ(FashionMnist::class_index("sneaker"), 7);
  EXPECT_EQ(FashionMnist::class_index("3"), 3);
  const std::string msg = error_of([] { FashionMnist::class_index("hat"); });
  EXPECT_NE(msg.find("'hat'"), std::string::npos);
  EXPECT_NE(msg.find("ankle-boot"), std::string::npos);
}

Tensor numbered_images(int64_t n, int64_t w) {
  std::vector<float> v(n * w * w);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t x = 0; x < w * w; ++x) v[i * w * w + x] = static_cast<float>(i * 100 + x % w);
  return Tensor::from_vector(v, {n, 1, w, w});
}

TEST(DataLoader, ShufflesDeterministicallyAndCoversAnEpoch) {
  const int64_t n = 10;
  const Tensor images = numbered_images(n, 2);
  std::vector<int64_t> lab(n);
  for (int64_t i = 0; i < n; ++i) lab[i] = i;
  const Tensor labels = Tensor::from_vector_i64(lab, {n});
  DataLoader a(images, labels, 3, 42), b(images, labels, 3, 42), c(images, labels, 3, 43);
  EXPECT_EQ(a.batches_per_epoch(), 3);
  std::set<int64_t> seen;
  bool differs = false;
  for (int k = 0; k < 3; ++k) {
    const auto ba = a.next(), bb = b.next(), bc = c.next();
    EXPECT_EQ(ba.labels.to_vector_i64(), bb.labels.to_vector_i64());
    if (ba.labels.to_vector_i64() != bc.labels.to_vector_i64()) differs = true;
    const auto l = ba.labels.to_vector_i64();
    const auto px = ba.images.to_vector();
    for (size_t j = 0; j < l.size(); ++j) {
      EXPECT_TRUE(seen.insert(l[j]).second) << "image repeated within an epoch";
      EXPECT_EQ(px[j * 4], l[j] * 100.0f);  // images travel with their labels
    }
  }
  EXPECT_EQ(seen.size(), 9u);  // the partial last batch is dropped
  EXPECT_TRUE(differs);
  a.next();
  EXPECT_EQ(a.epoch(), 1);
}

TEST(DataLoader, FlipsMirrorRows) {
  const int64_t n = 64;
  const Tensor images = numbered_images(n, 3);
  const Tensor labels = Tensor::from_vector_i64(std::vector<int64_t>(n, 0), {n});
  DataLoader loader(images, labels, n, 7, /*hflip=*/true);
  const std::vector<float> px = loader.next().images.to_vector();
  int flipped = 0;
  for (int64_t k = 0; k < n; ++k) {
    const float* p = &px[k * 9];
    const float base = p[0] - (p[0] - std::floor(p[0] / 100) * 100);
    if (p[0] - base == 2 && p[1] - base == 1 && p[2] - base == 0)
      ++flipped;
    else
      EXPECT_TRUE(p[0] - base == 0 && p[1] - base == 1 && p[2] - base == 2);
  }
  EXPECT_GT(flipped, 16);
  EXPECT_LT(flipped, 48);
}

TEST(DataLoader, StateRestoresThePosition) {
  const int64_t n = 23;
  const Tensor images = numbered_images(n, 2);
  std::vector<int64_t> lab(n);
  for (int64_t i = 0; i < n; ++i) lab[i] = i;
  const Tensor labels = Tensor::from_vector_i64(lab, {n});
  DataLoader a(images, labels, 4, 5, true);
  for (int k = 0; k < 7; ++k) a.next();  // into the second epoch
  const auto state = a.state_dict();
  DataLoader b(images, labels, 4, 999, true);
  b.load_state_dict(state);
  for (int k = 0; k < 12; ++k) {
    const auto ba = a.next(), bb = b.next();
    ASSERT_EQ(ba.labels.to_vector_i64(), bb.labels.to_vector_i64()) << "batch " << k;
    ASSERT_EQ(ba.images.to_vector(), bb.images.to_vector()) << "batch " << k;
  }
}

}  // namespace
}  // namespace stipple::train

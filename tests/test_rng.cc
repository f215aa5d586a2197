// Generator against torch 1.13's CPU generator: every case of ../shared/conformance/rng/cases.json
// (randn of sizes below and above 16, successive draws, uniform floats, float64 normals) must
// match torch's values bit for bit; plus state()/set_state() round trips for checkpoints.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "io/safetensors.h"
#include "support/numerics.h"

namespace stipple {
namespace {

Shape to_shape(const nlohmann::json& j) {
  Shape s;
  for (const auto& d : j) s.push_back(d.get<int64_t>());
  return s;
}

// Number of elements whose bits differ, and the largest difference in ulps.
struct BitDiff {
  int64_t differing = 0;
  int64_t max_ulp = 0;
};

BitDiff bit_diff(const Tensor& got, const Tensor& want) {
  BitDiff d;
  const int64_t n = want.numel();
  const size_t es = dtype_size(want.dtype());
  const auto* a = static_cast<const uint8_t*>(got.raw_data());
  const auto* b = static_cast<const uint8_t*>(want.raw_data());
  for (int64_t i = 0; i < n; ++i) {
    int64_t x = 0, y = 0;
    std::memcpy(&x, a + i * es, es);
    std::memcpy(&y, b + i * es, es);
    if (es == 4) {
      x = static_cast<int32_t>(x);
      y = static_cast<int32_t>(y);
    }
    if (x != y) {
      ++d.differing;
      d.max_ulp = std::max(d.max_ulp, x > y ? x - y : y - x);
    }
  }
  return d;
}

void expect_bit_exact(const Tensor& got, const Tensor& want, const std::string& name) {
  ASSERT_EQ(got.shape(), want.shape()) << name;
  ASSERT_EQ(got.dtype(), want.dtype()) << name;
  const BitDiff d = bit_diff(got, want);
  EXPECT_EQ(d.differing, 0) << name << ": " << d.differing << " of " << want.numel()
                            << " elements differ from torch, max " << d.max_ulp << " ulp\n"
                            << ::stipple::testing::tensors_close(got, want, 0.0);
}

class TorchRngConformance : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::stipple::testing::shared_path("conformance/rng");
    if (dir_.empty()) GTEST_SKIP() << "../shared is absent: no torch reference draws";
  }
  std::string dir_;
};

TEST_F(TorchRngConformance, EveryCaseMatchesTorchExactly) {
  std::ifstream cases_file(dir_ + "/cases.json");
  ASSERT_TRUE(cases_file) << dir_ << "/cases.json";
  const nlohmann::json cases = nlohmann::json::parse(cases_file)["cases"];
  const io::SafetensorsFile ref = io::SafetensorsFile::open(dir_ + "/torch_cpu_rng.safetensors");
  int checked = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    Generator g(c["seed"].get<uint64_t>());
    const std::string op = c["op"];
    if (c.contains("draws")) {  // successive draws from one seeded generator
      for (const auto& d : c["draws"]) {
        const std::string key = name + "_" + d[0].get<std::string>();
        expect_bit_exact(g.randn(to_shape(d[1])), ref.tensor(key), key);
      }
    } else {
      const DType dtype = c["dtype"] == "float64" ? DType::kF64 : DType::kF32;
      const Shape shape = to_shape(c["shape"]);
      const Tensor got = op.rfind("rand ", 0) == 0 ? g.rand(shape, dtype) : g.randn(shape, dtype);
      expect_bit_exact(got, ref.tensor(name), name);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 55);
}

TEST(Generator, ReseedRestartsTheSequenceAndDropsTheCachedNormal) {
  Generator g(7);
  const std::vector<float> a = g.randn({3}).to_vector();  // leaves a cached normal behind
  g.manual_seed(7);
  EXPECT_EQ(g.randn({3}).to_vector(), a);
}

TEST(Generator, OddScalarDrawsUseTheCachedSecondValue) {
  // Two draws of one value equal one draw of two values: the sine half is cached in between.
  Generator g1(3), g2(3);
  const std::vector<float> two = g1.randn({2}).to_vector();
  const float first = g2.randn({1}).item();
  const float second = g2.randn({1}).item();
  EXPECT_EQ(two[0], first);
  EXPECT_EQ(two[1], second);
}

TEST(Generator, MatchesStdMt19937) {
  Generator g(5489);
  std::mt19937 ref(5489);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(g.next_u32(), ref()) << "draw " << i;
  const uint64_t hi = ref(), lo = ref();
  EXPECT_EQ(g.next_u64(), (hi << 32) | lo);
}

TEST(Generator, StateRoundTripContinuesIdentically) {
  Generator g(1234);
  g.randn({5});  // leaves a cached normal
  g.randn({2, 4, 8, 8});
  const std::vector<uint8_t> saved = g.state();
  const std::vector<float> n1 = g.randn({3}).to_vector();  // uses the cached value
  const std::vector<float> n2 = g.randn({33}).to_vector();
  const std::vector<float> u1 = g.rand({700}).to_vector();  // crosses a twist
  const std::vector<double> d1 = g.randn({20}, DType::kF64).to_vector_f64();

  Generator h(99);
  h.randn({1});
  h.set_state(saved);
  EXPECT_EQ(h.state(), saved);
  EXPECT_EQ(h.randn({3}).to_vector(), n1);
  EXPECT_EQ(h.randn({33}).to_vector(), n2);
  EXPECT_EQ(h.rand({700}).to_vector(), u1);
  EXPECT_EQ(h.randn({20}, DType::kF64).to_vector_f64(), d1);
}

TEST(Generator, SetStateRejectsBadBytes) {
  Generator g(1);
  std::vector<uint8_t> s = g.state();
  EXPECT_THROW(g.set_state({1, 2, 3}), Error);
  std::vector<uint8_t> truncated(s.begin(), s.end() - 5);
  EXPECT_THROW(g.set_state(truncated), Error);
  s[0] ^= 0xff;
  EXPECT_THROW(g.set_state(s), Error);
}

TEST(Generator, UniformIsInUnitIntervalAndNormalHasUnitMoments) {
  Generator g(0);
  const std::vector<float> u = g.rand({100000}).to_vector();
  double mean_u = 0;
  for (float x : u) {
    ASSERT_GE(x, 0.0f);
    ASSERT_LT(x, 1.0f);
    mean_u += x;
  }
  EXPECT_NEAR(mean_u / u.size(), 0.5, 0.01);
  const std::vector<float> n = g.randn({100000}).to_vector();
  double m = 0, m2 = 0;
  for (float x : n) {
    ASSERT_TRUE(std::isfinite(x));
    m += x;
    m2 += static_cast<double>(x) * x;
  }
  m /= n.size();
  EXPECT_NEAR(m, 0.0, 0.02);
  EXPECT_NEAR(m2 / n.size() - m * m, 1.0, 0.02);
}

TEST(Generator, RejectsNonFloatDtypes) {
  Generator g(0);
  EXPECT_THROW(g.randn({4}, DType::kI64), Error);
  EXPECT_THROW(g.rand({4}, DType::kF16), Error);
}

}  // namespace
}  // namespace stipple

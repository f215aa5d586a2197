// Tensor core: dtypes and half conversions, factories, views (reshape, permute, narrow, expand),
// contiguous copies, concat/split/pad, and the channel-blocked layout round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core/tensor.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;

TEST(DType, HalfRoundTripIsExactForEveryHalf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t hb = static_cast<uint16_t>(h);
    const float f = f16_to_f32(hb);
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), hb) << "half bits " << h;
  }
}

TEST(DType, HalfRoundsToNearestEven) {
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f)), 1.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(70000.0f))));
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even -> 1.
  EXPECT_EQ(f16_to_f32(f32_to_f16(1.0f + std::ldexp(1.0f, -11))), 1.0f);
  // smallest subnormal 2^-24 and half of it (ties to even -> 0)
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.0f, -25))), 0.0f);
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(3.0f, -25))), std::ldexp(2.0f, -24));
}

TEST(DType, BFloat16RoundTrip) {
  for (uint32_t h = 0; h < 0x10000; h += 7) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_bf16(f), h);
  }
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.00390625f)), 1.0f);  // tie -> even
}

TEST(Tensor, FactoriesAndDescription) {
  Tensor t = Tensor::full({2, 3}, 1.5);
  EXPECT_EQ(t.describe(), "f32[2, 3]");
  EXPECT_EQ(t.numel(), 6);
  for (float v : t.to_vector()) EXPECT_EQ(v, 1.5f);
  EXPECT_EQ(Tensor::scalar(3.0).dim(), 0);
  EXPECT_EQ(Tensor::scalar(3.0).item(), 3.0f);
  EXPECT_EQ(Tensor::arange(5).to_vector(), (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_THROW(Tensor::from_vector({1, 2, 3}, {2, 2}), Error);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
  EXPECT_THROW(Tensor().shape(), Error);
}

TEST(Tensor, CastBetweenDtypes) {
  Tensor x = Tensor::from_vector({1.0f, -2.5f, 65504.0f, 0.1f}, {4});
  EXPECT_EQ(x.to(DType::kF16).to(DType::kF32).to_vector(),
            (std::vector<float>{1.0f, -2.5f, 65504.0f, f16_to_f32(f32_to_f16(0.1f))}));
  EXPECT_EQ(x.to(DType::kBF16).dtype(), DType::kBF16);
  EXPECT_EQ(x.to(DType::kI64).to_vector_i64(), (std::vector<int64_t>{1, -2, 65504, 0}));
  Tensor big = Tensor::from_vector_i64({(1LL << 60) + 1}, {1});
  EXPECT_EQ(big.clone().to_vector_i64()[0], (1LL << 60) + 1);
}

TEST(Tensor, ReshapeIsAViewWhenContiguous) {
  Tensor x = random_tensor({2, 3, 4}, 1);
  Tensor r = x.reshape({6, -1});
  EXPECT_EQ(r.shape(), (Shape{6, 4}));
  EXPECT_EQ(r.raw_data(), x.raw_data());
  EXPECT_THROW(x.reshape({5, -1}), Error);
  EXPECT_THROW(x.reshape({-1, -1}), Error);
}

TEST(Tensor, PermuteThenContiguousMovesData) {
  Tensor x = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor t = x.transpose(0, 1);
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_EQ(t.shape(), (Shape{3, 2}));
  EXPECT_EQ(t.to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  // reshape of a non-viewable permutation copies
  EXPECT_EQ(t.reshape({6}).to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_THROW(x.permute({0, 0}), Error);
}

TEST(Tensor, NarrowAndExpandAreViews) {
  Tensor x = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor n = x.narrow(1, 1, 2);
  EXPECT_EQ(n.to_vector(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_THROW(x.narrow(1, 2, 2), Error);
  Tensor row = Tensor::from_vector({7, 8, 9}, {1, 3});
  Tensor e = row.expand({4, 3});
  EXPECT_EQ(e.strides()[0], 0);
  EXPECT_EQ(e.to_vector().size(), 12u);
  EXPECT_EQ(e.to_vector()[10], 8.0f);
  EXPECT_THROW(row.expand({4, 2}), Error);
}

TEST(Tensor, ConcatSplitChunkPad) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector({5, 6}, {2, 1});
  Tensor c = ops::concat({a, b}, 1);
  EXPECT_EQ(c.to_vector(), (std::vector<float>{1, 2, 5, 3, 4, 6}));
  auto parts = ops::split(c, {2, 1}, 1);
  EXPECT_EQ(parts[1].to_vector(), (std::vector<float>{5, 6}));
  auto ch = ops::chunk(Tensor::arange(5), 2, 0);
  ASSERT_EQ(ch.size(), 2u);
  EXPECT_EQ(ch[0].numel(), 3);
  EXPECT_EQ(ch[1].numel(), 2);
  Tensor p = ops::pad(a, {1, 0, 0, 1}, -1.0f);  // left 1 on the last dim, bottom 1 on dim 0
  EXPECT_EQ(p.shape(), (Shape{3, 3}));
  EXPECT_EQ(p.to_vector(), (std::vector<float>{-1, 1, 2, -1, 3, 4, -1, -1, -1}));
  EXPECT_THROW(ops::concat({a, Tensor::zeros({3, 1})}, 1), Error);
  EXPECT_THROW(ops::split(c, {2, 2}, 1), Error);
}

TEST(Tensor, BlockedLayoutRoundTrip) {
  for (int block : {8, 16}) {
    Tensor x = random_tensor({2, 32, 5, 3}, 7);
    Tensor b = ops::to_blocked(x, block);
    EXPECT_TRUE(b.is_blocked());
    EXPECT_EQ(b.shape(), x.shape());
    EXPECT_EQ(b.contiguous().to_vector(), x.to_vector());
    // element (n=1, c=9, h=4, w=2) sits at its nChw{b}c position
    const float* raw = b.data<float>();
    const int64_t cb = 32 / block;
    const int64_t off = (((1 * cb + 9 / block) * 5 + 4) * 3 + 2) * block + 9 % block;
    EXPECT_EQ(raw[off], x.to_vector()[((1 * 32 + 9) * 5 + 4) * 3 + 2]);
    // views of a blocked tensor go through the plain layout
    EXPECT_EQ(b.reshape({2, -1}).to_vector(), x.reshape({2, -1}).to_vector());
  }
  EXPECT_THROW(ops::to_blocked(random_tensor({1, 12, 2, 2}, 1), 8), Error);
}

TEST(Tensor, ElementwiseOnBlockedKeepsLayout) {
  Tensor x = random_tensor({1, 16, 4, 4}, 3);
  Tensor y = random_tensor({1, 16, 4, 4}, 4);
  Tensor xb = ops::to_blocked(x, 8), yb = ops::to_blocked(y, 8);
  Tensor s = ops::silu(xb);
  EXPECT_TRUE(s.is_blocked());
  EXPECT_TRUE(testing::tensors_close(s.contiguous(), ops::silu(x), 1e-6, 1e-6));
  Tensor sum = xb + yb;
  EXPECT_TRUE(sum.is_blocked());
  EXPECT_TRUE(testing::tensors_close(sum.contiguous(), x + y, 1e-6, 0));
  // mixed layouts fall back to plain
  EXPECT_TRUE(testing::tensors_close(xb + y, x + y, 1e-6, 0));
}

}  // namespace
}  // namespace stipple

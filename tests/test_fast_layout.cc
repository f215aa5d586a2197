// The fast strided copy and sum (src/backends/cpu/fast_layout.cc) against the reference kernels:
// copies of permuted, narrowed, broadcast (stride 0) and transposed views are bit exact; sums
// over every subset of dims of 1-D to 4-D tensors (size-1 dims, leading/trailing/middle runs,
// everything, nothing) agree to the final f32 rounding, serial and parallel sizes both.
#include <gtest/gtest.h>

#include <vector>

#include "ops/kernels.h"
#include "support/numerics.h"

namespace stipple {
namespace {

const KernelTable& ref() { return reference_kernels(); }
const KernelTable& fast() { return fast_kernels(); }

TEST(FastLayoutCopy, StridedViewsAreBitExact) {
  const Tensor x = testing::random_tensor({4, 6, 5, 8}, 11);
  std::vector<std::pair<const char*, Tensor>> views = {
      {"permute 0213", x.permute({0, 2, 1, 3})},
      {"permute 3120", x.permute({3, 1, 2, 0})},
      {"transpose last two", x.transpose(2, 3)},
      {"narrow inner", x.narrow(3, 2, 5)},
      {"narrow middle", x.narrow(1, 1, 3)},
      {"broadcast", testing::random_tensor({4, 1, 8}, 12).expand({4, 9, 8})},
      {"broadcast inner", testing::random_tensor({4, 6, 1}, 13).expand({4, 6, 7})},
      {"large permute (parallel)", testing::random_tensor({16, 64, 3, 96}, 14).permute({2, 0, 1, 3})},
  };
  for (const auto& [name, v] : views) {
    SCOPED_TRACE(name);
    ASSERT_FALSE(v.is_contiguous());
    const Tensor a = fast().copy(v, DType::kF32), b = ref().copy(v, DType::kF32);
    ASSERT_TRUE(a.is_contiguous());
    EXPECT_TENSORS_CLOSE(a, b, 0.0, 0.0);
  }
}

// Channel-blocked tensors (nChw8c and nChw16c, small and parallel sizes) back to plain NCHW:
// bit exact against the reference, and the round trip through to_blocked gives the input.
TEST(FastLayoutCopy, BlockedToPlainIsBitExact) {
  for (int block : {8, 16}) {
    for (const Shape& shape : {Shape{1, 16, 3, 5}, Shape{2, 32, 9, 7}, Shape{2, 64, 64, 64}}) {
      SCOPED_TRACE(std::to_string(block) + " " + shape_str(shape));
      const Tensor x = testing::random_tensor(shape, 21);
      const Tensor blocked = ref().to_blocked(x, block);
      ASSERT_TRUE(blocked.is_blocked());
      const Tensor a = fast().copy(blocked, DType::kF32), b = ref().copy(blocked, DType::kF32);
      ASSERT_FALSE(a.is_blocked());
      EXPECT_TENSORS_CLOSE(a, b, 0.0, 0.0);
      EXPECT_TENSORS_CLOSE(a, x, 0.0, 0.0);
    }
  }
}

// Every subset of dims (as sorted index lists) of an nd-dim shape.
std::vector<std::vector<int64_t>> subsets(int64_t nd) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t mask = 0; mask < (1 << nd); ++mask) {
    std::vector<int64_t> d;
    for (int64_t i = 0; i < nd; ++i)
      if (mask & (1 << i)) d.push_back(i);
    out.push_back(d);
  }
  return out;
}

TEST(FastLayoutSum, EverySubsetOfDimsMatchesReference) {
  const std::vector<Shape> shapes = {{37},          {5, 7},         {1, 9},      {3, 1, 8},
                                     {2, 3, 4, 5},  {6, 1, 4, 1},   {7, 5, 1, 3}, {64, 64, 192},
                                     {2, 320, 9, 9}, {128, 3, 256}};
  uint64_t seed = 100;
  for (const Shape& s : shapes) {
    const Tensor x = testing::random_tensor(s, ++seed, -3.0f, 5.0f);
    for (const auto& dims : subsets(static_cast<int64_t>(s.size()))) {
      std::string what = "shape";
      for (int64_t v : s) what += " " + std::to_string(v);
      what += " dims";
      for (int64_t d : dims) what += " " + std::to_string(d);
      SCOPED_TRACE(what);
      const Tensor a = fast().sum(x, dims), b = ref().sum(x, dims);
      ASSERT_EQ(a.shape(), b.shape());
      // Both accumulate in double and round once; only the order of additions differs.
      EXPECT_TENSORS_CLOSE(a, b, 1e-6, 1e-6);
    }
  }
}

TEST(FastLayoutSum, EmptyReducedDimGivesZeros) {
  const Tensor x = Tensor::zeros({3, 0, 4});
  const Tensor a = fast().sum(x, {1});
  ASSERT_EQ(a.shape(), (Shape{3, 1, 4}));
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a.data<float>()[i], 0.0f);
}

}  // namespace
}  // namespace stipple

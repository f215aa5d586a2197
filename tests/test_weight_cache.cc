// The fast convolution's cache of reordered weights (backends/cpu/fast_linalg.cc) and f16-stored
// weights. The cache is used only for frozen storages (Module::freeze_for_inference) and must
// never hand out values older than the weights: every in-place writer bumps the storage version.
//
// Tolerances (f32): fast vs reference convolution 1e-4 absolute (inputs in [-1, 1], at most
// 16 * 9 terms). f16-stored weights vs the same values held in f32: 1e-4 (the values are equal;
// only the summation order differs); vs the unrounded f32 weights: 2e-3 (f16 keeps 11 significant
// bits, |w| <= 1/12, 144 terms of |x| <= 1).
#include <gtest/gtest.h>

#include <cstring>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "nn/layers.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"
#include "train/optim.h"

namespace stipple {
namespace {

using testing::random_tensor;

constexpr float kAtol = 1e-4f;

// conv(x) with the reference kernels and the layer's current weights.
Tensor reference_conv(const nn::Conv2d& conv, const Tensor& x) {
  autograd::NoGradGuard no_grad;
  use_reference_kernels(true);
  const Tensor y = conv.forward(x).contiguous();
  use_reference_kernels(false);
  return y;
}

// conv(x) on the inference path (fast kernels, blocked layout allowed), as plain NCHW.
Tensor inference_conv(const nn::Conv2d& conv, const Tensor& x) {
  autograd::NoGradGuard no_grad;
  return conv.forward(x).contiguous();
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> va = a.to_vector(), vb = b.to_vector();
  float m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::abs(va[i] - vb[i]));
  return m;
}

TEST(WeightCache, OptimizerUpdateIsSeenByTheNextConv) {
  Generator gen(1);
  nn::Conv2d conv(16, 16, 3, 1, 1, true, gen);
  conv.eval();
  conv.freeze_for_inference();
  ASSERT_TRUE(conv.weight().storage()->frozen());
  const Tensor x = random_tensor({1, 16, 8, 8}, 2);
  const Tensor y0 = inference_conv(conv, x);
  EXPECT_TENSORS_CLOSE(y0, reference_conv(conv, x), kAtol, 0.0);
  EXPECT_TENSORS_CLOSE(inference_conv(conv, x), y0, 0.0, 0.0);  // served from the cache

  // A training step without train(true): the storage stays frozen, its version changes.
  train::AdamW opt(conv.parameters(), train::AdamWConfig{.lr = 0.05f});
  ops::sum(ops::square(conv.forward(x))).backward();
  opt.step();
  ASSERT_TRUE(conv.weight().storage()->frozen());
  const Tensor y1 = inference_conv(conv, x);
  EXPECT_GT(max_abs_diff(y1, y0), 0.1f) << "the step did not change the output";
  EXPECT_TENSORS_CLOSE(y1, reference_conv(conv, x), kAtol, 0.0);
}

TEST(WeightCache, LoadStateDictIsSeenByTheNextConv) {
  Generator gen(3);
  nn::Conv2d conv(16, 32, 3, 1, 1, false, gen);
  conv.freeze_for_inference();
  const Tensor x = random_tensor({2, 16, 4, 4}, 4);
  const Tensor y0 = inference_conv(conv, x);
  conv.load_state_dict({{"weight", random_tensor({32, 16, 3, 3}, 5)}});
  const Tensor y1 = inference_conv(conv, x);
  EXPECT_GT(max_abs_diff(y1, y0), 0.1f);
  EXPECT_TENSORS_CLOSE(y1, reference_conv(conv, x), kAtol, 0.0);
}

TEST(WeightCache, TrainUnfreezes) {
  Generator gen(6);
  nn::Conv2d conv(8, 8, 3, 1, 1, true, gen);
  conv.freeze_for_inference();
  EXPECT_TRUE(conv.weight().storage()->frozen());
  EXPECT_TRUE(conv.bias().storage()->frozen());
  conv.train();
  EXPECT_FALSE(conv.weight().storage()->frozen());
  EXPECT_FALSE(conv.bias().storage()->frozen());
}

TEST(WeightCache, ExplicitBumpAfterRawWrite) {
  Generator gen(7);
  nn::Conv2d conv(16, 16, 1, 1, 0, false, gen);
  conv.freeze_for_inference();
  const Tensor x = random_tensor({1, 16, 4, 4}, 8);
  const Tensor y0 = inference_conv(conv, x);
  float* w = conv.weight().data<float>();
  for (int64_t i = 0; i < conv.weight().numel(); ++i) w[i] = -w[i];
  conv.weight().storage()->bump_version();  // the contract for raw writers (core/storage.h)
  EXPECT_TENSORS_CLOSE(inference_conv(conv, x), ops::neg(y0), kAtol, 0.0);
}

// Replaces the layer's weight storage with an f16 copy (what `stipple bench unet --dtype f16`
// does); returns the f16 values widened back to f32.
Tensor store_weight_as_f16(nn::Conv2d& conv) {
  const Tensor h = conv.weight().to(DType::kF16).contiguous();
  TensorImpl& impl = conv.weight().impl();
  impl.storage = h.storage();
  impl.offset = h.storage_offset();
  impl.strides = h.strides();
  impl.dtype = DType::kF16;
  return h.to(DType::kF32);
}

TEST(F16Weights, MatchF32WithinTolerance) {
  for (const bool frozen : {false, true}) {
    Generator gen(9);
    nn::Conv2d conv(32, 32, 3, 1, 1, true, gen);
    const Tensor x = random_tensor({2, 32, 8, 8}, 10);
    const Tensor y32 = inference_conv(conv, x);
    const Tensor rounded = store_weight_as_f16(conv);
    ASSERT_EQ(conv.weight().dtype(), DType::kF16);
    if (frozen) conv.freeze_for_inference();
    const Tensor y16 = inference_conv(conv, x);
    const Tensor y16_again = inference_conv(conv, x);
    Tensor y_rounded;
    {
      autograd::NoGradGuard no_grad;
      ops::Conv2dParams p;
      p.pad_h = p.pad_w = 1;
      y_rounded = ops::conv2d(x, rounded, conv.bias(), p).contiguous();
    }
    EXPECT_TENSORS_CLOSE(y16, y_rounded, kAtol, 0.0);
    EXPECT_TENSORS_CLOSE(y16_again, y16, 0.0, 0.0);
    EXPECT_TENSORS_CLOSE(y16, y32, 2e-3, 0.0);
    EXPECT_TENSORS_CLOSE(y16, reference_conv(conv, x), 2e-4, 0.0);  // reference widens f16 too
  }
}

}  // namespace
}  // namespace stipple

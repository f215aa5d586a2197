// Tests for the CUDA backend: every kernel of stipple::cuda::kernels() against the CPU reference
// table on the same random inputs (moved to the device, results moved back), plus the
// allocator's budget. Every test skips when no CUDA device is usable.
//
// Tolerances, per kernel family:
//   exact (bitwise)   copy and dtype conversion, embedding and its gradient, upsample/avg-pool
//                     and gradients, max, clamp, + - * / max min, AdamW
//   1e-5 rel + 1e-6   unary functions and gradients (f32 math against the reference's double)
//   1e-5 rel + 1e-5   sum, softmax, layer/group norm (double accumulation in both, f32 I/O)
//   1e-4 abs          attention forward and backward (f32 online softmax, inputs in [-1, 1])
//   2e-3 sqrt(K) abs  matmul and conv2d: TF32 tensor cores (10-bit mantissa) with K-term sums
//   1e-5 (1 + K) abs  matmul_bf16: the same bf16 operands both sides, f32 sums against double
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "core/rng.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/optim_on_device.h"
#include "train/distributed.h"
#include "train/nccl_communicator.h"

namespace stipple {
namespace {

const KernelTable& ref() { return reference_kernels(); }
const KernelTable& gpu() { return cuda::kernels(); }

Tensor dev(const Tensor& t) { return t.to(Device::kCUDA); }
Tensor host(const Tensor& t) { return t.to(Device::kCPU); }

// Uniform in [lo, hi).
Tensor uniform(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Generator g(seed);
  return ref().affine(g.rand(shape), hi - lo, lo);
}

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::unavailable_reason();
  }
};

// |got - want| <= atol + rtol |want| everywhere (NaN matches NaN, inf matches the same inf).
void expect_close(const Tensor& want, const Tensor& got_dev, double rtol, double atol,
                  const std::string& what) {
  const Tensor got = host(got_dev);
  ASSERT_EQ(want.shape(), got.shape()) << what;
  const std::vector<float> w = want.to_vector(), g = got.to_vector();
  double max_abs = 0, max_rel = 0;
  int64_t bad = -1;
  for (size_t i = 0; i < w.size(); ++i) {
    if (std::isnan(w[i]) || std::isnan(g[i])) {
      if (std::isnan(w[i]) != std::isnan(g[i]) && bad < 0) bad = static_cast<int64_t>(i);
      continue;
    }
    if (std::isinf(w[i]) || std::isinf(g[i])) {
      if (w[i] != g[i] && bad < 0) bad = static_cast<int64_t>(i);
      continue;
    }
    const double d = std::fabs(static_cast<double>(w[i]) - g[i]);
    max_abs = std::max(max_abs, d);
    max_rel = std::max(max_rel, d / std::max(1e-30, std::fabs(static_cast<double>(w[i]))));
    if (d > atol + rtol * std::fabs(w[i]) && bad < 0) bad = static_cast<int64_t>(i);
  }
  EXPECT_LT(bad, 0) << what << ": first mismatch at " << bad << " want "
                    << (bad >= 0 ? w[bad] : 0.f) << " got " << (bad >= 0 ? g[bad] : 0.f)
                    << " (max abs err " << max_abs << ", max rel err " << max_rel << ")";
}

// Same shape, dtype and bytes.
void expect_exact(const Tensor& want, const Tensor& got_dev, const std::string& what) {
  const Tensor got = host(got_dev);
  ASSERT_EQ(want.shape(), got.shape()) << what;
  ASSERT_EQ(want.dtype(), got.dtype()) << what;
  const Tensor wc = want.contiguous(), gc = got.contiguous();
  EXPECT_EQ(0, std::memcmp(wc.raw_data(), gc.raw_data(), wc.numel() * dtype_size(wc.dtype())))
      << what;
}

// ---------------------------------------------------------------- data movement

// cuBLAS is opened at run time, not linked; opening it needs no device, so this runs everywhere
// the backend is built.
TEST(CudaLibraries, CublasOpensOnDemand) {
  ASSERT_NO_THROW(cuda::load_blas());
  std::ifstream maps("/proc/self/maps");
  const std::string text((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("libcublas.so"), std::string::npos);
}

TEST_F(Cuda, CopyEveryDtypePairAndStrides) {
  const DType all[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kF64};
  Tensor base = ref().affine(uniform({3, 5, 7}, 1), 300.0f, 0.0f);
  float* p = base.data<float>();  // values the half formats round at their edges
  p[0] = NAN, p[1] = INFINITY, p[2] = -INFINITY, p[3] = 1e-7f, p[4] = 65519.0f, p[5] = 7e4f;
  p[6] = 0.0f, p[7] = -0.0f, p[8] = 3.0e-8f, p[9] = 1.00048828125f;
  // Converting NaN, inf or out-of-range values to i64 is undefined: i64 targets read finite data.
  const Tensor finite = ref().clamp(ref().affine(uniform({3, 5, 7}, 1), 300.0f, 0.0f), -1e3f, 1e3f);
  for (DType s : all) {
    for (DType t : all) {
      const bool to_int = t == DType::kI64 && s != DType::kI64;
      Tensor src = s == DType::kI64 || to_int ? ref().copy(finite, s) : ref().copy(base, s);
      if (s == DType::kI64) src.data<int64_t>()[0] = (int64_t{1} << 60) + 1;  // beyond 2^53
      const Tensor d = dev(src);
      const std::string what = std::string(dtype_name(s)) + " -> " + dtype_name(t);
      expect_exact(ref().copy(src, t), gpu().copy(d, t), what + " contiguous");
      expect_exact(ref().copy(src.permute({2, 0, 1}), t), gpu().copy(d.permute({2, 0, 1}), t),
                   what + " permuted");
      expect_exact(ref().copy(src.narrow(2, 1, 5).transpose(0, 1), t),
                   gpu().copy(d.narrow(2, 1, 5).transpose(0, 1), t), what + " narrowed");
    }
  }
  // A broadcast view and 8 dims that cannot merge.
  Tensor b = uniform({1, 4, 1}, 2);
  expect_exact(ref().copy(b.expand({3, 4, 5}), DType::kF32),
               gpu().copy(dev(b).expand({3, 4, 5}), DType::kF32), "expanded");
  Tensor e = uniform({2, 3, 2, 3, 2, 3, 2, 3}, 3);
  const std::vector<int64_t> perm = {7, 6, 5, 4, 3, 2, 1, 0};
  expect_exact(ref().copy(e.permute(perm), DType::kF16), gpu().copy(dev(e).permute(perm), DType::kF16),
               "8-d permuted");
}

TEST_F(Cuda, Embedding) {
  const Tensor w = uniform({11, 37}, 4);
  const Tensor ids = Tensor::from_vector_i64({3, 0, 10, 3, 3, 7}, {2, 3});
  expect_exact(ref().embedding(w, ids), gpu().embedding(dev(w), dev(ids)), "embedding");
  const Tensor g = uniform({2, 3, 37}, 5);
  expect_exact(ref().embedding_backward(g, ids, 11),
               gpu().embedding_backward(dev(g), dev(ids), 11), "embedding_backward");
  const Tensor bad = Tensor::from_vector_i64({1, 11}, {2});
  EXPECT_THROW(gpu().embedding(dev(w), dev(bad)), Error);
}

TEST_F(Cuda, Resample) {
  const Tensor x = uniform({2, 3, 5, 7}, 6);
  expect_exact(ref().upsample_nearest2x(x), gpu().upsample_nearest2x(dev(x)), "upsample");
  const Tensor g = uniform({2, 3, 10, 14}, 7);
  expect_exact(ref().upsample_nearest2x_backward(g), gpu().upsample_nearest2x_backward(dev(g)),
               "upsample_backward");
  const Tensor y = uniform({2, 3, 9, 8}, 8);  // odd height: the last row is dropped
  expect_exact(ref().avg_pool2x(y), gpu().avg_pool2x(dev(y)), "avg_pool");
  const Tensor gp = uniform({2, 3, 4, 4}, 9);
  expect_exact(ref().avg_pool2x_backward(gp, {2, 3, 9, 8}),
               gpu().avg_pool2x_backward(dev(gp), {2, 3, 9, 8}), "avg_pool_backward");
}

TEST_F(Cuda, AdamW) {
  const AdamWParams hp{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3};
  Tensor p = uniform({1001}, 10), g = uniform({1001}, 11), m = uniform({1001}, 12, 0.0f, 0.1f),
         v = uniform({1001}, 13, 0.0f, 0.01f);
  Tensor pd = dev(p), gd = dev(g), md = dev(m), vd = dev(v);
  ref().adamw_step(p, g, m, v, hp);
  gpu().adamw_step(pd, gd, md, vd, hp);
  expect_exact(p, pd, "param");
  expect_exact(m, md, "m");
  expect_exact(v, vd, "v");
}

// ---------------------------------------------------------------- elementwise

TEST_F(Cuda, UnaryAndBackward) {
  using ops::UnaryOp;
  const UnaryOp all[] = {UnaryOp::kNeg,     UnaryOp::kExp,      UnaryOp::kLog,
                         UnaryOp::kSqrt,    UnaryOp::kRsqrt,    UnaryOp::kSigmoid,
                         UnaryOp::kTanh,    UnaryOp::kSilu,     UnaryOp::kGeluErf,
                         UnaryOp::kGeluTanh, UnaryOp::kQuickGelu, UnaryOp::kRelu,
                         UnaryOp::kAbs,     UnaryOp::kSquare,   UnaryOp::kSin,
                         UnaryOp::kCos,     UnaryOp::kReciprocal};
  const Tensor signed_x = uniform({3, 333}, 14, -4.0f, 4.0f);
  const Tensor positive_x = uniform({3, 333}, 15, 0.1f, 4.0f);
  const Tensor gy = uniform({3, 333}, 16);
  for (UnaryOp op : all) {
    const bool needs_positive =
        op == UnaryOp::kLog || op == UnaryOp::kSqrt || op == UnaryOp::kRsqrt ||
        op == UnaryOp::kReciprocal;
    const Tensor x = needs_positive ? positive_x : signed_x;
    const std::string what = "unary op " + std::to_string(static_cast<int>(op));
    const Tensor y = ref().unary(op, x);
    expect_close(y, gpu().unary(op, dev(x)), 1e-5, 1e-6, what);
    expect_close(ref().unary_backward(op, x, y, gy),
                 gpu().unary_backward(op, dev(x), dev(y), dev(gy)), 1e-5, 1e-6,
                 what + " backward");
  }
}

TEST_F(Cuda, BinaryWithBroadcastAndStrides) {
  using ops::BinaryOp;
  const BinaryOp all[] = {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul,
                          BinaryOp::kDiv, BinaryOp::kMax, BinaryOp::kMin};
  Tensor a = uniform({4, 5, 33}, 17);
  a.data<float>()[3] = NAN;
  const Tensor b = uniform({4, 5, 33}, 18, 0.5f, 2.0f);
  const Tensor row = uniform({1, 1, 33}, 19);
  const Tensor col = uniform({4, 1, 1}, 20);
  const Tensor t = uniform({4, 33, 5}, 21);
  const Shape s = {4, 5, 33};
  for (BinaryOp op : all) {
    const std::string what = "binary op " + std::to_string(static_cast<int>(op));
    expect_exact(ref().binary(op, a, b), gpu().binary(op, dev(a), dev(b)), what);
    expect_exact(ref().binary(op, a, row.expand(s)), gpu().binary(op, dev(a), dev(row).expand(s)),
                 what + " row broadcast");
    expect_exact(ref().binary(op, col.expand(s), t.transpose(1, 2)),
                 gpu().binary(op, dev(col).expand(s), dev(t).transpose(1, 2)),
                 what + " column broadcast, transposed");
  }
}

TEST_F(Cuda, AffinePowClamp) {
  Tensor x = uniform({1000}, 22, -3.0f, 3.0f);
  x.data<float>()[7] = NAN;
  expect_close(ref().affine(x, 0.37f, -1.5f), gpu().affine(dev(x), 0.37f, -1.5f), 0, 0, "affine");
  const Tensor pos = uniform({1000}, 23, 0.0f, 3.0f);
  expect_close(ref().pow_scalar(pos, 2.5f), gpu().pow_scalar(dev(pos), 2.5f), 1e-5, 1e-6, "pow");
  expect_close(ref().pow_scalar(x, 2.0f), gpu().pow_scalar(dev(x), 2.0f), 1e-5, 1e-6, "pow 2");
  expect_exact(ref().clamp(x, -1.0f, 0.5f), gpu().clamp(dev(x), -1.0f, 0.5f), "clamp");
}

// ---------------------------------------------------------------- reductions, softmax

TEST_F(Cuda, SumAndMax) {
  const Tensor x = uniform({3, 5, 7, 9}, 24);
  const std::vector<std::vector<int64_t>> dim_sets = {
      {0}, {1}, {3}, {0, 1}, {1, 3}, {0, 2}, {0, 1, 2, 3}, {2, 3}};
  for (const auto& dims : dim_sets) {
    std::string what = "dims";
    for (int64_t d : dims) {
      what += ' ';
      what += std::to_string(d);
    }
    expect_close(ref().sum(x, dims), gpu().sum(dev(x), dims), 1e-5, 1e-5, "sum " + what);
    expect_exact(ref().max(x, dims), gpu().max(dev(x), dims), "max " + what);
  }
  // Many rows into few columns: the chunked path.
  const Tensor tall = uniform({20000, 33}, 25);
  expect_close(ref().sum(tall, {0}), gpu().sum(dev(tall), {0}), 1e-5, 1e-5, "sum tall");
  expect_exact(ref().max(tall, {0}), gpu().max(dev(tall), {0}), "max tall");
}

TEST_F(Cuda, Softmax) {
  Tensor x = uniform({7, 333}, 26, -5.0f, 5.0f);
  for (int64_t i = 0; i < 333; ++i) x.data<float>()[2 * 333 + i] = -INFINITY;  // masked row
  x.data<float>()[5] = -INFINITY;
  const Tensor y = ref().softmax(x);
  expect_close(y, gpu().softmax(dev(x)), 1e-5, 1e-7, "softmax");
  const Tensor gy = uniform({7, 333}, 27);
  expect_close(ref().softmax_backward(y, gy), gpu().softmax_backward(dev(y), dev(gy)), 1e-5, 1e-6,
               "softmax_backward");
}

// ---------------------------------------------------------------- normalisation

TEST_F(Cuda, LayerNorm) {
  const Tensor x = uniform({13, 77}, 28, -2.0f, 3.0f);
  const Tensor w = uniform({77}, 29), b = uniform({77}, 30), gy = uniform({13, 77}, 31);
  for (bool affine : {true, false}) {
    const Tensor wt = affine ? w : Tensor(), bt = affine ? b : Tensor();
    const LayerNormResult r = ref().layer_norm(x, wt, bt, 1e-5f);
    const LayerNormResult c = gpu().layer_norm(dev(x), affine ? dev(w) : Tensor(),
                                               affine ? dev(b) : Tensor(), 1e-5f);
    expect_close(r.out, c.out, 1e-5, 1e-5, "layer_norm out");
    expect_close(r.mean, c.mean, 1e-5, 1e-6, "layer_norm mean");
    expect_close(r.rstd, c.rstd, 1e-5, 1e-6, "layer_norm rstd");
    Tensor rgw, rgb, cgw, cgb;
    const Tensor rgx = ref().layer_norm_backward(x, gy, wt, r.mean, r.rstd, &rgw, &rgb);
    const Tensor cgx = gpu().layer_norm_backward(dev(x), dev(gy), affine ? dev(w) : Tensor(),
                                                 dev(r.mean), dev(r.rstd), &cgw, &cgb);
    expect_close(rgx, cgx, 1e-5, 1e-5, "layer_norm grad_x");
    expect_close(rgw, cgw, 1e-5, 1e-5, "layer_norm grad_w");
    expect_close(rgb, cgb, 1e-5, 1e-5, "layer_norm grad_b");
  }
}

TEST_F(Cuda, GroupNorm) {
  const Tensor x = uniform({2, 12, 5, 7}, 32, -2.0f, 3.0f);
  const Tensor w = uniform({12}, 33), b = uniform({12}, 34), gy = uniform({2, 12, 5, 7}, 35);
  const Tensor x3 = x.reshape({2, 12, 35}), gy3 = gy.reshape({2, 12, 35});
  for (bool affine : {true, false}) {
    const Tensor wt = affine ? w : Tensor(), bt = affine ? b : Tensor();
    const Tensor wd = affine ? dev(w) : Tensor(), bd = affine ? dev(b) : Tensor();
    const GroupNormResult r = ref().group_norm(x3, 4, wt, bt, 1e-6f);
    const GroupNormResult c = gpu().group_norm(dev(x3), 4, wd, bd, 1e-6f);
    expect_close(r.out, c.out, 1e-5, 1e-5, "group_norm out");
    expect_close(r.mean, c.mean, 1e-5, 1e-6, "group_norm mean");
    expect_close(r.rstd, c.rstd, 1e-5, 1e-6, "group_norm rstd");
    Tensor rgw, rgb, cgw, cgb;
    const Tensor rgx = ref().group_norm_backward(x3, gy3, 4, wt, r.mean, r.rstd, &rgw, &rgb);
    const Tensor cgx = gpu().group_norm_backward(dev(x3), dev(gy3), 4, wd, dev(r.mean),
                                                 dev(r.rstd), &cgw, &cgb);
    expect_close(rgx, cgx, 1e-5, 1e-5, "group_norm grad_x");
    expect_close(rgw, cgw, 1e-5, 1e-5, "group_norm grad_w");
    expect_close(rgb, cgb, 1e-5, 1e-5, "group_norm grad_b");
  }
}

// ---------------------------------------------------------------- linear algebra

struct MatmulCase {
  int64_t ba, bb, m, k, n;
  bool ta, tb;
};

std::string matmul_name(const char* op, const MatmulCase& c) {
  return std::string(op) + " " + std::to_string(c.ba) + "/" + std::to_string(c.bb) + " " +
         std::to_string(c.m) + "x" + std::to_string(c.k) + "x" + std::to_string(c.n) +
         (c.ta ? " ta" : "") + (c.tb ? " tb" : "");
}

TEST_F(Cuda, Matmul) {
  const MatmulCase cases[] = {{1, 1, 17, 33, 9, false, false}, {3, 3, 5, 67, 31, true, false},
                              {3, 1, 40, 20, 13, false, true}, {1, 4, 7, 9, 11, true, true},
                              {2, 2, 1, 1, 1, false, false},   {5, 1, 8, 130, 3, true, false}};
  for (const MatmulCase& c : cases) {
    const Tensor a = uniform(c.ta ? Shape{c.ba, c.k, c.m} : Shape{c.ba, c.m, c.k}, 36);
    const Tensor b = uniform(c.tb ? Shape{c.bb, c.n, c.k} : Shape{c.bb, c.k, c.n}, 37);
    const std::string what = matmul_name("matmul", c);
    expect_close(ref().matmul(a, b, c.ta, c.tb), gpu().matmul(dev(a), dev(b), c.ta, c.tb), 0,
                 2e-3 * std::sqrt(static_cast<double>(c.k)), what);
  }
}

// bf16 matmuls: both sides round the operands to bf16 (to nearest, ties to even) and sum the
// exact products; the GPU sums in f32 on tensor cores, the reference in double. A wrong rounding
// would show at ~4e-3 relative per product, far above this tolerance. bf16 operands are taken as
// they are.
TEST_F(Cuda, MatmulBf16) {
  ASSERT_NE(gpu().matmul_bf16, nullptr);
  EXPECT_TRUE(gpu().native_bf16_matmul);
  const MatmulCase cases[] = {{1, 1, 17, 33, 9, false, false}, {3, 3, 5, 67, 31, true, false},
                              {3, 1, 40, 20, 13, false, true}, {1, 4, 7, 9, 11, true, true},
                              {2, 2, 1, 1, 1, false, false},   {5, 1, 8, 130, 3, true, false},
                              {1, 1, 64, 0, 5, false, false}};
  for (const MatmulCase& c : cases) {
    const Tensor a = uniform(c.ta ? Shape{c.ba, c.k, c.m} : Shape{c.ba, c.m, c.k}, 38);
    const Tensor b = uniform(c.tb ? Shape{c.bb, c.n, c.k} : Shape{c.bb, c.k, c.n}, 39);
    const std::string what = matmul_name("matmul_bf16", c);
    const double tol = 1e-5 * (1.0 + static_cast<double>(c.k));
    expect_close(ref().matmul_bf16(a, b, c.ta, c.tb),
                 gpu().matmul_bf16(dev(a), dev(b), c.ta, c.tb), 0, tol, what);
    const Tensor a16 = ref().copy(a, DType::kBF16), b16 = ref().copy(b, DType::kBF16);
    expect_close(ref().matmul_bf16(a16, b16, c.ta, c.tb),
                 gpu().matmul_bf16(dev(a16), dev(b16), c.ta, c.tb), 0, tol, what + " (bf16 in)");
  }
}

struct ConvCase {
  int64_t n, c, h, w, o, kh, kw;
  ops::Conv2dParams p;
};

TEST_F(Cuda, Conv2dAndBackward) {
  const ConvCase cases[] = {
      {2, 3, 9, 11, 5, 3, 3, {1, 1, 1, 1, 1, 1}},   // 3x3 "same"
      {1, 4, 10, 7, 6, 3, 3, {2, 2, 1, 1, 1, 1}},   // stride 2
      {2, 2, 12, 12, 3, 3, 2, {1, 2, 2, 0, 2, 1}},  // dilation, asymmetric
      {3, 8, 5, 6, 7, 1, 1, {1, 1, 0, 0, 1, 1}},    // pointwise (GEMM only)
      {1, 5, 4, 4, 4, 4, 4, {4, 4, 0, 0, 1, 1}},    // patchify
  };
  int seed = 40;
  for (const ConvCase& c : cases) {
    const Tensor x = uniform({c.n, c.c, c.h, c.w}, seed++);
    const Tensor w = uniform({c.o, c.c, c.kh, c.kw}, seed++);
    const Tensor b = uniform({c.o}, seed++);
    const double tol = 2e-3 * std::sqrt(static_cast<double>(c.c * c.kh * c.kw));
    const Tensor y = ref().conv2d(x, w, b, c.p, false);
    expect_close(y, gpu().conv2d(dev(x), dev(w), dev(b), c.p, true), 0, tol, "conv2d");
    expect_close(ref().conv2d(x, w, Tensor(), c.p, false),
                 gpu().conv2d(dev(x), dev(w), Tensor(), c.p, false), 0, tol, "conv2d no bias");
    const Tensor w16 = ref().copy(w, DType::kF16);
    expect_close(ref().conv2d(x, w16, b, c.p, false), gpu().conv2d(dev(x), dev(w16), dev(b), c.p, false),
                 0, tol, "conv2d f16 weight");
    const Tensor gy = uniform(y.shape(), seed++);
    const double tol_o = 2e-3 * std::sqrt(static_cast<double>(c.o * c.kh * c.kw));
    expect_close(ref().conv2d_backward_data(gy, w, x.shape(), c.p),
                 gpu().conv2d_backward_data(dev(gy), dev(w), x.shape(), c.p), 0, tol_o,
                 "conv2d_backward_data");
    Tensor rgw, rgb, cgw, cgb;
    ref().conv2d_backward_weight(x, gy, w.shape(), c.p, &rgw, &rgb);
    gpu().conv2d_backward_weight(dev(x), dev(gy), w.shape(), c.p, &cgw, &cgb);
    const double tol_w = 2e-3 * std::sqrt(static_cast<double>(c.n * y.size(2) * y.size(3)));
    expect_close(rgw, cgw, 0, tol_w, "conv2d_backward_weight");
    expect_close(rgb, cgb, 1e-5, 1e-5, "conv2d bias grad");
  }
}

// ---------------------------------------------------------------- attention

struct AttnCase {
  int64_t b, h, lq, lk, d, dv;
  int mask;  // 0 none, 1 key-padding [B, 1, 1, Lk] expanded, 2 full with -inf entries
  bool causal;
};

TEST_F(Cuda, AttentionForwardAndBackward) {
  const AttnCase cases[] = {
      {2, 3, 37, 53, 40, 24, 0, false}, {1, 2, 64, 64, 64, 64, 0, true},
      {2, 2, 33, 17, 80, 80, 1, false}, {1, 1, 45, 45, 160, 160, 2, true},
      {2, 1, 19, 70, 8, 33, 2, false},  {1, 2, 50, 30, 16, 16, 1, true},
  };
  int seed = 60;
  for (const AttnCase& c : cases) {
    const Tensor q = uniform({c.b, c.h, c.lq, c.d}, seed++);
    const Tensor k = uniform({c.b, c.h, c.lk, c.d}, seed++);
    const Tensor v = uniform({c.b, c.h, c.lk, c.dv}, seed++);
    const Shape full = {c.b, c.h, c.lq, c.lk};
    Tensor mask, mask_dev;
    if (c.mask == 1) {
      Tensor pad = uniform({c.b, 1, 1, c.lk}, seed++, -1.0f, 1.0f);
      for (int64_t j = c.lk - 3; j < c.lk; ++j) pad.data<float>()[j] = -INFINITY;  // padding
      mask = pad.expand(full);
      mask_dev = dev(pad).expand(full);
    } else if (c.mask == 2) {
      Tensor m = uniform(full, seed++, -2.0f, 2.0f);
      float* p = m.data<float>();
      for (int64_t i = 0; i < m.numel(); i += 7) p[i] = -INFINITY;
      for (int64_t j = 0; j < c.lk; ++j) p[j] = -INFINITY;  // a fully masked row
      mask = m;
      mask_dev = dev(m);
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    const std::string what = "attention " + std::to_string(c.lq) + "x" + std::to_string(c.lk) +
                             " d" + std::to_string(c.d) + " mask " + std::to_string(c.mask) +
                             (c.causal ? " causal" : "");
    const AttentionResult r = ref().attention(q, k, v, mask, scale, c.causal);
    const AttentionResult g =
        gpu().attention(dev(q), dev(k), dev(v), mask_dev, scale, c.causal);
    expect_close(r.out, g.out, 0, 1e-4, what + " out");
    expect_close(r.lse, g.lse, 0, 1e-4, what + " lse");
    const Tensor go = uniform(r.out.shape(), seed++);
    Tensor rq, rk, rv, gq, gk, gv;
    ref().attention_backward(q, k, v, mask, scale, c.causal, r.out, r.lse, go, &rq, &rk, &rv);
    gpu().attention_backward(dev(q), dev(k), dev(v), mask_dev, scale, c.causal, dev(r.out),
                             dev(r.lse), dev(go), &gq, &gk, &gv);
    expect_close(rq, gq, 0, 1e-4, what + " grad_q");
    expect_close(rk, gk, 0, 1e-4, what + " grad_k");
    expect_close(rv, gv, 0, 1e-4, what + " grad_v");
  }
}

// ---------------------------------------------------------------- allocator

TEST_F(Cuda, AllocatorBudget) {
  const size_t before = cuda::memory_budget();
  cuda::set_memory_budget(size_t{64} << 20);
  std::string message;
  try {
    Tensor big = Tensor::empty({int64_t{32} << 20}, DType::kF32, Device::kCUDA);  // 128 MiB
  } catch (const Error& e) {
    message = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kResourceExhausted);
  }
  cuda::set_memory_budget(before);
  EXPECT_NE(message.find("CUDA out of memory"), std::string::npos) << message;
  // Freed blocks are cached and reused.
  {
    Tensor a = Tensor::empty({1000}, DType::kF32, Device::kCUDA);
  }
  const size_t cached = cuda::cached_bytes();
  EXPECT_GT(cached, 0u);
  Tensor b = Tensor::empty({1000}, DType::kF32, Device::kCUDA);
  EXPECT_LT(cuda::cached_bytes(), cached);
  cuda::synchronize();
}

// concat and pad write their inputs into slices of a device tensor (KernelTable::copy_into).
TEST_F(Cuda, ConcatAndPadWriteIntoDeviceSlices) {
  const Tensor a = uniform({2, 3, 4}, 21), b = uniform({2, 5, 4}, 22);
  const Tensor cat = ops::concat({dev(a), dev(b)}, 1);
  EXPECT_EQ(cat.device(), Device::kCUDA);
  expect_close(ops::concat({a, b}, 1), cat, 0, 0, "concat");
  expect_close(ops::pad(a, {1, 2}, 0.5f), ops::pad(dev(a), {1, 2}, 0.5f), 0, 0, "pad");
}

// The ops on device tensors, with autograd: the forward runs the CUDA table, the gradient comes
// back through to(Device) to the CPU leaf. A rule that made a host tensor on the way would stop
// this with a two-devices error.
TEST_F(Cuda, GradientsFlowBackAcrossTheDeviceCopy) {
  Tensor x = uniform({3, 4}, 7);
  x.set_requires_grad(true);
  const Tensor y = x.to(Device::kCUDA);
  EXPECT_EQ(y.device(), Device::kCUDA);
  const Tensor z = ops::sum(ops::mul(ops::relu(y), y));  // sum(relu(x) x)
  EXPECT_EQ(z.device(), Device::kCUDA);
  z.backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().device(), Device::kCPU);
  const std::vector<float> xv = x.to_vector();
  std::vector<float> want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) want[i] = xv[i] > 0 ? 2 * xv[i] : 0.0f;
  expect_close(Tensor::from_vector(want, {3, 4}), x.grad(), 1e-6, 1e-6, "d sum(relu(x) x)/dx");
}

// A training step's bookkeeping on device parameters (tests/support/optim_on_device.h).
TEST_F(Cuda, ClippingAdamWAndEmaOnDeviceParameters) {
  testing::expect_optimizers_on_device_match_cpu(Device::kCUDA);
}

// NCCL over one process: the clique of one rank initialises, sums a device tensor in place (the
// sum over one rank: the tensor itself) and a gradient bucket through GradientReducer's device
// path, and passes host collectives through.
TEST_F(Cuda, NcclSumsDeviceTensorsInPlace) {
  if (!train::nccl_built()) GTEST_SKIP() << "built without nccl.h";
  std::unique_ptr<train::Communicator> nccl = train::nccl_communicator(train::single_process(), 60);
  EXPECT_NE(nccl->describe().find("NCCL"), std::string::npos) << nccl->describe();
  const Tensor x = uniform({1000}, 11);
  const Tensor d = dev(x);
  nccl->allreduce_sum_tensor(d, "the test's all-reduce");
  EXPECT_EQ(host(d).to_vector(), x.to_vector());
  float v = 2.0f;
  nccl->allreduce_sum(&v, 1, "a host sum");
  EXPECT_EQ(v, 2.0f);
}

}  // namespace
}  // namespace stipple

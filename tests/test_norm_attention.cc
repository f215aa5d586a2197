// Tests for group_norm, layer_norm, softmax/log_softmax and scaled dot-product attention:
//   - every fast kernel (fast_norm.cc, fast_attention.cc) against its reference twin, forward and
//     backward, at odd sizes and at Stable Diffusion's sizes (GroupNorm(32) on 320 channels, plain
//     and nChw8c/nChw16c; attention with D = 40 and 64, Lq != Lk, Dv != D, masks, causal, and a
//     4096-token sequence);
//   - gradients of the ops against finite differences (EXPECT_GRADCHECK);
//   - bad inputs raise stipple::Error.
// Tolerances are stated per test; f32 kernels are compared with double-accumulating references.
#include <gtest/gtest.h>
#ifdef STIPPLE_WITH_FAST_CPU
#include <hwy/targets.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/grad_mode.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;

const KernelTable& ref() { return reference_kernels(); }
const KernelTable& fast() { return fast_kernels(); }

// ---------------- group norm ----------------

struct GroupNormCase {
  Shape shape;  // [N, C, H, W]
  int64_t groups;
  bool affine;
};

class GroupNormKernels : public ::testing::TestWithParam<GroupNormCase> {};

// Forward: f32 fast vs double reference; atol 2e-5 on unit-scale outputs.
TEST_P(GroupNormKernels, FastMatchesReference) {
  const GroupNormCase& p = GetParam();
  const int64_t n = p.shape[0], c = p.shape[1], s = p.shape[2] * p.shape[3];
  Tensor x = random_tensor({n, c, s}, 1, -2.0f, 3.0f);
  Tensor w = p.affine ? random_tensor({c}, 2, 0.5f, 1.5f) : Tensor();
  Tensor b = p.affine ? random_tensor({c}, 3) : Tensor();
  GroupNormResult r = ref().group_norm(x, p.groups, w, b, 1e-5f);
  GroupNormResult f = fast().group_norm(x, p.groups, w, b, 1e-5f);
  EXPECT_TENSORS_CLOSE(f.out, r.out, 2e-5, 1e-5);
  EXPECT_TENSORS_CLOSE(f.mean, r.mean, 1e-6, 1e-5);
  EXPECT_TENSORS_CLOSE(f.rstd, r.rstd, 1e-6, 1e-5);
}

// Blocked nChw{8,16}c input: both tables keep the layout; values equal the plain result.
TEST_P(GroupNormKernels, BlockedMatchesPlain) {
  const GroupNormCase& p = GetParam();
  const int64_t c = p.shape[1];
  Tensor x4 = random_tensor(p.shape, 4, -2.0f, 3.0f);
  Tensor w = p.affine ? random_tensor({c}, 5, 0.5f, 1.5f) : Tensor();
  Tensor b = p.affine ? random_tensor({c}, 6) : Tensor();
  Tensor x3 = x4.reshape({p.shape[0], c, p.shape[2] * p.shape[3]});
  Tensor want = ref().group_norm(x3, p.groups, w, b, 1e-5f).out.reshape(p.shape);
  for (int block : {8, 16}) {
    if (c % block != 0) continue;
    SCOPED_TRACE(::testing::Message() << "block " << block);
    Tensor xb = ops::to_blocked(x4, block);
    GroupNormResult f = fast().group_norm(xb, p.groups, w, b, 1e-5f);
    GroupNormResult r = ref().group_norm(xb, p.groups, w, b, 1e-5f);
    EXPECT_EQ(f.out.channel_block(), block);
    EXPECT_EQ(r.out.channel_block(), block);
    EXPECT_TENSORS_CLOSE(f.out, want, 2e-5, 1e-5);
    EXPECT_TENSORS_CLOSE(r.out, want, 1e-6, 1e-6);
    EXPECT_TENSORS_CLOSE(f.mean, r.mean, 1e-6, 1e-5);
    EXPECT_TENSORS_CLOSE(f.rstd, r.rstd, 1e-6, 1e-5);
  }
}

// Backward: grad_x atol 2e-5 * max(1, rstd) (its terms scale with rstd, which is 1/sqrt(eps) for
// one-element groups, where the exact result 0 is a difference of such terms); grad_w/grad_b
// atol 1e-4 (sums of N*S terms).
TEST_P(GroupNormKernels, BackwardFastMatchesReference) {
  const GroupNormCase& p = GetParam();
  const int64_t n = p.shape[0], c = p.shape[1], s = p.shape[2] * p.shape[3];
  Tensor x = random_tensor({n, c, s}, 7, -2.0f, 3.0f);
  Tensor gy = random_tensor({n, c, s}, 8);
  Tensor w = p.affine ? random_tensor({c}, 9, 0.5f, 1.5f) : Tensor();
  GroupNormResult st = ref().group_norm(x, p.groups, w, Tensor(), 1e-5f);
  Tensor rgw, rgb, fgw, fgb;
  Tensor rgx = ref().group_norm_backward(x, gy, p.groups, w, st.mean, st.rstd, &rgw, &rgb);
  Tensor fgx = fast().group_norm_backward(x, gy, p.groups, w, st.mean, st.rstd, &fgw, &fgb);
  double max_rstd = 1.0;
  for (float r : st.rstd.to_vector()) max_rstd = std::max<double>(max_rstd, r);
  EXPECT_TENSORS_CLOSE(fgx, rgx, 2e-5 * max_rstd, 1e-4);
  EXPECT_TENSORS_CLOSE(fgw, rgw, 1e-4, 1e-4);
  EXPECT_TENSORS_CLOSE(fgb, rgb, 1e-4, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, GroupNormKernels,
                         ::testing::Values(GroupNormCase{{2, 6, 5, 7}, 3, true},
                                           GroupNormCase{{1, 16, 3, 3}, 4, false},
                                           GroupNormCase{{2, 32, 1, 1}, 32, true},
                                           GroupNormCase{{1, 48, 9, 11}, 6, true},
                                           GroupNormCase{{1, 320, 16, 16}, 32, true},
                                           GroupNormCase{{2, 640, 8, 8}, 32, true},
                                           GroupNormCase{{1, 1280, 5, 3}, 32, false}));

// ---------------- layer norm ----------------

class LayerNormKernels : public ::testing::TestWithParam<Shape> {};

// Forward atol 2e-5, backward atol 1e-4 (grad_w/grad_b sum over rows).
TEST_P(LayerNormKernels, ForwardAndBackwardMatchReference) {
  const int64_t rows = GetParam()[0], d = GetParam()[1];
  Tensor x = random_tensor({rows, d}, 11, -3.0f, 2.0f);
  Tensor w = random_tensor({d}, 12, 0.5f, 1.5f), b = random_tensor({d}, 13);
  Tensor gy = random_tensor({rows, d}, 14);
  for (bool affine : {true, false}) {
    SCOPED_TRACE(::testing::Message() << "affine " << affine);
    Tensor wa = affine ? w : Tensor(), ba = affine ? b : Tensor();
    LayerNormResult r = ref().layer_norm(x, wa, ba, 1e-5f);
    LayerNormResult f = fast().layer_norm(x, wa, ba, 1e-5f);
    EXPECT_TENSORS_CLOSE(f.out, r.out, 2e-5, 1e-5);
    EXPECT_TENSORS_CLOSE(f.mean, r.mean, 1e-6, 1e-5);
    EXPECT_TENSORS_CLOSE(f.rstd, r.rstd, 1e-6, 1e-5);
    Tensor rgw, rgb, fgw, fgb;
    Tensor rgx = ref().layer_norm_backward(x, gy, wa, r.mean, r.rstd, &rgw, &rgb);
    Tensor fgx = fast().layer_norm_backward(x, gy, wa, r.mean, r.rstd, &fgw, &fgb);
    EXPECT_TENSORS_CLOSE(fgx, rgx, 2e-5, 1e-4);
    EXPECT_TENSORS_CLOSE(fgw, rgw, 1e-4, 1e-4);
    EXPECT_TENSORS_CLOSE(fgb, rgb, 1e-4, 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LayerNormKernels,
                         ::testing::Values(Shape{1, 1}, Shape{7, 33}, Shape{5, 17}, Shape{64, 320},
                                           Shape{77, 768}, Shape{3, 1280}));

// ---------------- softmax ----------------

class SoftmaxKernels : public ::testing::TestWithParam<Shape> {};

// Forward atol 1e-6 (outputs in [0, 1]); backward atol 1e-5.
TEST_P(SoftmaxKernels, ForwardAndBackwardMatchReference) {
  const int64_t rows = GetParam()[0], d = GetParam()[1];
  Tensor x = random_tensor({rows, d}, 21, -30.0f, 30.0f);
  Tensor gy = random_tensor({rows, d}, 22);
  Tensor r = ref().softmax(x), f = fast().softmax(x);
  EXPECT_TENSORS_CLOSE(f, r, 1e-6, 1e-5);
  EXPECT_TENSORS_CLOSE(fast().softmax_backward(r, gy), ref().softmax_backward(r, gy), 1e-5, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SoftmaxKernels,
                         ::testing::Values(Shape{5, 1}, Shape{3, 7}, Shape{9, 77}, Shape{4, 33},
                                           Shape{16, 4096}));

// Rows with -inf entries (masked); a row that is all -inf gives zeros in both tables.
TEST(SoftmaxKernels, MaskedRows) {
  const float ninf = -std::numeric_limits<float>::infinity();
  Tensor x =
      Tensor::from_vector({1, ninf, 2, ninf, ninf, ninf, ninf, ninf, 0.5f, 3, ninf, -1}, {3, 4});
  Tensor r = ref().softmax(x), f = fast().softmax(x);
  EXPECT_TENSORS_CLOSE(f, r, 1e-6, 1e-5);
  const std::vector<float> v = f.to_vector();
  for (int i = 4; i < 8; ++i) EXPECT_EQ(v[i], 0.0f);
}

// ---------------- attention kernels ----------------

struct AttentionCase {
  int64_t b, h, lq, lk, d, dv;
  int mask;  // 0 none, 1 full [B,H,Lq,Lk], 2 broadcast [1,1,Lq,Lk] (stride-0), 3 key padding
  bool causal;
};

void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << "B" << c.b << " H" << c.h << " Lq" << c.lq << " Lk" << c.lk << " D" << c.d << " Dv" << c.dv
      << " mask" << c.mask << (c.causal ? " causal" : "");
}

// The mask as the op hands it to the kernel: expanded to [B, H, Lq, Lk], often with stride 0.
Tensor make_mask(const AttentionCase& c, uint64_t seed) {
  const Shape full{c.b, c.h, c.lq, c.lk};
  switch (c.mask) {
    case 1:
      return random_tensor(full, seed, -2.0f, 2.0f);
    case 2:
      return ops::expand(random_tensor({1, 1, c.lq, c.lk}, seed, -2.0f, 2.0f), full);
    case 3: {  // key padding: the last quarter of the keys blocked, per batch
      std::vector<float> m(c.b * c.lk, 0.0f);
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t j = c.lk - c.lk / 4; j < c.lk; ++j)
          m[b * c.lk + j] = -std::numeric_limits<float>::infinity();
      return ops::expand(Tensor::from_vector(m, {c.b, 1, 1, c.lk}), full);
    }
    default:
      return Tensor();
  }
}

class AttentionKernels : public ::testing::TestWithParam<AttentionCase> {};

// Forward: out atol 2e-5 (weighted averages of values in [-1, 1]), lse atol 2e-5.
// Backward: grads atol 1e-4, rtol 1e-3 (sums over Lq or Lk terms).
TEST_P(AttentionKernels, FastMatchesReference) {
  const AttentionCase& c = GetParam();
  Tensor q = random_tensor({c.b, c.h, c.lq, c.d}, 31, -2.0f, 2.0f);
  Tensor k = random_tensor({c.b, c.h, c.lk, c.d}, 32, -2.0f, 2.0f);
  Tensor v = random_tensor({c.b, c.h, c.lk, c.dv}, 33);
  Tensor mask = make_mask(c, 34);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  AttentionResult r = ref().attention(q, k, v, mask, scale, c.causal);
  AttentionResult f = fast().attention(q, k, v, mask, scale, c.causal);
  EXPECT_TENSORS_CLOSE(f.out, r.out, 2e-5, 1e-4);
  EXPECT_TENSORS_CLOSE(f.lse, r.lse, 2e-5, 1e-5);

  Tensor go = random_tensor({c.b, c.h, c.lq, c.dv}, 35);
  Tensor rq, rk, rv, fq, fk, fv;
  ref().attention_backward(q, k, v, mask, scale, c.causal, r.out, r.lse, go, &rq, &rk, &rv);
  fast().attention_backward(q, k, v, mask, scale, c.causal, r.out, r.lse, go, &fq, &fk, &fv);
  EXPECT_TENSORS_CLOSE(fq, rq, 1e-4, 1e-3);
  EXPECT_TENSORS_CLOSE(fk, rk, 1e-4, 1e-3);
  EXPECT_TENSORS_CLOSE(fv, rv, 1e-4, 1e-3);

  // The same tensors as the attention layers pass them: heads split from [B, L, H*D] rows, a
  // transposed view (unit stride over D only). Both kernels give what they give contiguous ones;
  // through the op (whose gradient rule hands the backward kernels contiguous copies), so do the
  // gradients of those views.
  auto heads_view = [](const Tensor& t) { return t.transpose(1, 2).contiguous().transpose(1, 2); };
  const Tensor qs = heads_view(q), ks = heads_view(k), vs = heads_view(v);
  ASSERT_FALSE(qs.is_contiguous() && c.h > 1 && c.lq > 1);
  for (const KernelTable* t : {&ref(), &fast()}) {
    AttentionResult s = t->attention(qs, ks, vs, mask, scale, c.causal);
    const AttentionResult& want = t == &ref() ? r : f;
    EXPECT_TENSORS_CLOSE(s.out, want.out, 1e-6, 1e-6) << t->name;
    EXPECT_TENSORS_CLOSE(s.lse, want.lse, 1e-6, 1e-6) << t->name;
    use_reference_kernels(t == &ref());
    Tensor ql = qs.detach(), vl = vs.detach();
    ql.set_requires_grad(true);
    vl.set_requires_grad(true);
    ops::sum(ops::scaled_dot_product_attention(ql, ks, vl, mask, scale, c.causal) * go).backward();
    use_reference_kernels(false);
    EXPECT_TENSORS_CLOSE(ql.grad(), t == &ref() ? rq : fq, 1e-6, 1e-6) << t->name;
    EXPECT_TENSORS_CLOSE(vl.grad(), t == &ref() ? rv : fv, 1e-6, 1e-6) << t->name;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernels,
                         ::testing::Values(AttentionCase{1, 1, 1, 1, 1, 1, 0, false},
                                           AttentionCase{2, 3, 17, 33, 40, 24, 0, false},
                                           AttentionCase{2, 3, 17, 33, 40, 24, 1, false},
                                           AttentionCase{1, 2, 33, 17, 8, 8, 0, true},
                                           AttentionCase{1, 2, 130, 130, 64, 64, 2, true},
                                           AttentionCase{2, 2, 257, 77, 40, 40, 3, false},
                                           AttentionCase{1, 8, 300, 77, 40, 40, 0, false},
                                           AttentionCase{1, 1, 200, 300, 64, 80, 1, true},
                                           AttentionCase{1, 2, 5, 520, 64, 32, 2, false}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           return "case" + std::to_string(info.index);
                         });

// A 4096-token self-attention (SD 1.5's first level) on one head, D = 40, against the
// reference: out atol 2e-5 (the fast kernel sees 4096 keys across many tiles).
TEST(AttentionKernelsLong, Sequence4096) {
  Tensor q = random_tensor({1, 1, 4096, 40}, 41, -2.0f, 2.0f);
  Tensor k = random_tensor({1, 1, 4096, 40}, 42, -2.0f, 2.0f);
  Tensor v = random_tensor({1, 1, 4096, 40}, 43);
  const float scale = 1.0f / std::sqrt(40.0f);
  AttentionResult r = ref().attention(q, k, v, Tensor(), scale, false);
  AttentionResult f = fast().attention(q, k, v, Tensor(), scale, false);
  EXPECT_TENSORS_CLOSE(f.out, r.out, 2e-5, 1e-4);
  EXPECT_TENSORS_CLOSE(f.lse, r.lse, 2e-5, 1e-5);
}

// Rows blocked entirely (mask -inf everywhere) give zeros and lse = -inf, no NaN, no gradient.
TEST(AttentionKernelsMasked, FullyMaskedRow) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> m(3 * 5, 0.0f);
  for (int j = 0; j < 5; ++j) m[1 * 5 + j] = ninf;
  Tensor mask = ops::expand(Tensor::from_vector(m, {1, 1, 3, 5}), {1, 2, 3, 5});
  Tensor q = random_tensor({1, 2, 3, 8}, 51), k = random_tensor({1, 2, 5, 8}, 52);
  Tensor v = random_tensor({1, 2, 5, 8}, 53), go = random_tensor({1, 2, 3, 8}, 54);
  for (const KernelTable* t : {&ref(), &fast()}) {
    SCOPED_TRACE(t->name);
    AttentionResult r = t->attention(q, k, v, mask, 0.3f, false);
    const std::vector<float> out = r.out.to_vector(), lse = r.lse.to_vector();
    for (int h = 0; h < 2; ++h) {
      for (int e = 0; e < 8; ++e) EXPECT_EQ(out[(h * 3 + 1) * 8 + e], 0.0f);
      EXPECT_EQ(lse[h * 3 + 1], ninf);
      EXPECT_TRUE(std::isfinite(lse[h * 3]));
    }
    Tensor gq, gk, gv;
    t->attention_backward(q, k, v, mask, 0.3f, false, r.out, r.lse, go, &gq, &gk, &gv);
    for (float g : gq.to_vector()) EXPECT_TRUE(std::isfinite(g));
    for (float g : gk.to_vector()) EXPECT_TRUE(std::isfinite(g));
  }
}

// ---------------- every SIMD target the binary carries ----------------
#ifdef STIPPLE_WITH_FAST_CPU  // Highway's targets exist only in a build with the fast kernels

// The fast kernels dispatch at run time; this host picks its best target, so force each one the
// CPU supports (AVX-512, AVX2, SSE4, ...) and hold it against the reference. Tolerances as above.
TEST(FastKernelsEveryTarget, MatchReference) {
  Tensor x = random_tensor({2, 64, 5, 7}, 101, -2.0f, 3.0f);
  Tensor w = random_tensor({64}, 102, 0.5f, 1.5f), b = random_tensor({64}, 103);
  Tensor x3 = x.reshape({2, 64, 35}), gy = random_tensor({2, 64, 35}, 104);
  Tensor rows = random_tensor({13, 37}, 105, -3.0f, 3.0f), w37 = random_tensor({37}, 106);
  Tensor q = random_tensor({1, 2, 70, 40}, 107, -2.0f, 2.0f);
  Tensor k = random_tensor({1, 2, 300, 40}, 108, -2.0f, 2.0f),
         v = random_tensor({1, 2, 300, 24}, 109);
  Tensor mask = ops::expand(random_tensor({1, 1, 70, 300}, 110), {1, 2, 70, 300});
  Tensor go = random_tensor({1, 2, 70, 24}, 111);
  const GroupNormResult gn = ref().group_norm(x3, 16, w, b, 1e-5f);
  const LayerNormResult ln = ref().layer_norm(rows, w37, Tensor(), 1e-5f);
  const AttentionResult at = ref().attention(q, k, v, mask, 0.2f, true);
  Tensor rq, rk, rv;
  ref().attention_backward(q, k, v, mask, 0.2f, true, at.out, at.lse, go, &rq, &rk, &rv);
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    hwy::SetSupportedTargetsForTest(target);
    EXPECT_TENSORS_CLOSE(fast().group_norm(x3, 16, w, b, 1e-5f).out, gn.out, 2e-5, 1e-5);
    for (int block : {8, 16}) {
      EXPECT_TENSORS_CLOSE(fast().group_norm(ops::to_blocked(x, block), 16, w, b, 1e-5f).out,
                           gn.out.reshape(x.shape()), 2e-5, 1e-5);
    }
    EXPECT_TENSORS_CLOSE(
        fast().group_norm_backward(x3, gy, 16, w, gn.mean, gn.rstd, nullptr, nullptr),
        ref().group_norm_backward(x3, gy, 16, w, gn.mean, gn.rstd, nullptr, nullptr), 2e-5, 1e-4);
    EXPECT_TENSORS_CLOSE(fast().layer_norm(rows, w37, Tensor(), 1e-5f).out, ln.out, 2e-5, 1e-5);
    EXPECT_TENSORS_CLOSE(fast().softmax(rows), ref().softmax(rows), 1e-6, 1e-5);
    const AttentionResult f = fast().attention(q, k, v, mask, 0.2f, true);
    EXPECT_TENSORS_CLOSE(f.out, at.out, 2e-5, 1e-4);
    EXPECT_TENSORS_CLOSE(f.lse, at.lse, 2e-5, 1e-5);
    Tensor fq, fk, fv;
    fast().attention_backward(q, k, v, mask, 0.2f, true, at.out, at.lse, go, &fq, &fk, &fv);
    EXPECT_TENSORS_CLOSE(fq, rq, 1e-4, 1e-3);
    EXPECT_TENSORS_CLOSE(fk, rk, 1e-4, 1e-3);
    EXPECT_TENSORS_CLOSE(fv, rv, 1e-4, 1e-3);
  }
  hwy::SetSupportedTargetsForTest(0);  // back to the host's best target
}
#endif

// ---------------- the ops: gradients, layouts, errors ----------------

// Finite differences in f32 with eps 1e-3: atol 2e-3, rtol 2e-2 (GradcheckOptions defaults).
class OpsBothTables : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { use_reference_kernels(GetParam()); }
  void TearDown() override { use_reference_kernels(false); }
};

TEST_P(OpsBothTables, GroupNormGradcheck) {
  Tensor x = random_tensor({2, 6, 3, 4}, 61, -2.0f, 2.0f).set_requires_grad(true);
  Tensor w = random_tensor({6}, 62, 0.5f, 1.5f).set_requires_grad(true);
  Tensor b = random_tensor({6}, 63).set_requires_grad(true);
  EXPECT_GRADCHECK(
      "group_norm",
      [](const std::vector<Tensor>& in) { return ops::group_norm(in[0], 3, in[1], in[2], 1e-5f); },
      (std::vector<Tensor>{x, w, b}));
}

TEST_P(OpsBothTables, LayerNormGradcheck) {
  Tensor x = random_tensor({2, 3, 10}, 64, -2.0f, 2.0f).set_requires_grad(true);
  Tensor w = random_tensor({10}, 65, 0.5f, 1.5f).set_requires_grad(true);
  Tensor b = random_tensor({10}, 66).set_requires_grad(true);
  EXPECT_GRADCHECK(
      "layer_norm",
      [](const std::vector<Tensor>& in) { return ops::layer_norm(in[0], in[1], in[2], 1e-5f); },
      (std::vector<Tensor>{x, w, b}));
}

TEST_P(OpsBothTables, SoftmaxGradcheck) {
  Tensor x = random_tensor({3, 5, 4}, 67, -2.0f, 2.0f).set_requires_grad(true);
  for (int64_t dim : {-1, 0, 1}) {
    SCOPED_TRACE(::testing::Message() << "dim " << dim);
    EXPECT_GRADCHECK(
        "softmax", [dim](const std::vector<Tensor>& in) { return ops::softmax(in[0], dim); },
        (std::vector<Tensor>{x}));
    EXPECT_GRADCHECK(
        "log_softmax",
        [dim](const std::vector<Tensor>& in) { return ops::log_softmax(in[0], dim); },
        (std::vector<Tensor>{x}));
  }
}

TEST_P(OpsBothTables, AttentionGradcheck) {
  Tensor q = random_tensor({2, 2, 5, 8}, 71, -1.0f, 1.0f).set_requires_grad(true);
  Tensor k = random_tensor({2, 2, 7, 8}, 72, -1.0f, 1.0f).set_requires_grad(true);
  Tensor v = random_tensor({2, 2, 7, 6}, 73, -1.0f, 1.0f).set_requires_grad(true);
  Tensor mask = random_tensor({2, 1, 1, 7}, 74, -1.0f, 1.0f).set_requires_grad(true);
  for (bool causal : {false, true}) {
    SCOPED_TRACE(::testing::Message() << "causal " << causal);
    EXPECT_GRADCHECK(
        "scaled_dot_product_attention",
        [causal](const std::vector<Tensor>& in) {
          return ops::scaled_dot_product_attention(in[0], in[1], in[2], in[3], 0.0f, causal);
        },
        (std::vector<Tensor>{q, k, v, mask}));
  }
}

INSTANTIATE_TEST_SUITE_P(Tables, OpsBothTables, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "reference" : "fast";
                         });

// Forward values of the ops against direct formulas (small, hand-checkable cases).
TEST(NormOps, ValuesMatchFormulas) {
  Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  // softmax over dim 0 of [[1,2,3],[4,5,6]]: every column is softmax([a, a+3]).
  const float s0 = 1.0f / (1.0f + std::exp(3.0f));
  EXPECT_TENSORS_CLOSE(ops::softmax(x, 0),
                       Tensor::from_vector({s0, s0, s0, 1 - s0, 1 - s0, 1 - s0}, {2, 3}), 1e-6, 0);
  EXPECT_TENSORS_CLOSE(ops::log_softmax(x, -1), ops::log(ops::softmax(x, -1)), 1e-6, 0);
  // layer_norm of [1, 2, 3]: mean 2, var 2/3.
  const float r = 1.0f / std::sqrt(2.0f / 3.0f + 1e-5f);
  EXPECT_TENSORS_CLOSE(ops::layer_norm(x, Tensor(), Tensor()),
                       Tensor::from_vector({-r, 0, r, -r, 0, r}, {2, 3}), 1e-5, 0);
  // group_norm with one channel per group equals layer_norm over the spatial dims.
  Tensor y = random_tensor({2, 4, 3, 3}, 81);
  EXPECT_TENSORS_CLOSE(
      ops::group_norm(y, 4, Tensor(), Tensor()),
      ops::layer_norm(y.reshape({2, 4, 9}), Tensor(), Tensor()).reshape({2, 4, 3, 3}), 1e-5, 0);
}

// The op keeps a blocked activation blocked for inference, and equals the plain result.
TEST(NormOps, GroupNormKeepsBlockedLayout) {
  Tensor x = random_tensor({1, 64, 6, 5}, 82, -2.0f, 2.0f);
  Tensor w = random_tensor({64}, 83), b = random_tensor({64}, 84);
  Tensor want = ops::group_norm(x, 32, w, b);
  autograd::NoGradGuard no_grad;
  Tensor got = ops::group_norm(ops::to_blocked(x, 16), 32, w, b);
  EXPECT_EQ(got.channel_block(), 16);
  EXPECT_TENSORS_CLOSE(got, want, 2e-5, 1e-5);
}

// The op: mask broadcasting ([Lq, Lk] and [B, 1, 1, Lk]), default scale, causal.
TEST(AttentionOps, MatchesComposedFormula) {
  Tensor q = random_tensor({2, 3, 6, 40}, 91), k = random_tensor({2, 3, 9, 40}, 92);
  Tensor v = random_tensor({2, 3, 9, 24}, 93), mask = random_tensor({6, 9}, 94);
  Tensor got = ops::scaled_dot_product_attention(q, k, v, mask);
  Tensor s = ops::add(
      ops::mul(ops::matmul(q, ops::transpose(k, 2, 3)), Tensor::scalar(1.0 / std::sqrt(40.0))),
      mask);
  Tensor want = ops::matmul(ops::softmax(s, -1), v);
  EXPECT_TENSORS_CLOSE(got, want, 2e-5, 1e-4);
}

TEST(NormOps, BadInputsThrow) {
  Tensor x = random_tensor({2, 6, 4}, 95);
  EXPECT_THROW(ops::group_norm(x, 4, Tensor(), Tensor()), Error);                      // 6 % 4 != 0
  EXPECT_THROW(ops::group_norm(x, 0, Tensor(), Tensor()), Error);                      // no groups
  EXPECT_THROW(ops::group_norm(random_tensor({6}, 1), 3, Tensor(), Tensor()), Error);  // 1-D
  EXPECT_THROW(ops::group_norm(x, 3, random_tensor({5}, 1), Tensor()), Error);         // weight [5]
  EXPECT_THROW(ops::layer_norm(x, random_tensor({6}, 1), Tensor()), Error);     // weight [6] vs D 4
  EXPECT_THROW(ops::layer_norm(x, Tensor(), random_tensor({4, 1}, 1)), Error);  // bias 2-D
  EXPECT_THROW(ops::softmax(x, 3), Error);                                      // dim out of range
  EXPECT_THROW(ops::log_softmax(x, -4), Error);
  EXPECT_THROW(ops::softmax(Tensor::from_vector_i64({1, 2}, {2}), 0), Error);  // not floating
}

TEST(AttentionOps, BadInputsThrow) {
  Tensor q = random_tensor({1, 2, 5, 8}, 96), k = random_tensor({1, 2, 7, 8}, 97);
  Tensor v = random_tensor({1, 2, 7, 4}, 98);
  auto sdpa = [](const Tensor& a, const Tensor& b, const Tensor& c, const Tensor& m = Tensor()) {
    return ops::scaled_dot_product_attention(a, b, c, m);
  };
  EXPECT_THROW(sdpa(q.reshape({2, 5, 8}), k, v), Error);                  // 3-D q
  EXPECT_THROW(sdpa(q, random_tensor({1, 2, 7, 6}, 1), v), Error);        // D differs
  EXPECT_THROW(sdpa(q, k, random_tensor({1, 2, 6, 4}, 1)), Error);        // Lk differs
  EXPECT_THROW(sdpa(q, random_tensor({1, 3, 7, 8}, 1), v), Error);        // heads differ
  EXPECT_THROW(sdpa(q, k, v, random_tensor({5, 6}, 1)), Error);           // mask [5, 6]
  EXPECT_THROW(sdpa(q, k, v, random_tensor({2, 2, 5, 7}, 1)), Error);     // mask batch 2
  EXPECT_THROW(sdpa(q, k, v, Tensor::from_vector_i64({0}, {1})), Error);  // integer mask
}

}  // namespace
}  // namespace stipple

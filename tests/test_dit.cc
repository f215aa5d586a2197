// Tests for the shared embeddings (nn/embeddings), the transformer block (nn/transformer_block)
// and the DiT denoiser (models/dit): hand-computed timestep features, properties of the 2-D
// sin-cos table, conformance with diffusers 0.29 on ../shared, gradients of a tiny block, and
// errors that name the bad key or tensor.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "nn/embeddings.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;
using testing::shared_path;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

// The conformance tolerance: max|ours - ref| <= 1e-4 * max(1, max|ref|).
::testing::AssertionResult conformant(const Tensor& ours, const Tensor& ref) {
  double max_ref = 0;
  for (float v : ref.to_vector()) max_ref = std::max(max_ref, static_cast<double>(std::fabs(v)));
  return testing::tensors_close(ours, ref, 1e-4 * std::max(1.0, max_ref));
}

// ---------------- timestep_embedding ----------------

TEST(TimestepEmbedding, HandComputedValues) {
  // dim 4, shift 1: half = 2, freq = exp(-ln(1e4) * k / (2 - 1)) = {1, 1e-4}.
  const Tensor t = Tensor::from_vector({0.0f, 1.0f, 500.0f}, {3});
  const Tensor e = nn::timestep_embedding(t, 4, /*flip_sin_to_cos=*/false, 1.0f);
  ASSERT_EQ(e.shape(), (Shape{3, 4}));
  std::vector<float> want;
  for (double tv : {0.0, 1.0, 500.0}) {
    want.insert(want.end(), {static_cast<float>(std::sin(tv)), static_cast<float>(std::sin(tv * 1e-4)),
                             static_cast<float>(std::cos(tv)), static_cast<float>(std::cos(tv * 1e-4))});
  }
  EXPECT_TENSORS_CLOSE(e, Tensor::from_vector(want, {3, 4}), 2e-4, 0.0);

  // dim 8, shift 0, flipped: freq = 10000^(-k/4) = {1, 0.1, 0.01, 0.001}, emb = [cos, sin].
  const Tensor ti = Tensor::from_vector_i64({3, 250}, {2});
  const Tensor f = nn::timestep_embedding(ti, 8, /*flip_sin_to_cos=*/true, 0.0f);
  std::vector<float> want2;
  for (double tv : {3.0, 250.0}) {
    for (double fr : {1.0, 0.1, 0.01, 0.001}) want2.push_back(static_cast<float>(std::cos(tv * fr)));
    for (double fr : {1.0, 0.1, 0.01, 0.001}) want2.push_back(static_cast<float>(std::sin(tv * fr)));
  }
  EXPECT_TENSORS_CLOSE(f, Tensor::from_vector(want2, {2, 8}), 1e-4, 0.0);

  // An odd dim pads one zero column; scale multiplies the argument.
  const Tensor g = nn::timestep_embedding(ti, 5, false, 0.0f, /*scale=*/2.0f);
  ASSERT_EQ(g.shape(), (Shape{2, 5}));
  const std::vector<float> gv = g.to_vector();
  EXPECT_EQ(gv[4], 0.0f);
  EXPECT_NEAR(gv[0], std::sin(6.0), 1e-6);
  EXPECT_NEAR(gv[2], std::cos(6.0), 1e-6);
}

TEST(TimestepEmbedding, MatchesDiffusersUNetTimeProj) {
  const std::string path = shared_path("conformance/sd_tiny/reference/unet_io.safetensors");
  if (path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto ref = io::load_safetensors(path);
  // UNet: Timesteps(block_out_channels[0] = 32, flip_sin_to_cos, shift 0), t = 500.
  const Tensor want = ref.at("inter_a.time_proj");
  const Tensor t = Tensor::from_vector_i64(std::vector<int64_t>(want.size(0), 500), {want.size(0)});
  nn::Timesteps proj(want.size(1), true, 0.0f);
  EXPECT_TRUE(conformant(proj(t), want));
}

// ---------------- 2-D sin-cos table ----------------

TEST(SincosPosEmbed, Properties) {
  const int64_t d = 16, gh = 3, gw = 5;
  const Tensor pe = nn::get_2d_sincos_pos_embed(d, gh, gw, /*base_size=*/static_cast<double>(gh),
                                                /*interpolation_scale=*/1.0);
  ASSERT_EQ(pe.shape(), (Shape{gh * gw, d}));
  const std::vector<float> v = pe.to_vector();
  auto at = [&](int64_t i, int64_t j, int64_t c) { return v[(i * gw + j) * d + c]; };
  // Position (0, 0): sin = 0 and cos = 1 in both halves.
  for (int64_t c = 0; c < d; ++c) EXPECT_FLOAT_EQ(at(0, 0, c), (c % 8) < 4 ? 0.0f : 1.0f);
  for (int64_t i = 0; i < gh; ++i) {
    for (int64_t j = 0; j < gw; ++j) {
      // First half: the column coordinate only; second half: the row only.
      for (int64_t c = 0; c < d / 2; ++c) EXPECT_EQ(at(i, j, c), at(0, j, c));
      for (int64_t c = d / 2; c < d; ++c) EXPECT_EQ(at(i, j, c), at(i, 0, c));
      // sin^2 + cos^2 = 1 per frequency.
      for (int64_t k = 0; k < d / 4; ++k) {
        for (int64_t h = 0; h < 2; ++h) {
          const float s = at(i, j, h * d / 2 + k), c = at(i, j, h * d / 2 + d / 4 + k);
          EXPECT_NEAR(s * s + c * c, 1.0f, 1e-6);
        }
      }
    }
  }
  // Explicit values: pos_w = j / (gw / gh) (base_size = gh), omega_k = 10000^(-k / 4).
  const double pos_w = 4.0 / (5.0 / 3.0);
  for (int64_t k = 0; k < 4; ++k) {
    const double om = std::pow(10000.0, -k / 4.0);
    EXPECT_NEAR(at(2, 4, k), std::sin(pos_w * om), 1e-6);
    EXPECT_NEAR(at(2, 4, 4 + k), std::cos(pos_w * om), 1e-6);
    EXPECT_NEAR(at(2, 4, 8 + k), std::sin(2.0 * om), 1e-6);
  }
  // interpolation_scale divides the positions.
  const Tensor half = nn::get_2d_sincos_pos_embed(d, 4, 4, 4.0, 2.0);
  const Tensor full = nn::get_2d_sincos_pos_embed(d, 2, 2, 2.0, 1.0);
  EXPECT_NEAR(half.to_vector()[(0 * 4 + 2) * d + 1], full.to_vector()[(0 * 2 + 1) * d + 1], 1e-7);
  EXPECT_NE(error_of([] { nn::get_2d_sincos_pos_embed(6, 2, 2.0); }).find("multiple of 4"),
            std::string::npos);
}

TEST(SincosPosEmbed, MatchesDiffusersBuffer) {
  const std::string path = shared_path("conformance/dit_transformer/reference/dit_io.safetensors");
  if (path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto ref = io::load_safetensors(path);
  const Tensor want = ref.at("pos_embed_buffer");  // [1, 16, 32]: sample 8, patch 2
  nn::PatchEmbedOptions o;
  o.height = o.width = 8;
  o.patch_size = 2;
  o.in_channels = 4;
  o.embed_dim = want.size(2);
  nn::PatchEmbed pe(o);
  EXPECT_TENSORS_CLOSE(pe.pos_embed(), want, 1e-7, 0.0);
  // Non-persistent: not a checkpoint key.
  EXPECT_EQ(pe.state_dict().count("pos_embed"), 0u);
  EXPECT_EQ(pe.state_dict().count("proj.weight"), 1u);
}

TEST(PatchEmbed, ShapesCropAndOtherSizes) {
  nn::PatchEmbedOptions o;
  o.height = o.width = 8;
  o.patch_size = 2;
  o.in_channels = 3;
  o.embed_dim = 8;
  o.layer_norm = true;
  nn::PatchEmbed pe(o);
  Generator gen(1);
  pe.reset_parameters(gen);
  EXPECT_EQ(pe(random_tensor({2, 3, 8, 8}, 1)).shape(), (Shape{2, 16, 8}));
  // A 12x4 input gets a 6x2 table computed with the same base size.
  EXPECT_EQ(pe(random_tensor({1, 3, 12, 4}, 2)).shape(), (Shape{1, 12, 8}));
  EXPECT_TENSORS_CLOSE(pe.pos_embed_for(6, 2),
                       nn::get_2d_sincos_pos_embed(8, 6, 2, 4.0, 1.0).unsqueeze(0), 0, 0);
  // pos_embed_max_size: the centre crop of a persistent max^2 table.
  o.pos_embed_max_size = 6;
  nn::PatchEmbed cropped(o);
  EXPECT_EQ(cropped.state_dict().count("pos_embed"), 1u);
  const Tensor full = nn::get_2d_sincos_pos_embed(8, 6, 6, 4.0, 1.0).reshape({6, 6, 8});
  EXPECT_TENSORS_CLOSE(cropped.pos_embed_for(2, 4),
                       full.narrow(0, 2, 2).narrow(1, 1, 4).reshape({1, 8, 8}), 0, 0);
  EXPECT_NE(error_of([&] { pe(random_tensor({1, 3, 7, 8}, 3)); }).find("multiples of the patch"),
            std::string::npos);
}

// ---------------- label and combined embeddings ----------------

TEST(LabelEmbedding, NullRowAndDrops) {
  nn::LabelEmbedding with_null(10, 4, 0.1f), without(10, 4, 0.0f);
  EXPECT_EQ(with_null.embedding_table->num_embeddings(), 11);
  EXPECT_EQ(without.embedding_table->num_embeddings(), 10);
  Generator gen(3);
  with_null.reset_parameters(gen);
  const Tensor table = with_null.embedding_table->weight();
  const Tensor labels = Tensor::from_vector_i64({1, 10, 3}, {3});
  // Eval mode: labels as given, the null row (10) reachable directly.
  with_null.eval();
  EXPECT_TENSORS_CLOSE(with_null(labels), ops::embedding(table, labels), 0, 0);
  // force_drop_ids replaces marked labels by the null class.
  const Tensor dropped =
      with_null.forward(labels, Tensor::from_vector_i64({0, 0, 1}, {3}));
  EXPECT_TENSORS_CLOSE(dropped, ops::embedding(table, Tensor::from_vector_i64({1, 10, 10}, {3})),
                       0, 0);
  // Training with a generator drops about dropout_prob of the labels; without one, none.
  with_null.train();
  const Tensor many = Tensor::from_vector_i64(std::vector<int64_t>(2000, 2), {2000});
  const std::vector<int64_t> kept = with_null.token_drop(many, Tensor(), &gen).to_vector_i64();
  int64_t n_null = 0;
  for (int64_t v : kept) n_null += v == 10;
  EXPECT_NEAR(n_null / 2000.0, 0.1, 0.03);
  EXPECT_TENSORS_CLOSE(with_null(labels), ops::embedding(table, labels), 0, 0);
  EXPECT_NE(error_of([&] { without(Tensor::from_vector_i64({10}, {1})); }).find("out of range"),
            std::string::npos);
}

TEST(CombinedTimestepLabelEmbeddings, KeysAndSum) {
  nn::CombinedTimestepLabelEmbeddings emb(10, 32);
  const auto sd = emb.state_dict();
  for (const char* key : {"timestep_embedder.linear_1.weight", "timestep_embedder.linear_1.bias",
                          "timestep_embedder.linear_2.weight", "timestep_embedder.linear_2.bias",
                          "class_embedder.embedding_table.weight"}) {
    EXPECT_EQ(sd.count(key), 1u) << key;
  }
  EXPECT_EQ(sd.size(), 5u);
  EXPECT_EQ(sd.at("class_embedder.embedding_table.weight").shape(), (Shape{11, 32}));
  Generator gen(4);
  emb.reset_parameters(gen);
  emb.eval();
  const Tensor t = Tensor::from_vector({10.0f, 999.5f}, {2});
  const Tensor y = Tensor::from_vector_i64({0, 10}, {2});
  const Tensor want = ops::add(
      emb.timestep_embedder->forward(nn::timestep_embedding(t, 256, true, 1.0f)),
      emb.class_embedder->forward(y));
  EXPECT_TENSORS_CLOSE(emb.forward(t, y), want, 0, 0);
}

}  // namespace
}  // namespace stipple

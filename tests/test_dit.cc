// Tests for the shared embeddings (nn/embeddings), the transformer block (nn/transformer_block)
// and the DiT denoiser (models/dit): hand-computed timestep features, properties of the 2-D
// sin-cos table, conformance with diffusers 0.29 on ../shared, gradients of a tiny block, and
// errors that name the bad key or tensor.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "models/dit.h"
#include "nn/embeddings.h"
#include "nn/transformer_block.h"
#include "ops/ops.h"
#include "support/numerics.h"
#include "support/tiny_models.h"

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
  ::testing::AssertionResult r = testing::tensors_close(ours, ref, 1e-4 * std::max(1.0, max_ref));
  if (r) std::printf("  conformance %s\n", r.message());  // the measured error, for the record
  return r;
}

// ---------------- timestep_embedding ----------------

TEST(TimestepEmbedding, HandComputedValues) {
  // dim 4, shift 1: half = 2, freq = exp(-ln(1e4) * k / (2 - 1)) = {1, 1e-4}.
  const Tensor t = Tensor::from_vector({0.0f, 1.0f, 500.0f}, {3});
  const Tensor e = nn::timestep_embedding(t, 4, /*flip_sin_to_cos=*/false, 1.0f);
  ASSERT_EQ(e.shape(), (Shape{3, 4}));
  std::vector<float> want;
  for (double tv : {0.0, 1.0, 500.0}) {
    for (double v : {std::sin(tv), std::sin(tv * 1e-4), std::cos(tv), std::cos(tv * 1e-4)}) {
      want.push_back(static_cast<float>(v));
    }
  }
  EXPECT_TENSORS_CLOSE(e, Tensor::from_vector(want, {3, 4}), 2e-4, 0.0);

  // dim 8, shift 0, flipped: freq = 10000^(-k/4) = {1, 0.1, 0.01, 0.001}, emb = [cos, sin].
  const Tensor ti = Tensor::from_vector_i64({3, 250}, {2});
  const Tensor f = nn::timestep_embedding(ti, 8, /*flip_sin_to_cos=*/true, 0.0f);
  std::vector<float> want2;
  for (double tv : {3.0, 250.0}) {
    for (double fr : {1.0, 0.1, 0.01, 0.001})
      want2.push_back(static_cast<float>(std::cos(tv * fr)));
    for (double fr : {1.0, 0.1, 0.01, 0.001})
      want2.push_back(static_cast<float>(std::sin(tv * fr)));
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
  EXPECT_NE(error_of([&] {
              pe(random_tensor({1, 3, 7, 8}, 3));
            }).find("multiples of the patch"),
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
  const Tensor dropped = with_null.forward(labels, Tensor::from_vector_i64({0, 0, 1}, {3}));
  EXPECT_TENSORS_CLOSE(dropped, ops::embedding(table, Tensor::from_vector_i64({1, 10, 10}, {3})), 0,
                       0);
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
  const Tensor want =
      ops::add(emb.timestep_embedder->forward(nn::timestep_embedding(t, 256, true, 1.0f)),
               emb.class_embedder->forward(y));
  EXPECT_TENSORS_CLOSE(emb.forward(t, y), want, 0, 0);
}

// ---------------- transformer block ----------------

nn::BasicTransformerBlockConfig tiny_block_config() {
  nn::BasicTransformerBlockConfig c;
  c.dim = 8;
  c.num_attention_heads = 2;
  c.attention_head_dim = 4;
  c.activation_fn = "gelu-approximate";
  c.num_embeds_ada_norm = 3;
  c.attention_bias = true;
  c.norm_type = "ada_norm_zero";
  c.norm_elementwise_affine = false;
  return c;
}

TEST(BasicTransformerBlock, KeyNames) {
  nn::BasicTransformerBlock dit_block(tiny_block_config());
  const auto sd = dit_block.state_dict();
  for (const char* key :
       {"norm1.emb.timestep_embedder.linear_1.weight",
        "norm1.emb.class_embedder.embedding_table.weight", "norm1.linear.weight",
        "norm1.linear.bias", "attn1.to_q.weight", "attn1.to_q.bias", "attn1.to_out.0.weight",
        "ff.net.0.proj.weight", "ff.net.2.weight", "ff.net.2.bias"}) {
    EXPECT_EQ(sd.count(key), 1u) << key;
  }
  EXPECT_EQ(sd.count("norm3.weight"), 0u);  // no affine
  EXPECT_EQ(sd.count("attn2.to_q.weight"), 0u);
  EXPECT_EQ(sd.at("norm1.linear.weight").shape(), (Shape{48, 8}));

  // Stable Diffusion's block: LayerNorms with affine, cross-attention, GEGLU.
  nn::BasicTransformerBlockConfig sd_cfg;
  sd_cfg.dim = 8;
  sd_cfg.num_attention_heads = 2;
  sd_cfg.attention_head_dim = 4;
  sd_cfg.cross_attention_dim = 6;
  nn::BasicTransformerBlock sd_block(sd_cfg);
  const auto s2 = sd_block.state_dict();
  for (const char* key : {"norm1.weight", "norm2.bias", "norm3.weight", "attn2.to_k.weight",
                          "ff.net.0.proj.weight", "ff.net.2.weight"}) {
    EXPECT_EQ(s2.count(key), 1u) << key;
  }
  EXPECT_EQ(s2.count("attn1.to_q.bias"), 0u);
  EXPECT_EQ(s2.at("attn2.to_k.weight").shape(), (Shape{8, 6}));
  EXPECT_EQ(s2.at("ff.net.0.proj.weight").shape(), (Shape{64, 8}));  // GEGLU: 2 * 4 * dim
  Generator gen(5);
  sd_block.reset_parameters(gen);
  const Tensor y = sd_block.forward(random_tensor({2, 5, 8}, 1), random_tensor({2, 3, 6}, 2));
  EXPECT_EQ(y.shape(), (Shape{2, 5, 8}));
  EXPECT_NE(error_of([&] {
              sd_block.forward(random_tensor({2, 5, 8}, 1));
            }).find("encoder_hidden_states"),
            std::string::npos);
  sd_cfg.norm_type = "ada_norm_single";
  EXPECT_NE(error_of([&] { nn::BasicTransformerBlock bad(sd_cfg); }).find("ada_norm_single"),
            std::string::npos);
}

TEST(FeedForward, EachActivationAsOpComposition) {
  Generator gen(14);
  const Tensor x = random_tensor({2, 3, 8}, 15);
  for (const char* act : {"gelu", "gelu-approximate", "geglu", "geglu-approximate"}) {
    nn::FeedForwardOptions o;
    o.activation_fn = act;
    o.mult = 2;
    o.dim_out = 5;
    nn::FeedForward ff(8, o);
    ff.reset_parameters(gen);
    const Tensor h = ops::linear(x, ff.act_proj()->weight(), ff.act_proj()->bias());
    Tensor a;
    if (std::string(act) == "gelu") a = ops::gelu(h);
    if (std::string(act) == "gelu-approximate") a = ops::gelu(h, true);
    if (std::string(act) == "geglu") {
      const auto hg = ops::chunk(h, 2, -1);  // hidden, gate
      a = ops::mul(hg[0], ops::gelu(hg[1]));
    }
    if (std::string(act) == "geglu-approximate") a = ops::mul(h, ops::sigmoid(h * 1.702f));
    const Tensor want = ops::linear(a, ff.out_proj()->weight(), ff.out_proj()->bias());
    EXPECT_TENSORS_CLOSE(ff(x), want, 1e-6, 1e-5);
    EXPECT_EQ(ff.state_dict().count("net.2.weight"), 1u) << act;
    EXPECT_EQ(ff.state_dict().at("net.0.proj.weight").size(0),
              std::string(act) == "geglu" ? 32 : 16)
        << act;
  }
  nn::FeedForwardOptions bad;
  bad.activation_fn = "swiglu";
  EXPECT_NE(error_of([&] { nn::FeedForward ff(8, bad); }).find("swiglu"), std::string::npos);
}

TEST(BasicTransformerBlock, AdaLayerNormZeroMath) {
  // With the modulation zeroed, the block is the identity (adaLN-Zero, DiT paper Sec. 3.2).
  nn::BasicTransformerBlock block(tiny_block_config());
  Generator gen(6);
  block.reset_parameters(gen);
  for (const Tensor& t :
       {block.norm1_ada_zero->linear->weight(), block.norm1_ada_zero->linear->bias()}) {
    float* d = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = 0.0f;
  }
  const Tensor x = random_tensor({2, 3, 8}, 7);
  const Tensor t = Tensor::from_vector({5.0f, 700.0f}, {2});
  const Tensor y = Tensor::from_vector_i64({0, 3}, {2});
  EXPECT_TENSORS_CLOSE(block.forward(x, Tensor(), Tensor(), Tensor(), t, y), x, 0, 0);
}

TEST(BasicTransformerBlock, GradcheckEveryParameter) {
  nn::BasicTransformerBlock block(tiny_block_config());
  Generator gen(8);
  block.reset_parameters(gen);  // PyTorch defaults: nothing zero, so every path carries gradient
  const Tensor t = Tensor::from_vector({3.0f, 420.0f}, {2});
  const Tensor labels = Tensor::from_vector_i64({1, 3}, {2});
  std::vector<Tensor> inputs = {random_tensor({2, 3, 8}, 9).set_requires_grad(true)};
  std::vector<std::string> names = {"x"};
  for (const auto& [name, p] : block.named_parameters()) {
    inputs.push_back(p);
    names.push_back(name);
  }
  auto fn = [&](const std::vector<Tensor>& in) {
    return block.forward(in[0], Tensor(), Tensor(), Tensor(), t, labels);
  };
  testing::GradcheckOptions opt;
  opt.max_probes = 16;
  EXPECT_GRADCHECK("BasicTransformerBlock(ada_norm_zero)", fn, inputs, opt);
  // Every parameter got a gradient (the label rows not used get zeros).
  for (size_t i = 1; i < inputs.size(); ++i) {
    EXPECT_TRUE(inputs[i].grad().defined()) << names[i];
  }
}

// ---------------- DiT ----------------

using testing::tiny_dit_config;

TEST(DiT, GradcheckWholeModel) {
  models::DiTTransformer2DModel model(tiny_dit_config());
  Generator gen(10);
  model.nn::Module::reset_parameters(gen);  // PyTorch defaults (the DiT init zeroes paths)
  const Tensor t = Tensor::from_vector_i64({17, 901}, {2});
  const Tensor labels = Tensor::from_vector_i64({2, 3}, {2});
  std::vector<Tensor> inputs = {random_tensor({2, 2, 4, 4}, 11).set_requires_grad(true)};
  for (const Tensor& p : model.parameters()) inputs.push_back(p);
  auto fn = [&](const std::vector<Tensor>& in) { return model.forward(in[0], t, labels); };
  testing::GradcheckOptions opt;
  opt.max_probes = 16;
  EXPECT_GRADCHECK("DiTTransformer2DModel", fn, inputs, opt);
}

TEST(DiT, InitialisationIsAdaLNZero) {
  models::DiTTransformer2DModel model(tiny_dit_config());
  Generator gen(12);
  model.reset_parameters(gen);
  auto all_zero = [](const Tensor& t) {
    for (float v : t.to_vector()) {
      if (v != 0.0f) return false;
    }
    return true;
  };
  for (size_t i = 0; i < model.transformer_blocks->size(); ++i) {
    EXPECT_TRUE(all_zero(model.block(i)->norm1_ada_zero->linear->weight()));
    EXPECT_TRUE(all_zero(model.block(i)->norm1_ada_zero->linear->bias()));
  }
  EXPECT_TRUE(all_zero(model.proj_out_1->weight()));
  EXPECT_TRUE(all_zero(model.proj_out_2->weight()));
  EXPECT_TRUE(all_zero(model.proj_out_2->bias()));
  // xavier_uniform bound sqrt(6 / (fan_in + fan_out)); q/k/v use the fused qkv fan-out 3D.
  const auto within = [](const Tensor& t, double bound) {
    double m = 0;
    for (float v : t.to_vector()) m = std::max(m, static_cast<double>(std::fabs(v)));
    return m <= bound && m > 0.5 * bound;
  };
  EXPECT_TRUE(within(model.block(0)->attn1->to_q()->weight(), std::sqrt(6.0 / (8 + 24))));
  EXPECT_TRUE(within(model.block(0)->attn1->to_out()->weight(), std::sqrt(6.0 / 16)));
  EXPECT_TRUE(within(model.block(1)->ff->out_proj()->weight(), std::sqrt(6.0 / (32 + 8))));
  EXPECT_TRUE(within(model.pos_embed->proj->weight(), std::sqrt(6.0 / (8 + 8))));
  EXPECT_TRUE(all_zero(model.block(0)->attn1->to_q()->bias()));
  // The initial prediction is zero.
  const Tensor out =
      model.forward(random_tensor({1, 2, 4, 4}, 13), Tensor::from_vector_i64({10}, {1}),
                    Tensor::from_vector_i64({1}, {1}));
  EXPECT_EQ(out.shape(), (Shape{1, 4, 4, 4}));
  EXPECT_TRUE(all_zero(out));
}

TEST(DiT, MatchesDiffusers) {
  const std::string folder = shared_path("conformance/dit_transformer/transformer");
  const std::string io_path =
      shared_path("conformance/dit_transformer/reference/dit_io.safetensors");
  if (folder.empty() || io_path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto model = models::DiTTransformer2DModel::from_pretrained(folder);
  EXPECT_TRUE(model->config().learned_sigma());
  const auto ref = io::load_safetensors(io_path);
  const Tensor x = ref.at("hidden_states");
  const Tensor ta = ref.at("timestep_a"), ya = ref.at("class_labels_a");

  // Intermediates of case a, in the order of the figure.
  Tensor tokens = model->pos_embed->forward(x);
  EXPECT_TRUE(conformant(tokens, ref.at("inter_a.pos_embed"))) << "pos_embed";
  const Tensor c = model->conditioning(ta, ya);
  EXPECT_TRUE(conformant(c, ref.at("inter_a.transformer_blocks.0.norm1.emb"))) << "norm1.emb";
  for (size_t i = 0; i < model->transformer_blocks->size(); ++i) {
    tokens = model->block(i)->forward(tokens, Tensor(), Tensor(), Tensor(), ta, ya);
    EXPECT_TRUE(conformant(tokens, ref.at("inter_a.transformer_blocks." + std::to_string(i))))
        << "block " << i;
  }
  EXPECT_TRUE(conformant(model->proj_out_1->forward(ops::silu(c)), ref.at("inter_a.proj_out_1")));

  // Outputs: integer timesteps with the null class (case a), fractional timesteps (case b).
  EXPECT_TRUE(conformant(model->forward(x, ta, ya), ref.at("out_a"))) << "out_a";
  EXPECT_TRUE(conformant(model->forward(x, ref.at("timestep_b"), ref.at("class_labels_b")),
                         ref.at("out_b")))
      << "out_b";
}

// The same weights under the legacy Transformer2DModel config compute the same function.
TEST(DiT, LegacyTransformer2DModelConfig) {
  const std::string folder = shared_path("conformance/dit_transformer/transformer");
  const std::string io_path =
      shared_path("conformance/dit_transformer/reference/dit_io.safetensors");
  if (folder.empty() || io_path.empty()) GTEST_SKIP() << "../shared is absent";
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "stipple_test_dit_legacy";
  fs::create_directories(dir);
  nlohmann::json cfg = io::read_json_file(folder + "/config.json");
  cfg["_class_name"] = "Transformer2DModel";
  cfg["cross_attention_dim"] = nullptr;
  cfg["num_vector_embeds"] = nullptr;
  std::ofstream(dir / "config.json") << cfg.dump(2);
  fs::copy_file(fs::path(folder) / "diffusion_pytorch_model.safetensors",
                dir / "diffusion_pytorch_model.safetensors", fs::copy_options::overwrite_existing);
  const auto model = models::DiTTransformer2DModel::from_pretrained(dir.string());
  EXPECT_EQ(model->type_name(), "Transformer2DModel");
  const auto ref = io::load_safetensors(io_path);
  EXPECT_TRUE(conformant(
      model->forward(ref.at("hidden_states"), ref.at("timestep_a"), ref.at("class_labels_a")),
      ref.at("out_a")));
  fs::remove_all(dir);
}

// The DiT pipeline's checkpoint (1000 classes): every recorded denoiser call.
TEST(DiT, MatchesPipelineDenoiserCalls) {
  const std::string folder = shared_path("conformance/dit_tiny/transformer");
  const std::string run = shared_path("conformance/dit_tiny/reference/dit_pipeline.safetensors");
  if (folder.empty() || run.empty()) GTEST_SKIP() << "../shared is absent";
  const auto model = models::DiTTransformer2DModel::from_pretrained(folder);
  const auto ref = io::load_safetensors(run);
  const Tensor samples = ref.at("denoiser.sample"), outs = ref.at("denoiser.out");
  const Tensor ts = ref.at("denoiser.timestep_as_passed"), labels = ref.at("denoiser.class_labels");
  for (int64_t step = 0; step < samples.size(0); ++step) {
    const Tensor out = model->forward(samples.narrow(0, step, 1).squeeze(0),
                                      ts.narrow(0, step, 1).squeeze(0), labels);
    EXPECT_TRUE(conformant(out, outs.narrow(0, step, 1).squeeze(0))) << "step " << step;
  }
}

// ---------------- errors ----------------

class DiTErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    // One folder per test and process: ctest runs this suite's tests side by side.
    dir_ = std::filesystem::temp_directory_path() /
           ("stipple_test_dit_errors_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write_config(const nlohmann::json& j) { std::ofstream(dir_ / "config.json") << j.dump(); }
  nlohmann::json good_config() const {
    return {{"_class_name", "DiTTransformer2DModel"},
            {"num_attention_heads", 2},
            {"attention_head_dim", 4},
            {"in_channels", 2},
            {"out_channels", 4},
            {"num_layers", 1},
            {"sample_size", 4},
            {"patch_size", 2},
            {"num_embeds_ada_norm", 3}};
  }
  std::filesystem::path dir_;
};

TEST_F(DiTErrors, BadConfigNamesTheKey) {
  auto j = good_config();
  j["norm_type"] = "layer_norm";
  write_config(j);
  std::string e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("norm_type"), std::string::npos) << e;
  EXPECT_NE(e.find("config.json"), std::string::npos) << e;

  j = good_config();
  j["attention_head_dim"] = "sixteen";
  write_config(j);
  e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("attention_head_dim"), std::string::npos) << e;

  j = good_config();
  j["sample_size"] = 5;
  write_config(j);
  e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("sample_size"), std::string::npos) << e;

  j = good_config();
  j["_class_name"] = "UNet2DConditionModel";
  write_config(j);
  e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("UNet2DConditionModel"), std::string::npos) << e;

  j = good_config();
  j["num_embeds_ada_norm"] = nullptr;
  j["_class_name"] = "Transformer2DModel";
  j["norm_type"] = "ada_norm_zero";
  write_config(j);
  e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("num_embeds_ada_norm"), std::string::npos) << e;
}

// Found by fuzz/fuzz_json_config.cc (crash-4_dit_inner_dim_overflow): validate() multiplied
// num_attention_heads by attention_head_dim before bounding them, a signed overflow (UB).
TEST(DiTConfigBounds, HugeHeadSizesAreRefusedBeforeTheirProduct) {
  const std::string e = error_of([] {
    models::DiTConfig::from_json(io::JsonConfig(
        nlohmann::json{{"num_attention_heads", 4000000000000LL},
                       {"attention_head_dim", 4000000000000LL}},
        "transformer/config.json"));
  });
  EXPECT_NE(e.find("transformer/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("num_attention_heads"), std::string::npos) << e;
}

TEST_F(DiTErrors, MissingOrMisshapenTensorIsNamed) {
  write_config(good_config());
  std::string e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("diffusion_pytorch_model.safetensors"), std::string::npos) << e;

  models::DiTTransformer2DModel model(
      models::DiTConfig::from_file((dir_ / "config.json").string()));
  auto state = model.state_dict();
  state.erase("transformer_blocks.0.attn1.to_k.bias");
  state["proj_out_2.weight"] = Tensor::zeros({3, 8});
  io::save_safetensors((dir_ / "diffusion_pytorch_model.safetensors").string(), state);
  e = error_of([&] { models::DiTTransformer2DModel::from_pretrained(dir_.string()); });
  EXPECT_NE(e.find("transformer_blocks.0.attn1.to_k.bias"), std::string::npos) << e;
  EXPECT_NE(e.find("proj_out_2.weight"), std::string::npos) << e;

  // Bad inputs are errors, not crashes.
  e = error_of([&] {
    model.forward(random_tensor({1, 2, 4, 4}, 1), Tensor::from_vector({1.0f}, {1}),
                  Tensor::from_vector_i64({4}, {1}));
  });
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
  e = error_of([&] {
    model.forward(random_tensor({1, 3, 4, 4}, 1), Tensor::from_vector({1.0f}, {1}),
                  Tensor::from_vector_i64({0}, {1}));
  });
  EXPECT_NE(e.find("[B, 2, H, W]"), std::string::npos) << e;
}

TEST(DiTLabels, Id2LabelAndLookup) {
  const std::map<int64_t, std::string> id2label = {
      {0, "tench, Tinca tinca"}, {1, "goldfish, Carassius auratus"}, {207, "golden retriever"}};
  EXPECT_EQ(models::get_label_ids(id2label, {"golden retriever", "tench", " Carassius auratus"}),
            (std::vector<int64_t>{207, 0, 1}));
  EXPECT_EQ(models::get_label_ids(id2label, {"42"}), (std::vector<int64_t>{42}));
  const std::string e = error_of([&] { models::get_label_ids(id2label, {"golden"}); });
  EXPECT_NE(e.find("golden retriever"), std::string::npos) << e;
  const auto path = std::filesystem::temp_directory_path() / "stipple_test_id2label.json";
  std::ofstream(path)
      << R"({"_class_name": "DiTPipeline", "id2label": {"0": "tench, Tinca tinca", "3": "tiger shark"}})";
  const auto read = models::read_id2label(path.string());
  ASSERT_EQ(read.size(), 2u);
  EXPECT_EQ(read.at(3), "tiger shark");
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace stipple

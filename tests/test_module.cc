// Tests for nn/module and nn/layers: dotted names equal checkpoint keys, ordering, state_dict /
// load_state_dict with every error reported at once, modes and freezing, PyTorch initialisation,
// and each layer's forward against a plain-loop reference.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "nn/module.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using nn::Conv2d;
using nn::Embedding;
using nn::GroupNorm;
using nn::LayerNorm;
using nn::Linear;
using nn::Module;
using nn::ModuleList;
using testing::random_tensor;

std::vector<std::string> names_of(const std::vector<std::pair<std::string, Tensor>>& v) {
  std::vector<std::string> out;
  for (const auto& [n, t] : v) out.push_back(n);
  return out;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

// A diffusers-shaped toy: conv_in, down_blocks.i.resnets.j.{norm1, conv1}, a position-id buffer.
class Resnet : public Module {
 public:
  Resnet(int64_t c) {
    norm1 = register_module("norm1", std::make_shared<GroupNorm>(2, c));
    conv1 = register_module("conv1", std::make_shared<Conv2d>(c, c, 3, 1, 1));
  }
  std::string type_name() const override { return "Resnet"; }
  std::shared_ptr<GroupNorm> norm1;
  std::shared_ptr<Conv2d> conv1;
};

class Block : public Module {
 public:
  Block(int64_t c, int n) {
    resnets = register_module("resnets", std::make_shared<ModuleList>());
    for (int i = 0; i < n; ++i) resnets->push_back(std::make_shared<Resnet>(c));
  }
  std::shared_ptr<ModuleList> resnets;
};

class Toy : public Module {
 public:
  Toy() {
    conv_in = register_module("conv_in", std::make_shared<Conv2d>(3, 4, 3, 1, 1));
    down_blocks = register_module("down_blocks", std::make_shared<ModuleList>());
    down_blocks->push_back(std::make_shared<Block>(4, 2));
    down_blocks->push_back(std::make_shared<Block>(4, 1));
    position_ids = register_buffer("position_ids", Tensor::arange(5, DType::kI64));
    scratch = register_buffer("scratch", Tensor::zeros({2}), /*persistent=*/false);
  }
  std::string type_name() const override { return "Toy"; }
  std::shared_ptr<Conv2d> conv_in;
  std::shared_ptr<ModuleList> down_blocks;
  Tensor position_ids, scratch;
};

// ---------------- names and walking ----------------

TEST(Module, DottedNamesEqualCheckpointKeysInRegistrationOrder) {
  Toy m;
  const std::vector<std::string> expected = {
      "conv_in.weight",
      "conv_in.bias",
      "down_blocks.0.resnets.0.norm1.weight",
      "down_blocks.0.resnets.0.norm1.bias",
      "down_blocks.0.resnets.0.conv1.weight",
      "down_blocks.0.resnets.0.conv1.bias",
      "down_blocks.0.resnets.1.norm1.weight",
      "down_blocks.0.resnets.1.norm1.bias",
      "down_blocks.0.resnets.1.conv1.weight",
      "down_blocks.0.resnets.1.conv1.bias",
      "down_blocks.1.resnets.0.norm1.weight",
      "down_blocks.1.resnets.0.norm1.bias",
      "down_blocks.1.resnets.0.conv1.weight",
      "down_blocks.1.resnets.0.conv1.bias",
  };
  EXPECT_EQ(names_of(m.named_parameters()), expected);
  EXPECT_EQ(names_of(m.named_buffers()), (std::vector<std::string>{"position_ids", "scratch"}));
  EXPECT_EQ(m.parameters().size(), expected.size());
  // Every parameter is a leaf that requires grad; the handle is the layer's member.
  for (const auto& [n, t] : m.named_parameters()) {
    EXPECT_TRUE(t.is_leaf()) << n;
    EXPECT_TRUE(t.requires_grad()) << n;
  }
  auto r = m.down_blocks->at<Block>(0)->resnets->at<Resnet>(1);
  EXPECT_TRUE(m.named_parameters()[8].second.is_same(r->conv1->weight()));
  EXPECT_EQ(m.num_parameters(), 4 * 3 * 9 + 4 + 3 * (4 + 4 + 4 * 4 * 9 + 4));

  // state_dict: parameters and persistent buffers only.
  const auto sd = m.state_dict();
  EXPECT_EQ(sd.size(), expected.size() + 1);
  EXPECT_TRUE(sd.count("position_ids"));
  EXPECT_FALSE(sd.count("scratch"));

  std::vector<std::string> modules;
  for (const auto& [n, mod] : m.named_modules()) modules.push_back(n + ":" + mod->type_name());
  EXPECT_EQ(modules[0], ":Toy");
  EXPECT_EQ(modules[1], "conv_in:Conv2d");
  EXPECT_EQ(modules[2], "down_blocks:ModuleList");
  EXPECT_EQ(modules[5], "down_blocks.0.resnets.0:Resnet");
  EXPECT_EQ(modules.size(), 1u + 1 + 1 + (1 + 1 + 2 * 3) + (1 + 1 + 1 * 3));
}

TEST(Module, RegistrationChecks) {
  Module m;
  m.register_parameter("w", Tensor::zeros({2}));
  EXPECT_THROW(m.register_parameter("w", Tensor::zeros({2})), Error);
  EXPECT_THROW(m.register_buffer("w", Tensor::zeros({2})), Error);
  EXPECT_THROW(m.register_module("w", std::make_shared<Module>()), Error);
  EXPECT_THROW(m.register_parameter("a.b", Tensor::zeros({2})), Error);
  EXPECT_THROW(m.register_parameter("", Tensor::zeros({2})), Error);
  EXPECT_THROW(m.register_parameter("u", Tensor()), Error);
  EXPECT_THROW(m.register_parameter("ids", Tensor::zeros({2}, DType::kI64)), Error);
  EXPECT_THROW(m.register_module("null", std::shared_ptr<Module>()), Error);
  ModuleList list;
  list.push_back(std::make_shared<Linear>(2, 2));
  EXPECT_THROW(list[1], Error);
  EXPECT_THROW(list.at<Conv2d>(0), Error);
  EXPECT_EQ(list.at<Linear>(0)->in_features(), 2);
}

TEST(Module, TiedParametersAreListedOnceButSavedUnderEveryName) {
  Module m;
  auto a = m.register_module("a", std::make_shared<Linear>(2, 3, false));
  Module& b = *m.register_module("b", std::make_shared<Module>());
  b.register_parameter("tied", a->weight());
  EXPECT_EQ(names_of(m.named_parameters()), (std::vector<std::string>{"a.weight"}));
  EXPECT_EQ(m.state_dict().size(), 2u);
  EXPECT_TRUE(m.state_dict().at("b.tied").is_same(a->weight()));
}

// ---------------- load_state_dict ----------------

TEST(Module, LoadStateDictCopiesIntoTheExistingTensors) {
  Generator gen(3);
  Toy src;
  src.reset_parameters(gen);
  Toy dst;
  const Tensor w_before = dst.conv_in->weight();
  const nn::LoadResult r = dst.load_state_dict(src.state_dict());
  EXPECT_TRUE(r.missing_keys.empty());
  EXPECT_TRUE(r.unexpected_keys.empty());
  EXPECT_TRUE(dst.conv_in->weight().is_same(w_before));  // same handle, new values
  for (const auto& [n, t] : src.state_dict()) {
    SCOPED_TRACE(n);
    const Tensor d = dst.state_dict().at(n);
    EXPECT_FALSE(d.raw_data() == t.raw_data());
    if (t.dtype() == DType::kI64) {
      EXPECT_EQ(d.to_vector_i64(), t.to_vector_i64());
    } else {
      EXPECT_EQ(d.to_vector(), t.to_vector());
    }
  }
  // Loading a module's own state is a no-op.
  dst.load_state_dict(dst.state_dict());
  EXPECT_EQ(dst.conv_in->weight().to_vector(), src.conv_in->weight().to_vector());
}

TEST(Module, LoadStateDictConvertsFloatingPrecisions) {
  Linear lin(2, 2);
  Tensor w16 = Tensor::from_vector({0.5f, -1.25f, 3.0f, 1.0f / 3.0f}, {2, 2}).to(DType::kF16);
  Tensor b64 = Tensor::from_vector_f64({0.1, -0.2}, {2});
  lin.load_state_dict({{"weight", w16}, {"bias", b64}});
  EXPECT_EQ(lin.weight().dtype(), DType::kF32);
  EXPECT_EQ(lin.weight().to_vector(),
            (std::vector<float>{0.5f, -1.25f, 3.0f, f16_to_f32(f32_to_f16(1.0f / 3.0f))}));
  EXPECT_EQ(lin.bias().to_vector(), (std::vector<float>{0.1f, -0.2f}));
  Tensor wbf = Tensor::from_vector({2.0f, 4.0f, 8.0f, 16.0f}, {2, 2}).to(DType::kBF16);
  lin.load_state_dict({{"weight", wbf}, {"bias", b64}});
  EXPECT_EQ(lin.weight().to_vector(), (std::vector<float>{2, 4, 8, 16}));
}

TEST(Module, LoadStateDictReportsEveryProblemInOneError) {
  Toy m;
  Generator gen(1);
  m.reset_parameters(gen);
  const std::vector<float> before = m.conv_in->weight().to_vector();
  auto sd = m.state_dict();
  std::map<std::string, Tensor> bad;
  for (const auto& [n, t] : sd) bad[n] = t.clone();
  bad.erase("down_blocks.0.resnets.1.conv1.weight");
  bad.erase("conv_in.bias");
  bad["extra.weight"] = Tensor::zeros({7});
  bad["down_blocks.1.resnets.0.conv1.bias"] = Tensor::zeros({5});
  bad["conv_in.weight"] = Tensor::zeros({4, 3, 1, 1});
  bad["position_ids"] = Tensor::zeros({5});                                       // f32 into i64
  bad["down_blocks.0.resnets.0.norm1.weight"] = Tensor::zeros({4}, DType::kI64);  // i64 into f32
  const std::string msg = error_of([&] { m.load_state_dict(bad, true, "model.safetensors"); });
  for (const char* part :
       {"load_state_dict into Toy from model.safetensors", "2 missing",
        "down_blocks.0.resnets.1.conv1.weight f32[4, 4, 3, 3]", "conv_in.bias f32[4]",
        "1 unexpected", "extra.weight f32[7]", "2 shape mismatches",
        "conv_in.weight: checkpoint [4, 3, 1, 1] vs model [4, 3, 3, 3]",
        "down_blocks.1.resnets.0.conv1.bias: checkpoint [5] vs model [4]", "2 dtype mismatches",
        "position_ids: checkpoint f32 cannot load into model i64",
        "norm1.weight: checkpoint i64 cannot load into model f32"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << "expected '" << part << "' in:\n" << msg;
  }
  // Nothing was changed by the failed load.
  EXPECT_EQ(m.conv_in->weight().to_vector(), before);
}

TEST(Module, NonStrictLoadReturnsSkippedKeysButStillChecksShapes) {
  Generator gen(2);
  Linear src(3, 2, true, gen);
  Linear dst(3, 2);
  std::map<std::string, Tensor> sd = {{"weight", src.weight()}, {"other", Tensor::zeros({1})}};
  const nn::LoadResult r = dst.load_state_dict(sd, /*strict=*/false);
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"bias"});
  EXPECT_EQ(r.unexpected_keys, std::vector<std::string>{"other"});
  EXPECT_EQ(dst.weight().to_vector(), src.weight().to_vector());
  EXPECT_THROW(dst.load_state_dict(sd, true), Error);
  sd["weight"] = Tensor::zeros({2, 2});
  EXPECT_THROW(dst.load_state_dict(sd, false), Error);
}

TEST(Module, SafetensorsRoundTripThroughStateDict) {
  const std::string path =
      (std::filesystem::temp_directory_path() / str_cat("stipple_module_", ::getpid(), ".st"))
          .string();
  Generator gen(7);
  Toy a;
  a.reset_parameters(gen);
  io::save_safetensors(path, a.state_dict(), {{"format", "pt"}});
  Toy b;
  b.load_state_dict(io::load_safetensors(path), true, path);
  std::filesystem::remove(path);
  EXPECT_EQ(b.down_blocks->at<Block>(1)->resnets->at<Resnet>(0)->conv1->weight().to_vector(),
            a.down_blocks->at<Block>(1)->resnets->at<Resnet>(0)->conv1->weight().to_vector());
  EXPECT_EQ(b.position_ids.to_vector_i64(), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

// Loads the real time_embedding of the conformance UNet into a module with diffusers' names.
TEST(Module, LoadsRealCheckpointKeysByPrefix) {
  const std::string p =
      testing::shared_path("conformance/sd_tiny/unet/diffusion_pytorch_model.safetensors");
  if (p.empty()) GTEST_SKIP() << "no ../shared/conformance";
  io::SafetensorsFile f = io::SafetensorsFile::open(p);
  const int64_t c0 = f.shape("conv_in.weight")[0];
  Module time_embedding;
  auto l1 = time_embedding.register_module("linear_1", std::make_shared<Linear>(c0, 4 * c0));
  time_embedding.register_module("linear_2", std::make_shared<Linear>(4 * c0, 4 * c0));
  std::map<std::string, Tensor> sub;
  const std::string prefix = "time_embedding.";
  for (const auto& name : f.names()) {
    if (name.rfind(prefix, 0) == 0) sub[name.substr(prefix.size())] = f.tensor(name);
  }
  time_embedding.load_state_dict(sub, true, p);
  EXPECT_EQ(l1->weight().to_vector(), f.tensor("time_embedding.linear_1.weight").to_vector());
}

// ---------------- modes ----------------

TEST(Module, TrainEvalZeroGradAndFreeze) {
  Toy m;
  EXPECT_TRUE(m.is_training());
  m.eval();
  for (const auto& [n, mod] : m.named_modules()) EXPECT_FALSE(mod->is_training()) << n;
  m.train();
  EXPECT_TRUE(m.down_blocks->at<Block>(0)->resnets->at<Resnet>(1)->conv1->is_training());

  Linear lin(3, 2);
  Tensor x = random_tensor({4, 3}, 1);
  ops::sum(lin(x)).backward();
  EXPECT_TRUE(lin.weight().grad().defined());
  lin.zero_grad();
  EXPECT_FALSE(lin.weight().grad().defined());
  EXPECT_FALSE(lin.bias().grad().defined());

  lin.requires_grad_(false);
  for (const Tensor& t : lin.parameters()) EXPECT_FALSE(t.requires_grad());
  EXPECT_FALSE(lin(x).requires_grad());
  lin.requires_grad_(true);
  EXPECT_TRUE(lin(x).requires_grad());
}

// ---------------- initialisation ----------------

TEST(Layers, LinearAndConvDrawKaimingUniformThenBias) {
  // bound = sqrt(3) * sqrt(2 / (1 + 5)) / sqrt(fan_in) = 1 / sqrt(fan_in), for weight and bias.
  Generator gen(0);
  Linear lin(64, 32, true, gen);
  Generator same(0);
  const std::vector<float> uw = same.rand({32, 64}).to_vector();
  const std::vector<float> ub = same.rand({32}).to_vector();
  const float b = 1.0f / 8.0f;
  const std::vector<float> w = lin.weight().to_vector(), bias = lin.bias().to_vector();
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_NEAR(w[i], uw[i] * 2 * b - b, 1e-6) << i;  // weight first, in order
    ASSERT_LE(std::abs(w[i]), b);
  }
  for (size_t i = 0; i < bias.size(); ++i) ASSERT_NEAR(bias[i], ub[i] * 2 * b - b, 1e-6) << i;

  Generator g2(5);
  Conv2d conv(8, 16, 3, 1, 1, true, g2);
  const float cb = 1.0f / std::sqrt(8.0f * 9.0f);
  double sumsq = 0;
  float maxabs = 0;
  for (float v : conv.weight().to_vector()) {
    sumsq += v * v;
    maxabs = std::max(maxabs, std::abs(v));
  }
  EXPECT_LE(maxabs, cb);
  EXPECT_GT(maxabs, 0.95f * cb);
  // U(-b, b) has variance b^2 / 3; 1152 samples put the estimate within ~10%.
  EXPECT_NEAR(sumsq / conv.weight().numel(), cb * cb / 3, 0.15 * cb * cb / 3);
  for (float v : conv.bias().to_vector()) EXPECT_LE(std::abs(v), cb);

  // Same seed, same weights; a different seed, different weights.
  Generator g3(5), g4(6);
  EXPECT_EQ(Conv2d(8, 16, 3, 1, 1, true, g3).weight().to_vector(), conv.weight().to_vector());
  EXPECT_NE(Conv2d(8, 16, 3, 1, 1, true, g4).weight().to_vector(), conv.weight().to_vector());
}

TEST(Layers, NormsStartAtOneAndZeroAndEmbeddingIsStandardNormal) {
  GroupNorm gn(4, 8);
  LayerNorm ln(6);
  EXPECT_EQ(gn.weight().to_vector(), std::vector<float>(8, 1.0f));
  EXPECT_EQ(gn.bias().to_vector(), std::vector<float>(8, 0.0f));
  EXPECT_EQ(ln.weight().to_vector(), std::vector<float>(6, 1.0f));
  EXPECT_EQ(ln.bias().to_vector(), std::vector<float>(6, 0.0f));
  EXPECT_TRUE(GroupNorm(2, 4, 1e-6f, false).named_parameters().empty());
  EXPECT_TRUE(LayerNorm(4, 1e-6f, false).named_parameters().empty());
  EXPECT_THROW(GroupNorm(3, 8), Error);

  Generator gen(42);
  Embedding emb(100, 40, gen);
  Generator same(42);
  EXPECT_EQ(emb.weight().to_vector(), same.randn({100, 40}).to_vector());
  double sum = 0, sumsq = 0;
  for (float v : emb.weight().to_vector()) {
    sum += v;
    sumsq += v * v;
  }
  EXPECT_NEAR(sum / 4000, 0.0, 0.06);
  EXPECT_NEAR(sumsq / 4000, 1.0, 0.08);
}

// ---------------- forward against plain loops ----------------

TEST(Layers, LinearForward) {
  Generator gen(1);
  Linear lin(5, 3, true, gen);
  Tensor x = random_tensor({2, 4, 5}, 11);
  const auto xv = x.to_vector(), w = lin.weight().to_vector(), b = lin.bias().to_vector();
  std::vector<float> ref(2 * 4 * 3);
  for (int r = 0; r < 8; ++r)
    for (int o = 0; o < 3; ++o) {
      double acc = b[o];
      for (int i = 0; i < 5; ++i) acc += double(xv[r * 5 + i]) * w[o * 5 + i];
      ref[r * 3 + o] = static_cast<float>(acc);
    }
  Tensor y = lin(x);
  EXPECT_EQ(y.shape(), (Shape{2, 4, 3}));
  EXPECT_TENSORS_CLOSE(y, Tensor::from_vector(ref, {2, 4, 3}), 1e-5, 1e-5);
  Linear nobias(5, 3, false, gen);
  EXPECT_TRUE(nobias.named_parameters().size() == 1);
  EXPECT_TENSORS_CLOSE(nobias(x), ops::matmul(x, nobias.weight().transpose(0, 1)), 1e-5, 1e-5);
}

TEST(Layers, Conv2dForwardWithStrideAndPadding) {
  Generator gen(2);
  Conv2d conv(3, 4, 3, 2, 1, true, gen);
  Tensor x = random_tensor({2, 3, 7, 6}, 12);
  const auto xv = x.to_vector(), w = conv.weight().to_vector(), b = conv.bias().to_vector();
  const int H = 7, W = 6, OH = 4, OW = 3;
  std::vector<float> ref(2 * 4 * OH * OW);
  for (int n = 0; n < 2; ++n)
    for (int o = 0; o < 4; ++o)
      for (int oy = 0; oy < OH; ++oy)
        for (int ox = 0; ox < OW; ++ox) {
          double acc = b[o];
          for (int c = 0; c < 3; ++c)
            for (int ky = 0; ky < 3; ++ky)
              for (int kx = 0; kx < 3; ++kx) {
                const int iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += double(xv[((n * 3 + c) * H + iy) * W + ix]) *
                       w[((o * 3 + c) * 3 + ky) * 3 + kx];
              }
          ref[((n * 4 + o) * OH + oy) * OW + ox] = static_cast<float>(acc);
        }
  Tensor y = conv(x).contiguous();
  EXPECT_EQ(y.shape(), (Shape{2, 4, OH, OW}));
  EXPECT_TENSORS_CLOSE(y, Tensor::from_vector(ref, {2, 4, OH, OW}), 1e-5, 1e-4);
}

TEST(Layers, GroupNormAndLayerNormForward) {
  GroupNorm gn(2, 4, 1e-5f);
  Tensor w = random_tensor({4}, 3), b = random_tensor({4}, 4);
  gn.load_state_dict({{"weight", w}, {"bias", b}});
  Tensor x = random_tensor({2, 4, 3, 3}, 13, -2, 3);
  const auto xv = x.to_vector(), wv = w.to_vector(), bv = b.to_vector();
  std::vector<float> ref(xv.size());
  for (int n = 0; n < 2; ++n)
    for (int g = 0; g < 2; ++g) {
      const int base = (n * 4 + g * 2) * 9, cnt = 18;
      double mean = 0, var = 0;
      for (int i = 0; i < cnt; ++i) mean += xv[base + i];
      mean /= cnt;
      for (int i = 0; i < cnt; ++i) var += (xv[base + i] - mean) * (xv[base + i] - mean);
      var /= cnt;
      for (int i = 0; i < cnt; ++i) {
        const int c = g * 2 + i / 9;
        ref[base + i] =
            static_cast<float>((xv[base + i] - mean) / std::sqrt(var + 1e-5) * wv[c] + bv[c]);
      }
    }
  EXPECT_TENSORS_CLOSE(gn(x), Tensor::from_vector(ref, x.shape()), 1e-5, 1e-4);
  EXPECT_THROW(gn(random_tensor({2, 3, 3, 3}, 1)), Error);

  LayerNorm ln(5, 1e-6f);
  Tensor lw = random_tensor({5}, 5), lb = random_tensor({5}, 6);
  ln.load_state_dict({{"weight", lw}, {"bias", lb}});
  Tensor y = random_tensor({3, 5}, 14, -1, 2);
  const auto yv = y.to_vector(), lwv = lw.to_vector(), lbv = lb.to_vector();
  std::vector<float> lref(15);
  for (int r = 0; r < 3; ++r) {
    double mean = 0, var = 0;
    for (int i = 0; i < 5; ++i) mean += yv[r * 5 + i];
    mean /= 5;
    for (int i = 0; i < 5; ++i) var += (yv[r * 5 + i] - mean) * (yv[r * 5 + i] - mean);
    var /= 5;
    for (int i = 0; i < 5; ++i)
      lref[r * 5 + i] =
          static_cast<float>((yv[r * 5 + i] - mean) / std::sqrt(var + 1e-6) * lwv[i] + lbv[i]);
  }
  EXPECT_TENSORS_CLOSE(ln(y), Tensor::from_vector(lref, {3, 5}), 1e-5, 1e-4);
  EXPECT_THROW(ln(random_tensor({3, 4}, 1)), Error);
}

TEST(Layers, EmbeddingForwardAndGradient) {
  Generator gen(3);
  Embedding emb(6, 4, gen);
  Tensor ids = Tensor::from_vector_i64({5, 0, 5, 2}, {2, 2});
  Tensor y = emb(ids);
  EXPECT_EQ(y.shape(), (Shape{2, 2, 4}));
  const auto w = emb.weight().to_vector(), yv = y.to_vector();
  const int rows[4] = {5, 0, 5, 2};
  for (int r = 0; r < 4; ++r)
    for (int d = 0; d < 4; ++d) EXPECT_EQ(yv[r * 4 + d], w[rows[r] * 4 + d]);
  ops::sum(y).backward();
  const auto g = emb.weight().grad().to_vector();
  EXPECT_EQ(g[5 * 4], 2.0f);  // row 5 used twice
  EXPECT_EQ(g[1 * 4], 0.0f);  // row 1 unused
}

TEST(Layers, BadArgumentsAreErrors) {
  EXPECT_THROW(Linear(0, 3), Error);
  EXPECT_THROW(Conv2d(3, 4, 0), Error);
  EXPECT_THROW(Conv2d(3, 4, 3, 1, -1), Error);
  EXPECT_THROW(Embedding(0, 4), Error);
  Linear lin(3, 2);
  EXPECT_THROW(lin(random_tensor({2, 4}, 1)), Error);
}

}  // namespace
}  // namespace stipple

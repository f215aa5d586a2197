// Tests for the shared 2-D blocks (nn/attention, nn/resnet) and AutoencoderKL (models/vae):
//   - Attention against a plain double-precision loop implementation (spatial with group norm and
//     residual as in the VAE; multi-head cross-attention with a mask), ResnetBlock2D against a
//     composition of primitive ops (shortcut, temb "default" and "scale_shift", up/down), the
//     resamplers' shapes and the encoder's asymmetric padding;
//   - gradients of a small Attention and ResnetBlock2D against finite differences;
//   - AutoencoderKL against diffusers' outputs in ../shared/conformance (sd_tiny, sd_tiny_inpaint)
//     at the README tolerance max|ours - ref| <= 1e-4 * max(1, max|ref|), intermediates included;
//   - loading old attention key names (query/key/value/proj_attn, also as 1x1-conv weights);
//   - errors naming the tensor or key: missing tensor, wrong shape, bad config.
// Conformance tests skip when ../shared is absent.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/vae.h"
#include "nn/attention.h"
#include "nn/resnet.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using testing::random_tensor;

// Gives every parameter of `m` deterministic random values: norm weights near 1, others small.
void randomize(nn::Module& m, uint64_t seed) {
  std::map<std::string, Tensor> state;
  for (const auto& [name, p] : m.named_parameters()) {
    const bool norm_weight = name.find("norm") != std::string::npos && name.size() >= 6 &&
                             name.substr(name.size() - 6) == "weight";
    state[name] = norm_weight ? random_tensor(p.shape(), seed++, 0.5f, 1.5f)
                              : random_tensor(p.shape(), seed++, -0.4f, 0.4f);
  }
  m.load_state_dict(state);
}

Tensor param(nn::Module& m, const std::string& name) { return m.state_dict().at(name); }

// ---------------- Attention ----------------

// softmax(q k^T * scale + mask) v per head, then the output projection; all in double loops.
// x [B, L, C], ctx [B, Lk, Ck]; mask [B, Lk] additive or empty.
std::vector<double> naive_attention(const Tensor& x, const Tensor& ctx, nn::Module& attn,
                                    int64_t heads, double scale, const Tensor& mask) {
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2), lk = ctx.size(1), ck = ctx.size(2);
  const auto xv = x.contiguous().to_vector(), cv = ctx.contiguous().to_vector();
  auto proj = [&](const std::vector<float>& in, int64_t rows, int64_t in_dim,
                  const std::string& n) {
    const auto w = param(attn, n + ".weight").to_vector();
    const auto sd = attn.state_dict();
    const bool has_b = sd.count(n + ".bias") > 0;
    const auto bias = has_b ? sd.at(n + ".bias").to_vector() : std::vector<float>();
    const int64_t out = static_cast<int64_t>(w.size()) / in_dim;
    std::vector<double> r(rows * out);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t o = 0; o < out; ++o) {
        double s = has_b ? bias[o] : 0.0;
        for (int64_t k = 0; k < in_dim; ++k) s += double(in[i * in_dim + k]) * w[o * in_dim + k];
        r[i * out + o] = s;
      }
    return r;
  };
  const auto q = proj(xv, b * l, c, "to_q");
  const auto k = proj(cv, b * lk, ck, "to_k");
  const auto v = proj(cv, b * lk, ck, "to_v");
  const int64_t inner = static_cast<int64_t>(q.size()) / (b * l), d = inner / heads;
  const auto mv = mask.defined() ? mask.to_vector() : std::vector<float>();
  std::vector<float> o(b * l * inner);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < l; ++i) {
        std::vector<double> s(lk);
        double mx = -1e300;
        for (int64_t j = 0; j < lk; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < d; ++e)
            dot += q[(bi * l + i) * inner + h * d + e] * k[(bi * lk + j) * inner + h * d + e];
          s[j] = dot * scale + (mv.empty() ? 0.0 : mv[bi * lk + j]);
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (double& sj : s) z += (sj = std::exp(sj - mx));
        for (int64_t e = 0; e < d; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < lk; ++j) acc += s[j] / z * v[(bi * lk + j) * inner + h * d + e];
          o[(bi * l + i) * inner + h * d + e] = static_cast<float>(acc);
        }
      }
  return proj(o, b * l, inner, "to_out.0");
}

TEST(Attention, ParameterNamesAreDiffusers) {
  nn::AttentionConfig cfg;
  cfg.query_dim = 16;
  cfg.heads = 1;
  cfg.dim_head = 16;
  cfg.bias = true;
  cfg.norm_num_groups = 4;
  nn::Attention attn(cfg);
  std::vector<std::string> names;
  for (const auto& [n, p] : attn.named_parameters()) names.push_back(n);
  const std::vector<std::string> want = {
      "group_norm.weight", "group_norm.bias", "to_q.weight", "to_q.bias",       "to_k.weight",
      "to_k.bias",         "to_v.weight",     "to_v.bias",   "to_out.0.weight", "to_out.0.bias"};
  EXPECT_EQ(names, want);

  nn::AttentionConfig cross;
  cross.query_dim = 32;
  cross.cross_attention_dim = 24;
  cross.heads = 4;
  cross.dim_head = 8;
  nn::Attention ca(cross);
  const auto sd = ca.state_dict();
  EXPECT_EQ(sd.count("to_q.bias"), 0u);
  EXPECT_EQ(sd.at("to_k.weight").shape(), (Shape{32, 24}));
  EXPECT_EQ(sd.at("to_out.0.bias").shape(), (Shape{32}));
}

// The VAE mid-block attention: group norm, one head, q/k/v bias, residual, spatial in and out.
TEST(Attention, SpatialMatchesNaive) {
  nn::AttentionConfig cfg;
  cfg.query_dim = 16;
  cfg.heads = 1;
  cfg.dim_head = 16;
  cfg.bias = true;
  cfg.norm_num_groups = 4;
  cfg.eps = 1e-6f;
  cfg.residual_connection = true;
  cfg.rescale_output_factor = 2.0f;
  nn::Attention attn(cfg);
  randomize(attn, 10);
  const Tensor x = random_tensor({2, 16, 3, 5}, 1, -2.0f, 2.0f);
  Tensor out;
  {
    autograd::NoGradGuard ng;
    out = attn(x);
  }
  ASSERT_EQ(out.shape(), x.shape());
  // Reference: group norm (an op tested on its own), then the loop attention.
  const Tensor xn = ops::group_norm(x, 4, param(attn, "group_norm.weight"),
                                    param(attn, "group_norm.bias"), 1e-6f);
  const Tensor seq = xn.reshape({2, 16, 15}).transpose(1, 2).contiguous();  // [B, HW, C]
  const auto o = naive_attention(seq, seq, attn, 1, 0.25, Tensor());
  const auto xv = x.to_vector();
  std::vector<float> ref(x.numel());
  for (int64_t bi = 0; bi < 2; ++bi)
    for (int64_t ch = 0; ch < 16; ++ch)
      for (int64_t p = 0; p < 15; ++p) {
        const int64_t idx = (bi * 16 + ch) * 15 + p;
        ref[idx] = static_cast<float>((o[(bi * 15 + p) * 16 + ch] + xv[idx]) / 2.0);
      }
  EXPECT_TENSORS_CLOSE(out, Tensor::from_vector(ref, x.shape()), 1e-5, 1e-5);
}

// UNet-style cross-attention: 4 heads, no q/k/v bias, context of another width, additive mask.
TEST(Attention, CrossAttentionWithMaskMatchesNaive) {
  nn::AttentionConfig cfg;
  cfg.query_dim = 32;
  cfg.cross_attention_dim = 24;
  cfg.heads = 4;
  cfg.dim_head = 8;
  nn::Attention attn(cfg);
  randomize(attn, 20);
  const Tensor x = random_tensor({2, 6, 32}, 2);
  const Tensor ctx = random_tensor({2, 5, 24}, 3);
  std::vector<float> mv(10, 0.0f);
  mv[3] = -1e4f;
  mv[5 + 0] = -1e4f;
  mv[5 + 4] = -0.7f;
  const Tensor mask = Tensor::from_vector(mv, {2, 5});
  const Tensor out = attn(x, ctx, mask);
  ASSERT_EQ(out.shape(), x.shape());
  const auto ref = naive_attention(x, ctx, attn, 4, 1.0 / std::sqrt(8.0), mask);
  EXPECT_TENSORS_CLOSE(
      out, Tensor::from_vector(std::vector<float>(ref.begin(), ref.end()), x.shape()), 1e-5, 1e-5);
  // The same mask given as [B, 1, Lk] and [B, 1, 1, Lk] broadcasts identically.
  EXPECT_TENSORS_CLOSE(attn(x, ctx, mask.reshape({2, 1, 5})), out, 1e-6, 0.0);
  EXPECT_TENSORS_CLOSE(attn(x, ctx, mask.reshape({2, 1, 1, 5})), out, 1e-6, 0.0);
  EXPECT_THROW(attn(x, random_tensor({2, 5, 32}, 4)), Error);  // wrong context width
}

TEST(Attention, Gradcheck) {
  nn::AttentionConfig cfg;
  cfg.query_dim = 8;
  cfg.heads = 2;
  cfg.dim_head = 4;
  cfg.bias = true;
  cfg.norm_num_groups = 2;
  cfg.residual_connection = true;
  nn::Attention attn(cfg);
  randomize(attn, 30);
  Tensor x = random_tensor({1, 8, 2, 3}, 5);
  x.set_requires_grad(true);
  std::vector<Tensor> inputs = {x,
                                attn.to_q()->weight(),
                                attn.to_k()->weight(),
                                attn.to_v()->bias(),
                                attn.to_out()->weight(),
                                attn.group_norm()->weight()};
  EXPECT_GRADCHECK(
      "Attention", [&](const std::vector<Tensor>& in) { return attn(in[0]); }, inputs);
}

// ---------------- ResnetBlock2D, Downsample2D, Upsample2D ----------------

ops::Conv2dParams pad1() {
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  return p;
}

// diffusers' ResnetBlock2D.forward written out with primitive ops.
Tensor resnet_reference(nn::Module& m, const nn::ResnetBlock2DConfig& c, const Tensor& x,
                        const Tensor& temb) {
  const auto sd = m.state_dict();
  const int64_t g_out = c.groups_out > 0 ? c.groups_out : c.groups;
  Tensor h =
      ops::silu(ops::group_norm(x, c.groups, sd.at("norm1.weight"), sd.at("norm1.bias"), c.eps));
  h = ops::conv2d(h, sd.at("conv1.weight"), sd.at("conv1.bias"), pad1());
  Tensor t =
      ops::linear(ops::silu(temb), sd.at("time_emb_proj.weight"), sd.at("time_emb_proj.bias"));
  t = t.reshape({t.size(0), t.size(1), 1, 1});
  if (c.time_embedding_norm == "default") {
    h = ops::group_norm(h + t, g_out, sd.at("norm2.weight"), sd.at("norm2.bias"), c.eps);
  } else {
    const int64_t oc = t.size(1) / 2;
    h = ops::group_norm(h, g_out, sd.at("norm2.weight"), sd.at("norm2.bias"), c.eps);
    h = h * (t.narrow(1, 0, oc) + 1.0f) + t.narrow(1, oc, oc);
  }
  h = ops::conv2d(ops::silu(h), sd.at("conv2.weight"), sd.at("conv2.bias"), pad1());
  Tensor s = x;
  if (sd.count("conv_shortcut.weight"))
    s = ops::conv2d(x, sd.at("conv_shortcut.weight"), sd.at("conv_shortcut.bias"));
  return (s + h) / c.output_scale_factor;
}

TEST(ResnetBlock2D, MatchesPrimitiveComposition) {
  for (const char* norm : {"default", "scale_shift"}) {
    for (int64_t out_ch : {16, 24}) {
      SCOPED_TRACE(std::string(norm) + " out=" + std::to_string(out_ch));
      nn::ResnetBlock2DConfig c;
      c.in_channels = 16;
      c.out_channels = out_ch;
      c.temb_channels = 12;
      c.groups = 4;
      c.groups_out = out_ch == 24 ? 8 : 0;
      c.eps = 1e-5f;
      c.time_embedding_norm = norm;
      c.output_scale_factor = 1.5f;
      nn::ResnetBlock2D block(c);
      randomize(block, 40);
      EXPECT_EQ(block.state_dict().count("conv_shortcut.weight"), out_ch != 16 ? 1u : 0u);
      EXPECT_EQ(block.state_dict().at("time_emb_proj.weight").shape()[0],
                std::string(norm) == "default" ? out_ch : 2 * out_ch);
      const Tensor x = random_tensor({2, 16, 6, 5}, 6, -2.0f, 2.0f);
      const Tensor temb = random_tensor({2, 12}, 7);
      const Tensor ref = resnet_reference(block, c, x, temb);
      Tensor out;
      {
        autograd::NoGradGuard ng;  // the blocked-layout inference path
        out = block(x, temb);
      }
      EXPECT_TENSORS_CLOSE(out.contiguous(), ref, 2e-5, 1e-5);
      EXPECT_THROW(block(random_tensor({2, 8, 6, 5}, 8), temb), Error);
    }
  }
}

TEST(ResnetBlock2D, NoTembUpDownAndBadActivation) {
  nn::ResnetBlock2DConfig c;
  c.in_channels = 8;
  c.out_channels = 8;
  c.temb_channels = 0;  // the VAE's blocks
  c.groups = 2;
  nn::ResnetBlock2D plain(c);
  EXPECT_EQ(plain.state_dict().count("time_emb_proj.weight"), 0u);
  EXPECT_EQ(plain.state_dict().count("conv_shortcut.weight"), 0u);
  const Tensor x = random_tensor({1, 8, 4, 6}, 9);
  EXPECT_EQ(plain(x).shape(), x.shape());
  c.up = true;
  EXPECT_EQ(nn::ResnetBlock2D(c)(x).shape(), (Shape{1, 8, 8, 12}));
  c.up = false;
  c.down = true;
  EXPECT_EQ(nn::ResnetBlock2D(c)(x).shape(), (Shape{1, 8, 2, 3}));
  c.down = false;
  c.non_linearity = "tanhshrink";
  EXPECT_THROW(nn::ResnetBlock2D{c}, Error);
}

TEST(ResnetBlock2D, Gradcheck) {
  nn::ResnetBlock2DConfig c;
  c.in_channels = 4;
  c.out_channels = 6;
  c.temb_channels = 3;
  c.groups = 2;
  nn::ResnetBlock2D block(c);
  randomize(block, 50);
  Tensor x = random_tensor({1, 4, 3, 3}, 11);
  Tensor temb = random_tensor({1, 3}, 12);
  x.set_requires_grad(true);
  temb.set_requires_grad(true);
  const auto sd = block.state_dict();
  std::vector<Tensor> inputs = {x,
                                temb,
                                sd.at("conv1.weight"),
                                sd.at("time_emb_proj.weight"),
                                sd.at("norm2.weight"),
                                sd.at("conv_shortcut.weight")};
  EXPECT_GRADCHECK(
      "ResnetBlock2D", [&](const std::vector<Tensor>& in) { return block(in[0], in[1]); }, inputs);
}

TEST(Resample2D, DownsampleAndUpsample) {
  const Tensor x = random_tensor({1, 4, 6, 6}, 13);
  // Encoder variant: padding 0 pads (0, 1, 0, 1) first, conv named `conv` only (name "op").
  nn::Downsample2D enc(4, true, 4, 0, "op");
  randomize(enc, 60);
  EXPECT_EQ(enc.state_dict().size(), 2u);
  ops::Conv2dParams s2;
  s2.stride_h = s2.stride_w = 2;
  const Tensor want = ops::conv2d(ops::pad(x, {0, 1, 0, 1}), param(enc, "conv.weight"),
                                  param(enc, "conv.bias"), s2);
  EXPECT_TENSORS_CLOSE(enc(x), want, 1e-6, 0.0);
  EXPECT_EQ(enc(x).shape(), (Shape{1, 4, 3, 3}));
  // UNet variant: padding 1.
  nn::Downsample2D unet(4, true, 8, 1, "op");
  EXPECT_EQ(unet(x).shape(), (Shape{1, 8, 3, 3}));
  // name "conv": diffusers keeps the conv as both Conv2d_0 and conv.
  nn::Downsample2D both(4, true);
  EXPECT_EQ(both.state_dict().count("Conv2d_0.weight"), 1u);
  EXPECT_EQ(both.state_dict().count("conv.weight"), 1u);
  nn::Downsample2D pool(4);
  EXPECT_TENSORS_CLOSE(pool(x), ops::avg_pool2x(x), 0.0, 0.0);

  nn::Upsample2D up(4, true);
  randomize(up, 70);
  EXPECT_TENSORS_CLOSE(up(x),
                       ops::conv2d(ops::upsample_nearest2x(x), param(up, "conv.weight"),
                                   param(up, "conv.bias"), pad1()),
                       1e-6, 0.0);
  EXPECT_THROW(up.forward(x, 13, 13), Error);
}

// ---------------- AutoencoderKL against diffusers ----------------

// max|ours - ref| / max(1, max|ref|), the README's measure.
double rel_error(const Tensor& ours, const Tensor& ref) {
  const auto a = ours.to_vector(), r = ref.to_vector();
  double err = 0, scale = 1;
  for (size_t i = 0; i < r.size(); ++i) {
    err = std::max(err, double(std::fabs(a[i] - r[i])));
    scale = std::max(scale, double(std::fabs(r[i])));
  }
  return err / scale;
}

// README tolerance for single-model forwards: max|ours - ref| <= 1e-4 * max(1, max|ref|).
void expect_conformant(const std::string& name, const Tensor& ours, const Tensor& ref) {
  ASSERT_TRUE(ours.defined()) << name << ": not computed";
  ASSERT_EQ(ours.shape(), ref.shape()) << name;
  const double rel = rel_error(ours, ref);
  std::printf("  %-40s max rel error %.3g\n", name.c_str(), rel);
  EXPECT_LE(rel, 1e-4) << name << " " << testing::tensors_close(ours, ref, 0.0).message();
}

class VaeConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(VaeConformance, MatchesDiffusers) {
  const std::string dir = testing::shared_path("conformance/" + GetParam());
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto vae = models::AutoencoderKL::from_pretrained(dir + "/vae");
  const auto ref = io::load_safetensors(dir + "/reference/vae_io.safetensors");
  EXPECT_EQ(vae->config().scaling_factor, 0.18215);
  autograd::NoGradGuard ng;  // inference: convs keep the blocked layout

  std::map<std::string, Tensor> inter;
  auto hook = [&](const std::string& path, const Tensor& t) { inter[path] = t.contiguous(); };
  const models::DiagonalGaussian post = vae->encode(ref.at("image"), hook);
  expect_conformant("latent_mean", post.mean, ref.at("latent_mean"));
  expect_conformant("latent_logvar", post.logvar, ref.at("latent_logvar"));
  expect_conformant("latent_std", post.std, ref.at("latent_std"));
  for (const auto& [key, t] : ref) {
    if (key.rfind("inter_enc.", 0) == 0) expect_conformant(key, inter[key.substr(10)], t);
  }
  inter.clear();
  expect_conformant("decoded", vae->decode(ref.at("z"), hook), ref.at("decoded"));
  for (const auto& [key, t] : ref) {
    if (key.rfind("inter_dec.", 0) == 0) expect_conformant(key, inter[key.substr(10)], t);
  }
  expect_conformant("roundtrip_decoded", vae->decode(ref.at("latent_mean")),
                    ref.at("roundtrip_decoded"));
}

INSTANTIATE_TEST_SUITE_P(Shared, VaeConformance, ::testing::Values("sd_tiny", "sd_tiny_inpaint"));

// dit_tiny's VAE is stored with the old attention names (query/key/value/proj_attn); its
// decode calls in the DiT pipeline reference (batch 2) must match.
TEST(VaeLegacyKeys, DitTinyVaeDecodes) {
  const std::string dir = testing::shared_path("conformance/dit_tiny");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto vae = models::AutoencoderKL::from_pretrained(dir);  // pipeline folder: finds vae/
  const auto ref = io::load_safetensors(dir + "/reference/dit_pipeline.safetensors");
  autograd::NoGradGuard ng;
  expect_conformant("dit_tiny vae_decode.0", vae->decode(ref.at("vae_decode.0.input")),
                    ref.at("vae_decode.0.output"));
}

// A temporary folder holding a VAE config and weights, removed at the end of the test.
class TempVaeFolder {
 public:
  TempVaeFolder() {
    path_ = std::filesystem::temp_directory_path() /
            ("stipple_test_vae_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempVaeFolder() { std::filesystem::remove_all(path_); }
  std::string str() const { return path_.string(); }
  void write_config(const std::string& text) const { std::ofstream(path_ / "config.json") << text; }
  void write_weights(const std::map<std::string, Tensor>& t) const {
    io::save_safetensors((path_ / "diffusion_pytorch_model.safetensors").string(), t);
  }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// The sd_tiny VAE rewritten with old key names (the encoder's as 1x1-conv 4-D weights, the
// decoder's as 2-D) loads and gives bit-identical outputs.
TEST(VaeLegacyKeys, OldNamesAndConvWeightsLoad) {
  const std::string dir = testing::shared_path("conformance/sd_tiny/vae");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  auto vae = models::AutoencoderKL::from_pretrained(dir);
  const auto src = io::load_safetensors(dir + "/diffusion_pytorch_model.safetensors");
  const std::pair<std::string, std::string> renames[] = {{".to_q.", ".query."},
                                                         {".to_k.", ".key."},
                                                         {".to_v.", ".value."},
                                                         {".to_out.0.", ".proj_attn."}};
  std::map<std::string, Tensor> old;
  int renamed = 0;
  for (const auto& [key, t] : src) {
    std::string k = key;
    Tensor v = t;
    for (const auto& [from, to] : renames) {
      const size_t at = k.find(from);
      if (at == std::string::npos) continue;
      k.replace(at, from.size(), to);
      ++renamed;
      if (k.rfind("encoder.", 0) == 0 && v.dim() == 2) v = v.reshape({v.size(0), v.size(1), 1, 1});
    }
    old[k] = v.contiguous();
  }
  ASSERT_EQ(renamed, 16);  // 2 attentions x 4 projections x (weight, bias)
  TempVaeFolder tmp;
  tmp.write_config(read_text(dir + "/config.json"));
  tmp.write_weights(old);
  auto legacy = models::AutoencoderKL::from_pretrained(tmp.str());

  autograd::NoGradGuard ng;
  const Tensor z = random_tensor({1, 4, 4, 4}, 99);
  EXPECT_TENSORS_CLOSE(legacy->decode(z), vae->decode(z), 0.0, 0.0);
  const Tensor img = random_tensor({1, 3, 8, 8}, 98);
  EXPECT_TENSORS_CLOSE(legacy->encode(img).mean, vae->encode(img).mean, 0.0, 0.0);
}

// ---------------- errors ----------------

// Runs fn, expecting a stipple::Error whose message contains every part of `needles`.
template <typename Fn>
void expect_error_naming(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << msg;
  }
}

TEST(VaeErrors, MissingTensorAndWrongShape) {
  const std::string dir = testing::shared_path("conformance/sd_tiny/vae");
  if (dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const std::string config = read_text(dir + "/config.json");
  auto weights = io::load_safetensors(dir + "/diffusion_pytorch_model.safetensors");
  {
    auto w = weights;
    w.erase("decoder.up_blocks.1.resnets.0.conv_shortcut.weight");
    TempVaeFolder tmp;
    tmp.write_config(config);
    tmp.write_weights(w);
    expect_error_naming([&] { models::AutoencoderKL::from_pretrained(tmp.str()); },
                        {"decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "missing",
                         "diffusion_pytorch_model.safetensors"});
  }
  {
    auto w = weights;
    w["encoder.mid_block.attentions.0.to_q.weight"] = Tensor::zeros({64, 32});
    TempVaeFolder tmp;
    tmp.write_config(config);
    tmp.write_weights(w);
    expect_error_naming([&] { models::AutoencoderKL::from_pretrained(tmp.str()); },
                        {"encoder.mid_block.attentions.0.to_q.weight", "[64, 32]", "[64, 64]"});
  }
  {
    TempVaeFolder tmp;  // no weights at all
    tmp.write_config(config);
    expect_error_naming([&] { models::AutoencoderKL::from_pretrained(tmp.str()); },
                        {"diffusion_pytorch_model.safetensors"});
  }
}

TEST(VaeErrors, BadConfig) {
  auto cfg = [](const std::string& extra) {
    return io::JsonConfig(io::parse_json(R"({"block_out_channels": [32, 64], "norm_num_groups": 8,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"])" +
                                             extra + "}",
                                         "vae/config.json"),
                          "vae/config.json");
  };
  EXPECT_EQ(models::AutoencoderKLConfig::from_json(cfg("")).downscale_factor(), 2);
  expect_error_naming(
      [&] { models::AutoencoderKLConfig::from_json(cfg(R"(, "layers_per_block": "two")")); },
      {"vae/config.json", "layers_per_block"});
  expect_error_naming(
      [&] { models::AutoencoderKLConfig::from_json(cfg(R"(, "norm_num_groups": 5)")); },
      {"vae/config.json", "norm_num_groups"});
  expect_error_naming(
      [&] { models::AutoencoderKLConfig::from_json(cfg(R"(, "act_fn": "tanhshrink")")); },
      {"vae/config.json", "act_fn", "tanhshrink"});
  expect_error_naming(
      [&] {
        models::AutoencoderKLConfig::from_json(cfg(R"(, "block_out_channels": [32, 64, 64])"));
      },
      {"vae/config.json", "down_block_types"});
  expect_error_naming(
      [&] {
        models::AutoencoderKLConfig::from_json(
            cfg(R"(, "up_block_types": ["UpDecoderBlock2D", "SpatialUpBlock"])"));
      },
      {"vae/config.json", "up_block_types", "SpatialUpBlock"});

  // A config that diffusers reads with its defaults: shift_factor, latents_mean, no attention.
  const auto c = models::AutoencoderKLConfig::from_json(
      cfg(R"(, "shift_factor": 0.0609, "scaling_factor": 1.5305, "mid_block_add_attention": false,
             "latents_mean": [0.1, 0.2, 0.3, 0.4], "use_quant_conv": false)"));
  EXPECT_TRUE(c.shift_factor.has_value());
  EXPECT_EQ(c.latents_mean.size(), 4u);
  models::AutoencoderKL vae(c);
  const auto sd = vae.state_dict();
  EXPECT_EQ(sd.count("quant_conv.weight"), 0u);
  EXPECT_EQ(sd.count("post_quant_conv.weight"), 1u);
  EXPECT_EQ(sd.count("encoder.mid_block.attentions.0.to_q.weight"), 0u);
  EXPECT_EQ(sd.count("encoder.mid_block.resnets.1.conv1.weight"), 1u);
  // Decoder blocks have layers_per_block + 1 resnets (diffusers' default layers_per_block is 1).
  EXPECT_EQ(sd.count("decoder.up_blocks.0.resnets.1.conv1.weight"), 1u);
  EXPECT_EQ(sd.count("decoder.up_blocks.0.resnets.2.conv1.weight"), 0u);
  EXPECT_EQ(sd.count("encoder.down_blocks.0.resnets.1.conv1.weight"), 0u);
}

// Found by fuzz/fuzz_json_config.cc (crash-1_vae_sample_size_empty): "sample_size": [] threw
// std::out_of_range from vector::at instead of an error naming the key.
TEST(VaeErrors, EmptySampleSizeListIsNamed) {
  expect_error_naming(
      [] {
        models::AutoencoderKLConfig::from_json(
            io::JsonConfig(io::parse_json(R"({"sample_size": []})", "vae/config.json"),
                           "vae/config.json"));
      },
      {"vae/config.json", "sample_size", "empty"});
  const auto c = models::AutoencoderKLConfig::from_json(
      io::JsonConfig(io::parse_json(R"({"sample_size": [64, 32]})", "v.json"), "v.json"));
  EXPECT_EQ(c.sample_size, 64);
}

// Attn*Block2D variants build the attentions diffusers names and run end to end.
TEST(Vae, AttentionBlockVariantsRun) {
  models::AutoencoderKLConfig c;
  c.block_out_channels = {8, 16};
  c.norm_num_groups = 4;
  c.down_block_types = {"AttnDownEncoderBlock2D", "DownEncoderBlock2D"};
  c.up_block_types = {"UpDecoderBlock2D", "AttnUpDecoderBlock2D"};
  models::AutoencoderKL vae(c);
  randomize(vae, 80);
  const auto sd = vae.state_dict();
  EXPECT_EQ(sd.count("encoder.down_blocks.0.attentions.0.to_q.weight"), 1u);
  EXPECT_EQ(sd.count("decoder.up_blocks.1.attentions.1.group_norm.weight"), 1u);
  autograd::NoGradGuard ng;
  const auto post = vae.encode(random_tensor({2, 3, 8, 8}, 81));
  EXPECT_EQ(post.mean.shape(), (Shape{2, 4, 4, 4}));
  EXPECT_EQ(vae.decode(post.mean).shape(), (Shape{2, 3, 8, 8}));
}

}  // namespace
}  // namespace stipple

namespace stipple::models {
namespace {

// Tiled decode against diffusers' tiled_decode (tests/data/vae_tiling, made by
// tools/refgen/make_vae_tiling_set.py): latent tiles of 8 every 6, 4-pixel seams, on a 24x40
// latent (edge tiles smaller), within 1e-3 relative to max(1, max|ref|).
TEST(VaeTiling, MatchesDiffusersTiledDecode) {
  const std::string vae_dir = testing::shared_path("conformance/sd_tiny/vae");
  if (vae_dir.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  const auto vae = AutoencoderKL::from_pretrained(vae_dir);
  const auto ref = io::SafetensorsFile::open(std::string(STIPPLE_SOURCE_DIR) +
                                             "/tests/data/vae_tiling/reference.safetensors");
  autograd::NoGradGuard no_grad;
  const Tensor z = ref.tensor("z");
  float peak = 1.0f;
  for (float v : ref.tensor("tiled").to_vector()) peak = std::max(peak, std::abs(v));
  EXPECT_TRUE(testing::tensors_close(vae->decode_tiled(z, 8, 0.25), ref.tensor("tiled"),
                                     1e-3 * peak));
  EXPECT_TRUE(testing::tensors_close(vae->decode(z), ref.tensor("whole"), 1e-3 * peak));
  // A latent within one tile decodes whole; bad tilings are refused.
  EXPECT_TRUE(testing::tensors_close(vae->decode_tiled(z, 64), vae->decode(z), 0.0));
  EXPECT_THROW(vae->decode_tiled(z, 2), Error);
  EXPECT_THROW(vae->decode_tiled(z, 8, 1.0), Error);
}

}  // namespace
}  // namespace stipple::models

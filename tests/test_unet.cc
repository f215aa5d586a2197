// UNet2DConditionModel against diffusers 0.29.2 (../shared/conformance), plus the config fields
// the shared tiny checkpoints do not exercise:
//   - sd_tiny/reference/unet_io.safetensors: out_a (0-d i64 timestep 500), out_b (per-sample
//     fractional f32 timesteps) and the inter_a.* module outputs that localise an error;
//   - the UNet calls recorded inside the txt2img (4-channel) and 9-channel inpaint pipeline runs
//     (77-token context, timestep passed as [1]);
//   - variants built here with random weights: use_linear_projection (checked against the 1x1-conv
//     projection with the same weights), per-block head counts, only_cross_attention,
//     upcast_attention, several transformer layers, three levels; f16 weights;
//   - config parsing (diffusers defaults and quirks) and errors that name the key, tensor or shape.
// Tolerance (README): single-model forwards max|ours - ref| <= 1e-4 * max(1, max|ref|).
//   - inputs whose size is not a multiple of the total downscale (no reference: shapes, and the
//     upsampler's 2x-then-crop against an op composition).
// Leaves out: speed (bench/).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "models/unet2d_condition.h"
#include "nn/resnet.h"
#include "ops/ops.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using models::UNet2DConditionConfig;
using models::UNet2DConditionModel;
using nlohmann::json;

// max|a - ref| / max(1, max|ref|)
double rel_error(const Tensor& a, const Tensor& ref) {
  const std::vector<float> x = a.to_vector(), r = ref.to_vector();
  double max_abs = 0, max_ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(static_cast<double>(x[i]) - r[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(r[i])));
  }
  return max_abs / std::max(1.0, max_ref);
}

// The README acceptance: atol = 1e-4 * max(1, max|ref|).
::testing::AssertionResult close_to_reference(const Tensor& a, const Tensor& ref) {
  double max_ref = 0;
  for (float v : ref.to_vector()) max_ref = std::max(max_ref, std::fabs(static_cast<double>(v)));
  return testing::tensors_close(a, ref, 1e-4 * std::max(1.0, max_ref));
}

UNet2DConditionConfig config_from(const json& j) {
  return UNet2DConditionConfig::from_json(io::JsonConfig(j, "test config.json"));
}

// Message of the stipple::Error that `fn` throws ("" when it throws none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A small two-level SD-1.x-style config (like sd_tiny's), to be varied by the tests.
json tiny_config() {
  return json{{"sample_size", 8},
              {"in_channels", 4},
              {"out_channels", 4},
              {"layers_per_block", 1},
              {"block_out_channels", {32, 64}},
              {"down_block_types", {"CrossAttnDownBlock2D", "DownBlock2D"}},
              {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D"}},
              {"cross_attention_dim", 32},
              {"attention_head_dim", 8},
              {"norm_num_groups", 8}};
}

// ---------------- config ----------------

TEST(UNetConfig, ReadsSdTinyConfig) {
  const std::string path = testing::shared_path("conformance/sd_tiny/unet/config.json");
  if (path.empty()) GTEST_SKIP() << "../shared is absent";
  const UNet2DConditionConfig c = UNet2DConditionConfig::from_file(path);
  EXPECT_EQ(c.in_channels, 4);
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(c.layers_per_block, (std::vector<int64_t>{1, 1}));
  // attention_head_dim 8 with num_attention_heads null: 8 heads per block.
  EXPECT_EQ(c.num_attention_heads, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(c.cross_attention_dim, (std::vector<int64_t>{32, 32}));
  EXPECT_EQ(c.mid_block_type, "UNetMidBlock2DCrossAttn");
  EXPECT_EQ(c.transformer_layers_per_block, (std::vector<std::vector<int64_t>>{{1}, {1}}));
  EXPECT_EQ(c.reverse_transformer_layers_per_block,
            (std::vector<std::vector<int64_t>>{{1, 1}, {1, 1}}));
  EXPECT_EQ(c.time_embed_dim(), 128);
  EXPECT_TRUE(c.flip_sin_to_cos);
  EXPECT_EQ(c.freq_shift, 0);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
}

TEST(UNetConfig, DiffusersDefaultsForMissingKeys) {
  const UNet2DConditionConfig c = config_from(json::object());
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(c.layers_per_block, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(c.num_attention_heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(c.cross_attention_dim, (std::vector<int64_t>{1280, 1280, 1280, 1280}));
  EXPECT_EQ(c.norm_num_groups, 32);
  EXPECT_EQ(c.down_block_types.front(), "CrossAttnDownBlock2D");
  EXPECT_EQ(c.up_block_types.front(), "UpBlock2D");
  EXPECT_EQ(c.time_embed_dim(), 1280);
  EXPECT_FALSE(c.use_linear_projection);
}

TEST(UNetConfig, Sd2StyleFields) {
  json j = tiny_config();
  j["attention_head_dim"] = {2, 4};  // SD 2.x: per-block head counts ([5, 10, 20, 20])
  j["use_linear_projection"] = true;
  j["upcast_attention"] = true;
  j["only_cross_attention"] = {true, false};
  j["transformer_layers_per_block"] = {2, 1};
  j["layers_per_block"] = {2, 1};
  j["mid_block_type"] = nullptr;
  j["down_block_types"] = {"UNetResCrossAttnDownBlock2D", "DownBlock2D"};  // old prefix
  const UNet2DConditionConfig c = config_from(j);
  EXPECT_EQ(c.num_attention_heads, (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(c.use_linear_projection);
  EXPECT_TRUE(c.upcast_attention);
  EXPECT_EQ(c.only_cross_attention, (std::vector<bool>{true, false}));
  EXPECT_EQ(c.layers_per_block, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(c.transformer_layers_per_block, (std::vector<std::vector<int64_t>>{{2, 2}, {1}}));
  // Up blocks: reversed, one more layer each.
  EXPECT_EQ(c.reverse_transformer_layers_per_block,
            (std::vector<std::vector<int64_t>>{{1, 1}, {2, 2, 2}}));
  EXPECT_TRUE(c.mid_block_type.empty());
  EXPECT_EQ(c.down_block_types[0], "CrossAttnDownBlock2D");

  // num_attention_heads, when given, is the head count and attention_head_dim is then unused.
  json k = tiny_config();
  k["num_attention_heads"] = 4;
  EXPECT_EQ(config_from(k).num_attention_heads, (std::vector<int64_t>{4, 4}));
}

TEST(UNetConfig, UnsupportedValuesNameKeyAndValue) {
  auto err = [](const std::string& key, const json& value) {
    json j = tiny_config();
    j[key] = value;
    return error_of([&] { config_from(j); });
  };
  std::string e = err("down_block_types", {"AttnDownBlock2D", "DownBlock2D"});
  EXPECT_NE(e.find("down_block_types"), std::string::npos) << e;
  EXPECT_NE(e.find("AttnDownBlock2D"), std::string::npos) << e;
  e = err("up_block_types", {"UpBlock2D", "SimpleCrossAttnUpBlock2D"});
  EXPECT_NE(e.find("SimpleCrossAttnUpBlock2D"), std::string::npos) << e;
  e = err("mid_block_type", "UNetMidBlock2DSimpleCrossAttn");
  EXPECT_NE(e.find("mid_block_type"), std::string::npos) << e;
  e = err("dual_cross_attention", true);
  EXPECT_NE(e.find("dual_cross_attention"), std::string::npos) << e;
  e = err("class_embed_type", "timestep");
  EXPECT_NE(e.find("class_embed_type"), std::string::npos) << e;
  EXPECT_NE(e.find("timestep"), std::string::npos) << e;
  e = err("addition_embed_type", "text_image");  // Kandinsky's; SDXL's text_time is supported
  EXPECT_NE(e.find("addition_embed_type"), std::string::npos) << e;
  EXPECT_NE(e.find("text_image"), std::string::npos) << e;
  e = err("addition_embed_type", "text_time");  // without its widths
  EXPECT_NE(e.find("addition_time_embed_dim"), std::string::npos) << e;
  e = err("time_embedding_type", "fourier");
  EXPECT_NE(e.find("fourier"), std::string::npos) << e;
  e = err("act_fn", "tanhshrink");
  EXPECT_NE(e.find("tanhshrink"), std::string::npos) << e;
  e = err("time_cond_proj_dim", 256);
  EXPECT_NE(e.find("time_cond_proj_dim"), std::string::npos) << e;
  e = err("attention_head_dim", {8, 8, 8});
  EXPECT_NE(e.find("attention_head_dim"), std::string::npos) << e;
  e = err("block_out_channels", {32, 64, 64});
  EXPECT_NE(e.find("block_out_channels"), std::string::npos) << e;
  e = err("norm_num_groups", 5);
  EXPECT_NE(e.find("norm_num_groups"), std::string::npos) << e;
  e = err("resnet_time_scale_shift", "spatial");
  EXPECT_NE(e.find("spatial"), std::string::npos) << e;
  e = err("transformer_layers_per_block", {{1}, {1}});  // per-layer lists need the reverse list
  EXPECT_NE(e.find("reverse_transformer_layers_per_block"), std::string::npos) << e;
}

// Found by fuzz/fuzz_json_config.cc (inputs in fuzz/corpus/json_config/crash-0_*): a huge or
// negative layers_per_block sized the per-layer transformer lists before validate() bounded it
// (an allocation of hundreds of gigabytes, or std::length_error).
TEST(UNetConfig, LayersPerBlockIsBoundedBeforeUse) {
  for (const json& v : {json(100000000000LL), json(-1), json(0), json({2, 65})}) {
    SCOPED_TRACE(v.dump());
    json j = tiny_config();
    j["layers_per_block"] = v;
    const std::string e = error_of([&] { config_from(j); });
    EXPECT_NE(e.find("layers_per_block"), std::string::npos) << e;
    EXPECT_NE(e.find("test config.json"), std::string::npos) << e;
  }
  json j = tiny_config();
  j["layers_per_block"] = 64;
  EXPECT_EQ(config_from(j).transformer_layers_per_block[0].size(), 64u);
}

// Found by fuzz/fuzz_json_config.cc (crash-7_number_overflow): a number beyond a double
// ("1e999") made nlohmann throw out_of_range, which io::parse_json let escape.
TEST(UNetConfig, NumberBeyondADoubleIsAJsonError) {
  const std::string e =
      error_of([] { io::parse_json(R"({"sample_size": 1e999})", "unet/config.json"); });
  EXPECT_NE(e.find("unet/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid JSON"), std::string::npos) << e;
}

// ---------------- conformance ----------------

// Runs `model` under NoGradGuard (the blocked-layout fast path).
Tensor run(const UNet2DConditionModel& model, const Tensor& sample, const Tensor& t,
           const Tensor& context, const models::IntermediateHook& hook = nullptr) {
  autograd::NoGradGuard no_grad;
  return model.forward(sample, t, context, Tensor(), hook);
}

TEST(UNetConformance, SdTinyUnetIo) {
  const std::string unet_dir = testing::shared_path("conformance/sd_tiny/unet");
  const std::string io_path =
      testing::shared_path("conformance/sd_tiny/reference/unet_io.safetensors");
  if (unet_dir.empty() || io_path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto model = UNet2DConditionModel::from_pretrained(unet_dir);
  const auto ref = io::load_safetensors(io_path);
  const Tensor& sample = ref.at("sample");
  const Tensor& context = ref.at("encoder_hidden_states");
  ASSERT_EQ(ref.at("timestep_a").dim(), 0);

  std::map<std::string, Tensor> inter;
  const Tensor out_a =
      run(*model, sample, ref.at("timestep_a"), context,
          [&](const std::string& path, const Tensor& v) { inter[path] = v.contiguous().clone(); });
  // Intermediates first, in data-flow order, so the first failure localises an error.
  for (const char* path :
       {"time_proj", "time_embedding", "conv_in", "down_blocks.0", "down_blocks.1", "mid_block",
        "up_blocks.0", "up_blocks.1", "conv_norm_out", "conv_out"}) {
    const std::string key = std::string("inter_a.") + path;
    ASSERT_TRUE(inter.count(path)) << "no intermediate " << path;
    EXPECT_TRUE(close_to_reference(inter.at(path), ref.at(key))) << key;
    std::printf("  %-24s rel_err %.3g\n", key.c_str(), rel_error(inter.at(path), ref.at(key)));
  }
  EXPECT_TRUE(close_to_reference(out_a, ref.at("out_a"))) << "out_a";
  std::printf("  %-24s rel_err %.3g\n", "out_a", rel_error(out_a, ref.at("out_a")));

  const Tensor& t_b = ref.at("timestep_b");
  ASSERT_EQ(t_b.dtype(), DType::kF32);
  const Tensor out_b = run(*model, sample, t_b, context);
  EXPECT_TRUE(close_to_reference(out_b, ref.at("out_b"))) << "out_b";
  std::printf("  %-24s rel_err %.3g\n", "out_b", rel_error(out_b, ref.at("out_b")));

  // The plain-layout path (no channel-blocked convolutions) gives the same answer.
  ops::set_blocked_layout(false);
  const Tensor out_plain = run(*model, sample, t_b, context);
  ops::set_blocked_layout(true);
  EXPECT_TRUE(close_to_reference(out_plain, ref.at("out_b"))) << "out_b, plain layout";
}

// Every UNet call a pipeline run recorded: [steps, 2B, Cin, h, w] inputs, timestep as [1].
void check_pipeline_calls(const std::string& set, const std::string& file) {
  const std::string unet_dir = testing::shared_path("conformance/" + set + "/unet");
  const std::string ref_path = testing::shared_path("conformance/" + set + "/reference/" + file);
  if (unet_dir.empty() || ref_path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto model = UNet2DConditionModel::from_pretrained(unet_dir);
  const auto ref = io::load_safetensors(ref_path);
  const Tensor& samples = ref.at("denoiser.sample");                 // [S, 2B, Cin, h, w]
  const Tensor& ts = ref.at("denoiser.timestep_as_passed");          // [S, 1]
  const Tensor& context = ref.at("denoiser.encoder_hidden_states");  // [2B, 77, D]
  const Tensor& outs = ref.at("denoiser.out");                       // [S, 2B, Cout, h, w]
  EXPECT_EQ(samples.size(2), model->config().in_channels);
  for (int64_t s = 0; s < samples.size(0); ++s) {
    const Tensor x = samples.narrow(0, s, 1).squeeze(0).contiguous();
    const Tensor t = ts.narrow(0, s, 1).squeeze(0).contiguous();  // [1]
    const Tensor want = outs.narrow(0, s, 1).squeeze(0).contiguous();
    const Tensor got = run(*model, x, t, context);
    EXPECT_TRUE(close_to_reference(got, want)) << set << " step " << s;
    std::printf("  %s step %lld (t=%g) rel_err %.3g\n", set.c_str(), static_cast<long long>(s),
                t.item(), rel_error(got, want));
  }
}

TEST(UNetConformance, SdTinyTxt2ImgCalls) {
  check_pipeline_calls("sd_tiny", "txt2img.safetensors");
}

TEST(UNetConformance, SdTinyInpaintNineChannelCalls) {
  check_pipeline_calls("sd_tiny_inpaint", "inpaint.safetensors");
}

TEST(UNetConformance, HalfPrecisionWeightsLoad) {
  const std::string unet_dir = testing::shared_path("conformance/sd_tiny/unet");
  const std::string io_path =
      testing::shared_path("conformance/sd_tiny/reference/unet_io.safetensors");
  if (unet_dir.empty() || io_path.empty()) GTEST_SKIP() << "../shared is absent";
  const auto ref = io::load_safetensors(io_path);
  const auto weights = io::load_safetensors(unet_dir + "/diffusion_pytorch_model.safetensors");
  for (DType dt : {DType::kF16, DType::kBF16}) {
    std::map<std::string, Tensor> half;
    for (const auto& [k, v] : weights) half[k] = v.to(dt);
    UNet2DConditionModel model(UNet2DConditionConfig::from_file(unet_dir + "/config.json"));
    model.load_state_dict(half);
    const Tensor out =
        run(model, ref.at("sample"), ref.at("timestep_a"), ref.at("encoder_hidden_states"));
    // Rounding the weights to 11 (f16) or 8 (bf16) significant bits moves the output by about
    // that relative amount, times the depth of the network.
    const double tol = dt == DType::kF16 ? 5e-3 : 5e-2;
    EXPECT_LT(rel_error(out, ref.at("out_a")), tol) << dtype_name(dt);
  }
}

// ---------------- variants with random weights ----------------

std::shared_ptr<UNet2DConditionModel> random_model(const json& j, uint64_t seed) {
  auto model = std::make_shared<UNet2DConditionModel>(config_from(j));
  Generator gen(seed);
  model->reset_parameters(gen);
  model->eval();
  return model;
}

TEST(UNetVariants, LinearProjectionEqualsConvProjectionWithSameWeights) {
  json j = tiny_config();
  const auto conv_model = random_model(j, 7);
  j["use_linear_projection"] = true;
  auto linear_model = std::make_shared<UNet2DConditionModel>(config_from(j));
  // proj_in/proj_out: Linear [O, I] vs 1x1 Conv [O, I, 1, 1]; everything else is identical.
  std::map<std::string, Tensor> state;
  const auto linear_state = linear_model->state_dict();
  for (const auto& [k, v] : conv_model->state_dict()) {
    const Shape& want = linear_state.at(k).shape();
    state[k] = v.shape() == want ? v : v.reshape(want);
  }
  EXPECT_EQ(linear_state.at("down_blocks.0.attentions.0.proj_in.weight").shape(), (Shape{32, 32}));
  linear_model->load_state_dict(state);
  const Tensor x = testing::random_tensor({2, 4, 8, 8}, 1);
  const Tensor ctx = testing::random_tensor({2, 5, 32}, 2);
  const Tensor t = Tensor::scalar(321.5f);
  const Tensor a = run(*conv_model, x, t, ctx);
  const Tensor b = run(*linear_model, x, t, ctx);
  EXPECT_TRUE(testing::tensors_close(b, a, 1e-4, 1e-4));
}

TEST(UNetVariants, Sd2StyleConfigRunsWithRightShapes) {
  json j = tiny_config();
  j["block_out_channels"] = {16, 32, 32};
  j["down_block_types"] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"};
  j["up_block_types"] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  j["attention_head_dim"] = {2, 4, 8};  // per-block heads; the up blocks take them reversed
  j["use_linear_projection"] = true;
  j["upcast_attention"] = true;
  j["only_cross_attention"] = {false, true, false};
  j["transformer_layers_per_block"] = 2;
  j["layers_per_block"] = 2;
  j["cross_attention_dim"] = 24;
  const auto model = random_model(j, 11);
  const auto state = model->state_dict();
  // Names and shapes as diffusers builds them.
  EXPECT_EQ(state.at("down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_k.weight").shape(),
            (Shape{32, 24}));
  // only_cross_attention: attn1 attends to the context too.
  EXPECT_EQ(state.at("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k.weight").shape(),
            (Shape{32, 24}));
  EXPECT_EQ(state.at("down_blocks.0.attentions.0.proj_in.weight").shape(), (Shape{16, 16}));
  EXPECT_EQ(state.at("up_blocks.2.resnets.2.conv1.weight").shape(), (Shape{16, 32, 3, 3}));
  EXPECT_EQ(state.count("up_blocks.2.upsamplers.0.conv.weight"), 0u);
  EXPECT_EQ(state.count("mid_block.attentions.0.transformer_blocks.1.norm3.weight"), 1u);
  const Tensor x = testing::random_tensor({1, 4, 16, 16}, 3);
  const Tensor ctx = testing::random_tensor({1, 6, 24}, 4);
  const Tensor out = run(*model, x, Tensor::from_vector_i64({999}, {1}), ctx);
  EXPECT_EQ(out.shape(), (Shape{1, 4, 16, 16}));
  for (float v : out.to_vector()) ASSERT_TRUE(std::isfinite(v));
}

TEST(UNetVariants, NoMidBlockAndCenteredInput) {
  json j = tiny_config();
  j["mid_block_type"] = nullptr;
  j["center_input_sample"] = true;
  j["in_channels"] = 9;
  j["out_channels"] = 8;
  const auto model = random_model(j, 5);
  EXPECT_EQ(model->state_dict().count("mid_block.resnets.0.conv1.weight"), 0u);
  const Tensor out =
      run(*model, testing::random_tensor({2, 9, 8, 8}, 5), Tensor::from_vector({10.0f, 20.5f}, {2}),
          testing::random_tensor({2, 3, 32}, 6));
  EXPECT_EQ(out.shape(), (Shape{2, 8, 8, 8}));
}

TEST(UNetVariants, SizesNotMultipleOfTheDownscale) {
  json j = tiny_config();
  j["block_out_channels"] = {16, 32, 32};
  j["down_block_types"] = {"CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"};
  j["up_block_types"] = {"UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"};
  const auto model = random_model(j, 13);
  // 9 -> 5 -> 3 on the way down; the upsamplers go 3 -> 5 -> 9 following the skips.
  const Tensor out = run(*model, testing::random_tensor({1, 4, 9, 10}, 8), Tensor::scalar(250),
                         testing::random_tensor({1, 4, 32}, 9));
  EXPECT_EQ(out.shape(), (Shape{1, 4, 9, 10}));
  for (float v : out.to_vector()) ASSERT_TRUE(std::isfinite(v));

  // Upsample2D to 2H - 1: nearest interpolation to that size is 2x then crop, then the conv.
  nn::Upsample2D up(4, /*use_conv=*/true);
  Generator gen(3);
  up.reset_parameters(gen);
  const Tensor x = testing::random_tensor({1, 4, 3, 5}, 10);
  const auto params = up.state_dict();
  ops::Conv2dParams pad1;
  pad1.pad_h = pad1.pad_w = 1;
  const Tensor want =
      ops::conv2d(ops::upsample_nearest2x(x).narrow(2, 0, 5).narrow(3, 0, 10).contiguous(),
                  params.at("conv.weight"), params.at("conv.bias"), pad1);
  EXPECT_TENSORS_CLOSE(up.forward(x, 5, 10), want, 1e-6, 0.0);
  EXPECT_THROW(up.forward(x, 4, 10), Error);
}

TEST(UNetVariants, ScalarTimestepEqualsPerSampleTimesteps) {
  const auto model = random_model(tiny_config(), 17);
  const Tensor x = testing::random_tensor({2, 4, 8, 8}, 1);
  const Tensor ctx = testing::random_tensor({2, 3, 32}, 2);
  const Tensor a = run(*model, x, Tensor::scalar(500, DType::kI64), ctx);
  const Tensor b = run(*model, x, Tensor::from_vector({500.0f, 500.0f}, {2}), ctx);
  const Tensor c = run(*model, x, Tensor::from_vector_i64({500}, {1}), ctx);
  EXPECT_TENSORS_CLOSE(b, a, 0.0, 0.0);
  EXPECT_TENSORS_CLOSE(c, a, 0.0, 0.0);
}

TEST(UNetVariants, ClassEmbeddingsAddToTheTimeEmbedding) {
  // The SD x4 upscaler's num_class_embeds (noise level): class_embedding [N, temb] added to temb.
  json j = tiny_config();
  j["num_class_embeds"] = 10;
  const auto model = random_model(j, 19);
  EXPECT_EQ(model->state_dict().at("class_embedding.weight").shape(), (Shape{10, 128}));
  const Tensor x = testing::random_tensor({2, 4, 8, 8}, 1);
  const Tensor ctx = testing::random_tensor({2, 3, 32}, 2);
  autograd::NoGradGuard no_grad;
  const Tensor a = model->forward(x, Tensor::scalar(10), ctx, Tensor::from_vector_i64({1, 2}, {2}));
  const Tensor b = model->forward(x, Tensor::scalar(10), ctx, Tensor::from_vector_i64({1, 3}, {2}));
  EXPECT_EQ(a.shape(), (Shape{2, 4, 8, 8}));
  // Sample 0 has the same label in both calls, sample 1 does not.
  EXPECT_TENSORS_CLOSE(a.narrow(0, 0, 1), b.narrow(0, 0, 1), 0.0, 0.0);
  EXPECT_FALSE(testing::tensors_close(a.narrow(0, 1, 1), b.narrow(0, 1, 1), 1e-6, 0.0));
  const std::string e = error_of([&] { model->forward(x, Tensor::scalar(10), ctx); });
  EXPECT_NE(e.find("class_labels"), std::string::npos) << e;
}

// ---------------- errors ----------------

TEST(UNetErrors, LoadNamesMissingTensorsAndShapeMismatches) {
  const auto model = random_model(tiny_config(), 1);
  auto state = model->state_dict();
  std::map<std::string, Tensor> copy(state.begin(), state.end());
  copy.erase("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight");
  copy["mid_block.resnets.1.conv2.weight"] = Tensor::zeros({64, 64, 1, 1});
  copy["up_blocks.9.resnets.0.conv1.weight"] = Tensor::zeros({1});
  const std::string e = error_of([&] { model->load_state_dict(copy, true, "unet.safetensors"); });
  EXPECT_NE(e.find("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("mid_block.resnets.1.conv2.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("up_blocks.9.resnets.0.conv1.weight"), std::string::npos) << e;
}

TEST(UNetErrors, BadInputsAndFolders) {
  const auto model = random_model(tiny_config(), 1);
  const Tensor ctx = testing::random_tensor({2, 3, 32}, 6);
  std::string e = error_of([&] {
    run(*model, testing::random_tensor({2, 9, 8, 8}, 1), Tensor::scalar(1), ctx);
  });
  EXPECT_NE(e.find("in_channels"), std::string::npos) << e;
  e = error_of([&] {
    run(*model, testing::random_tensor({2, 4, 8, 8}, 1), Tensor::from_vector({1, 2, 3}, {3}), ctx);
  });
  EXPECT_NE(e.find("timestep"), std::string::npos) << e;
  e = error_of([&] {
    run(*model, testing::random_tensor({2, 4, 8, 8}, 1), Tensor::scalar(1),
        testing::random_tensor({2, 3, 16}, 6));
  });
  EXPECT_NE(e.find("cross_attention_dim = 32"), std::string::npos) << e;
  e = error_of([] { UNet2DConditionModel::from_pretrained("/nonexistent/unet"); });
  EXPECT_NE(e.find("/nonexistent/unet"), std::string::npos) << e;
}

}  // namespace
}  // namespace stipple

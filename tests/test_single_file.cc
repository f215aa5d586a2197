// Tests for single-file (CompVis-named) checkpoints, io/single_file:
//   - a single file built from ../shared/conformance/sd_tiny by the INVERSE of the key table
//     (diffusers names -> CompVis names, VAE attention as 1x1 convs, plus EMA and schedule
//     buffers that loading must ignore) loads back through detection with bit-identical weights,
//     the detected configs equal the folder's, and the UNet / VAE / CLIP outputs are identical
//     to the folder-loaded models (and within the README tolerance of diffusers' outputs);
//   - an OpenCLIP (SD 2.x) text tower with fused in_proj weights and the extra last layer loads
//     onto the same CLIP weights;
//   - errors: truncated file, missing tensor, missing VAE, an unknown file, SDXL.
// Skips when ../shared is absent.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "io/single_file.h"
#include "models/clip_text.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "ops/ops.h"
#include "pipelines/model_info.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

namespace fs = std::filesystem;
using io::SingleFileComponent;

class SingleFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    sd_tiny_ = testing::shared_path("conformance/sd_tiny");
    if (sd_tiny_.empty() || !fs::exists(sd_tiny_)) GTEST_SKIP() << "../shared is absent";
    dir_ = fs::temp_directory_path() / ("stipple_single_file_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // The CompVis-named tensors of sd_tiny (UNet, VAE, CLIP), plus what real files also carry.
  std::map<std::string, Tensor> compvis_tensors(bool with_vae = true) const {
    const auto unet_cfg = models::UNet2DConditionConfig::from_file(sd_tiny_ + "/unet/config.json");
    const auto vae_cfg = models::AutoencoderKLConfig::from_file(sd_tiny_ + "/vae/config.json");
    std::map<std::string, Tensor> all;
    auto add = [&](SingleFileComponent c, const std::string& file) {
      for (auto& [k, v] : io::to_single_file_names(c, io::load_safetensors(sd_tiny_ + file),
                                                   &unet_cfg, &vae_cfg)) {
        all[k] = v;
      }
    };
    add(SingleFileComponent::kUNet, "/unet/diffusion_pytorch_model.safetensors");
    if (with_vae) add(SingleFileComponent::kVAE, "/vae/diffusion_pytorch_model.safetensors");
    add(SingleFileComponent::kTextEncoder, "/text_encoder/model.safetensors");
    all["alphas_cumprod"] = Tensor::ones({1000});
    all["model_ema.decay"] = Tensor::scalar(0.9999);
    all["cond_stage_model.transformer.text_model.embeddings.position_ids"] =
        Tensor::from_vector_i64(std::vector<int64_t>(77, 0), {1, 77});
    return all;
  }

  // sd_tiny as an SD 2.x file: OpenCLIP names, fused q/k/v, one extra last layer that SD 2.x
  // skips (a copy of layer 1).
  std::map<std::string, Tensor> open_clip_tensors() const {
    const auto clip = io::load_safetensors(sd_tiny_ + "/text_encoder/model.safetensors");
    std::map<std::string, Tensor> all;
    for (const auto& [k, v] : compvis_tensors()) {
      if (k.rfind("cond_stage_model.", 0) != 0) all[k] = v;
    }
    const std::string O = "cond_stage_model.model.";
    const std::string T = "text_model.";
    all[O + "token_embedding.weight"] = clip.at(T + "embeddings.token_embedding.weight");
    all[O + "positional_embedding"] = clip.at(T + "embeddings.position_embedding.weight");
    all[O + "ln_final.weight"] = clip.at(T + "final_layer_norm.weight");
    all[O + "ln_final.bias"] = clip.at(T + "final_layer_norm.bias");
    all[O + "text_projection"] = Tensor::zeros({32, 32});
    all[O + "logit_scale"] = Tensor::scalar(1.0);
    for (int l = 0; l < 3; ++l) {  // layer 2 is a copy of layer 1: the layer SD 2.x skips
      const std::string s = str_cat(T, "encoder.layers.", l < 2 ? l : 1, ".");
      const std::string d = str_cat(O, "transformer.resblocks.", l, ".");
      for (const char* wb : {"weight", "bias"}) {
        const std::string w = wb;
        all[d + "ln_1." + w] = clip.at(s + "layer_norm1." + w);
        all[d + "ln_2." + w] = clip.at(s + "layer_norm2." + w);
        all[d + "attn.out_proj." + w] = clip.at(s + "self_attn.out_proj." + w);
        all[d + "mlp.c_fc." + w] = clip.at(s + "mlp.fc1." + w);
        all[d + "mlp.c_proj." + w] = clip.at(s + "mlp.fc2." + w);
        all[d + "attn.in_proj_" + w] =
            ops::concat({clip.at(s + "self_attn.q_proj." + w), clip.at(s + "self_attn.k_proj." + w),
                         clip.at(s + "self_attn.v_proj." + w)},
                        0);
      }
    }
    return all;
  }

  // Options for what the weights cannot say about sd_tiny (its configs are not SD's).
  static io::SingleFileOptions tiny_options() {
    io::SingleFileOptions opt;
    opt.norm_num_groups = 8;  // sd_tiny's GroupNorms; real SD checkpoints use 32
    opt.text_num_heads = 4;   // 32-wide CLIP with 8-wide heads; real CLIPs use 64-wide heads
    return opt;
  }

  std::string write(const std::string& name, const std::map<std::string, Tensor>& t) const {
    const std::string path = (dir_ / name).string();
    io::save_safetensors(path, t);
    return path;
  }

  static void expect_same_weights(const nn::Module& a, const nn::Module& b) {
    const auto sa = a.state_dict(), sb = b.state_dict();
    ASSERT_EQ(sa.size(), sb.size());
    for (const auto& [k, v] : sa) {
      ASSERT_TRUE(sb.count(k)) << k;
      EXPECT_EQ(v.shape(), sb.at(k).shape()) << k;
      EXPECT_EQ(v.to_vector(), sb.at(k).to_vector()) << k;
    }
  }

  std::string sd_tiny_;
  fs::path dir_;
};

TEST_F(SingleFileTest, RoundTripLoadsIdenticalModels) {
  const std::string path = write("tiny.safetensors", compvis_tensors());
  const io::SingleFileModels m = io::load_single_file(path, tiny_options());
  EXPECT_EQ(m.info.family, "SD 1.x");
  EXPECT_EQ(m.info.text_encoder_kind, "CLIP");
  EXPECT_EQ(m.info.prediction_type, "epsilon");
  EXPECT_EQ(m.info.num_tensors.at("other"), 3);  // alphas_cumprod, model_ema.decay, position_ids
  // `stipple info` reads the same detection from the header alone.
  const pipelines::ModelInfo mi = pipelines::inspect_model(path, tiny_options());
  EXPECT_EQ(mi.family, "SD 1.x");
  ASSERT_EQ(mi.components.size(), 3u);
  EXPECT_EQ(mi.components[0].name, "unet");
  EXPECT_EQ(mi.components[0].num_params, m.unet->num_parameters());
  EXPECT_EQ(mi.components[2].num_params, m.text_encoder->num_parameters());

  // Detected configs equal the folder's.
  const auto unet_ref = models::UNet2DConditionModel::from_pretrained(sd_tiny_ + "/unet");
  const auto vae_ref = models::AutoencoderKL::from_pretrained(sd_tiny_ + "/vae");
  const auto clip_ref = models::CLIPTextModel::from_pretrained(sd_tiny_ + "/text_encoder");
  const auto& uc = m.unet->config();
  const auto& ur = unet_ref->config();
  EXPECT_EQ(uc.block_out_channels, ur.block_out_channels);
  EXPECT_EQ(uc.layers_per_block, ur.layers_per_block);
  EXPECT_EQ(uc.down_block_types, ur.down_block_types);
  EXPECT_EQ(uc.up_block_types, ur.up_block_types);
  EXPECT_EQ(uc.num_attention_heads, ur.num_attention_heads);
  EXPECT_EQ(uc.cross_attention_dim, ur.cross_attention_dim);
  EXPECT_EQ(uc.transformer_layers_per_block, ur.transformer_layers_per_block);
  EXPECT_EQ(uc.use_linear_projection, ur.use_linear_projection);
  EXPECT_EQ(uc.in_channels, ur.in_channels);
  EXPECT_EQ(uc.out_channels, ur.out_channels);
  EXPECT_EQ(m.vae->config().block_out_channels, vae_ref->config().block_out_channels);
  EXPECT_EQ(m.vae->config().down_block_types, vae_ref->config().down_block_types);
  EXPECT_EQ(m.vae->config().up_block_types, vae_ref->config().up_block_types);
  EXPECT_EQ(m.vae->config().layers_per_block, vae_ref->config().layers_per_block);
  EXPECT_EQ(m.vae->config().latent_channels, vae_ref->config().latent_channels);
  EXPECT_EQ(m.text_encoder->config().num_hidden_layers, clip_ref->config().num_hidden_layers);
  EXPECT_EQ(m.text_encoder->config().intermediate_size, clip_ref->config().intermediate_size);
  EXPECT_EQ(m.text_encoder->config().vocab_size, clip_ref->config().vocab_size);
  EXPECT_EQ(m.text_encoder->config().hidden_act, clip_ref->config().hidden_act);

  // Bit-identical weights.
  expect_same_weights(*m.unet, *unet_ref);
  expect_same_weights(*m.vae, *vae_ref);
  expect_same_weights(*m.text_encoder, *clip_ref);

  // Identical outputs, and within the README tolerance of diffusers.
  autograd::NoGradGuard no_grad;
  const auto u = io::load_safetensors(sd_tiny_ + "/reference/unet_io.safetensors");
  const Tensor out =
      m.unet->forward(u.at("sample"), u.at("timestep_a"), u.at("encoder_hidden_states"));
  const Tensor out_ref =
      unet_ref->forward(u.at("sample"), u.at("timestep_a"), u.at("encoder_hidden_states"));
  EXPECT_EQ(out.to_vector(), out_ref.to_vector());
  EXPECT_TENSORS_CLOSE(out, u.at("out_a"), 1e-4, 0.0);

  const auto v = io::load_safetensors(sd_tiny_ + "/reference/vae_io.safetensors");
  const Tensor dec = m.vae->decode(v.at("z"));
  EXPECT_EQ(dec.to_vector(), vae_ref->decode(v.at("z")).to_vector());
  EXPECT_TENSORS_CLOSE(dec, v.at("decoded"), 1e-4, 0.0);
  const models::DiagonalGaussian post = m.vae->encode(v.at("image"));
  EXPECT_EQ(post.mean.to_vector(), vae_ref->encode(v.at("image")).mean.to_vector());

  const auto t = io::load_safetensors(sd_tiny_ + "/reference/text_encoder_io.safetensors");
  const models::CLIPTextOutput c = m.text_encoder->forward(t.at("input_ids"));
  const models::CLIPTextOutput c_ref = clip_ref->forward(t.at("input_ids"));
  EXPECT_EQ(c.last_hidden_state.to_vector(), c_ref.last_hidden_state.to_vector());
  EXPECT_EQ(c.pooler_output.to_vector(), c_ref.pooler_output.to_vector());
  EXPECT_TENSORS_CLOSE(c.last_hidden_state, t.at("last_hidden_state"), 1e-4, 0.0);
}

TEST_F(SingleFileTest, KeyTableNamesEveryTensorOnce) {
  // Forward and inverse mappings are one table: the CompVis names are the familiar ones.
  const auto all = compvis_tensors();
  for (const char* k :
       {"model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.input_blocks.3.0.skip_connection.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",
        "model.diffusion_model.output_blocks.3.1.norm.weight",
        "model.diffusion_model.time_embed.2.bias", "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.1.block.1.conv1.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.norm_out.bias", "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight"}) {
    EXPECT_TRUE(all.count(k)) << k;
  }
  EXPECT_EQ(all.at("first_stage_model.encoder.mid.attn_1.q.weight").shape(), (Shape{64, 64, 1, 1}));
}

TEST_F(SingleFileTest, OpenClipTextEncoderSplitsInProj) {
  const std::string path = write("openclip.safetensors", open_clip_tensors());
  const io::SingleFileModels m = io::load_single_file(path, tiny_options(), false, false, true);
  EXPECT_EQ(m.info.text_encoder_kind, "OpenCLIP");
  EXPECT_EQ(m.text_encoder->config().num_hidden_layers, 2);
  EXPECT_EQ(m.text_encoder->config().hidden_act, "gelu");
  const auto clip_ref = models::CLIPTextModel::from_pretrained(sd_tiny_ + "/text_encoder");
  expect_same_weights(*m.text_encoder, *clip_ref);
}

TEST_F(SingleFileTest, OpenClipLayerThatIsNotANumberIsNamed) {
  // A malformed key from the file: an error naming the tensor, not the standard library's "stoll".
  std::map<std::string, Tensor> all = open_clip_tensors();
  const std::string O = "cond_stage_model.model.";
  all[O + "transformer.resblocks.x1.ln_1.weight"] = Tensor::zeros({32});
  all[O + "transformer.resblocks.99999999999999999999.ln_1.weight"] = Tensor::zeros({32});
  const std::string path = write("bad-layer.safetensors", all);
  try {
    io::load_single_file(path, tiny_options(), false, false, true);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("no CLIPTextModel counterpart"), std::string::npos) << what;
    EXPECT_NE(what.find("transformer.resblocks."), std::string::npos) << what;
  }
}

TEST_F(SingleFileTest, MalformedShapesAreNamedByInfo) {
  // A tensor with fewer dimensions than its role needs: an error naming the file, the tensor and
  // its shape, not the standard library's "vector::_M_range_check".
  std::map<std::string, Tensor> all = compvis_tensors();
  all["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] =
      Tensor::zeros({4});
  const std::string single = write("flat-embedding.safetensors", all);
  std::string msg =
      testing::error_message([&] { pipelines::inspect_model(single, tiny_options()); });
  EXPECT_NE(msg.find("token_embedding.weight' has shape [4], expected at least 2 dimensions"),
            std::string::npos)
      << msg;

  // A diffusers folder: a flat conv_in, and a model_index.json entry that is not [library, class]
  // of strings (skipped, as metadata is).
  const fs::path pipe = dir_ / "flat-unet";
  fs::create_directories(pipe / "unet");
  std::ofstream(pipe / "model_index.json")
      << R"({"_class_name": "StableDiffusionPipeline",
             "unet": ["diffusers", "UNet2DConditionModel"], "odd": ["diffusers", 7]})";
  std::ofstream(pipe / "unet" / "config.json") << "{}";
  io::save_safetensors((pipe / "unet" / "diffusion_pytorch_model.safetensors").string(),
                       {{"conv_in.weight", Tensor::zeros({4})}});
  msg = testing::error_message([&] { pipelines::inspect_model(pipe.string(), tiny_options()); });
  EXPECT_NE(msg.find("tensor 'conv_in.weight' has shape [4], expected at least 2 dimensions"),
            std::string::npos)
      << msg;
}

TEST_F(SingleFileTest, TruncatedFileIsAnError) {
  const std::string path = write("whole.safetensors", compvis_tensors());
  const std::string cut = (dir_ / "cut.safetensors").string();
  {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(cut, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  try {
    io::load_single_file(cut, tiny_options());
    FAIL() << "a truncated file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.safetensors"), std::string::npos) << e.what();
  }
  // Garbage in place of a header.
  const std::string junk = (dir_ / "junk.safetensors").string();
  std::ofstream(junk) << "not a safetensors file at all";
  EXPECT_THROW(io::load_single_file(junk, tiny_options()), Error);
  EXPECT_THROW(io::load_single_file((dir_ / "absent.safetensors").string()), Error);
}

TEST_F(SingleFileTest, MissingTensorIsNamed) {
  auto all = compvis_tensors();
  all.erase("model.diffusion_model.input_blocks.1.0.in_layers.2.weight");
  const std::string path = write("missing.safetensors", all);
  try {
    io::load_single_file(path, tiny_options());
    FAIL() << "a file without a conv weight loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("down_blocks.0.resnets.0.conv1.weight"), std::string::npos)
        << e.what();
  }
}

TEST_F(SingleFileTest, MissingPartsAndUnknownFilesAreNamed) {
  const std::string no_vae = write("no_vae.safetensors", compvis_tensors(/*with_vae=*/false));
  try {
    io::load_single_file(no_vae, tiny_options());
    FAIL() << "a file without a VAE loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no VAE (first_stage_model.*)"), std::string::npos)
        << e.what();
  }
  // Without asking for the VAE, the rest loads.
  EXPECT_NO_THROW(io::load_single_file(no_vae, tiny_options(), true, false, true));

  const std::string other = write("other.safetensors", {{"layer.weight", Tensor::ones({2, 2})}});
  try {
    io::load_single_file(other);
    FAIL() << "an unknown file loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("not a Stable Diffusion single-file checkpoint"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layer.* (1)"), std::string::npos) << msg;
  }

  auto sdxl = compvis_tensors();
  sdxl["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] =
      Tensor::ones({4});
  const std::string xl = write("sdxl.safetensors", sdxl);
  try {
    io::load_single_file(xl, tiny_options());
    FAIL() << "an SD 1.x UNet with SDXL text encoders (no label_emb) loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SDXL"), std::string::npos) << e.what();
  }
}

TEST_F(SingleFileTest, PipelineRunsFromASingleFileAsFromTheFolder) {
  const std::string path = write("sd_tiny.safetensors", compvis_tensors());
  const auto folder = pipelines::StableDiffusion::from_pretrained(sd_tiny_);
  const auto single =
      pipelines::StableDiffusion::from_single_file(path, sd_tiny_ + "/tokenizer", tiny_options());
  pipelines::GenerationParams p;
  p.prompt = "a red circle";
  p.negative_prompt = "blurry";
  p.steps = 3;
  p.sampler = "euler";
  p.seed = 7;
  p.width = p.height = 32;
  // The same weights and SD's scheduler: the same image (f32, same kernels).
  EXPECT_TRUE(testing::tensors_close(single.run_txt2img(p), folder.run_txt2img(p), 1e-6, 0));
  // load() picks the single-file path for a file
  EXPECT_NO_THROW(pipelines::StableDiffusion::load(path, sd_tiny_ + "/tokenizer", tiny_options()));
  // Without a tokenizer folder, the error says what to give.
  try {
    pipelines::StableDiffusion::from_single_file(path, "", tiny_options());
    FAIL() << "a single file without a tokenizer must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--tokenizer"), std::string::npos) << e.what();
  }
  EXPECT_THROW(pipelines::StableDiffusion::load((dir_ / "missing.safetensors").string()), Error);
}

}  // namespace
}  // namespace stipple

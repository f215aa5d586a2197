// LoRA files in the formats people download, held to diffusers 0.29.2 (tests/data/lora, made by
// tools/refgen/make_lora_sets.py): kohya/A1111 with LoCon convolutions and alphas, diffusers/PEFT,
// and the older diffusers attention-processor form, for SD 1.x (../shared/conformance/sd_tiny)
// and SDXL (tests/data/sdxl_tiny, kohya with SGM block names and te1/te2). For each: the merged
// weights of three layers, the UNet's output and each text encoder's states at weight 0.8 (and
// 1.0), and the exact original weights back after the LoRA is taken off. Tolerance: 1e-4
// relative to max(1, max|ref|) (weights merged in f32; the references differ from a float64
// merge by 6e-8).
#include <gtest/gtest.h>

#include <string>

#include <stipple/stipple.h>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using pipelines::StableDiffusion;

std::string data(const std::string& rel) { return testing::test_data_path(rel); }

::testing::AssertionResult close(const Tensor& a, const Tensor& ref, double tol = 1e-4) {
  return testing::close_relative(a, ref, tol);
}

// The model folder a set was made on; empty when ../shared is absent.
std::string base_of(const std::string& set) {
  if (set.rfind("sdxl", 0) == 0) return data("sdxl_tiny");
  return testing::shared_path("conformance/sd_tiny");
}

struct Outputs {
  Tensor unet, te_last, te_m2, te2_m2, te2_embeds;
};

Outputs outputs(const StableDiffusion& sd, const io::SafetensorsFile& ref) {
  autograd::NoGradGuard no_grad;
  Outputs o;
  models::AddedConditions added;
  if (sd.is_xl()) added = {ref.tensor("unet.in.text_embeds"), ref.tensor("unet.in.time_ids")};
  o.unet = sd.unet().forward(ref.tensor("unet.in.sample"), ref.tensor("unet.in.timestep"),
                             ref.tensor("unet.in.encoder_hidden_states"), Tensor(), nullptr,
                             added);
  const models::CLIPTextOutput te = sd.text_encoder()->forward(ref.tensor("text_encoder.in.input_ids"));
  o.te_last = te.last_hidden_state;
  o.te_m2 = te.hidden_states.at(te.hidden_states.size() - 2);
  if (sd.text_encoder_2()) {
    const models::CLIPTextOutput te2 =
        sd.text_encoder_2()->forward(ref.tensor("text_encoder_2.in.input_ids"));
    o.te2_m2 = te2.hidden_states.at(te2.hidden_states.size() - 2);
    o.te2_embeds = te2.text_embeds;
  }
  return o;
}

// The module weight `name` ("unet.down_blocks.0.resnets.0.conv1") of the pipeline.
Tensor weight_of(const StableDiffusion& sd, const std::string& name) {
  const size_t dot = name.find('.');
  const std::string component = name.substr(0, dot), key = name.substr(dot + 1) + ".weight";
  const nn::Module* m = component == "unet"             ? static_cast<const nn::Module*>(&sd.unet())
                        : component == "text_encoder_2" ? sd.text_encoder_2()
                                                        : sd.text_encoder();
  return m->state_dict().at(key);
}

void check_set(const std::string& set, const std::vector<std::string>& weights) {
  SCOPED_TRACE(set);
  const std::string base = base_of(set);
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  StableDiffusion sd = StableDiffusion::from_pretrained(base);
  const auto ref = io::SafetensorsFile::open(data("lora/" + set + "_ref.safetensors"));
  const Outputs before = outputs(sd, ref);
  EXPECT_TRUE(close(before.unet, ref.tensor("unet.out.base")));
  std::map<std::string, Tensor> originals;
  for (const std::string& name : ref.names())
    if (name.rfind("weight.", 0) == 0) {
      const std::string module = name.substr(7, name.rfind(".lora_") - 7);
      originals[module] = weight_of(sd, module).clone();
    }
  for (const std::string& w : weights) {
    SCOPED_TRACE("weight " + w);
    sd.set_loras({{data("lora/" + set + ".safetensors"), std::stod(w)}});
    const Outputs o = outputs(sd, ref);
    EXPECT_TRUE(close(o.unet, ref.tensor("unet.out.lora_" + w)));
    EXPECT_TRUE(close(o.te_last, ref.tensor("text_encoder.last_hidden_state.lora_" + w)));
    if (sd.is_xl()) {
      EXPECT_TRUE(close(o.te_m2, ref.tensor("text_encoder.hidden_states_m2.lora_" + w)));
      EXPECT_TRUE(close(o.te2_m2, ref.tensor("text_encoder_2.hidden_states_m2.lora_" + w)));
      EXPECT_TRUE(close(o.te2_embeds, ref.tensor("text_encoder_2.text_embeds.lora_" + w)));
    }
    for (const auto& [module, original] : originals) {
      SCOPED_TRACE(module);
      EXPECT_TRUE(close(weight_of(sd, module), ref.tensor("weight." + module + ".lora_" + w)));
    }
  }
  // Taken off: the originals, bit for bit.
  sd.set_loras({});
  for (const auto& [module, original] : originals)
    EXPECT_TRUE(testing::tensors_close(weight_of(sd, module), original, 0.0)) << module;
  EXPECT_TRUE(testing::tensors_close(outputs(sd, ref).unet, before.unet, 0.0));
}

TEST(Lora, KohyaWithLoConMatchesDiffusers) { check_set("sd_kohya", {"0.8", "1.0"}); }
TEST(Lora, PeftMatchesDiffusers) { check_set("sd_peft", {"0.8"}); }
TEST(Lora, OlderDiffusersFormatMatchesDiffusers) { check_set("sd_old_diffusers", {"0.8"}); }
TEST(Lora, SdxlKohyaWithSgmNamesMatchesDiffusers) { check_set("sdxl_kohya", {"0.8"}); }
TEST(Lora, SdxlPeftMatchesDiffusers) { check_set("sdxl_peft", {"0.8"}); }

TEST(Lora, KeysThatMatchNothingAreNamed) {
  const std::string base = base_of("sd_kohya");
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  StableDiffusion sd = StableDiffusion::from_pretrained(base);
  try {
    sd.set_loras({{data("lora/sd_kohya_unmatched.safetensors"), 1.0}});
    FAIL() << "an unmatched LoRA key was ignored";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lora_unet_down_blocks_9_attentions_0_proj_in"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(sd.loras().empty());
  // An SDXL LoRA on SD 1.x: its te2 and SGM names match nothing.
  EXPECT_THROW(sd.set_loras({{data("lora/sdxl_kohya.safetensors"), 1.0}}), Error);
}

TEST(Lora, SpecParsesFileAndWeight) {
  EXPECT_EQ(models::parse_lora_spec("a/b.safetensors:0.7"),
            (models::LoraSpec{"a/b.safetensors", 0.7}));
  EXPECT_EQ(models::parse_lora_spec("a/b.safetensors"), (models::LoraSpec{"a/b.safetensors", 1.0}));
  EXPECT_EQ(models::parse_lora_spec("c:/x.pt:-1"), (models::LoraSpec{"c:/x.pt", -1.0}));
  EXPECT_EQ(models::parse_lora_spec("name:v2"), (models::LoraSpec{"name:v2", 1.0}));
}

TEST(Lora, EngineMergesRequestAndPromptLoras) {
  const std::string base = base_of("sd_kohya");
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  OpenOptions opt;
  opt.lora_dir = data("lora");
  const Engine e = Engine::open(base, opt);
  GenerateRequest r;
  r.prompt = "a red circle";
  r.steps = 2;
  r.width = r.height = 16;
  r.seed = 1;
  const GenerateResult plain = e.generate(r);
  // The same LoRA as a request field and as a prompt tag give the same image.
  GenerateRequest with_field = r;
  with_field.loras = {{data("lora/sd_kohya.safetensors"), 0.8}};
  const GenerateResult a = e.generate(with_field);
  GenerateRequest with_tag = r;
  with_tag.prompt = "a red <lora:sd_kohya:0.8>circle";
  with_tag.prompt_syntax = PromptSyntax::kA1111;
  const GenerateResult b = e.generate(with_tag);
  EXPECT_EQ(a.images[0].image.pixels, b.images[0].image.pixels);
  EXPECT_NE(a.images[0].image.pixels, plain.images[0].image.pixels);
  EXPECT_NE(a.parameters.find("Lora: sd_kohya:0.8"), std::string::npos) << a.parameters;
  EXPECT_NE(b.parameters.find("<lora:sd_kohya:0.8>"), std::string::npos) << b.parameters;
  // Off again: the first image back exactly.
  EXPECT_EQ(e.generate(r).images[0].image.pixels, plain.images[0].image.pixels);
  // Tags name files in the folder, never paths; unknown names are not found.
  with_tag.prompt = "<lora:../sd_kohya:1>";
  EXPECT_THROW(e.generate(with_tag), Error);
  with_tag.prompt = "<lora:nope:1>";
  try {
    e.generate(with_tag);
    FAIL();
  } catch (const Error& err) {
    EXPECT_EQ(err.kind(), ErrorKind::kNotFound);
  }
}

}  // namespace
}  // namespace stipple

// Textual-inversion embeddings against diffusers 0.29.2's load_textual_inversion
// (tests/data/embeddings, made by tools/refgen/make_embedding_sets.py): A1111's .pt (two vectors)
// and .safetensors (emb_params) on SD 1.x (../shared/conformance/sd_tiny), SDXL's clip_l + clip_g
// on tests/data/sdxl_tiny; the token ids, the prompt embeddings (also in a negative prompt), and
// SDXL's pooled embedding. Tolerance 1e-4 relative to max(1, max|ref|).
#include <gtest/gtest.h>

#include <string>

#include <stipple/stipple.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple {
namespace {

using pipelines::StableDiffusion;

std::string data(const std::string& rel) { return testing::test_data_path(rel); }

::testing::AssertionResult close(const Tensor& a, const Tensor& ref, double tol = 1e-4) {
  return testing::close_relative(a, ref, tol);
}

TEST(Embeddings, SdPromptsMatchDiffusers) {
  const std::string base = testing::shared_path("conformance/sd_tiny");
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  StableDiffusion sd = StableDiffusion::from_pretrained(base);
  const auto [loaded, skipped] = sd.load_embeddings(data("embeddings"));
  EXPECT_EQ(loaded, (std::vector<std::string>{"tiny-one", "tiny-style"}));
  // tiny-xl is SDXL's; reference.safetensors (the test's data) holds no embedding.
  ASSERT_EQ(skipped.size(), 2u);
  EXPECT_NE(skipped[0].find("reference"), std::string::npos) << skipped[0];
  EXPECT_NE(skipped[1].find("tiny-xl (not"), std::string::npos) << skipped[1];
  const auto ref = io::SafetensorsFile::open(data("embeddings/reference.safetensors"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"style", "a photo in tiny-style"},
      {"one", "tiny-one, a red circle"},
      {"both", "tiny-one in tiny-style"}};
  for (const auto& [key, prompt] : cases) {
    SCOPED_TRACE(prompt);
    EXPECT_TRUE(close(sd.encode_prompt(prompt, "", 1, false), ref.tensor("sd." + key + ".prompt_embeds")));
  }
  // In a negative prompt too: [negative, prompt].
  const Tensor both = sd.encode_prompt("a red circle", "tiny-one", 1, true);
  EXPECT_TRUE(close(both.narrow(0, 0, 1), ref.tensor("sd.negative.negative_prompt_embeds")));
  EXPECT_TRUE(close(both.narrow(0, 1, 1), ref.tensor("sd.negative.prompt_embeds")));
  // A1111's chunked path reads the same tokens.
  EXPECT_TRUE(close(sd.encode_prompt("a photo in tiny-style", "", 1, false, 1, nullptr,
                                     PromptSyntax::kA1111),
                    ref.tensor("sd.style.prompt_embeds")));
}

TEST(Embeddings, TokenIdsFollowDiffusersLoadOrder) {
  const std::string base = testing::shared_path("conformance/sd_tiny");
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  StableDiffusion sd = StableDiffusion::from_pretrained(base);
  // diffusers loaded tiny-style first (ids 1000, 1001), then tiny-one (1002).
  const Tensor style =
      io::open_weights_file(data("embeddings/tiny-style.pt")).tensor("string_to_param.*");
  const Tensor one = io::open_weights_file(data("embeddings/tiny-one.safetensors")).tensor("emb_params");
  sd.add_embedding("tiny-style", style, Tensor());
  sd.add_embedding("tiny-one", one, Tensor());
  const auto ref = io::SafetensorsFile::open(data("embeddings/reference.safetensors"));
  for (const auto& [key, prompt] : std::vector<std::pair<std::string, std::string>>{
           {"style", "a photo in tiny-style"}, {"both", "tiny-one in tiny-style"}}) {
    const Tensor ids = sd.tokenizer().encode_batch({sd.expand_embeddings(prompt)}, 77);
    EXPECT_EQ(ids.to_vector_i64(), ref.tensor("sd." + key + ".input_ids").to_vector_i64())
        << prompt;
  }
  EXPECT_EQ(sd.expand_embeddings("tiny-style_1 and tiny-style"),
            "tiny-style tiny-style_1_1 and tiny-style tiny-style_1");  // diffusers' str.replace
  EXPECT_THROW(sd.add_embedding("tiny-one", one, Tensor()), Error);        // loaded already
  EXPECT_THROW(sd.add_embedding("red</w>", one, Tensor()), Error);         // a vocabulary word
}

TEST(Embeddings, SdxlBothEncodersMatchDiffusers) {
  StableDiffusion sd = StableDiffusion::from_pretrained(data("sdxl_tiny"));
  const auto [loaded, skipped] = sd.load_embeddings(data("embeddings"));
  EXPECT_EQ(loaded, (std::vector<std::string>{"tiny-xl"}));
  EXPECT_EQ(skipped.size(), 3u);  // the SD 1.x ones and the reference data
  const auto ref = io::SafetensorsFile::open(data("embeddings/reference.safetensors"));
  const auto e = sd.encode_prompts("a photo in tiny-xl", "", 1, false);
  EXPECT_TRUE(close(e.states, ref.tensor("sdxl.prompt_embeds")));
  // transformers pools SDXL's bigG at argmax(ids), which lands on the added token (diffusers).
  EXPECT_TRUE(close(e.pooled, ref.tensor("sdxl.pooled_prompt_embeds")));
}

TEST(Embeddings, EngineAndBadFolders) {
  const std::string base = testing::shared_path("conformance/sd_tiny");
  if (base.empty()) GTEST_SKIP() << "../shared/conformance is absent";
  OpenOptions opt;
  opt.embeddings_dir = data("embeddings");
  const Engine e = Engine::open(base, opt);
  EXPECT_EQ(e.description().skipped_embeddings.size(), 2u);
  GenerateRequest r;
  r.prompt = "a photo in tiny-style";
  r.steps = 2;
  r.width = r.height = 16;
  r.seed = 3;
  const GenerateResult with = e.generate(r);
  const GenerateResult without = Engine::open(base).generate(r);
  EXPECT_NE(with.images[0].image.pixels, without.images[0].image.pixels);
  opt.embeddings_dir = data("no-such-folder");
  EXPECT_THROW(Engine::open(base, opt), Error);
}

}  // namespace
}  // namespace stipple

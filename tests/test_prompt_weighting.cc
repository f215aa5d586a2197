// A1111's conditioning for emphasized and long prompts (pipelines/prompt_weighting.h) on the tiny
// Stable Diffusion of ../shared/conformance (its real CLIP tokenizer and a tiny text encoder):
// the chunk layout (75 tokens, the comma backtrack, BREAK, padding), the weighting ("Original":
// scale per token, restore the chunk's mean) against the same arithmetic done here on the
// encoder's output, that a plain prompt gives exactly the diffusers conditioning, and that the
// pipeline runs with a prompt of two chunks. A1111ConditioningMatchesTheWebUi holds the whole path
// to A1111's own code (tests/data/prompt_weighting, made by tools/refgen/
// make_prompt_weighting_set.py): ids and weights exactly, the conditioning within 1e-5 relative
// to max(1, max|ref|).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "io/safetensors.h"
#include "ops/ops.h"
#include "pipelines/prompt_weighting.h"
#include "pipelines/stable_diffusion.h"
#include "support/numerics.h"

namespace stipple::pipelines {
namespace {

const std::string kModel = std::string(STIPPLE_SHARED_DIR) + "/conformance/sd_tiny";

class PromptWeighting : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kModel + "/tokenizer/vocab.json"))
      GTEST_SKIP() << "no " << kModel;
    tok = std::make_unique<text::ClipTokenizer>(text::ClipTokenizer::from_folder(kModel + "/tokenizer"));
  }
  // n copies of a one-token word.
  static std::string words(int n, const std::string& w = "cat") {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + w;
    return s;
  }
  std::unique_ptr<text::ClipTokenizer> tok;
};

TEST_F(PromptWeighting, PlainPromptIsOneChunkLikeDiffusers) {
  const auto chunks = a1111_token_chunks(*tok, "a photo of an astronaut riding a horse");
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].ids, tok->encode_padded("a photo of an astronaut riding a horse", 77));
  for (float m : chunks[0].multipliers) EXPECT_EQ(m, 1.0f);
}

TEST_F(PromptWeighting, LongPromptsSplitEvery75Tokens) {
  ASSERT_EQ(tok->encode("cat").size(), 3u);  // one token
  const auto chunks = a1111_token_chunks(*tok, words(100));
  ASSERT_EQ(chunks.size(), 2u);
  const int64_t cat = tok->encode("cat")[1];
  for (const auto& c : chunks) {
    ASSERT_EQ(c.ids.size(), 77u);
    EXPECT_EQ(c.ids.front(), tok->bos_token_id());
  }
  EXPECT_EQ(chunks[0].ids[75], cat);
  EXPECT_EQ(chunks[0].ids[76], tok->eos_token_id());
  EXPECT_EQ(chunks[1].ids[25], cat);  // the other 25
  EXPECT_EQ(chunks[1].ids[26], tok->eos_token_id());
  EXPECT_EQ(chunks[1].ids[27], tok->pad_token_id());
}

TEST_F(PromptWeighting, CommaNearTheEndStartsTheNextChunk) {
  // 70 words, a comma, 10 words: the chunk fills at 75 with the comma 4 tokens back, so the 4
  // words after the comma move to the second chunk.
  const auto chunks = a1111_token_chunks(*tok, words(70) + ", " + words(10, "dog"));
  ASSERT_EQ(chunks.size(), 2u);
  const int64_t comma = tok->encode(",")[1], dog = tok->encode("dog")[1];
  EXPECT_EQ(chunks[0].ids[71], comma);
  EXPECT_EQ(chunks[0].ids[72], tok->eos_token_id());
  for (int i = 1; i <= 10; ++i) EXPECT_EQ(chunks[1].ids[i], dog) << i;
}

TEST_F(PromptWeighting, BreakStartsAChunkAndWeightsFollowTheBrackets) {
  const auto chunks = a1111_token_chunks(*tok, "a (red:1.5) apple BREAK [green] pear");
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].ids[2], tok->encode("red")[1]);
  EXPECT_FLOAT_EQ(chunks[0].multipliers[2], 1.5f);
  EXPECT_FLOAT_EQ(chunks[0].multipliers[3], 1.0f);
  EXPECT_EQ(chunks[1].ids[1], tok->encode("green")[1]);
  EXPECT_FLOAT_EQ(chunks[1].multipliers[1], static_cast<float>(1 / 1.1));
}

TEST_F(PromptWeighting, WithoutEmphasisBracketsAreTextAndChunksStay) {
  // A1111's emphasis "None": the prompt is one run of weight 1, still cut into chunks.
  const auto chunks = a1111_token_chunks(*tok, "(red:1.5) BREAK " + words(100), false);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].ids[1], tok->encode("(")[1]);
  for (const auto& c : chunks)
    for (float m : c.multipliers) EXPECT_EQ(m, 1.0f);
}

TEST_F(PromptWeighting, WeightsScaleTokensAndKeepTheMean) {
  const auto encoder = models::CLIPTextModel::from_pretrained(kModel + "/text_encoder");
  const auto chunks = a1111_token_chunks(*tok, "a (red:1.5) apple, (((shiny)))");
  ASSERT_EQ(chunks.size(), 1u);
  const Tensor got = encode_token_chunks(*encoder, chunks);  // [1, 77, D]
  const Tensor z = encoder->forward(Tensor::from_vector_i64(chunks[0].ids, {1, 77})).last_hidden_state;
  const std::vector<float> zv = z.to_vector(), gv = got.to_vector();
  const int64_t D = z.size(2);
  double before = 0, after = 0;
  for (int64_t t = 0; t < 77; ++t)
    for (int64_t d = 0; d < D; ++d) {
      before += zv[t * D + d];
      after += zv[t * D + d] * chunks[0].multipliers[t];
    }
  const double ratio = before / after;
  double err = 0;
  for (int64_t t = 0; t < 77; ++t)
    for (int64_t d = 0; d < D; ++d)
      err = std::max(err, std::fabs(gv[t * D + d] - zv[t * D + d] * chunks[0].multipliers[t] * ratio));
  EXPECT_LT(err, 1e-5) << "max |got - z * w * mean ratio|";
  EXPECT_NEAR(ops::mean(got).item(), ops::mean(z).item(), 1e-6);
}

TEST_F(PromptWeighting, PipelineTakesLongAndWeightedPrompts) {
  const StableDiffusion sd = StableDiffusion::from_pretrained(kModel);
  const std::string prompt = "a (red:1.3) apple, " + words(90);
  const Tensor plain = sd.encode_prompt(prompt, "", 2, true);
  EXPECT_EQ(plain.size(1), 77);  // diffusers: cut at 77
  const Tensor weighted = sd.encode_prompt(prompt, "", 2, true, 1, nullptr, PromptSyntax::kA1111);
  EXPECT_EQ(weighted.size(0), 4);
  EXPECT_EQ(weighted.size(1), 154);  // two chunks; the negative padded to two
  GenerationParams p;
  p.prompt = prompt;
  p.steps = 2;
  p.width = p.height = 32;
  p.prompt_syntax = PromptSyntax::kA1111;
  const Tensor image = sd.run(p);
  EXPECT_EQ(image.size(1), 3);
  for (float v : image.to_vector()) ASSERT_TRUE(std::isfinite(v));
}

TEST_F(PromptWeighting, A1111ConditioningMatchesTheWebUi) {
  const std::string dir = testing::test_data_path("prompt_weighting");
  std::ifstream f(dir + "/reference.json");
  ASSERT_TRUE(f) << dir << "/reference.json is missing";
  const nlohmann::json ref = nlohmann::json::parse(f);
  const auto tensors = io::SafetensorsFile::open(dir + "/reference.safetensors");
  const auto encoder = models::CLIPTextModel::from_pretrained(kModel + "/text_encoder");
  ASSERT_GE(ref["cases"].size(), 10u);
  for (const auto& c : ref["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const auto& o = c["options"];
    const bool emphasis = o["emphasis"] != "None";
    const size_t backtrack = o["comma_padding_backtrack"].get<size_t>();
    const int clip_skip = o["CLIP_stop_at_last_layers"].get<int>();
    // Each prompt of the batch is chunked alone; the shorter are padded with empty chunks.
    std::vector<std::vector<TokenChunk>> batch;
    size_t most = 0;
    for (size_t b = 0; b < c["texts"].size(); ++b) {
      batch.push_back(a1111_token_chunks(*tok, c["texts"][b].get<std::string>(), emphasis, backtrack));
      const std::string key = name + "." + std::to_string(b);
      const Tensor ids = tensors.tensor(key + ".ids");
      const Tensor mult = tensors.tensor(key + ".multipliers");
      ASSERT_EQ(static_cast<int64_t>(batch.back().size()), ids.size(0));
      std::vector<int64_t> got_ids;
      std::vector<float> got_mult;
      for (const TokenChunk& chunk : batch.back()) {
        got_ids.insert(got_ids.end(), chunk.ids.begin(), chunk.ids.end());
        got_mult.insert(got_mult.end(), chunk.multipliers.begin(), chunk.multipliers.end());
      }
      EXPECT_EQ(got_ids, ids.to_vector_i64());
      const std::vector<float> want_mult = mult.to_vector();
      ASSERT_EQ(got_mult.size(), want_mult.size());
      for (size_t i = 0; i < got_mult.size(); ++i) ASSERT_FLOAT_EQ(got_mult[i], want_mult[i]) << i;
      most = std::max(most, batch.back().size());
    }
    std::vector<Tensor> conds;
    for (auto& chunks : batch) {
      while (chunks.size() < most) chunks.push_back(empty_token_chunk(*tok));
      conds.push_back(encode_token_chunks(*encoder, chunks, clip_skip));
    }
    const Tensor got = conds.size() == 1 ? conds[0] : ops::concat(conds, 0);
    EXPECT_TRUE(testing::close_relative(got, tensors.tensor(name + ".cond"), 1e-5));
  }
}

TEST_F(PromptWeighting, TooLongPromptsAreRefused) {
  try {
    a1111_token_chunks(*tok, words(75 * 33));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("33 chunks of 75 tokens; at most 32"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace stipple::pipelines

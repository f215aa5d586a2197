#include "pipelines/prompt_weighting.h"

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"
#include "text/prompt_attention.h"

namespace stipple::pipelines {
namespace {

constexpr size_t kChunkTokens = 75;    // 77 minus bos and eos
constexpr size_t kMaxChunks = 32;       // 2,400 tokens: bounds the encoder runs and the context

// Closes the chunk being filled: bos + tokens + eos + padding to 77.
TokenChunk close_chunk(const text::ClipTokenizer& tok, std::vector<int64_t> tokens,
                       std::vector<float> weights) {
  TokenChunk c;
  c.ids.push_back(tok.bos_token_id());
  c.multipliers.push_back(1.0f);
  c.ids.insert(c.ids.end(), tokens.begin(), tokens.end());
  c.multipliers.insert(c.multipliers.end(), weights.begin(), weights.end());
  c.ids.push_back(tok.eos_token_id());
  c.multipliers.push_back(1.0f);
  while (c.ids.size() < kChunkTokens + 2) {
    c.ids.push_back(tok.pad_token_id());
    c.multipliers.push_back(1.0f);
  }
  return c;
}

}  // namespace

TokenChunk empty_token_chunk(const text::ClipTokenizer& tokenizer) {
  return close_chunk(tokenizer, {}, {});
}

std::vector<TokenChunk> a1111_token_chunks(const text::ClipTokenizer& tok,
                                           std::string_view prompt, bool emphasis,
                                           size_t comma_backtrack) {
  const std::vector<int64_t> comma_ids = tok.encode(",");  // [bos, ",</w>", eos]
  const int64_t comma = comma_ids.size() == 3 ? comma_ids[1] : -1;
  std::vector<TokenChunk> chunks;
  std::vector<int64_t> tokens;
  std::vector<float> weights;
  std::ptrdiff_t last_comma = -1;  // where in `tokens` the last comma is, or -1
  auto next_chunk = [&] {
    chunks.push_back(close_chunk(tok, std::move(tokens), std::move(weights)));
    tokens.clear();
    weights.clear();
    last_comma = -1;
  };
  const std::vector<text::PromptChunk> runs =
      emphasis ? text::parse_prompt_attention(prompt)
               : std::vector<text::PromptChunk>{{std::string(prompt), 1.0}};
  for (const text::PromptChunk& run : runs) {
    if (run.is_break()) {
      next_chunk();
      continue;
    }
    std::vector<int64_t> ids = tok.encode(run.text);
    ids.erase(ids.begin());  // the run's own tokens, without bos and eos
    ids.pop_back();
    for (const int64_t id : ids) {
      if (id == comma) {
        last_comma = static_cast<std::ptrdiff_t>(tokens.size());
      } else if (comma_backtrack != 0 && tokens.size() == kChunkTokens && last_comma != -1 &&
                 tokens.size() - static_cast<size_t>(last_comma) <= comma_backtrack) {
        // A full chunk with a comma near its end: what follows the comma starts the next one.
        const size_t cut = static_cast<size_t>(last_comma) + 1;
        std::vector<int64_t> moved(tokens.begin() + cut, tokens.end());
        std::vector<float> moved_w(weights.begin() + cut, weights.end());
        tokens.resize(cut);
        weights.resize(cut);
        next_chunk();
        tokens = std::move(moved);
        weights = std::move(moved_w);
      }
      if (tokens.size() == kChunkTokens) next_chunk();
      tokens.push_back(id);
      weights.push_back(static_cast<float>(run.weight));
    }
  }
  if (!tokens.empty() || chunks.empty()) next_chunk();
  STIPPLE_CHECK(chunks.size() <= kMaxChunks, "the prompt makes ", chunks.size(),
                " chunks of 75 tokens; at most ", kMaxChunks, " are taken (shorten the prompt)");
  return chunks;
}

Tensor encode_token_chunks(const models::CLIPTextModel& encoder,
                           const std::vector<TokenChunk>& chunks, int clip_skip) {
  return encode_token_chunks(
      [&](const Tensor& ids) { return encoder.forward(ids, clip_skip).last_hidden_state; },
      chunks);
}

Tensor encode_token_chunks(const std::function<Tensor(const Tensor& ids)>& encode,
                           const std::vector<TokenChunk>& chunks) {
  STIPPLE_CHECK(!chunks.empty(), "encode_token_chunks: no chunks");
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> parts;
  for (const TokenChunk& c : chunks) {
    const int64_t n = static_cast<int64_t>(c.ids.size());
    const Tensor ids = Tensor::from_vector_i64(c.ids, {1, n});
    const Tensor z = encode(ids);  // [1, 77, D]
    bool weighted = false;
    for (float m : c.multipliers) weighted = weighted || m != 1.0f;
    if (!weighted) {
      parts.push_back(z);
      continue;
    }
    // "Original" emphasis: scale each token's state, then restore the chunk's mean.
    const float before = ops::mean(z).item();
    const Tensor scaled =
        z * Tensor::from_vector(c.multipliers, {1, n, 1}).to(z.device());  // [1, 77, D]
    const float after = ops::mean(scaled).item();
    parts.push_back(scaled * (before / after));
  }
  return parts.size() == 1 ? parts[0] : ops::concat(parts, 1);  // [1, 77 * chunks, D]
}

}  // namespace stipple::pipelines

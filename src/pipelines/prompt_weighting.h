// A1111's conditioning for prompts with emphasis, as Stable Diffusion web UI computes it
// (modules/sd_hijack_clip.py with the default "Original" emphasis), for the CLIP text encoders of
// Stable Diffusion 1.x/2.x:
//   1. text/prompt_attention.h splits the prompt into runs with weights (and BREAK markers);
//   2. each run is tokenized alone (no bos/eos) and its tokens take its weight;
//   3. the tokens fill chunks of 75: a chunk ends at 75 tokens, where a comma among its last 20
//      tokens moves what follows the comma into the next chunk, and at every BREAK;
//   4. each chunk becomes [bos] + tokens + [eos] + padding (77 ids; padding is the tokenizer's
//      pad id: eos for SD 1.x, "!" for SD 2.x), goes through the encoder alone, and its states
//      [77, D] are scaled per token by their weights, then rescaled so their mean over the
//      chunk is what it was before;
//   5. the chunks' states are joined along the tokens: [1, 77 * chunks, D].
// A prompt longer than 75 tokens is thus used whole (up to 32 chunks), where diffusers truncates it. The positive
// and negative prompts are padded to the same number of chunks with empty chunks (A1111's
// "pad prompt/negative prompt to be same length", which lets one UNet call take both).
//
// Textual-inversion embeddings are added tokens of the tokenizer (StableDiffusion::
// load_embeddings), so chunks hold them like any word. Leaves out: the other emphasis modes.
#pragma once

#include <functional>
#include <string_view>
#include <vector>

#include "core/tensor.h"
#include "models/clip_text.h"
#include "stipple/prompt_syntax.h"
#include "text/clip_tokenizer.h"

namespace stipple::pipelines {

using stipple::PromptSyntax;  // how a prompt is read: one enum with the public API

struct TokenChunk {
  std::vector<int64_t> ids;        // 77: bos, tokens, eos, padding
  std::vector<float> multipliers;  // 77: the tokens' weights, 1 elsewhere
};

// Steps 1-4's ids and weights (at least one chunk; an empty prompt is one empty chunk). Without
// `emphasis` (A1111's emphasis "None") step 1 is skipped: the prompt is one run of weight 1 (BREAK
// is then text too). `comma_backtrack` is A1111's comma_padding_backtrack (0: a chunk ends at 75
// tokens wherever its commas are).
std::vector<TokenChunk> a1111_token_chunks(const text::ClipTokenizer& tokenizer,
                                           std::string_view prompt, bool emphasis = true,
                                           size_t comma_backtrack = 20);
// A chunk with no tokens (what shorter prompts are padded with).
TokenChunk empty_token_chunk(const text::ClipTokenizer& tokenizer);

// Step 4's encoding of each chunk and step 5: [1, 77 * chunks.size(), D].
Tensor encode_token_chunks(const models::CLIPTextModel& encoder,
                           const std::vector<TokenChunk>& chunks, int clip_skip = 1);
// The same with any encoding of a chunk's ids [1, 77] -> states [1, 77, D] (SDXL takes the
// penultimate layer of each of its encoders).
Tensor encode_token_chunks(const std::function<Tensor(const Tensor& ids)>& encode,
                           const std::vector<TokenChunk>& chunks);

}  // namespace stipple::pipelines

// How a Stable Diffusion model reads a prompt (GenerateRequest::prompt_syntax; the pipeline
// reads the same enum, src/pipelines/prompt_weighting.h).
#pragma once

namespace stipple {

enum class PromptSyntax {
  kPlain,  // plain text cut at 77 tokens, as diffusers reads it
  kA1111,  // the web UI's: (word:1.2), [word] and BREAK, and past 75 tokens in chunks of 75
  kA1111NoEmphasis,  // the web UI with emphasis "None": brackets are text; still in chunks
};

}  // namespace stipple

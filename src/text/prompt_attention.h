// A1111's prompt emphasis syntax: a prompt split into runs of text, each with the weight its
// brackets give it, as Stable Diffusion web UI's parse_prompt_attention (modules/prompt_parser.py)
// computes it, quirks included, so prompts written for it mean the same here.
//
//   (text)        weight x 1.1 per pair        [text]   weight / 1.1 per pair
//   (text:1.3)    weight x 1.3                 \( \) \[ \] \\   the literal character
//   BREAK         (a word on its own) ends the 75-token chunk early: a chunk of weight -1
// Brackets left open at the end still apply to what follows them; a closing bracket with none
// open, and a ":1.3)" with no "(" open, are plain text. Adjacent runs of equal weight merge.
// Weights multiply in the order the brackets close, in double precision, so they equal A1111's
// bit for bit (1.3 * 1.1 * 1.1 = 1.5730000000000004).
//
// Differences: where A1111 fails on a weight that is not a number ("(a:1.2.3)", "(a:.)"), the
// weight and its bracket are read as plain text; around BREAK, non-ASCII characters count as
// letters and only ASCII whitespace is taken (A1111's regex knows Unicode classes).
// Cost: as A1111's, a closing bracket reweights every run since its opening one, so a prompt of n
// characters costs up to n^2/16 multiplications; callers bound the prompt's length.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace stipple::text {

struct PromptChunk {
  std::string text;
  double weight = 1.0;
  // A BREAK marker (A1111 checks the same: the text "BREAK" with weight exactly -1; a BREAK
  // inside brackets gets another weight and is then ordinary text).
  bool is_break() const { return text == "BREAK" && weight == -1.0; }
  bool operator==(const PromptChunk&) const = default;
};

// Never empty: an empty prompt is one chunk "" of weight 1.
std::vector<PromptChunk> parse_prompt_attention(std::string_view prompt);

}  // namespace stipple::text

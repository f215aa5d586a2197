// ClipTokenizer: the byte-level BPE tokenizer of CLIP's text encoder (Stable Diffusion 1.x/2.x,
// SDXL), reproducing transformers' slow `CLIPTokenizer` without ftfy token for token.
//
// Reads a diffusers/transformers `tokenizer/` folder: vocab.json (symbol -> id), merges.txt (the
// line `#version: 0.2`, then one merge per line, rank = line number; only the first 48894 are
// used, as transformers does), tokenizer_config.json and special_tokens_map.json (bos, eos, unk
// and pad tokens, model_max_length, do_lower_case). When tokenizer_config.json has no
// `added_tokens_decoder` (SD 1.x/2.x checkpoints), special_tokens_map.json overrides it, so SD 2.x
// tokenizers pad with "!" (id 0) while their EOS stays <|endoftext|>.
//
// encode(text), as transformers' CLIPTokenizer (4.39, BasicTokenizer path):
//   1. added/special tokens (bos, eos, unk, pad, and any `added_tokens_decoder` entries) are cut
//      out of the raw text first, case-sensitively, each becoming its id;
//   2. each remaining piece is cleaned (control and format characters C*, U+0000 and U+FFFD
//      deleted; tab, newline, CR and Zs mapped to ' '), CJK ideographs are spaced, NFC applied,
//      split on whitespace, and each word lower-cased as Python's str.lower() does (İ -> i̇,
//      final sigma);
//   3. pre-tokenized with CLIP's pattern
//      <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      (case-insensitive, so U+017F ſ matches 's');
//   4. each pre-token's UTF-8 bytes are mapped through bytes_to_unicode, `</w>` is appended to the
//      last symbol, and the lowest-ranked adjacent pair is merged until none has a rank (cached);
//   5. symbols become ids (unknown -> unk), wrapped as [bos] + ids + [eos].
// encode_padded() truncates to max_length - 2 content ids, appends eos and pads with pad_token_id,
// which is what the SD pipelines feed the text encoder.
//
// Unicode data (categories, NFC, simple lower-case mapping) comes from utf8proc. Thread-safe: the
// BPE cache is guarded by a mutex; copies share it.
//
// Leaves out: the ftfy path (ftfy.fix_text + whitespace_clean), the fast tokenizer's
// tokenizer.json, decoding ids back to text, attention masks, left padding, the lstrip/rstrip
// flags of added tokens (they only trim whitespace that step 2 drops anyway) and
// added_tokens.json (textual-inversion tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace stipple::text {

class ClipTokenizer {
 public:
  // Loads vocab.json and merges.txt (required) and tokenizer_config.json /
  // special_tokens_map.json (optional; CLIP's defaults otherwise) from `dir`. Throws
  // stipple::Error naming the file and the problem.
  static ClipTokenizer from_folder(const std::string& dir);

  // The byte-level BPE symbols of `text` (no bos/eos, not truncated): tokenizer.tokenize(text).
  std::vector<std::string> bpe_tokens(const std::string& text) const;
  // [bos] + ids + [eos], no truncation, no padding: tokenizer(text).input_ids.
  std::vector<int64_t> encode(const std::string& text) const;
  // [bos] + first (max_length - 2) ids + [eos], then pad_token_id up to max_length:
  // tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids.
  std::vector<int64_t> encode_padded(const std::string& text, int64_t max_length = 77) const;
  // The same with an explicit padding id.
  std::vector<int64_t> encode_padded(const std::string& text, int64_t max_length,
                                     int64_t pad_id) const;
  // encode_padded for each text: i64 [B, max_length], the text encoder's input.
  Tensor encode_batch(const std::vector<std::string>& texts, int64_t max_length = 77) const;

  // The id of a vocabulary symbol or added token; -1 when absent.
  int64_t token_to_id(const std::string& token) const;
  // The symbol of an id; throws when out of range.
  const std::string& id_to_token(int64_t id) const;
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  size_t num_merges() const { return merge_ranks_.size(); }

  int64_t bos_token_id() const { return bos_id_; }
  int64_t eos_token_id() const { return eos_id_; }
  int64_t unk_token_id() const { return unk_id_; }
  int64_t pad_token_id() const { return pad_id_; }
  const std::string& bos_token() const { return bos_; }
  const std::string& eos_token() const { return eos_; }
  const std::string& unk_token() const { return unk_; }
  const std::string& pad_token() const { return pad_; }
  // model_max_length from tokenizer_config.json (77 for CLIP); some configs store a huge
  // placeholder, so encode_padded's default length is 77 rather than this.
  int64_t model_max_length() const { return model_max_length_; }
  // As read from tokenizer_config.json. transformers' CLIPTokenizer lower-cases whatever it says
  // (its BasicTokenizer is built with do_lower_case=True), and so does this class.
  bool do_lower_case() const { return do_lower_case_; }

  // Textual inversion: `token` becomes an added token with id `id` (split from the text before
  // BPE, as transformers' add_tokens); throws when the token already exists.
  void add_token(const std::string& token, int64_t id);

  // A copy that pads with `token` (a vocabulary symbol), which becomes a special token as in
  // transformers: SDXL's second tokenizer is the first one's files with pad_token "!".
  ClipTokenizer with_pad_token(const std::string& token) const;

  // The pre-tokens of step 3 for one piece of text without special tokens (for tests).
  std::vector<std::string> pre_tokenize(const std::string& piece) const;

 private:
  struct Cache;
  ClipTokenizer() = default;

  // Steps 2-4 for text without added tokens: BPE symbols appended to `out`.
  void tokenize_piece(const std::string& piece, std::vector<std::string>& out) const;
  // BPE of one byte-encoded pre-token (step 4), through the cache.
  std::vector<std::string> bpe(const std::string& word) const;
  // Splits text around added tokens: (piece, is_added_token) in order.
  std::vector<std::pair<std::string, bool>> split_added(const std::string& text) const;
  int64_t symbol_id(const std::string& symbol) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_ranks_;  // "a b" -> rank
  std::unordered_map<std::string, int64_t> added_;    // content -> id (split before cleaning)
  std::vector<std::string> added_sorted_;             // longest first
  std::string byte_symbol_[256];                      // bytes_to_unicode, as UTF-8
  std::string bos_, eos_, unk_, pad_;
  int64_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
  int64_t model_max_length_ = 77;
  bool do_lower_case_ = true;
  std::shared_ptr<Cache> cache_;
};

}  // namespace stipple::text

// ClipTokenizer: loading the tokenizer folder, the BasicTokenizer-style normalisation, CLIP's
// pre-tokenizer pattern written out by hand over code points, and byte-level BPE.
// See clip_tokenizer.h for the algorithm and what is left out.
#include "text/clip_tokenizer.h"

#include "io/read_file.h"

#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>

#include "core/error.h"
#include "io/json.h"

namespace stipple::text {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// transformers reads lines[1 : 49152 - 256 - 2 + 1] of merges.txt.
constexpr int kMaxMerges = 49152 - 256 - 2;
constexpr size_t kMaxCacheEntries = 100000;

// ---------------- UTF-8 ----------------

std::u32string utf8_decode(const std::string& s, const char* what) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n =
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                         static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    STIPPLE_CHECK(n > 0 && cp >= 0, what, " is not valid UTF-8 (bad byte 0x", std::hex,
                  static_cast<int>(static_cast<unsigned char>(s[i])), std::dec, " at offset ", i,
                  "); pass UTF-8 text");
    out.push_back(static_cast<char32_t>(cp));
    i += static_cast<size_t>(n);
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  utf8proc_uint8_t buf[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buf);
  out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

std::string utf8_encode(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

// ---------------- Unicode properties (Python's unicodedata / regex semantics) ----------------

utf8proc_category_t category(char32_t c) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}

bool is_letter(char32_t c) {  // \p{L}
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t c) {  // \p{N}
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// Unicode White_Space (regex's \s). After cleaning only ' ' can remain, but the pattern is
// written out in full.
bool is_regex_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// BasicTokenizer._is_control: category C* except tab, newline and carriage return.
bool is_control(char32_t c) {
  if (c == U'\t' || c == U'\n' || c == U'\r') return false;
  switch (category(c)) {
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
      return true;
    default:
      return false;
  }
}

// BasicTokenizer._is_whitespace: ' ', \t, \n, \r and category Zs.
bool is_basic_whitespace(char32_t c) {
  return c == U' ' || c == U'\t' || c == U'\n' || c == U'\r' || category(c) == UTF8PROC_CATEGORY_ZS;
}

// Python's str.split() separators (bidirectional WS/B/S or Zs).
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// BasicTokenizer._is_chinese_char: the CJK Unified Ideographs blocks.
bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Cased (DerivedCoreProperties), approximated as Lu/Ll/Lt or having a case mapping.
bool is_cased(char32_t c) {
  const auto cat = category(c);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT)
    return true;
  const auto cp = static_cast<utf8proc_int32_t>(c);
  return utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp;
}

// Case_Ignorable: Mn, Me, Cf, Lm, Sk and the Word_Break MidLetter/MidNumLet/Single_Quote set.
bool is_case_ignorable(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (c) {
    case 0x27:
    case 0x2E:
    case 0x3A:
    case 0xB7:
    case 0x387:
    case 0x55F:
    case 0x5F4:
    case 0x2018:
    case 0x2019:
    case 0x2024:
    case 0x2027:
    case 0xFE13:
    case 0xFE52:
    case 0xFE55:
    case 0xFF07:
    case 0xFF0E:
    case 0xFF1A:
      return true;
    default:
      return false;
  }
}

// Python's str.lower() of one word: the full lower-case mapping. The only unconditional
// multi-character mapping is U+0130 -> "i\u0307"; capital sigma becomes final sigma at the end
// of a cased run (Python's handle_capital_sigma); everything else is the simple mapping.
std::u32string python_lower(const std::u32string& w) {
  std::u32string out;
  out.reserve(w.size());
  const size_t n = w.size();
  for (size_t i = 0; i < n; ++i) {
    const char32_t c = w[i];
    if (c == 0x130) {
      out.push_back(U'i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {
      size_t j = i;
      bool final_sigma = false;
      while (j > 0 && is_case_ignorable(w[j - 1])) --j;
      if (j > 0 && is_cased(w[j - 1])) {
        size_t k = i + 1;
        while (k < n && is_case_ignorable(w[k])) ++k;
        final_sigma = k == n || !is_cased(w[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  return out;
}

std::u32string nfc(const std::u32string& s) {
  if (s.empty()) return s;
  const std::string utf8 = utf8_encode(s);
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(utf8.data()),
                   static_cast<utf8proc_ssize_t>(utf8.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  STIPPLE_CHECK(n >= 0, "NFC normalisation failed: ", utf8proc_errmsg(n));
  std::string composed(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  free(out);
  return utf8_decode(composed, "normalised text");
}

// BasicTokenizer(do_lower_case=True, strip_accents=False, do_split_on_punc=False).tokenize:
// the words of one piece, lower-cased.
std::vector<std::u32string> basic_tokenize(const std::u32string& text) {
  // a. clean: drop NUL, U+FFFD and controls; whitespace -> ' '.  b. space CJK ideographs.
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t c : text) {
    if (c == 0 || c == 0xFFFD || is_control(c)) continue;
    if (is_basic_whitespace(c)) {
      cleaned.push_back(U' ');
    } else if (is_cjk(c)) {
      cleaned.push_back(U' ');
      cleaned.push_back(c);
      cleaned.push_back(U' ');
    } else {
      cleaned.push_back(c);
    }
  }
  // c. NFC.  d. split on whitespace and lower-case each word.
  const std::u32string normal = nfc(cleaned);
  std::vector<std::u32string> words;
  std::u32string cur;
  for (char32_t c : normal) {
    if (is_python_space(c)) {
      if (!cur.empty()) words.push_back(python_lower(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) words.push_back(python_lower(cur));
  return words;
}

// The pattern's literals are matched case-insensitively (simple case folding): only ASCII
// capitals, U+017F (-> s) and U+212A (-> k) fold onto ASCII letters.
bool ci_equal(char32_t c, char lit) {
  if (c == static_cast<char32_t>(lit)) return true;
  if (lit >= 'a' && lit <= 'z') {
    if (c == static_cast<char32_t>(lit - 'a' + 'A')) return true;
    if (lit == 's' && c == 0x17F) return true;
    if (lit == 'k' && c == 0x212A) return true;
  }
  return false;
}

bool match_literal(const std::u32string& w, size_t i, const char* lit) {
  size_t k = 0;
  for (; lit[k] != '\0'; ++k) {
    if (i + k >= w.size() || !ci_equal(w[i + k], lit[k])) return false;
  }
  return true;
}

// CLIP's pattern over one word (no spaces inside): all leftmost matches, alternatives in order.
std::vector<std::u32string> clip_pattern_findall(const std::u32string& w) {
  static const char* const kLiterals[] = {
      "<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::u32string> out;
  size_t i = 0;
  const size_t n = w.size();
  while (i < n) {
    bool matched = false;
    for (const char* lit : kLiterals) {
      if (match_literal(w, i, lit)) {
        const size_t len = std::char_traits<char>::length(lit);
        out.push_back(w.substr(i, len));
        i += len;
        matched = true;
        break;
      }
    }
    if (matched) continue;
    const char32_t c = w[i];
    size_t j = i + 1;
    if (is_letter(c)) {  // [\p{L}]+
      while (j < n && is_letter(w[j])) ++j;
    } else if (is_number(c)) {        // [\p{N}]
    } else if (!is_regex_space(c)) {  // [^\s\p{L}\p{N}]+
      while (j < n && !is_regex_space(w[j]) && !is_letter(w[j]) && !is_number(w[j])) ++j;
    } else {
      ++i;  // whitespace: no alternative matches here
      continue;
    }
    out.push_back(w.substr(i, j - i));
    i = j;
  }
  return out;
}

// ---------------- loading helpers ----------------

std::string read_text_file(const fs::path& path) {
  return io::read_file_bounded(path.string(), "tokenizer file");
}

// A special-token entry: a string, or an AddedToken object {"content": ..., ...}.
bool token_content(const json& j, const std::string& key, const std::string& where,
                   std::string& out) {
  if (!j.contains(key) || j.at(key).is_null()) return false;
  const json& v = j.at(key);
  if (v.is_string()) {
    out = v.get<std::string>();
    return true;
  }
  STIPPLE_CHECK(v.is_object() && v.contains("content") && v.at("content").is_string(), where, ": '",
                key, "' must be a string or an object with a string 'content', got ", v.dump());
  out = v.at("content").get<std::string>();
  return true;
}

bool is_python_strip_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' ||
         (c >= 0x1C && c <= 0x1F);
}

}  // namespace

struct ClipTokenizer::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::string>> words;
};

ClipTokenizer ClipTokenizer::from_folder(const std::string& dir) {
  const fs::path root(dir);
  STIPPLE_CHECK(fs::is_directory(root), "tokenizer folder not found: ", dir,
                " (expected a folder with vocab.json and merges.txt)");
  const fs::path vocab_path = root / "vocab.json";
  const fs::path merges_path = root / "merges.txt";
  STIPPLE_CHECK(fs::exists(vocab_path), "missing vocab.json in tokenizer folder ", dir,
                " (a CLIP tokenizer needs vocab.json and merges.txt)");
  STIPPLE_CHECK(fs::exists(merges_path), "missing merges.txt in tokenizer folder ", dir,
                " (a CLIP tokenizer needs vocab.json and merges.txt)");

  ClipTokenizer tok;
  tok.cache_ = std::make_shared<Cache>();

  // bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards.
  {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      std::string s;
      utf8_append(s, static_cast<char32_t>(printable ? b : 256 + n++));
      tok.byte_symbol_[b] = s;
    }
  }

  // vocab.json: {symbol: id}.
  {
    const json v = io::read_json_file(vocab_path.string());
    const std::string where = vocab_path.string();
    STIPPLE_CHECK(v.is_object() && !v.empty(), where,
                  ": expected a non-empty JSON object mapping symbols to ids");
    int64_t max_id = -1;
    for (auto it = v.begin(); it != v.end(); ++it) {
      STIPPLE_CHECK(it.value().is_number_integer(), where, ": the id of '", it.key(),
                    "' must be an integer, got ", it.value().dump());
      const int64_t id = it.value().get<int64_t>();
      STIPPLE_CHECK(id >= 0 && id < (int64_t{1} << 31), where, ": id ", id, " of '", it.key(),
                    "' is out of range");
      tok.vocab_[it.key()] = id;
      max_id = std::max(max_id, id);
    }
    tok.id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
    for (const auto& [sym, id] : tok.vocab_) tok.id_to_token_[static_cast<size_t>(id)] = sym;
  }

  // merges.txt: read().strip().split("\n")[1 : 48895], each line split on whitespace.
  {
    const std::string text = read_text_file(merges_path);
    size_t b = 0, e = text.size();
    while (b < e && is_python_strip_space(text[b])) ++b;
    while (e > b && is_python_strip_space(text[e - 1])) --e;
    STIPPLE_CHECK(b < e, merges_path.string(),
                  ": the file is empty (expected '#version: 0.2' "
                  "and one merge per line)");
    size_t pos = b;
    int line_no = 0;  // 0 = the header line, skipped as transformers does
    while (pos <= e && line_no <= kMaxMerges) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos || nl > e) nl = e;
      if (line_no > 0) {
        std::istringstream fields(text.substr(pos, nl - pos));
        std::string first, second, extra;
        fields >> first >> second >> extra;
        STIPPLE_CHECK(!first.empty() && !second.empty() && extra.empty(), merges_path.string(),
                      ": bad merges line ", line_no + 1,
                      ": expected two symbols separated by a "
                      "space, got '",
                      text.substr(pos, nl - pos), "'");
        tok.merge_ranks_[first + " " + second] = line_no - 1;
      }
      ++line_no;
      pos = nl + 1;
    }
  }

  // Special tokens: CLIPTokenizer's defaults, then tokenizer_config.json, then (only without
  // added_tokens_decoder) special_tokens_map.json on top.
  tok.bos_ = "<|startoftext|>";
  tok.eos_ = tok.unk_ = tok.pad_ = "<|endoftext|>";
  std::vector<std::pair<std::string, int64_t>> declared;  // added_tokens_decoder entries
  bool has_added_decoder = false;
  const fs::path config_path = root / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    const io::JsonConfig cfg = io::JsonConfig::from_file(config_path.string());
    const json& j = cfg.raw();
    STIPPLE_CHECK(j.is_object(), config_path.string(), ": expected a JSON object");
    token_content(j, "bos_token", cfg.where(), tok.bos_);
    token_content(j, "eos_token", cfg.where(), tok.eos_);
    token_content(j, "unk_token", cfg.where(), tok.unk_);
    token_content(j, "pad_token", cfg.where(), tok.pad_);
    const double max_len = cfg.number("model_max_length", 77.0);
    tok.model_max_length_ =
        max_len >= 9.0e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(max_len);
    tok.do_lower_case_ = cfg.boolean("do_lower_case", true);
    if (j.contains("added_tokens_decoder") && j.at("added_tokens_decoder").is_object()) {
      has_added_decoder = true;
      for (auto it = j.at("added_tokens_decoder").begin(); it != j.at("added_tokens_decoder").end();
           ++it) {
        std::string content;
        json wrap = {{"t", it.value()}};
        token_content(wrap, "t", cfg.where() + " added_tokens_decoder", content);
        int64_t id = -1;
        try {
          id = std::stoll(it.key());
        } catch (const std::exception&) {
        }
        STIPPLE_CHECK(id >= 0, cfg.where(), ": added_tokens_decoder key '", it.key(),
                      "' is not a token id");
        declared.emplace_back(content, id);
      }
    }
  }
  const fs::path map_path = root / "special_tokens_map.json";
  if (!has_added_decoder && fs::exists(map_path)) {
    const json j = io::read_json_file(map_path.string());
    STIPPLE_CHECK(j.is_object(), map_path.string(), ": expected a JSON object");
    token_content(j, "bos_token", map_path.string(), tok.bos_);
    token_content(j, "eos_token", map_path.string(), tok.eos_);
    token_content(j, "unk_token", map_path.string(), tok.unk_);
    token_content(j, "pad_token", map_path.string(), tok.pad_);
  }

  // Added tokens: declared ones keep their ids; special tokens take their vocab id, or a new id
  // after the vocabulary when absent (as transformers' _add_tokens).
  for (const auto& [content, id] : declared) {
    if (content.empty()) continue;
    tok.added_[content] = id;
  }
  int64_t next_id = static_cast<int64_t>(tok.id_to_token_.size());
  for (const auto& [content, id] : tok.added_) next_id = std::max(next_id, id + 1);
  for (const std::string* special : {&tok.bos_, &tok.eos_, &tok.unk_, &tok.pad_}) {
    if (special->empty() || tok.added_.count(*special)) continue;
    auto it = tok.vocab_.find(*special);
    tok.added_[*special] = it != tok.vocab_.end() ? it->second : next_id++;
  }
  for (const auto& [content, id] : tok.added_) {
    if (id >= static_cast<int64_t>(tok.id_to_token_.size())) {
      tok.id_to_token_.resize(static_cast<size_t>(id + 1));
    }
    if (tok.id_to_token_[static_cast<size_t>(id)].empty()) {
      tok.id_to_token_[static_cast<size_t>(id)] = content;
    }
    tok.added_sorted_.push_back(content);
  }
  std::sort(tok.added_sorted_.begin(), tok.added_sorted_.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() != b.size() ? a.size() > b.size() : a < b;
            });
  tok.bos_id_ = tok.added_.at(tok.bos_);
  tok.eos_id_ = tok.added_.at(tok.eos_);
  tok.unk_id_ = tok.added_.at(tok.unk_);
  tok.pad_id_ = tok.added_.at(tok.pad_);
  return tok;
}

void ClipTokenizer::add_token(const std::string& token, int64_t id) {
  STIPPLE_CHECK(!token.empty() && token_to_id(token) < 0, "the token \"", token,
                "\" is already in the tokenizer's vocabulary; an embedding needs a new word");
  STIPPLE_CHECK(id >= 0 && id < (int64_t{1} << 30), "token id ", id, " is out of range");
  added_[token] = id;
  if (id >= static_cast<int64_t>(id_to_token_.size()))
    id_to_token_.resize(static_cast<size_t>(id + 1));
  id_to_token_[static_cast<size_t>(id)] = token;
  added_sorted_.push_back(token);
  std::sort(added_sorted_.begin(), added_sorted_.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() != b.size() ? a.size() > b.size() : a < b;
            });
}

ClipTokenizer ClipTokenizer::with_pad_token(const std::string& token) const {
  ClipTokenizer tok = *this;
  const int64_t id = token_to_id(token);
  STIPPLE_CHECK(id >= 0, "the padding token \"", token, "\" is not in the tokenizer's vocabulary");
  tok.pad_ = token;
  tok.pad_id_ = id;
  if (tok.added_.emplace(token, id).second) {
    tok.added_sorted_.push_back(token);
    std::sort(tok.added_sorted_.begin(), tok.added_sorted_.end(),
              [](const std::string& a, const std::string& b) {
                return a.size() != b.size() ? a.size() > b.size() : a < b;
              });
  }
  return tok;
}

std::vector<std::pair<std::string, bool>> ClipTokenizer::split_added(
    const std::string& text) const {
  // The earliest match wins; among matches at one position the longest (transformers' Trie).
  std::vector<std::pair<std::string, bool>> out;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const std::string* hit = nullptr;
    for (const std::string& t : added_sorted_) {
      if (text.compare(i, t.size(), t) == 0) {
        hit = &t;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    if (i > start) out.emplace_back(text.substr(start, i - start), false);
    out.emplace_back(*hit, true);
    i += hit->size();
    start = i;
  }
  if (start < text.size()) out.emplace_back(text.substr(start), false);
  return out;
}

std::vector<std::string> ClipTokenizer::pre_tokenize(const std::string& piece) const {
  std::vector<std::string> out;
  for (const std::u32string& word : basic_tokenize(utf8_decode(piece, "text"))) {
    for (const std::u32string& t : clip_pattern_findall(word)) out.push_back(utf8_encode(t));
  }
  return out;
}

std::vector<std::string> ClipTokenizer::bpe(const std::string& token) const {
  if (token == "<|startoftext|>" || token == "<|endoftext|>") return {token};
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->words.find(token);
    if (it != cache_->words.end()) return it->second;
  }
  // Split into byte symbols (each a single code point), `</w>` on the last one.
  std::vector<std::string> word;
  for (size_t i = 0; i < token.size();) {
    size_t len = 1;
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c >= 0xC0) len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    word.push_back(token.substr(i, len));
    i += len;
  }
  STIPPLE_ASSERT(!word.empty());
  word.back() += "</w>";
  while (word.size() > 1) {
    // The adjacent pair with the lowest rank.
    int best = std::numeric_limits<int>::max();
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = merge_ranks_.find(word[i] + " " + word[i + 1]);
      if (it != merge_ranks_.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == std::numeric_limits<int>::max()) break;
    const std::string first = word[best_i], second = word[best_i + 1];
    // Merge every occurrence, left to right.
    std::vector<std::string> merged;
    merged.reserve(word.size());
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i]);
        i += 1;
      }
    }
    word = std::move(merged);
  }
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= kMaxCacheEntries) cache_->words.clear();
  cache_->words.emplace(token, word);
  return word;
}

void ClipTokenizer::tokenize_piece(const std::string& piece, std::vector<std::string>& out) const {
  for (const std::string& pre : pre_tokenize(piece)) {
    std::string encoded;
    for (unsigned char b : pre) encoded += byte_symbol_[b];
    for (std::string& sym : bpe(encoded)) out.push_back(std::move(sym));
  }
}

std::vector<std::string> ClipTokenizer::bpe_tokens(const std::string& text) const {
  std::vector<std::string> out;
  for (const auto& [piece, is_added] : split_added(text)) {
    if (is_added) {
      out.push_back(piece);
    } else {
      tokenize_piece(piece, out);
    }
  }
  return out;
}

int64_t ClipTokenizer::symbol_id(const std::string& symbol) const {
  auto a = added_.find(symbol);
  if (a != added_.end()) return a->second;
  auto v = vocab_.find(symbol);
  return v != vocab_.end() ? v->second : unk_id_;
}

int64_t ClipTokenizer::token_to_id(const std::string& token) const {
  auto a = added_.find(token);
  if (a != added_.end()) return a->second;
  auto v = vocab_.find(token);
  return v != vocab_.end() ? v->second : -1;
}

const std::string& ClipTokenizer::id_to_token(int64_t id) const {
  STIPPLE_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is out of range [0, ",
                vocab_size(), ")");
  return id_to_token_[static_cast<size_t>(id)];
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids = {bos_id_};
  for (const std::string& sym : bpe_tokens(text)) ids.push_back(symbol_id(sym));
  ids.push_back(eos_id_);
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode_padded(const std::string& text,
                                                  int64_t max_length) const {
  return encode_padded(text, max_length, pad_id_);
}

std::vector<int64_t> ClipTokenizer::encode_padded(const std::string& text, int64_t max_length,
                                                  int64_t pad_id) const {
  STIPPLE_CHECK(max_length >= 2,
                "encode_padded: max_length must be at least 2 (room for the "
                "begin and end tokens), got ",
                max_length);
  std::vector<int64_t> ids = encode(text);
  if (static_cast<int64_t>(ids.size()) > max_length) {
    ids.resize(static_cast<size_t>(max_length - 1));  // bos + first max_length - 2 ids
    ids.push_back(eos_id_);
  }
  ids.resize(static_cast<size_t>(max_length), pad_id);
  return ids;
}

Tensor ClipTokenizer::encode_batch(const std::vector<std::string>& texts,
                                   int64_t max_length) const {
  std::vector<int64_t> all;
  all.reserve(texts.size() * static_cast<size_t>(std::max<int64_t>(max_length, 0)));
  for (const std::string& t : texts) {
    const std::vector<int64_t> ids = encode_padded(t, max_length);
    all.insert(all.end(), ids.begin(), ids.end());
  }
  return Tensor::from_vector_i64(all, {static_cast<int64_t>(texts.size()), max_length});
}

}  // namespace stipple::text

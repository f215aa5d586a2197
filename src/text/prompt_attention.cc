#include "text/prompt_attention.h"

#include <cctype>
#include <charconv>
#include <optional>

namespace stipple::text {
namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;

bool is_special(char c) { return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':'; }

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

bool is_word(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

// A weight as Python's float() reads the text [+-]?[.0-9]+: digits with at most one point and at
// least one digit; nothing otherwise.
std::optional<double> parse_weight(std::string_view s) {
  size_t i = 0;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) i = 1;
  size_t digits = 0, points = 0;
  for (size_t k = i; k < s.size(); ++k) (s[k] == '.' ? points : digits) += 1;
  if (digits == 0 || points > 1) return std::nullopt;
  double v = 0;
  const std::string_view body = s.substr(s[0] == '+' ? 1 : 0);  // from_chars takes no '+'
  const auto [end, ec] = std::from_chars(body.data(), body.data() + body.size(), v);
  if (ec != std::errc() || end != body.data() + body.size()) return std::nullopt;
  return v;
}

// Splits plain text at each BREAK word (with the whitespace around it), as re.split(r"\s*\bBREAK\b\s*")
// does: the pieces, with a BREAK chunk between neighbours.
void append_text(std::vector<PromptChunk>& out, std::string_view s) {
  size_t start = 0, from = 0;
  while (true) {
    const size_t at = s.find("BREAK", from);
    if (at == std::string_view::npos) break;
    const size_t after = at + 5;
    const bool left = at == 0 || !is_word(static_cast<unsigned char>(s[at - 1]));
    const bool right = after == s.size() || !is_word(static_cast<unsigned char>(s[after]));
    if (!left || !right) {
      from = at + 1;
      continue;
    }
    size_t lo = at, hi = after;
    while (lo > start && is_space(s[lo - 1])) --lo;
    while (hi < s.size() && is_space(s[hi])) ++hi;
    out.push_back({std::string(s.substr(start, lo - start)), 1.0});
    out.push_back({"BREAK", -1.0});
    start = from = hi;
  }
  out.push_back({std::string(s.substr(start)), 1.0});
}

}  // namespace

std::vector<PromptChunk> parse_prompt_attention(std::string_view text) {
  std::vector<PromptChunk> res;
  std::vector<size_t> round, square;  // where each open bracket's range starts in res
  auto multiply_range = [&](size_t start, double m) {
    for (size_t p = start; p < res.size(); ++p) res[p].weight *= m;
  };
  size_t i = 0;
  while (i < text.size()) {
    const char c = text[i];
    // The alternatives of A1111's re_attention, in its order.
    if (c == '\\') {
      // "\(", "\)", "\[", "\]", "\\": the character; a lone "\" adds nothing (A1111 appends "").
      if (i + 1 < text.size() && (text[i + 1] == '(' || text[i + 1] == ')' || text[i + 1] == '[' ||
                                  text[i + 1] == ']' || text[i + 1] == '\\')) {
        res.push_back({std::string(1, text[i + 1]), 1.0});
        i += 2;
      } else {
        res.push_back({"", 1.0});
        i += 1;
      }
    } else if (c == '(') {
      round.push_back(res.size());
      ++i;
    } else if (c == '[') {
      square.push_back(res.size());
      ++i;
    } else if (c == ':') {
      // ":([+-]?[.\d]+)\)" closes a round bracket with that weight; else ":" is text.
      size_t j = i + 1;
      if (j < text.size() && (text[j] == '+' || text[j] == '-')) ++j;
      const size_t digits_from = j;
      while (j < text.size() && (text[j] == '.' || std::isdigit(static_cast<unsigned char>(text[j]))))
        ++j;
      const bool shaped = j > digits_from && j < text.size() && text[j] == ')';
      const std::optional<double> w =
          shaped ? parse_weight(text.substr(i + 1, j - i - 1)) : std::nullopt;
      if (shaped && w && !round.empty()) {
        multiply_range(round.back(), *w);
        round.pop_back();
        i = j + 1;
      } else if (shaped) {
        append_text(res, text.substr(i, j + 1 - i));  // no "(" open (or no number): text
        i = j + 1;
      } else {
        append_text(res, ":");
        ++i;
      }
    } else if (c == ')' && !round.empty()) {
      multiply_range(round.back(), kRoundMultiplier);
      round.pop_back();
      ++i;
    } else if (c == ']' && !square.empty()) {
      multiply_range(square.back(), kSquareMultiplier);
      square.pop_back();
      ++i;
    } else if (c == ')' || c == ']') {
      append_text(res, text.substr(i, 1));
      ++i;
    } else {
      size_t j = i;
      while (j < text.size() && !is_special(text[j])) ++j;
      append_text(res, text.substr(i, j - i));
      i = j;
    }
  }
  for (size_t pos : round) multiply_range(pos, kRoundMultiplier);
  for (size_t pos : square) multiply_range(pos, kSquareMultiplier);
  if (res.empty()) res.push_back({"", 1.0});
  // Merge runs of identical weights.
  for (size_t k = 0; k + 1 < res.size();) {
    if (res[k].weight == res[k + 1].weight) {
      res[k].text += res[k + 1].text;
      res.erase(res.begin() + static_cast<std::ptrdiff_t>(k) + 1);
    } else {
      ++k;
    }
  }
  return res;
}

}  // namespace stipple::text

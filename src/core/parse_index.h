// A non-negative index written in a name from a file (a layer or block number such as the 3 of
// "transformer_blocks.3.attn1"): decimal digits only, at most `max_digits` of them, so that a
// malformed name gets the caller's error rather than std::stoll's exceptions.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace stipple {

inline std::optional<int64_t> parse_index(std::string_view s, size_t max_digits = 6) {
  if (s.empty() || s.size() > max_digits) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace stipple

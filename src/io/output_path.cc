// Numbered output paths without printf (see output_path.h).
#include "io/output_path.h"

#include "core/error.h"

namespace stipple::io {
namespace {

// Parses the pattern; calls out(text) for literal runs and num(zero_pad, width) for the
// conversion. Returns the number of conversions.
template <typename Lit, typename Num>
int scan(const std::string& p, const std::string& what, Lit&& lit, Num&& num) {
  int conversions = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '%') {
      lit(p[i]);
      continue;
    }
    size_t j = i + 1;
    if (j < p.size() && p[j] == '%') {
      lit('%');
      i = j;
      continue;
    }
    bool zero = false;
    if (j < p.size() && p[j] == '0') zero = true, ++j;
    int width = 0;
    while (j < p.size() && p[j] >= '0' && p[j] <= '9' && width <= 32) width = width * 10 + (p[j++] - '0');
    STIPPLE_CHECK(j < p.size() && p[j] == 'd' && width <= 32, what, " '", p,
                  "': only one integer conversion (%d, %3d, %03d, width up to 32) and %% for a "
                  "literal percent sign are allowed, found '",
                  p.substr(i, std::min<size_t>(j + 1, p.size()) - i), "'");
    ++conversions;
    STIPPLE_CHECK(conversions == 1, what, " '", p,
                  "' holds more than one %d; give exactly one for the image number");
    num(zero, width);
    i = j;
  }
  return conversions;
}

}  // namespace

bool has_number_conversion(const std::string& pattern, const std::string& what) {
  return scan(pattern, what, [](char) {}, [](bool, int) {}) == 1;
}

std::string numbered_path(const std::string& pattern, int64_t index, const std::string& what) {
  std::string out;
  scan(pattern, what, [&](char c) { out += c; },
       [&](bool zero, int width) {
         const std::string sign = index < 0 ? "-" : "";
         std::string digits = std::to_string(index < 0 ? -index : index);
         const size_t used = sign.size() + digits.size(), w = static_cast<size_t>(width);
         const std::string pad(used < w ? w - used : 0, zero ? '0' : ' ');
         out += zero ? sign + pad + digits : pad + sign + digits;  // as printf pads
       });
  return out;
}

}  // namespace stipple::io

// Output file names that users give (`--out 'dir/img_%03d.png'`): a pattern with at most one
// integer conversion, filled in without printf, so no other conversion can read memory that is
// not there (a `%s` in a file name must never reach printf).
//
// A pattern may hold `%d` with an optional zero flag and width up to 32 (`%d`, `%3d`, `%03d`)
// and `%%` for a literal percent sign. Any other `%` sequence, or a second conversion, is an
// error that names the pattern.
#pragma once

#include <cstdint>
#include <string>

namespace stipple::io {

// Whether `pattern` holds the integer conversion; throws stipple::Error naming `what` (e.g.
// "--out") and the pattern when it holds an unsupported `%` sequence or more than one conversion.
bool has_number_conversion(const std::string& pattern, const std::string& what = "--out");
// The pattern with its conversion replaced by `index` (and `%%` by `%`); without a conversion,
// the pattern itself (with `%%` unescaped).
std::string numbered_path(const std::string& pattern, int64_t index,
                          const std::string& what = "--out");

}  // namespace stipple::io

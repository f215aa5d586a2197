// Errors. Two kinds, as in PyTorch and tinygrad:
//   STIPPLE_CHECK(cond, parts...)  bad input from a caller (a file, a shape, a flag): throws
//                                  stipple::Error, which the CLI and server turn into a message.
//   STIPPLE_ASSERT(cond)           a broken internal invariant: prints where and aborts.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "stipple/error.h"  // stipple::Error, ErrorKind (public)

namespace stipple {

// Concatenates any streamable values: str_cat("shape ", 3, "x", 4) -> "shape 3x4".
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void assert_fail(const char* cond, const char* file, int line);

}  // namespace stipple

#define STIPPLE_CHECK(cond, ...)                                  \
  do {                                                            \
    if (!(cond)) throw ::stipple::Error(::stipple::str_cat(__VA_ARGS__)); \
  } while (0)

// STIPPLE_CHECK with an ErrorKind other than kInvalidArgument.
#define STIPPLE_CHECK_KIND(cond, kind, ...)                                          \
  do {                                                                               \
    if (!(cond)) throw ::stipple::Error(::stipple::str_cat(__VA_ARGS__), ::stipple::ErrorKind::kind); \
  } while (0)

#define STIPPLE_ASSERT(cond)                                              \
  do {                                                                    \
    if (!(cond)) ::stipple::assert_fail(#cond, __FILE__, __LINE__);       \
  } while (0)

#include "core/error.h"

#include <cstdio>
#include <cstdlib>

namespace stipple {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kNotFound: return "not found";
    case ErrorKind::kUnsupported: return "unsupported";
    case ErrorKind::kResourceExhausted: return "resource exhausted";
    case ErrorKind::kCancelled: return "cancelled";
    case ErrorKind::kIo: return "i/o error";
  }
  return "error";
}

void assert_fail(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "stipple: internal error: %s (%s:%d)\n", cond, file, line);
  std::abort();
}

}  // namespace stipple

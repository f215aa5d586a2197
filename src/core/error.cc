#include "core/error.h"

#include <cstdio>
#include <cstdlib>

namespace stipple {

void assert_fail(const char* cond, const char* file, int line) {
  std::fprintf(stderr, "stipple: internal error: %s (%s:%d)\n", cond, file, line);
  std::abort();
}

}  // namespace stipple

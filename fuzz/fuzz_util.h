// Shared by the libFuzzer targets: running one input through a parser where a stipple::Error
// (bad input, refused with a message) is the expected outcome and anything else is a finding.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace stipple::fuzz {

// Aborts (a finding libFuzzer records) when `cond` is false: a parser returned something that
// breaks what its callers rely on.
#define STIPPLE_FUZZ_EXPECT(cond)                                                   \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "fuzz invariant failed: %s (%s:%d)\n", #cond, __FILE__, \
                   __LINE__);                                                       \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// Runs `f`; a stipple::Error is a clean refusal. Other exceptions propagate, and libFuzzer
// reports the uncaught exception (std::terminate) as a crash.
template <typename F>
void run_catching_errors(F&& f) {
  try {
    f();
  } catch (const ::stipple::Error&) {
  }
}

}  // namespace stipple::fuzz

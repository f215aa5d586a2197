#include "support/numerics.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"

namespace stipple::testing {

::testing::AssertionResult tensors_close(const Tensor& a, const Tensor& ref, double atol,
                                         double rtol) {
  if (a.shape() != ref.shape()) {
    return ::testing::AssertionFailure()
           << "shape mismatch: " << a.describe() << " vs reference " << ref.describe();
  }
  const std::vector<float> x = a.to_vector();
  const std::vector<float> r = ref.to_vector();
  double max_abs = 0, max_ref = 0, worst_excess = 0;
  size_t worst = 0;
  bool ok = true;
  for (size_t i = 0; i < x.size(); ++i) {
    const double d = std::fabs(static_cast<double>(x[i]) - r[i]);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(r[i])));
    if (std::isnan(x[i]) != std::isnan(r[i])) {
      ok = false;
      worst = i;
      worst_excess = INFINITY;
      continue;
    }
    if (std::isnan(d)) continue;
    max_abs = std::max(max_abs, d);
    const double excess = d - (atol + rtol * std::fabs(static_cast<double>(r[i])));
    if (excess > 0) {
      ok = false;
      if (excess > worst_excess) {
        worst_excess = excess;
        worst = i;
      }
    }
  }
  const double rel = max_abs / std::max(1.0, max_ref);
  std::ostringstream os;
  os << a.describe() << ": max_abs_err=" << max_abs << " rel_err=" << rel << " (atol=" << atol
     << ", rtol=" << rtol << ")";
  if (ok) return ::testing::AssertionSuccess() << os.str();
  os << "; worst at flat index " << worst << ": got " << x[worst] << ", want " << r[worst];
  return ::testing::AssertionFailure() << os.str();
}

Tensor random_tensor(const Shape& shape, uint64_t seed, float lo, float hi) {
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(shape_numel(shape));
  for (float& f : v) f = dist(gen);
  return Tensor::from_vector(v, shape);
}

static double weighted_loss(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                            const std::vector<Tensor>& inputs, const std::vector<float>& w) {
  autograd::NoGradGuard ng;
  const std::vector<float> y = fn(inputs).to_vector();
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * w[i];
  return s;
}

::testing::AssertionResult gradcheck(const std::string& name,
                                     const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                                     std::vector<Tensor> inputs, GradcheckOptions opt) {
  Tensor y = fn(inputs);
  const Tensor w = random_tensor(y.shape(), 1234, -1.0f, 1.0f);
  const std::vector<float> wv = w.to_vector();
  for (Tensor& t : inputs)
    if (t.requires_grad()) t.zero_grad();
  Tensor loss = ops::sum(ops::mul(y, w));
  loss.backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& x = inputs[k];
    if (!x.requires_grad()) continue;
    if (!x.grad().defined()) {
      return ::testing::AssertionFailure() << name << ": input " << k << " got no gradient";
    }
    const std::vector<float> g = x.grad().to_vector();
    const int64_t n = x.numel();
    const int64_t probes = std::min<int64_t>(n, opt.max_probes);
    float* data = x.data<float>();
    for (int64_t p = 0; p < probes; ++p) {
      const int64_t i = probes == n ? p : (p * n) / probes;
      const float orig = data[i];
      data[i] = static_cast<float>(orig + opt.eps);
      const double lp = weighted_loss(fn, inputs, wv);
      data[i] = static_cast<float>(orig - opt.eps);
      const double lm = weighted_loss(fn, inputs, wv);
      data[i] = orig;
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double err = std::fabs(numeric - g[i]);
      if (err > opt.atol + opt.rtol * std::fabs(numeric)) {
        return ::testing::AssertionFailure()
               << name << ": input " << k << " " << x.describe() << " element " << i
               << ": autograd " << g[i] << " vs finite difference " << numeric
               << " (abs err " << err << ")";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

std::string test_data_path(const std::string& relative) {
  return (std::filesystem::path(STIPPLE_TEST_DATA_DIR_FOR_SUPPORT) / relative).string();
}

::testing::AssertionResult close_relative(const Tensor& a, const Tensor& ref, double rel) {
  float peak = 1.0f;
  for (float v : ref.contiguous().to(DType::kF32).to_vector()) peak = std::max(peak, std::abs(v));
  return tensors_close(a.contiguous().to(DType::kF32), ref.contiguous().to(DType::kF32),
                       rel * peak);
}

std::string error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::function<void()>& fn, ErrorKind kind, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

std::string shared_path(const std::string& relative) {
  const std::filesystem::path p = std::filesystem::path(STIPPLE_SHARED_DIR_FOR_SUPPORT) / relative;
  return std::filesystem::exists(p) ? p.string() : std::string();
}

}  // namespace stipple::testing

// Parameter initialisers (see init.h).
#include "nn/init.h"

#include <cmath>
#include <vector>

namespace stipple::nn::init {

void fill_(const Tensor& t, float v) {
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = v;
  t.storage()->bump_version();
}

void xavier_uniform_(const Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen) {
  const double a = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
  const std::vector<float> u = gen.rand(t.shape()).to_vector();
  const float lo = static_cast<float>(-a), range = static_cast<float>(2 * a);
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = u[i] * range + lo;
  t.storage()->bump_version();
}

void normal_(const Tensor& t, float std, Generator& gen) {
  const std::vector<float> n = gen.randn(t.shape()).to_vector();
  float* d = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = n[i] * std;
  t.storage()->bump_version();
}

void basic_init(const Linear& l, Generator& gen, int64_t fan_out) {
  xavier_uniform_(l.weight(), l.in_features(), fan_out > 0 ? fan_out : l.out_features(), gen);
  if (l.bias().defined()) fill_(l.bias(), 0.0f);
}

void zero_linear(const Linear& l) {
  fill_(l.weight(), 0.0f);
  if (l.bias().defined()) fill_(l.bias(), 0.0f);
}

}  // namespace stipple::nn::init

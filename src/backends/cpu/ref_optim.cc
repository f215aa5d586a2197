// Reference optimiser kernel: AdamW (Loshchilov & Hutter, "Decoupled Weight Decay
// Regularization", Alg. 2), one plain loop, written in the same order as torch.optim.AdamW's
// single-tensor path:
//   p <- p (1 - lr wd)
//   m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g^2
//   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The bias corrections are computed once in double; the per-element math is f32.
#include <cmath>

#include "backends/cpu/fill.h"

namespace stipple::cpu {
namespace {

void ref_adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v,
                    const AdamWParams& hp) {
  const int64_t n = param.numel();
  float* p = param.data<float>();
  const float* g = grad.data<float>();
  float* pm = m.data<float>();
  float* pv = v.data<float>();
  const double t = static_cast<double>(hp.step);
  const float decay = static_cast<float>(1.0 - static_cast<double>(hp.lr) * hp.weight_decay);
  const float step_size = static_cast<float>(hp.lr / (1.0 - std::pow(double{hp.beta1}, t)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{hp.beta2}, t)));
  const float b1 = hp.beta1, b2 = hp.beta2, eps = hp.eps;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    pm[i] = b1 * pm[i] + (1.0f - b1) * gi;
    pv[i] = b2 * pv[i] + (1.0f - b2) * gi * gi;
    const float denom = std::sqrt(pv[i]) / bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (pm[i] / denom);
  }
}

}  // namespace

void fill_reference_optim(KernelTable& t) { t.adamw_step = ref_adamw_step; }

}  // namespace stipple::cpu

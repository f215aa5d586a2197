#include "schedulers/guidance.h"

#include <numeric>

#include "autograd/grad_mode.h"
#include "ops/ops.h"

namespace stipple::guidance {

Tensor classifier_free(const Tensor& uncond, const Tensor& cond, float scale) {
  STIPPLE_CHECK(uncond.shape() == cond.shape(), "classifier-free guidance: unconditional ",
                uncond.describe(), " and conditional ", cond.describe(), " outputs differ");
  return ops::add(uncond, ops::affine(ops::sub(cond, uncond), scale, 0.0f));
}

Tensor classifier_free_batched(const Tensor& out, float scale, CfgOrder order, float rescale) {
  STIPPLE_CHECK(out.dim() >= 1 && out.size(0) % 2 == 0,
                "classifier-free guidance: a batched output needs an even batch, got ",
                out.describe());
  const std::vector<Tensor> halves = ops::chunk(out, 2, 0);
  const Tensor& uncond = order == CfgOrder::kUncondFirst ? halves[0] : halves[1];
  const Tensor& cond = order == CfgOrder::kUncondFirst ? halves[1] : halves[0];
  Tensor guided = classifier_free(uncond, cond, scale);
  return rescale > 0.0f ? rescale_guidance(guided, cond, rescale) : guided;
}

namespace {

// Unbiased std over every dim but the first, kept as [B, 1, ..., 1].
Tensor per_sample_std(const Tensor& x) {
  std::vector<int64_t> dims(x.dim() - 1);
  std::iota(dims.begin(), dims.end(), 1);
  const int64_t n = x.numel() / x.size(0);
  STIPPLE_CHECK(n > 1, "guidance rescale: needs more than one value per sample, got ",
                x.describe());
  const Tensor centered = ops::sub(x, ops::mean(x, dims, true));
  return ops::sqrt(ops::affine(ops::sum(ops::square(centered), dims, true),
                               1.0f / static_cast<float>(n - 1), 0.0f));
}

}  // namespace

Tensor rescale_guidance(const Tensor& guided, const Tensor& cond, float phi) {
  STIPPLE_CHECK(phi >= 0.0f && phi <= 1.0f, "guidance rescale ", phi, " is outside [0, 1]");
  STIPPLE_CHECK(guided.shape() == cond.shape() && guided.dim() >= 2,
                "guidance rescale: guided ", guided.describe(), " and conditional ",
                cond.describe(), " must share a batched shape");
  const Tensor rescaled = ops::mul(guided, ops::div(per_sample_std(cond), per_sample_std(guided)));
  return ops::add(ops::affine(rescaled, phi, 0.0f), ops::affine(guided, 1.0f - phi, 0.0f));
}

Tensor classifier_gradient(const LogProbFn& log_prob, const Tensor& x_t) {
  const bool was_enabled = autograd::grad_enabled();
  autograd::set_grad_enabled(true);
  Tensor x = x_t.to(DType::kF32).contiguous().detach().clone();
  x.set_requires_grad(true);
  try {
    const Tensor lp = log_prob(x);
    STIPPLE_CHECK(lp.defined() && lp.requires_grad(),
                  "classifier guidance: the classifier's log-probability does not depend on x_t");
    ops::sum(lp).backward();
  } catch (...) {
    autograd::set_grad_enabled(was_enabled);
    throw;
  }
  autograd::set_grad_enabled(was_enabled);
  return x.grad();
}

Tensor classifier_guided_eps(const Tensor& eps, const Tensor& x_t,
                             const Tensor& sqrt_one_minus_acp, float scale,
                             const LogProbFn& log_prob) {
  STIPPLE_CHECK(eps.shape() == x_t.shape(), "classifier guidance: eps ", eps.describe(),
                " and x_t ", x_t.describe(), " differ in shape");
  const Tensor grad = classifier_gradient(log_prob, x_t);
  return ops::sub(eps, ops::affine(ops::mul(grad, sqrt_one_minus_acp), scale, 0.0f));
}

}  // namespace stipple::guidance

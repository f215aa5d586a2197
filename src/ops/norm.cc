// Normalisation ops: group_norm, layer_norm, softmax, log_softmax, with their gradient rules.
// Each op checks its inputs, reshapes to the kernel's 2-D/3-D view, runs the active kernel and
// records the rule. Leaves out the kernels themselves (src/backends/cpu/{ref,fast}_norm.cc).
#include <cmath>

#include "ops/op_util.h"

namespace stipple::ops {
namespace {

void check_affine(const Tensor& t, int64_t n, const char* op, const char* arg) {
  if (!t.defined()) return;
  check_float(t, op, arg);
  STIPPLE_CHECK(t.dim() == 1 && t.size(0) == n, op, ": ", arg, " must have shape [", n, "], got ",
                t.describe());
}

Tensor f32_or_undefined(const Tensor& t) { return t.defined() ? as_f32_contiguous(t) : t; }

}  // namespace

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps) {
  check_float(x, "group_norm", "x");
  STIPPLE_CHECK(x.dim() >= 2, "group_norm: x must be [N, C, ...], got ", x.describe());
  const int64_t n = x.size(0), c = x.size(1);
  STIPPLE_CHECK(groups > 0 && c % groups == 0, "group_norm: ", c,
                " channels are not divisible into ", groups, " groups");
  STIPPLE_CHECK(eps >= 0.0f, "group_norm: eps must be >= 0, got ", eps);
  check_affine(weight, c, "group_norm", "weight");
  check_affine(bias, c, "group_norm", "bias");
  const Tensor w = f32_or_undefined(weight), b = f32_or_undefined(bias);
  const KernelTable& kt = kernels_for(same_device("group_norm", x, weight, bias));

  // Inference on a channel-blocked activation: the kernel keeps the layout (no reorder).
  if (x.is_blocked() && x.dtype() == DType::kF32 && !autograd::needs_record({&x, &weight, &bias})) {
    return kt.group_norm(x, groups, w, b, eps).out;
  }

  const Tensor xc = as_f32_contiguous(x.detach());  // detached: the rule below stands in for it
  const Tensor x3 = reshape(xc, {n, c, n * c > 0 ? x.numel() / (n * c) : 0});  // [N, C, S]
  GroupNormResult r = kt.group_norm(x3, groups, w, b, eps);
  Tensor out = reshape(r.out, x.shape());
  const Shape x_shape = x.shape();
  const Tensor mean = r.mean, rstd = r.rstd;
  autograd::record(
      "group_norm", {x, weight, bias}, out, [=](const Tensor& g, const std::vector<bool>& needs) {
        std::vector<Tensor> grads(3);
        const Tensor g3 = reshape(as_f32_contiguous(g), x3.shape());
        Tensor gw, gb;
        Tensor gx = kernels_for(x3).group_norm_backward(
            x3, g3, groups, w, mean, rstd, needs[1] ? &gw : nullptr, needs[2] ? &gb : nullptr);
        if (needs[0]) grads[0] = reshape(gx, x_shape);
        if (needs[1]) grads[1] = gw;
        if (needs[2]) grads[2] = gb;
        return grads;
      });
  return out;
}

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  check_float(x, "layer_norm", "x");
  STIPPLE_CHECK(x.dim() >= 1, "layer_norm: x must have at least one dim, got ", x.describe());
  STIPPLE_CHECK(eps >= 0.0f, "layer_norm: eps must be >= 0, got ", eps);
  const int64_t d = x.size(-1);
  STIPPLE_CHECK(d > 0, "layer_norm: the normalised dim is empty in ", x.describe());
  check_affine(weight, d, "layer_norm", "weight");
  check_affine(bias, d, "layer_norm", "bias");
  const Tensor w = f32_or_undefined(weight), b = f32_or_undefined(bias);
  const Tensor x2 = reshape(as_f32_contiguous(x.detach()), {x.numel() / d, d});  // [rows, D]
  LayerNormResult r = kernels_for(same_device("layer_norm", x2, w, b)).layer_norm(x2, w, b, eps);
  Tensor out = reshape(r.out, x.shape());
  const Shape x_shape = x.shape();
  const Tensor mean = r.mean, rstd = r.rstd;
  autograd::record("layer_norm", {x, weight, bias}, out,
                   [=](const Tensor& g, const std::vector<bool>& needs) {
                     std::vector<Tensor> grads(3);
                     const Tensor g2 = reshape(as_f32_contiguous(g), x2.shape());
                     Tensor gw, gb;
                     Tensor gx = kernels_for(x2).layer_norm_backward(
                         x2, g2, w, mean, rstd, needs[1] ? &gw : nullptr, needs[2] ? &gb : nullptr);
                     if (needs[0]) grads[0] = reshape(gx, x_shape);
                     if (needs[1]) grads[1] = gw;
                     if (needs[2]) grads[2] = gb;
                     return grads;
                   });
  return out;
}

Tensor softmax(const Tensor& x, int64_t dim) {
  check_float(x, "softmax", "x");
  STIPPLE_CHECK(x.dim() >= 1, "softmax: x must have at least one dim, got ", x.describe());
  const int64_t dd = x.normalize_dim(dim);
  const int64_t last = x.dim() - 1;
  // The kernel works over the last dim of a contiguous tensor: move `dim` there and back.
  const Tensor xd = x.detach();
  const Tensor xt = as_f32_contiguous(dd == last ? xd : transpose(xd, dd, last));  // [..., D]
  const Tensor yt = kernels_for(xt).softmax(xt);
  Tensor out = dd == last ? yt : contiguous(transpose(yt, dd, last));
  const Tensor y_saved = yt.detach();  // not `out` itself: the node must not own its output
  autograd::record("softmax", {x}, out, [=](const Tensor& g, const std::vector<bool>&) {
    const Tensor gt = as_f32_contiguous(dd == last ? g : transpose(g, dd, last));
    const Tensor gx = kernels_for(gt).softmax_backward(y_saved, gt);
    return std::vector<Tensor>{dd == last ? gx : contiguous(transpose(gx, dd, last))};
  });
  return out;
}

// log_softmax(x) = z - log(sum(exp(z))), z = x - max(x): stable for large logits, and -inf rows
// stay finite elsewhere. Gradient: g - softmax(x) * sum(g) with softmax(x) = exp(out).
Tensor log_softmax(const Tensor& x, int64_t dim) {
  check_float(x, "log_softmax", "x");
  STIPPLE_CHECK(x.dim() >= 1, "log_softmax: x must have at least one dim, got ", x.describe());
  const int64_t dd = x.normalize_dim(dim);
  Tensor out;
  {
    autograd::NoGradGuard no_grad;
    const Tensor xf = as_f32_contiguous(x);
    const Tensor z = sub(xf, max(xf, {dd}, true));  // [..., D, ...]
    out = sub(z, log(sum(exp(z), {dd}, true)));
  }
  const Tensor y_saved = out.detach();  // not `out` itself: the node must not own its output
  autograd::record("log_softmax", {x}, out, [=](const Tensor& g, const std::vector<bool>&) {
    const Tensor gs = sum(g, {dd}, true);
    return std::vector<Tensor>{sub(g, mul(exp(y_saved), gs))};
  });
  return out;
}

}  // namespace stipple::ops

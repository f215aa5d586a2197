// ops::scaled_dot_product_attention and its gradient rule. Checks shapes, broadcasts the additive
// mask to [B, H, Lq, Lk] as a view (ops::expand; no copy), and runs the active kernel table's
// attention (tiled with online softmax in the fast table, so the Lq x Lk matrix is never built).
// Leaves out dropout on the attention weights and the kernels (src/backends/cpu/*_attention.cc).
#include <cmath>
#include <limits>

#include "ops/op_util.h"

namespace stipple::ops {
namespace {

// x as f32 with unit stride over its last dim (x itself when it already is), else a contiguous
// copy.
Tensor unit_inner(const Tensor& x) {
  if (x.dtype() == DType::kF32 && !x.is_blocked() && (x.size(-1) <= 1 || x.stride(-1) == 1))
    return x;
  return as_f32_contiguous(x);
}

// The mask's gradient, dL/dS summed down to the mask's own shape. Rare (masks are almost never
// trained), so it is composed from ops and does build the full [B, H, Lq, Lk] matrix.
Tensor mask_gradient(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask_e,
                     const Shape& mask_shape, float scale, bool causal, const Tensor& out,
                     const Tensor& lse, const Tensor& g) {
  Tensor s = add(mul(matmul(q, transpose(k, 2, 3)), Tensor::scalar(scale)), mask_e);
  if (causal) {
    const int64_t lq = q.size(2), lk = k.size(2);
    std::vector<float> c(lq * lk, 0.0f);
    for (int64_t i = 0; i < lq; ++i)
      for (int64_t j = i + 1; j < lk; ++j) c[i * lk + j] = -std::numeric_limits<float>::infinity();
    s = add(s, Tensor::from_vector(c, {lq, lk}));
  }
  const Tensor p = exp(sub(s, unsqueeze(lse, 3)));  // [B, H, Lq, Lk]
  const Tensor dp = matmul(g, transpose(v, 2, 3));  // [B, H, Lq, Lk]
  const Tensor di = sum(mul(g, out), {3}, true);    // [B, H, Lq, 1]
  return sum_to(mul(p, sub(dp, di)), mask_shape);
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& mask, float scale, bool causal) {
  const char* op = "scaled_dot_product_attention";
  check_float(q, op, "q");
  check_float(k, op, "k");
  check_float(v, op, "v");
  STIPPLE_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op,
                ": q, k, v must be [B, H, L, D], got q ", q.describe(), ", k ", k.describe(),
                ", v ", v.describe());
  const int64_t nb = q.size(0), nh = q.size(1), lq = q.size(2), d = q.size(3);
  const int64_t lk = k.size(2);
  STIPPLE_CHECK(k.size(0) == nb && k.size(1) == nh && v.size(0) == nb && v.size(1) == nh, op,
                ": batch and head dims differ: q ", q.describe(), ", k ", k.describe(), ", v ",
                v.describe());
  STIPPLE_CHECK(k.size(3) == d, op, ": q and k head dims differ: q ", q.describe(), ", k ",
                k.describe());
  STIPPLE_CHECK(v.size(2) == lk, op, ": k and v sequence lengths differ: k ", k.describe(), ", v ",
                v.describe());
  STIPPLE_CHECK(d > 0 && std::isfinite(scale), op, ": empty head dim or non-finite scale");
  const float sc = scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(d));
  same_device(op, q, k, v, mask);

  const Shape score_shape{nb, nh, lq, lk};
  Tensor mask_e;  // [B, H, Lq, Lk] view, stride 0 on broadcast dims
  if (mask.defined()) {
    check_float(mask, op, "mask");
    STIPPLE_CHECK(mask.dim() <= 4 && broadcast_shapes(mask.shape(), score_shape, op) == score_shape,
                  op, ": mask ", mask.describe(), " does not broadcast to the scores ",
                  shape_str(score_shape));
    autograd::NoGradGuard no_grad;
    const bool usable = mask.dtype() == DType::kF32 && !mask.is_blocked();
    const Tensor m = usable ? mask : contiguous(cast(mask, DType::kF32));
    mask_e = expand(m.detach(), score_shape);
  }

  // Detached: the rule below stands in for the kernel's graph. The kernels read any strides with
  // a unit stride over D.
  const Tensor qc = unit_inner(q.detach()), kc = unit_inner(k.detach()), vc = unit_inner(v.detach());
  AttentionResult r = kernels_for(qc).attention(qc, kc, vc, mask_e, sc, causal);
  Tensor out = r.out;  // [B, H, Lq, Dv]
  const Tensor out_saved = r.out.detach(), lse = r.lse;
  const Shape mask_shape = mask.defined() ? mask.shape() : Shape{};
  autograd::record("scaled_dot_product_attention", {q, k, v, mask}, out,
                   [=](const Tensor& g, const std::vector<bool>& needs) {
                     std::vector<Tensor> grads(4);
                     const Tensor gc = as_f32_contiguous(g);
                     if (needs[0] || needs[1] || needs[2]) {
                       // The backward kernels take contiguous tensors (the forward's may be
                       // strided views).
                       Tensor gq, gk, gv;
                       kernels_for(qc).attention_backward(
                           qc.contiguous(), kc.contiguous(), vc.contiguous(), mask_e, sc, causal,
                           out_saved.contiguous(), lse, gc, &gq, &gk, &gv);
                       if (needs[0]) grads[0] = gq;
                       if (needs[1]) grads[1] = gk;
                       if (needs[2]) grads[2] = gv;
                     }
                     if (needs[3]) {
                       grads[3] = mask_gradient(qc, kc, vc, mask_e, mask_shape, sc, causal,
                                                out_saved, lse, gc);
                     }
                     return grads;
                   });
  return out;
}

}  // namespace stipple::ops

// Losses, composed from differentiable ops (so their gradients come for free).
#include "ops/op_util.h"

namespace stipple::ops {

Tensor mse_loss(const Tensor& pred, const Tensor& target) {
  STIPPLE_CHECK(pred.shape() == target.shape(), "mse_loss: prediction ", pred.describe(),
                " and target ", target.describe(), " differ in shape");
  return mean(square(sub(pred, target)));
}

Tensor cross_entropy(const Tensor& logits, const Tensor& labels) {
  check_float(logits, "cross_entropy", "logits");
  STIPPLE_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, K], got ", logits.describe());
  STIPPLE_CHECK(labels.defined() && labels.dtype() == DType::kI64 && labels.dim() == 1 &&
                    labels.size(0) == logits.size(0),
                "cross_entropy: labels must be i64 [", logits.size(0), "], got ",
                labels.describe());
  const int64_t n = logits.size(0), k = logits.size(1);
  Tensor one_hot = Tensor::zeros({n, k});
  const std::vector<int64_t> lab = labels.to_vector_i64();
  float* p = one_hot.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(lab[i] >= 0 && lab[i] < k, "cross_entropy: label ", lab[i], " outside [0, ", k,
                  ")");
    p[i * k + lab[i]] = 1.0f;
  }
  return affine(sum(mul(log_softmax(logits, -1), one_hot)), -1.0f / static_cast<float>(n), 0.0f);
}

}  // namespace stipple::ops

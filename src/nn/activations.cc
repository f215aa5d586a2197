// Activation functions by their diffusers config names.
#include "nn/activations.h"

#include "core/error.h"
#include "ops/ops.h"

namespace stipple::nn {

bool is_known_activation(const std::string& name) {
  return name == "silu" || name == "swish" || name == "gelu" || name == "relu" ||
         name == "quick_gelu" || name == "mish";
}

void check_activation(const std::string& name, const std::string& where) {
  STIPPLE_CHECK(is_known_activation(name), where, ": unknown activation '", name,
                "' (known: silu, swish, gelu, relu, quick_gelu, mish)");
}

Tensor apply_activation(const std::string& name, const Tensor& x) {
  if (name == "silu" || name == "swish") return ops::silu(x);
  if (name == "gelu") return ops::gelu(x);
  if (name == "relu") return ops::relu(x);
  if (name == "quick_gelu") return ops::quick_gelu(x);
  if (name == "mish") {
    // mish(x) = x * tanh(softplus(x)); softplus(x) = log(1 + exp(x)), written stably as
    // relu(x) + log(1 + exp(-|x|)).
    const Tensor softplus =
        ops::add(ops::relu(x), ops::log(ops::exp(ops::neg(ops::abs(x))) + 1.0f));
    return ops::mul(x, ops::tanh(softplus));
  }
  check_activation(name, "apply_activation");
  return x;
}

}  // namespace stipple::nn

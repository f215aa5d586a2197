// Activation functions by the names diffusers' configs use (`act_fn`, `timestep_post_act`,
// `resnet_act_fn`, ...), as diffusers.models.activations.get_activation maps them.
#pragma once

#include <string>

#include "core/tensor.h"

namespace stipple::nn {

// True for "silu", "swish", "gelu", "relu", "mish"... that apply_activation knows.
bool is_known_activation(const std::string& name);
// Throws a stipple::Error naming `where` and the known names when `name` is unknown.
void check_activation(const std::string& name, const std::string& where);
// silu/swish: x*sigmoid(x); gelu: erf GELU; relu; quick_gelu: x*sigmoid(1.702x) (CLIP).
Tensor apply_activation(const std::string& name, const Tensor& x);

}  // namespace stipple::nn

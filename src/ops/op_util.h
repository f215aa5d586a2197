// Small helpers shared by the op implementations in src/ops.
#pragma once

#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/tensor.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace stipple::ops {

// x as plain contiguous f32: no copy when it already is. The kernels' input contract.
Tensor as_f32_contiguous(const Tensor& x);

// Checks that x is defined and floating; `op` names the caller in the message.
void check_float(const Tensor& x, const char* op, const char* arg);

// The broadcast shape of a and b (PyTorch rules) or a clear error naming `op`.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace stipple::ops

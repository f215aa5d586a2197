// Parameter initialisers, as torch.nn.init: in place on f32 leaves, outside autograd, each
// bumping the storage's version (see core/storage.h). Models' reset_parameters use them.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"
#include "nn/layers.h"

namespace stipple::nn::init {

void fill_(const Tensor& t, float v);
// U(-a, a), a = sqrt(6 / (fan_in + fan_out)).
void xavier_uniform_(const Tensor& t, int64_t fan_in, int64_t fan_out, Generator& gen);
// N(0, std^2).
void normal_(const Tensor& t, float std, Generator& gen);
// DiT's _basic_init for one Linear: xavier_uniform weight (fan_out defaults to out_features),
// zero bias.
void basic_init(const Linear& l, Generator& gen, int64_t fan_out = 0);
// Zero weight and bias (adaLN-Zero, zero-initialised output layers).
void zero_linear(const Linear& l);

}  // namespace stipple::nn::init

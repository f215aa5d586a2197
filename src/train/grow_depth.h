// Growing a trained transformer's depth for a warm start (stipple train --init-from with a
// larger --depth): the weights of a shallower DiT or PixArt model rearranged into a deeper one
// that computes the same function, so training goes on from it instead of from scratch.
#pragma once

#include <map>
#include <string>

#include "core/tensor.h"

namespace stipple::train {

// A transformer's weights (transformer_blocks.<i>.*: DiT's or PixArt's) grown to `depth` blocks:
// the old blocks keep their order, block i moving to i * depth / from, and every new block is a
// copy of the old block before it that starts closed, so the grown model computes what the old
// one did: a DiT block's adaLN-Zero gates are zeroed (training opens them), a PixArt block's
// residual branches end in zeroed layers (attn1.to_out.0, attn2.to_out.0, ff.net.2). Weights
// holding `depth` blocks or more come back unchanged (the strict load then names a mismatch).
std::map<std::string, Tensor> grow_transformer_depth(std::map<std::string, Tensor> weights,
                                                     int depth);

}  // namespace stipple::train

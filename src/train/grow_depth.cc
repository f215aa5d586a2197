#include "train/grow_depth.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/parse_index.h"

namespace stipple::train {

std::map<std::string, Tensor> grow_transformer_depth(std::map<std::string, Tensor> weights,
                                                     int depth) {
  const std::string prefix = "transformer_blocks.";
  int from = 0;  // the blocks the weights hold: transformer_blocks.<i>.*
  for (const auto& [name, t] : weights) {
    if (name.rfind(prefix, 0) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    if (dot == std::string::npos) continue;
    const std::optional<int64_t> index =
        parse_index(std::string_view(name).substr(prefix.size(), dot - prefix.size()));
    STIPPLE_CHECK(index.has_value(), "growing the transformer's depth: ", name, " is not ",
                  prefix, "<block number>.<name>");
    from = std::max(from, 1 + static_cast<int>(*index));
  }
  if (from == 0 || depth <= from) return weights;
  // Old block i moves to floor(i * depth / from): the old blocks keep their order, spread evenly,
  // and each gap is filled by copies of the old block before it.
  std::vector<int> source(static_cast<size_t>(depth), -1);  // new index -> old index it copies
  std::vector<bool> copied(static_cast<size_t>(depth), false);
  for (int i = 0; i < from; ++i) source[static_cast<size_t>(i * depth / from)] = i;
  for (int k = 1; k < depth; ++k)
    if (source[static_cast<size_t>(k)] < 0) {
      source[static_cast<size_t>(k)] = source[static_cast<size_t>(k - 1)];
      copied[static_cast<size_t>(k)] = true;
    }
  // What a copy zeroes so that it adds nothing: a DiT block's adaLN-Zero gates, the attention's
  // and the MLP's chunks (2 and 5) of its modulation [6D(, D)] = shift, scale, gate, shift,
  // scale, gate; a block without them (PixArt's, modulated by the shared timestep embedding plus
  // its own table) the last layer of every residual branch.
  const auto zero_rows = [](const Tensor& t, std::vector<int64_t> chunks, int64_t of) {
    Tensor w = t.to(DType::kF32).contiguous().clone();
    const int64_t rows = w.size(0) / of, row = w.numel() / w.size(0);
    float* p = w.data<float>();
    for (int64_t c : chunks) std::fill(p + c * rows * row, p + (c + 1) * rows * row, 0.f);
    return w;
  };
  std::map<std::string, Tensor> grown;
  for (auto& [name, t] : weights)
    if (name.rfind(prefix, 0) != 0) grown.emplace(name, t);
  for (int k = 0; k < depth; ++k) {
    const std::string src = str_cat(prefix, source[static_cast<size_t>(k)], ".");
    const std::string dst = str_cat(prefix, k, ".");
    const bool ada_zero = weights.count(src + "norm1.linear.weight") > 0;
    bool closed = false;
    for (const auto& [name, t] : weights) {
      if (name.rfind(src, 0) != 0) continue;
      const std::string rest = name.substr(src.size());
      Tensor w = t;
      if (copied[static_cast<size_t>(k)]) {
        if (ada_zero && (rest == "norm1.linear.weight" || rest == "norm1.linear.bias")) {
          STIPPLE_CHECK(t.size(0) % 6 == 0, "growing the transformer's depth: ", name, " is ",
                        t.describe(), ", not adaLN-Zero's six chunks");
          w = zero_rows(t, {2, 5}, 6);
          closed = true;
        } else if (!ada_zero && (rest.rfind("attn1.to_out.0.", 0) == 0 ||
                                 rest.rfind("attn2.to_out.0.", 0) == 0 ||
                                 rest.rfind("ff.net.2.", 0) == 0)) {
          w = zero_rows(t, {0}, 1);
          closed = true;
        }
      }
      grown.emplace(dst + rest, w);
    }
    STIPPLE_CHECK(!copied[static_cast<size_t>(k)] || closed, "growing the transformer's depth: "
                  "block ", source[static_cast<size_t>(k)], " has neither adaLN-Zero gates (",
                  src, "norm1.linear) nor residual branches (attn1.to_out.0, ff.net.2) that a "
                  "copy could start closed");
  }
  return grown;
}

}  // namespace stipple::train

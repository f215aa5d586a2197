// Basic layers, as their torch.nn namesakes: Linear, Conv2d, GroupNorm, LayerNorm, Embedding.
// Parameter names and shapes are PyTorch's, so checkpoints load by name (`weight`, `bias`).
//
// Initialisation. The constructors without a Generator allocate zeros: the usual path is to load
// a checkpoint over them, and drawing random values for a large model would be wasted time. The
// constructors taking a Generator (and reset_parameters) draw PyTorch's defaults, in PyTorch's
// order (weight, then bias):
//   Linear, Conv2d  weight ~ U(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform_ with a = sqrt(5)),
//                   bias ~ U(-b, b) with the same b; fan_in = in (Linear), in * k * k (Conv2d)
//   GroupNorm, LayerNorm  weight = 1, bias = 0 (no draws)
//   Embedding       weight ~ N(0, 1)
// The uniform draws are u * (hi - lo) + lo in f32 over Generator::rand (torch.rand's values), the
// arithmetic of torch 1.13's CPU uniform_, and the bounds are computed in double as torch.nn.init
// does, so with the same seed the weights should equal torch's (not checked against torch here:
// the tests check the bounds, the order of draws and the statistics).
//
// Leaves out: grouped/dilated convolutions, non-square kernels, padding modes other than zeros,
// Embedding's padding_idx/max_norm, and LayerNorm with weight but no bias.
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "nn/module.h"

namespace stipple {
class Generator;
}

namespace stipple::nn {

class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen);
  std::string type_name() const override { return "Linear"; }
  bool is_layer_weight(const std::string& name) const override { return name == "weight"; }
  void reset_parameters(Generator& gen) override;

  Tensor forward(const Tensor& x) const;  // [..., in] -> [..., out]
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const Tensor& weight() const { return weight_; }  // [out, in]
  const Tensor& bias() const { return bias_; }      // [out], undefined without bias
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

class Conv2d : public Module {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride = 1,
         int64_t padding = 0, bool bias = true);
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
         int64_t padding, bool bias, Generator& gen);
  std::string type_name() const override { return "Conv2d"; }
  bool is_layer_weight(const std::string& name) const override { return name == "weight"; }
  void reset_parameters(Generator& gen) override;

  Tensor forward(const Tensor& x) const;  // [N, in, H, W] -> [N, out, H', W']
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const Tensor& weight() const { return weight_; }  // [out, in, k, k]
  const Tensor& bias() const { return bias_; }      // [out], undefined without bias
  int64_t in_channels() const { return in_; }
  int64_t out_channels() const { return out_; }
  int64_t kernel_size() const { return k_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 private:
  int64_t in_, out_, k_, stride_, padding_;
  Tensor weight_, bias_;
};

class GroupNorm : public Module {
 public:
  GroupNorm(int64_t num_groups, int64_t num_channels, float eps = 1e-5f, bool affine = true);
  std::string type_name() const override { return "GroupNorm"; }
  void reset_parameters(Generator& gen) override;

  Tensor forward(const Tensor& x) const;  // [N, C, ...] -> same
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const Tensor& weight() const { return weight_; }  // [C], undefined without affine
  const Tensor& bias() const { return bias_; }
  int64_t num_groups() const { return groups_; }
  int64_t num_channels() const { return channels_; }
  float eps() const { return eps_; }

 private:
  int64_t groups_, channels_;
  float eps_;
  Tensor weight_, bias_;
};

class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t dim, float eps = 1e-5f, bool affine = true);
  std::string type_name() const override { return "LayerNorm"; }
  void reset_parameters(Generator& gen) override;

  Tensor forward(const Tensor& x) const;  // [..., D] -> same
  Tensor operator()(const Tensor& x) const { return forward(x); }

  const Tensor& weight() const { return weight_; }  // [D], undefined without affine
  const Tensor& bias() const { return bias_; }
  int64_t dim() const { return dim_; }
  float eps() const { return eps_; }

 private:
  int64_t dim_;
  float eps_;
  Tensor weight_, bias_;
};

class Embedding : public Module {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim);
  Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen);
  std::string type_name() const override { return "Embedding"; }
  bool is_layer_weight(const std::string& name) const override { return name == "weight"; }
  void reset_parameters(Generator& gen) override;

  Tensor forward(const Tensor& ids) const;  // i64 [...] -> [..., D]
  Tensor operator()(const Tensor& ids) const { return forward(ids); }

  const Tensor& weight() const { return weight_; }  // [V, D]
  int64_t num_embeddings() const { return num_; }
  int64_t embedding_dim() const { return dim_; }

 private:
  int64_t num_, dim_;
  Tensor weight_;
};

}  // namespace stipple::nn

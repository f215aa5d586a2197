// Linear, Conv2d, GroupNorm, LayerNorm, Embedding: parameters, PyTorch initialisation, forward.
#include "nn/layers.h"

#include <cmath>
#include <cstring>

#include "autograd/grad_mode.h"
#include "core/rng.h"
#include "ops/ops.h"

namespace stipple::nn {
namespace {

// Fills the f32 parameter `t` in place with U(lo, hi) as torch's uniform_ does: u * (hi - lo) + lo
// in float, u from Generator::rand (torch.rand's 24-bit uniforms).
void uniform_(const Tensor& t, double lo, double hi, Generator& gen) {
  const Tensor u = gen.rand(t.shape());
  const float from = static_cast<float>(lo), to = static_cast<float>(hi);
  const float range = to - from;
  const float* src = u.data<float>();
  float* dst = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = src[i] * range + from;
  t.storage()->bump_version();
}

void fill_(const Tensor& t, float value) {
  float* dst = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = value;
  t.storage()->bump_version();
}

// kaiming_uniform_(w, a=sqrt(5)) as torch.nn.init computes the bound (in double).
double kaiming_uniform_bound(int64_t fan_in) {
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1.0 + a * a));
  const double std = gain / std::sqrt(static_cast<double>(fan_in));
  return std::sqrt(3.0) * std;
}

void check_positive(const char* layer, const char* what, int64_t v) {
  STIPPLE_CHECK(v > 0, layer, ": ", what, " must be positive, got ", v);
}

}  // namespace

// ---------------- Linear ----------------

Linear::Linear(int64_t in_features, int64_t out_features, bool bias)
    : in_(in_features), out_(out_features) {
  check_positive("Linear", "in_features", in_);
  check_positive("Linear", "out_features", out_);
  weight_ = register_parameter("weight", Tensor::zeros({out_, in_}));
  if (bias) bias_ = register_parameter("bias", Tensor::zeros({out_}));
}

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen)
    : Linear(in_features, out_features, bias) {
  reset_parameters(gen);
}

void Linear::reset_parameters(Generator& gen) {
  const double w = kaiming_uniform_bound(in_);
  uniform_(weight_, -w, w, gen);
  if (bias_.defined()) {
    const double b = 1.0 / std::sqrt(static_cast<double>(in_));
    uniform_(bias_, -b, b, gen);
  }
}

Tensor Linear::forward(const Tensor& x) const { return ops::linear(x, weight_, bias_); }

// ---------------- Conv2d ----------------

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, bool bias)
    : in_(in_channels), out_(out_channels), k_(kernel_size), stride_(stride), padding_(padding) {
  check_positive("Conv2d", "in_channels", in_);
  check_positive("Conv2d", "out_channels", out_);
  check_positive("Conv2d", "kernel_size", k_);
  check_positive("Conv2d", "stride", stride_);
  STIPPLE_CHECK(padding_ >= 0, "Conv2d: padding must be non-negative, got ", padding_);
  weight_ = register_parameter("weight", Tensor::zeros({out_, in_, k_, k_}));
  if (bias) bias_ = register_parameter("bias", Tensor::zeros({out_}));
}

Conv2d::Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, int64_t stride,
               int64_t padding, bool bias, Generator& gen)
    : Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias) {
  reset_parameters(gen);
}

void Conv2d::reset_parameters(Generator& gen) {
  const int64_t fan_in = in_ * k_ * k_;
  const double w = kaiming_uniform_bound(fan_in);
  uniform_(weight_, -w, w, gen);
  if (bias_.defined()) {
    const double b = 1.0 / std::sqrt(static_cast<double>(fan_in));
    uniform_(bias_, -b, b, gen);
  }
}

Tensor Conv2d::forward(const Tensor& x) const {
  ops::Conv2dParams p;
  p.stride_h = p.stride_w = stride_;
  p.pad_h = p.pad_w = padding_;
  return ops::conv2d(x, weight_, bias_, p);
}

// ---------------- GroupNorm ----------------

GroupNorm::GroupNorm(int64_t num_groups, int64_t num_channels, float eps, bool affine)
    : groups_(num_groups), channels_(num_channels), eps_(eps) {
  check_positive("GroupNorm", "num_groups", groups_);
  check_positive("GroupNorm", "num_channels", channels_);
  STIPPLE_CHECK(channels_ % groups_ == 0, "GroupNorm: ", channels_,
                " channels are not divisible by ", groups_, " groups");
  if (affine) {
    weight_ = register_parameter("weight", Tensor::ones({channels_}));
    bias_ = register_parameter("bias", Tensor::zeros({channels_}));
  }
}

void GroupNorm::reset_parameters(Generator&) {
  if (weight_.defined()) fill_(weight_, 1.0f);
  if (bias_.defined()) fill_(bias_, 0.0f);
}

Tensor GroupNorm::forward(const Tensor& x) const {
  STIPPLE_CHECK(x.dim() >= 2 && x.size(1) == channels_, "GroupNorm(", groups_, ", ", channels_,
                "): input ", x.describe(), " does not have ", channels_, " channels in dim 1");
  return ops::group_norm(x, groups_, weight_, bias_, eps_);
}

// ---------------- LayerNorm ----------------

LayerNorm::LayerNorm(int64_t dim, float eps, bool affine) : dim_(dim), eps_(eps) {
  check_positive("LayerNorm", "dim", dim_);
  if (affine) {
    weight_ = register_parameter("weight", Tensor::ones({dim_}));
    bias_ = register_parameter("bias", Tensor::zeros({dim_}));
  }
}

void LayerNorm::reset_parameters(Generator&) {
  if (weight_.defined()) fill_(weight_, 1.0f);
  if (bias_.defined()) fill_(bias_, 0.0f);
}

Tensor LayerNorm::forward(const Tensor& x) const {
  STIPPLE_CHECK(x.dim() >= 1 && x.size(-1) == dim_, "LayerNorm(", dim_, "): input ", x.describe(),
                " does not end in ", dim_);
  return ops::layer_norm(x, weight_, bias_, eps_);
}

// ---------------- Embedding ----------------

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim)
    : num_(num_embeddings), dim_(embedding_dim) {
  check_positive("Embedding", "num_embeddings", num_);
  check_positive("Embedding", "embedding_dim", dim_);
  weight_ = register_parameter("weight", Tensor::zeros({num_, dim_}));
}

Embedding::Embedding(int64_t num_embeddings, int64_t embedding_dim, Generator& gen)
    : Embedding(num_embeddings, embedding_dim) {
  reset_parameters(gen);
}

void Embedding::reset_parameters(Generator& gen) {
  const Tensor n = gen.randn({num_, dim_});
  std::memcpy(weight_.data<float>(), n.data<float>(), n.numel() * sizeof(float));
  weight_.storage()->bump_version();
}

Tensor Embedding::forward(const Tensor& ids) const { return ops::embedding(weight_, ids); }

}  // namespace stipple::nn

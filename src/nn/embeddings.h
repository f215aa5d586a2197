// Embeddings shared by the denoisers, as diffusers.models.embeddings names them:
//   timestep_embedding            sinusoidal timestep features (get_timestep_embedding)
//   Timesteps                     the same as a parameter-free module (`time_proj`)
//   TimestepEmbedding             linear_1 -> act -> linear_2 (`time_embedding`,
//   `timestep_embedder`) get_2d_sincos_pos_embed       the fixed 2-D sin-cos position table of
//   ViT/MAE/DiT PatchEmbed                    conv patchify + flatten (+ LayerNorm) + sin-cos
//   positions LabelEmbedding                class table with a null row for classifier-free
//   guidance CombinedTimestepLabelEmbeddings  DiT's conditioning c = t_emb + y_emb (DiT paper,
//   Sec. 3.2)
//
// The arithmetic follows diffusers 0.29 operation by operation (float32 where torch computes in
// float32, float64 where numpy does), so outputs match the reference to rounding.
//
// Leaves out: pos_embed_type other than "sincos"/none, the SD3/PixArt combined embedders, and
// dropping labels with torch's own RNG stream (random drops take a stipple Generator).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace stipple {
class Generator;
}

namespace stipple::nn {

// diffusers' get_timestep_embedding. `t` is f32/f64/i64 [B] (or 0-d, taken as [1]); returns
// f32 [B, dim]. half = dim/2, freq_k = exp(-ln(max_period) * k / (half - downscale_freq_shift))
// in float32, arg = scale * t * freq, emb = [sin(arg), cos(arg)] ([cos, sin] when
// flip_sin_to_cos), zero-padded by one column when dim is odd.
Tensor timestep_embedding(const Tensor& t, int64_t dim, bool flip_sin_to_cos,
                          float downscale_freq_shift, float scale = 1.0f,
                          float max_period = 10000.0f);

// diffusers' Timesteps: no parameters.
class Timesteps : public Module {
 public:
  Timesteps(int64_t num_channels, bool flip_sin_to_cos, float downscale_freq_shift,
            float scale = 1.0f);
  std::string type_name() const override { return "Timesteps"; }
  Tensor forward(const Tensor& t) const;  // [B] -> [B, num_channels]
  Tensor operator()(const Tensor& t) const { return forward(t); }
  int64_t num_channels() const { return num_channels_; }

 private:
  int64_t num_channels_;
  bool flip_sin_to_cos_;
  float downscale_freq_shift_, scale_;
};

struct TimestepEmbeddingOptions {
  std::string act_fn = "silu";
  int64_t out_dim = -1;        // -1: time_embed_dim
  std::string post_act_fn;     // empty: none
  int64_t cond_proj_dim = -1;  // -1: no cond_proj
  bool sample_proj_bias = true;
};

// diffusers' TimestepEmbedding: [sample + cond_proj(condition)] -> linear_1 -> act -> linear_2
// [-> post_act].
class TimestepEmbedding : public Module {
 public:
  TimestepEmbedding(int64_t in_channels, int64_t time_embed_dim,
                    const TimestepEmbeddingOptions& options = {});
  std::string type_name() const override { return "TimestepEmbedding"; }
  // sample [B, in] (condition [B, cond_proj_dim] or undefined) -> [B, out]
  Tensor forward(const Tensor& sample, const Tensor& condition = Tensor()) const;
  Tensor operator()(const Tensor& sample) const { return forward(sample); }

  std::shared_ptr<Linear> linear_1, linear_2, cond_proj;  // cond_proj may be null

 private:
  TimestepEmbeddingOptions options_;
};

// diffusers' get_2d_sincos_pos_embed: [grid_h * grid_w, embed_dim] (row-major over (h, w)), f32.
// Positions are arange(n) / (n / base_size) / interpolation_scale in float32 (as numpy computes
// them); the sin/cos are in float64, then cast. The first embed_dim/2 channels encode the column
// (w) coordinate, the second half the row (h); each half is [sin(pos*omega), cos(pos*omega)] with
// omega_k = 1 / 10000^(k / (embed_dim/4)). embed_dim must be a multiple of 4.
Tensor get_2d_sincos_pos_embed(int64_t embed_dim, int64_t grid_h, int64_t grid_w, double base_size,
                               double interpolation_scale);
inline Tensor get_2d_sincos_pos_embed(int64_t embed_dim, int64_t grid_size, double base_size = 16.0,
                                      double interpolation_scale = 1.0) {
  return get_2d_sincos_pos_embed(embed_dim, grid_size, grid_size, base_size, interpolation_scale);
}

struct PatchEmbedOptions {
  int64_t height = 224, width = 224;  // sample size in pixels (latent pixels for DiT)
  int64_t patch_size = 16;
  int64_t in_channels = 3;
  int64_t embed_dim = 768;
  bool layer_norm = false;  // LayerNorm(no affine, eps 1e-6) after flattening
  bool bias = true;
  double interpolation_scale = 1.0;
  bool sincos_pos_embed = true;     // false: pos_embed_type None
  int64_t pos_embed_max_size = -1;  // > 0: a max_size^2 table (persistent) cropped to the input
};

// diffusers' PatchEmbed (ViT's patchify, DiT paper Fig. 4): proj (conv k = s = patch) ->
// flatten to tokens [B, N, D] -> (norm) -> + pos_embed. The pos_embed table is a non-persistent
// buffer computed from the sin-cos formula (not in checkpoints), except with pos_embed_max_size,
// where diffusers stores it. Inputs of another size get a table computed for their grid.
class PatchEmbed : public Module {
 public:
  explicit PatchEmbed(const PatchEmbedOptions& options);
  std::string type_name() const override { return "PatchEmbed"; }
  Tensor forward(const Tensor& latent) const;  // [B, C, H, W] -> [B, (H/p)*(W/p), D]
  Tensor operator()(const Tensor& latent) const { return forward(latent); }

  // The position table used for a grid of h x w patches: [1, h*w, D].
  Tensor pos_embed_for(int64_t h, int64_t w) const;

  std::shared_ptr<Conv2d> proj;
  std::shared_ptr<LayerNorm> norm;                        // null without layer_norm
  const Tensor& pos_embed() const { return pos_embed_; }  // [1, N, D], undefined without one
  const PatchEmbedOptions& options() const { return options_; }

 private:
  PatchEmbedOptions options_;
  int64_t grid_h_, grid_w_, base_size_;
  Tensor pos_embed_;
};

// diffusers' LabelEmbedding: embedding_table [num_classes + (dropout_prob > 0), D]. The last row
// is the null class that classifier-free guidance uses.
class LabelEmbedding : public Module {
 public:
  LabelEmbedding(int64_t num_classes, int64_t hidden_size, float dropout_prob);
  std::string type_name() const override { return "LabelEmbedding"; }

  // labels i64 [B] -> [B, D]. Labels are replaced by the null class where force_drop_ids (i64
  // or f32 [B]) is 1, or, in training mode with dropout_prob > 0 and a generator given, with
  // probability dropout_prob each (DiT's class dropout).
  Tensor forward(const Tensor& labels, const Tensor& force_drop_ids = Tensor(),
                 Generator* gen = nullptr) const;
  Tensor operator()(const Tensor& labels) const { return forward(labels); }
  // The labels with drops applied (force_drop_ids as above, or random with `gen` when not null).
  Tensor token_drop(const Tensor& labels, const Tensor& force_drop_ids, Generator* gen) const;

  std::shared_ptr<Embedding> embedding_table;
  int64_t num_classes() const { return num_classes_; }
  float dropout_prob() const { return dropout_prob_; }

 private:
  int64_t num_classes_;
  float dropout_prob_;
};

// diffusers' CombinedTimestepLabelEmbeddings (DiT): time_proj = Timesteps(256, flip_sin_to_cos,
// shift 1) -> timestep_embedder (256 -> D) ; + class_embedder(labels).
class CombinedTimestepLabelEmbeddings : public Module {
 public:
  CombinedTimestepLabelEmbeddings(int64_t num_classes, int64_t embedding_dim,
                                  float class_dropout_prob = 0.1f);
  std::string type_name() const override { return "CombinedTimestepLabelEmbeddings"; }
  // timestep [B] (f32 or i64), class_labels i64 [B] -> conditioning [B, D]
  Tensor forward(const Tensor& timestep, const Tensor& class_labels,
                 const Tensor& force_drop_ids = Tensor(), Generator* gen = nullptr) const;

  std::shared_ptr<Timesteps> time_proj;
  std::shared_ptr<TimestepEmbedding> timestep_embedder;
  std::shared_ptr<LabelEmbedding> class_embedder;
};

}  // namespace stipple::nn

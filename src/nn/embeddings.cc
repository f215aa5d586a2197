// Timestep, label, patch and position embeddings (diffusers.models.embeddings).
#include "nn/embeddings.h"

#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "nn/activations.h"
#include "ops/ops.h"

namespace stipple::nn {
namespace {

// t.float() as torch does it: integers and doubles rounded to float32.
std::vector<float> timesteps_as_float(const Tensor& t) {
  std::vector<float> out;
  if (t.dtype() == DType::kI64) {
    for (int64_t v : t.to_vector_i64()) out.push_back(static_cast<float>(v));
  } else {
    out = t.to_vector();
  }
  return out;
}

}  // namespace

// ---------------- timestep_embedding ----------------

Tensor timestep_embedding(const Tensor& t, int64_t dim, bool flip_sin_to_cos,
                          float downscale_freq_shift, float scale, float max_period) {
  STIPPLE_CHECK(t.defined(), "timestep_embedding: undefined timesteps");
  STIPPLE_CHECK(t.dim() <= 1, "timestep_embedding: timesteps must be 0-d or 1-D [B], got ",
                t.describe());
  STIPPLE_CHECK(dim >= 2, "timestep_embedding: embedding dim must be at least 2, got ", dim);
  const int64_t half = dim / 2;
  STIPPLE_CHECK(static_cast<float>(half) != downscale_freq_shift,
                "timestep_embedding: half the dim (", half, ") equals downscale_freq_shift");
  const std::vector<float> ts = timesteps_as_float(t);
  const int64_t batch = static_cast<int64_t>(ts.size());

  // exponent = -log(max_period) * arange(half) / (half - shift), all in float32 as torch does.
  const float neg_log_period = static_cast<float>(-std::log(static_cast<double>(max_period)));
  const float denom = static_cast<float>(half) - downscale_freq_shift;
  std::vector<float> freq(half);
  for (int64_t k = 0; k < half; ++k) {
    const float exponent = (neg_log_period * static_cast<float>(k)) / denom;
    freq[k] = std::exp(exponent);
  }
  Tensor out = Tensor::zeros({batch, dim});
  float* o = out.data<float>();
  for (int64_t b = 0; b < batch; ++b) {
    float* row = o + b * dim;
    for (int64_t k = 0; k < half; ++k) {
      const float arg = scale * (ts[b] * freq[k]);
      const float s = std::sin(arg), c = std::cos(arg);
      row[flip_sin_to_cos ? half + k : k] = s;
      row[flip_sin_to_cos ? k : half + k] = c;
    }
    // An odd dim leaves the last column zero (F.pad(emb, (0, 1))).
  }
  // Computed on the host (B timesteps read, a [B, dim] table written back: small, and the same
  // sin/cos on every device), delivered where the timesteps live.
  return out.to(t.device());
}

// ---------------- Timesteps ----------------

Timesteps::Timesteps(int64_t num_channels, bool flip_sin_to_cos, float downscale_freq_shift,
                     float scale)
    : num_channels_(num_channels),
      flip_sin_to_cos_(flip_sin_to_cos),
      downscale_freq_shift_(downscale_freq_shift),
      scale_(scale) {
  STIPPLE_CHECK(num_channels >= 2, "Timesteps: num_channels must be at least 2, got ",
                num_channels);
}

Tensor Timesteps::forward(const Tensor& t) const {
  return timestep_embedding(t, num_channels_, flip_sin_to_cos_, downscale_freq_shift_, scale_);
}

// ---------------- TimestepEmbedding ----------------

TimestepEmbedding::TimestepEmbedding(int64_t in_channels, int64_t time_embed_dim,
                                     const TimestepEmbeddingOptions& options)
    : options_(options) {
  check_activation(options.act_fn, "TimestepEmbedding act_fn");
  if (!options.post_act_fn.empty()) {
    check_activation(options.post_act_fn, "TimestepEmbedding post_act_fn");
  }
  const int64_t out_dim = options.out_dim > 0 ? options.out_dim : time_embed_dim;
  linear_1 = register_module(
      "linear_1", std::make_shared<Linear>(in_channels, time_embed_dim, options.sample_proj_bias));
  if (options.cond_proj_dim > 0) {
    cond_proj = register_module(
        "cond_proj", std::make_shared<Linear>(options.cond_proj_dim, in_channels, false));
  }
  linear_2 = register_module(
      "linear_2", std::make_shared<Linear>(time_embed_dim, out_dim, options.sample_proj_bias));
}

Tensor TimestepEmbedding::forward(const Tensor& sample, const Tensor& condition) const {
  Tensor x = sample;  // [B, in]
  if (condition.defined()) {
    STIPPLE_CHECK(cond_proj != nullptr,
                  "TimestepEmbedding: a condition was given but the module has no cond_proj "
                  "(set cond_proj_dim)");
    x = ops::add(x, cond_proj->forward(condition));  // [B, in]
  }
  x = apply_activation(options_.act_fn, linear_1->forward(x));  // [B, D]
  x = linear_2->forward(x);                                     // [B, out]
  if (!options_.post_act_fn.empty()) x = apply_activation(options_.post_act_fn, x);
  return x;
}

// ---------------- 2-D sin-cos position table ----------------

Tensor get_2d_sincos_pos_embed(int64_t embed_dim, int64_t grid_h, int64_t grid_w, double base_size,
                               double interpolation_scale) {
  STIPPLE_CHECK(embed_dim > 0 && embed_dim % 4 == 0,
                "get_2d_sincos_pos_embed: embed_dim must be a positive multiple of 4, got ",
                embed_dim);
  STIPPLE_CHECK(grid_h > 0 && grid_w > 0, "get_2d_sincos_pos_embed: bad grid ", grid_h, "x",
                grid_w);
  STIPPLE_CHECK(base_size > 0 && interpolation_scale > 0,
                "get_2d_sincos_pos_embed: base_size and interpolation_scale must be positive");
  // numpy: np.arange(n, dtype=float32) / (n / base_size) / interpolation_scale, a float32 loop
  // with the Python scalars cast to float32.
  auto positions = [&](int64_t n) {
    const float div1 = static_cast<float>(static_cast<double>(n) / base_size);
    const float div2 = static_cast<float>(interpolation_scale);
    std::vector<float> p(n);
    for (int64_t i = 0; i < n; ++i) p[i] = (static_cast<float>(i) / div1) / div2;
    return p;
  };
  const std::vector<float> pos_h = positions(grid_h), pos_w = positions(grid_w);
  const int64_t half = embed_dim / 2;     // channels per coordinate
  const int64_t quarter = embed_dim / 4;  // frequencies per coordinate
  std::vector<double> omega(quarter);
  for (int64_t k = 0; k < quarter; ++k) {
    omega[k] = 1.0 / std::pow(10000.0, static_cast<double>(k) / (static_cast<double>(half) / 2.0));
  }
  Tensor out = Tensor::zeros({grid_h * grid_w, embed_dim});
  float* o = out.data<float>();
  for (int64_t i = 0; i < grid_h; ++i) {
    for (int64_t j = 0; j < grid_w; ++j) {
      float* row = o + (i * grid_w + j) * embed_dim;
      // np.meshgrid(grid_w, grid_h): the first half encodes w, the second h.
      const double coords[2] = {pos_w[j], pos_h[i]};
      for (int c = 0; c < 2; ++c) {
        for (int64_t k = 0; k < quarter; ++k) {
          const double a = coords[c] * omega[k];
          row[c * half + k] = static_cast<float>(std::sin(a));
          row[c * half + quarter + k] = static_cast<float>(std::cos(a));
        }
      }
    }
  }
  return out;
}

// ---------------- PatchEmbed ----------------

PatchEmbed::PatchEmbed(const PatchEmbedOptions& o) : options_(o) {
  STIPPLE_CHECK(o.patch_size > 0, "PatchEmbed: patch_size must be positive, got ", o.patch_size);
  STIPPLE_CHECK(o.height >= o.patch_size && o.width >= o.patch_size, "PatchEmbed: sample size ",
                o.height, "x", o.width, " is smaller than the patch ", o.patch_size);
  grid_h_ = o.height / o.patch_size;
  grid_w_ = o.width / o.patch_size;
  base_size_ = o.height / o.patch_size;
  proj = register_module("proj", std::make_shared<Conv2d>(o.in_channels, o.embed_dim, o.patch_size,
                                                          o.patch_size, 0, o.bias));
  if (o.layer_norm) {
    norm = register_module("norm", std::make_shared<LayerNorm>(o.embed_dim, 1e-6f, false));
  }
  if (o.sincos_pos_embed) {
    // diffusers: grid_size = pos_embed_max_size or int(num_patches ** 0.5).
    int64_t grid = o.pos_embed_max_size;
    if (grid <= 0) {
      grid = static_cast<int64_t>(std::sqrt(static_cast<double>(grid_h_ * grid_w_)));
    }
    const Tensor table = get_2d_sincos_pos_embed(
        o.embed_dim, grid, grid, static_cast<double>(base_size_), o.interpolation_scale);
    pos_embed_ = register_buffer("pos_embed", table.unsqueeze(0).contiguous(),
                                 /*persistent=*/o.pos_embed_max_size > 0);
  }
}

Tensor PatchEmbed::pos_embed_for(int64_t h, int64_t w) const {
  STIPPLE_CHECK(pos_embed_.defined(), "PatchEmbed: this module has no position table");
  const int64_t max_size = options_.pos_embed_max_size;
  if (max_size > 0) {
    // cropped_pos_embed: the centre h x w window of the max_size^2 table.
    STIPPLE_CHECK(h <= max_size && w <= max_size, "PatchEmbed: a ", h, "x", w,
                  " patch grid exceeds pos_embed_max_size ", max_size);
    const int64_t top = (max_size - h) / 2, left = (max_size - w) / 2;
    const int64_t d = pos_embed_.size(-1);
    Tensor t = pos_embed_.reshape({1, max_size, max_size, d});  // [1, M, M, D]
    t = t.narrow(1, top, h).narrow(2, left, w);                 // [1, h, w, D]
    return t.reshape({1, h * w, d});                            // [1, h*w, D]
  }
  if (h == grid_h_ && w == grid_w_ && pos_embed_.size(1) == h * w) return pos_embed_;
  return get_2d_sincos_pos_embed(options_.embed_dim, h, w, static_cast<double>(base_size_),
                                 options_.interpolation_scale)
      .unsqueeze(0);
}

Tensor PatchEmbed::forward(const Tensor& latent) const {
  STIPPLE_CHECK(latent.dim() == 4, "PatchEmbed: expected [B, C, H, W], got ", latent.describe());
  const int64_t p = options_.patch_size;
  STIPPLE_CHECK(latent.size(1) == options_.in_channels, "PatchEmbed: expected ",
                options_.in_channels, " channels, got ", latent.describe());
  STIPPLE_CHECK(latent.size(2) % p == 0 && latent.size(3) % p == 0, "PatchEmbed: height and width ",
                latent.size(2), "x", latent.size(3), " must be multiples of the patch size ", p);
  const int64_t h = latent.size(2) / p, w = latent.size(3) / p;
  Tensor x = proj->forward(latent);               // [B, D, h, w]
  x = x.contiguous().flatten(2).transpose(1, 2);  // [B, h*w, D]
  if (norm) x = norm->forward(x);                 // [B, h*w, D]
  if (!pos_embed_.defined()) return x;
  return ops::add(x, pos_embed_for(h, w));  // [B, h*w, D]
}

// ---------------- LabelEmbedding ----------------

LabelEmbedding::LabelEmbedding(int64_t num_classes, int64_t hidden_size, float dropout_prob)
    : num_classes_(num_classes), dropout_prob_(dropout_prob) {
  STIPPLE_CHECK(num_classes > 0, "LabelEmbedding: num_classes must be positive, got ", num_classes);
  STIPPLE_CHECK(dropout_prob >= 0.0f && dropout_prob < 1.0f,
                "LabelEmbedding: dropout_prob must be in [0, 1), got ", dropout_prob);
  const int64_t rows = num_classes + (dropout_prob > 0.0f ? 1 : 0);
  embedding_table =
      register_module("embedding_table", std::make_shared<Embedding>(rows, hidden_size));
}

Tensor LabelEmbedding::token_drop(const Tensor& labels, const Tensor& force_drop_ids,
                                  Generator* gen) const {
  STIPPLE_CHECK(dropout_prob_ > 0.0f,
                "LabelEmbedding: dropping labels needs a null class row (dropout_prob > 0)");
  std::vector<int64_t> ids = labels.to_vector_i64();
  std::vector<bool> drop(ids.size(), false);
  if (force_drop_ids.defined()) {
    STIPPLE_CHECK(force_drop_ids.numel() == static_cast<int64_t>(ids.size()),
                  "LabelEmbedding: force_drop_ids ", force_drop_ids.describe(),
                  " does not match labels ", labels.describe());
    const std::vector<double> f = force_drop_ids.to_vector_f64();
    for (size_t i = 0; i < ids.size(); ++i) drop[i] = f[i] == 1.0;
  } else if (gen != nullptr) {
    const std::vector<float> u = gen->rand({static_cast<int64_t>(ids.size())}).to_vector();
    for (size_t i = 0; i < ids.size(); ++i) drop[i] = u[i] < dropout_prob_;
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    if (drop[i]) ids[i] = num_classes_;
  }
  return Tensor::from_vector_i64(ids, labels.shape());
}

Tensor LabelEmbedding::forward(const Tensor& labels, const Tensor& force_drop_ids,
                               Generator* gen) const {
  STIPPLE_CHECK(labels.defined() && labels.dtype() == DType::kI64,
                "LabelEmbedding: class labels must be i64, got ",
                labels.defined() ? labels.describe() : std::string("undefined"));
  Tensor ids = labels;
  const bool random_drop = is_training() && dropout_prob_ > 0.0f && gen != nullptr;
  if (force_drop_ids.defined() || random_drop) ids = token_drop(labels, force_drop_ids, gen);
  const int64_t rows = embedding_table->num_embeddings();
  for (int64_t v : ids.to_vector_i64()) {
    STIPPLE_CHECK(
        v >= 0 && v < rows, "LabelEmbedding: class label ", v, " is out of range [0, ", rows, ")",
        (rows > num_classes_ ? str_cat(" (", num_classes_, " is the null class)") : std::string()));
  }
  return embedding_table->forward(ids);  // [B, D]
}

// ---------------- CombinedTimestepLabelEmbeddings ----------------

CombinedTimestepLabelEmbeddings::CombinedTimestepLabelEmbeddings(int64_t num_classes,
                                                                 int64_t embedding_dim,
                                                                 float class_dropout_prob) {
  time_proj = register_module("time_proj", std::make_shared<Timesteps>(256, true, 1.0f));
  timestep_embedder =
      register_module("timestep_embedder", std::make_shared<TimestepEmbedding>(256, embedding_dim));
  class_embedder = register_module(
      "class_embedder",
      std::make_shared<LabelEmbedding>(num_classes, embedding_dim, class_dropout_prob));
}

Tensor CombinedTimestepLabelEmbeddings::forward(const Tensor& timestep, const Tensor& class_labels,
                                                const Tensor& force_drop_ids,
                                                Generator* gen) const {
  const Tensor t_freq = time_proj->forward(timestep);                               // [B, 256]
  const Tensor t_emb = timestep_embedder->forward(t_freq);                          // [B, D]
  const Tensor y_emb = class_embedder->forward(class_labels, force_drop_ids, gen);  // [B, D]
  STIPPLE_CHECK(t_emb.size(0) == y_emb.size(0) || t_emb.size(0) == 1,
                "CombinedTimestepLabelEmbeddings: ", t_emb.size(0), " timesteps but ",
                y_emb.size(0), " class labels");
  return ops::add(t_emb, y_emb);  // [B, D]
}

}  // namespace stipple::nn

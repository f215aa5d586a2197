// FeedForward, AdaLayerNormZero and BasicTransformerBlock (diffusers models/attention.py,
// models/normalization.py, models/activations.py).
#include "nn/transformer_block.h"

#include <algorithm>
#include <atomic>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "ops/ops.h"

namespace stipple::nn {
namespace {

// A parameter-free stand-in for torch.nn.Dropout, so that FeedForward's Linear sits at net.2.
class Dropout : public Module {
 public:
  std::string type_name() const override { return "Dropout"; }
};

}  // namespace

// ---------------- activations with projections ----------------

GELU::GELU(int64_t dim_in, int64_t dim_out, bool tanh_approximation, bool bias)
    : tanh_(tanh_approximation) {
  proj = register_module("proj", std::make_shared<Linear>(dim_in, dim_out, bias));
}

Tensor GELU::forward(const Tensor& x) const {
  return ops::gelu(proj->forward(x), tanh_);  // [..., out]
}

GEGLU::GEGLU(int64_t dim_in, int64_t dim_out, bool bias) {
  proj = register_module("proj", std::make_shared<Linear>(dim_in, dim_out * 2, bias));
}

Tensor GEGLU::forward(const Tensor& x) const {
  return ops::geglu(proj->forward(x));  // [..., 2*out] -> hidden * gelu(gate): [..., out]
}

ApproximateGELU::ApproximateGELU(int64_t dim_in, int64_t dim_out, bool bias) {
  proj = register_module("proj", std::make_shared<Linear>(dim_in, dim_out, bias));
}

Tensor ApproximateGELU::forward(const Tensor& x) const {
  return ops::quick_gelu(proj->forward(x));  // x * sigmoid(1.702 x): [..., out]
}

// ---------------- FeedForward ----------------

FeedForward::FeedForward(int64_t dim, const FeedForwardOptions& o) {
  STIPPLE_CHECK(dim > 0, "FeedForward: dim must be positive, got ", dim);
  const int64_t inner = o.inner_dim > 0 ? o.inner_dim : dim * o.mult;
  const int64_t dim_out = o.dim_out > 0 ? o.dim_out : dim;
  STIPPLE_CHECK(inner > 0, "FeedForward: inner dim must be positive, got ", inner);
  net = register_module("net", std::make_shared<ModuleList>());
  if (o.activation_fn == "gelu" || o.activation_fn == "gelu-approximate") {
    kind_ = o.activation_fn == "gelu" ? Kind::kGelu : Kind::kGeluTanh;
    auto act = std::make_shared<GELU>(dim, inner, kind_ == Kind::kGeluTanh, o.bias);
    act_proj_ = act->proj;
    net->push_back(act);
  } else if (o.activation_fn == "geglu") {
    kind_ = Kind::kGeglu;
    auto act = std::make_shared<GEGLU>(dim, inner, o.bias);
    act_proj_ = act->proj;
    net->push_back(act);
  } else if (o.activation_fn == "geglu-approximate") {
    kind_ = Kind::kApproximateGelu;
    auto act = std::make_shared<ApproximateGELU>(dim, inner, o.bias);
    act_proj_ = act->proj;
    net->push_back(act);
  } else {
    STIPPLE_CHECK(false, "FeedForward: unknown activation_fn '", o.activation_fn,
                  "' (known: geglu, gelu, gelu-approximate, geglu-approximate)");
  }
  net->push_back(std::make_shared<Dropout>());
  out_proj_ = net->push_back(std::make_shared<Linear>(inner, dim_out, o.bias));
  if (o.final_dropout) net->push_back(std::make_shared<Dropout>());
}

namespace {
std::atomic<int64_t> g_feed_forward_chunk_rows{0};
}  // namespace

void set_feed_forward_chunk_rows(int64_t rows) { g_feed_forward_chunk_rows.store(rows); }
int64_t feed_forward_chunk_rows() { return g_feed_forward_chunk_rows.load(); }

// With chunking on and nothing to record, a projection whose weights take more than this in f32
// goes in parts of the inner features: h_c = act(x W1_c^T + b1_c), y = sum_c h_c W2[:, c]^T + b2.
// Half-precision weights are widened a part at a time, and so is the widest activation. (SD 1.5's
// 1280-wide blocks widened a 50 MiB projection and made [rows, 10240] out of it at once: the
// peak of a --low-memory step.)
constexpr int64_t kInnerPartBytes = int64_t{16} << 20;

namespace {
// A projection's weights (or a part of them) as the matmul takes them: f32 and contiguous
// (unchanged when they are already), converted once for every row chunk that uses them.
Tensor f32_for_chunks(const Tensor& w) { return w.to(DType::kF32).contiguous(); }
}  // namespace

Tensor FeedForward::forward(const Tensor& x) const {
  const int64_t chunk = feed_forward_chunk_rows();
  if (chunk <= 0 || autograd::grad_enabled()) {
    const Tensor h = act_proj_->forward(x);  // [..., inner] (GEGLU: [..., 2*inner])
    return out_proj_->forward(activate(h));   // [..., dim_out]
  }
  const int64_t rows = x.dim() >= 1 && x.size(-1) > 0 ? x.numel() / x.size(-1) : 0;
  const Tensor flat = x.reshape({rows, x.size(-1)});
  std::vector<Tensor> xs;
  for (int64_t r = 0; r < rows; r += chunk)
    xs.push_back(flat.narrow(0, r, std::min(chunk, rows - r)));
  if (xs.empty()) xs.push_back(flat);
  const std::vector<Tensor> ys = forward_chunks(xs);
  Shape shape = x.shape();
  shape.back() = ys.front().size(-1);
  return (ys.size() == 1 ? ys.front() : ops::concat(ys, 0)).reshape(shape);
}

// The row chunks `xs` through the layer, each projection's weights (or each part of them)
// converted once for all the chunks: converted per chunk, SD 1.5's 64x64 level widened its
// feed-forward weights 8 times a step, SDXL's 1280-wide blocks their parts twice.
std::vector<Tensor> FeedForward::forward_chunks(const std::vector<Tensor>& xs) const {
  const Tensor& w1 = act_proj_->weight();  // [inner or 2 * inner (GEGLU), dim]
  const Tensor& b1 = act_proj_->bias();
  const Tensor& w2 = out_proj_->weight();  // [dim_out, inner]
  const Tensor& b2 = out_proj_->bias();
  std::vector<Tensor> ys(xs.size());
  const int64_t parts = (w1.numel() * 4 + kInnerPartBytes - 1) / kInnerPartBytes;
  if (parts <= 1) {
    const Tensor w1f = f32_for_chunks(w1), w2f = f32_for_chunks(w2);
    for (size_t k = 0; k < xs.size(); ++k)
      ys[k] = ops::linear(activate(ops::linear(xs[k], w1f, b1)), w2f, b2);
    return ys;
  }
  const int64_t inner = out_proj_->in_features();
  const int64_t step = (inner + parts - 1) / parts;
  auto rows_of = [](const Tensor& t, int64_t at, int64_t n) {
    return t.defined() ? t.narrow(0, at, n) : Tensor();
  };
  for (int64_t c = 0; c < inner; c += step) {
    const int64_t n = std::min(step, inner - c);
    const Tensor w1c = f32_for_chunks(w1.narrow(0, c, n));
    // GEGLU: the gate's features follow the hidden ones in the projection
    const Tensor g1c =
        kind_ == Kind::kGeglu ? f32_for_chunks(w1.narrow(0, inner + c, n)) : Tensor();
    const Tensor w2c = f32_for_chunks(w2.narrow(1, c, n));
    for (size_t k = 0; k < xs.size(); ++k) {
      const Tensor h = ops::linear(xs[k], w1c, rows_of(b1, c, n));  // [rows, n]
      const Tensor gate =
          g1c.defined() ? ops::linear(xs[k], g1c, rows_of(b1, inner + c, n)) : Tensor();
      const Tensor part = ops::linear(activate(h, gate), w2c, Tensor());  // [rows, dim_out]
      ys[k] = ys[k].defined() ? ops::add(ys[k], part) : part;
    }
  }
  if (b2.defined())
    for (Tensor& y : ys) y = ops::add(y, b2);
  return ys;
}

Tensor FeedForward::activate(const Tensor& h, const Tensor& gate) const {
  switch (kind_) {
    case Kind::kGelu:
      return ops::gelu(h);
    case Kind::kGeluTanh:
      return ops::gelu(h, true);
    case Kind::kGeglu:  // (hidden, gate) halves of h, or the gate apart
      return gate.defined() ? ops::mul(h, ops::gelu(gate)) : ops::geglu(h);
    case Kind::kApproximateGelu:
      return ops::quick_gelu(h);
  }
  return Tensor();
}

// ---------------- AdaLayerNormZero ----------------

AdaLayerNormZero::AdaLayerNormZero(int64_t embedding_dim, int64_t num_embeddings, bool bias) {
  if (num_embeddings > 0) {
    emb = register_module(
        "emb", std::make_shared<CombinedTimestepLabelEmbeddings>(num_embeddings, embedding_dim));
  }
  linear =
      register_module("linear", std::make_shared<Linear>(embedding_dim, 6 * embedding_dim, bias));
  norm = register_module("norm", std::make_shared<LayerNorm>(embedding_dim, 1e-6f, false));
}

AdaLayerNormZero::Output AdaLayerNormZero::forward(const Tensor& x, const Tensor& timestep,
                                                   const Tensor& class_labels,
                                                   const Tensor& c) const {
  Tensor cond = c;
  if (emb) {
    STIPPLE_CHECK(timestep.defined() && class_labels.defined(),
                  "AdaLayerNormZero: needs a timestep and class labels");
    cond = emb->forward(timestep, class_labels);  // [B, D]
  }
  STIPPLE_CHECK(cond.defined(), "AdaLayerNormZero: no conditioning vector (no emb, no c)");
  const Tensor mod = linear->forward(ops::silu(cond));  // [B, 6D]
  const std::vector<Tensor> m = ops::chunk(mod, 6, 1);  // 6 x [B, D]
  Output out;
  const Tensor scale_msa = m[1].unsqueeze(1), shift_msa = m[0].unsqueeze(1);  // [B, 1, D]
  out.x = ops::add(ops::mul(norm->forward(x), scale_msa + 1.0f), shift_msa);  // [B, L, D]
  out.gate_msa = m[2];
  out.shift_mlp = m[3];
  out.scale_mlp = m[4];
  out.gate_mlp = m[5];
  return out;
}

// ---------------- BasicTransformerBlock ----------------

BasicTransformerBlock::BasicTransformerBlock(const BasicTransformerBlockConfig& cfg)
    : config_(cfg) {
  STIPPLE_CHECK(cfg.dim > 0 && cfg.num_attention_heads > 0 && cfg.attention_head_dim > 0,
                "BasicTransformerBlock: dim, num_attention_heads and attention_head_dim must be "
                "positive (got ",
                cfg.dim, ", ", cfg.num_attention_heads, ", ", cfg.attention_head_dim, ")");
  STIPPLE_CHECK(cfg.norm_type == "layer_norm" || cfg.norm_type == "ada_norm_zero",
                "BasicTransformerBlock: norm_type '", cfg.norm_type,
                "' is not supported (supported: layer_norm, ada_norm_zero)");
  STIPPLE_CHECK(cfg.norm_type != "ada_norm_zero" || cfg.num_embeds_ada_norm > 0,
                "BasicTransformerBlock: norm_type ada_norm_zero needs num_embeds_ada_norm");
  STIPPLE_CHECK(cfg.attention_type == "default", "BasicTransformerBlock: attention_type '",
                cfg.attention_type, "' is not supported (supported: default)");
  STIPPLE_CHECK(!cfg.only_cross_attention || cfg.cross_attention_dim > 0,
                "BasicTransformerBlock: only_cross_attention needs cross_attention_dim");

  // 1. Self-attention (cross-attention when only_cross_attention).
  if (cfg.norm_type == "ada_norm_zero") {
    norm1_ada_zero = register_module(
        "norm1", std::make_shared<AdaLayerNormZero>(cfg.dim, cfg.num_embeds_ada_norm));
  } else {
    norm1 = register_module(
        "norm1", std::make_shared<LayerNorm>(cfg.dim, cfg.norm_eps, cfg.norm_elementwise_affine));
  }
  AttentionConfig a;
  a.query_dim = cfg.dim;
  a.heads = cfg.num_attention_heads;
  a.dim_head = cfg.attention_head_dim;
  a.bias = cfg.attention_bias;
  a.upcast_attention = cfg.upcast_attention;
  a.out_bias = cfg.attention_out_bias;
  a.cross_attention_dim = cfg.only_cross_attention ? cfg.cross_attention_dim : 0;
  attn1 = register_module("attn1", std::make_shared<Attention>(a));

  // 2. Cross-attention (or a second self-attention with double_self_attention).
  if (cfg.cross_attention_dim > 0 || cfg.double_self_attention) {
    norm2 = register_module(
        "norm2", std::make_shared<LayerNorm>(cfg.dim, cfg.norm_eps, cfg.norm_elementwise_affine));
    a.cross_attention_dim = cfg.double_self_attention ? 0 : cfg.cross_attention_dim;
    attn2 = register_module("attn2", std::make_shared<Attention>(a));
  }

  // 3. Feed-forward.
  norm3 = register_module(
      "norm3", std::make_shared<LayerNorm>(cfg.dim, cfg.norm_eps, cfg.norm_elementwise_affine));
  FeedForwardOptions f;
  f.dropout = cfg.dropout;
  f.activation_fn = cfg.activation_fn;
  f.final_dropout = cfg.final_dropout;
  f.inner_dim = cfg.ff_inner_dim;
  f.bias = cfg.ff_bias;
  ff = register_module("ff", std::make_shared<FeedForward>(cfg.dim, f));
}

Tensor BasicTransformerBlock::forward(const Tensor& hidden_states,
                                      const Tensor& encoder_hidden_states,
                                      const Tensor& attention_mask,
                                      const Tensor& encoder_attention_mask, const Tensor& timestep,
                                      const Tensor& class_labels) const {
  STIPPLE_CHECK(hidden_states.dim() == 3 && hidden_states.size(2) == config_.dim,
                "BasicTransformerBlock: expected hidden states [B, L, ", config_.dim, "], got ",
                hidden_states.describe());
  const bool ada_zero = norm1_ada_zero != nullptr;
  Tensor x = hidden_states;  // [B, L, D]

  // 1. Self-attention: x += gate_msa * attn1(LN(x) * (1 + scale_msa) + shift_msa)  (adaLN-Zero)
  //                 or x += attn1(norm1(x)).
  AdaLayerNormZero::Output ada;
  Tensor n;
  if (ada_zero) {
    ada = norm1_ada_zero->forward(x, timestep, class_labels);
    n = ada.x;  // [B, L, D]
  } else {
    n = norm1->forward(x);  // [B, L, D]
  }
  const Tensor ctx1 = config_.only_cross_attention ? encoder_hidden_states : Tensor();
  Tensor attn = attn1->forward(n, ctx1, attention_mask);           // [B, L, D]
  if (ada_zero) attn = ops::mul(ada.gate_msa.unsqueeze(1), attn);  // [B, L, D]
  x = ops::add(attn, x);                                           // [B, L, D]

  // 2. Cross-attention: x += attn2(norm2(x), context).
  if (attn2) {
    n = norm2->forward(x);  // [B, L, D]
    const Tensor ctx2 = config_.double_self_attention ? Tensor() : encoder_hidden_states;
    STIPPLE_CHECK(config_.double_self_attention || ctx2.defined(),
                  "BasicTransformerBlock: cross-attention needs encoder_hidden_states");
    x = ops::add(attn2->forward(n, ctx2, encoder_attention_mask), x);  // [B, L, D]
  }

  // 3. Feed-forward: x += gate_mlp * ff(LN(x) * (1 + scale_mlp) + shift_mlp)  or  x +=
  // ff(norm3(x)).
  n = norm3->forward(x);  // [B, L, D]
  if (ada_zero) {
    n = ops::add(ops::mul(n, ada.scale_mlp.unsqueeze(1) + 1.0f),
                 ada.shift_mlp.unsqueeze(1));  // [B, L, D]
  }
  Tensor y = ff->forward(n);                                 // [B, L, D]
  if (ada_zero) y = ops::mul(ada.gate_mlp.unsqueeze(1), y);  // [B, L, D]
  return ops::add(y, x);                                     // [B, L, D]
}

}  // namespace stipple::nn

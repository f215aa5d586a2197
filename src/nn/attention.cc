// Attention (diffusers' Attention + AttnProcessor) and the legacy attention key conversion.
#include "nn/attention.h"

#include <cmath>
#include <utility>
#include <vector>

#include "ops/ops.h"

namespace stipple::nn {

Attention::Attention(const AttentionConfig& config) : config_(config) {
  STIPPLE_CHECK(config_.query_dim > 0, "Attention: query_dim must be positive, got ",
                config_.query_dim);
  STIPPLE_CHECK(config_.dim_head > 0, "Attention: dim_head must be positive, got ",
                config_.dim_head);
  STIPPLE_CHECK(config_.out_dim >= 0 && config_.cross_attention_dim >= 0,
                "Attention: out_dim and cross_attention_dim must be non-negative");
  if (config_.out_dim > 0) {
    // diffusers: heads = out_dim // dim_head, inner_dim = out_dim.
    STIPPLE_CHECK(config_.out_dim % config_.dim_head == 0, "Attention: out_dim ", config_.out_dim,
                  " is not a multiple of dim_head ", config_.dim_head);
    heads_ = config_.out_dim / config_.dim_head;
    inner_dim_ = config_.out_dim;
    out_dim_ = config_.out_dim;
  } else {
    STIPPLE_CHECK(config_.heads > 0, "Attention: heads must be positive, got ", config_.heads);
    heads_ = config_.heads;
    inner_dim_ = config_.heads * config_.dim_head;
    out_dim_ = config_.query_dim;
  }
  if (!config_.scale_qk) {
    scale_ = 1.0f;
  } else if (config_.scale > 0.0f) {
    scale_ = config_.scale;
  } else {
    scale_ = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.dim_head)));
  }
  const int64_t kv_dim =
      config_.cross_attention_dim > 0 ? config_.cross_attention_dim : config_.query_dim;

  // Registration order follows diffusers' __init__: group_norm, to_q, to_k, to_v, to_out.
  if (config_.norm_num_groups > 0) {
    group_norm_ = register_module(
        "group_norm",
        std::make_shared<GroupNorm>(config_.norm_num_groups, config_.query_dim, config_.eps));
  }
  to_q_ = register_module("to_q",
                          std::make_shared<Linear>(config_.query_dim, inner_dim_, config_.bias));
  to_k_ = register_module("to_k", std::make_shared<Linear>(kv_dim, inner_dim_, config_.bias));
  to_v_ = register_module("to_v", std::make_shared<Linear>(kv_dim, inner_dim_, config_.bias));
  auto to_out = register_module("to_out", std::make_shared<ModuleList>());
  to_out_ = to_out->push_back(std::make_shared<Linear>(inner_dim_, out_dim_, config_.out_bias));
}

Tensor Attention::forward(const Tensor& x, const Tensor& encoder_hidden_states,
                          const Tensor& attention_mask) const {
  STIPPLE_CHECK(x.dim() == 3 || x.dim() == 4,
                "Attention: input must be [B, C, H, W] or [B, L, C], got ", x.describe());
  const bool spatial = x.dim() == 4;
  const int64_t b = x.size(0);
  const int64_t c = spatial ? x.size(1) : x.size(2);
  STIPPLE_CHECK(c == config_.query_dim, "Attention(query_dim=", config_.query_dim, "): input ",
                x.describe(), " has ", c, " channels");
  const Tensor residual = x;

  // AttnProcessor: spatial input to a sequence, group norm over channels.
  Tensor h;
  int64_t height = 0, width = 0;
  if (spatial) {
    height = x.size(2);
    width = x.size(3);
    Tensor xn = group_norm_ ? group_norm_->forward(x) : x;   // [B, C, H, W]
    // [B, HW, C], made contiguous once here rather than by each of the q, k, v projections
    h = xn.reshape({b, c, height * width}).transpose(1, 2).contiguous();
  } else if (group_norm_) {
    h = group_norm_->forward(x.transpose(1, 2)).transpose(1, 2);  // [B, L, C]
  } else {
    h = x;  // [B, L, C]
  }
  const int64_t lq = h.size(1);

  const Tensor ctx = encoder_hidden_states.defined() ? encoder_hidden_states : h;  // [B, Lk, Ck]
  STIPPLE_CHECK(ctx.dim() == 3 && ctx.size(0) == b && ctx.size(2) == to_k_->in_features(),
                "Attention: encoder_hidden_states ", ctx.describe(), " must be [", b, ", Lk, ",
                to_k_->in_features(), "]");
  const int64_t lk = ctx.size(1);
  const int64_t d = config_.dim_head;

  // Heads split from the inner dim: [B, L, h*d] -> [B, h, L, d].
  const Tensor q = to_q_->forward(h).reshape({b, lq, heads_, d}).transpose(1, 2);    // [B,h,Lq,d]
  const Tensor k = to_k_->forward(ctx).reshape({b, lk, heads_, d}).transpose(1, 2);  // [B,h,Lk,d]
  const Tensor v = to_v_->forward(ctx).reshape({b, lk, heads_, d}).transpose(1, 2);  // [B,h,Lk,d]

  Tensor mask;
  if (attention_mask.defined()) {
    const Tensor& m = attention_mask;
    STIPPLE_CHECK(m.dim() >= 2 && m.dim() <= 4 && m.size(-1) == lk && m.size(0) == b,
                  "Attention: attention_mask ", m.describe(),
                  " must be [B, Lk], [B, Lq, Lk] or [B, heads, Lq, Lk] with B = ", b,
                  ", Lk = ", lk);
    if (m.dim() == 2) {
      mask = m.reshape({b, 1, 1, lk});  // [B, 1, 1, Lk]
    } else if (m.dim() == 3) {
      mask = m.unsqueeze(1);  // [B, 1, Lq|1, Lk]
    } else {
      mask = m;  // [B, heads|1, Lq|1, Lk]
    }
  }

  Tensor o = ops::scaled_dot_product_attention(q, k, v, mask, scale_);  // [B, h, Lq, d]
  o = o.transpose(1, 2).reshape({b, lq, inner_dim_});                   // [B, Lq, h*d]
  o = to_out_->forward(o);                                              // [B, Lq, out_dim]
  if (spatial) {
    o = o.transpose(1, 2).reshape({b, out_dim_, height, width});  // [B, out, H, W]
  }
  if (config_.residual_connection) o = o + residual;  // [B, out, H, W] | [B, L, out]
  if (config_.rescale_output_factor != 1.0f) o = o / config_.rescale_output_factor;
  return o;
}

// ---------------- legacy key names ----------------

int convert_legacy_attention_keys(Module& model, std::map<std::string, Tensor>& state) {
  // The one rename table: old attention block names -> Attention's names.
  static const std::pair<const char*, const char*> kRenames[] = {
      {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
  int changed = 0;
  for (const auto& [path, module] : model.named_modules()) {
    if (dynamic_cast<Attention*>(module) == nullptr) continue;
    const std::string prefix = path.empty() ? "" : path + ".";
    for (const auto& [old_name, new_name] : kRenames) {
      for (const char* leaf : {"weight", "bias"}) {
        const std::string old_key = prefix + old_name + "." + leaf;
        const std::string new_key = prefix + new_name + "." + leaf;
        auto it = state.find(old_key);
        if (it != state.end() && state.count(new_key) == 0) {
          Tensor t = it->second;
          state.erase(it);
          state.emplace(new_key, t);
          ++changed;
        }
        // Conv-style 1x1 projection weights [O, I, 1, 1] -> Linear's [O, I].
        auto nt = state.find(new_key);
        if (nt != state.end() && nt->second.dim() == 4 && nt->second.size(2) == 1 &&
            nt->second.size(3) == 1) {
          nt->second = nt->second.reshape({nt->second.size(0), nt->second.size(1)});
          ++changed;
        }
      }
    }
  }
  return changed;
}

}  // namespace stipple::nn

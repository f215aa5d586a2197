// UNet2DConditionModel's blocks: SpatialTransformer and the down / mid / up blocks.
#include "models/unet_blocks.h"

#include "nn/resnet.h"
#include "nn/transformer_block.h"
#include "ops/ops.h"

namespace stipple::models {
namespace {

nn::ResnetBlock2DConfig resnet_config(const UNetBlockConfig& c, int64_t in, int64_t out,
                                      float output_scale_factor) {
  nn::ResnetBlock2DConfig r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = c.temb_channels;
  r.groups = c.resnet_groups;
  r.eps = c.resnet_eps;
  r.non_linearity = c.resnet_act_fn;
  r.time_embedding_norm = c.resnet_time_scale_shift;
  r.output_scale_factor = output_scale_factor;
  return r;
}

// diffusers passes `num_attention_heads, out_channels // num_attention_heads` to each
// Transformer2DModel of a cross-attention block.
SpatialTransformerConfig transformer_config(const UNetBlockConfig& c, int64_t channels,
                                            int64_t num_layers) {
  SpatialTransformerConfig t;
  t.num_attention_heads = c.num_attention_heads;
  t.attention_head_dim = channels / c.num_attention_heads;
  t.in_channels = channels;
  t.num_layers = num_layers;
  t.norm_num_groups = c.resnet_groups;
  t.cross_attention_dim = c.cross_attention_dim;
  t.use_linear_projection = c.use_linear_projection;
  t.only_cross_attention = c.only_cross_attention;
  t.upcast_attention = c.upcast_attention;
  return t;
}

int64_t layer_transformers(const UNetBlockConfig& c, int64_t i) {
  return i < static_cast<int64_t>(c.transformer_layers.size()) ? c.transformer_layers[i] : 1;
}

}  // namespace

// ---------------- SpatialTransformer (diffusers' Transformer2DModel, continuous) ----------------

SpatialTransformer::SpatialTransformer(const SpatialTransformerConfig& config) : config_(config) {
  STIPPLE_CHECK(config_.in_channels > 0 && config_.num_attention_heads > 0 &&
                    config_.attention_head_dim > 0 && config_.num_layers > 0,
                "SpatialTransformer: in_channels, heads, head dim and layers must be positive");
  if (config_.out_channels == 0) config_.out_channels = config_.in_channels;
  inner_dim_ = config_.num_attention_heads * config_.attention_head_dim;
  const int64_t in = config_.in_channels, out = config_.out_channels;
  norm_ = register_module(
      "norm", std::make_shared<nn::GroupNorm>(config_.norm_num_groups, in, 1e-6f, true));
  if (config_.use_linear_projection) {
    proj_in_linear_ = register_module("proj_in", std::make_shared<nn::Linear>(in, inner_dim_));
  } else {
    proj_in_conv_ =
        register_module("proj_in", std::make_shared<nn::Conv2d>(in, inner_dim_, 1, 1, 0));
  }
  auto list = register_module("transformer_blocks", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    nn::BasicTransformerBlockConfig b;
    b.dim = inner_dim_;
    b.num_attention_heads = config_.num_attention_heads;
    b.attention_head_dim = config_.attention_head_dim;
    b.cross_attention_dim = config_.cross_attention_dim;
    b.activation_fn = "geglu";
    b.attention_bias = false;
    b.only_cross_attention = config_.only_cross_attention;
    b.upcast_attention = config_.upcast_attention;
    b.norm_type = "layer_norm";
    b.norm_elementwise_affine = true;
    b.norm_eps = 1e-5f;
    blocks_.push_back(list->push_back(std::make_shared<nn::BasicTransformerBlock>(b)));
  }
  if (config_.use_linear_projection) {
    proj_out_linear_ = register_module("proj_out", std::make_shared<nn::Linear>(inner_dim_, out));
  } else {
    proj_out_conv_ =
        register_module("proj_out", std::make_shared<nn::Conv2d>(inner_dim_, out, 1, 1, 0));
  }
}

Tensor SpatialTransformer::forward(const Tensor& x, const Tensor& context) const {
  STIPPLE_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels, "SpatialTransformer(",
                config_.in_channels, "): input ", x.describe(), " must be [B, ",
                config_.in_channels, ", H, W]");
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  const Tensor& residual = x;     // [B, C, H, W]
  Tensor hs = norm_->forward(x);  // [B, C, H, W]
  if (proj_in_conv_) {
    hs = proj_in_conv_->forward(hs);                                // [B, inner, H, W]
    hs = hs.permute({0, 2, 3, 1}).reshape({b, h * w, inner_dim_});  // [B, HW, inner]
  } else {
    hs = hs.permute({0, 2, 3, 1}).reshape({b, h * w, config_.in_channels});  // [B, HW, C]
    hs = proj_in_linear_->forward(hs);                                       // [B, HW, inner]
  }
  for (const auto& block : blocks_) hs = block->forward(hs, context);  // [B, HW, inner]
  if (proj_out_conv_) {
    hs = hs.reshape({b, h, w, inner_dim_}).permute({0, 3, 1, 2}).contiguous();  // [B, inner, H, W]
    hs = proj_out_conv_->forward(hs);                                           // [B, Cout, H, W]
  } else {
    hs = proj_out_linear_->forward(hs);  // [B, HW, Cout]
    hs = hs.reshape({b, h, w, config_.out_channels}).permute({0, 3, 1, 2}).contiguous();
    // [B, Cout, H, W]
  }
  return hs + residual;  // [B, Cout, H, W]
}

// ---------------- DownBlock2D / CrossAttnDownBlock2D ----------------

UNetDownBlock::UNetDownBlock(const UNetBlockConfig& config) : config_(config) {
  auto resnets = register_module("resnets", std::make_shared<nn::ModuleList>());
  std::shared_ptr<nn::ModuleList> attentions;
  if (config_.has_attention)
    attentions = register_module("attentions", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const int64_t in = i == 0 ? config_.in_channels : config_.out_channels;
    resnets_.push_back(resnets->push_back(std::make_shared<nn::ResnetBlock2D>(
        resnet_config(config_, in, config_.out_channels, config_.output_scale_factor))));
    if (config_.has_attention) {
      attentions_.push_back(attentions->push_back(std::make_shared<SpatialTransformer>(
          transformer_config(config_, config_.out_channels, layer_transformers(config_, i)))));
    }
  }
  if (config_.add_sample) {
    auto down = register_module("downsamplers", std::make_shared<nn::ModuleList>());
    downsampler_ = down->push_back(std::make_shared<nn::Downsample2D>(
        config_.out_channels, /*use_conv=*/true, config_.out_channels, config_.downsample_padding,
        /*name=*/"op"));
  }
}

Tensor UNetDownBlock::forward(const Tensor& x, const Tensor& temb, const Tensor& context,
                              std::vector<Tensor>& skips) const {
  Tensor h = x;  // [B, in, H, W]
  for (size_t i = 0; i < resnets_.size(); ++i) {
    h = resnets_[i]->forward(h, temb);                                   // [B, out, H, W]
    if (config_.has_attention) h = attentions_[i]->forward(h, context);  // [B, out, H, W]
    skips.push_back(h);
  }
  if (downsampler_) {
    h = downsampler_->forward(h);  // [B, out, ceil(H/2), ceil(W/2)]
    skips.push_back(h);
  }
  return h;
}

// ---------------- UNetMidBlock2DCrossAttn ----------------

UNetMidBlock2DCrossAttn::UNetMidBlock2DCrossAttn(const UNetBlockConfig& config) {
  const int64_t c = config.in_channels;
  auto resnets = register_module("resnets", std::make_shared<nn::ModuleList>());
  auto attentions = register_module("attentions", std::make_shared<nn::ModuleList>());
  // diffusers registers `attentions` before `resnets`; names, not order, matter for loading.
  resnets_.push_back(resnets->push_back(std::make_shared<nn::ResnetBlock2D>(
      resnet_config(config, c, c, config.output_scale_factor))));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    attentions_.push_back(attentions->push_back(std::make_shared<SpatialTransformer>(
        transformer_config(config, c, layer_transformers(config, i)))));
    resnets_.push_back(resnets->push_back(std::make_shared<nn::ResnetBlock2D>(
        resnet_config(config, c, c, config.output_scale_factor))));
  }
}

Tensor UNetMidBlock2DCrossAttn::forward(const Tensor& x, const Tensor& temb,
                                        const Tensor& context) const {
  Tensor h = resnets_[0]->forward(x, temb);  // [B, C, H, W]
  for (size_t i = 0; i < attentions_.size(); ++i) {
    h = attentions_[i]->forward(h, context);  // [B, C, H, W]
    h = resnets_[i + 1]->forward(h, temb);    // [B, C, H, W]
  }
  return h;
}

// ---------------- UpBlock2D / CrossAttnUpBlock2D ----------------

UNetUpBlock::UNetUpBlock(const UNetBlockConfig& config) : config_(config) {
  auto resnets = register_module("resnets", std::make_shared<nn::ModuleList>());
  std::shared_ptr<nn::ModuleList> attentions;
  if (config_.has_attention)
    attentions = register_module("attentions", std::make_shared<nn::ModuleList>());
  const int64_t out = config_.out_channels;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    // diffusers: the last resnet's skip comes from the block input level (in_channels).
    const int64_t skip = i == config_.num_layers - 1 ? config_.in_channels : out;
    const int64_t in = i == 0 ? config_.prev_output_channel : out;
    resnets_.push_back(resnets->push_back(std::make_shared<nn::ResnetBlock2D>(
        resnet_config(config_, in + skip, out, config_.output_scale_factor))));
    if (config_.has_attention) {
      attentions_.push_back(attentions->push_back(std::make_shared<SpatialTransformer>(
          transformer_config(config_, out, layer_transformers(config_, i)))));
    }
  }
  if (config_.add_sample) {
    auto up = register_module("upsamplers", std::make_shared<nn::ModuleList>());
    upsampler_ = up->push_back(std::make_shared<nn::Upsample2D>(out, /*use_conv=*/true, out));
  }
}

Tensor UNetUpBlock::forward(const Tensor& x, const Tensor& temb, const Tensor& context,
                            std::vector<Tensor>& skips, int64_t up_h, int64_t up_w) const {
  Tensor h = x;  // [B, prev, H, W]
  for (size_t i = 0; i < resnets_.size(); ++i) {
    STIPPLE_CHECK(!skips.empty(), type_name(), ": no skip connection left to pop");
    const Tensor skip = skips.back().contiguous();  // [B, Cs, H, W]
    skips.pop_back();
    h = ops::concat({h.contiguous(), skip}, 1);                          // [B, Ch + Cs, H, W]
    h = resnets_[i]->forward(h, temb);                                   // [B, out, H, W]
    if (config_.has_attention) h = attentions_[i]->forward(h, context);  // [B, out, H, W]
  }
  if (upsampler_) h = upsampler_->forward(h.contiguous(), up_h, up_w);  // [B, out, 2H, 2W]
  return h;
}

}  // namespace stipple::models

// ResnetBlock2D, Downsample2D and Upsample2D (diffusers' resnet.py,
// downsampling.py, upsampling.py).
#include "nn/resnet.h"

#include "nn/activations.h"
#include "ops/ops.h"

namespace stipple::nn {

// ---------------- ResnetBlock2D ----------------

ResnetBlock2D::ResnetBlock2D(const ResnetBlock2DConfig& config) : config_(config) {
  ResnetBlock2DConfig& c = config_;
  STIPPLE_CHECK(c.in_channels > 0, "ResnetBlock2D: in_channels must be positive, got ",
                c.in_channels);
  if (c.out_channels <= 0) c.out_channels = c.in_channels;
  if (c.groups_out <= 0) c.groups_out = c.groups;
  if (c.conv_2d_out_channels <= 0) c.conv_2d_out_channels = c.out_channels;
  check_activation(c.non_linearity, "ResnetBlock2D non_linearity");
  STIPPLE_CHECK(c.time_embedding_norm == "default" || c.time_embedding_norm == "scale_shift",
                "ResnetBlock2D: time_embedding_norm '", c.time_embedding_norm,
                "' is not supported (default, scale_shift)");
  STIPPLE_CHECK(!(c.up && c.down), "ResnetBlock2D: up and down are exclusive");
  scale_shift_ = c.time_embedding_norm == "scale_shift";
  const bool shortcut =
      c.use_in_shortcut < 0 ? c.in_channels != c.conv_2d_out_channels : c.use_in_shortcut != 0;

  // Registration order follows diffusers' __init__.
  norm1_ = register_module("norm1", std::make_shared<GroupNorm>(c.groups, c.in_channels, c.eps));
  conv1_ =
      register_module("conv1", std::make_shared<Conv2d>(c.in_channels, c.out_channels, 3, 1, 1));
  if (c.temb_channels > 0) {
    const int64_t proj_out = scale_shift_ ? 2 * c.out_channels : c.out_channels;
    time_emb_proj_ =
        register_module("time_emb_proj", std::make_shared<Linear>(c.temb_channels, proj_out));
  }
  norm2_ =
      register_module("norm2", std::make_shared<GroupNorm>(c.groups_out, c.out_channels, c.eps));
  conv2_ = register_module(
      "conv2", std::make_shared<Conv2d>(c.out_channels, c.conv_2d_out_channels, 3, 1, 1));
  if (shortcut) {
    conv_shortcut_ = register_module(
        "conv_shortcut", std::make_shared<Conv2d>(c.in_channels, c.conv_2d_out_channels, 1, 1, 0,
                                                  c.conv_shortcut_bias));
  }
}

Tensor ResnetBlock2D::forward(const Tensor& x, const Tensor& temb) const {
  STIPPLE_CHECK(x.dim() == 4 && x.size(1) == config_.in_channels, "ResnetBlock2D(",
                config_.in_channels, " -> ", out_channels(), "): input ", x.describe(),
                " must be [B, ", config_.in_channels, ", H, W]");
  Tensor input = x;                                                        // [B, in, H, W]
  Tensor h = apply_activation(config_.non_linearity, norm1_->forward(x));  // [B, in, H, W]
  if (config_.up) {
    input = ops::upsample_nearest2x(input);  // [B, in, 2H, 2W]
    h = ops::upsample_nearest2x(h);          // [B, in, 2H, 2W]
  } else if (config_.down) {
    input = ops::avg_pool2x(input);  // [B, in, H/2, W/2]
    h = ops::avg_pool2x(h);          // [B, in, H/2, W/2]
  }
  h = conv1_->forward(h);  // [B, out, H, W]

  Tensor t;
  if (time_emb_proj_ && temb.defined()) {
    STIPPLE_CHECK(
        temb.dim() == 2 && temb.size(0) == x.size(0) && temb.size(1) == config_.temb_channels,
        "ResnetBlock2D: temb ", temb.describe(), " must be [", x.size(0), ", ",
        config_.temb_channels, "]");
    t = config_.skip_time_act ? temb : apply_activation(config_.non_linearity, temb);  // [B, temb]
    t = time_emb_proj_->forward(t);               // [B, out | 2*out]
    t = t.reshape({t.size(0), t.size(1), 1, 1});  // [B, out | 2*out, 1, 1]
  }
  if (!scale_shift_) {
    if (t.defined()) h = h + t;  // [B, out, H, W]
    h = norm2_->forward(h);      // [B, out, H, W]
  } else {
    STIPPLE_CHECK(t.defined(), "ResnetBlock2D: time_embedding_norm 'scale_shift' needs temb");
    const std::vector<Tensor> ss = ops::chunk(t, 2, 1);  // scale, shift: [B, out, 1, 1] each
    h = norm2_->forward(h);                              // [B, out, H, W]
    h = h * (ss[0] + 1.0f) + ss[1];                      // [B, out, H, W]
  }
  h = apply_activation(config_.non_linearity, h);              // [B, out, H, W]
  h = conv2_->forward(h);                                      // [B, out2, H, W]
  if (conv_shortcut_) input = conv_shortcut_->forward(input);  // [B, out2, H, W]
  Tensor out = input + h;                                      // [B, out2, H, W]
  if (config_.output_scale_factor != 1.0f) out = out / config_.output_scale_factor;
  return out;
}

// ---------------- Downsample2D ----------------

Downsample2D::Downsample2D(int64_t channels, bool use_conv, int64_t out_channels, int64_t padding,
                           const std::string& name, int64_t kernel_size, bool bias)
    : channels_(channels), use_conv_(use_conv), padding_(padding) {
  STIPPLE_CHECK(channels > 0, "Downsample2D: channels must be positive, got ", channels);
  const int64_t out = out_channels > 0 ? out_channels : channels;
  if (use_conv) {
    conv_ = std::make_shared<Conv2d>(channels, out, kernel_size, 2, padding, bias);
    if (name == "conv") register_module("Conv2d_0", conv_);
    register_module("conv", conv_);
  } else {
    STIPPLE_CHECK(out == channels, "Downsample2D: average pooling keeps the channel count (",
                  channels, " != ", out, ")");
  }
}

Tensor Downsample2D::forward(const Tensor& x) const {
  STIPPLE_CHECK(x.dim() == 4 && x.size(1) == channels_, "Downsample2D(", channels_, "): input ",
                x.describe(), " must be [B, ", channels_, ", H, W]");
  if (!conv_) return ops::avg_pool2x(x);  // [B, C, H/2, W/2]
  Tensor h = x;
  if (padding_ == 0) h = ops::pad(x, {0, 1, 0, 1});  // [B, C, H+1, W+1]
  return conv_->forward(h);                          // [B, out, H/2, W/2]
}

// ---------------- Upsample2D ----------------

Upsample2D::Upsample2D(int64_t channels, bool use_conv, int64_t out_channels,
                       const std::string& name, int64_t kernel_size, int64_t padding, bool bias)
    : channels_(channels) {
  STIPPLE_CHECK(channels > 0, "Upsample2D: channels must be positive, got ", channels);
  const int64_t out = out_channels > 0 ? out_channels : channels;
  if (use_conv) {
    conv_ = register_module(name == "conv" ? "conv" : "Conv2d_0",
                            std::make_shared<Conv2d>(channels, out, kernel_size, 1, padding, bias));
  } else {
    STIPPLE_CHECK(out == channels, "Upsample2D: without a conv the channel count stays (", channels,
                  " != ", out, ")");
  }
}

Tensor Upsample2D::forward(const Tensor& x, int64_t output_h, int64_t output_w) const {
  STIPPLE_CHECK(x.dim() == 4 && x.size(1) == channels_, "Upsample2D(", channels_, "): input ",
                x.describe(), " must be [B, ", channels_, ", H, W]");
  // diffusers' output_size (F.interpolate nearest to the skip's size) when a UNet input is not a
  // multiple of the total downscale: the skip is then 2H - 1 high, and nearest interpolation from
  // H to 2H - 1 picks source row floor(i * H / (2H - 1)) = floor(i / 2), i.e. 2x then crop.
  const int64_t out_h = output_h == 0 ? 2 * x.size(2) : output_h;
  const int64_t out_w = output_w == 0 ? 2 * x.size(3) : output_w;
  STIPPLE_CHECK((out_h == 2 * x.size(2) || out_h == 2 * x.size(2) - 1) &&
                    (out_w == 2 * x.size(3) || out_w == 2 * x.size(3) - 1),
                "Upsample2D: output size ", output_h, "x", output_w, " from ", x.describe(),
                " is neither 2x nor 2x - 1");
  Tensor h = ops::upsample_nearest2x(x);  // [B, C, 2H, 2W]
  if (out_h != h.size(2) || out_w != h.size(3))
    h = h.narrow(2, 0, out_h).narrow(3, 0, out_w).contiguous();  // [B, C, out_h, out_w]
  if (conv_) h = conv_->forward(h);                              // [B, out, 2H, 2W]
  return h;
}

}  // namespace stipple::nn

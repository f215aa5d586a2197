// AutoencoderKL (diffusers autoencoder_kl.py) with its Encoder, Decoder, UNetMidBlock2D and the
// DownEncoderBlock2D / UpDecoderBlock2D families (diffusers vae.py, unet_2d_blocks.py).
#include "models/vae.h"

#include "models/component.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "io/safetensors.h"
#include "nn/activations.h"
#include "ops/ops.h"

namespace stipple::models {
namespace {

// Every VAE GroupNorm uses eps 1e-6 (diffusers passes resnet_eps=1e-6 and eps=1e-6 throughout).
constexpr float kVaeEps = 1e-6f;

bool is_known_block(const std::string& t) {
  return t == "DownEncoderBlock2D" || t == "AttnDownEncoderBlock2D" || t == "UpDecoderBlock2D" ||
         t == "AttnUpDecoderBlock2D";
}

std::shared_ptr<nn::ResnetBlock2D> vae_resnet(int64_t in, int64_t out, int64_t groups, float eps,
                                              const std::string& act_fn) {
  nn::ResnetBlock2DConfig c;
  c.in_channels = in;
  c.out_channels = out;
  c.temb_channels = 0;  // temb_channels=None
  c.groups = groups;
  c.eps = eps;
  c.non_linearity = act_fn;
  return std::make_shared<nn::ResnetBlock2D>(c);
}

// The VAE's attention blocks: Attention(C, heads=C // head_dim, dim_head=head_dim, eps,
// norm_num_groups, residual_connection=True, bias=True, upcast_softmax=True), head_dim = C.
std::shared_ptr<nn::Attention> vae_attention(int64_t channels, int64_t groups, float eps) {
  nn::AttentionConfig c;
  c.query_dim = channels;
  c.heads = 1;
  c.dim_head = channels;
  c.bias = true;
  c.norm_num_groups = groups;
  c.eps = eps;
  c.residual_connection = true;
  c.upcast_softmax = true;
  return std::make_shared<nn::Attention>(c);
}

void call(const IntermediateHook& hook, const std::string& path, const Tensor& t) {
  if (hook) hook(path, t);
}

}  // namespace

// ---------------- config ----------------

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::JsonConfig& j) {
  AutoencoderKLConfig c;
  c.in_channels = j.integer("in_channels", c.in_channels);
  c.out_channels = j.integer("out_channels", c.out_channels);
  c.down_block_types = j.string_list("down_block_types", c.down_block_types);
  c.up_block_types = j.string_list("up_block_types", c.up_block_types);
  c.block_out_channels = j.int_list("block_out_channels", c.block_out_channels);
  c.layers_per_block = j.integer("layers_per_block", c.layers_per_block);
  c.act_fn = j.string("act_fn", c.act_fn);
  c.latent_channels = j.integer("latent_channels", c.latent_channels);
  c.norm_num_groups = j.integer("norm_num_groups", c.norm_num_groups);
  if (j.has("sample_size") && j.raw().at("sample_size").is_array()) {  // [height, width]
    const std::vector<int64_t> size = j.int_list("sample_size");
    STIPPLE_CHECK(!size.empty(), j.where(), ": \"sample_size\" is an empty list");
    c.sample_size = size[0];
  } else {
    c.sample_size = j.integer("sample_size", c.sample_size);
  }
  c.scaling_factor = j.number("scaling_factor", c.scaling_factor);
  if (j.has("shift_factor")) c.shift_factor = j.number("shift_factor");
  for (const char* key : {"latents_mean", "latents_std"}) {
    if (!j.has(key)) continue;
    const nlohmann::json& v = j.raw().at(key);
    STIPPLE_CHECK(v.is_array(), j.where(), ": \"", key, "\" must be a list of numbers or null");
    std::vector<double>& dst = std::string(key) == "latents_mean" ? c.latents_mean : c.latents_std;
    for (const auto& e : v) {
      STIPPLE_CHECK(e.is_number(), j.where(), ": \"", key, "\" must hold numbers, found ",
                    e.dump());
      dst.push_back(e.get<double>());
    }
  }
  c.force_upcast = j.boolean("force_upcast", c.force_upcast);
  c.use_quant_conv = j.boolean("use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = j.boolean("use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = j.boolean("mid_block_add_attention", c.mid_block_add_attention);
  c.validate(j.where());
  return c;
}

nlohmann::json AutoencoderKLConfig::to_json() const {
  nlohmann::json j = {{"_class_name", "AutoencoderKL"},
                      {"_diffusers_version", "0.29.0"},
                      {"in_channels", in_channels},
                      {"out_channels", out_channels},
                      {"down_block_types", down_block_types},
                      {"up_block_types", up_block_types},
                      {"block_out_channels", block_out_channels},
                      {"layers_per_block", layers_per_block},
                      {"act_fn", act_fn},
                      {"latent_channels", latent_channels},
                      {"norm_num_groups", norm_num_groups},
                      {"sample_size", sample_size},
                      {"scaling_factor", scaling_factor},
                      {"shift_factor", nullptr},
                      {"latents_mean", nullptr},
                      {"latents_std", nullptr},
                      {"force_upcast", force_upcast},
                      {"use_quant_conv", use_quant_conv},
                      {"use_post_quant_conv", use_post_quant_conv},
                      {"mid_block_add_attention", mid_block_add_attention}};
  if (shift_factor) j["shift_factor"] = *shift_factor;
  if (!latents_mean.empty()) j["latents_mean"] = latents_mean;
  if (!latents_std.empty()) j["latents_std"] = latents_std;
  return j;
}

AutoencoderKLConfig AutoencoderKLConfig::from_file(const std::string& path) {
  return from_json(io::JsonConfig::from_file(path));
}

void AutoencoderKLConfig::validate(const std::string& where) const {
  const size_t n = block_out_channels.size();
  STIPPLE_CHECK(n > 0, where, ": \"block_out_channels\" is empty");
  // Upper bounds far above any released VAE: a corrupt config fails here, naming its key.
  STIPPLE_CHECK(n <= 8, where, ": ", n, " levels in \"block_out_channels\"; at most 8");
  for (int64_t c : block_out_channels)
    STIPPLE_CHECK(c >= 1 && c <= 8192, where, ": \"block_out_channels\" entry ", c,
                  " must be in [1, 8192]");
  STIPPLE_CHECK(layers_per_block >= 1 && layers_per_block <= 64, where,
                ": \"layers_per_block\" ", layers_per_block, " must be in [1, 64]");
  STIPPLE_CHECK(in_channels <= 1024 && out_channels <= 1024 && latent_channels <= 1024, where,
                ": in_channels, out_channels and latent_channels must be at most 1024");
  STIPPLE_CHECK(norm_num_groups >= 1, where, ": \"norm_num_groups\" must be positive, got ",
                norm_num_groups);
  STIPPLE_CHECK(sample_size >= 1 && sample_size <= 65536, where, ": \"sample_size\" ",
                sample_size, " must be in [1, 65536]");
  STIPPLE_CHECK(down_block_types.size() == n, where, ": \"down_block_types\" has ",
                down_block_types.size(), " entries but \"block_out_channels\" has ", n);
  STIPPLE_CHECK(up_block_types.size() == n, where, ": \"up_block_types\" has ",
                up_block_types.size(), " entries but \"block_out_channels\" has ", n);
  for (const std::string& t : down_block_types) {
    STIPPLE_CHECK(t == "DownEncoderBlock2D" || t == "AttnDownEncoderBlock2D", where,
                  ": \"down_block_types\" entry \"", t,
                  "\" is not supported (DownEncoderBlock2D, AttnDownEncoderBlock2D)");
  }
  for (const std::string& t : up_block_types) {
    STIPPLE_CHECK(t == "UpDecoderBlock2D" || t == "AttnUpDecoderBlock2D", where,
                  ": \"up_block_types\" entry \"", t,
                  "\" is not supported (UpDecoderBlock2D, AttnUpDecoderBlock2D)");
  }
  STIPPLE_CHECK(in_channels > 0, where, ": \"in_channels\" must be positive, got ", in_channels);
  STIPPLE_CHECK(out_channels > 0, where, ": \"out_channels\" must be positive, got ", out_channels);
  STIPPLE_CHECK(latent_channels > 0, where, ": \"latent_channels\" must be positive, got ",
                latent_channels);
  STIPPLE_CHECK(layers_per_block > 0, where, ": \"layers_per_block\" must be positive, got ",
                layers_per_block);
  STIPPLE_CHECK(norm_num_groups > 0, where, ": \"norm_num_groups\" must be positive, got ",
                norm_num_groups);
  for (int64_t ch : block_out_channels) {
    STIPPLE_CHECK(ch > 0 && ch % norm_num_groups == 0, where, ": \"block_out_channels\" entry ", ch,
                  " is not a positive multiple of \"norm_num_groups\" ", norm_num_groups);
  }
  nn::check_activation(act_fn, where + ": \"act_fn\"");
  STIPPLE_CHECK(latents_mean.empty() || latents_mean.size() == static_cast<size_t>(latent_channels),
                where, ": \"latents_mean\" has ", latents_mean.size(), " entries, not ",
                latent_channels);
  STIPPLE_CHECK(latents_std.empty() || latents_std.size() == static_cast<size_t>(latent_channels),
                where, ": \"latents_std\" has ", latents_std.size(), " entries, not ",
                latent_channels);
}

// ---------------- UNetMidBlock2D ----------------

UNetMidBlock2D::UNetMidBlock2D(int64_t channels, int64_t groups, float eps,
                               const std::string& act_fn, bool add_attention, int64_t num_layers) {
  auto resnets = std::make_shared<nn::ModuleList>();
  auto attentions = std::make_shared<nn::ModuleList>();
  resnets_.push_back(resnets->push_back(vae_resnet(channels, channels, groups, eps, act_fn)));
  for (int64_t i = 0; i < num_layers; ++i) {
    if (add_attention)
      attentions_.push_back(attentions->push_back(vae_attention(channels, groups, eps)));
    resnets_.push_back(resnets->push_back(vae_resnet(channels, channels, groups, eps, act_fn)));
  }
  if (add_attention) register_module("attentions", attentions);
  register_module("resnets", resnets);
}

Tensor UNetMidBlock2D::forward(const Tensor& x) const {
  Tensor h = resnets_[0]->forward(x);  // [B, C, H, W]
  for (size_t i = 1; i < resnets_.size(); ++i) {
    if (!attentions_.empty()) h = attentions_[i - 1]->forward(h);  // [B, C, H, W]
    h = resnets_[i]->forward(h);                                   // [B, C, H, W]
  }
  return h;
}

// ---------------- DownEncoderBlock2D / UpDecoderBlock2D (and Attn variants) ----------------

VAEBlock2D::VAEBlock2D(const std::string& block_type, int64_t in_channels, int64_t out_channels,
                       int64_t num_layers, int64_t groups, float eps, const std::string& act_fn,
                       bool add_resample)
    : block_type_(block_type) {
  STIPPLE_ASSERT(is_known_block(block_type));
  const bool attn = block_type.rfind("Attn", 0) == 0;
  const bool down = block_type.find("Down") != std::string::npos;
  auto resnets = register_module("resnets", std::make_shared<nn::ModuleList>());
  std::shared_ptr<nn::ModuleList> attentions;
  if (attn) attentions = register_module("attentions", std::make_shared<nn::ModuleList>());
  for (int64_t i = 0; i < num_layers; ++i) {
    const int64_t in = i == 0 ? in_channels : out_channels;
    resnets_.push_back(resnets->push_back(vae_resnet(in, out_channels, groups, eps, act_fn)));
    if (attn)
      attentions_.push_back(attentions->push_back(vae_attention(out_channels, groups, eps)));
  }
  if (add_resample) {
    auto list = std::make_shared<nn::ModuleList>();
    if (down) {
      // The encoder's Downsample2D: padding 0 with the explicit (0, 1, 0, 1) pad, name "op".
      downsampler_ = list->push_back(
          std::make_shared<nn::Downsample2D>(out_channels, true, out_channels, 0, "op"));
      register_module("downsamplers", list);
    } else {
      upsampler_ =
          list->push_back(std::make_shared<nn::Upsample2D>(out_channels, true, out_channels));
      register_module("upsamplers", list);
    }
  }
}

Tensor VAEBlock2D::forward(const Tensor& x) const {
  Tensor h = x;  // [B, in, H, W]
  for (size_t i = 0; i < resnets_.size(); ++i) {
    h = resnets_[i]->forward(h);                               // [B, out, H, W]
    if (!attentions_.empty()) h = attentions_[i]->forward(h);  // [B, out, H, W]
  }
  if (downsampler_) h = downsampler_->forward(h);  // [B, out, H/2, W/2]
  if (upsampler_) h = upsampler_->forward(h);      // [B, out, 2H, 2W]
  return h;
}

// ---------------- Encoder ----------------

Encoder::Encoder(const AutoencoderKLConfig& c) {
  const std::vector<int64_t>& ch = c.block_out_channels;
  conv_in_ =
      register_module("conv_in", std::make_shared<nn::Conv2d>(c.in_channels, ch[0], 3, 1, 1));
  auto blocks = register_module("down_blocks", std::make_shared<nn::ModuleList>());
  int64_t out = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t in = out;
    out = ch[i];
    const bool is_final = i + 1 == ch.size();
    down_blocks_.push_back(blocks->push_back(
        std::make_shared<VAEBlock2D>(c.down_block_types[i], in, out, c.layers_per_block,
                                     c.norm_num_groups, kVaeEps, c.act_fn, !is_final)));
  }
  mid_block_ = register_module(
      "mid_block", std::make_shared<UNetMidBlock2D>(ch.back(), c.norm_num_groups, kVaeEps, c.act_fn,
                                                    c.mid_block_add_attention));
  conv_norm_out_ = register_module(
      "conv_norm_out", std::make_shared<nn::GroupNorm>(c.norm_num_groups, ch.back(), kVaeEps));
  conv_out_ = register_module(
      "conv_out", std::make_shared<nn::Conv2d>(ch.back(), 2 * c.latent_channels, 3, 1, 1));
}

Tensor Encoder::forward(const Tensor& x, const IntermediateHook& hook,
                        const std::string& prefix) const {
  Tensor h = conv_in_->forward(x);  // [B, C0, H, W]
  call(hook, prefix + "conv_in", h);
  for (size_t i = 0; i < down_blocks_.size(); ++i) {
    h = down_blocks_[i]->forward(h);  // [B, Ci, H/2^i', W/2^i']
    call(hook, prefix + "down_blocks." + std::to_string(i), h);
  }
  h = mid_block_->forward(h);  // [B, Cn, h, w]
  call(hook, prefix + "mid_block", h);
  h = conv_norm_out_->forward(h);  // [B, Cn, h, w]
  call(hook, prefix + "conv_norm_out", h);
  h = conv_out_->forward(ops::silu(h));  // [B, 2*latent, h, w]
  call(hook, prefix + "conv_out", h);
  return h;
}

// ---------------- Decoder ----------------

Decoder::Decoder(const AutoencoderKLConfig& c) {
  const std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  conv_in_ =
      register_module("conv_in", std::make_shared<nn::Conv2d>(c.latent_channels, rev[0], 3, 1, 1));
  mid_block_ = register_module(
      "mid_block", std::make_shared<UNetMidBlock2D>(rev[0], c.norm_num_groups, kVaeEps, c.act_fn,
                                                    c.mid_block_add_attention));
  auto blocks = register_module("up_blocks", std::make_shared<nn::ModuleList>());
  int64_t out = rev[0];
  for (size_t i = 0; i < rev.size(); ++i) {
    const int64_t prev = out;
    out = rev[i];
    const bool is_final = i + 1 == rev.size();
    up_blocks_.push_back(blocks->push_back(
        std::make_shared<VAEBlock2D>(c.up_block_types[i], prev, out, c.layers_per_block + 1,
                                     c.norm_num_groups, kVaeEps, c.act_fn, !is_final)));
  }
  conv_norm_out_ = register_module(
      "conv_norm_out", std::make_shared<nn::GroupNorm>(c.norm_num_groups, rev.back(), kVaeEps));
  conv_out_ = register_module("conv_out",
                              std::make_shared<nn::Conv2d>(rev.back(), c.out_channels, 3, 1, 1));
}

Tensor Decoder::forward(const Tensor& z, const IntermediateHook& hook,
                        const std::string& prefix) const {
  Tensor h = conv_in_->forward(z);  // [B, Cn, h, w]
  call(hook, prefix + "conv_in", h);
  h = mid_block_->forward(h);  // [B, Cn, h, w]
  call(hook, prefix + "mid_block", h);
  for (size_t i = 0; i < up_blocks_.size(); ++i) {
    h = up_blocks_[i]->forward(h);  // [B, C(n-i), h*2^i', w*2^i']
    call(hook, prefix + "up_blocks." + std::to_string(i), h);
  }
  h = conv_norm_out_->forward(h);  // [B, C0, H, W]
  call(hook, prefix + "conv_norm_out", h);
  h = conv_out_->forward(ops::silu(h));  // [B, out, H, W]
  call(hook, prefix + "conv_out", h);
  return h;
}

// ---------------- AutoencoderKL ----------------

Tensor DiagonalGaussian::sample(const Tensor& noise) const {
  STIPPLE_CHECK(noise.shape() == mean.shape(), "DiagonalGaussian::sample: noise ", noise.describe(),
                " must match the mean ", mean.describe());
  return mean + std * noise;  // [B, latent, h, w]
}

AutoencoderKL::AutoencoderKL(const AutoencoderKLConfig& config) : config_(config) {
  config_.validate();
  encoder_ = register_module("encoder", std::make_shared<Encoder>(config_));
  decoder_ = register_module("decoder", std::make_shared<Decoder>(config_));
  const int64_t l = config_.latent_channels;
  if (config_.use_quant_conv) {
    quant_conv_ = register_module("quant_conv", std::make_shared<nn::Conv2d>(2 * l, 2 * l, 1));
  }
  if (config_.use_post_quant_conv) {
    post_quant_conv_ = register_module("post_quant_conv", std::make_shared<nn::Conv2d>(l, l, 1));
  }
}

std::shared_ptr<AutoencoderKL> AutoencoderKL::from_pretrained(const std::string& folder) {
  namespace fs = std::filesystem;
  // A pipeline folder (model_index.json + vae/) is accepted too.
  const ComponentFiles files = find_component(folder, "AutoencoderKL", "diffusion_pytorch_model", "vae");
  const fs::path dir(files.dir), config_path(files.config);
  const io::JsonConfig j = io::JsonConfig::from_file(config_path.string());
  const std::string cls = j.string("_class_name", "AutoencoderKL");
  STIPPLE_CHECK(cls == "AutoencoderKL", config_path.string(), ": \"_class_name\" is \"", cls,
                "\", not AutoencoderKL");
  const AutoencoderKLConfig config = AutoencoderKLConfig::from_json(j);

  const fs::path weights(files.weights_file());
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights.string());
  check_config_matches(file, files.config, "encoder.conv_in.weight",
                       {config.block_out_channels.at(0), config.in_channels},
                       "[block_out_channels[0], in_channels]");
  auto model = std::make_shared<AutoencoderKL>(config);
  model->load_checkpoint(file.tensors(), weights.string());
  model->eval();
  model->freeze_for_inference();  // convolutions keep reordered weights
  return model;
}

void AutoencoderKL::load_checkpoint(std::map<std::string, Tensor> state,
                                    const std::string& source) {
  nn::convert_legacy_attention_keys(*this, state);
  load_state_dict(state, /*strict=*/true, source);
}

DiagonalGaussian AutoencoderKL::encode(const Tensor& image, const IntermediateHook& hook) const {
  STIPPLE_CHECK(image.dim() == 4 && image.size(1) == config_.in_channels,
                "AutoencoderKL.encode: image ", image.describe(), " must be [B, ",
                config_.in_channels, ", H, W]");
  Tensor moments = encoder_->forward(image, hook);  // [B, 2*latent, h, w]
  if (quant_conv_) {
    moments = quant_conv_->forward(moments);  // [B, 2*latent, h, w]
    call(hook, "quant_conv", moments);
  }
  moments = moments.contiguous();                            // plain for the chunks
  const std::vector<Tensor> mv = ops::chunk(moments, 2, 1);  // mean, logvar
  DiagonalGaussian d;
  d.mean = mv[0].contiguous();                  // [B, latent, h, w]
  d.logvar = ops::clamp(mv[1], -30.0f, 20.0f);  // [B, latent, h, w]
  d.std = ops::exp(d.logvar * 0.5f);            // [B, latent, h, w]
  return d;
}

Tensor AutoencoderKL::decode(const Tensor& z, const IntermediateHook& hook) const {
  STIPPLE_CHECK(z.dim() == 4 && z.size(1) == config_.latent_channels, "AutoencoderKL.decode: z ",
                z.describe(), " must be [B, ", config_.latent_channels, ", h, w]");
  Tensor h = z;
  if (post_quant_conv_) {
    h = post_quant_conv_->forward(h);  // [B, latent, h, w]
    call(hook, "post_quant_conv", h);
  }
  return decoder_->forward(h, hook).contiguous();  // [B, out, h*f, w*f]
}

namespace {

// diffusers' blend_v / blend_h: the first `extent` rows (columns) of b fade in from a's last ones.
// Both are plain [B, C, H, W] f32; b is changed in place.
void blend(const Tensor& a, Tensor& b, int64_t extent, bool vertical) {
  const int64_t B = b.size(0) * b.size(1), ah = a.size(2), aw = a.size(3), bh = b.size(2),
                bw = b.size(3);
  // diffusers narrows the extent to the tiles' sizes and uses it for both offset and weight.
  const int64_t n = std::min({vertical ? ah : aw, vertical ? bh : bw, extent});
  const float* pa = a.data<float>();
  float* pb = b.data<float>();
  for (int64_t c = 0; c < B; ++c) {
    for (int64_t k = 0; k < n; ++k) {
      const float t = static_cast<float>(k) / static_cast<float>(n);
      if (vertical) {  // b row k <- a row (ah - n + k)
        const float* ra = pa + (c * ah + (ah - n + k)) * aw;
        float* rb = pb + (c * bh + k) * bw;
        for (int64_t x = 0; x < std::min(aw, bw); ++x) rb[x] = ra[x] * (1 - t) + rb[x] * t;
      } else {  // b column k <- a column (aw - n + k)
        for (int64_t y = 0; y < std::min(ah, bh); ++y) {
          const float va = pa[(c * ah + y) * aw + (aw - n + k)];
          float& vb = pb[(c * bh + y) * bw + k];
          vb = va * (1 - t) + vb * t;
        }
      }
    }
  }
}

}  // namespace

Tensor AutoencoderKL::decode_tiled(const Tensor& z, int64_t tile, double overlap) const {
  STIPPLE_CHECK(z.dim() == 4 && z.size(1) == config_.latent_channels,
                "AutoencoderKL.decode_tiled: z ", z.describe(), " must be [B, ",
                config_.latent_channels, ", h, w]");
  STIPPLE_CHECK(tile >= 4 && overlap >= 0 && overlap < 1, "AutoencoderKL.decode_tiled: tile ",
                tile, " and overlap ", overlap, " must be >= 4 and in [0, 1)");
  if (z.size(2) <= tile && z.size(3) <= tile) return decode(z);
  const int64_t f = config_.downscale_factor();
  const int64_t stride = static_cast<int64_t>(tile * (1 - overlap));
  const int64_t sample_tile = tile * f;
  const int64_t extent = static_cast<int64_t>(sample_tile * overlap);
  const int64_t keep = sample_tile - extent;
  STIPPLE_CHECK(stride >= 1, "AutoencoderKL.decode_tiled: the overlap leaves no stride");
  const int64_t h = z.size(2), w = z.size(3);
  std::vector<std::vector<Tensor>> rows;
  for (int64_t i = 0; i < h; i += stride) {
    std::vector<Tensor> row;
    for (int64_t j = 0; j < w; j += stride) {
      const Tensor part = z.narrow(2, i, std::min(tile, h - i))
                              .narrow(3, j, std::min(tile, w - j))
                              .contiguous();
      // [B, C, th*f, tw*f]; the seams are blended on the CPU (a device's tiles come back)
      row.push_back(decode(part).to(Device::kCPU).to(DType::kF32).contiguous().clone());
    }
    rows.push_back(std::move(row));
  }
  std::vector<Tensor> out_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<Tensor> cropped;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      Tensor& t = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], t, extent, /*vertical=*/true);
      if (j > 0) blend(rows[i][j - 1], t, extent, /*vertical=*/false);
      cropped.push_back(
          t.narrow(2, 0, std::min(keep, t.size(2))).narrow(3, 0, std::min(keep, t.size(3))));
    }
    out_rows.push_back(ops::concat(cropped, 3));
  }
  return ops::concat(out_rows, 2).contiguous();  // [B, C, h*f, w*f]
}

}  // namespace stipple::models

// Training the emoji autoencoder: reconstruction + edge + KL, AdamW, exact resume.
#include "train/train_vae.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <fstream>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "train/datasets.h"
#include "train/emoji_data.h"
#include "train/optim.h"
#include "train/run_state.h"
#include "train/trainer.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kStateFile = "training_state.safetensors";

// |a - b| averaged, with the differences along `dim` (3: horizontal, 2: vertical).
Tensor diff(const Tensor& x, int64_t dim) {
  const int64_t n = x.size(dim);
  return x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1);
}

// Rounds [-1, 1] floats to the 8-bit values a PNG would hold.
std::vector<double> to_u8(const Tensor& x) {
  std::vector<float> v = x.contiguous().to_vector();
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = std::round(std::clamp((v[i] + 1.0f) * 127.5f, 0.0f, 255.0f));
  return out;
}


void write_vae_folder(const std::string& dir, const models::AutoencoderKL& vae, bool half) {
  fs::create_directories(dir);
  io::write_file_atomic(dir + "/config.json", vae.config().to_json().dump(2) + "\n");
  std::map<std::string, Tensor> w = vae.state_dict();
  if (half)
    for (auto& [k, v] : w) v = v.to(DType::kF16);
  io::save_safetensors(dir + "/diffusion_pytorch_model.safetensors", w, {{"format", "pt"}});
}

}  // namespace

// ---------------- metrics ----------------

double psnr(const Tensor& a, const Tensor& b) {
  STIPPLE_CHECK(a.shape() == b.shape(), "psnr: shapes differ: ", a.describe(), " vs ",
                b.describe());
  const Tensor a4 = a.dim() == 3 ? a.unsqueeze(0) : a, b4 = b.dim() == 3 ? b.unsqueeze(0) : b;
  const int64_t n = a4.size(0), per = a4.numel() / n;
  const std::vector<double> x = to_u8(a4), y = to_u8(b4);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    double se = 0;
    for (int64_t j = i * per; j < (i + 1) * per; ++j) se += (x[j] - y[j]) * (x[j] - y[j]);
    const double mse = std::max(se / per, 1e-10);
    total += 10.0 * std::log10(255.0 * 255.0 / mse);
  }
  return total / n;
}

double ssim(const Tensor& a, const Tensor& b) {
  STIPPLE_CHECK(a.shape() == b.shape(), "ssim: shapes differ: ", a.describe(), " vs ",
                b.describe());
  const Tensor a4 = a.dim() == 3 ? a.unsqueeze(0) : a, b4 = b.dim() == 3 ? b.unsqueeze(0) : b;
  const int64_t n = a4.size(0), c = a4.size(1), h = a4.size(2), w = a4.size(3);
  STIPPLE_CHECK(h >= 11 && w >= 11, "ssim: images must be at least 11x11, got ", h, "x", w);
  const std::vector<double> x = to_u8(a4), y = to_u8(b4);
  double g[11], gs = 0;
  for (int i = 0; i < 11; ++i) gs += g[i] = std::exp(-(i - 5) * (i - 5) / (2 * 1.5 * 1.5));
  for (double& v : g) v /= gs;
  const double c1 = std::pow(0.01 * 255, 2), c2 = std::pow(0.03 * 255, 2);
  double total = 0;
  int64_t count = 0;
  for (int64_t img = 0; img < n * c; ++img) {
    const double* p = x.data() + img * h * w;
    const double* q = y.data() + img * h * w;
    for (int64_t i = 0; i + 11 <= h; ++i)
      for (int64_t j = 0; j + 11 <= w; ++j) {  // "valid" windows, as scikit-image's default
        double mx = 0, my = 0, sxx = 0, syy = 0, sxy = 0;
        for (int u = 0; u < 11; ++u)
          for (int v = 0; v < 11; ++v) {
            const double wt = g[u] * g[v], px = p[(i + u) * w + j + v], py = q[(i + u) * w + j + v];
            mx += wt * px, my += wt * py;
            sxx += wt * px * px, syy += wt * py * py, sxy += wt * px * py;
          }
        sxx -= mx * mx, syy -= my * my, sxy -= mx * my;
        total += ((2 * mx * my + c1) * (2 * sxy + c2)) /
                 ((mx * mx + my * my + c1) * (sxx + syy + c2));
        ++count;
      }
  }
  return total / count;
}

// ---------------- config ----------------

json VaeTrainConfig::to_json() const {
  return json{{"data_dir", data_dir},
              {"block_out_channels", block_out_channels},
              {"layers_per_block", layers_per_block},
              {"latent_channels", latent_channels},
              {"norm_num_groups", norm_num_groups},
              {"mid_attention", mid_attention},
              {"steps", steps},
              {"batch_size", batch_size},
              {"lr", json_float(lr)},
              {"warmup", warmup},
              {"min_lr_ratio", json_float(min_lr_ratio)},
              {"weight_decay", json_float(weight_decay)},
              {"grad_clip", json_float(grad_clip)},
              {"kl_weight", json_float(kl_weight)},
              {"edge_weight", json_float(edge_weight)},
              {"checkpoint_every", checkpoint_every},
              {"log_every", log_every},
              {"seed", seed},
              {"limit_images", limit_images},
              {"out_dir", out_dir}};
}

VaeTrainConfig VaeTrainConfig::from_json(const json& j, const std::string& where) {
  const io::JsonConfig c(j, where);
  VaeTrainConfig t;
  t.data_dir = c.string("data_dir", t.data_dir);
  t.block_out_channels = c.int_list("block_out_channels", t.block_out_channels);
  t.layers_per_block = c.integer("layers_per_block", t.layers_per_block);
  t.latent_channels = c.integer("latent_channels", t.latent_channels);
  t.norm_num_groups = c.integer("norm_num_groups", t.norm_num_groups);
  t.mid_attention = c.boolean("mid_attention", t.mid_attention);
  t.steps = c.integer("steps", t.steps);
  t.batch_size = static_cast<int>(c.integer("batch_size", t.batch_size));
  t.lr = static_cast<float>(c.number("lr", t.lr));
  t.warmup = c.integer("warmup", t.warmup);
  t.min_lr_ratio = static_cast<float>(c.number("min_lr_ratio", t.min_lr_ratio));
  t.weight_decay = static_cast<float>(c.number("weight_decay", t.weight_decay));
  t.grad_clip = static_cast<float>(c.number("grad_clip", t.grad_clip));
  t.kl_weight = static_cast<float>(c.number("kl_weight", t.kl_weight));
  t.edge_weight = static_cast<float>(c.number("edge_weight", t.edge_weight));
  t.checkpoint_every = c.integer("checkpoint_every", t.checkpoint_every);
  t.log_every = c.integer("log_every", t.log_every);
  t.seed = static_cast<uint64_t>(c.integer("seed", 0));
  t.limit_images = c.integer("limit_images", t.limit_images);
  t.out_dir = c.string("out_dir", t.out_dir);
  t.validate();
  return t;
}

void VaeTrainConfig::validate() const {
  STIPPLE_CHECK(!block_out_channels.empty() && block_out_channels.size() <= 5,
                "train-vae: between 1 and 5 levels of channels are needed, got ",
                block_out_channels.size());
  for (int64_t ch : block_out_channels)
    STIPPLE_CHECK(ch >= 1 && ch <= 1024 && ch % norm_num_groups == 0, "train-vae: channel count ",
                  ch, " must be in [1, 1024] and divisible by the ", norm_num_groups,
                  " norm groups");
  STIPPLE_CHECK(layers_per_block >= 1 && layers_per_block <= 8,
                "train-vae: layers per block must be in [1, 8]");
  STIPPLE_CHECK(latent_channels >= 1 && latent_channels <= 64,
                "train-vae: latent channels must be in [1, 64]");
  STIPPLE_CHECK(norm_num_groups >= 1, "train-vae: norm groups must be positive");
  STIPPLE_CHECK(steps >= 1 && steps <= 100000000, "train-vae: steps must be in [1, 1e8]");
  STIPPLE_CHECK(batch_size >= 1 && batch_size <= 4096, "train-vae: batch size must be in [1, 4096]");
  STIPPLE_CHECK(lr > 0 && std::isfinite(lr), "train-vae: lr must be positive");
  STIPPLE_CHECK(kl_weight >= 0 && edge_weight >= 0, "train-vae: loss weights must be >= 0");
  STIPPLE_CHECK(checkpoint_every >= 1 && log_every >= 1,
                "train-vae: checkpoint and log intervals must be >= 1");
  STIPPLE_CHECK(!out_dir.empty(), "train-vae: an output folder is needed");
}

models::AutoencoderKLConfig VaeTrainConfig::model_config() const {
  models::AutoencoderKLConfig m;
  const size_t n = block_out_channels.size();
  m.block_out_channels = block_out_channels;
  m.down_block_types.assign(n, "DownEncoderBlock2D");
  m.up_block_types.assign(n, "UpDecoderBlock2D");
  m.layers_per_block = layers_per_block;
  m.latent_channels = latent_channels;
  m.norm_num_groups = norm_num_groups;
  m.sample_size = EmojiData::kImageSize;
  m.mid_block_add_attention = mid_attention;
  m.scaling_factor = 1.0;
  m.validate("train-vae");
  return m;
}

// ---------------- evaluation ----------------

VaeMetrics evaluate_vae(const models::AutoencoderKL& vae, const std::string& data_dir,
                        const std::string& recon_png) {
  autograd::NoGradGuard no_grad;
  const EmojiData data = EmojiData::load(data_dir.empty() ? EmojiData::default_dir() : data_dir);
  const std::vector<int64_t> idx = data.heldout_indices();
  const Tensor x = data.load_images(idx);  // [200, 3, 64, 64]
  std::vector<Tensor> recs;
  for (int64_t b = 0; b < x.size(0); b += 50) {
    const Tensor xb = x.narrow(0, b, std::min<int64_t>(50, x.size(0) - b));
    recs.push_back(ops::clamp(vae.decode(vae.encode(xb).mean), -1, 1));
  }
  const Tensor r = ops::concat(recs, 0);
  VaeMetrics m;
  m.heldout_images = x.size(0);
  m.psnr = psnr(r, x);
  m.ssim = ssim(r, x);
  m.scaling_factor = vae.config().scaling_factor;
  if (!recon_png.empty()) {
    // Rows of 16: originals above their reconstructions, for the first 64 held-out images.
    const int64_t k = std::min<int64_t>(64, x.size(0));
    std::vector<Tensor> rows;
    for (int64_t b = 0; b < k; b += 16) {
      const int64_t m16 = std::min<int64_t>(16, k - b);
      rows.push_back(x.narrow(0, b, m16));
      rows.push_back(r.narrow(0, b, m16));
    }
    const Tensor grid = io::make_grid(ops::concat(rows, 0), 16, 2);
    io::write_png(recon_png, io::tensor_to_image(grid),
                  {{"parameters", "stipple train-vae: held-out emoji (odd rows) and their "
                                  "reconstructions (even rows)"}});
  }
  return m;
}

// ---------------- training ----------------

VaeMetrics train_vae(const VaeTrainConfig& config_in, bool resume,
                     const std::function<void(const VaeProgress&)>& progress,
                     const std::function<void(const std::string&)>& message,
                     const std::function<bool()>& should_stop, Communicator* comm_in) {
  Communicator& comm = comm_in != nullptr ? *comm_in : single_process();
  const bool root = comm.is_root();  // rank 0 alone speaks and writes
  auto say = [&](const std::string& s) {
    if (root && message) message(s);
  };
  const std::string state_path = config_in.out_dir + "/" + kStateFile;
  RunState state;
  VaeTrainConfig config = resumed_config(config_in, resume, state_path, &state);
  config.validate();
  const std::string data_dir = config.data_dir.empty() ? EmojiData::default_dir() : config.data_dir;

  // 1. data: every training image (the held-out ones never), composited on white
  const EmojiData data = EmojiData::load(data_dir);
  std::vector<int64_t> idx = data.train_indices();
  if (config.limit_images > 0 && config.limit_images < static_cast<int64_t>(idx.size()))
    idx.resize(config.limit_images);
  const Tensor images = data.load_images(idx);  // [N, 3, 64, 64]
  const int64_t n = images.size(0);
  STIPPLE_CHECK(n >= config.batch_size, "train-vae: ", n, " images, fewer than the batch size ",
                config.batch_size);
  say(str_cat("train-vae: ", n, " training images from ", data_dir, " (", data.heldout_indices().size(),
              " held out)"));

  // 2. model, optimiser, data order, RNG
  auto vae = std::make_shared<models::AutoencoderKL>(config.model_config());
  Generator init(config.seed);
  vae->reset_parameters(init);
  vae->train();
  std::vector<Tensor> params;
  for (const auto& [name, p] : vae->named_parameters()) params.push_back(p);
  AdamW opt(params, AdamWConfig{config.lr, 0.9f, 0.999f, 1e-8f, config.weight_decay});
  DataLoader loader(images, Tensor::arange(n, DType::kI64), config.batch_size, config.seed + 2);
  Generator gen(config.seed + 1);
  int64_t step = 0;
  if (resume) {
    vae->load_state_dict(with_prefix(state.tensors, "model."), true, state_path);
    opt.load_state_dict(with_prefix(state.tensors, "optimizer."));
    loader.load_state_dict(with_prefix(state.tensors, "data."));
    gen.set_state(state.rng);
    step = state.step;
    say(str_cat("train-vae: resumed at step ", step, " of ", config.steps));
  } else {
    say(str_cat("train-vae: AutoencoderKL with ", vae->num_parameters(), " parameters, latents ",
                config.latent_channels, "x", 64 / vae->config().downscale_factor(), "x",
                64 / vae->config().downscale_factor()));
  }
  if (root) prepare_run_folder(config.out_dir, "train_config.json", config.to_json(), say);
  GradientReducer reducer;

  const RunClock clock(state.elapsed_seconds);
  auto checkpoint = [&] {
    check_same_weights(comm, params, "train-vae", step);
    if (!root) return;
    write_vae_folder(config.out_dir + "/vae", *vae, false);
    RunState s = make_run_state(step, clock.seconds(), gen, config.to_json());
    add_prefixed(s.tensors, "model.", vae->state_dict());
    add_prefixed(s.tensors, "optimizer.", opt.state_dict());
    add_prefixed(s.tensors, "data.", loader.state_dict());
    save_run_state(state_path, s, "stipple-vae-training-state");
  };
  // The log keeps the rows of earlier runs up to the resumed step.
  std::unique_ptr<CsvLog> log;
  if (root) {
    log = std::make_unique<CsvLog>(config.out_dir + "/log.csv",
                                   "step,loss,rec_l1,edge_l1,kl,lr,grad_norm,seconds");
    if (resume) log->resume(step);
  }

  // 3. train
  double w_loss = 0, w_rec = 0, w_edge = 0, w_kl = 0, w_grad = 0;
  int64_t w_n = 0;
  float shown = 0, shown_rec = 0;
  const int64_t first = step;
  while (step < config.steps) {
    // This rank's rows of the batch (all of them in one process); the noise is drawn for the
    // whole batch, so the run is the same at any rank count.
    const DataLoader::Batch batch = loader.next();
    const Shard shard = shard_of(batch.images.size(0), comm);
    const Tensor x = shard.of(batch.images);  // [n, 3, 64, 64]
    const models::DiagonalGaussian post = vae->encode(x);
    Shape noise_shape = post.mean.shape();
    noise_shape[0] = shard.batch;
    const Tensor z = post.sample(shard.of(gen.randn(noise_shape)));  // [n, 4, h, w]
    const Tensor xr = vae->decode(z);                                 // [n, 3, 64, 64]
    // Each term: the mean over this shard, times its share of the batch (1 in one process).
    auto part = [&](const Tensor& mean) { return shard.whole() ? mean : mean * shard.weight(); };
    const Tensor rec = part(ops::mean(ops::abs(xr - x)));
    const Tensor edge = part(ops::mean(ops::abs(diff(xr, 3) - diff(x, 3))) +
                             ops::mean(ops::abs(diff(xr, 2) - diff(x, 2))));
    const Tensor kl = part(ops::mean(ops::square(post.mean) + ops::square(post.std) - 1.0f -
                                     post.logvar) *
                           0.5f);
    const Tensor loss = rec + edge * config.edge_weight + kl * config.kl_weight;
    opt.zero_grad();
    loss.backward();
    reducer.reduce(comm, params, step);
    const float gn = clip_grad_norm(params, config.grad_clip > 0
                                                ? config.grad_clip
                                                : std::numeric_limits<float>::infinity());
    const float lr =
        warmup_cosine_lr(config.lr, config.warmup, config.steps, config.min_lr_ratio, step);
    opt.set_lr(lr);
    opt.step();
    ++step;
    // The batch's terms (summed over ranks) and whether any rank was asked to stop.
    float terms[5] = {loss.item(), rec.item(), edge.item(), kl.item(),
                      should_stop && should_stop() ? 1.0f : 0.0f};
    comm.allreduce_sum(terms, 5, str_cat("the loss statistics at step ", step));
    const float l = terms[0], r = terms[1];
    STIPPLE_CHECK(std::isfinite(l), "train-vae: the loss became ", l, " at step ", step,
                  " (lower --lr)");
    w_loss += l, w_rec += r, w_edge += terms[2], w_kl += terms[3], w_grad += gn, ++w_n;
    shown = step - first == 1 ? l : 0.95f * shown + 0.05f * l;
    shown_rec = step - first == 1 ? r : 0.95f * shown_rec + 0.05f * r;
    if (progress && root) progress({step, config.steps, shown, shown_rec});
    const bool stop = terms[4] > 0.5f;
    if (root && (step % config.log_every == 0 || step == config.steps || stop)) {
      char buf[192];
      std::snprintf(buf, sizeof buf, "%lld,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.2f",
                    static_cast<long long>(step), w_loss / w_n, w_rec / w_n, w_edge / w_n,
                    w_kl / w_n, lr, w_grad / w_n, clock.seconds());
      log->append(buf);
      w_loss = w_rec = w_edge = w_kl = w_grad = 0, w_n = 0;
    }
    if (step % config.checkpoint_every == 0 || step == config.steps || stop) checkpoint();
    if (stop && step < config.steps) {
      say(str_cat("train-vae: stopped at step ", step, "; continue with --resume"));
      return {};
    }
  }
  const double train_seconds = clock.seconds(), run_seconds = clock.this_run();
  if (!root) return {};

  // 4. the latent scale, the final folder and the held-out metrics
  vae->eval();
  {
    autograd::NoGradGuard no_grad;
    const int64_t k = std::min<int64_t>(n, 512);
    double sum = 0, sq = 0;
    int64_t count = 0;
    for (int64_t b = 0; b < k; b += 64) {
      const std::vector<float> m =
          vae->encode(images.narrow(0, b, std::min<int64_t>(64, k - b))).mean.to_vector();
      for (float v : m) sum += v, sq += static_cast<double>(v) * v, ++count;
    }
    const double mean = sum / count, var = sq / count - mean * mean;
    models::AutoencoderKLConfig mc = vae->config();
    mc.scaling_factor = 1.0 / std::sqrt(std::max(var, 1e-12));
    auto scaled = std::make_shared<models::AutoencoderKL>(mc);
    scaled->load_state_dict(vae->state_dict(), true, "train-vae");
    scaled->eval();
    vae = scaled;
  }
  write_vae_folder(config.out_dir + "/vae", *vae, false);
  VaeMetrics m = evaluate_vae(*vae, data_dir, config.out_dir + "/recon.png");
  {
    autograd::NoGradGuard no_grad;
    const Tensor xs = images.narrow(0, 0, std::min<int64_t>(n, 200));
    m.train_psnr = psnr(ops::clamp(vae->decode(vae->encode(xs).mean), -1, 1), xs);
  }
  const json mj = {{"heldout_psnr_db", m.psnr},       {"heldout_ssim", m.ssim},
                   {"heldout_images", m.heldout_images}, {"train_psnr_db", m.train_psnr},
                   {"scaling_factor", m.scaling_factor}, {"steps", step},
                   {"train_seconds", train_seconds},
                   {"images_per_second", (step - first) * config.batch_size /
                                             std::max(1e-9, run_seconds)}};
  io::write_file_atomic(config.out_dir + "/metrics.json", mj.dump(2) + "\n");
  say(str_cat("train-vae: wrote ", config.out_dir, "/vae (scaling_factor ", m.scaling_factor,
              "), recon.png and metrics.json"));
  return m;
}

}  // namespace stipple::train

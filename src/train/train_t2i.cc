// The emoji text-to-image job (see train_t2i.h).
#include "train/train_t2i.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "ops/ops.h"
#include "pipelines/text_dit_pipeline.h"
#include "train/emoji_data.h"
#include "train/evaluate_t2i.h"
#include "train/run_state.h"
#include "train/train_clip.h"

namespace stipple::train {

namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& t2i_sample_prompts() {
  static const std::vector<std::string> p = {
      "grinning face", "red apple",      "cat face",       "thumbs up: medium skin tone",
      "rocket",        "red heart",      "pizza",          "backhand index pointing right: light skin tone"};
  return p;
}

void copy_folder(const std::string& src, const std::string& dst) {
  STIPPLE_CHECK(fs::is_directory(src), "no such folder: ", src);
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const fs::path rel = fs::relative(e.path(), src);
    const fs::path out = fs::path(dst) / rel;
    fs::create_directories(out.parent_path());
    std::ifstream in(e.path(), std::ios::binary);
    STIPPLE_CHECK(in, "cannot read ", e.path().string());
    std::ostringstream ss;
    ss << in.rdbuf();
    io::write_file_atomic(out.string(), ss.str());
  }
}

TextDiTDenoiser::TextDiTDenoiser(const models::PixArtConfig& config, Tensor contexts,
                                 Tensor pooled, std::shared_ptr<models::AutoencoderKL> vae,
                                 std::string vae_dir, std::string clip_dir)
    : model_(std::make_shared<models::PixArtTransformer2DModel>(config)),
      tokens_(contexts.size(1)),
      channels_(contexts.size(2)),
      vae_(std::move(vae)),
      vae_dir_(std::move(vae_dir)),
      clip_dir_(std::move(clip_dir)) {
  contexts_ = contexts.contiguous().reshape({contexts.size(0), tokens_ * channels_});
  pooled_ = pooled.contiguous();
}

Tensor TextDiTDenoiser::forward(const Tensor& x, const Tensor& t, const Tensor& labels) {
  const int64_t b = x.size(0);
  const Tensor ctx = ops::embedding(contexts_, labels).reshape({b, tokens_, channels_});  // [B,T,C]
  const Tensor pooled = ops::embedding(pooled_, labels);                                   // [B, P]
  return model_->forward(x, t, ctx, pooled);  // [B, C_out, h, w]
}

void TextDiTDenoiser::to(Device device) {
  model_->to(device);
  contexts_ = contexts_.to(device);
  pooled_ = pooled_.to(device);
  if (vae_) vae_->to(device);
}

Tensor TextDiTDenoiser::to_images(const Tensor& latents) const {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> out;
  const float s = static_cast<float>(vae_->config().scaling_factor);
  for (int64_t b = 0; b < latents.size(0); b += 32) {
    const Tensor z = latents.narrow(0, b, std::min<int64_t>(32, latents.size(0) - b));
    out.push_back(vae_->decode(z / s));
  }
  return ops::concat(out, 0);
}

json TextDiTDenoiser::model_index() const {
  return json{{"_class_name", "StippleTextToImagePipeline"},
              {"_diffusers_version", "0.29.0"},
              {"transformer", {"diffusers", "PixArtTransformer2DModel"}},
              {"scheduler", {"diffusers", "DDIMScheduler"}},
              {"vae", {"diffusers", "AutoencoderKL"}},
              {"text_encoder", {"transformers", "CLIPTextModelWithProjection"}},
              {"tokenizer", {"transformers", "CLIPTokenizer"}},
              {"image_encoder", {"transformers", "CLIPVisionModelWithProjection"}}};
}

void TextDiTDenoiser::write_components(const std::string& dir) const {
  copy_folder(vae_dir_, dir + "/vae");
  for (const char* part : {"tokenizer", "text_encoder", "image_encoder"})
    copy_folder(clip_dir_ + "/" + part, dir + "/" + part);
}

std::unique_ptr<Trainer> train_text_to_image(const TrainConfig& given,
                                             const std::string& resume_dir,
                                             const TrainCallbacks& callbacks,
                                             Communicator* comm,
                                             Device device) {
  // A warm start from a whole pipeline folder brings its VAE and CLIP too, unless others are given.
  TrainConfig config = given;
  if (!config.init_from.empty() && resume_dir.empty()) {
    namespace fs = std::filesystem;
    if (config.vae_dir.empty() && fs::is_directory(fs::path(config.init_from) / "vae"))
      config.vae_dir = (fs::path(config.init_from) / "vae").string();
    if (config.clip_dir.empty() && fs::is_directory(fs::path(config.init_from) / "text_encoder"))
      config.clip_dir = config.init_from;
  }
  auto say = [&](const std::string& s) {
    if (callbacks.message) callbacks.message(s);
  };
  if (!resume_dir.empty()) Trainer::read_checkpoint_config(resume_dir);
  STIPPLE_CHECK(!config.vae_dir.empty() && !config.clip_dir.empty(),
                "text-to-image training needs a VAE folder (--vae, from stipple train-vae) and a "
                "CLIP folder (--clip, from stipple train-clip), or a text-to-image model folder "
                "to start from (--init-from) that holds both");
  const std::string data_dir = config.data_dir.empty() || config.data_dir == FashionMnist::kDefaultDir
                                   ? EmojiData::default_dir()
                                   : config.data_dir;
  auto no_grad = std::make_unique<autograd::NoGradGuard>();  // until the run starts
  // 1. the training images as latents: posterior means times the VAE's scaling factor
  const EmojiData data = EmojiData::load(data_dir);
  std::vector<int64_t> idx = data.train_indices();
  if (config.limit_images > 0 && config.limit_images < static_cast<int64_t>(idx.size()))
    idx.resize(config.limit_images);
  auto vae = models::AutoencoderKL::from_pretrained(config.vae_dir);
  const float scale = static_cast<float>(vae->config().scaling_factor);
  std::vector<Tensor> parts;
  for (size_t b = 0; b < idx.size(); b += 64) {
    const std::vector<int64_t> chunk(idx.begin() + b, idx.begin() + std::min(idx.size(), b + 64));
    parts.push_back(vae->encode(data.load_images(chunk)).mean * scale);
  }
  const Tensor latents = ops::concat(parts, 0);  // [N, 4, 16, 16]
  // 2. captions: plain and styled for each image, then the sample prompts, then "" (null)
  std::vector<std::string> captions;
  std::map<std::string, int64_t> caption_id;
  auto id_of = [&](const std::string& c) {
    const auto [it, fresh] = caption_id.emplace(c, static_cast<int64_t>(captions.size()));
    if (fresh) captions.push_back(c);
    return it->second;
  };
  std::vector<int64_t> labels;
  std::vector<Tensor> images;
  for (size_t i = 0; i < idx.size(); ++i) {
    const EmojiEntry& e = data.entries()[idx[i]];
    for (bool style : {false, true}) {
      labels.push_back(id_of(emoji_caption(e, style)));
      images.push_back(latents.narrow(0, static_cast<int64_t>(i), 1));
    }
  }
  std::vector<int64_t> sample_labels;
  for (const std::string& p : t2i_sample_prompts()) sample_labels.push_back(id_of(p));
  const Clip clip = Clip::from_pretrained(config.clip_dir);
  std::vector<std::string> all = captions;
  all.push_back("");  // the null caption, row K
  std::vector<Tensor> ctx, pooled;
  for (size_t b = 0; b < all.size(); b += 256) {
    const std::vector<std::string> part(all.begin() + b, all.begin() + std::min(all.size(), b + 256));
    auto [states, pooled_part] =  // [n, T, C], [n, P]: what the pipeline computes when sampling
        pipelines::encode_text_condition(*clip.text, *clip.tokenizer, part, /*pooled=*/true);
    ctx.push_back(states);
    pooled.push_back(pooled_part);
  }
  const Tensor contexts = ops::concat(ctx, 0), pooled_all = ops::concat(pooled, 0);
  say(str_cat("text-to-image: ", latents.size(0), " images as ", latents.size(1), "x",
              latents.size(2), "x", latents.size(3), " latents, ", captions.size(),
              " captions (", labels.size(), " image-caption pairs)"));

  // 3. the model and the run
  models::PixArtConfig pc;
  pc.num_attention_heads = config.heads;
  pc.attention_head_dim = config.width / config.heads;
  pc.in_channels = latents.size(1);
  pc.out_channels = config.learned_sigma ? 2 * latents.size(1) : latents.size(1);
  pc.num_layers = config.depth;
  pc.sample_size = latents.size(2);
  pc.patch_size = config.patch;
  pc.cross_attention_dim = pc.inner_dim();
  pc.caption_channels = contexts.size(2);
  pc.pooled_projection_dim = pooled_all.size(1);
  pc.validate("training config");
  auto denoiser = std::make_unique<TextDiTDenoiser>(pc, contexts, pooled_all, vae, config.vae_dir,
                                                    config.clip_dir);
  const int64_t n = static_cast<int64_t>(labels.size());
  auto trainer = std::make_unique<Trainer>(config, std::move(denoiser), ops::concat(images, 0),
                                           Tensor::from_vector_i64(labels, {n}), captions);
  trainer->set_sample_labels(sample_labels);
  if (comm != nullptr) trainer->set_communicator(*comm);
  no_grad.reset();
  trainer->begin(resume_dir);
  trainer->to(device);
  // Scores during training (eval.csv): the same evaluation as `stipple eval`, on fewer prompts
  // (by rank 0, which alone writes).
  TrainCallbacks cb = callbacks;
  if (!cb.evaluate && trainer->communicator().is_root()) {
    const std::string csv_path = config.out_dir + "/eval.csv";
    const int64_t resumed_at = trainer->step();
    auto log = std::make_shared<CsvLog>(
        csv_path, "step,retrieval_top1,retrieval_top5,heldout_emoji,heldout_tone,heldout_both,"
                  "fd_clip,fd_clip_floor,real_top1,sample_seconds");
    log->resume(resumed_at);
    cb.evaluate = [config, data_dir, log](const std::string& dir, int64_t step) {
      T2IEvalConfig ec;
      ec.prompts = std::min(config.eval_prompts, 1911);
      ec.data_dir = data_dir;
      const T2IEvalResult r = evaluate_text_to_image(dir, ec);
      char row[256];
      std::snprintf(row, sizeof row, "%lld,%.4f,%.4f,%.4f,%.4f,%.4f,%.5f,%.5f,%.4f,%.1f",
                    static_cast<long long>(step), r.top1, r.top5, r.heldout_emoji,
                    r.heldout_tone, r.heldout_both, r.fd, r.fd_floor, r.real_top1,
                    r.sample_seconds);
      log->append(row);
      return str_cat("eval at step ", step, ": retrieval top-1 ", r.top1, " (real ", r.real_top1,
                     "), held-out emoji ", r.heldout_emoji, ", tone ", r.heldout_tone,
                     ", FD_clip ", r.fd, " (floor ", r.fd_floor, ")");
    };
  }
  trainer->run(cb);
  return trainer;
}

}  // namespace stipple::train

// Training the emoji CLIP: symmetric InfoNCE with soft targets, AdamW, exact resume.
#include "train/train_clip.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include "autograd/grad_mode.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/safetensors.h"
#include "nn/init.h"
#include "ops/ops.h"
#include "text/clip_tokenizer_subset.h"
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

// Every rank's rows [B, P] for a contrastive loss over the whole batch: `mine` [n, P] (this rank's
// shard, keeping its gradients) in its place, the other ranks' rows as constants. One process:
// `mine` itself.
Tensor gather_rows(Communicator& comm, const Tensor& mine, const Shard& shard, int64_t step) {
  if (shard.whole()) return mine;
  const int64_t P = mine.size(1);
  std::vector<float> all(static_cast<size_t>(shard.batch * P), 0.0f);
  const std::vector<float> v = mine.detach().to_vector();
  std::copy(v.begin(), v.end(), all.begin() + shard.begin * P);
  comm.allreduce_sum(all.data(), all.size(), str_cat("the embedding gather at step ", step));
  const Tensor others = Tensor::from_vector(all, {shard.batch, P});
  std::vector<Tensor> parts;
  if (shard.begin > 0) parts.push_back(others.narrow(0, 0, shard.begin));
  parts.push_back(mine);
  const int64_t end = shard.begin + shard.size;
  if (end < shard.batch) parts.push_back(others.narrow(0, end, shard.batch - end));
  return ops::concat(parts, 0);
}

Tensor normalize_rows(const Tensor& x) {  // [N, P] -> unit rows
  return x * ops::rsqrt(ops::sum(ops::square(x), {1}, true) + 1e-12f);
}


// Shifts the batch by (dy, dx) pixels, filling with white (1).
Tensor shift(const Tensor& x, int dy, int dx) {
  if (dy == 0 && dx == 0) return x;
  const int64_t h = x.size(2), w = x.size(3);
  const int m = std::max(std::abs(dy), std::abs(dx));
  const Tensor p = ops::pad(x, {m, m, m, m}, 1.0f);  // [B, C, H+2m, W+2m]
  return p.narrow(2, m - dy, h).narrow(3, m - dx, w).contiguous();
}

models::CLIPTextConfig text_config(const ClipTrainConfig& c, const text::ClipTokenizer& tok) {
  models::CLIPTextConfig t;
  t.vocab_size = tok.vocab_size();
  t.hidden_size = c.width;
  t.intermediate_size = 4 * c.width;
  t.num_hidden_layers = c.layers;
  t.num_attention_heads = c.heads;
  t.max_position_embeddings = c.max_length;
  t.hidden_act = "gelu";
  t.projection_dim = c.projection_dim;
  t.bos_token_id = tok.bos_token_id();
  t.eos_token_id = tok.eos_token_id();
  t.pad_token_id = tok.pad_token_id();
  return t;
}

models::CLIPVisionConfig vision_config(const ClipTrainConfig& c) {
  models::CLIPVisionConfig v;
  v.hidden_size = c.width;
  v.intermediate_size = 4 * c.width;
  v.num_hidden_layers = c.layers;
  v.num_attention_heads = c.heads;
  v.image_size = EmojiData::kImageSize;
  v.patch_size = c.patch;
  v.hidden_act = "gelu";
  v.projection_dim = c.projection_dim;
  return v;
}

void init_clip(nn::Module& m, Generator& gen) {
  m.reset_parameters(gen);
  for (const auto& [name, p] : m.named_parameters()) {
    if (name.find("token_embedding") != std::string::npos ||
        name.find("class_embedding") != std::string::npos)
      nn::init::normal_(p, 0.02f, gen);
    else if (name.find("position_embedding") != std::string::npos)
      nn::init::normal_(p, 0.01f, gen);
  }
}

void save_model(const std::string& dir, const nn::Module& m, const json& config) {
  fs::create_directories(dir);
  io::write_file_atomic(dir + "/config.json", config.dump(2) + "\n");
  io::save_safetensors(dir + "/model.safetensors", m.state_dict(), {{"format", "pt"}});
}

}  // namespace

// ---------------- config ----------------

json ClipTrainConfig::to_json() const {
  return json{{"data_dir", data_dir},
              {"base_tokenizer", base_tokenizer},
              {"width", width},
              {"layers", layers},
              {"heads", heads},
              {"projection_dim", projection_dim},
              {"max_length", max_length},
              {"patch", patch},
              {"steps", steps},
              {"batch_size", batch_size},
              {"lr", json_float(lr)},
              {"warmup", warmup},
              {"weight_decay", json_float(weight_decay)},
              {"style_prob", json_float(style_prob)},
              {"max_shift", max_shift},
              {"checkpoint_every", checkpoint_every},
              {"log_every", log_every},
              {"seed", seed},
              {"limit_images", limit_images},
              {"out_dir", out_dir}};
}

ClipTrainConfig ClipTrainConfig::from_json(const json& j, const std::string& where) {
  const io::JsonConfig c(j, where);
  ClipTrainConfig t;
  t.data_dir = c.string("data_dir", t.data_dir);
  t.base_tokenizer = c.string("base_tokenizer", t.base_tokenizer);
  t.width = c.integer("width", t.width);
  t.layers = c.integer("layers", t.layers);
  t.heads = c.integer("heads", t.heads);
  t.projection_dim = c.integer("projection_dim", t.projection_dim);
  t.max_length = c.integer("max_length", t.max_length);
  t.patch = c.integer("patch", t.patch);
  t.steps = c.integer("steps", t.steps);
  t.batch_size = static_cast<int>(c.integer("batch_size", t.batch_size));
  t.lr = static_cast<float>(c.number("lr", t.lr));
  t.warmup = c.integer("warmup", t.warmup);
  t.weight_decay = static_cast<float>(c.number("weight_decay", t.weight_decay));
  t.style_prob = static_cast<float>(c.number("style_prob", t.style_prob));
  t.max_shift = static_cast<int>(c.integer("max_shift", t.max_shift));
  t.checkpoint_every = c.integer("checkpoint_every", t.checkpoint_every);
  t.log_every = c.integer("log_every", t.log_every);
  t.seed = static_cast<uint64_t>(c.integer("seed", 0));
  t.limit_images = c.integer("limit_images", t.limit_images);
  t.out_dir = c.string("out_dir", t.out_dir);
  t.validate();
  return t;
}

void ClipTrainConfig::validate() const {
  STIPPLE_CHECK(width >= 8 && width <= 4096 && heads >= 1 && width % heads == 0,
                "train-clip: width must be in [8, 4096] and divisible by heads");
  STIPPLE_CHECK(layers >= 1 && layers <= 64, "train-clip: layers must be in [1, 64]");
  STIPPLE_CHECK(projection_dim >= 1 && projection_dim <= 4096,
                "train-clip: projection dim must be in [1, 4096]");
  STIPPLE_CHECK(max_length >= 4 && max_length <= 256, "train-clip: max length must be in [4, 256]");
  STIPPLE_CHECK(patch >= 1 && EmojiData::kImageSize % patch == 0,
                "train-clip: the patch size must divide 64");
  STIPPLE_CHECK(steps >= 1 && steps <= 100000000, "train-clip: steps must be in [1, 1e8]");
  STIPPLE_CHECK(batch_size >= 2 && batch_size <= 4096, "train-clip: batch size must be in [2, 4096]");
  STIPPLE_CHECK(lr > 0 && std::isfinite(lr), "train-clip: lr must be positive");
  STIPPLE_CHECK(style_prob >= 0 && style_prob <= 1, "train-clip: style prob must be in [0, 1]");
  STIPPLE_CHECK(max_shift >= 0 && max_shift <= 16, "train-clip: max shift must be in [0, 16]");
  STIPPLE_CHECK(checkpoint_every >= 1 && log_every >= 1, "train-clip: intervals must be >= 1");
  STIPPLE_CHECK(!base_tokenizer.empty(),
                "train-clip: a base CLIP tokenizer folder is needed (vocab.json, merges.txt)");
  STIPPLE_CHECK(!out_dir.empty(), "train-clip: an output folder is needed");
}

// ---------------- Clip ----------------

Clip Clip::from_pretrained(const std::string& folder) {
  Clip c;
  c.tokenizer = std::make_shared<text::ClipTokenizer>(
      text::ClipTokenizer::from_folder(folder + "/tokenizer"));
  c.text = models::CLIPTextModel::from_pretrained(folder + "/text_encoder");
  STIPPLE_CHECK(c.text->has_projection(), folder,
                "/text_encoder: no text_projection (a CLIPTextModelWithProjection is needed)");
  c.vision = models::CLIPVisionModelWithProjection::from_pretrained(folder + "/image_encoder");
  c.max_length = c.text->config().max_position_embeddings;
  return c;
}

Tensor Clip::encode_text(const std::vector<std::string>& texts, int64_t batch) const {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> out;
  for (size_t b = 0; b < texts.size(); b += batch) {
    const std::vector<std::string> part(texts.begin() + b,
                                        texts.begin() + std::min(texts.size(), b + batch));
    const Tensor ids = tokenizer->encode_batch(part, max_length);
    out.push_back(normalize_rows(text->forward(ids).text_embeds));
  }
  return ops::concat(out, 0);
}

Tensor Clip::encode_images(const Tensor& images, int64_t batch) const {
  autograd::NoGradGuard no_grad;
  std::vector<Tensor> out;
  for (int64_t b = 0; b < images.size(0); b += batch) {
    const Tensor x = images.narrow(0, b, std::min(batch, images.size(0) - b));
    out.push_back(normalize_rows(vision->forward(x).image_embeds));
  }
  return ops::concat(out, 0);
}

// ---------------- evaluation ----------------

Retrieval retrieve(const Tensor& images, const Tensor& texts, const std::vector<int64_t>& truth) {
  const std::vector<float> s = ops::matmul(images, texts.transpose(0, 1)).to_vector();  // [N, L]
  const int64_t n = images.size(0), l = texts.size(0);
  STIPPLE_CHECK(static_cast<int64_t>(truth.size()) == n, "retrieve: ", truth.size(),
                " truths for ", n, " images");
  Retrieval r;
  r.rank.assign(n, 0);
  r.best.assign(n, 0);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = s.data() + i * l;
    for (int64_t j = 0; j < l; ++j) {
      if (row[j] > row[truth[i]]) ++r.rank[i];
      if (row[j] > row[r.best[i]]) r.best[i] = j;
    }
  }
  return r;
}

double Retrieval::top(int64_t k) const {
  int64_t hits = 0;
  for (int64_t x : rank) hits += x < k;
  return rank.empty() ? 0 : static_cast<double>(hits) / rank.size();
}

EmojiMatch match_emoji(const std::vector<int64_t>& best, const EmojiLabels& labels,
                       const std::vector<const EmojiEntry*>& truth) {
  int64_t ke = 0, kt = 0, kb = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    const EmojiEntry& p = *labels.entries[best[i]];
    const bool e = p.base_unified == truth[i]->base_unified, t = p.tones == truth[i]->tones;
    ke += e, kt += t, kb += e && t;
  }
  const double n = truth.empty() ? 1.0 : static_cast<double>(truth.size());
  return {ke / n, kt / n, kb / n};
}

ClipMetrics evaluate_clip(const Clip& clip, const std::string& data_dir) {
  const EmojiData data = EmojiData::load(data_dir.empty() ? EmojiData::default_dir() : data_dir);
  const EmojiLabels labels = data.distinct_labels();  // the candidates
  const Tensor t = clip.encode_text(labels.labels);   // [L, P]
  auto rank = [&](const std::vector<int64_t>& idx) {
    std::vector<int64_t> truth;
    std::vector<const EmojiEntry*> entries;
    for (int64_t i : idx) {
      entries.push_back(&data.entries()[i]);
      truth.push_back(labels.index.at(entries.back()->label));
    }
    const Retrieval r = retrieve(clip.encode_images(data.load_images(idx)), t, truth);
    return std::make_pair(r, match_emoji(r.best, labels, entries));
  };
  ClipMetrics m;
  m.candidates = static_cast<int64_t>(labels.labels.size());
  std::vector<int64_t> train = data.train_indices();
  // Every 7th training image: a spread over emoji, vendors and tones.
  std::vector<int64_t> sample;
  for (size_t i = 0; i < train.size() && sample.size() < 1000; i += 7) sample.push_back(train[i]);
  const auto [tr, tm] = rank(sample);
  m.train_top1 = tr.top(1), m.train_top5 = tr.top(5);
  const auto [hr, hm] = rank(data.heldout_indices());
  m.heldout_top1 = hr.top(1), m.heldout_top5 = hr.top(5);
  m.heldout_emoji = hm.emoji, m.heldout_tone = hm.tone;
  return m;
}

// ---------------- training ----------------

ClipMetrics train_clip(const ClipTrainConfig& config_in, bool resume,
                       const std::function<void(const ClipProgress&)>& progress,
                       const std::function<void(const std::string&)>& message,
                       const std::function<bool()>& should_stop, Communicator* comm_in) {
  Communicator& comm = comm_in != nullptr ? *comm_in : single_process();
  const bool root = comm.is_root();  // rank 0 alone speaks and writes
  auto say = [&](const std::string& s) {
    if (root && message) message(s);
  };
  const std::string state_path = config_in.out_dir + "/" + kStateFile;
  RunState state;
  ClipTrainConfig config = resumed_config(config_in, resume, state_path, &state);
  config.validate();
  const std::string data_dir = config.data_dir.empty() ? EmojiData::default_dir() : config.data_dir;

  // 1. data and captions; the tokenizer cut to the captions' symbols
  const EmojiData data = EmojiData::load(data_dir);
  std::vector<int64_t> idx = data.train_indices();
  if (config.limit_images > 0 && config.limit_images < static_cast<int64_t>(idx.size()))
    idx.resize(config.limit_images);
  const int64_t n = static_cast<int64_t>(idx.size());
  STIPPLE_CHECK(n >= config.batch_size, "train-clip: ", n, " images, fewer than the batch size");
  std::vector<std::string> plain, styled;
  for (int64_t i : idx) {
    plain.push_back(emoji_caption(data.entries()[i], false));
    styled.push_back(emoji_caption(data.entries()[i], true));
  }
  const std::string tok_dir = config.out_dir + "/tokenizer";
  if (!resume && root) {
    std::vector<std::string> all = plain;
    all.insert(all.end(), styled.begin(), styled.end());
    for (const auto& e : data.entries()) all.push_back(e.label);  // so eval's labels tokenize whole
    const text::TokenizerSubsetInfo info =
        text::write_tokenizer_subset(config.base_tokenizer, all, config.max_length, tok_dir);
    say(str_cat("train-clip: tokenizer with ", info.vocab_size, " symbols and ", info.merges,
                " merges in ", tok_dir));
  }
  comm.any(false, "the tokenizer folder");  // written before any rank reads it
  const text::ClipTokenizer tok = text::ClipTokenizer::from_folder(tok_dir);
  int64_t longest = 0;
  for (const auto& s : styled) longest = std::max<int64_t>(longest, tok.encode(s).size());
  if (longest > config.max_length)
    say(str_cat("train-clip: warning: the longest caption has ", longest, " tokens; captions are cut "
                "to ", config.max_length));
  const Tensor ids_plain = tok.encode_batch(plain, config.max_length);    // [N, T]
  const Tensor ids_styled = tok.encode_batch(styled, config.max_length);  // [N, T]
  const Tensor images = data.load_images(idx);                            // [N, 3, 64, 64]
  say(str_cat("train-clip: ", n, " training images and captions (the held-out ",
              data.heldout_indices().size(), " never used); longest caption ", longest, " tokens"));

  // 2. models, logit scale, optimiser
  const models::CLIPTextConfig tc = text_config(config, tok);
  const models::CLIPVisionConfig vc = vision_config(config);
  auto text_model = std::make_shared<models::CLIPTextModel>(tc, /*with_projection=*/true);
  auto vision_model = std::make_shared<models::CLIPVisionModelWithProjection>(vc);
  Generator init(config.seed);
  init_clip(*text_model, init);
  init_clip(*vision_model, init);
  text_model->train();
  vision_model->train();
  Tensor logit_scale = Tensor::scalar(std::log(1.0 / 0.07));
  logit_scale.set_requires_grad(true);
  std::vector<Tensor> params;
  for (auto* m : {static_cast<nn::Module*>(text_model.get()),
                  static_cast<nn::Module*>(vision_model.get())})
    for (const auto& [name, p] : m->named_parameters()) params.push_back(p);
  params.push_back(logit_scale);
  AdamW opt(params, AdamWConfig{config.lr, 0.9f, 0.98f, 1e-6f, config.weight_decay});
  DataLoader loader(Tensor::arange(n).reshape({n, 1}), Tensor::arange(n, DType::kI64),
                    config.batch_size, config.seed + 2);
  Generator gen(config.seed + 1);
  int64_t step = 0;
  if (resume) {
    text_model->load_state_dict(with_prefix(state.tensors, "text."), true, state_path);
    vision_model->load_state_dict(with_prefix(state.tensors, "vision."), true, state_path);
    STIPPLE_CHECK(state.tensors.count("logit_scale"), state_path, ": missing 'logit_scale'");
    logit_scale.data<float>()[0] = state.tensors.at("logit_scale").to_vector().at(0);
    opt.load_state_dict(with_prefix(state.tensors, "optimizer."));
    loader.load_state_dict(with_prefix(state.tensors, "data."));
    gen.set_state(state.rng);
    step = state.step;
    say(str_cat("train-clip: resumed at step ", step, " of ", config.steps));
  } else {
    say(str_cat("train-clip: text tower ", text_model->num_parameters(), " parameters, image tower ",
                vision_model->num_parameters()));
  }
  if (root) prepare_run_folder(config.out_dir, "train_config.json", config.to_json(), say);
  GradientReducer reducer;
  const RunClock clock(state.elapsed_seconds);
  auto write_models = [&] {
    save_model(config.out_dir + "/text_encoder", *text_model, tc.to_json(true));
    save_model(config.out_dir + "/image_encoder", *vision_model, vc.to_json());
  };
  auto checkpoint = [&] {
    check_same_weights(comm, params, "train-clip", step);
    if (!root) return;
    write_models();
    RunState s = make_run_state(step, clock.seconds(), gen, config.to_json());
    add_prefixed(s.tensors, "text.", text_model->state_dict());
    add_prefixed(s.tensors, "vision.", vision_model->state_dict());
    s.tensors["logit_scale"] = logit_scale.detach().clone();
    add_prefixed(s.tensors, "optimizer.", opt.state_dict());
    add_prefixed(s.tensors, "data.", loader.state_dict());
    save_run_state(state_path, s, "stipple-clip-training-state");
  };
  std::unique_ptr<CsvLog> log;
  if (root) {
    log = std::make_unique<CsvLog>(config.out_dir + "/log.csv",
                                   "step,loss,batch_top1,logit_scale,lr,grad_norm,seconds");
    if (resume) log->resume(step);
  }

  // 3. train
  const int64_t T = config.max_length, B = config.batch_size;
  double w_loss = 0, w_acc = 0, w_grad = 0;
  int64_t w_n = 0;
  float shown = 0, shown_acc = 0;
  const int64_t first = step;
  while (step < config.steps) {
    const DataLoader::Batch batch = loader.next();
    const std::vector<int64_t> rows = batch.labels.to_vector_i64();  // indices into idx
    const std::vector<float> coin = gen.rand({B}).to_vector();
    const int dy = config.max_shift ? static_cast<int>(gen.next_u32() % (2 * config.max_shift + 1)) -
                                          config.max_shift
                                    : 0;
    const int dx = config.max_shift ? static_cast<int>(gen.next_u32() % (2 * config.max_shift + 1)) -
                                          config.max_shift
                                    : 0;
    std::vector<int64_t> ids_v;
    std::vector<std::string> caps;
    std::vector<Tensor> ims;
    for (int64_t b = 0; b < B; ++b) {
      const bool st = coin[b] < config.style_prob;
      const Tensor& src = st ? ids_styled : ids_plain;
      const std::vector<int64_t> r = src.narrow(0, rows[b], 1).to_vector_i64();
      ids_v.insert(ids_v.end(), r.begin(), r.end());
      caps.push_back(st ? styled[rows[b]] : plain[rows[b]]);
      ims.push_back(images.narrow(0, rows[b], 1));
    }
    const Tensor ids = Tensor::from_vector_i64(ids_v, {B, T});
    const Tensor x = shift(ops::concat(ims, 0), dy, dx);  // [B, 3, 64, 64]
    // Soft targets: every pair with the same caption is a positive.
    std::vector<float> tv(B * B, 0.0f);
    for (int64_t i = 0; i < B; ++i) {
      int64_t k = 0;
      for (int64_t j = 0; j < B; ++j) k += caps[i] == caps[j];
      for (int64_t j = 0; j < B; ++j) tv[i * B + j] = caps[i] == caps[j] ? 1.0f / k : 0.0f;
    }
    const Tensor target = Tensor::from_vector(tv, {B, B});
    // This rank's rows through the towers; every rank's rows gathered (a sum of zero-padded
    // copies), with this rank's own rows keeping their gradients.
    const Shard shard = shard_of(B, comm);
    const Tensor te = gather_rows(
        comm, normalize_rows(text_model->forward(shard.of(ids)).text_embeds), shard, step);  // [B, P]
    const Tensor ve = gather_rows(
        comm, normalize_rows(vision_model->forward(shard.of(x)).image_embeds), shard, step);  // [B, P]
    // The temperature's gradient from rank 0 only: every rank computes the same whole loss.
    const Tensor scale = root ? logit_scale : logit_scale.detach();
    const Tensor logits = ops::matmul(ve, te.transpose(0, 1)) * ops::exp(scale);  // [B, B]
    const Tensor li = ops::neg(ops::mean(ops::sum(target * ops::log_softmax(logits, 1), {1})));
    const Tensor lt = ops::neg(
        ops::mean(ops::sum(target * ops::log_softmax(logits.transpose(0, 1), 1), {1})));
    const Tensor loss = (li + lt) * 0.5f;
    opt.zero_grad();
    loss.backward();
    reducer.reduce(comm, params, step);
    const float gn = clip_grad_norm(params, 1.0f);
    const float lr = warmup_cosine_lr(config.lr, config.warmup, config.steps, 0.0f, step);
    opt.set_lr(lr);
    opt.step();
    {  // CLIP clamps the temperature at 100
      float& s = logit_scale.data<float>()[0];
      s = std::min(s, static_cast<float>(std::log(100.0)));
      logit_scale.storage()->bump_version();
    }
    ++step;
    const float l = loss.item();
    STIPPLE_CHECK(std::isfinite(l), "train-clip: the loss became ", l, " at step ", step,
                  " (lower --lr)");
    const std::vector<float> lg = logits.detach().to_vector();
    int64_t right = 0;
    for (int64_t i = 0; i < B; ++i) {
      const float* r = lg.data() + i * B;
      right += tv[i * B + (std::max_element(r, r + B) - r)] > 0;
    }
    const float acc = static_cast<float>(right) / B;
    w_loss += l, w_acc += acc, w_grad += gn, ++w_n;
    shown = step - first == 1 ? l : 0.95f * shown + 0.05f * l;
    shown_acc = step - first == 1 ? acc : 0.95f * shown_acc + 0.05f * acc;
    if (progress && root) progress({step, config.steps, shown, shown_acc});
    const bool stop = comm.any(should_stop && should_stop(), str_cat("the stop check at step ", step));
    if (root && (step % config.log_every == 0 || step == config.steps || stop)) {
      char buf[160];
      std::snprintf(buf, sizeof buf, "%lld,%.6g,%.4f,%.4f,%.6g,%.4g,%.2f",
                    static_cast<long long>(step), w_loss / w_n, w_acc / w_n,
                    std::exp(logit_scale.item()), lr, w_grad / w_n, clock.seconds());
      log->append(buf);
      w_loss = w_acc = w_grad = 0, w_n = 0;
    }
    if (step % config.checkpoint_every == 0 || step == config.steps || stop) checkpoint();
    if (stop && step < config.steps) {
      say(str_cat("train-clip: stopped at step ", step, "; continue with --resume"));
      return {};
    }
  }
  const double train_seconds = clock.seconds(), run_seconds = clock.this_run();
  if (!root) return {};

  // 4. retrieval metrics with the saved folders
  const Clip clip = Clip::from_pretrained(config.out_dir);
  ClipMetrics m = evaluate_clip(clip, data_dir);
  const json mj = {{"train_top1", m.train_top1},     {"train_top5", m.train_top5},
                   {"heldout_top1", m.heldout_top1}, {"heldout_top5", m.heldout_top5},
                   {"heldout_emoji", m.heldout_emoji}, {"heldout_tone", m.heldout_tone},
                   {"candidates", m.candidates},     {"steps", step},
                   {"train_seconds", train_seconds},
                   {"images_per_second", (step - first) * config.batch_size /
                                             std::max(1e-9, run_seconds)}};
  io::write_file_atomic(config.out_dir + "/metrics.json", mj.dump(2) + "\n");
  return m;
}

}  // namespace stipple::train

// Text-to-image evaluation with the CLIP judge (see evaluate_t2i.h).
#include "train/evaluate_t2i.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "core/error.h"
#include "io/png.h"
#include "ops/ops.h"
#include "pipelines/text_dit_pipeline.h"
#include "train/emoji_data.h"
#include "train/frechet.h"
#include "train/train_clip.h"

namespace stipple::train {

void T2IEvalConfig::validate() const {
  STIPPLE_CHECK(prompts >= 2 && prompts <= 1911, "eval: prompts must be in [2, 1911], got ",
                prompts);
  STIPPLE_CHECK(steps >= 1 && steps <= 1000, "eval: steps must be in [1, 1000]");
  STIPPLE_CHECK(cfg >= 0 && cfg <= 100, "eval: cfg must be in [0, 100]");
}

T2IEvalResult evaluate_text_to_image(
    const std::string& model_dir, const T2IEvalConfig& config,
    const std::function<void(const std::string&, int, int)>& progress) {
  config.validate();
  pipelines::TextDiTPipeline pipe = pipelines::TextDiTPipeline::from_pretrained(model_dir);
  pipe.to(config.device);
  const Clip clip = Clip::from_pretrained(config.clip_dir.empty() ? model_dir : config.clip_dir);
  const EmojiData data =
      EmojiData::load(config.data_dir.empty() ? EmojiData::default_dir() : config.data_dir);
  const auto& entries = data.entries();
  T2IEvalResult r;
  r.config = config;
  r.model = model_dir;

  // 1. candidates: the 1,911 base labels; all 3,786 labels for the held-out pairs
  const std::vector<std::string> base = data.base_labels();
  std::map<std::string, int64_t> base_id;
  for (size_t i = 0; i < base.size(); ++i) base_id[base[i]] = static_cast<int64_t>(i);
  const EmojiLabels labels = data.distinct_labels();
  const Tensor base_emb = clip.encode_text(base), label_emb = clip.encode_text(labels.labels);
  r.candidates = static_cast<int64_t>(base.size());
  r.heldout_candidates = static_cast<int64_t>(labels.labels.size());

  // 2. the prompts: N base labels spread evenly, and the held-out pairs' labels
  std::vector<std::string> prompts;
  std::vector<int64_t> truth;
  for (int i = 0; i < config.prompts; ++i) {
    const int64_t k = static_cast<int64_t>(i) * static_cast<int64_t>(base.size()) / config.prompts;
    prompts.push_back(base[k]);
    truth.push_back(k);
  }
  std::vector<int64_t> held = data.heldout_indices();
  std::vector<std::string> held_prompts;
  std::vector<const EmojiEntry*> held_entries;
  std::set<std::string> seen;
  for (int64_t i : held)
    if (seen.insert(entries[i].label).second) {
      held_prompts.push_back(entries[i].label);
      held_entries.push_back(&entries[i]);
    }
  r.prompts = static_cast<int64_t>(prompts.size());
  r.heldout = static_cast<int64_t>(held_prompts.size());

  // 3. generate (image i with seed + i)
  auto generate = [&](const std::vector<std::string>& ps, uint64_t seed0, const char* phase) {
    pipelines::TextDiTParams p;
    p.prompts = ps;
    for (size_t i = 0; i < ps.size(); ++i) p.seeds.push_back(seed0 + i);
    p.steps = config.steps;
    p.cfg = config.cfg;
    p.sampler = config.sampler;
    if (progress) p.progress = [&](int done, int total) { progress(phase, done, total); };
    return ops::affine(pipe.run(p), 2.0f, -1.0f);  // [N, 3, 64, 64] in [-1, 1]
  };
  const auto t0 = std::chrono::steady_clock::now();
  const Tensor gen = generate(prompts, config.seed, "sampling prompts");
  const Tensor gen_held = generate(held_prompts, config.seed + 100000, "sampling held-out pairs");
  r.sample_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // 4. retrieval: generated and real
  const Tensor gen_emb = clip.encode_images(gen);
  const Retrieval gen_r = retrieve(gen_emb, base_emb, truth);
  r.top1 = gen_r.top(1), r.top5 = gen_r.top(5);
  // The real images of the prompts' emoji: Twemoji first, then Noto.
  const std::set<std::string> prompt_set(prompts.begin(), prompts.end());
  std::vector<int64_t> real_idx[2], real_truth;
  for (size_t i = 0; i < entries.size(); ++i)
    if (entries[i].tones.empty() && prompt_set.count(entries[i].label))
      real_idx[entries[i].vendor == "twitter" ? 0 : 1].push_back(static_cast<int64_t>(i));
  std::vector<int64_t> all_real = real_idx[0];
  all_real.insert(all_real.end(), real_idx[1].begin(), real_idx[1].end());
  for (int64_t i : all_real) real_truth.push_back(base_id.at(entries[i].label));
  const Tensor real_emb = clip.encode_images(data.load_images(all_real));
  const Retrieval real_r = retrieve(real_emb, base_emb, real_truth);
  r.real_top1 = real_r.top(1), r.real_top5 = real_r.top(5);

  // 5. held-out pairs: emoji and tone of the nearest label
  auto judge = [&](const Tensor& images, const std::vector<const EmojiEntry*>& truth_entries) {
    std::vector<int64_t> t;
    for (const EmojiEntry* e : truth_entries) t.push_back(labels.index.at(e->label));
    return match_emoji(retrieve(clip.encode_images(images), label_emb, t).best, labels,
                       truth_entries);
  };
  const EmojiMatch gen_m = judge(gen_held, held_entries);
  r.heldout_emoji = gen_m.emoji, r.heldout_tone = gen_m.tone, r.heldout_both = gen_m.both;
  std::vector<const EmojiEntry*> held_real;
  for (int64_t i : held) held_real.push_back(&entries[i]);
  const EmojiMatch real_m = judge(data.load_images(held), held_real);
  r.real_heldout_emoji = real_m.emoji, r.real_heldout_tone = real_m.tone;
  r.real_heldout_both = real_m.both;

  // 6. Fréchet distance in CLIP image embeddings, at matched N
  const int64_t nt = static_cast<int64_t>(real_idx[0].size());
  const Tensor twitter = real_emb.narrow(0, 0, nt), google = real_emb.narrow(0, nt, real_emb.size(0) - nt);
  r.fd = frechet_distance(gaussian_stats(gen_emb), gaussian_stats(twitter));
  r.fd_floor = frechet_distance(gaussian_stats(google), gaussian_stats(twitter));

  if (!config.grid.empty()) {
    const int64_t k = std::min<int64_t>(64, gen.size(0));
    const Tensor both = ops::concat({gen.narrow(0, 0, k), gen_held.narrow(0, 0, std::min<int64_t>(32, gen_held.size(0)))}, 0);
    io::write_png(config.grid, io::tensor_to_image(io::make_grid(both, 16, 2)),
                  {{"parameters", str_cat("stipple eval: the first ", k,
                                          " prompts, then held-out pairs\nSteps: ", config.steps,
                                          ", Sampler: ", config.sampler, ", CFG scale: ", config.cfg,
                                          ", Seed: ", config.seed)}});
  }
  return r;
}

std::string T2IEvalResult::table() const {
  char buf[2048];
  std::snprintf(
      buf, sizeof buf,
      "text-to-image evaluation of %s (%s, %d steps, CFG %g, seed %llu)\n"
      "                                   generated   real (ceiling)\n"
      "retrieval top-1 (%lld prompts, %lld captions)  %6.1f%%     %6.1f%%\n"
      "retrieval top-5                     %6.1f%%     %6.1f%%\n"
      "held-out pairs (%lld): emoji right   %6.1f%%     %6.1f%%\n"
      "held-out pairs: tone right          %6.1f%%     %6.1f%%\n"
      "held-out pairs: emoji and tone      %6.1f%%     %6.1f%%\n"
      "FD_clip vs real (floor: vendor vs vendor)  %8.4f   %8.4f\n",
      model.c_str(), config.sampler.c_str(), config.steps, config.cfg,
      static_cast<unsigned long long>(config.seed), static_cast<long long>(prompts),
      static_cast<long long>(candidates), 100 * top1, 100 * real_top1, 100 * top5,
      100 * real_top5, static_cast<long long>(heldout), 100 * heldout_emoji,
      100 * real_heldout_emoji, 100 * heldout_tone, 100 * real_heldout_tone, 100 * heldout_both,
      100 * real_heldout_both, fd, fd_floor);
  return buf;
}

nlohmann::json T2IEvalResult::to_json() const {
  return {{"model", model},
          {"prompts", prompts},
          {"candidates", candidates},
          {"steps", config.steps},
          {"cfg", config.cfg},
          {"sampler", config.sampler},
          {"seed", config.seed},
          {"retrieval_top1", top1},
          {"retrieval_top5", top5},
          {"real_retrieval_top1", real_top1},
          {"real_retrieval_top5", real_top5},
          {"heldout_pairs", heldout},
          {"heldout_emoji", heldout_emoji},
          {"heldout_tone", heldout_tone},
          {"heldout_both", heldout_both},
          {"real_heldout_emoji", real_heldout_emoji},
          {"real_heldout_tone", real_heldout_tone},
          {"real_heldout_both", real_heldout_both},
          {"fd_clip", fd},
          {"fd_clip_floor", fd_floor},
          {"sample_seconds", sample_seconds}};
}

}  // namespace stipple::train

// Feedback tuning (`stipple tune`): a trained class-conditional generator fine-tuned on a
// scorer's judgement of its own samples, online, by one of two methods:
//   dpo  Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference
//        Optimization", eq. 14, with the loss as its training code writes it), on best-vs-worst
//        pairs, anchored to the start by its KL weight beta;
//   rwr  reward-weighted regression (Peters & Schaal 2007; for text-to-image, Lee et al. 2023,
//        "Aligning Text-to-Image Models using Human Feedback"): the denoising loss on the
//        candidates weighted by exp(r / temperature), anchored by an L2 penalty on the weights'
//        distance from the start.
//
// One round:
//   1. candidates: K images of each tuned class drawn from the *current* weights with the
//      model's sampler (20 DPM-Solver++ 2M Karras steps, CFG 2 by default), seeds from the run
//   2. rewards r = scorer(x0, class) (Fashion-MNIST: log p(class | x0) under a classifier)
//   3. pairs: per class, the candidates sorted by reward, the i-th best against the i-th worst
//      (i < K/2); a pair is kept when r_w - r_l >= min_gap (confident pairs carry no preference)
//   4. dpo: updates_per_round AdamW steps, each on pairs_per_step of the round's pairs (a shuffled
//      cycle), each pair at timesteps_per_pair draws of t ~ U{0..T-1} and eps ~ N(0, I), both
//      shared by the two images of the pair:
//        x_t^w = sqrt(acp_t) x_w + sqrt(1 - acp_t) eps       (and x_t^l likewise)
//        e(m, x) = mean |m(x_t, t, class) - target|^2         (target: eps or v, as the model)
//        d       = [e(theta, x_w) - e(theta, x_l)] - [e(ref, x_w) - e(ref, x_l)]
//        loss    = mean over pairs and draws of -log sigmoid(-beta / 2 * d)
//      ref is the frozen starting model. The loss is DPO's: the optimum of reward maximisation
//      under a KL penalty to ref (beta its weight), so beta is the anchor that keeps the tuned
//      model near the start; nothing else holds it there.
//   4'. rwr: updates_per_round AdamW steps, each on images_per_step candidates (a shuffled cycle
//      of all of them) at timesteps_per_image draws of (t, eps):
//        w_i  = K softmax_i(r / temperature) over the K candidates of i's class (mean 1)
//        loss = mean_i w_i e(theta, x_i) + anchor / 2 * |theta - theta_start|^2
//      The weights are the exponentiated reward of the KL-regularised objective's optimum
//      (temperature its KL weight); the sample-based loss alone does not hold the model near the
//      start, so the L2 anchor does.
//
// On disk (out_dir): a model folder stipple eval, generate and the Engine open (model_index.json
// and scheduler/ copied from the starting model, transformer/ with the tuned weights in the
// starting model's dtype), rewritten at every checkpoint; tune_state.safetensors (weights, AdamW,
// RNG, step, round; the config in its metadata) and log.csv. Checkpoints fall at round ends, so
// --resume continues exactly (same thread count).
//
// Leaves out: an EMA of the tuned weights (a few hundred small steps), DDPO's policy gradient and
// reward-weighted regression (other methods can sit beside dpo_step), latent and text-conditioned
// generators (the scorer interface takes a CLIP score as well; the denoiser side is the work).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/fashion_classifier.h"

namespace stipple::train {

// What judges a sample: higher is better. Another scorer (a CLIP score, a learned reward) fills
// the same interface.
class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual std::string name() const = 0;
  // images [N, C, S, S] in [-1, 1] as the generator draws them, classes i64 -> rewards [N].
  virtual std::vector<float> score(const Tensor& images,
                                   const std::vector<int64_t>& classes) const = 0;
};

// log p(class | x) under a clean-image Fashion-MNIST classifier (stipple train-classifier).
class ClassifierScorer : public Scorer {
 public:
  explicit ClassifierScorer(std::shared_ptr<const models::FashionClassifier> classifier,
                            std::string folder = "");
  std::string name() const override;
  std::vector<float> score(const Tensor& images,
                           const std::vector<int64_t>& classes) const override;

 private:
  std::shared_ptr<const models::FashionClassifier> classifier_;
  std::string folder_;
};

struct TuneConfig {
  std::string method = "dpo";  // or "rwr"
  std::string model_dir;       // the starting generator (a stipple train folder)
  std::string classifier_dir;  // the scorer's classifier
  std::string out_dir;
  std::vector<int64_t> classes;  // tuned classes; empty: all
  // ---- candidates ----
  int candidates = 8;  // K per class and round
  int sample_steps = 20;
  std::string sampler = "dpm++2m_karras";
  float cfg = 2.0f;
  float min_gap = 0.5f;  // reward margin for a pair
  // ---- the updates ----
  float beta = 2000.0f;        // dpo: the KL weight
  float temperature = 0.5f;    // rwr: of exp(r / temperature)
  float anchor = 1e-2f;        // rwr: L2 weight on the distance from the start
  int64_t steps = 200;  // AdamW steps in all
  int updates_per_round = 8;
  int pairs_per_step = 16;   // dpo
  int images_per_step = 32;  // rwr
  int timesteps_per_image = 4;  // (t, eps) draws per pair (dpo) or image (rwr) in a step
  float lr = 1e-5f;
  int64_t warmup = 20;
  float grad_clip = 1.0f;
  int max_empty_rounds = 20;  // rounds in a row without a pair end the run
  int64_t checkpoint_every = 40;  // steps (taken at the end of the round that reaches it)
  uint64_t seed = 0;

  nlohmann::json to_json() const;
  static TuneConfig from_json(const nlohmann::json& j, const std::string& where);
  void validate() const;
};

struct TuneProgress {
  int64_t step = 0, total = 0, round = 0;
  float loss = 0;            // mean DPO loss of the last round (log 2 at the start)
  float reward = 0;          // mean reward of the last round's candidates
  float implicit_accuracy = 0;  // dpo: share of pairs with d < 0 (the tuned model prefers the winner)
  float weight_ess = 0;  // rwr: the weights' effective sample size, as a share of the candidates
  int64_t pairs = 0;         // pairs of the last round
};

struct TuneResult {
  int64_t steps = 0, rounds = 0;
  bool stopped = false;  // should_stop ended it (resume later)
  std::vector<float> round_reward;  // mean candidate reward of every round of this process
  double seconds = 0;
};

// The pairs of one class's candidates (indices into `rewards`): sorted by reward, best against
// worst inward; kept when the gap is at least min_gap.
std::vector<std::pair<int64_t, int64_t>> preference_pairs(const std::vector<float>& rewards,
                                                          float min_gap);

// The per-pair Diffusion-DPO loss from the four errors (each [P]): -log sigmoid(-beta/2 * d).
Tensor dpo_loss(const Tensor& err_w, const Tensor& err_l, const Tensor& ref_w, const Tensor& ref_l,
                float beta);

// The reward-weighted loss from the errors err [M] and weights [M], plus anchor / 2 times the
// squared distance of `params` from `start` (same order and shapes; unused when anchor is 0).
Tensor rwr_loss(const Tensor& err, const Tensor& weights, const std::vector<Tensor>& params,
                const std::vector<Tensor>& start, float anchor);

// Runs (or with `resume`, continues) a tuning run. The scorer judges the candidates; without one
// a ClassifierScorer on config.classifier_dir does.
TuneResult tune(const TuneConfig& config, bool resume,
                const std::function<void(const TuneProgress&)>& progress = {},
                const std::function<void(const std::string&)>& message = {},
                const std::function<bool()>& should_stop = {},
                std::shared_ptr<const Scorer> scorer = nullptr);

}  // namespace stipple::train

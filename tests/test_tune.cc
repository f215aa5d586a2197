// Feedback tuning (train/tune.h): the preference pairs, the Diffusion-DPO loss against its formula
// and by finite differences, a whole tuning run on a tiny random generator and classifier (the
// output opens as a model, the weights move, the reference does not), exact resume, and the
// errors users can make.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "stipple/stipple.h"
#include "support/numerics.h"
#include "support/scratch_dir.h"
#include "support/tiny_models.h"
#include "train/evaluate.h"
#include "train/tune.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

std::string temp_dir(const std::string& name) {
  return testing::scratch_dir("tune", name);
}

TEST(Tune, PreferencePairsBestAgainstWorstInward) {
  // sorted: 4 (0.9), 1 (0.5), 3 (0.2), 0 (-1), 2 (-3), 5 (-3.5)
  const std::vector<float> r = {-1.0f, 0.5f, -3.0f, 0.2f, 0.9f, -3.5f};
  const auto all = preference_pairs(r, 0.0f);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0], std::make_pair(int64_t{4}, int64_t{5}));
  EXPECT_EQ(all[1], std::make_pair(int64_t{1}, int64_t{2}));
  EXPECT_EQ(all[2], std::make_pair(int64_t{3}, int64_t{0}));
  // the inner pair's gap is 1.2: a margin of 2 keeps the outer two only
  const auto wide = preference_pairs(r, 2.0f);
  ASSERT_EQ(wide.size(), 2u);
  EXPECT_EQ(wide[1], std::make_pair(int64_t{1}, int64_t{2}));
  EXPECT_TRUE(preference_pairs({0.1f, 0.1f, 0.1f}, 0.01f).empty());  // ties carry no preference
  EXPECT_EQ(preference_pairs({1.0f, 0.0f, 5.0f}, 0.0f).size(), 1u);  // odd count: middle unused
}

TEST(Tune, DpoLossIsMinusLogSigmoidOfTheScaledMargin) {
  const std::vector<float> ew = {0.10f, 0.30f, 0.05f, 0.2f}, el = {0.20f, 0.10f, 0.05f, 0.9f},
                           rw = {0.15f, 0.20f, 0.07f, 0.2f}, rl = {0.15f, 0.20f, 0.02f, 0.1f};
  const float beta = 40.0f;
  auto t = [](const std::vector<float>& v) { return Tensor::from_vector(v, {4}); };
  const std::vector<float> got = dpo_loss(t(ew), t(el), t(rw), t(rl), beta).to_vector();
  for (size_t i = 0; i < 4; ++i) {
    const double d = (ew[i] - el[i]) - (rw[i] - rl[i]);
    const double z = -0.5 * beta * d;
    EXPECT_NEAR(got[i], std::log1p(std::exp(-z)), 1e-5) << i;  // -log sigmoid(z)
  }
  // equal policy and reference: log 2 whatever the errors
  EXPECT_NEAR(dpo_loss(t(ew), t(el), t(ew), t(el), beta).to_vector()[1], std::log(2.0), 1e-6);
  // no overflow where sigmoid saturates (z = -1e4 and 1e4)
  const std::vector<float> far =
      dpo_loss(t({10, 0, 0, 0}), t({0, 10, 0, 0}), t({0, 0, 0, 0}), t({0, 0, 0, 0}), 2000.0f)
          .to_vector();
  EXPECT_NEAR(far[0], 1e4, 1.0);
  EXPECT_NEAR(far[1], 0.0, 1e-6);
  EXPECT_THROW(dpo_loss(t(ew), Tensor::zeros({3}), t(rw), t(rl), beta), Error);
}

TEST(Tune, DpoLossGradcheck) {
  std::vector<Tensor> in;
  for (uint64_t s = 0; s < 4; ++s) {
    Tensor x = testing::random_tensor({5}, 30 + s, 0.0f, 0.2f);
    x.set_requires_grad(s < 2);  // the policy's errors carry the gradient
    in.push_back(x);
  }
  EXPECT_GRADCHECK("dpo_loss",
                   [](const std::vector<Tensor>& v) { return dpo_loss(v[0], v[1], v[2], v[3], 30.0f); },
                   in);
}

// A tuning config on the tiny random generator and classifier: 2 classes, 4 candidates each,
// 2 sampling steps, every pair kept.
TuneConfig tiny_config(const std::string& dir) {
  TuneConfig c;
  c.model_dir = testing::write_tiny_generator(dir + "/start", /*half=*/true);
  c.classifier_dir = dir + "/clf";
  if (!fs::exists(c.classifier_dir)) testing::tiny_fashion_classifier()->save_pretrained(c.classifier_dir);
  c.classes = {1, 8};
  c.candidates = 4;
  c.sample_steps = 2;
  c.min_gap = 0.0f;
  c.beta = 500.0f;
  c.lr = 1e-3f;
  c.warmup = 0;
  c.updates_per_round = 2;
  c.pairs_per_step = 3;
  c.steps = 4;
  c.checkpoint_every = 2;
  return c;
}

std::map<std::string, Tensor> weights_of(const std::string& model) {
  return io::load_safetensors(model + "/transformer/diffusion_pytorch_model.safetensors");
}

// The largest change of any weight between two folders' transformers (same names).
double max_change(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  double moved = 0;
  for (const auto& [k, v] : a) {
    const std::vector<float> x = v.to(DType::kF32).to_vector(),
                             y = b.at(k).to(DType::kF32).to_vector();
    for (size_t i = 0; i < x.size(); ++i) moved = std::max(moved, double(std::abs(x[i] - y[i])));
  }
  return moved;
}

TEST(Tune, RunTunesTheModelAndWritesAModelFolder) {
  const std::string dir = temp_dir("run");
  TuneConfig c = tiny_config(dir);
  c.out_dir = dir + "/out";
  std::vector<TuneProgress> seen;
  const TuneResult r = tune(c, false, [&](const TuneProgress& p) { seen.push_back(p); });
  EXPECT_EQ(r.steps, 4);
  EXPECT_EQ(r.rounds, 2);
  EXPECT_FALSE(r.stopped);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].pairs, 4);  // 2 classes x 4 candidates / 2
  EXPECT_GT(seen[0].loss, 0.0f);
  ASSERT_EQ(r.round_reward.size(), 2u);
  EXPECT_LT(r.round_reward[0], 0.0f);  // log-probabilities

  // the weights moved from the start; the start (the reference) is untouched; the starting
  // model's dtype (f16) is kept
  const auto before = weights_of(c.model_dir), after = weights_of(c.out_dir);
  ASSERT_EQ(before.size(), after.size());
  for (const auto& [k, v] : after) EXPECT_EQ(v.dtype(), DType::kF16) << k;
  EXPECT_GT(max_change(after, before), 1e-4);
  EXPECT_EQ(weights_of(tiny_config(dir + "/again").model_dir).size(), before.size());

  // the folder is a model: stipple eval's loader and the public API open it and draw the class
  const ClassGenerator g = ClassGenerator::load(c.out_dir);
  EXPECT_EQ(g.class_names()[8], "bag");
  Engine engine = Engine::open(c.out_dir);
  GenerateRequest req;
  req.class_labels = {"bag"};
  req.steps = 2;
  const GenerateResult out = engine.generate(req);
  ASSERT_EQ(out.images.size(), 1u);
  EXPECT_EQ(out.images[0].image.width, 28);  // the frame cropped off

  // the log: a header and a row per round
  std::ifstream log(c.out_dir + "/log.csv");
  std::string line;
  int rows = 0;
  std::getline(log, line);
  EXPECT_EQ(line.rfind("step,round,pairs,loss,implicit_accuracy,weight_ess,reward_mean", 0), 0u);
  while (std::getline(log, line)) ++rows;
  EXPECT_EQ(rows, 2);
}

TEST(Tune, ResumeIsBitExact) {
  const std::string dir = temp_dir("resume");
  TuneConfig whole = tiny_config(dir);
  whole.out_dir = dir + "/whole";
  tune(whole, false);

  TuneConfig part = whole;
  part.out_dir = dir + "/part";
  part.steps = 2;
  EXPECT_EQ(tune(part, false).steps, 2);
  TuneConfig more;  // a resume takes the run's settings from its state, --steps from the call
  more.model_dir = "ignored";
  more.out_dir = part.out_dir;
  more.steps = 4;
  const TuneResult r = tune(more, true);
  EXPECT_EQ(r.steps, 4);
  EXPECT_EQ(r.rounds, 2);
  EXPECT_EQ(max_change(weights_of(whole.out_dir), weights_of(part.out_dir)), 0.0);
  // the logs agree row for row but for the wall-clock column
  auto rows = [](const std::string& path) {
    std::ifstream f(path);
    std::vector<std::string> out;
    for (std::string l; std::getline(f, l);) out.push_back(l.substr(0, l.rfind(',')));
    return out;
  };
  EXPECT_EQ(rows(whole.out_dir + "/log.csv"), rows(part.out_dir + "/log.csv"));
}

TEST(Tune, StopEndsAtTheRoundWithACheckpoint) {
  const std::string dir = temp_dir("stop");
  TuneConfig c = tiny_config(dir);
  c.out_dir = dir + "/out";
  c.steps = 100;
  const TuneResult r = tune(c, false, {}, {}, [] { return true; });
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.steps, 2);  // one round of 2 updates
  EXPECT_TRUE(fs::exists(c.out_dir + "/tune_state.safetensors"));
  // starting afresh over it would lose the run: refused
  expect_error([&] { tune(c, false); }, ErrorKind::kInvalidArgument,
               "holds a tuning run already (continue it with --resume");
  c.steps = 4;
  EXPECT_EQ(tune(c, true).steps, 4);
}

TEST(Tune, NoPairsEndsTheRunAndSaysWhy) {
  const std::string dir = temp_dir("nopairs");
  TuneConfig c = tiny_config(dir);
  c.out_dir = dir + "/out";
  c.min_gap = 1e6f;
  c.max_empty_rounds = 2;
  std::string said;
  const TuneResult r = tune(c, false, {}, [&](const std::string& s) { said += s; });
  EXPECT_EQ(r.steps, 0);
  EXPECT_EQ(r.rounds, 2);
  EXPECT_NE(said.find("gave no pair with a reward gap"), std::string::npos) << said;
  EXPECT_TRUE(fs::exists(c.out_dir + "/transformer/diffusion_pytorch_model.safetensors"));
}

TEST(Tune, RwrLossWeightsTheErrorsAndAnchorsTheWeights) {
  const Tensor err = Tensor::from_vector({0.1f, 0.4f, 0.2f}, {3});
  const Tensor w = Tensor::from_vector({2.0f, 0.5f, 0.5f}, {3});
  EXPECT_NEAR(rwr_loss(err, w, {}, {}, 0.0f).item(), (0.2 + 0.2 + 0.1) / 3, 1e-6);
  Tensor p = Tensor::from_vector({1.0f, 2.0f}, {2});
  const Tensor p0 = Tensor::from_vector({0.5f, 2.5f}, {2});
  EXPECT_NEAR(rwr_loss(err, w, {p}, {p0}, 0.2f).item(), 0.5 / 3 + 0.1 * 0.5, 1e-6);
  EXPECT_THROW(rwr_loss(err, Tensor::ones({2}), {}, {}, 0.0f), Error);
  std::vector<Tensor> in = {testing::random_tensor({4}, 40, 0.0f, 0.2f),
                            testing::random_tensor({4}, 41, 0.1f, 2.0f),
                            testing::random_tensor({3}, 42), testing::random_tensor({3}, 43)};
  in[0].set_requires_grad(true);
  in[2].set_requires_grad(true);
  EXPECT_GRADCHECK("rwr_loss",
                   [](const std::vector<Tensor>& v) {
                     return rwr_loss(v[0], v[1], {v[2]}, {v[3]}, 0.3f);
                   },
                   in);
}

TEST(Tune, RwrRunMovesTheWeightsAndResumesExactly) {
  const std::string dir = temp_dir("rwr");
  TuneConfig c = tiny_config(dir);
  c.method = "rwr";
  c.images_per_step = 5;
  c.timesteps_per_image = 2;
  c.anchor = 0.5f;
  c.out_dir = dir + "/whole";
  std::vector<TuneProgress> seen;
  tune(c, false, [&](const TuneProgress& p) { seen.push_back(p); });
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].pairs, 0);
  EXPECT_GT(seen[0].weight_ess, 0.0f);
  EXPECT_LE(seen[0].weight_ess, 1.0f);
  EXPECT_GT(max_change(weights_of(c.out_dir), weights_of(c.model_dir)), 1e-4);
  TuneConfig part = c;
  part.out_dir = dir + "/part";
  part.steps = 2;
  tune(part, false);
  part.steps = 4;
  tune(part, true);
  EXPECT_EQ(max_change(weights_of(c.out_dir), weights_of(part.out_dir)), 0.0);
}

TEST(Tune, Errors) {
  const std::string dir = temp_dir("errors");
  TuneConfig c = tiny_config(dir);
  c.out_dir = c.model_dir;
  expect_error([&] { tune(c, false); }, ErrorKind::kInvalidArgument,
               "is the starting model's folder");
  c.out_dir = dir + "/out";
  TuneConfig noisy = c;
  noisy.classifier_dir = dir + "/noisy";
  testing::tiny_fashion_classifier(1000)->save_pretrained(noisy.classifier_dir);
  expect_error([&] { tune(noisy, false); }, ErrorKind::kInvalidArgument,
               "was trained on noisy images");
  TuneConfig bad_class = c;
  bad_class.classes = {12};
  expect_error([&] { tune(bad_class, false); }, ErrorKind::kInvalidArgument,
               "class 12 outside the model's [0, 10)");
  TuneConfig no_model = c;
  no_model.model_dir = dir + "/none";
  expect_error([&] { tune(no_model, false); }, ErrorKind::kInvalidArgument, "no such model folder");
  TuneConfig latent = c;  // the emoji text-to-image model: a latent DiT
  latent.model_dir = std::string(STIPPLE_SOURCE_DIR) + "/models/emoji-t2i";
  expect_error([&] { tune(latent, false); }, ErrorKind::kInvalidArgument,
               "has a VAE (a latent DiT); stipple eval and stipple tune take pixel-space");
  expect_error([&] { tune(c, true); }, ErrorKind::kNotFound, "cannot resume");
  TuneConfig bad = c;
  bad.sampler = "warp";
  expect_error([&] { bad.validate(); }, ErrorKind::kInvalidArgument, "unknown sampler \"warp\"");
  bad = c;
  bad.method = "ppo";
  expect_error([&] { bad.validate(); }, ErrorKind::kInvalidArgument, "unknown method \"ppo\"");
  bad = c;
  bad.temperature = 0;
  expect_error([&] { bad.validate(); }, ErrorKind::kInvalidArgument, "--temperature");
  bad = c;
  bad.candidates = 1;
  expect_error([&] { bad.validate(); }, ErrorKind::kInvalidArgument, "candidates per class");
  expect_error([&] { TuneConfig::from_json({{"method", "ddpo"}}, "x.json"); },
               ErrorKind::kInvalidArgument, "unknown method \"ddpo\"");
}

}  // namespace
}  // namespace stipple::train

// The trainer on a tiny stand-in denoiser (a few steps on 8x8 images): resuming from a
// checkpoint reproduces an uninterrupted run bit for bit (every parameter, the EMA weights, the
// optimizer state), the checkpoint folder holds every file and each one loads, the logs and PNGs
// are written, the learning-rate schedule, and the errors for bad resume folders.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "io/json.h"
#include "io/png.h"
#include "io/safetensors.h"
#include "nn/layers.h"
#include "ops/kernels.h"
#include "ops/ops.h"
#include "schedulers/scheduler.h"
#include "support/numerics.h"
#include "train/grow_depth.h"
#include "train/plot.h"
#include "train/train_dit.h"
#include "train/trainer.h"

namespace stipple::train {
namespace {

namespace fs = std::filesystem;

// A small class-conditional conv net with DiT's output layout (2C channels: "learned sigma").
class TinyNet : public nn::Module {
 public:
  TinyNet(int64_t channels, int64_t hidden, int64_t num_classes) : channels_(channels) {
    conv_in = register_module("conv_in", std::make_shared<nn::Conv2d>(channels, hidden, 3, 1, 1));
    time_proj = register_module("time_proj", std::make_shared<nn::Linear>(8, hidden));
    class_emb =
        register_module("class_emb", std::make_shared<nn::Embedding>(num_classes + 1, hidden));
    conv_out =
        register_module("conv_out", std::make_shared<nn::Conv2d>(hidden, 2 * channels, 3, 1, 1));
  }
  std::string type_name() const override { return "TinyNet"; }

  Tensor forward(const Tensor& x, const Tensor& t, const Tensor& labels) const {
    const int64_t B = x.size(0);
    std::vector<float> e(B * 8);
    const std::vector<int64_t> tv = t.to_vector_i64();
    for (int64_t b = 0; b < B; ++b)
      for (int i = 0; i < 4; ++i) {
        const double f = std::exp(-std::log(1000.0) * i / 4) * tv[b];
        e[b * 8 + i] = static_cast<float>(std::cos(f));
        e[b * 8 + 4 + i] = static_cast<float>(std::sin(f));
      }
    const Tensor temb = time_proj->forward(Tensor::from_vector(e, {B, 8}));  // [B, h]
    const Tensor c = ops::silu(temb + class_emb->forward(labels));           // [B, h]
    const Tensor h = ops::silu(conv_in->forward(x) + c.unsqueeze(-1).unsqueeze(-1));
    return conv_out->forward(h);  // [B, 2C, H, W]
  }

  std::shared_ptr<nn::Conv2d> conv_in, conv_out;
  std::shared_ptr<nn::Linear> time_proj;
  std::shared_ptr<nn::Embedding> class_emb;

 private:
  int64_t channels_;
};

class TinyDenoiser : public Denoiser {
 public:
  explicit TinyDenoiser(int64_t hidden = 8) : hidden_(hidden), net_(1, hidden, 2) {}
  nn::Module& module() override { return net_; }
  Tensor forward(const Tensor& x, const Tensor& t, const Tensor& labels) override {
    return net_.forward(x, t, labels);
  }
  nlohmann::json config_json() const override {
    return {{"_class_name", "TinyNet"}, {"hidden", hidden_}};
  }

 private:
  int64_t hidden_;
  TinyNet net_;
};

struct Data {
  Tensor images, labels;
};

// 40 8x8 images of two classes: a bright left half (class 0) or top half (class 1), jittered.
Data make_data() {
  const int64_t n = 40;
  Generator g(5);
  const std::vector<float> jitter = g.rand({n, 1, 8, 8}).to_vector();
  std::vector<float> px(n * 64);
  std::vector<int64_t> lab(n);
  for (int64_t i = 0; i < n; ++i) {
    lab[i] = i % 2;
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const bool on = lab[i] == 0 ? x < 4 : y < 4;
        px[i * 64 + y * 8 + x] = (on ? 0.8f : -0.8f) + 0.2f * (jitter[i * 64 + y * 8 + x] - 0.5f);
      }
  }
  return {Tensor::from_vector(px, {n, 1, 8, 8}), Tensor::from_vector_i64(lab, {n})};
}

std::string temp_dir(const std::string& name) {
  const fs::path p =
      fs::temp_directory_path() / ("stipple_test_trainer_" + std::to_string(::getpid())) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

TrainConfig tiny_config(const std::string& out) {
  TrainConfig c;
  c.steps = 6;
  c.batch_size = 8;
  c.lr = 3e-3f;
  c.warmup = 2;
  c.weight_decay = 0.01f;
  c.ema_decay = 0.9f;
  c.hflip = true;
  c.checkpoint_every = 3;
  c.sample_every = 3;
  c.log_every = 2;
  c.keep_checkpoints = 0;
  c.sample_steps = 3;
  c.samples_per_class = 2;
  c.sample_cfg = 2.0f;
  c.seed = 11;
  c.out_dir = out;
  return c;
}

std::unique_ptr<Trainer> make_trainer(const TrainConfig& c, int64_t hidden = 8) {
  const Data d = make_data();
  return std::make_unique<Trainer>(c, std::make_unique<TinyDenoiser>(hidden), d.images, d.labels,
                                   std::vector<std::string>{"left", "top"});
}

bool bits_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), ca.numel() * dtype_size(ca.dtype())) == 0;
}

std::string error_of(const std::function<void()>& fn) { return testing::error_message(fn); }

TEST(Trainer, ResumeIsBitExact) {
  // A: six steps in one go.
  const std::string dir_a = temp_dir("a");
  auto a = make_trainer(tiny_config(dir_a));
  a->run();
  ASSERT_EQ(a->step(), 6);

  // B: stopped after step 4 (a checkpoint off the regular cadence), then resumed in a fresh
  // trainer whose own initialisation (another seed) the checkpoint must overwrite.
  const std::string dir_b = temp_dir("b");
  {
    auto b = make_trainer(tiny_config(dir_b));
    TrainCallbacks cb;
    cb.should_stop = [&] { return b->step() == 4; };
    b->run(cb);
    ASSERT_EQ(b->step(), 4);
    ASSERT_TRUE(fs::exists(dir_b + "/checkpoint-4/training_state.safetensors"));
    ASSERT_FALSE(fs::exists(dir_b + "/export"));
  }
  TrainConfig cb = Trainer::read_checkpoint_config(dir_b + "/latest");
  EXPECT_EQ(cb.to_json(), tiny_config(dir_b).to_json());
  cb.seed = 99;  // everything the seed drives is restored from the checkpoint
  auto b = make_trainer(cb);
  b->resume(dir_b + "/latest");
  ASSERT_EQ(b->step(), 4);
  b->run();
  ASSERT_EQ(b->step(), 6);

  ASSERT_EQ(a->params().size(), b->params().size());
  for (size_t i = 0; i < a->params().size(); ++i) {
    EXPECT_TRUE(bits_equal(a->params()[i], b->params()[i])) << "parameter " << i;
    EXPECT_TRUE(bits_equal(a->ema().shadow_params()[i], b->ema().shadow_params()[i]))
        << "EMA of parameter " << i;
  }
  // The saved EMA weights agree too, file against file.
  const auto wa = io::load_safetensors(dir_a +
                                       "/latest/transformer/"
                                       "diffusion_pytorch_model.safetensors");
  const auto wb = io::load_safetensors(dir_b +
                                       "/latest/transformer/"
                                       "diffusion_pytorch_model.safetensors");
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [k, v] : wa) EXPECT_TRUE(bits_equal(v, wb.at(k))) << k;
  // And the run did learn something: the parameters moved.
  auto fresh = make_trainer(tiny_config(temp_dir("fresh")));
  EXPECT_FALSE(bits_equal(fresh->params()[0], a->params()[0]));

  // The log of the resumed run continues the first one's rows.
  std::ifstream csv(dir_b + "/log.csv");
  std::string line;
  std::vector<std::string> rows;
  while (std::getline(csv, line)) rows.push_back(line);
  ASSERT_EQ(rows.size(), 4u) << "header + steps 2, 4, 6";
  EXPECT_EQ(rows[1].substr(0, 2), "2,");
  EXPECT_EQ(rows[3].substr(0, 2), "6,");
}

TEST(Trainer, CheckpointFilesArePresentAndLoad) {
  const std::string dir = temp_dir("files");
  TrainConfig c = tiny_config(dir);
  c.keep_checkpoints = 1;
  auto t = make_trainer(c);
  std::vector<std::string> messages;
  int progress_calls = 0;
  TrainCallbacks cb;
  cb.message = [&](const std::string& m) { messages.push_back(m); };
  cb.progress = [&](const TrainProgress& p) {
    ++progress_calls;
    EXPECT_EQ(p.total, 6);
    EXPECT_GT(p.loss, 0);
    EXPECT_GT(p.steps_per_second, 0);
  };
  t->run(cb);
  EXPECT_EQ(progress_calls, 6);
  EXPECT_FALSE(messages.empty());

  // Only the newest checkpoint is kept; latest points at it.
  EXPECT_FALSE(fs::exists(dir + "/checkpoint-3"));
  ASSERT_TRUE(fs::is_symlink(dir + "/latest"));
  EXPECT_EQ(fs::read_symlink(dir + "/latest").string(), "checkpoint-6");
  const std::string ck = dir + "/checkpoint-6";
  for (const char* f : {"model_index.json", "transformer/config.json",
                        "transformer/diffusion_pytorch_model.safetensors",
                        "scheduler/scheduler_config.json", "training_state.safetensors"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << f;
  // No temporary files left behind.
  for (const auto& e : fs::recursive_directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();

  const nlohmann::json index = io::read_json_file(ck + "/model_index.json");
  EXPECT_EQ(index["_class_name"], "DiTPipeline");
  EXPECT_EQ(index["transformer"][1], "TinyNet");
  EXPECT_EQ(index["id2label"]["1"], "top");
  const schedulers::SchedulerConfig sc =
      schedulers::SchedulerConfig::from_json(ck + "/scheduler/scheduler_config.json");
  EXPECT_EQ(sc.class_name, "DDIMScheduler");
  EXPECT_EQ(sc.num_train_timesteps, 1000);

  // The transformer weights are the EMA weights and load strictly into a fresh model.
  TinyDenoiser fresh;
  fresh.module().load_state_dict(
      io::load_safetensors(ck + "/transformer/diffusion_pytorch_model.safetensors"));
  const auto named = fresh.module().named_parameters();
  for (size_t i = 0; i < named.size(); ++i)
    EXPECT_TRUE(bits_equal(named[i].second, t->ema().shadow_params()[i])) << named[i].first;

  // The export holds f16 EMA weights and no training state.
  const io::SafetensorsFile ex =
      io::SafetensorsFile::open(dir + "/export/transformer/diffusion_pytorch_model.safetensors");
  for (const auto& name : ex.names()) EXPECT_EQ(ex.entry(name).dtype, "F16") << name;
  EXPECT_FALSE(fs::exists(dir + "/export/training_state.safetensors"));
  TinyDenoiser half;
  half.module().load_state_dict(ex.tensors());

  // Logs: the CSV's columns, the loss curve and the sample grids with their parameters.
  std::ifstream csv(dir + "/log.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header.rfind("step,loss,lr,grad_norm,loss_t0_99,", 0), 0u) << header;
  EXPECT_NE(header.find("loss_t900_999,seconds"), std::string::npos) << header;
  const io::Image curve = io::read_png(dir + "/loss.png");
  EXPECT_EQ(curve.width, 720);
  std::map<std::string, std::string> text;
  const io::Image grid = io::read_png(dir + "/samples/step-6.png", &text);
  EXPECT_EQ(grid.height, 2 * 18);  // two classes, 8x8 shown at 16x16 with a 1-pixel frame
  EXPECT_EQ(grid.width, 2 * 18);
  EXPECT_NE(text["parameters"].find("CFG scale: 2"), std::string::npos) << text["parameters"];
  EXPECT_TRUE(fs::exists(dir + "/samples/step-3.png"));
  EXPECT_TRUE(fs::exists(dir + "/train_config.json"));
}

TEST(Trainer, ResumeErrorsNameTheProblem) {
  const std::string missing = error_of([] { Trainer::read_checkpoint_config("/nonexistent/run"); });
  EXPECT_NE(missing.find("/nonexistent/run"), std::string::npos) << missing;

  const std::string dir = temp_dir("errors");
  TrainConfig c = tiny_config(dir);
  c.steps = 2;
  c.sample_every = 0;
  auto t = make_trainer(c);
  t->run();
  const std::string no_state = error_of([&] { t->resume(dir + "/export"); });
  EXPECT_NE(no_state.find("training_state.safetensors"), std::string::npos) << no_state;

  auto wider = make_trainer(c, /*hidden=*/12);
  const std::string mismatch = error_of([&] { wider->resume(dir + "/latest"); });
  EXPECT_NE(mismatch.find("does not fit"), std::string::npos) << mismatch;
  EXPECT_NE(mismatch.find("conv_in.weight"), std::string::npos) << mismatch;
}

TEST(Trainer, LearningRateSchedule) {
  TrainConfig c;
  c.lr = 1.0f;
  c.steps = 110;
  c.warmup = 10;
  EXPECT_FLOAT_EQ(learning_rate(c, 0), 0.1f);
  EXPECT_FLOAT_EQ(learning_rate(c, 9), 1.0f);
  EXPECT_FLOAT_EQ(learning_rate(c, 10), 1.0f);
  EXPECT_NEAR(learning_rate(c, 60), 0.5f, 1e-6);
  EXPECT_NEAR(learning_rate(c, 110), 0.0f, 1e-6);
  c.min_lr_ratio = 0.1f;
  EXPECT_NEAR(learning_rate(c, 110), 0.1f, 1e-6);
  c.lr_schedule = "constant";
  EXPECT_FLOAT_EQ(learning_rate(c, 100), 1.0f);
}

TEST(Trainer, ConfigRoundTripsAndChecks) {
  TrainConfig c;
  c.depth = 4;
  c.prediction_type = "v_prediction";
  c.seed = 123456789012345ULL;
  const TrainConfig back = TrainConfig::from_json(c.to_json(), "test");
  EXPECT_EQ(back.to_json(), c.to_json());
  nlohmann::json bad = c.to_json();
  bad["heads"] = 5;
  const std::string msg = error_of([&] { TrainConfig::from_json(bad, "test"); });
  EXPECT_NE(msg.find("not divisible by heads 5"), std::string::npos) << msg;
  bad = c.to_json();
  bad["beta_schedule"] = "cubic";
  EXPECT_NE(error_of([&] { TrainConfig::from_json(bad, "test"); }).find("cubic"),
            std::string::npos);
}

TEST(Trainer, VPredictionAndMinSnrRun) {
  TrainConfig c = tiny_config(temp_dir("v"));
  c.steps = 2;
  c.prediction_type = "v_prediction";
  c.snr_gamma = 5.0f;
  c.beta_schedule = "squaredcos_cap_v2";
  c.sample_every = 0;
  c.export_f16 = false;
  auto t = make_trainer(c);
  const StepStats s = t->train_step();
  EXPECT_TRUE(std::isfinite(s.loss));
  EXPECT_GT(s.loss, 0);
  EXPECT_GT(s.grad_norm, 0);
}

TEST(Plot, LossCurveDrawsAxesAndLines) {
  std::vector<int64_t> steps;
  std::vector<float> losses;
  for (int i = 1; i <= 200; ++i) {
    steps.push_back(i * 50);
    losses.push_back(0.5f * std::exp(-i / 40.0f) + 0.03f + 0.01f * std::sin(i * 1.7f));
  }
  const io::Image img = plot_loss_curve(steps, losses);
  ASSERT_EQ(img.channels, 3);
  int dark_blue = 0, axis = 0;
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    const uint8_t r = img.pixels[i], g = img.pixels[i + 1], b = img.pixels[i + 2];
    if (r == 20 && g == 60 && b == 170) ++dark_blue;
    if (r == 40 && g == 40 && b == 40) ++axis;
  }
  EXPECT_GT(dark_blue, 600);  // the smoothed line spans the width, 2 pixels thick
  EXPECT_GT(axis, 1000);      // axes, ticks and labels
  const io::Image empty = plot_loss_curve({}, {});
  EXPECT_EQ(empty.width, 720);
}

// The same resume check on a tiny DiT (the real model of `stipple train`), and its checkpoint and
// export loading through DiTTransformer2DModel::from_pretrained.
// A one-block DiT over the 8x8 two-class data.
TrainConfig tiny_dit_config(const std::string& out) {
  TrainConfig c = tiny_config(out);
  c.depth = 1;
  c.width = 16;
  c.heads = 2;
  c.patch = 4;
  c.sample_every = 0;
  return c;
}
std::unique_ptr<Trainer> make_dit_trainer(const TrainConfig& c) {
  const Data d = make_data();
  return std::make_unique<Trainer>(c, std::make_unique<DiTDenoiser>(dit_config_for(c, 1, 8, 2)),
                                   d.images, d.labels, std::vector<std::string>{"left", "top"});
}

TEST(TrainDiT, ResumeIsBitExactAndCheckpointsLoad) {
  TrainConfig c = tiny_dit_config(temp_dir("dit_a"));
  c.learned_sigma = true;
  c.steps = 4;
  c.checkpoint_every = 2;
  const auto make = make_dit_trainer;
  auto a = make(c);
  a->run();
  TrainConfig cb = c;
  cb.out_dir = temp_dir("dit_b");
  cb.steps = 4;
  {
    auto b1 = make(cb);
    TrainCallbacks stop;
    stop.should_stop = [&] { return b1->step() == 1; };
    b1->run(stop);
    ASSERT_EQ(b1->step(), 1);
  }
  auto b = make(cb);
  b->resume(cb.out_dir + "/latest");
  b->run();
  for (size_t i = 0; i < a->params().size(); ++i) {
    EXPECT_TRUE(bits_equal(a->params()[i], b->params()[i])) << "parameter " << i;
    EXPECT_TRUE(bits_equal(a->ema().shadow_params()[i], b->ema().shadow_params()[i]))
        << "EMA of parameter " << i;
  }
  // The checkpoint and the f16 export load as diffusers folders.
  auto loaded = models::DiTTransformer2DModel::from_pretrained(c.out_dir + "/latest/transformer");
  EXPECT_EQ(loaded->config().output_channels(), 2);
  EXPECT_EQ(loaded->config().num_embeds_ada_norm, 2);
  const auto named = loaded->named_parameters();
  for (size_t i = 0; i < named.size(); ++i)
    EXPECT_TRUE(bits_equal(named[i].second, a->ema().shadow_params()[i])) << named[i].first;
  auto half = models::DiTTransformer2DModel::from_pretrained(c.out_dir + "/export/transformer");
  EXPECT_EQ(half->config().sample_size, 8);
  const Tensor x = Tensor::zeros({2, 1, 8, 8});
  const Tensor t = Tensor::from_vector_i64({10, 500}, {2});
  const Tensor y = Tensor::from_vector_i64({0, 2}, {2});
  EXPECT_EQ(half->forward(x, t, y).shape(), (Shape{2, 2, 8, 8}));
}

// Training on a device (the emulated one: host memory behind the device interface, the CPU's
// reference kernels) is the CPU's training: the same random draws (made on the CPU and uploaded),
// the same weights and EMA after every step, checkpoints written from the device that resume
// there, and sample grids drawn there. Clipping is off: its norm is summed in another order on a
// device, and only the clipped gradients would differ.
TEST(TrainDiT, OnADeviceItTrainsAsTheCpuDoesAndResumes) {
  use_reference_kernels(true);
  TrainConfig c = tiny_dit_config(temp_dir("dev_cpu"));
  c.grad_clip = 0;
  c.steps = 4;
  c.checkpoint_every = 2;
  c.sample_every = 2;
  auto a = make_dit_trainer(c);
  a->run();
  TrainConfig ce = c;
  ce.out_dir = temp_dir("dev_emu");
  {
    auto e1 = make_dit_trainer(ce);
    e1->to(Device::kEmulated);
    EXPECT_EQ(e1->params()[0].device(), Device::kEmulated);
    TrainCallbacks stop;
    stop.should_stop = [&] { return e1->step() == 2; };
    e1->run(stop);
    ASSERT_EQ(e1->step(), 2);
  }
  auto e = make_dit_trainer(ce);
  e->to(Device::kEmulated);
  e->resume(ce.out_dir + "/latest");  // into the device's tensors
  e->run();
  use_reference_kernels(false);
  ASSERT_EQ(e->step(), 4);
  for (size_t i = 0; i < a->params().size(); ++i) {
    EXPECT_EQ(e->params()[i].device(), Device::kEmulated);
    EXPECT_TRUE(bits_equal(a->params()[i], e->params()[i].to(Device::kCPU))) << "parameter " << i;
    EXPECT_TRUE(bits_equal(a->ema().shadow_params()[i],
                           e->ema().shadow_params()[i].to(Device::kCPU)))
        << "EMA of parameter " << i;
  }
  const auto wa = io::load_safetensors(c.out_dir + "/latest/transformer/diffusion_pytorch_model.safetensors");
  const auto we = io::load_safetensors(ce.out_dir + "/latest/transformer/diffusion_pytorch_model.safetensors");
  for (const auto& [k, v] : wa) EXPECT_TRUE(bits_equal(v, we.at(k))) << k;
  // The grids, drawn on the device, are the CPU's.
  for (const char* grid : {"/samples/step-2.png", "/samples/step-4.png"})
    EXPECT_EQ(io::read_png(c.out_dir + grid).pixels, io::read_png(ce.out_dir + grid).pixels) << grid;
}

// Training with bf16 matmuls (TrainConfig::matmul_precision): from the same weights and draws
// the losses stay within bf16's rounding of the f32 run's while the updates differ (the products
// were rounded), the run resumes bit for bit, and the setting round-trips through
// train_config.json.
TEST(TrainDiT, Bf16MatmulsTrainNearF32AndResumeExactly) {
  TrainConfig c = tiny_dit_config(temp_dir("bf16_a"));
  c.steps = 3;
  c.checkpoint_every = 1;
  c.export_f16 = false;
  TrainConfig c32 = c;
  c32.out_dir = temp_dir("bf16_f32");
  c.matmul_precision = "bf16";
  EXPECT_EQ(TrainConfig::from_json(c.to_json(), "test").matmul_precision, "bf16");
  nlohmann::json bad = c.to_json();
  bad["matmul_precision"] = "f16";
  const std::string msg = error_of([&] { TrainConfig::from_json(bad, "test"); });
  EXPECT_NE(msg.find("matmul_precision \"f16\" (expected f32 or bf16)"), std::string::npos) << msg;

  auto a = make_dit_trainer(c);
  auto f = make_dit_trainer(c32);
  // adaLN-Zero: the first step's output is zero in both, its loss the same; the second's differ
  EXPECT_EQ(a->train_step().loss, f->train_step().loss);
  const StepStats sa = a->train_step(), sf = f->train_step();
  EXPECT_NEAR(sa.loss, sf.loss, 2e-2 * sf.loss);
  EXPECT_NE(sa.loss, sf.loss);
  bool any_differs = false;
  for (size_t i = 0; i < a->params().size(); ++i)
    any_differs = any_differs || !bits_equal(a->params()[i], f->params()[i]);
  EXPECT_TRUE(any_differs);
  EXPECT_EQ(ops::matmul_precision(), ops::MatmulPrecision::kF32);  // the step's scope ended

  auto whole = make_dit_trainer(c);
  whole->run();
  TrainConfig cb = c;
  cb.out_dir = temp_dir("bf16_b");
  {
    auto b1 = make_dit_trainer(cb);
    TrainCallbacks stop;
    stop.should_stop = [&] { return b1->step() == 1; };
    b1->run(stop);
  }
  auto b = make_dit_trainer(Trainer::read_checkpoint_config(cb.out_dir + "/latest"));
  EXPECT_EQ(b->config().matmul_precision, "bf16");
  b->resume(cb.out_dir + "/latest");
  b->run();
  for (size_t i = 0; i < whole->params().size(); ++i)
    EXPECT_TRUE(bits_equal(whole->params()[i], b->params()[i])) << "parameter " << i;
}

TEST(TrainDiT, WarmStartTakesAnExportedModel) {
  TrainConfig c = tiny_dit_config(temp_dir("warm_a"));
  c.steps = 3;
  const auto make = make_dit_trainer;
  auto a = make(c);
  a->run();  // writes export/ (f16 EMA weights)
  TrainConfig cw = c;
  cw.out_dir = temp_dir("warm_b");
  cw.init_from = c.out_dir + "/export";
  cw.seed = 12;  // another initialisation: the warm start must replace it
  auto b = make(cw);
  b->warm_start(cw.init_from);
  ASSERT_EQ(b->params().size(), a->params().size());
  for (size_t i = 0; i < a->params().size(); ++i) {
    // the f16 export of a's EMA, widened back
    const Tensor want = a->ema().shadow_params()[i].to(DType::kF16).to(DType::kF32);
    EXPECT_TRUE(bits_equal(b->params()[i], want)) << "parameter " << i;
    EXPECT_TRUE(bits_equal(b->ema().shadow_params()[i], want)) << "EMA of parameter " << i;
  }
  EXPECT_FLOAT_EQ(b->ema().current_decay(), cw.ema_decay);
  b->run();
  EXPECT_EQ(b->step(), 3);
  EXPECT_EQ(Trainer::read_checkpoint_config(cw.out_dir + "/latest").init_from, cw.init_from);
  // resuming a warm-started run needs the init folder no more
  auto resumed = make(cw);
  resumed->resume(cw.out_dir + "/checkpoint-3");
  EXPECT_EQ(resumed->step(), 3);

  // a folder without a transformer, and a transformer of another shape, are named
  auto fresh = make(cw);
  const std::string missing = error_of([&] { fresh->warm_start(cw.out_dir + "/samples"); });
  EXPECT_NE(missing.find("transformer/diffusion_pytorch_model.safetensors"), std::string::npos)
      << missing;
  TrainConfig wide = cw;
  wide.width = 32;
  auto wider = make(wide);
  const std::string mismatch = error_of([&] { wider->warm_start(cw.init_from); });
  EXPECT_NE(mismatch.find("does not fit"), std::string::npos) << mismatch;
  EXPECT_NE(mismatch.find("--width"), std::string::npos) << mismatch;
  EXPECT_THROW(b->warm_start(cw.init_from), Error);  // not at step 0 any more
  // a deeper model grows from the folder (GrowingTheDepthKeepsTheFunction checks the function)
  TrainConfig deep = cw;
  deep.depth = c.depth + 2;
  auto deeper = make(deep);
  deeper->warm_start(cw.init_from);
  EXPECT_EQ(deeper->params().size(), a->params().size() + 2 * 19);  // 19 tensors per block
  deeper->run();
  EXPECT_EQ(deeper->step(), 3);
}

TEST(TrainDiT, GrowingTheDepthKeepsTheFunction) {
  TrainConfig c = tiny_dit_config(temp_dir("grow"));
  c.depth = 2;
  DiTDenoiser shallow(dit_config_for(c, 1, 8, 2));
  // random weights everywhere, the adaLN-Zero gates included (a trained model's are open)
  std::map<std::string, Tensor> weights = shallow.module().state_dict();
  uint64_t seed = 1;
  for (auto& [name, t] : weights) t = testing::random_tensor(t.shape(), seed++, -0.3f, 0.3f);
  shallow.module().load_state_dict(weights, /*strict=*/true, "test");

  c.depth = 5;  // old block 0 -> 0, 1 -> 2; copies of 0 at 1, of 1 at 3 and 4
  DiTDenoiser deep(dit_config_for(c, 1, 8, 2));
  const std::map<std::string, Tensor> grown = grow_transformer_depth(weights, 5);
  deep.module().load_state_dict(grown, /*strict=*/true, "test");
  const Tensor x = testing::random_tensor({3, 1, 8, 8}, 90);
  const Tensor t = Tensor::from_vector_i64({0, 17, 99}, {3});
  const Tensor y = Tensor::from_vector_i64({0, 1, 2}, {3});  // 2: the null class
  EXPECT_TENSORS_CLOSE(deep.forward(x, t, y), shallow.forward(x, t, y), 1e-5, 1e-5);

  const auto block = [&](int i, const std::string& rest) {
    return grown.at(str_cat("transformer_blocks.", i, ".", rest));
  };
  const auto old = [&](int i, const std::string& rest) {
    return weights.at(str_cat("transformer_blocks.", i, ".", rest));
  };
  for (const auto& [k, from] : std::vector<std::pair<int, int>>{{0, 0}, {1, 0}, {2, 1}, {4, 1}})
    EXPECT_TRUE(bits_equal(block(k, "attn1.to_q.weight"), old(from, "attn1.to_q.weight"))) << k;
  EXPECT_TRUE(bits_equal(block(2, "norm1.linear.weight"), old(1, "norm1.linear.weight")));
  // a copy: shift and scale kept, both gates (chunks 2 and 5 of 6) closed
  const Tensor mod = block(3, "norm1.linear.bias"), was = old(1, "norm1.linear.bias");
  const int64_t d = c.width;
  for (int64_t j = 0; j < 6 * d; ++j) {
    const bool gate = (j / d) == 2 || (j / d) == 5;
    EXPECT_EQ(mod.data<float>()[j], gate ? 0.f : was.data<float>()[j]) << j;
  }
  // as deep or deeper already: unchanged
  EXPECT_EQ(grow_transformer_depth(weights, 2).size(), weights.size());
  EXPECT_TRUE(bits_equal(grow_transformer_depth(weights, 1).at("transformer_blocks.1.ff.net.2.weight"),
                         old(1, "ff.net.2.weight")));
  // a block with neither gates nor residual branches to close cannot grow
  std::map<std::string, Tensor> no_ada = weights;
  for (auto it = no_ada.begin(); it != no_ada.end();)
    it = it->first.find("norm1.linear") != std::string::npos ||
                 it->first.find("to_out.0") != std::string::npos ||
                 it->first.find("ff.net.2") != std::string::npos
             ? no_ada.erase(it)
             : std::next(it);
  const std::string msg = error_of([&] { grow_transformer_depth(no_ada, 3); });
  EXPECT_NE(msg.find("block 1 has neither adaLN-Zero gates"), std::string::npos) << msg;
  // a block name from the file that is not a number
  std::map<std::string, Tensor> odd = weights;
  odd["transformer_blocks.x1.attn1.to_q.weight"] = Tensor::zeros({1});
  const std::string odd_msg = error_of([&] { grow_transformer_depth(odd, 3); });
  EXPECT_NE(odd_msg.find("transformer_blocks.x1.attn1.to_q.weight is not transformer_blocks."),
            std::string::npos)
      << odd_msg;
}

TEST(TrainDiT, ConfigErrors) {
  TrainConfig c;
  c.patch = 3;
  const std::string msg = error_of([&] { dit_config_for(c, 1, 32, 10); });
  EXPECT_NE(msg.find("patch size 3"), std::string::npos) << msg;
  c = TrainConfig();
  c.data_dir = "/nonexistent/fashion";
  const std::string data = error_of([&] { load_training_data(c); });
  EXPECT_NE(data.find("/nonexistent/fashion"), std::string::npos) << data;
  c.data = "cifar";
  EXPECT_NE(error_of([&] { load_training_data(c); }).find("unknown data set 'cifar'"),
            std::string::npos);
  c = TrainConfig();
  c.downsample = 3;
  EXPECT_NE(error_of([&] { c.validate(); }).find("downsample must be 1, 2 or 4, got 3"),
            std::string::npos);
  c.downsample = 2;
  c.pad_to_32 = false;
  EXPECT_EQ(TrainConfig::from_json(c.to_json(), "test").downsample, 2);
  if (fs::exists(std::string(FashionMnist::kDefaultDir) + "/train-images-idx3-ubyte.gz")) {
    const TrainingData half = load_training_data(c);  // a cascade's base: 14x14 block means
    EXPECT_EQ(half.images.shape(), (Shape{60000, 1, 14, 14}));
  }
}

// Removes this process's temporary folders at the end.
class CleanUp : public ::testing::Environment {
 public:
  void TearDown() override {
    fs::remove_all(fs::temp_directory_path() /
                   ("stipple_test_trainer_" + std::to_string(::getpid())));
  }
};
const auto* const kCleanUp = ::testing::AddGlobalTestEnvironment(new CleanUp);

}  // namespace
}  // namespace stipple::train

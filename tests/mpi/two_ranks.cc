// Data-parallel training equals one process: run under `mpirun -np 2` (ctest train.mpi_two_ranks).
//
// A tiny DiT on fixed random data, trained by the Trainer the command line uses:
//   D   2 ranks, steps 0 -> 20 (checkpoints at 10 and 20)
//   S   1 process (rank 0 alone), steps 0 -> 20                           D == S within kTolerance
//   D2  2 ranks, resumed from D's checkpoint-10 to step 20                D2 == D bit for bit
//   S2  1 process (rank 0 alone), resumed from D's checkpoint-10 to 20    S2 == S within kTolerance
//   E   2 ranks on the emulated device, steps 0 -> 20                     E == R bit for bit
//       (R: D again with the CPU's reference kernels, which the emulated device runs)
// and every rank holds the same weights. Then the first-stage trainers the same way, 2 ranks against
// rank 0 alone: the emoji AutoencoderKL and CLIP (when the emoji data is installed) and the
// Fashion-MNIST classifier (when Fashion-MNIST is). Prints the maximum differences; exits 1 on any failure (on
// every rank).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "ops/kernels.h"
#include "train/emoji_data.h"
#include "train/mpi/mpi_communicator.h"
#include "train/train_classifier.h"
#include "train/train_clip.h"
#include "train/train_dit.h"
#include "train/train_vae.h"
#include "train/trainer.h"

namespace {

using namespace stipple;
using namespace stipple::train;
namespace fs = std::filesystem;

// The gradient is summed in another order on 2 ranks than on 1 (float rounding, ~1e-7 relative);
// AdamW steps of lr 1e-3 carry that into the weights. AdamW divides each gradient element by its
// own running RMS, so an element whose gradient is tiny carries the rounding straight into its
// step: the classifier's deepest conv (4 steps) shows 5e-6 of a possible lr * steps = 4e-3, hence
// its looser bound.
constexpr double kTolerance = 1e-5;
constexpr double kClassifierTolerance = 1e-4;

TrainConfig tiny_config(const std::string& out) {
  TrainConfig c;
  c.depth = 2;
  c.width = 32;
  c.heads = 2;
  c.patch = 2;
  c.steps = 20;
  c.batch_size = 9;  // odd: the shards are 4 and 5 images
  c.lr = 1e-3f;
  c.warmup = 2;
  c.checkpoint_every = 10;
  c.sample_every = 0;
  c.log_every = 1;
  c.keep_checkpoints = 0;
  c.sample_steps = 2;
  c.samples_per_class = 1;
  c.export_f16 = false;
  c.seed = 7;
  c.out_dir = out;
  return c;
}

std::unique_ptr<Trainer> make_trainer(const TrainConfig& c) {
  Generator g(123);
  const Tensor images = g.rand({40, 1, 8, 8}) * 2.0f - 1.0f;  // [N, 1, 8, 8] in [-1, 1)
  std::vector<int64_t> labels(40);
  for (int i = 0; i < 40; ++i) labels[i] = i % 4;
  const models::DiTConfig dit = dit_config_for(c, 1, 8, 4);
  return std::make_unique<Trainer>(c, std::make_unique<DiTDenoiser>(dit), images,
                                   Tensor::from_vector_i64(labels, {40}),
                                   std::vector<std::string>{"a", "b", "c", "d"});
}

// Trains (resuming from `resume` unless empty) and returns the raw weights.
std::vector<Tensor> train_run(const TrainConfig& c, Communicator& comm, const std::string& resume,
                              Device device = Device::kCPU) {
  auto t = make_trainer(c);
  t->set_communicator(comm);
  t->to(device);
  if (!resume.empty()) t->resume(resume);
  t->run();
  std::vector<Tensor> w;
  for (const Tensor& p : t->params()) w.push_back(p.detach().clone());
  return w;
}

double max_diff(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<float> x = a[i].to_vector(), y = b[i].to_vector();
    for (size_t j = 0; j < x.size(); ++j)
      m = std::max(m, static_cast<double>(std::fabs(x[j] - y[j])));
  }
  return m;
}

double max_diff(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  std::vector<Tensor> x, y;
  for (const auto& [k, v] : a) {
    x.push_back(v);
    y.push_back(b.at(k));
  }
  return max_diff(x, y);
}

using Weights = std::map<std::string, Tensor>;

// Trains with `train(on, out)` on both ranks (into WORK/<name>2) and again on rank 0 alone
// (WORK/<name>1), and compares the weights each run returns on rank 0 (the other ranks return
// none). Returns false on a mismatch.
bool two_ranks_match(Communicator& comm, const std::string& work, const std::string& name,
                     int steps, double tolerance,
                     const std::function<Weights(Communicator&, const std::string&)>& train) {
  const Weights two = train(comm, work + "/" + name + "2");
  if (!comm.is_root()) return true;
  const double d = max_diff(two, train(single_process(), work + "/" + name + "1"));
  std::printf("%s, 2 ranks vs 1 process, %d steps: max |dw| = %.3g (tolerance %.0e)\n",
              name.c_str(), steps, d, tolerance);
  return d <= tolerance;
}

// The emoji AutoencoderKL: 3 steps.
bool vae_matches(Communicator& comm, const std::string& work) {
  if (!fs::exists(EmojiData::default_dir())) {
    if (comm.is_root()) std::printf("train-vae: skipped (no emoji data)\n");
    return true;
  }
  VaeTrainConfig c;
  c.block_out_channels = {8, 16};
  c.norm_num_groups = 4;
  c.batch_size = 5;
  c.limit_images = 10;
  c.steps = 3;
  c.checkpoint_every = 3;
  c.warmup = 1;
  return two_ranks_match(comm, work, "train-vae", 3, kTolerance,
                         [&](Communicator& on, const std::string& out) {
                           c.out_dir = out;
                           train_vae(c, false, {}, {}, {}, &on);
                           if (!on.is_root()) return Weights{};  // rank 0 alone writes
                           return io::load_safetensors(out +
                                                       "/vae/diffusion_pytorch_model.safetensors");
                         });
}

// The emoji CLIP (both towers): 3 steps. Every rank computes the whole batch's contrastive loss
// from gathered embeddings.
bool clip_matches(Communicator& comm, const std::string& work) {
  const std::string tokenizer = std::string(STIPPLE_SHARED_DIR) + "/clip-tokenizer";
  if (!fs::exists(EmojiData::default_dir()) || !fs::exists(tokenizer + "/vocab.json")) {
    if (comm.is_root()) std::printf("train-clip: skipped (no emoji data or CLIP tokenizer)\n");
    return true;
  }
  ClipTrainConfig c;
  c.base_tokenizer = tokenizer;
  c.width = 16;
  c.layers = 1;
  c.heads = 2;
  c.projection_dim = 8;
  c.patch = 16;
  c.batch_size = 7;  // odd: shards of 3 and 4
  c.limit_images = 16;
  c.steps = 3;
  c.warmup = 1;
  c.checkpoint_every = 3;
  return two_ranks_match(comm, work, "train-clip", 3, kTolerance,
                         [&](Communicator& on, const std::string& out) {
                           c.out_dir = out;
                           train_clip(c, false, {}, {}, {}, &on);
                           if (!on.is_root()) return Weights{};  // rank 0 alone writes
                           Weights w = io::load_safetensors(out + "/text_encoder/model.safetensors");
                           for (auto& [k, v] :
                                io::load_safetensors(out + "/image_encoder/model.safetensors"))
                             w["vision." + k] = v;
                           return w;
                         });
}

// The Fashion-MNIST classifier: 4 steps.
bool classifier_matches(Communicator& comm, const std::string& work) {
  ClassifierTrainConfig c;
  if (!fs::exists(c.data_dir + "/train-images-idx3-ubyte.gz")) {
    if (comm.is_root()) std::printf("train-classifier: skipped (no Fashion-MNIST)\n");
    return true;
  }
  c.epochs = 1;
  c.batch_size = 16;
  c.limit_images = 64;
  c.warmup = 1;
  return two_ranks_match(comm, work, "train-classifier", 4, kClassifierTolerance,
                         [&](Communicator& on, const std::string& out) {
                           c.out_dir = out;
                           const ClassifierTrainResult r = train_classifier(c, {}, {}, &on);
                           return on.is_root() ? r.model->state_dict() : Weights{};
                         });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: mpirun -np 2 %s WORK_DIR\n", argv[0]);
    return 2;
  }
  const std::string work = argv[1];
  std::unique_ptr<Communicator> comm = mpi_world(120);
  bool ok = true;
  try {
    if (comm->size() != 2) throw Error("run this under mpirun -np 2");
    if (comm->is_root()) {
      fs::remove_all(work);
      fs::create_directories(work);
    }
    comm->any(false, "the start");  // the folder is ready before anyone writes
    const auto d = train_run(tiny_config(work + "/d"), *comm, "");
    const bool same_on_ranks = comm->all_equal(hash_tensors(d), "the weights comparison");
    const auto d2 = train_run(tiny_config(work + "/d2"), *comm, work + "/d/checkpoint-10");
    if (comm->is_root()) {
      const auto s = train_run(tiny_config(work + "/s"), single_process(), "");
      const auto s2 =
          train_run(tiny_config(work + "/s2"), single_process(), work + "/d/checkpoint-10");
      const double ds = max_diff(d, s), dd2 = max_diff(d, d2), ss2 = max_diff(s, s2);
      std::printf("weights identical on both ranks: %s\n", same_on_ranks ? "yes" : "NO");
      std::printf("2 ranks vs 1 process, 20 steps: max |dw| = %.3g (tolerance %.0e)\n", ds,
                  kTolerance);
      std::printf("2-rank run resumed at step 10 on 2 ranks vs uninterrupted: max |dw| = %.3g "
                  "(must be 0)\n",
                  dd2);
      std::printf("2-rank run resumed at step 10 on 1 process vs 1 process throughout: max |dw| = "
                  "%.3g (tolerance %.0e)\n",
                  ss2, kTolerance);
      ok = same_on_ranks && ds <= kTolerance && dd2 == 0.0 && ss2 <= kTolerance;
    }
    // On a device (the emulated one: the CPU's reference kernels behind the device interface;
    // MPI sums the gradient buckets through host copies) 2 ranks train as 2 ranks on the CPU
    // with the same kernels, bit for bit.
    // Without clipping: the device sums the squared gradients in f32 per tensor, the CPU in double.
    TrainConfig rc = tiny_config(work + "/r"), ec = tiny_config(work + "/e");
    rc.grad_clip = ec.grad_clip = 0;
    use_reference_kernels(true);
    const auto r = train_run(rc, *comm, "");
    const auto e = train_run(ec, *comm, "", Device::kEmulated);
    use_reference_kernels(false);
    if (comm->is_root()) {
      const double de = max_diff(r, e);
      std::printf("2 ranks on the emulated device vs 2 ranks on the CPU (reference kernels), 20 "
                  "steps: max |dw| = %.3g (must be 0)\n",
                  de);
      ok = ok && de == 0.0;
    }
    ok = vae_matches(*comm, work) && ok;
    ok = clip_matches(*comm, work) && ok;
    ok = classifier_matches(*comm, work) && ok;
  } catch (const std::exception& e) {
    comm->abort(e.what());
  }
  ok = !comm->any(!ok, "the result");
  if (comm->is_root()) std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

// Data parallelism without a launcher (the 2-rank runs are tests/mpi/, ctest train.mpi_*): the
// gradient all-reduce packs and unpacks every parameter in place across bucket boundaries, the
// launcher is recognised from its environment, the ranks x threads warning, and the Trainer's
// refusal of a global batch smaller than the rank count.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "train/distributed.h"
#include "train/train_dit.h"
#include "train/trainer.h"

namespace stipple::train {
namespace {

// `ranks` ranks that hold the same arrays: a sum multiplies by the rank count. Records the sizes
// of the all-reduces.
class MirrorRanks final : public Communicator {
 public:
  explicit MirrorRanks(int ranks) : ranks_(ranks) {}
  int rank() const override { return 0; }
  int size() const override { return ranks_; }
  int local_size() const override { return ranks_; }
  int local_rank() const override { return 0; }
  std::string describe() const override { return "mirror"; }
  void broadcast(void*, size_t, int, const std::string&) override {}
  void allreduce_sum(float* data, size_t n, const std::string&) override {
    sizes.push_back(n);
    for (size_t i = 0; i < n; ++i) data[i] *= static_cast<float>(ranks_);
  }
  void allreduce_sum(double* data, size_t n, const std::string&) override {
    for (size_t i = 0; i < n; ++i) data[i] *= ranks_;
  }
  bool all_equal(uint64_t, const std::string&) override { return true; }
  [[noreturn]] void abort(const std::string& why) override { throw Error(why); }
  std::vector<size_t> sizes;

 private:
  int ranks_;
};

TEST(GradientReducer, SumsEveryGradientAcrossBuckets) {
  Generator g(3);
  std::vector<Tensor> params;
  for (int64_t n : {5, 3, 7, 2, 4}) {
    Tensor p = g.randn({n});
    p.set_requires_grad(true);
    params.push_back(p);
  }
  std::vector<std::vector<float>> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    if (i == 3) {  // no gradient on any rank: stays without one
      grads.emplace_back();
      continue;
    }
    const Tensor gr = g.randn(params[i].shape());
    params[i].set_grad(gr);
    grads.push_back(gr.to_vector());
  }
  MirrorRanks two(2);
  GradientReducer reducer(/*bucket_bytes=*/8 * sizeof(float));
  reducer.reduce(two, params, 0);
  // One all-reduce for which parameters have gradients, then buckets of at most 8 floats (a
  // parameter larger than a bucket gets its own): [5, 3], [7], [4].
  EXPECT_EQ(two.sizes, (std::vector<size_t>{5, 8, 7, 4}));
  for (size_t i = 0; i < params.size(); ++i) {
    if (i == 3) {
      EXPECT_FALSE(params[i].grad().defined());
      continue;
    }
    const std::vector<float> got = params[i].grad().to_vector();
    ASSERT_EQ(got.size(), grads[i].size());
    for (size_t j = 0; j < got.size(); ++j) EXPECT_EQ(got[j], 2.0f * grads[i][j]) << i << "," << j;
  }
}

// On a device the buckets are packed, summed and cut there (the emulated device: host memory
// behind the device interface, summed by the host runtime through a host copy).
TEST(GradientReducer, SumsDeviceGradientsWithoutLeavingTheDevice) {
  Generator g(5);
  std::vector<Tensor> params;
  std::vector<std::vector<float>> grads;
  for (int64_t n : {6, 2, 9}) {
    Tensor p = g.randn({n, 1}).to(Device::kEmulated);
    p.set_requires_grad(true);
    const Tensor gr = g.randn({n, 1});
    p.set_grad(gr.to(Device::kEmulated));
    grads.push_back(gr.to_vector());
    params.push_back(p);
  }
  MirrorRanks three(3);
  GradientReducer reducer(/*bucket_bytes=*/8 * sizeof(float));
  reducer.reduce(three, params, 0);
  EXPECT_EQ(three.sizes, (std::vector<size_t>{3, 8, 9}));  // [6, 2], [9]
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor gr = params[i].grad();
    EXPECT_EQ(gr.device(), Device::kEmulated);
    EXPECT_EQ(gr.shape(), params[i].shape());
    const std::vector<float> got = gr.to_vector();
    for (size_t j = 0; j < got.size(); ++j) EXPECT_EQ(got[j], 3.0f * grads[i][j]) << i << "," << j;
  }
}

TEST(GradientReducer, OneProcessLeavesGradientsAlone) {
  Tensor p = Tensor::from_vector({1.0f, 2.0f}, {2});
  p.set_requires_grad(true);
  const Tensor gr = Tensor::from_vector({0.5f, -1.0f}, {2});
  p.set_grad(gr);
  Communicator& one = single_process();
  GradientReducer reducer;
  reducer.reduce(one, {p}, 0);
  EXPECT_EQ(p.grad().to_vector(), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_TRUE(one.any(true, "x"));
  EXPECT_FALSE(one.any(false, "x"));
}

TEST(Distributed, LauncherIsRecognisedFromItsEnvironment) {
  unsetenv("OMPI_COMM_WORLD_SIZE");
  unsetenv("PMI_SIZE");
  unsetenv("PMIX_SIZE");
  EXPECT_EQ(launcher_world_size(), 0);
  setenv("PMI_SIZE", "4", 1);
  EXPECT_EQ(launcher_world_size(), 4);
  setenv("PMI_SIZE", "four", 1);
  EXPECT_EQ(launcher_world_size(), 0);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_EQ(launcher_world_size(), 2);
  unsetenv("OMPI_COMM_WORLD_SIZE");
  unsetenv("PMI_SIZE");
}

TEST(Distributed, WarnsWhenRanksTimesThreadsExceedTheCores) {
  EXPECT_EQ(oversubscription_warning(2, 1, 2, 1), "");
  EXPECT_EQ(oversubscription_warning(1, 2, 2, 2), "");
  const std::string node = oversubscription_warning(2, 2, 2, 1);
  EXPECT_NE(node.find("2 ranks x 2 threads = 4 threads on this machine's 2 cores"),
            std::string::npos)
      << node;
  EXPECT_NE(node.find("OMP_NUM_THREADS=1"), std::string::npos) << node;
  const std::string bound = oversubscription_warning(2, 4, 16, 1);
  EXPECT_NE(bound.find("bound to 1 core"), std::string::npos) << bound;
}

TEST(Distributed, TrainerRefusesABatchSmallerThanTheRanks) {
  TrainConfig c;
  c.depth = 1, c.width = 16, c.heads = 2, c.patch = 4, c.batch_size = 2, c.out_dir = "unused";
  const Tensor images = Tensor::zeros({4, 1, 8, 8});
  const Tensor labels = Tensor::from_vector_i64({0, 1, 0, 1}, {4});
  Trainer t(c, std::make_unique<DiTDenoiser>(dit_config_for(c, 1, 8, 2)), images, labels,
            {"a", "b"});
  MirrorRanks four(4);
  try {
    t.set_communicator(four);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the global batch (2) is smaller than the number of "
                                         "ranks (4)"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace stipple::train

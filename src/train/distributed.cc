#include "train/distributed.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sched.h>
#include <time.h>

#include "core/error.h"
#include "ops/op_util.h"
#include "ops/ops.h"

namespace stipple::train {
namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string describe() const override { return "single process"; }
  void allreduce_sum(float*, size_t, const std::string&) override {}
  void allreduce_sum(double*, size_t, const std::string&) override {}
  void allreduce_sum_tensor(const Tensor&, const std::string&) override {}
  void broadcast(void*, size_t, int, const std::string&) override {}
  bool all_equal(uint64_t, const std::string&) override { return true; }
  [[noreturn]] void abort(const std::string& why) override {
    std::fprintf(stderr, "error: %s\n", why.c_str());
    std::exit(1);
  }
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return (*end == '\0' && n > 0 && n < 1000000) ? static_cast<int>(n) : 0;
}

}  // namespace

bool Communicator::any(bool flag, const std::string& what) {
  if (size() == 1) return flag;
  float v = flag ? 1.0f : 0.0f;
  allreduce_sum(&v, 1, what);
  return v > 0.5f;
}

void Communicator::allreduce_sum_tensor(const Tensor& flat, const std::string& what) {
  STIPPLE_CHECK(flat.dtype() == DType::kF32 && flat.is_contiguous(), what,
                ": the all-reduce takes a contiguous f32 tensor, not ", flat.describe());
  if (host_may_read(flat.device())) {
    allreduce_sum(flat.data<float>(), static_cast<size_t>(flat.numel()), what);
    return;
  }
  const Tensor host = flat.to(Device::kCPU).contiguous();
  allreduce_sum(host.data<float>(), static_cast<size_t>(host.numel()), what);
  ops::assign(flat, host);
}

Communicator& single_process() {
  static SingleProcess one;
  return one;
}

void check_same_weights(Communicator& comm, const std::vector<Tensor>& params,
                        const std::string& who, int64_t step) {
  if (comm.size() == 1) return;
  STIPPLE_CHECK_KIND(comm.all_equal(hash_tensors(params), str_cat("the weights check at step ", step)),
                     kIo, who, ": the ranks' weights differ at step ", step,
                     " (they must stay identical: a rank computed differently, e.g. other thread "
                     "counts or CPU kernels); the checkpoints before this step are intact");
}

Tensor Shard::of(const Tensor& x) const {
  STIPPLE_CHECK(x.size(0) == batch, "a batch of ", x.size(0), " rows where ", batch,
                " were expected");
  return whole() ? x : x.narrow(0, begin, size).contiguous();
}

Shard shard_of(int64_t batch, const Communicator& comm) {
  const int64_t r = comm.rank(), n = comm.size();
  STIPPLE_CHECK(batch >= n, "the global batch (", batch, ") is smaller than the number of ranks (",
                n, "): every rank needs at least one image per step; raise --batch-size or run "
                "fewer ranks");
  Shard s;
  s.begin = batch * r / n;
  s.size = batch * (r + 1) / n - s.begin;
  s.batch = batch;
  return s;
}

int launcher_world_size() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const int n = env_int(name)) return n;
  return 0;
}

std::string oversubscription_warning(int local_ranks, int threads_per_rank, int node_cores,
                                     int bound_cores) {
  if (local_ranks < 1 || threads_per_rank < 1) return "";
  if (node_cores > 0 && local_ranks * threads_per_rank > node_cores)
    return str_cat(local_ranks, " ranks x ", threads_per_rank, " threads = ",
                   local_ranks * threads_per_rank, " threads on this machine's ", node_cores,
                   " cores: threads will wait for each other; set OMP_NUM_THREADS=",
                   std::max(1, node_cores / local_ranks), " (ranks x threads <= cores)");
  if (bound_cores > 0 && threads_per_rank > bound_cores)
    return str_cat("each rank runs ", threads_per_rank, " threads but is bound to ", bound_cores,
                   " core", bound_cores == 1 ? "" : "s", ": set OMP_NUM_THREADS=", bound_cores,
                   ", or give each rank more cores (mpirun --map-by slot:PE=", threads_per_rank,
                   " or --bind-to none)");
  return "";
}

double poll_until(const std::function<bool()>& done, double timeout_seconds,
                  const std::string& what, int rank, const std::string& whom,
                  const std::string& why) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (done()) return waited;
    if (waited > timeout_seconds)
      throw Error(str_cat(what, ": rank ", rank, " waited ", static_cast<int>(waited), " s for ",
                          whom, " (the limit is --dist-timeout ",
                          static_cast<int>(timeout_seconds), " s)", why),
                  ErrorKind::kIo);
    if (waited < 1e-3) {
      sched_yield();
    } else {
      const timespec pause{0, 200000};
      nanosleep(&pause, nullptr);
    }
  }
}

// ---------------- GradientReducer ----------------

namespace {

// The bucket that starts at parameter i: the parameters [i, end) whose gradients (those some
// rank has) fit in `bucket_floats`, at least one. Sets *floats to their size.
size_t bucket_end(const std::vector<Tensor>& params, const std::vector<float>& has, size_t i,
                  size_t bucket_floats, size_t* floats) {
  size_t end = i;
  *floats = 0;
  while (end < params.size() &&
         (end == i || *floats + static_cast<size_t>(params[end].numel()) <= bucket_floats)) {
    if (has[end] > 0) *floats += static_cast<size_t>(params[end].numel());
    ++end;
  }
  return end;
}

}  // namespace

GradientReducer::GradientReducer(size_t bucket_bytes)
    : bucket_floats_(std::max<size_t>(1, bucket_bytes / sizeof(float))) {}

void GradientReducer::reduce(Communicator& comm, const std::vector<Tensor>& params, int64_t step) {
  if (comm.size() == 1) return;
  const auto start = std::chrono::steady_clock::now();
  // 1. which parameters have a gradient on some rank
  std::vector<float> has(params.size());
  std::vector<Tensor> grads(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor g = params[i].grad();
    if (!g.defined()) continue;
    STIPPLE_CHECK(g.shape() == params[i].shape(), "gradient all-reduce: the gradient of parameter ",
                  i, " is ", g.describe(), " but the parameter is ", params[i].describe());
    grads[i] = ops::as_f32_contiguous(g);
    has[i] = 1.0f;
  }
  comm.allreduce_sum(has.data(), has.size(), str_cat("the gradient all-reduce at step ", step));
  const Device device = params.empty() ? Device::kCPU : params.front().device();
  for (const Tensor& p : params)
    STIPPLE_CHECK(p.device() == device, "gradient all-reduce: parameters on ", device_name(device),
                  " and on ", device_name(p.device()));
  if (!host_may_read(device)) {
    reduce_on_device(comm, params, grads, has, step);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return;
  }
  // 2. buckets of consecutive parameters: pack, sum, unpack into fresh tensors
  size_t i = 0;
  while (i < params.size()) {
    size_t floats = 0;
    const size_t end = bucket_end(params, has, i, bucket_floats_, &floats);
    buffer_.resize(floats);
    size_t at = 0;
    for (size_t k = i; k < end; ++k) {
      if (has[k] == 0) continue;
      const size_t n = static_cast<size_t>(params[k].numel());
      if (grads[k].defined())
        std::memcpy(buffer_.data() + at, grads[k].data<float>(), n * sizeof(float));
      else
        std::fill_n(buffer_.data() + at, n, 0.0f);
      at += n;
    }
    if (floats > 0)
      comm.allreduce_sum(buffer_.data(), floats, str_cat("the gradient all-reduce at step ", step));
    at = 0;
    for (size_t k = i; k < end; ++k) {
      if (has[k] == 0) continue;
      const size_t n = static_cast<size_t>(params[k].numel());
      Tensor g = Tensor::empty(params[k].shape());
      std::memcpy(g.data<float>(), buffer_.data() + at, n * sizeof(float));
      Tensor p = params[k];
      p.set_grad(g);
      at += n;
    }
    i = end;
  }
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The buckets as reduce() forms them, for device tensors: each packed by one concatenation on the
// device (zeros for a gradient this rank lacks), summed where it is, and cut into fresh gradients.
void GradientReducer::reduce_on_device(Communicator& comm, const std::vector<Tensor>& params,
                                       const std::vector<Tensor>& grads,
                                       const std::vector<float>& has, int64_t step) {
  const std::string what = str_cat("the gradient all-reduce at step ", step);
  size_t i = 0;
  while (i < params.size()) {
    size_t floats = 0;
    const size_t end = bucket_end(params, has, i, bucket_floats_, &floats);
    std::vector<Tensor> parts;
    for (size_t k = i; k < end; ++k) {
      if (has[k] == 0) continue;
      const Shape flat{params[k].numel()};
      parts.push_back(grads[k].defined()
                          ? ops::reshape(grads[k], flat)
                          : Tensor::zeros(flat).to(params[k].device()));
    }
    if (!parts.empty()) {
      // concat copies even a single part: the sum never writes into a gradient still held elsewhere
      const Tensor bucket = ops::concat(parts, 0);
      comm.allreduce_sum_tensor(bucket, what);
      int64_t at = 0;
      for (size_t k = i; k < end; ++k) {
        if (has[k] == 0) continue;
        const int64_t n = params[k].numel();
        Tensor p = params[k];
        p.set_grad(ops::reshape(bucket.narrow(0, at, n), params[k].shape()));
        at += n;
      }
    }
    i = end;
  }
}

uint64_t hash_tensors(const std::vector<Tensor>& tensors) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a offset basis
  for (const Tensor& t : tensors) {
    const Tensor c = ops::as_f32_contiguous(t.detach().to(Device::kCPU));
    const auto* bytes = reinterpret_cast<const unsigned char*>(c.data<float>());
    for (size_t i = 0, n = static_cast<size_t>(c.numel()) * sizeof(float); i < n; ++i) {
      h ^= bytes[i];
      h *= 1099511628211ull;  // FNV prime
    }
  }
  return h;
}

}  // namespace stipple::train

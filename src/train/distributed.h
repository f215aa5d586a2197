// Data parallelism across processes: what the trainers need from a distributed runtime, and the
// gradient all-reduce they share.
//
// A data-parallel run has N ranks (processes) that hold identical weights, optimizer state and
// random generators. Every rank draws the whole global batch (data order, timesteps, noise, label
// drops: cheap next to the model), keeps the shard [B*r/N, B*(r+1)/N) of it, and computes its
// part of the global mean loss, (1/B) * sum over its shard. Summing the gradients over ranks
// (GradientReducer) then gives every rank the gradient of the global batch, so each one takes the
// same AdamW step and the weights stay identical without ever being sent. The global batch, and
// so the run, is the same at any N: only the summation order of the gradient differs.
//
// The runtime behind Communicator: MPI (Open MPI from Debian; stipple built with
// -DSTIPPLE_MPI=ON, src/train/mpi/) under `mpirun -np N stipple train ...`, or a single process.
// On GPUs (--device cuda) NCCL sums the gradients where they are (nccl_communicator.h), over MPI's
// ranks; on another device (the emulated one) MPI sums them through host copies.
//
// Leaves out: overlapping the all-reduce with the backward pass (on one node the all-reduce runs
// on the same cores as the backward; docs/training.md has the measured overhead), and sharding
// the optimizer state (ZeRO): every rank keeps all of it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple::train {

// A group of ranks that sum arrays together. Every collective must be called by every rank in
// the same order. Collectives throw stipple::Error when another rank is gone or none answered
// within the timeout; the caller then ends the whole job with abort().
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Ranks on this machine (for the ranks x threads check), and this one's place among them
  // (which GPU it takes).
  virtual int local_size() const = 0;
  virtual int local_rank() const = 0;
  // "single process", "Open MPI v4.1.4, 2 ranks on 1 node", ...
  virtual std::string describe() const = 0;
  // In place: every rank ends with the element-wise sum over ranks. `what` names the collective
  // in errors ("the gradient all-reduce at step 120").
  virtual void allreduce_sum(float* data, size_t n, const std::string& what) = 0;
  virtual void allreduce_sum(double* data, size_t n, const std::string& what) = 0;
  // In place, an f32 contiguous tensor on any device. This one stages a device tensor through
  // host memory and sums it there; a runtime that reads device memory (NCCL) sums it in place.
  virtual void allreduce_sum_tensor(const Tensor& flat, const std::string& what);
  // Every rank ends with root's `bytes` bytes at `data`.
  virtual void broadcast(void* data, size_t bytes, int root, const std::string& what) = 0;
  // Whether every rank passed the same value (weights checks).
  virtual bool all_equal(uint64_t value, const std::string& what) = 0;
  // Ends every rank of the job after printing `why` (the process does not return).
  [[noreturn]] virtual void abort(const std::string& why) = 0;

  bool is_root() const { return rank() == 0; }
  // Whether any rank passed true.
  bool any(bool flag, const std::string& what);
};

// The rows of a global batch that one rank trains on: [B*r/N, B*(r+1)/N).
struct Shard {
  int64_t begin = 0, size = 0, batch = 0;
  // This rank's rows of x [batch, ...] (x itself when they are all of them).
  Tensor of(const Tensor& x) const;
  // size / batch: a mean over the shard times this is its part of the mean over the batch.
  float weight() const { return static_cast<float>(size) / static_cast<float>(batch); }
  bool whole() const { return size == batch; }
};
Shard shard_of(int64_t batch, const Communicator& comm);

// One process: collectives are no-ops, abort() exits with status 1. Stateless: every caller
// shares this one.
Communicator& single_process();

// Throws (kIo) when the ranks' weights differ, by a hash of `params` (one process: nothing to
// compare). `who` and `step` name where, e.g. "train-vae" at step 250.
void check_same_weights(Communicator& comm, const std::vector<Tensor>& params,
                        const std::string& who, int64_t step);

// Polls `done` until it says true: spinning for the first millisecond (the usual case on one
// machine), then sleeping 0.2 ms between polls, so a waiting rank leaves the cores to ranks still
// computing. Returns the seconds waited, or throws (kIo) "<what>: rank <rank> waited N s for
// <whom> (the limit is --dist-timeout T s)<why>" once `timeout_seconds` have passed.
double poll_until(const std::function<bool()>& done, double timeout_seconds,
                  const std::string& what, int rank, const std::string& whom,
                  const std::string& why);

// When this process was started by an MPI launcher (mpirun, mpiexec, srun with PMI), the number
// of ranks it announces; 0 otherwise. Reads OMPI_COMM_WORLD_SIZE, PMI_SIZE and PMIX_SIZE.
int launcher_world_size();

// What a launched rank sets its OpenMP threads against: a warning (empty when fine) when this
// node's ranks x threads exceed its cores, or one rank's threads exceed the cores it is bound to.
std::string oversubscription_warning(int local_ranks, int threads_per_rank, int node_cores,
                                     int bound_cores);

// Sums parameter gradients over the ranks, in buckets of about `bucket_bytes` (consecutive
// parameters packed into one flat f32 buffer, one all-reduce per bucket). Gradients that are
// undefined on some ranks count as zeros; a parameter with no gradient on any rank keeps none
// (AdamW then skips it, on every rank alike). The reduced gradients are fresh tensors, on the
// parameters' device: there a bucket is packed, summed (Communicator::allreduce_sum_tensor) and
// unpacked without leaving it.
class GradientReducer {
 public:
  static constexpr size_t kDefaultBucketBytes = 25u << 20;  // as PyTorch DDP's bucket_cap_mb
  explicit GradientReducer(size_t bucket_bytes = kDefaultBucketBytes);
  void reduce(Communicator& comm, const std::vector<Tensor>& params, int64_t step);
  // Seconds spent in the collectives (packing included), since construction.
  double seconds() const { return seconds_; }

 private:
  void reduce_on_device(Communicator& comm, const std::vector<Tensor>& params,
                        const std::vector<Tensor>& grads, const std::vector<float>& has,
                        int64_t step);
  size_t bucket_floats_;
  std::vector<float> buffer_;
  double seconds_ = 0;
};

// A 64-bit FNV-1a hash of the tensors' bytes, in order (f32 contiguous, read from host copies of
// device tensors): ranks compare their weights with it.
uint64_t hash_tensors(const std::vector<Tensor>& tensors);

}  // namespace stipple::train

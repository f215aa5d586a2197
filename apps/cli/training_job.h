// The processes of a training command (train, train-vae, train-clip, train-classifier). Started by an MPI
// launcher (`mpirun -np N stipple train ...`, stipple built with -DSTIPPLE_MPI=ON), each rank runs
// the same command data-parallel (train/distributed.h); otherwise it is one process. Refuses to
// run as several ranks without MPI: they would train separate copies into one folder.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>

#include "core/storage.h"
#include "train/distributed.h"

namespace stipple::cli {

class TrainingJob {
 public:
  // `timeout_seconds`: how long a collective waits for the other ranks (--dist-timeout).
  explicit TrainingJob(double timeout_seconds);
  train::Communicator& comm() { return *comm_; }
  bool root() const { return comm_->is_root(); }
  bool distributed() const { return comm_->size() > 1; }

  // Runs `fn` and returns its status. Under several ranks, SIGTERM from the launcher (another
  // rank failed, or mpirun was interrupted) prints which rank ended and how to continue
  // (`resume_hint`, e.g. "--resume runs/x/latest"), and an error on this rank ends every rank
  // (the others would wait for it).
  int run(const std::string& command, const std::string& resume_hint,
          const std::function<int()>& fn);
  // The device the command trains on, from --device. On several ranks with "cuda", each rank
  // takes the GPU of its place on the node and comm() then sums device tensors with NCCL
  // (train/nccl_communicator.h). Throws when the device is unusable, saying why.
  Device use_device(const std::string& name);
  // Under several ranks, rank 0 prints the layout and any ranks x threads warning.
  void announce(int global_batch);
  // run() for a command whose global batch is known up front: announces it, then runs `fn`.
  int run(const std::string& command, const std::string& resume_hint, int global_batch,
          const std::function<int()>& fn) {
    return run(command, resume_hint, [&] {
      announce(global_batch);
      return fn();
    });
  }

 private:
  double timeout_seconds_;
  std::unique_ptr<train::Communicator> mpi_;   // null for one process
  std::unique_ptr<train::Communicator> nccl_;  // over mpi_, after use_device("cuda")
  train::Communicator* comm_;
};

// Adds --dist-timeout to a training command's options.
void add_dist_timeout_option(CLI::App* cmd, double& seconds);

}  // namespace stipple::cli

#include "training_job.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "train/nccl_communicator.h"
#if STIPPLE_WITH_MPI
#include "train/mpi/mpi_communicator.h"
#endif

namespace stipple::cli {
namespace {

// A rank of a distributed run gets SIGTERM from the launcher when another rank failed or the job
// was interrupted; SIGKILL follows within seconds, too soon for a checkpoint. It says so and ends.
char g_term_message[768];
extern "C" void on_sigterm_rank(int) {
  const ssize_t ignored = ::write(2, g_term_message, std::strlen(g_term_message));
  (void)ignored;
  ::_exit(1);
}

// MPI's ranks when started by an MPI launcher (and built with MPI); null for one process.
std::unique_ptr<train::Communicator> mpi_communicator(double timeout_seconds) {
  const int launched = train::launcher_world_size();
#if STIPPLE_WITH_MPI
  if (launched > 0) return train::mpi_world(timeout_seconds);
#else
  (void)timeout_seconds;
  STIPPLE_CHECK(launched <= 1, "this process is one of ", launched,
                " ranks started by an MPI launcher, but this stipple was built without MPI, so "
                "it would train ",
                launched,
                " separate copies into one folder; build with -DSTIPPLE_MPI=ON (Debian: "
                "libopenmpi-dev) for data-parallel training");
#endif
  return nullptr;
}

// Cores this process may run on (its CPU affinity), 0 when unknown.
int bound_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
}

}  // namespace

TrainingJob::TrainingJob(double timeout_seconds)
    : timeout_seconds_(timeout_seconds),
      mpi_(mpi_communicator(timeout_seconds)),
      comm_(mpi_ != nullptr ? mpi_.get() : &train::single_process()) {}

Device TrainingJob::use_device(const std::string& name) {
  if (distributed() && parse_device(name, /*check=*/false) == Device::kCUDA)
    train::choose_rank_gpu(*comm_);
  const Device device = parse_device(name);
  if (device == Device::kCUDA && distributed() && nccl_ == nullptr) {
    nccl_ = train::nccl_communicator(*comm_, timeout_seconds_);
    comm_ = nccl_.get();
  }
  return device;
}

int TrainingJob::run(const std::string& command, const std::string& resume_hint,
                     const std::function<int()>& fn) {
  if (!distributed()) return fn();
  try {
    std::snprintf(g_term_message, sizeof g_term_message,
                  "stipple %s (rank %d of %d): ended by the MPI launcher, because another rank "
                  "failed or the job was interrupted (mpirun says which); the newest complete "
                  "checkpoint is kept: continue with %s\n",
                  command.c_str(), comm_->rank(), comm_->size(), resume_hint.c_str());
    std::signal(SIGTERM, on_sigterm_rank);
    return fn();
  } catch (const std::exception& e) {
    comm_->abort(e.what());
  }
  return 1;  // not reached: abort() ends the process
}

void TrainingJob::announce(int global_batch) {
  if (!distributed() || !root()) return;
  std::fprintf(stderr, "data parallel: %s; global batch %d, %d to %d per rank\n",
               comm_->describe().c_str(), global_batch, global_batch / comm_->size(),
               (global_batch + comm_->size() - 1) / comm_->size());
  const std::string warning =
      train::oversubscription_warning(comm_->local_size(), omp_get_max_threads(),
                                      static_cast<int>(std::thread::hardware_concurrency()),
                                      bound_cores());
  if (!warning.empty()) std::fprintf(stderr, "warning: %s\n", warning.c_str());
}

void add_dist_timeout_option(CLI::App* cmd, double& seconds) {
  cmd->add_option("--dist-timeout", seconds,
                  "under mpirun: seconds a rank waits for the others in a collective before the "
                  "job ends with an error (rank 0's checkpoints and evaluations count)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 86400.0));
}

}  // namespace stipple::cli

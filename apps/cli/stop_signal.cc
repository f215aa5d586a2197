#include "stop_signal.h"

#include <atomic>
#include <csignal>

#include "train/distributed.h"

namespace stipple::cli {
namespace {
std::atomic<bool> g_stop{false};
extern "C" void stipple_on_stop_signal(int) { g_stop = true; }

// A rank of an mpirun job leaves SIGTERM to TrainingJob: there it means the launcher is ending
// the job, with SIGKILL close behind.
bool sigterm_is_the_launchers() { return train::launcher_world_size() > 1; }

}  // namespace

void install_stop_handlers() {
  g_stop = false;
  std::signal(SIGINT, stipple_on_stop_signal);
  if (!sigterm_is_the_launchers()) std::signal(SIGTERM, stipple_on_stop_signal);
  std::signal(SIGUSR1, stipple_on_stop_signal);  // what mpirun forwards to every rank
}

void remove_stop_handlers() {
  std::signal(SIGINT, SIG_DFL);
  if (!sigterm_is_the_launchers()) std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGUSR1, SIG_DFL);
}

bool stop_requested() { return g_stop.load(); }

}  // namespace stipple::cli

// Graceful stop for long jobs: SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (which mpirun forwards to
// every rank) set a flag the trainers poll after each step, so they save a checkpoint and return
// instead of dying mid-write.
#pragma once

namespace stipple::cli {

void install_stop_handlers();  // clears the flag and installs the handlers
void remove_stop_handlers();   // back to the default actions
bool stop_requested();

}  // namespace stipple::cli

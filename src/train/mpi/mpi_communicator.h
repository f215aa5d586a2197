// The MPI runtime behind train::Communicator (built with -DSTIPPLE_MPI=ON into the stipple_mpi
// library, which the command line links; the stipple library itself never needs MPI).
//
// Collectives are non-blocking MPI calls that this rank polls until they finish or until the
// timeout passes: a rank that is stuck (stopped, swapping, deadlocked) then ends the job with an
// error that names the collective, instead of a hang. A rank that dies is noticed by the
// launcher, which ends the others (the command line prints why on each).
#pragma once

#include <memory>

#include "train/distributed.h"

namespace stipple::train {

// MPI_COMM_WORLD, initialising MPI on first use (MPI_THREAD_FUNNELED: only the calling thread
// speaks MPI; OpenMP threads compute). MPI is finalised at exit. `timeout_seconds` bounds every
// collective's wait.
std::unique_ptr<Communicator> mpi_world(double timeout_seconds);

}  // namespace stipple::train

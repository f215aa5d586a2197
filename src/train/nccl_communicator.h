// NCCL (NVIDIA's collective library) behind train::Communicator: data-parallel training on GPUs,
// `mpirun -np N stipple train --device cuda ...`, one GPU per rank, as PyTorch's DDP does with its
// NCCL backend.
//
// The gradient buckets (GradientReducer) are summed by ncclAllReduce where they are, in place, on
// the CUDA backend's stream; everything else (the bootstrap, the loss statistics, stop flags, the
// weights check) goes through `host`, the MPI ranks (or the single process), whose collectives
// carry the timeout. A device all-reduce is waited for by polling its stream, with the same
// timeout: a rank that is lost ends the job with an error that names the collective, not a hang.
//
// libnccl.so.2 is opened at run time, as cuBLAS is (src/backends/cuda/runtime.cu): a stipple built
// with CUDA runs without NCCL until a multi-GPU run asks for it, and then says what is missing.
// The caller chooses this rank's GPU (cuda::select_device, by its place on the node) first.
#pragma once

#include <memory>

#include "train/distributed.h"

namespace stipple::train {

// Whether this stipple was built with NCCL support (CUDA, and the toolkit's nccl.h).
bool nccl_built();

// On several ranks with CUDA: this rank's GPU, by its place on the node (local rank modulo the
// GPUs it sees; CUDA_VISIBLE_DEVICES narrows them as usual), chosen before anything touches the
// device. Nothing for one process or in a build without CUDA.
void choose_rank_gpu(const Communicator& comm);

// A communicator over `host`'s ranks whose tensor all-reduce runs on the GPU. `host` must outlive
// it. Throws (kUnsupported) when NCCL or the device is missing, naming which.
std::unique_ptr<Communicator> nccl_communicator(Communicator& host, double timeout_seconds);

}  // namespace stipple::train

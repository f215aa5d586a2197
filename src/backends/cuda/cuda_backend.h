// The CUDA backend's face to the rest of stipple (built with -DSTIPPLE_CUDA=ON; the library then
// defines STIPPLE_WITH_CUDA). Plain C++: no CUDA header leaks out of src/backends/cuda.
//
// Memory: one device (cuda:0 unless select_device() or CUDA_VISIBLE_DEVICES says otherwise) and one
// stream, on which every kernel and copy of the backend is ordered. Device memory comes from a
// caching allocator: freed blocks are kept, by size, for the next request of a similar size (a
// denoising step asks for the same activation sizes again and again, and cudaMalloc/cudaFree
// synchronise the device). A byte budget (STIPPLE_CUDA_MEMORY_MB, default: all the device has)
// bounds tensors plus cache; a request past it, or one the device refuses even after the cache
// was handed back, throws an Error of kind kOutOfMemory that names the request and what is in use.
//
// Frees are stream-ordered: a block freed while kernels that use it may still run is reused only
// by later work on the same stream, so no synchronisation is needed to recycle it.
#pragma once

#include <cstddef>
#include <string>

namespace stipple {
struct KernelTable;
}

namespace stipple::cuda {

// Which of the visible GPUs this process uses (default 0; a data-parallel rank takes its place
// on the node). Only before the backend first touches the device: a later call naming another
// device throws. cudaSetDevice is per thread: the thread that first uses the backend is bound;
// the backend's work runs on that thread.
void select_device(int ordinal);
int device_count();  // 0 without a driver or device
int device_ordinal();
// The backend's stream (a cudaStream_t), for a library that orders its work on it (NCCL).
void* stream_handle();

// True when a CUDA device is present and usable; otherwise why not, in words ("no CUDA device",
// "CUDA driver version is insufficient ...").
bool available();
std::string unavailable_reason();
// "NVIDIA H200 (sm_90, 139.8 GiB)", or the unavailable reason.
std::string device_description();

// Opens cuBLAS now (the backend otherwise opens it on first use, so that processes that never
// touch the GPU do not pay its ~150 MiB of resident relocations). Throws, naming the library and
// the loader's reason, when it cannot be opened. Needs no device.
void load_blas();

// dlopen()s a library of the CUDA toolkit ("libnccl.so.2"), from the loader's path or else the
// toolkit this stipple was built with. Throws (kUnsupported) "<needed_by>, and <name> could not
// be opened (<why>); ..." when neither has it.
void* open_library(const std::string& name, const std::string& needed_by);

// dlsym(lib, symbol) in a library open_library() opened (`name` is its file name); throws
// (kUnsupported) "<name> lacks <symbol>; <needed>" when the library does not have it.
void* library_symbol(void* lib, const std::string& name, const char* symbol,
                     const std::string& needed);

// Device memory (see the header comment). allocate(0) returns nullptr.
void* allocate(size_t nbytes);
void release(void* p, size_t nbytes);
void set_memory_budget(size_t bytes);  // 0: no budget beyond the device's memory
size_t memory_budget();
size_t allocated_bytes();  // held by tensors now
size_t peak_allocated_bytes();
size_t cached_bytes();     // held by the cache of freed blocks
void trim_cache();         // hands the cached blocks back to the device

// Copies, ordered on the backend's stream. to_host waits for the copy (and all work before it);
// to_device copies from pageable host memory through a pinned staging buffer and returns once
// the host buffer may be reused.
void copy_to_device(void* dst, const void* src, size_t nbytes);
void copy_to_host(void* dst, const void* src, size_t nbytes);
void copy_on_device(void* dst, const void* src, size_t nbytes);
void fill_zero(void* dst, size_t nbytes);
void synchronize();

// The kernel table for tensors on the CUDA device. Entries the backend does not have are null;
// the ops report them ("conv2d has no CUDA kernel yet") instead of running host code on device
// memory.
const KernelTable& kernels();

}  // namespace stipple::cuda

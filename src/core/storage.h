// Storage: a block of bytes that tensors view. Either owned (64-byte aligned, zero-initialised
// on request) or borrowed from someone who keeps it alive (an mmap'ed safetensors file).
//
// Caches derived from a storage's contents (oneDNN-reordered convolution weights, see
// backends/cpu/fast_linalg.cc) key on id() + version() and are consulted only for storages marked
// frozen. The contract that keeps them sound:
// - frozen is set by nn::Module::freeze_for_inference() (the loaders of inference models call it)
//   and cleared by Module::train(true) and by unfreeze();
// - every in-place writer stipple has (optimisers, load_state_dict, reset_parameters) calls
//   bump_version() after writing, so a cached copy of older values is never used again;
// - code that writes a frozen tensor through data<T>() must call bump_version() too.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace stipple {

// kEmulated is a device for tests: its memory is host memory, its kernels are the CPU reference
// kernels (ops/kernels.h, emulated_kernels()), and host code may not read it (Tensor::data<T>()
// refuses it outside a kernel) — so a pipeline that runs on it would run on a GPU without host
// reads of device memory, and CI can check that without a GPU.
enum class Device : uint8_t { kCPU, kCUDA, kEmulated };
const char* device_name(Device d);  // "cpu", "cuda", "emulated"
// A device as users name it: "cpu", "cuda" (or "cuda:0": one GPU per process) or "emulated";
// anything else is a kInvalidArgument error naming it. When `check` is set the device must be
// usable here: a build without CUDA or a machine without a GPU is an error that says which
// (allocating a byte there).
Device parse_device(const std::string& name, bool check = true);
// Throws the error for a tensor on a device this build has no backend for ("a tensor is on cuda,
// and this stipple was built without CUDA (configure with -DSTIPPLE_CUDA=ON)").
[[noreturn]] void throw_no_backend(Device d);
// Whether host code may read memory of this device now: the CPU's always, the emulated device's
// only while one of its kernels runs.
bool host_may_read(Device d);

// While one is alive (on any thread), emulated-device memory may be read by host code: the
// emulated device's kernels hold one while they run.
class EmulatedKernelScope {
 public:
  EmulatedKernelScope();
  ~EmulatedKernelScope();
  EmulatedKernelScope(const EmulatedKernelScope&) = delete;
  EmulatedKernelScope& operator=(const EmulatedKernelScope&) = delete;
};

class Storage {
 public:
  // Allocates nbytes on `device`. Host blocks are 64-byte aligned, and blocks of 1 MiB or more
  // come from a bounded cache of freed blocks when one fits (see storage.cc). Device blocks come
  // from the CUDA backend's caching allocator (backends/cuda/cuda_backend.h); without that
  // backend, asking for one is an error of kind kUnsupported.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device = Device::kCPU,
                                           bool zero = false);
  // Returns every cached free block to the system (also done when an allocation fails).
  static void trim_cache();
  // Bytes held by the cache of freed blocks now.
  static size_t cached_bytes();
  // Bytes of owned storages alive now (tensors, not the cache; LazyZeroScope's mappings are left
  // out, as they may never be written) and the most there were since the last
  // reset_peak_bytes(): what the model and its activations take, next to the resident memory the
  // system reports.
  static size_t live_bytes();
  static size_t peak_live_bytes();
  static void reset_peak_bytes();
  // Views memory owned elsewhere; `keepalive` is held as long as this storage lives.
  // `file_backed`: the memory is a private read-only-in-practice mapping of a file (safetensors),
  // whose pages release_pages() may hand back to the kernel.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, std::shared_ptr<void> keepalive,
                                       Device device = Device::kCPU, bool file_backed = false);
  // Sets the budget of the cache of freed blocks (STIPPLE_BLOCK_CACHE_MB at start, default
  // 512 MB), freeing what no longer fits. Low-memory runs set it small.
  static void set_cache_budget(size_t bytes);
  static size_t cache_budget();
  // Copies nbytes between any two devices' memory (host to host, host to device, ...). A copy to
  // the host returns once the bytes are there; one to a device, once `src` may be reused.
  static void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                         size_t nbytes);

  // While one is alive on a thread, zero-initialised allocations of 64 KiB or more on it that the
  // cache cannot serve are fresh anonymous mappings, whose pages the kernel provides already
  // zeroed on first touch: memory that is allocated and then replaced without being written (a
  // model's zero parameters before a checkpoint loads over them, or is stored in half
  // precision instead) never becomes resident. Nests.
  class LazyZeroScope {
   public:
    LazyZeroScope();
    ~LazyZeroScope();
    LazyZeroScope(const LazyZeroScope&) = delete;
    LazyZeroScope& operator=(const LazyZeroScope&) = delete;
    static bool active();
  };

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // Unique in this process and never reused (unlike data()), so a cache key outlives no storage.
  uint64_t id() const { return id_; }
  // Changes after each in-place write (see the header comment).
  uint64_t version() const { return version_.load(std::memory_order_acquire); }
  void bump_version() { version_.fetch_add(1, std::memory_order_acq_rel); }
  // Frozen: the contents are constant until bump_version(); derived caches may be used.
  bool frozen() const { return frozen_.load(std::memory_order_acquire); }
  void set_frozen(bool on) { frozen_.store(on, std::memory_order_release); }

  // For a file-backed storage never written (version 0): hands the whole pages it covers back to
  // the kernel (madvise MADV_DONTNEED), so a checkpoint's bytes stop counting as resident once
  // they were copied into the model; a later read maps them from the file again. Otherwise
  // nothing. Returns the bytes released.
  size_t release_pages();

 private:
  Storage();
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_ = Device::kCPU;
  bool owned_ = false;
  bool mapped_ = false;       // owned, from mmap (LazyZeroScope): unmapped, never cached
  bool file_backed_ = false;  // wrap() of a private file mapping
  size_t capacity_ = 0;  // bytes allocated (>= nbytes_) when owned
  std::shared_ptr<void> keepalive_;
  uint64_t id_;
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> frozen_{false};
};

}  // namespace stipple

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

namespace stipple {

enum class Device : uint8_t { kCPU, kCUDA };
const char* device_name(Device d);

class Storage {
 public:
  // Allocates nbytes on `device` (only kCPU today), 64-byte aligned. Blocks of 1 MiB or more
  // come from a bounded cache of freed blocks when one fits (see storage.cc).
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device = Device::kCPU,
                                           bool zero = false);
  // Returns every cached free block to the system (also done when an allocation fails).
  static void trim_cache();
  // Bytes held by the cache of freed blocks now.
  static size_t cached_bytes();
  // Views memory owned elsewhere; `keepalive` is held as long as this storage lives.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, std::shared_ptr<void> keepalive,
                                       Device device = Device::kCPU);

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

 private:
  Storage();
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_ = Device::kCPU;
  bool owned_ = false;
  size_t capacity_ = 0;  // bytes allocated (>= nbytes_) when owned
  std::shared_ptr<void> keepalive_;
  uint64_t id_;
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> frozen_{false};
};

}  // namespace stipple

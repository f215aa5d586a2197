// Storage: a block of bytes that tensors view. Either owned (64-byte aligned, zero-initialised
// on request) or borrowed from someone who keeps it alive (an mmap'ed safetensors file).
#pragma once

#include <cstddef>
#include <memory>

namespace stipple {

enum class Device : uint8_t { kCPU, kCUDA };
const char* device_name(Device d);

class Storage {
 public:
  // Allocates nbytes on `device` (only kCPU today), 64-byte aligned.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device = Device::kCPU,
                                           bool zero = false);
  // Views memory owned elsewhere; `keepalive` is held as long as this storage lives.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, std::shared_ptr<void> keepalive,
                                       Device device = Device::kCPU);

  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_ = Device::kCPU;
  bool owned_ = false;
  std::shared_ptr<void> keepalive_;
};

}  // namespace stipple

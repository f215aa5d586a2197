#include "core/storage.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace stipple {

const char* device_name(Device d) { return d == Device::kCPU ? "cpu" : "cuda"; }

Storage::Storage() {
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id.fetch_add(1, std::memory_order_relaxed);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device, bool zero) {
  STIPPLE_CHECK(device == Device::kCPU, "device ", device_name(device), " is not built in");
  auto s = std::shared_ptr<Storage>(new Storage());
  const size_t rounded = ((nbytes + 63) / 64) * 64;
  if (rounded > 0) {
    s->data_ = std::aligned_alloc(64, rounded);
    if (s->data_ == nullptr) throw std::bad_alloc();
    if (zero) std::memset(s->data_, 0, rounded);
  }
  s->nbytes_ = nbytes;
  s->device_ = device;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t nbytes, std::shared_ptr<void> keepalive,
                                       Device device) {
  auto s = std::shared_ptr<Storage>(new Storage());
  s->data_ = data;
  s->nbytes_ = nbytes;
  s->device_ = device;
  s->keepalive_ = std::move(keepalive);
  return s;
}

Storage::~Storage() {
  if (owned_) std::free(data_);
}

}  // namespace stipple

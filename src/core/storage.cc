#include "core/storage.h"

#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <utility>

#include "core/block_cache.h"
#include "core/error.h"
#ifdef STIPPLE_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace stipple {
namespace {

constexpr size_t kMiB = size_t{1} << 20;
constexpr size_t kCachedMin = kMiB;                 // smaller blocks go straight to malloc
constexpr size_t kCachedGranule = 64 * 1024;        // cached sizes are multiples of this
constexpr size_t kLazyMin = 64 * 1024;              // LazyZeroScope maps blocks from this size
constexpr size_t kDefaultCacheBudget = 512 * kMiB;  // STIPPLE_BLOCK_CACHE_MB overrides

thread_local int lazy_zero_depth = 0;

// Blocks of kCachedMin or more are mapped from the system directly (and unmapped when the cache
// lets them go), so that the cache can move their pages into a larger block (take()). Transparent
// huge pages for them (2 MiB-aligned, MADV_HUGEPAGE) were measured and dropped: opening a model
// took 2 s longer (its weights are such blocks) and steps were no faster.
std::atomic<size_t> g_fresh_bytes{0};  // block_cache_fresh_bytes()

void* map_block(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  g_fresh_bytes.fetch_add(bytes, std::memory_order_relaxed);
  return p;
}

void unmap_block(void* p, size_t bytes) { ::munmap(p, bytes); }

std::atomic<size_t> g_live_bytes{0};
std::atomic<size_t> g_peak_bytes{0};

void count_alloc(size_t n) {
  const size_t now = g_live_bytes.fetch_add(n, std::memory_order_relaxed) + n;
  size_t peak = g_peak_bytes.load(std::memory_order_relaxed);
  while (now > peak && !g_peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

// Freed blocks of 1 MiB or more, kept for reuse up to a budget. A denoising step allocates the
// same activation sizes again and again; a fresh block from the system is zeroed by the kernel on
// first touch (about 15% of a UNet step's samples were page faults). A request takes the
// smallest cached block at least as large and at most 1/8 larger (of those, the last freed), or
// reshapes one (take()).
// When the budget is full, the blocks freed longest ago go first: the sizes a step is using now
// stay. (Freeing the smallest first instead, an SD 1.5 step at 512x512 with a 128 MiB budget
// still took 2.9x as many bytes fresh from the system; replayed from an allocation trace.)
// With the peak bound on (core/block_cache.h; --low-memory), the cache never raises the
// process's peak: before a block comes fresh from the system, cached blocks go (oldest first)
// until the storages in use, the new block and the cache together fit under the high-water mark
// of storages in use (peak_live_bytes), less a headroom. At a step's peak the cache is empty;
// elsewhere it serves the step's repeats. (Replayed on two SD 1.5 steps: the peak as without a
// cache, +12 MiB, and 3.7 GB of the 14.1 GB asked fresh from the system, against 2.7 GB and
// +117 MiB for a 128 MiB cache without the bound.) Off by default, where the budget alone bounds
// the cache.
// Thread-safe; never destroyed (storages may die at exit).
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  // A block of `bytes` (its capacity in *capacity) made from cached ones, or nullptr when the
  // cache is empty. A cached block at most 1/8 larger is taken as it is (of those, the last
  // freed). Failing that, the largest smaller block is grown to the size (its pages moved, not
  // copied, and only the rest fresh from the system), or else the smallest larger block is split
  // (the rest stays cached). A step's activations come in many sizes: reshaping blocks instead of
  // mapping whole fresh ones cut the bytes fresh from the system in an SD 1.5 bench run (open,
  // then 3 steps at 512x512) from 17.6 to 10.8 GB with --low-memory, and from 6.0 to 3.9 GB by default (there
  // also the peak: 4779 -> 4488 MiB).
  void* take(size_t bytes, size_t* capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.lower_bound(bytes);
    if (it != by_size_.end() && it->first <= bytes + bytes / 8) {
      it = std::prev(by_size_.upper_bound(it->first));  // the last freed of that size
      *capacity = it->first;
      void* p = it->second->p;
      remove(it);
      return p;
    }
    if (it != by_size_.begin()) {  // grow the largest smaller block
      it = std::prev(it);
      const size_t have = it->first;
      void* p = it->second->p;
      remove(it);
      fit_under_peak(bytes);
      void* q = map_block(bytes);
      if (q != nullptr &&
          ::mremap(p, have, have, MREMAP_MAYMOVE | MREMAP_FIXED, q) != MAP_FAILED) {
        *capacity = bytes;
        g_fresh_bytes.fetch_sub(have, std::memory_order_relaxed);  // moved, not fresh
        return q;
      }
      if (q != nullptr) unmap_block(q, bytes);
      unmap_block(p, have);
      return nullptr;
    }
    if (it == by_size_.end()) return nullptr;
    // Split the smallest larger block: the front serves the request, the rest stays where the
    // block was in the eviction order.
    const size_t have = it->first;
    char* p = static_cast<char*>(it->second->p);
    auto at = std::next(it->second);
    remove(it);
    auto rest = order_.insert(at, Block{have - bytes, p + bytes, {}});
    rest->where = by_size_.emplace(have - bytes, rest);
    held_ += have - bytes;
    *capacity = bytes;
    return p;
  }

  // Before `bytes` come fresh from the system: drops cached blocks until in-use storages, the
  // new block and the cache fit under the high-water mark of in-use storages.
  void make_room(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    fit_under_peak(bytes);
  }

  void set_peak_bound(bool on, size_t headroom) {
    std::lock_guard<std::mutex> lock(mu_);
    peak_bound_ = on;
    headroom_ = headroom;
  }

  // Keeps `p` for reuse, or frees it when it does not fit in the budget.
  void give(void* p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    if (capacity > budget_) {
      unmap_block(p, capacity);
      return;
    }
    while (held_ + capacity > budget_) drop_oldest();
    order_.push_back(Block{capacity, p, {}});
    order_.back().where = by_size_.emplace(capacity, std::prev(order_.end()));
    held_ += capacity;
  }

  void set_budget(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    budget_ = bytes;
    while (held_ > budget_) drop_oldest();
  }

  size_t budget() {
    std::lock_guard<std::mutex> lock(mu_);
    return budget_;
  }

  void trim() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!order_.empty()) drop_oldest();
  }

  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }

 private:
  BlockCache() {
    const char* env = std::getenv("STIPPLE_BLOCK_CACHE_MB");
    budget_ = env != nullptr ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) * kMiB
                             : kDefaultCacheBudget;
  }

  struct Block {
    size_t capacity;
    void* p;
    std::multimap<size_t, std::list<Block>::iterator>::iterator where;  // its by_size_ entry
  };

  void remove(std::multimap<size_t, std::list<Block>::iterator>::iterator it) {  // mu_ held
    held_ -= it->first;
    order_.erase(it->second);
    by_size_.erase(it);
  }

  void fit_under_peak(size_t bytes) {  // mu_ held
    if (!peak_bound_) return;
    const size_t live = g_live_bytes.load(std::memory_order_relaxed);
    const size_t peak = g_peak_bytes.load(std::memory_order_relaxed);
    const size_t mark = peak > headroom_ ? peak - headroom_ : 0;
    while (!order_.empty() && live + bytes + held_ > mark) drop_oldest();
  }

  void drop_oldest() {  // mu_ held; order_ not empty
    const Block& b = order_.front();
    unmap_block(b.p, b.capacity);
    held_ -= b.capacity;
    by_size_.erase(b.where);
    order_.pop_front();
  }

  std::mutex mu_;
  std::list<Block> order_;  // oldest freed first
  std::multimap<size_t, std::list<Block>::iterator> by_size_;
  size_t held_ = 0;
  size_t budget_ = 0;
  bool peak_bound_ = false;
  size_t headroom_ = 0;
};

}  // namespace

Storage::LazyZeroScope::LazyZeroScope() { ++lazy_zero_depth; }
Storage::LazyZeroScope::~LazyZeroScope() { --lazy_zero_depth; }
bool Storage::LazyZeroScope::active() { return lazy_zero_depth > 0; }

const char* device_name(Device d) {
  switch (d) {
    case Device::kCPU: return "cpu";
    case Device::kCUDA: return "cuda";
    case Device::kEmulated: return "emulated";
  }
  return "?";
}

namespace {
std::atomic<int> g_emulated_kernels{0};  // emulated-device kernels running now (any thread)
}

bool host_may_read(Device d) {
  return d == Device::kCPU || (d == Device::kEmulated && g_emulated_kernels.load() > 0);
}

EmulatedKernelScope::EmulatedKernelScope() { g_emulated_kernels.fetch_add(1); }
EmulatedKernelScope::~EmulatedKernelScope() { g_emulated_kernels.fetch_sub(1); }

Storage::Storage() {
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id.fetch_add(1, std::memory_order_relaxed);
}

void throw_no_backend(Device device) {
  throw Error(str_cat("a tensor is on ", device_name(device),
                      ", and this stipple was built without CUDA (configure with -DSTIPPLE_CUDA=ON)"),
              ErrorKind::kUnsupported);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device, bool zero) {
  auto s = std::shared_ptr<Storage>(new Storage());
  if (device == Device::kCUDA) {
#ifdef STIPPLE_WITH_CUDA
    s->data_ = cuda::allocate(nbytes);
    if (zero && nbytes > 0) cuda::fill_zero(s->data_, nbytes);
    s->capacity_ = s->nbytes_ = nbytes;
    s->device_ = device;
    s->owned_ = true;
    return s;
#else
    throw_no_backend(device);
#endif
  }
  size_t rounded = ((nbytes + 63) / 64) * 64;
  if (zero && rounded >= kLazyMin && LazyZeroScope::active()) {
    // Never a cached block: those are resident, and zeroing them would make them so again.
    void* p = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      s->data_ = p;
      s->mapped_ = true;
      zero = false;  // fresh anonymous pages read as zero
    }
  }
  if (s->data_ == nullptr && rounded >= kCachedMin) {
    rounded = (rounded + kCachedGranule - 1) / kCachedGranule * kCachedGranule;
    s->data_ = BlockCache::instance().take(rounded, &rounded);
    if (s->data_ == nullptr) {
      BlockCache::instance().make_room(rounded);
      s->data_ = map_block(rounded);
      if (s->data_ == nullptr) {  // memory pressure: hand the cached blocks back and retry
        trim_cache();
        s->data_ = map_block(rounded);
      }
      if (s->data_ == nullptr) throw std::bad_alloc();
      zero = false;  // fresh anonymous pages read as zero
    }
  }
  if (s->data_ == nullptr && rounded > 0) {
    s->data_ = std::aligned_alloc(64, rounded);
    if (s->data_ == nullptr) {  // memory pressure: hand the cached blocks back and retry
      trim_cache();
      s->data_ = std::aligned_alloc(64, rounded);
    }
    if (s->data_ == nullptr) throw std::bad_alloc();
  }
  if (zero && rounded > 0) std::memset(s->data_, 0, rounded);
  s->capacity_ = rounded;
  if (!s->mapped_) count_alloc(rounded);  // lazy mappings are not resident until written
  s->nbytes_ = nbytes;
  s->device_ = device;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t nbytes, std::shared_ptr<void> keepalive,
                                       Device device, bool file_backed) {
  auto s = std::shared_ptr<Storage>(new Storage());
  s->file_backed_ = file_backed;
  s->data_ = data;
  s->nbytes_ = nbytes;
  s->device_ = device;
  s->keepalive_ = std::move(keepalive);
  return s;
}

Storage::~Storage() {
  if (!owned_ || data_ == nullptr) return;
#ifdef STIPPLE_WITH_CUDA
  if (device_ == Device::kCUDA) {
    cuda::release(data_, capacity_);
    return;
  }
#endif
  if (!mapped_) g_live_bytes.fetch_sub(capacity_, std::memory_order_relaxed);
  if (mapped_) {
    ::munmap(data_, capacity_);
  } else if (capacity_ >= kCachedMin) {
    BlockCache::instance().give(data_, capacity_);  // or unmapped
  } else {
    std::free(data_);
  }
}

void Storage::trim_cache() { BlockCache::instance().trim(); }

void Storage::copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                         size_t nbytes) {
  if (nbytes == 0) return;
  // The CPU's and the emulated device's memory are both host memory.
  const bool dst_host = dst_device != Device::kCUDA, src_host = src_device != Device::kCUDA;
  if (dst_host && src_host) {
    std::memcpy(dst, src, nbytes);
    return;
  }
#ifdef STIPPLE_WITH_CUDA
  if (src_host) {
    cuda::copy_to_device(dst, src, nbytes);
  } else if (dst_host) {
    cuda::copy_to_host(dst, src, nbytes);
  } else {
    cuda::copy_on_device(dst, src, nbytes);
  }
#else
  throw_no_backend(Device::kCUDA);
#endif
}

size_t Storage::live_bytes() { return g_live_bytes.load(std::memory_order_relaxed); }
size_t Storage::peak_live_bytes() { return g_peak_bytes.load(std::memory_order_relaxed); }
void Storage::reset_peak_bytes() { g_peak_bytes.store(live_bytes(), std::memory_order_relaxed); }

void Storage::set_cache_budget(size_t bytes) { BlockCache::instance().set_budget(bytes); }

void set_block_cache_peak_bound(bool on, size_t headroom) {
  BlockCache::instance().set_peak_bound(on, headroom);
}

size_t block_cache_fresh_bytes() { return g_fresh_bytes.load(std::memory_order_relaxed); }

size_t Storage::cache_budget() { return BlockCache::instance().budget(); }

size_t Storage::release_pages() {
  if (!file_backed_ || data_ == nullptr || version() != 0) return 0;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data_) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data_) + nbytes_) / page * page;
  if (end <= begin) return 0;
  if (::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) return 0;
  return end - begin;
}

size_t Storage::cached_bytes() { return BlockCache::instance().held(); }

}  // namespace stipple

#include "core/storage.h"

#include <algorithm>
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
#include <vector>

#include "core/block_cache.h"
#include "core/memory_plan.h"
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
  // then 3 steps at 512x512) from 17.6 to 10.8 GB with --low-memory, and from 6.0 to 3.9 GB by
  // default (there also the peak: 4779 -> 4488 MiB).
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

// ---------------- MemoryPlan (core/memory_plan.h) ----------------

namespace {

// A plan's arena: mapped once, shared by the plan and the storages placed in it.
struct Arena {
  char* base = nullptr;
  size_t size = 0;
  std::map<size_t, size_t> live;  // offset -> end of the blocks in use
  bool plan_alive = true;
};

std::mutex g_plan_mu;                                  // guards what follows and every State
std::vector<std::shared_ptr<Arena>> g_arenas;          // arenas with blocks or a plan alive
std::vector<MemoryPlan::State*> g_recording;           // plans recording a run now
std::atomic<int> g_plan_users{0};                      // g_arenas.size() + g_recording.size()
thread_local MemoryPlan::State* t_plan = nullptr;      // the plan of this thread's open Scope

void unmap_arena(const std::shared_ptr<Arena>& a) {  // g_plan_mu held
  unmap_block(a->base, a->size);
  g_live_bytes.fetch_sub(a->size, std::memory_order_relaxed);
  g_arenas.erase(std::find(g_arenas.begin(), g_arenas.end(), a));
  g_plan_users.fetch_sub(1);
}

}  // namespace

struct MemoryPlan::State {
  struct Record {
    size_t size;
    int64_t allocated, freed;  // times on the recording's clock; freed -1: not in the run
  };
  bool recorded = false;  // the first run has ended
  std::vector<Record> records;
  std::map<void*, size_t> open;  // data -> record, for blocks of the recording still in use
  int64_t clock = 0;
  std::vector<int64_t> offsets;  // per record: the offset in the arena, or -1
  size_t arena_size = 0, planned = 0, placed = 0;
  size_t next = 0;  // the index of the next allocation in this run
  std::shared_ptr<Arena> arena;

  // Greedy by size: largest first, each at the lowest offset clear of the blocks already placed
  // whose lifetimes meet its own.
  void lay_out() {
    std::vector<size_t> order;
    for (size_t i = 0; i < records.size(); ++i)
      if (records[i].freed >= 0) order.push_back(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return records[a].size > records[b].size; });
    offsets.assign(records.size(), -1);
    std::vector<size_t> placed_so_far;
    std::vector<std::pair<size_t, size_t>> taken;  // [offset, end) of overlapping lifetimes
    for (size_t i : order) {
      const Record& r = records[i];
      taken.clear();
      for (size_t j : placed_so_far) {
        const Record& o = records[j];
        if (o.allocated < r.freed && r.allocated < o.freed) {
          const auto off = static_cast<size_t>(offsets[j]);
          taken.emplace_back(off, off + o.size);
        }
      }
      std::sort(taken.begin(), taken.end());
      size_t at = 0;
      for (const auto& [begin, end] : taken) {
        if (begin >= at + r.size) break;
        at = std::max(at, end);
      }
      offsets[i] = static_cast<int64_t>(at);
      arena_size = std::max(arena_size, at + r.size);
      placed_so_far.push_back(i);
    }
    planned = order.size();
  }
};

MemoryPlan::MemoryPlan() : state_(std::make_shared<State>()) {}

MemoryPlan::~MemoryPlan() {
  std::lock_guard<std::mutex> lock(g_plan_mu);
  if (state_->arena == nullptr) return;
  state_->arena->plan_alive = false;
  if (state_->arena->live.empty()) unmap_arena(state_->arena);
}

MemoryPlan::Scope::Scope(MemoryPlan& plan) {
  if (t_plan != nullptr) return;
  State* s = plan.state_.get();
  std::lock_guard<std::mutex> lock(g_plan_mu);
  s->next = 0;
  if (!s->recorded) {
    g_recording.push_back(s);
    g_plan_users.fetch_add(1);
  } else if (s->arena == nullptr && s->arena_size > 0) {
    BlockCache::instance().make_room(s->arena_size);
    if (void* p = map_block(s->arena_size)) {
      s->arena = std::make_shared<Arena>();
      s->arena->base = static_cast<char*>(p);
      s->arena->size = s->arena_size;
      count_alloc(s->arena_size);
      g_arenas.push_back(s->arena);
      g_plan_users.fetch_add(1);
    }
  }
  t_plan = s;
  active_ = true;
}

MemoryPlan::Scope::~Scope() {
  if (!active_) return;
  State* s = t_plan;
  t_plan = nullptr;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  if (s->recorded) return;
  g_recording.erase(std::find(g_recording.begin(), g_recording.end(), s));
  g_plan_users.fetch_sub(1);
  s->open.clear();
  s->recorded = true;
  s->lay_out();
}

size_t MemoryPlan::arena_bytes() const {
  std::lock_guard<std::mutex> lock(g_plan_mu);
  return state_->arena_size;
}

size_t MemoryPlan::planned_blocks() const {
  std::lock_guard<std::mutex> lock(g_plan_mu);
  return state_->planned;
}

size_t MemoryPlan::placed_blocks() const {
  std::lock_guard<std::mutex> lock(g_plan_mu);
  return state_->placed;
}

namespace {

// Storage::allocate's side, for a host block of `bytes` (>= kCachedMin) on this thread: a place in
// the arena of the thread's plan, or nullptr (then noted once allocated: plan_note).
void* plan_take(size_t bytes) {
  MemoryPlan::State* s = t_plan;
  if (s == nullptr || !s->recorded) return nullptr;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  const size_t i = s->next++;
  if (s->arena == nullptr || i >= s->records.size() || s->records[i].size != bytes ||
      s->offsets[i] < 0)
    return nullptr;
  const auto off = static_cast<size_t>(s->offsets[i]);
  auto& live = s->arena->live;
  auto after = live.lower_bound(off);
  if (after != live.end() && after->first < off + bytes) return nullptr;
  if (after != live.begin() && std::prev(after)->second > off) return nullptr;
  live.emplace(off, off + bytes);
  ++s->placed;
  return s->arena->base + off;
}

void plan_note(void* data, size_t bytes) {  // a block of the recording run, allocated as usual
  MemoryPlan::State* s = t_plan;
  if (s == nullptr || s->recorded) return;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  s->open[data] = s->records.size();
  s->records.push_back({bytes, s->clock++, -1});
}

// ~Storage's side: true when `data` was placed in an arena (and is now free there).
bool plan_release(void* data) {
  if (g_plan_users.load() == 0) return false;
  std::lock_guard<std::mutex> lock(g_plan_mu);
  for (MemoryPlan::State* s : g_recording) {
    auto it = s->open.find(data);
    if (it != s->open.end()) {
      s->records[it->second].freed = s->clock++;
      s->open.erase(it);
      return false;
    }
  }
  for (const std::shared_ptr<Arena>& a : g_arenas) {
    char* p = static_cast<char*>(data);
    if (p < a->base || p >= a->base + a->size) continue;
    a->live.erase(static_cast<size_t>(p - a->base));
    if (a->live.empty() && !a->plan_alive) unmap_arena(std::shared_ptr<Arena>(a));
    return true;
  }
  return false;
}

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

Device parse_device(const std::string& name, bool check) {
  Device d;
  if (name == "cpu") {
    d = Device::kCPU;
  } else if (name == "cuda" || name == "cuda:0") {
    d = Device::kCUDA;
  } else if (name == "emulated") {
    d = Device::kEmulated;
  } else {
    throw Error(str_cat("unknown device '", name, "' (expected cpu or cuda",
                        name.rfind("cuda:", 0) == 0 ? "; one GPU per process: cuda:0" : "",
                        ")"),
                ErrorKind::kInvalidArgument);
  }
  if (check && d != Device::kCPU) {
    try {
      Storage::allocate(1, d);  // throws saying why it cannot
    } catch (const Error& e) {
      throw Error(str_cat("device '", name, "': ", e.what()), e.kind());
    }
  }
  return d;
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

namespace {

// `get()`'s memory; under memory pressure (nullptr) once more after the cached blocks went back
// to the system; bad_alloc if still none.
template <class Get>
void* or_after_trim(const Get& get) {
  void* p = get();
  if (p == nullptr) {
    Storage::trim_cache();
    p = get();
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

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
  bool planned = false;  // placed in the arena of this thread's MemoryPlan
  if (s->data_ == nullptr && rounded >= kCachedMin) {
    rounded = (rounded + kCachedGranule - 1) / kCachedGranule * kCachedGranule;
    const size_t asked = rounded;
    s->data_ = plan_take(rounded);
    planned = s->data_ != nullptr;
    if (s->data_ == nullptr) s->data_ = BlockCache::instance().take(rounded, &rounded);
    if (s->data_ == nullptr) {
      BlockCache::instance().make_room(rounded);
      s->data_ = or_after_trim([&] { return map_block(rounded); });
      zero = false;  // fresh anonymous pages read as zero
    }
    if (!planned) plan_note(s->data_, asked);
  }
  if (s->data_ == nullptr && rounded > 0)
    s->data_ = or_after_trim([&] { return std::aligned_alloc(64, rounded); });
  if (zero && rounded > 0) std::memset(s->data_, 0, rounded);
  s->capacity_ = rounded;
  // Lazy mappings are not resident until written; the arena counts for the blocks placed in it.
  if (!s->mapped_ && !planned) count_alloc(rounded);
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
  if (!mapped_ && capacity_ >= kCachedMin && plan_release(data_)) return;
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

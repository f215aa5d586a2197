// The CUDA backend's runtime: whether a device is there, the one stream and cuBLAS handle, the
// caching allocator with its byte budget, host <-> device copies, fills and synchronisation.
// The kernels live in the other .cu files; their table in kernel_table.cu.
//
// Allocator. Requests are rounded (to 512 B below 1 MiB, to 2 MiB above) and freed blocks are
// kept in a free list per rounded size, so a denoising loop that asks for the same activation
// sizes every step stops calling cudaMalloc/cudaFree (which synchronise the device) after its
// first step. All work runs on one stream, so a block freed while kernels that read it are still
// queued is safe to hand to the next request: that request's kernels queue behind them. When the
// budget or the device refuses a request, the cache is handed back first and the request retried.
#include <dlfcn.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "backends/cuda/internal.h"

namespace stipple::cuda {

void throw_cuda_error(const char* call, const char* file, int line, const char* what) {
  throw Error(str_cat("CUDA error in ", call, " (", file, ":", line, "): ", what),
              ErrorKind::kUnsupported);
}

// ---- cuBLAS, opened on first use ----

void* open_library(const std::string& name, const std::string& needed_by) {
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
#ifdef STIPPLE_CUDA_LIBRARY_DIR
  if (lib == nullptr) {  // the toolkit this stipple was built with
    lib = dlopen(str_cat(STIPPLE_CUDA_LIBRARY_DIR, "/", name).c_str(), RTLD_NOW | RTLD_LOCAL);
  }
#endif
  if (lib == nullptr) {
    const char* why = dlerror();
    throw Error(str_cat(needed_by, ", and ", name, " could not be opened (",
                        why != nullptr ? why : "not found",
                        "); put the CUDA toolkit's library folder on LD_LIBRARY_PATH"),
                ErrorKind::kUnsupported);
  }
  return lib;
}

void* library_symbol(void* lib, const std::string& name, const char* symbol,
                     const std::string& needed) {
  void* fn = dlsym(lib, symbol);
  if (fn == nullptr)
    throw Error(str_cat(name, " lacks ", symbol, "; ", needed), ErrorKind::kUnsupported);
  return fn;
}

const CublasApi& cublas_api() {
  static const CublasApi api = [] {
    const std::string name = str_cat("libcublas.so.", CUBLAS_VER_MAJOR);
    void* lib = open_library(name, "the CUDA backend needs cuBLAS");
    CublasApi a;
    const std::string needed =
        str_cat("the CUDA backend needs cuBLAS ", CUBLAS_VER_MAJOR, ".x");
    auto need = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(
          library_symbol(lib, name, symbol, needed));
    };
    need(a.create, "cublasCreate_v2");
    need(a.set_stream, "cublasSetStream_v2");
    need(a.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx");
    need(a.status_string, "cublasGetStatusString");
    return a;
  }();
  return api;
}

void load_blas() { cublas_api(); }

namespace {

// ---- device discovery ----

struct DeviceInfo {
  bool ok = false;
  std::string reason;
  std::string name;
  int major = 0, minor = 0;
  size_t total_mem = 0;
};

// The device this process uses (select_device), fixed once device_info() has looked at it.
std::atomic<int> g_ordinal{0};
std::atomic<bool> g_ordinal_fixed{false};

const DeviceInfo& device_info() {
  static const DeviceInfo info = [] {
    g_ordinal_fixed = true;
    const int ordinal = g_ordinal;
    DeviceInfo d;
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      d.reason = cudaGetErrorString(err);
      cudaGetLastError();  // clear the sticky-free error so later queries start clean
      return d;
    }
    if (count == 0) {
      d.reason = "no CUDA device";
      return d;
    }
    if (ordinal >= count) {
      d.reason = str_cat("no device cuda:", ordinal, " (", count, " visible)");
      return d;
    }
    cudaDeviceProp prop{};
    cudaError_t perr = cudaGetDeviceProperties(&prop, ordinal);
    if (perr == cudaSuccess) perr = cudaSetDevice(ordinal);
    if (perr != cudaSuccess) {
      d.reason = cudaGetErrorString(perr);
      cudaGetLastError();
      return d;
    }
    d.ok = true;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.total_mem = prop.totalGlobalMem;
    return d;
  }();
  return info;
}

void require_device() {
  const DeviceInfo& d = device_info();
  STIPPLE_CHECK_KIND(d.ok, kUnsupported, "CUDA backend: no usable device (", d.reason, ")");
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024 * 1024));
  return buf;
}

// ---- stream and cuBLAS ----

struct StreamState {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
};

StreamState& stream_state() {
  static StreamState s = [] {
    require_device();
    StreamState st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublas_api().create(&st.cublas));
    CUBLAS_CHECK(cublas_api().set_stream(st.cublas, st.stream));
    return st;
  }();
  return s;
}

// ---- caching allocator ----

constexpr size_t kSmallLimit = size_t{1} << 20;
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t{2} << 20;

size_t round_size(size_t n) {
  const size_t r = n < kSmallLimit ? kSmallRound : kLargeRound;
  return (n + r - 1) / r * r;
}

class Allocator {
 public:
  Allocator() {
    if (const char* env = std::getenv("STIPPLE_CUDA_MEMORY_MB")) {
      budget_ = static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20;
    }
  }

  void* allocate(size_t nbytes) {
    if (nbytes == 0) return nullptr;
    require_device();
    stream();  // the stream exists before any block does, so frees can be ordered on it
    const size_t size = round_size(nbytes);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      cached_ -= size;
      note_live(p, size);
      return p;
    }
    if (allocated_ + cached_ + size > effective_budget()) trim_locked();
    if (allocated_ + size > effective_budget()) throw oom(nbytes);
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      trim_locked();
      err = cudaMalloc(&p, size);
      if (err != cudaSuccess) {
        cudaGetLastError();
        throw oom(nbytes);
      }
    }
    note_live(p, size);
    return p;
  }

  void release(void* p, size_t /*nbytes*/) {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    STIPPLE_ASSERT(it != live_.end());
    const size_t size = it->second;
    live_.erase(it);
    allocated_ -= size;
    free_[size].push_back(p);
    cached_ += size;
    if (allocated_ + cached_ > effective_budget()) trim_locked();
  }

  void trim() {
    std::lock_guard<std::mutex> lock(mu_);
    trim_locked();
  }

  void set_budget(size_t b) {
    std::lock_guard<std::mutex> lock(mu_);
    budget_ = b;
    if (allocated_ + cached_ > effective_budget()) trim_locked();
  }
  size_t budget() {
    std::lock_guard<std::mutex> lock(mu_);
    return budget_;
  }
  size_t allocated() {
    std::lock_guard<std::mutex> lock(mu_);
    return allocated_;
  }
  size_t peak() {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  size_t effective_budget() const {
    return budget_ != 0 ? budget_ : device_info().total_mem;
  }

  void note_live(void* p, size_t size) {
    live_[p] = size;
    allocated_ += size;
    if (allocated_ > peak_) peak_ = allocated_;
  }

  // cudaFree waits for the device, so blocks still read by queued kernels are not freed early.
  void trim_locked() {
    for (auto& [size, blocks] : free_) {
      for (void* p : blocks) cudaFree(p);
      cached_ -= size * blocks.size();
      blocks.clear();
    }
    free_.clear();
  }

  Error oom(size_t nbytes) const {
    return Error(str_cat("CUDA out of memory: cannot allocate ", gib(nbytes), " on ",
                         device_info().name, " (tensors hold ", gib(allocated_), ", cache ",
                         gib(cached_), ", budget ", gib(effective_budget()),
                         "); lower the resolution or batch, or set STIPPLE_CUDA_MEMORY_MB"),
                 ErrorKind::kResourceExhausted);
  }

  std::mutex mu_;
  size_t budget_ = 0;
  size_t allocated_ = 0, peak_ = 0, cached_ = 0;
  std::unordered_map<void*, size_t> live_;
  std::unordered_map<size_t, std::vector<void*>> free_;
};

Allocator& allocator() {
  static Allocator* a = new Allocator();  // never destroyed: storages may outlive static teardown
  return *a;
}

// ---- pinned staging for host -> device copies ----

constexpr size_t kStageBytes = size_t{8} << 20;

// Two pinned buffers used in turn: while the device reads one, the host fills the other. An event
// per buffer says when the device is done with it.
class Staging {
 public:
  void copy(void* dst, const void* src, size_t nbytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!init()) {  // no pinned memory: a pageable copy returns once the source was read
      CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream()));
      CUDA_CHECK(cudaStreamSynchronize(stream()));
      return;
    }
    size_t done = 0;
    while (done < nbytes) {
      const size_t n = nbytes - done < kStageBytes ? nbytes - done : kStageBytes;
      CUDA_CHECK(cudaEventSynchronize(ev_[next_]));
      std::memcpy(buf_[next_], static_cast<const char*>(src) + done, n);
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + done, buf_[next_], n,
                                 cudaMemcpyHostToDevice, stream()));
      CUDA_CHECK(cudaEventRecord(ev_[next_], stream()));
      next_ ^= 1;
      done += n;
    }
  }

 private:
  bool init() {
    if (tried_) return buf_[0] != nullptr;
    tried_ = true;
    for (int i = 0; i < 2; ++i) {
      if (cudaHostAlloc(&buf_[i], kStageBytes, cudaHostAllocDefault) != cudaSuccess ||
          cudaEventCreateWithFlags(&ev_[i], cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        buf_[0] = nullptr;
        return false;
      }
      CUDA_CHECK(cudaEventRecord(ev_[i], stream()));
    }
    return true;
  }

  std::mutex mu_;
  bool tried_ = false;
  void* buf_[2] = {nullptr, nullptr};
  cudaEvent_t ev_[2] = {};
  int next_ = 0;
};

Staging& staging() {
  static Staging* s = new Staging();
  return *s;
}

}  // namespace

// ---- internal.h ----

cudaStream_t stream() { return stream_state().stream; }
cublasHandle_t cublas() { return stream_state().cublas; }

bool tf32_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("STIPPLE_CUDA_TF32");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

// ---- cuda_backend.h ----

void select_device(int ordinal) {
  STIPPLE_CHECK(ordinal >= 0, "CUDA device ordinal ", ordinal, " is negative");
  if (g_ordinal_fixed) {
    STIPPLE_CHECK(g_ordinal == ordinal, "the CUDA backend already uses cuda:", g_ordinal.load(),
                  " in this process; choose the device before the first use of the GPU");
    return;
  }
  g_ordinal = ordinal;
}

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

int device_ordinal() { return g_ordinal; }

void* stream_handle() { return stream_state().stream; }

bool available() { return device_info().ok; }

std::string unavailable_reason() { return device_info().ok ? std::string() : device_info().reason; }

std::string device_description() {
  const DeviceInfo& d = device_info();
  if (!d.ok) return d.reason;
  return str_cat(d.name, " (sm_", d.major, d.minor, ", ", gib(d.total_mem), ")");
}

void* allocate(size_t nbytes) { return allocator().allocate(nbytes); }
void release(void* p, size_t nbytes) { allocator().release(p, nbytes); }
void set_memory_budget(size_t bytes) { allocator().set_budget(bytes); }
size_t memory_budget() { return allocator().budget(); }
size_t allocated_bytes() { return allocator().allocated(); }
size_t peak_allocated_bytes() { return allocator().peak(); }
size_t cached_bytes() { return allocator().cached(); }
void trim_cache() { allocator().trim(); }

void copy_to_device(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  staging().copy(dst, src, nbytes);
}

void copy_to_host(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void copy_on_device(void* dst, const void* src, size_t nbytes) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream()));
}

void fill_zero(void* dst, size_t nbytes) {
  if (nbytes == 0) return;
  CUDA_CHECK(cudaMemsetAsync(dst, 0, nbytes, stream()));
}

void synchronize() {
  if (!available()) return;
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace stipple::cuda

#include "train/nccl_communicator.h"

#include "core/error.h"

#if STIPPLE_WITH_CUDA
#include "backends/cuda/cuda_backend.h"
#endif
#if STIPPLE_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <type_traits>
#endif

namespace stipple::train {

void choose_rank_gpu(const Communicator& comm) {
#if STIPPLE_WITH_CUDA
  if (comm.size() == 1) return;
  const int gpus = cuda::device_count();
  STIPPLE_CHECK_KIND(gpus > 0, kUnsupported, "device 'cuda' on rank ", comm.rank(), " of ",
                     comm.size(), ": no GPU visible (", cuda::unavailable_reason(), ")");
  cuda::select_device(comm.local_rank() % gpus);
#else
  (void)comm;
#endif
}

#if STIPPLE_WITH_NCCL
namespace {

// The NCCL entry points stipple calls, from libnccl.so.2 opened at run time.
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
};

const NcclApi& nccl_api() {
  static const NcclApi api = [] {
    const std::string name = str_cat("libnccl.so.", NCCL_MAJOR);
    void* lib = cuda::open_library(
        name, "data-parallel training on GPUs sums the gradients with NCCL (Debian: libnccl2)");
    NcclApi a;
    const std::string needed = str_cat("stipple needs NCCL ", NCCL_MAJOR, ".x");
    auto need = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(
          cuda::library_symbol(lib, name, symbol, needed));
    };
    need(a.get_version, "ncclGetVersion");
    need(a.get_unique_id, "ncclGetUniqueId");
    need(a.comm_init_rank, "ncclCommInitRank");
    need(a.all_reduce, "ncclAllReduce");
    need(a.comm_destroy, "ncclCommDestroy");
    need(a.comm_abort, "ncclCommAbort");
    need(a.comm_get_async_error, "ncclCommGetAsyncError");
    need(a.get_error_string, "ncclGetErrorString");
    return a;
  }();
  return api;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& host, double timeout_seconds)
      : host_(host), timeout_(timeout_seconds), api_(nccl_api()) {
    STIPPLE_CHECK_KIND(cuda::available(), kUnsupported, "NCCL on rank ", host.rank(),
                       ": no usable GPU (", cuda::unavailable_reason(), ")");
    stream_ = static_cast<cudaStream_t>(cuda::stream_handle());
    int version = 0;
    api_.get_version(&version);
    version_ = version;
    // Rank 0 makes the clique's id; every rank gets it over the host runtime (with its timeout),
    // so all of them have arrived when they call the blocking init.
    ncclUniqueId id{};
    if (host.rank() == 0) check(api_.get_unique_id(&id), "ncclGetUniqueId");
    host.broadcast(&id, sizeof id, 0, "NCCL's bootstrap (rank 0's unique id)");
    check(api_.comm_init_rank(&comm_, host.size(), id, host.rank()), "ncclCommInitRank");
  }

  ~NcclCommunicator() override {
    if (comm_ != nullptr) api_.comm_destroy(comm_);
  }

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  int local_size() const override { return host_.local_size(); }
  int local_rank() const override { return host_.local_rank(); }
  std::string describe() const override {
    return str_cat("NCCL ", version_ / 10000, ".", version_ / 100 % 100, ".", version_ % 100,
                   " on cuda:", cuda::device_ordinal(), " over ", host_.describe());
  }
  void allreduce_sum(float* data, size_t n, const std::string& what) override {
    host_.allreduce_sum(data, n, what);
  }
  void allreduce_sum(double* data, size_t n, const std::string& what) override {
    host_.allreduce_sum(data, n, what);
  }
  void broadcast(void* data, size_t bytes, int root, const std::string& what) override {
    host_.broadcast(data, bytes, root, what);
  }
  bool all_equal(uint64_t value, const std::string& what) override {
    return host_.all_equal(value, what);
  }
  [[noreturn]] void abort(const std::string& why) override {
    if (comm_ != nullptr) api_.comm_abort(comm_);  // frees ranks blocked in NCCL kernels
    comm_ = nullptr;
    host_.abort(why);
    std::_Exit(1);  // abort() does not return; this is for the compiler
  }

  void allreduce_sum_tensor(const Tensor& flat, const std::string& what) override {
    if (flat.device() != Device::kCUDA) {
      Communicator::allreduce_sum_tensor(flat, what);
      return;
    }
    STIPPLE_CHECK(flat.dtype() == DType::kF32 && flat.is_contiguous(), what,
                  ": the all-reduce takes a contiguous f32 tensor, not ", flat.describe());
    if (flat.numel() == 0) return;
    void* p = flat.raw_data();
    check(api_.all_reduce(p, p, static_cast<size_t>(flat.numel()), ncclFloat32, ncclSum, comm_,
                          stream_),
          what);
    wait(what);
  }

 private:
  void check(ncclResult_t rc, const std::string& what) const {
    if (rc == ncclSuccess) return;
    throw Error(str_cat(what, " failed on rank ", rank(), " (NCCL): ", api_.get_error_string(rc)),
                ErrorKind::kIo);
  }

  // Polls the stream until the all-reduce (and the work before it) is done, NCCL reports an
  // error, or the timeout passes (poll_until).
  void wait(const std::string& what) {
    poll_until(
        [&] {
          const cudaError_t q = cudaStreamQuery(stream_);
          if (q == cudaSuccess) return true;
          if (q != cudaErrorNotReady) {
            cudaGetLastError();
            throw Error(str_cat(what, " failed on rank ", rank(), " (CUDA): ",
                                cudaGetErrorString(q)),
                        ErrorKind::kIo);
          }
          ncclResult_t async = ncclSuccess;
          api_.comm_get_async_error(comm_, &async);
          check(async, what);
          return false;
        },
        timeout_, what, rank(), "the other GPUs", "; a rank is stuck or lost");
  }

  Communicator& host_;
  double timeout_;
  const NcclApi& api_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  int version_ = 0;
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> nccl_communicator(Communicator& host, double timeout_seconds) {
  STIPPLE_CHECK(timeout_seconds > 0, "the collective timeout must be positive, got ",
                timeout_seconds);
  return std::make_unique<NcclCommunicator>(host, timeout_seconds);
}

#else

bool nccl_built() { return false; }

std::unique_ptr<Communicator> nccl_communicator(Communicator& host, double) {
  throw Error(str_cat("data-parallel training on GPUs (rank ", host.rank(), " of ", host.size(),
                      ") needs NCCL, and this stipple was built without it (build with "
                      "-DSTIPPLE_CUDA=ON where the CUDA toolkit has nccl.h)"),
              ErrorKind::kUnsupported);
}

#endif

}  // namespace stipple::train

#include "train/mpi/mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"

namespace stipple::train {
namespace {

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::string library_version() {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);
  std::string s(v, static_cast<size_t>(len));
  const size_t cut = s.find_first_of(",\n");  // "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4"
  return cut == std::string::npos ? s : s.substr(0, cut);
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_seconds) : timeout_(timeout_seconds) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_free(&node);
    // Errors come back as codes (then stipple::Error), not MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const override { return local_size_; }
  int local_rank() const override { return local_rank_; }
  std::string describe() const override {
    return str_cat(library_version(), ", ", size_, " rank", size_ == 1 ? "" : "s", " (",
                   local_size_, " on this machine)");
  }

  void allreduce_sum(float* data, size_t n, const std::string& what) override {
    allreduce(data, n, MPI_FLOAT, MPI_SUM, what);
  }
  void allreduce_sum(double* data, size_t n, const std::string& what) override {
    allreduce(data, n, MPI_DOUBLE, MPI_SUM, what);
  }
  void broadcast(void* data, size_t bytes, int root, const std::string& what) override {
    STIPPLE_CHECK(bytes <= (size_t{1} << 30), what, ": ", bytes, " bytes is too large a broadcast");
    MPI_Request request;
    int rc = MPI_Ibcast(data, static_cast<int>(bytes), MPI_BYTE, root, MPI_COMM_WORLD, &request);
    if (rc == MPI_SUCCESS) rc = wait(request, what);
    check(rc, what);
  }
  bool all_equal(uint64_t value, const std::string& what) override {
    uint64_t lo = value, hi = value;
    allreduce(&lo, 1, MPI_UINT64_T, MPI_MIN, what);
    allreduce(&hi, 1, MPI_UINT64_T, MPI_MAX, what);
    return lo == hi;
  }
  [[noreturn]] void abort(const std::string& why) override {
    std::fprintf(stderr, "error (rank %d of %d): %s\n", rank_, size_, why.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this is for the compiler
  }

 private:
  // One non-blocking all-reduce in place, in chunks MPI's int counts can address, polled until
  // done: spinning for the first millisecond (the usual case on one machine), then sleeping
  // 0.2 ms between polls so a waiting rank leaves the cores to ranks still computing.
  void allreduce(void* data, size_t n, MPI_Datatype type, MPI_Op op, const std::string& what) {
    int type_size = 0;
    MPI_Type_size(type, &type_size);
    constexpr size_t kMaxCount = size_t{1} << 30;
    auto* bytes = static_cast<char*>(data);
    for (size_t done = 0; done < n;) {
      const size_t count = std::min(kMaxCount, n - done);
      MPI_Request request;
      int rc = MPI_Iallreduce(MPI_IN_PLACE, bytes + done * type_size, static_cast<int>(count),
                              type, op, MPI_COMM_WORLD, &request);
      if (rc == MPI_SUCCESS) rc = wait(request, what);
      check(rc, what);
      done += count;
    }
  }

  void check(int rc, const std::string& what) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw Error(str_cat(what, " failed on rank ", rank_, ": ", std::string(msg, len)),
                ErrorKind::kIo);
  }

  int wait(MPI_Request& request, const std::string& what) {
    int rc = MPI_SUCCESS;
    poll_until(
        [&] {
          int flag = 0;
          rc = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
          return rc != MPI_SUCCESS || flag != 0;
        },
        timeout_, what, rank_, "the other ranks",
        "; a rank is stuck or lost, or rank 0 spent longer than that on a checkpoint or "
        "evaluation");
    return rc;
  }

  double timeout_;
  int rank_ = 0, size_ = 1, local_size_ = 1, local_rank_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> mpi_world(double timeout_seconds) {
  STIPPLE_CHECK(timeout_seconds > 0, "the collective timeout must be positive, got ",
                timeout_seconds);
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    STIPPLE_CHECK_KIND(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) ==
                           MPI_SUCCESS,
                       kIo, "MPI could not start (MPI_Init_thread failed)");
    std::atexit(finalize_at_exit);
  }
  return std::make_unique<MpiCommunicator>(timeout_seconds);
}

}  // namespace stipple::train

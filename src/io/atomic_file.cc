// Atomic file writes: temporary file in the same folder, fsync, rename (see atomic_file.h).
#include "io/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "io/read_file.h"

namespace stipple::io {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Flushes the folder entry of a rename. Failure here is not reported: the data is already safely
// in place on every file system we run on, and some (network mounts) refuse fsync on folders.
void fsync_parent(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = ".";
  const int dfd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  ::fsync(dfd);
  ::close(dfd);
}

std::atomic<uint64_t> g_write_counter{0};

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  STIPPLE_CHECK(!path_.empty(), "cannot write a file with an empty path");
  // Only regular files are replaced: renaming over a device, FIFO or socket (/dev/null as root)
  // would destroy it; a folder cannot be replaced by a file.
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(str_cat("refusing to write ", path_, ": it is ", file_kind_name(st.st_mode),
                        "; give a new path or a regular file"));
  temp_path_ = str_cat(path_, ".tmp.", ::getpid(), ".", g_write_counter.fetch_add(1));
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  STIPPLE_CHECK(fd_ >= 0, "cannot write ", path_, ": creating the temporary file ", temp_path_,
                " failed: ", errno_text(errno), " (check that the folder exists and is writable)");
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t nbytes) {
  STIPPLE_CHECK(fd_ >= 0 && !committed_, "write to ", path_, " after commit or failure");
  const char* p = static_cast<const char*>(data);
  while (nbytes > 0) {
    const ssize_t n = ::write(fd_, p, nbytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      discard();
      throw Error(str_cat("writing ", path_, " failed after ", written_,
                          " bytes: ", errno_text(err), " (is the disk full?)"));
    }
    p += n;
    nbytes -= static_cast<size_t>(n);
    written_ += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  STIPPLE_CHECK(fd_ >= 0 && !committed_, "commit of ", path_, " after commit or failure");
  if (::fsync(fd_) != 0) {
    const int err = errno;
    discard();
    throw Error(str_cat("writing ", path_, " failed: fsync: ", errno_text(err)));
  }
  const int close_rc = ::close(fd_);
  fd_ = -1;
  if (close_rc != 0) {
    const int err = errno;
    discard();
    throw Error(str_cat("writing ", path_, " failed: close: ", errno_text(err)));
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    discard();
    throw Error(str_cat("writing ", path_, " failed: renaming ", temp_path_,
                        " over it: ", errno_text(err)));
  }
  committed_ = true;
  fsync_parent(path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& fill) {
  AtomicFile f(path);
  fill(f);
  f.commit();
}

void create_output_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw Error(str_cat("cannot create the output folder ", dir, ": ",
                        ec ? ec.message() : std::string("a file of that name is in the way")),
                ErrorKind::kIo);
}

int remove_stale_temporaries(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  int removed = 0;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec) || it->is_symlink(ec)) continue;
    const std::string name = it->path().filename().string();
    // <name>.tmp.<pid>.<n>
    const size_t last = name.rfind('.');
    if (last == std::string::npos || last == 0) continue;
    const size_t mid = name.rfind('.', last - 1);
    if (mid == std::string::npos || mid < 4 || name.compare(mid - 4, 4, ".tmp") != 0) continue;
    const std::string pid_text = name.substr(mid + 1, last - mid - 1);
    const std::string n_text = name.substr(last + 1);
    auto digits = [](const std::string& t) {
      return !t.empty() && t.size() < 12 && t.find_first_not_of("0123456789") == std::string::npos;
    };
    if (!digits(pid_text) || !digits(n_text)) continue;
    const long pid = std::stol(pid_text);
    if (pid == ::getpid() || (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;
    if (fs::remove(it->path(), ec)) ++removed;
  }
  return removed;
}

}  // namespace stipple::io

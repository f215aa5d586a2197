// Bounded reads of regular files (see read_file.h).
#include "io/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace stipple::io {

const char* file_kind_name(mode_t m) {
  return S_ISDIR(m)    ? "a folder"
         : S_ISFIFO(m) ? "a FIFO"
         : S_ISCHR(m)  ? "a character device"
         : S_ISBLK(m)  ? "a block device"
         : S_ISSOCK(m) ? "a socket"
                       : "not a regular file";
}

void require_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  STIPPLE_CHECK(::stat(path.c_str(), &st) == 0, "no such ", what, ": ", path);
  STIPPLE_CHECK(S_ISREG(st.st_mode), "cannot read ", path, ": it is ", file_kind_name(st.st_mode),
                ", not a regular ", what);
}

std::string read_file_bounded(const std::string& path, const std::string& what,
                              size_t max_bytes) {
  // O_NONBLOCK: a FIFO swapped in after a check must not block the open.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    STIPPLE_CHECK(err != ENOENT, "no such ", what, ": ", path);
    throw Error(str_cat("cannot read ", path, ": ", std::strerror(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str_cat("cannot read ", path, ": it is ", file_kind_name(st.st_mode),
                        ", not a regular ", what));
  }
  if (static_cast<size_t>(st.st_size) > max_bytes) {
    ::close(fd);
    throw Error(str_cat("cannot read ", path, ": ", st.st_size, " bytes, more than the ",
                        max_bytes, " a ", what, " may have"));
  }
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(done);
  return out;
}

}  // namespace stipple::io

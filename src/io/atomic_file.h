// Atomic file writes: every file stipple writes (checkpoints, PNGs, safetensors) is first written
// to a temporary file in the same folder, flushed to disk (fsync), and then renamed over the
// target, so a reader never sees a half-written file and a crash leaves the old file intact.
//
// The temporary name is `<path>.tmp.<pid>.<n>`, where n counts writes in this process, so two
// threads writing the same path never share a temporary file (the last rename wins). On any
// failure, or when an AtomicFile is destroyed before commit(), the temporary file is removed.
// Leaves out: locking against other processes writing the same path (the last rename wins).
// Temporaries left by a process killed mid-write are removed by remove_stale_temporaries().
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace stipple::io {

class AtomicFile {
 public:
  // Creates the temporary file next to `path`; throws stipple::Error naming it on failure.
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends bytes (loops over short writes and EINTR); throws stipple::Error on failure.
  void write(const void* data, size_t nbytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  // fsync, close, rename over the target, then fsync the folder. Throws on failure (the
  // temporary file is removed and the target is left as it was).
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  size_t bytes_written() const { return written_; }

 private:
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  size_t written_ = 0;
  bool committed_ = false;
};

// Removes the temporary files (`<name>.tmp.<pid>.<n>`) that processes killed mid-write left under
// `dir` (recursively; a missing folder is fine). Temporaries of live processes are kept. Returns
// how many were removed. Resuming trainers call it on their run folder.
int remove_stale_temporaries(const std::string& dir);

// Creates `dir` and its parents (an existing folder is fine); throws a kIo stipple::Error naming the
// folder and the reason ("is a file", permission) instead of the library's bare message.
void create_output_dir(const std::string& dir);

// Writes `bytes` to `path` atomically.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Calls `fill` with an open AtomicFile and commits it when `fill` returns; an exception from
// `fill` removes the temporary file and propagates.
void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& fill);

}  // namespace stipple::io

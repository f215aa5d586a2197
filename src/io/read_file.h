// Reading files users name: only regular files (a FIFO would block a read forever and a device
// never ends), and never more than a stated size, with errors that name the file.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <string>

namespace stipple::io {

// What a stat() mode is, for errors: "a folder", "a FIFO", "a character device", ...
const char* file_kind_name(mode_t mode);

// Throws stipple::Error naming `path` (and `what` it should be, e.g. "config file") when it does
// not exist or is not a regular file (after following links).
void require_regular_file(const std::string& path, const std::string& what = "file");
// The whole file; refuses non-regular files and files over max_bytes.
std::string read_file_bounded(const std::string& path, const std::string& what = "file",
                              size_t max_bytes = size_t{64} << 20);

}  // namespace stipple::io

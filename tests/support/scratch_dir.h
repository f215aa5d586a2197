// A scratch folder for a test process's files, under the system's temporary folder and removed
// when the process ends, so that ctest (one process per test) leaves nothing behind.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace stipple::testing {

// <tmp>/stipple_test_<suite>_<pid>/<name>, empty. The per-process root goes at exit.
inline std::string scratch_dir(const std::string& suite, const std::string& name) {
  namespace fs = std::filesystem;
  struct Root {
    pid_t owner;
    fs::path path;
    ~Root() {
      if (::getpid() != owner) return;  // a forked child leaves its parent's files alone
      std::error_code ec;               // at exit: nothing to report to
      fs::remove_all(path, ec);
    }
  };
  static Root root{::getpid(), fs::temp_directory_path() /
                                   ("stipple_test_" + suite + "_" + std::to_string(::getpid()))};
  const fs::path p = root.path / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace stipple::testing

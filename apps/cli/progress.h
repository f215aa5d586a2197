// A progress bar on stderr for long jobs: step i/n, a bar, it/s, elapsed and ETA, and an optional
// trailing note (the loss, say). Redraws at most ~10 times a second; silent when disabled.
#pragma once

#include <chrono>
#include <string>

namespace stipple::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, int total, bool enabled);
  ~ProgressBar();
  void update(int done, const std::string& note = "");
  void finish(const std::string& note = "");

 private:
  void draw(int done, const std::string& note, bool force);
  std::string label_;
  int total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace stipple::cli

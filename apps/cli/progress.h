// A progress bar on stderr for long jobs: step i/n, a bar, it/s, elapsed and ETA, and an optional
// trailing note (the loss, say). On a terminal it redraws one line at most ~10 times a second;
// when stderr is a file or a pipe (a log) it writes plain lines instead, one every 30 seconds and
// the last. The rate and ETA follow the last 10-20 seconds, so they recover when the machine
// gets busy or quiet. Silent when disabled.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace stipple::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, int total, bool enabled);
  ~ProgressBar();
  void update(int done, const std::string& note = "");
  void finish(const std::string& note = "");  // the last line, at 100%
  void stop(const std::string& note = "");    // the last line, where the job stopped early

 private:
  using Clock = std::chrono::steady_clock;
  void draw(int done, const std::string& note, bool force);
  void end(int done, const std::string& note);
  int last_done_ = 0;
  double recent_rate(int done, Clock::time_point now);
  std::string label_;
  int total_;
  bool enabled_;
  bool terminal_;
  bool finished_ = false;
  Clock::time_point start_, last_draw_;
  // Two anchors (time, steps done) for the recent rate: `older_` is 10-20 s old once running.
  Clock::time_point older_time_, newer_time_;
  int older_done_ = 0, newer_done_ = 0;
};

// The progress of a resumable training job: the bar starts at the first step reported (a resumed
// run counts from there), and messages end the bar's line before they print.
class TrainingProgress {
 public:
  explicit TrainingProgress(bool quiet) : quiet_(quiet) {}
  void update(int64_t step, int64_t total, const std::string& note);
  void message(const std::string& text);
  void finish();

 private:
  bool quiet_;
  int64_t first_ = -1;
  std::unique_ptr<ProgressBar> bar_;
};

// One bar per phase of a job ("sampling", "scoring"): a new phase ends the previous bar.
class PhasedProgress {
 public:
  explicit PhasedProgress(bool quiet) : quiet_(quiet) {}
  void update(const std::string& phase, int done, int total);
  void finish();

 private:
  bool quiet_;
  std::string current_;
  std::unique_ptr<ProgressBar> bar_;
};

}  // namespace stipple::cli

#include "progress.h"

#include <unistd.h>

#include <cstdio>

#include "core/error.h"

namespace stipple::cli {
namespace {

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 360000) return "--:--";
  const int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%d:%02d", s / 60, s % 60);
  return buf;
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int total, bool enabled)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      terminal_(isatty(fileno(stderr)) != 0) {
  start_ = last_draw_ = older_time_ = newer_time_ = Clock::now();
}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int done, const std::string& note) {
  last_done_ = done;
  draw(done, note, false);
}

void ProgressBar::finish(const std::string& note) { end(total_, note); }

void ProgressBar::stop(const std::string& note) { end(last_done_, note); }

void ProgressBar::end(int done, const std::string& note) {
  if (finished_) return;
  draw(done, note, true);
  if (enabled_ && terminal_) std::fputc('\n', stderr);
  finished_ = true;
}

double ProgressBar::recent_rate(int done, Clock::time_point now) {
  using std::chrono::duration;
  if (now - newer_time_ >= std::chrono::seconds(10)) {
    older_time_ = newer_time_, older_done_ = newer_done_;
    newer_time_ = now, newer_done_ = done;
  }
  const double span = duration<double>(now - older_time_).count();
  if (span > 0 && done > older_done_) return (done - older_done_) / span;
  const double elapsed = duration<double>(now - start_).count();
  return elapsed > 0 ? done / elapsed : 0.0;
}

void ProgressBar::draw(int done, const std::string& note, bool force) {
  if (!enabled_) return;
  const auto now = Clock::now();
  const double rate = recent_rate(done, now);
  const auto every = terminal_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(30000);
  if (!force && done < total_ && now - last_draw_ < every) return;
  if (!terminal_ && !force && done == total_) return;  // the log's last line comes from finish()
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double eta = rate > 0 ? (total_ - done) / rate : -1;
  const std::string tail = note.empty() ? "" : ", " + note;
  if (!terminal_) {
    const int percent = total_ > 0 ? static_cast<int>(100.0 * done / total_) : 100;
    std::fprintf(stderr, "%s %d/%d (%d%%), %.3g it/s, %s elapsed, ETA %s%s\n", label_.c_str(),
                 done, total_, percent, rate, format_duration(elapsed).c_str(),
                 format_duration(eta).c_str(), tail.c_str());
    std::fflush(stderr);
    return;
  }
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? kWidth * done / total_ : kWidth;
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
  char rate_text[32];
  if (rate >= 1.0 || rate == 0.0)
    std::snprintf(rate_text, sizeof rate_text, "%.2f it/s", rate);
  else
    std::snprintf(rate_text, sizeof rate_text, "%.2f s/it", 1.0 / rate);
  std::fprintf(stderr, "\r%s %d/%d [%s] %s, %s elapsed, ETA %s%s\033[K", label_.c_str(), done,
               total_, bar.c_str(), rate_text, format_duration(elapsed).c_str(),
               format_duration(eta).c_str(), tail.c_str());
  std::fflush(stderr);
}

void TrainingProgress::update(int64_t step, int64_t total, const std::string& note) {
  if (!bar_) {
    first_ = step - 1;
    bar_ = std::make_unique<ProgressBar>(
        first_ > 0 ? str_cat("training (from step ", first_, ")") : std::string("training"),
        static_cast<int>(total - first_), !quiet_);
  }
  bar_->update(static_cast<int>(step - first_), note);
}

void TrainingProgress::message(const std::string& text) {
  finish();
  if (!quiet_) std::fprintf(stderr, "%s\n", text.c_str());
}

void TrainingProgress::finish() {
  if (bar_) bar_->finish();
  bar_.reset();
}

void PhasedProgress::update(const std::string& phase, int done, int total) {
  if (!bar_ || phase != current_) {
    finish();
    current_ = phase;
    bar_ = std::make_unique<ProgressBar>(phase, total, !quiet_);
  }
  bar_->update(done);
}

void PhasedProgress::finish() {
  if (bar_) bar_->finish();
  bar_.reset();
}

}  // namespace stipple::cli

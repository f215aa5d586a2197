#include "progress.h"

#include <cstdio>

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
    : label_(std::move(label)), total_(total), enabled_(enabled) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

ProgressBar::~ProgressBar() {
  if (!finished_) finish();
}

void ProgressBar::update(int done, const std::string& note) { draw(done, note, false); }

void ProgressBar::finish(const std::string& note) {
  if (finished_) return;
  draw(total_, note, true);
  if (enabled_) std::fputc('\n', stderr);
  finished_ = true;
}

void ProgressBar::draw(int done, const std::string& note, bool force) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? done / elapsed : 0.0;
  const double eta = rate > 0 ? (total_ - done) / rate : -1;
  constexpr int kWidth = 24;
  const int filled = total_ > 0 ? kWidth * done / total_ : kWidth;
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
  char rate_text[32];
  if (rate >= 1.0 || rate == 0.0)
    std::snprintf(rate_text, sizeof rate_text, "%.2f it/s", rate);
  else
    std::snprintf(rate_text, sizeof rate_text, "%.2f s/it", 1.0 / rate);
  std::fprintf(stderr, "\r%s %d/%d [%s] %s, %s elapsed, ETA %s%s%s\033[K", label_.c_str(), done,
               total_, bar.c_str(), rate_text, format_duration(elapsed).c_str(),
               format_duration(eta).c_str(), note.empty() ? "" : ", ", note.c_str());
  std::fflush(stderr);
}

}  // namespace stipple::cli

#include "stop_signal.h"

#include <atomic>
#include <csignal>

namespace stipple::cli {
namespace {
std::atomic<bool> g_stop{false};
extern "C" void stipple_on_stop_signal(int) { g_stop = true; }
}  // namespace

void install_stop_handlers() {
  g_stop = false;
  std::signal(SIGINT, stipple_on_stop_signal);
  std::signal(SIGTERM, stipple_on_stop_signal);
}

void remove_stop_handlers() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

bool stop_requested() { return g_stop.load(); }

}  // namespace stipple::cli

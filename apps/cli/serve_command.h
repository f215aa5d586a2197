// `stipple serve`: parses flags into server::ServerOptions and runs the HTTP server
// (apps/server/server.h) until SIGINT or SIGTERM, which stop it gracefully (--grace).
#pragma once

#include <CLI/CLI.hpp>

#include "../server/server.h"

namespace stipple::cli {

class ServeCommand {
 public:
  explicit ServeCommand(CLI::App& app);
  bool selected() const { return cmd_->parsed(); }
  int run();

 private:
  CLI::App* cmd_;
  server::ServerOptions options_;
  bool quiet_ = false;
  double grace_ = 30;
};

}  // namespace stipple::cli

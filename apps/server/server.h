// `stipple serve`: an HTTP server over the public API (include/stipple/stipple.h) that A1111 and
// OpenAI image clients speak. Models load once and stay loaded; one generation runs at a time
// (as in A1111) behind a bounded queue; every request is answered, a bad one with a 4xx and a
// JSON error that names the problem, and no request can stop the server.
//
// Routes (this first version):
//   A1111   POST /sdapi/v1/txt2img, /sdapi/v1/img2img; GET /sdapi/v1/progress; POST
//           /sdapi/v1/interrupt; GET /sdapi/v1/samplers, /schedulers, /sd-models, /memory;
//           GET|POST /sdapi/v1/options (sd_model_checkpoint); POST /sdapi/v1/png-info
//   OpenAI  POST /v1/images/generations; GET /v1/models
//   ops     GET /healthz, /readyz
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stipple::server {

struct ServerOptions {
  std::vector<std::string> models;  // paths; the first is the default model
  std::string host = "127.0.0.1";
  int port = 7860;       // 0: any free port (see Server::port())
  std::string api_key;   // when set, /sdapi and /v1 need "Authorization: Bearer KEY"
  std::string api_auth;  // "user:pass": HTTP basic auth instead (A1111's --api-auth)
  int queue = 16;        // generations waiting behind the running one; more get 429
  int64_t max_pixels = 1024 * 1024;  // per image
  int max_steps = 150;
  int max_images = 16;  // per request
  size_t max_body_bytes = size_t{64} << 20;
  bool log_requests = true;  // one line per request on stderr
};

class Server {
 public:
  // Loads every model (throws stipple::Error naming the one that fails) and binds the socket.
  explicit Server(const ServerOptions& options);
  ~Server();
  int port() const;  // the bound port
  // Serves until stop(); returns when stopped.
  void run();
  // Stops accepting; the running generation is cancelled. Safe from any thread or a signal
  // handler's helper thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Standard base64 (RFC 4648) with padding; decode accepts a "data:...;base64," prefix and
// ignores whitespace, and throws stipple::Error naming `what` on any other character or a bad
// length.
std::string base64_encode(const std::vector<uint8_t>& bytes);
std::vector<uint8_t> base64_decode(const std::string& text, const std::string& what);

}  // namespace stipple::server

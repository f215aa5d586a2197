// `stipple serve`: an HTTP server over the public API (include/stipple/stipple.h) that A1111 and
// OpenAI image clients speak. Every request is answered, a bad one with a 4xx and a JSON error
// that names the problem, and no request can stop the server.
//
// Generations are jobs: one runs at a time (as in A1111) on a worker thread, behind a bounded
// queue (429 with Retry-After when full). The synchronous routes submit a job and wait for it;
// /v1/jobs hands back its id at once. A client that disconnects from a synchronous route does
// not cancel its job: the job finishes and its result is dropped (as in A1111).
//
// Models: each --model (or each model in a --model folder of models) is probed at start (a path
// no family opens is an error then); the first
// loads at once in the background (503 with Retry-After until it is in, /readyz says when), the
// others on their first request. Loaded models stay loaded while they fit the memory budget;
// loading one that does not fit evicts the least recently used.
//
// Routes:
//   A1111   POST /sdapi/v1/txt2img, img2img, interrupt, skip, png-info, refresh-loras,
//           extra-single-image, extra-batch-images (upscaling through a served upscaler model);
//           GET progress, samplers, schedulers, sd-models, loras, upscalers, memory; GET|POST
//           options (sd_model_checkpoint)
//   OpenAI  POST /v1/images/generations, /v1/images/edits (multipart); GET /v1/models
//   jobs    POST /v1/jobs; GET /v1/jobs, /v1/jobs/{id} (?images=false, ?preview=true),
//           /v1/jobs/{id}/events (server-sent events); DELETE /v1/jobs/{id}
//   files   GET /outputs/{name}.png (with --output-dir)
//   ops     GET /healthz, /readyz, /metrics (Prometheus text); GET / (the web page)
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace stipple::server {

struct ServerOptions {
  // Model paths (a folder of models serves each model in it); the first is the default.
  std::vector<std::string> models;
  std::string host = "127.0.0.1";
  int port = 7860;       // 0: any free port (see Server::port())
  std::string api_key;   // when set, /sdapi and /v1 need "Authorization: Bearer KEY"
  std::string api_auth;  // "user:pass": HTTP basic auth instead (A1111's --api-auth)
  int queue = 16;        // generations waiting behind the running one (<= 256); more get 429
  int64_t max_pixels = 1024 * 1024;  // per image
  int max_steps = 150;
  int max_images = 16;  // per request
  size_t max_body_bytes = size_t{64} << 20;
  int read_timeout_seconds = 30;  // a client slower than this to send its request is cut off
  std::string output_dir;   // images saved here (save_images, response_format "url"); "" = none
  std::string cors_origin;  // "" = no CORS headers; an origin or "*"
  uint64_t memory_budget_mb = 0;  // for loaded models; 0 = 3/4 of the memory available at start
  int preview_every = 5;          // live previews (A1111's current_image) every N steps; 0 = none
  int keep_jobs = 64;             // finished jobs kept for GET /v1/jobs/{id}...
  int job_ttl_seconds = 3600;     // ...and for at most this long
  int max_streams = 8;            // concurrent /v1/jobs/{id}/events streams
  bool log_requests = true;       // one line per request on stderr
  // Where A1111 prompts' <lora:NAME:WEIGHT> tags find NAME.safetensors ("" = tags refused).
  std::string lora_dir;
  std::string weight_precision = "stored";  // OpenOptions::weight_precision
  bool low_memory = false;                  // OpenOptions::low_memory
  std::string device = "cpu";               // OpenOptions::device
};

class Server {
 public:
  // Probes every model (throws stipple::Error naming a path no family opens), starts loading
  // the first and binds the socket (throws when it cannot).
  explicit Server(const ServerOptions& options);
  ~Server();
  int port() const;  // the bound port
  // Serves until stop() or shutdown(); returns when stopped.
  void run();
  // Graceful stop (SIGTERM): new generations get 503, queued jobs are cancelled, the running
  // one may finish for `grace_seconds` and is then cancelled; then the socket closes. Blocks
  // until then. Safe from any thread.
  void shutdown(double grace_seconds);
  // shutdown(0).
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

// The `stipple serve` fixture of the server tests: a Server on a free loopback port, run on its
// own thread, with a JSON client for its routes. Header-only: only the server test programs link
// the server.
#pragma once

#include <httplib.h>

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <stipple/stipple.h>

#include "../apps/server/server.h"

namespace stipple::server {

const std::string kFashion = std::string(STIPPLE_SOURCE_DIR) + "/models/fashion-mnist-dit";

class Serving {
 public:
  explicit Serving(ServerOptions o) {
    o.port = 0;
    o.log_requests = false;
    server_ = std::make_unique<Server>(o);
    thread_ = std::thread([this] { server_->run(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(120, 0);
    // Models load in the background: ready when /readyz says so.
    for (int i = 0; i < 3000; ++i) {
      auto res = client_->Get("/readyz");
      if (res && res->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  int port() const { return server_->port(); }
  Server& server() { return *server_; }
  ~Serving() {
    server_->stop();
    thread_.join();
  }
  httplib::Client& client() { return *client_; }
  // POSTs `body` (JSON) and returns (status, parsed reply). Each call has its own connection,
  // so calls from several threads run at once.
  std::pair<int, nlohmann::json> post(const std::string& path, const std::string& body) {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(120, 0);
    auto res = c.Post(path.c_str(), body, "application/json");
    if (!res) return {0, nlohmann::json()};
    return {res->status, nlohmann::json::parse(res->body, nullptr, false)};
  }
  std::pair<int, nlohmann::json> get(const std::string& path) {
    httplib::Client c("127.0.0.1", server_->port());
    auto res = c.Get(path.c_str());
    if (!res) return {0, nlohmann::json()};
    return {res->status, nlohmann::json::parse(res->body, nullptr, false)};
  }
  std::pair<int, nlohmann::json> del(const std::string& path) {
    httplib::Client c("127.0.0.1", server_->port());
    auto res = c.Delete(path.c_str());
    if (!res) return {0, nlohmann::json()};
    return {res->status, nlohmann::json::parse(res->body, nullptr, false)};
  }
  // Polls GET /v1/jobs/{id} until the job has finished.
  nlohmann::json wait_job(const std::string& id) {
    for (int i = 0; i < 6000; ++i) {
      const auto [status, job] = get("/v1/jobs/" + id);
      if (status != 200) return job;
      const std::string state = job["state"];
      if (state != "queued" && state != "running") return job;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return nlohmann::json();
  }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::unique_ptr<httplib::Client> client_;
};

// A server of the shipped Fashion-MNIST DiT.
inline ServerOptions fashion() {
  ServerOptions o;
  o.models = {kFashion};
  return o;
}

// The pixels of class `label` drawn by the API with `seed`, `steps` steps.
inline std::vector<uint8_t> api_pixels(const std::string& label, int64_t seed, int steps) {
  const Engine engine = Engine::open(kFashion);
  GenerateRequest r;
  r.class_labels = {label};
  r.seed = seed;
  r.steps = steps;
  return engine.generate(r).images[0].image.pixels;
}

}  // namespace stipple::server

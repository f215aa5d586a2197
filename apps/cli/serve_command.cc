#include "serve_command.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "stop_signal.h"

namespace stipple::cli {

ServeCommand::ServeCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "serve",
      "Serve models over HTTP: the A1111 API (/sdapi/v1/txt2img, img2img, progress, interrupt, "
      "samplers, sd-models, options, png-info, memory) and the OpenAI Images API "
      "(/v1/images/generations, /v1/models). Models load once; one generation runs at a time "
      "behind a bounded queue (429 when full). Ctrl-C or SIGTERM stops it.");
  cmd_->add_option("--model", options_.models,
                   "a model folder or file to serve (repeat for several; the first is the "
                   "default)")
      ->required();
  cmd_->add_option("--host", options_.host, "address to listen on (loopback unless told)")
      ->capture_default_str();
  cmd_->add_option("--port", options_.port, "port (0: any free port, printed)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd_->add_option("--api-key", options_.api_key,
                   "require 'Authorization: Bearer KEY' on /sdapi and /v1 routes");
  cmd_->add_option("--api-auth", options_.api_auth,
                   "require HTTP basic auth user:pass instead (A1111's --api-auth)");
  cmd_->add_option("--queue", options_.queue, "generations that may wait behind the running one")
      ->check(CLI::Range(0, 10000))
      ->capture_default_str();
  cmd_->add_option("--max-pixels", options_.max_pixels, "largest width x height per image")
      ->check(CLI::Range(int64_t{64}, int64_t{16} << 20))
      ->capture_default_str();
  cmd_->add_option("--max-steps", options_.max_steps, "most denoising steps per request")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd_->add_option("--max-images", options_.max_images, "most images per request")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no line per request");
}

int ServeCommand::run() {
  options_.log_requests = !quiet_;
  server::Server server(options_);
  std::printf("stipple serve: http://%s:%d (A1111 /sdapi/v1, OpenAI /v1); Ctrl-C stops\n",
              options_.host.c_str(), server.port());
  std::fflush(stdout);
  install_stop_handlers();
  std::thread watcher([&server] {
    while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    server.stop();
  });
  server.run();
  if (!stop_requested()) {  // stopped some other way: let the watcher end
    std::raise(SIGTERM);
  }
  watcher.join();
  remove_stop_handlers();
  std::printf("stipple serve: stopped\n");
  return 0;
}

}  // namespace stipple::cli

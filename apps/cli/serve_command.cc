#include "serve_command.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "core/storage.h"
#include "device_option.h"
#include "stop_signal.h"

namespace stipple::cli {

ServeCommand::ServeCommand(CLI::App& app) {
  cmd_ = app.add_subcommand(
      "serve",
      "Serve models over HTTP: the A1111 API (/sdapi/v1/txt2img, img2img, progress, interrupt, "
      "skip, samplers, sd-models, options, png-info, memory), the OpenAI Images API "
      "(/v1/images/generations, /v1/images/edits, /v1/models), async jobs (/v1/jobs, with "
      "server-sent events), /metrics and a web page at /. One generation runs at a time behind "
      "a bounded queue (429 when full). SIGTERM or Ctrl-C stops it gracefully.");
  cmd_->add_option("--model", options_.models,
                   "a model folder or file to serve, or a folder of models (repeat for several; "
                   "the first is the default)")
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
  // Each waiting synchronous request holds one of the server's threads: the queue is bounded.
  cmd_->add_option("--queue", options_.queue, "generations that may wait behind the running one")
      ->check(CLI::Range(0, 256))
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
  cmd_->add_option("--lora-dir", options_.lora_dir,
                   "where A1111 prompts' <lora:NAME:WEIGHT> tags find NAME.safetensors");
  cmd_->add_option("--weight-precision", options_.weight_precision,
                   "how weight matrices are held: stored (a half-precision checkpoint as it is), "
                   "f32, f16 or bf16")
      ->check(CLI::IsMember({"stored", "f32", "f16", "bf16"}))
      ->capture_default_str();
  add_device_option(cmd_, options_.device, "every model");
  cmd_->add_flag("--low-memory", options_.low_memory,
                 "Stable Diffusion: hold each component only during its stage of a generation");
  cmd_->add_option("--output-dir", options_.output_dir,
                   "save images here (A1111 save_images, OpenAI response_format \"url\"), served "
                   "at /outputs/");
  cmd_->add_option("--cors", options_.cors_origin,
                   "allow browser pages from this origin (or \"*\") to call the API");
  cmd_->add_option("--memory-budget", options_.memory_budget_mb,
                   "MB the loaded models may take; more unloads the least recently used "
                   "(default: 3/4 of the memory available at start)");
  cmd_->add_option("--preview-every", options_.preview_every,
                   "live preview (A1111 current_image, job events) every N steps; 0: none")
      ->check(CLI::Range(0, 10000))
      ->capture_default_str();
  cmd_->add_option("--keep-jobs", options_.keep_jobs, "finished jobs kept for GET /v1/jobs/{id}")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd_->add_option("--grace", grace_,
                   "seconds the running generation may finish after SIGTERM before it is "
                   "cancelled")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  cmd_->add_flag("--quiet,-q", quiet_, "no line per request");
}

int ServeCommand::run() {
  options_.log_requests = !quiet_;
  parse_device(options_.device);  // an unusable device stops the server before it listens
  server::Server server(options_);
  std::printf("stipple serve: http://%s:%d (A1111 /sdapi/v1, OpenAI /v1, jobs /v1/jobs); "
              "Ctrl-C stops\n",
              options_.host.c_str(), server.port());
  std::fflush(stdout);
  install_stop_handlers();
  std::thread watcher([this, &server] {
    while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::fprintf(stderr, "stipple serve: stopping (the running generation has %.0f s)\n", grace_);
    server.shutdown(grace_);
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

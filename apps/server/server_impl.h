// Server::Impl, the state behind `stipple serve` (see server.h): the model slots, the job queue
// and its worker, all under one mutex. Its methods live by subject: jobs.cc (models, queue,
// worker), a1111.cc (A1111's routes), openai.cc (OpenAI's Images API) and server.cc (routes,
// metrics, start and stop).
#pragma once

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stipple/stipple.h>
#include <string>
#include <thread>
#include <vector>

#include "http_util.h"
#include "server.h"

namespace stipple::server {

enum class State { kQueued, kRunning, kSucceeded, kFailed, kCancelled };
inline const char* to_string(State s) {
  switch (s) {
    case State::kQueued: return "queued";
    case State::kRunning: return "running";
    case State::kSucceeded: return "succeeded";
    case State::kFailed: return "failed";
    case State::kCancelled: return "cancelled";
  }
  return "?";
}
inline bool is_final(State s) { return s == State::kSucceeded || s == State::kFailed || s == State::kCancelled; }

using Clock = std::chrono::steady_clock;

inline double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// One generation request: a job on the worker's queue.
struct Job {
  std::string id, kind;  // "txt2img", "img2img", "extras", "generations", "edits", "job"
  size_t model = 0;      // index into Impl::models
  // Builds the engine request once the model's description is known (at submission when it is
  // loaded, else on the worker); throws naming a bad field.
  std::function<GenerateRequest(const ModelDescription&, std::vector<std::string>& notes)> build;
  bool built = false;
  GenerateRequest request;
  int iterations = 1;  // A1111's n_iter: one engine call each, seeds continuing
  bool save = false;   // write the images to --output-dir
  std::vector<std::string> notes;
  State state = State::kQueued;
  int step = 0, total = 0, iteration = 0;
  Clock::time_point created = Clock::now(), started, finished;
  int64_t created_unix = static_cast<int64_t>(std::time(nullptr));
  std::vector<GeneratedImage> images;
  std::vector<std::string> files;  // per image, under --output-dir (when saved)
  GenerateResult result;           // the resolved fields (steps, sampler, ...)
  int64_t seed = -1;               // of the first image (a random one chosen for -1)
  std::string error;
  int error_status = 0;
  bool cancel_requested = false, interrupted = false, skipped = false;
  CancelToken current;  // of the running iteration
  std::string preview_b64;  // the latest live preview (PNG)
  int64_t preview_no = 0;
  uint64_t version = 0;  // bumps at every change: event streams wait on it
};


struct Server::Impl {
  struct Slot {
    std::string name, path, family;
    std::string variant;  // ModelProbe::variant: "SDXL", "SDXL refiner", ...
    // An SDXL base served with a refiner (A1111's refiner_checkpoint): a slot of its own, made
    // at start for each base and refiner pair the server has, not listed among the models.
    std::string refiner_path;
    uint64_t weights_bytes = 0;
    enum class Load { kUnloaded, kLoading, kLoaded, kFailed } load = Load::kUnloaded;
    std::unique_ptr<Engine> engine;  // touched by the worker only
    std::optional<ModelDescription> description;  // once loaded (kept after eviction)
    std::string error;                             // of the last failed load
    Clock::time_point last_used;
  };

  ServerOptions opt;
  httplib::Server http;
  std::vector<Slot> models;
  int bound_port = 0;
  uint64_t budget_bytes = 0;

  std::mutex mu;  // guards everything below (and the Slots' fields but `engine`)
  std::condition_variable cv;
  std::string current;  // A1111's sd_model_checkpoint
  std::deque<std::shared_ptr<Job>> queue;
  std::shared_ptr<Job> running;
  std::map<std::string, std::shared_ptr<Job>> jobs;  // every job not yet forgotten
  std::deque<std::string> finished_order;
  bool accepting = true, stopping = false;
  int streams = 0;
  int64_t job_count = 0;
  std::string job_timestamp;
  std::map<std::string, std::map<int, uint64_t>> requests;  // route -> status -> count
  std::map<State, uint64_t> finished_total;
  double step_seconds = 0;
  uint64_t step_count = 0;
  std::thread worker;

  // ---- models ----

  size_t model_index(const std::string& name);

  // The slot of model `base` finished by the refiner `name` (A1111's refiner_checkpoint).
  size_t refiner_slot(size_t base, const std::string& name);

  // Loads slot i on the worker, first evicting the least recently used models until it fits.
  void ensure_loaded(size_t i);

  // ---- jobs ----

  // Queues `job` (building its request now when the model is loaded, so a bad field is a 400
  // before anything waits); 429 when the queue is full, 503 while its model loads or the
  // server stops.
  std::shared_ptr<Job> submit(std::shared_ptr<Job> job);

  // Blocks until `job` has finished.
  void wait(const std::shared_ptr<Job>& job);

  void work();

  void execute(Job& job);

  // Finished jobs beyond --keep-jobs, or older than the time they are kept, are forgotten.
  void forget_old_jobs();

  // Cancels a queued job at once, a running one after its current step.
  void cancel(Job& job);

  // The error a failed job answers with.
  static void throw_failed(const Job& job);

  int queue_position(const Job& job) const;

  // A job as /v1/jobs shows it (under the lock); the images only when asked.
  json job_json(const Job& job, bool images) const;

  // ---- A1111 ----

  // A1111's txt2img / img2img body as a GenerateRequest for a model described by `d`; fields
  // stipple cannot honour go to `notes`.
  GenerateRequest a1111_request(const json& body, const ModelDescription& d, bool img2img,
                                std::vector<std::string>& notes) const;

  // The body's "steps" within the server's bound (0 when absent: the model's default).
  int steps(const json& body) const;

  // A job from an A1111-style body (txt2img, img2img and /v1/jobs).
  std::shared_ptr<Job> a1111_job(const json& body, const std::string& kind);

  json a1111_generate(const httplib::Request& req, bool img2img);

  json progress(const httplib::Request& req);

  json sd_models();

  // ---- A1111 extras: upscaling ----

  static bool is_upscaler(const Slot& m);

  // A1111's /sdapi/v1/upscalers: "None" and every upscaler model served (its scale once loaded).
  json upscalers();

  // One image of an extras request through the upscaler named by upscaler_1 ("None": as it is).
  // Returns the PNG (with its parameters) and notes on fields stipple does not honour.
  std::vector<uint8_t> extras_upscale(const json& body, const std::string& b64,
                                      const std::string& what, std::vector<std::string>& notes);

  // The html_info A1111 answers with: the notes, escaped.
  static std::string extras_info(const std::vector<std::string>& notes);

  json extras_single(const httplib::Request& req);

  // A1111's extra-batch-images: imageList [{data, name}] (at most --max-images).
  json extras_batch(const httplib::Request& req);

  // ---- OpenAI Images ----

  // The fields generations and edits share, into `r`; `form(name)` reads one field.
  void openai_common(const std::function<std::optional<json>(const char*)>& form,
                     const ModelDescription& d, GenerateRequest& r) const;

  // The response format a client asked for: b64_json, or url (needs --output-dir).
  bool wants_url(const std::string& format) const;

  json openai_response(const httplib::Request& req, const std::shared_ptr<Job>& job, bool url);

  json openai_generations(const httplib::Request& req);

  // multipart/form-data: image (PNG), mask (PNG, optional), prompt, n, size, response_format,
  // model; transparent pixels of the mask (or of the image, without a mask) are repainted.
  json openai_edits(const httplib::Request& req);

  // ---- operations ----

  std::string metrics();

  void routes();

  bool authorized(const httplib::Request& req) const;

  void finish(double grace_seconds);
};

}  // namespace stipple::server

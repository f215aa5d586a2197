// `stipple serve`; see server.h. Everything here goes through the public API: the server knows
// models only as stipple::Engine.
//
// Over 800 lines: the routes, the job queue and the model slots all live in Server::Impl under
// one mutex. The planned split is a private server_impl.h declaring Impl, with its methods in
// jobs.cc (queue, worker, models), a1111.cc, openai.cc and this file (routes, operations), and
// the JSON/base64 helpers in http_util.{h,cc}. Until then the sections are marked "---- X ----".
#include "server.h"

#include "web_page.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <nlohmann/json.hpp>
#include <stipple/stipple.h>

namespace stipple::server {

using nlohmann::json;

namespace {
// "a", 1, "b" -> "a1b" (the server uses only the public API, which has no such helper).
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace

// ---------------- base64 ----------------

std::string base64_encode(const std::vector<uint8_t>& bytes) {
  static const char* kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint32_t{bytes[i]} << 16) | (uint32_t{bytes[i + 1]} << 8) | bytes[i + 2];
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t{bytes[i]} << 16;
    if (i + 1 < bytes.size()) v |= uint32_t{bytes[i + 1]} << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::vector<uint8_t> base64_decode(const std::string& text, const std::string& what) {
  size_t start = 0;
  if (text.rfind("data:", 0) == 0) {  // a data URL: data:image/png;base64,....
    const size_t comma = text.find(',');
    if (comma == std::string::npos || text.substr(0, comma).find(";base64") == std::string::npos)
      throw Error(what + ": a data URL must be base64 (data:image/png;base64,...)");
    start = comma + 1;
  }
  std::vector<uint8_t> out;
  out.reserve((text.size() - start) / 4 * 3);
  uint32_t acc = 0;
  int bits = 0, pad = 0;
  size_t chars = 0;
  for (size_t i = start; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+' || c == '-') v = 62;
    else if (c == '/' || c == '_') v = 63;
    else if (c == '=') {
      ++pad;
      ++chars;
      continue;
    } else {
      throw Error(str_cat(what, ": not base64 (character ", static_cast<int>(
                                                                static_cast<unsigned char>(c)),
                          " at offset ", i, ")"));
    }
    if (pad > 0) throw Error(what + ": not base64 (data after '=' padding)");
    ++chars;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((acc >> bits) & 0xff));
    }
  }
  if (pad > 2 || (pad > 0 && chars % 4 != 0) || chars % 4 == 1)
    throw Error(what + ": not base64 (bad length or padding)");
  if (out.empty()) throw Error(what + ": empty");
  return out;
}

namespace {

// A request the server refuses with an HTTP status other than 400.
struct HttpError : Error {
  HttpError(int status, const std::string& what) : Error(what), status(status) {}
  int status;
};

int status_of(const Error& e) {
  if (const auto* h = dynamic_cast<const HttpError*>(&e)) return h->status;
  switch (e.kind()) {
    case ErrorKind::kNotFound: return 404;
    case ErrorKind::kResourceExhausted: return 413;
    case ErrorKind::kIo: return 500;
    default: return 400;
  }
}

// Typed fields of a JSON body; a wrong type is an error naming the field.
template <typename T>
T field(const json& body, const char* name, const T& fallback) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return fallback;
  if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) throw Error(str_cat(name, " must be a string, got ", it->dump()));
    return it->get<std::string>();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (it->is_boolean()) return it->get<bool>();
    if (it->is_number_integer()) return it->get<int64_t>() != 0;
    throw Error(str_cat(name, " must be true or false, got ", it->dump()));
  } else if constexpr (std::is_integral_v<T>) {
    if (it->is_number_float()) {
      const double d = it->get<double>();
      if (std::floor(d) != d || std::abs(d) > 9e15)
        throw Error(str_cat(name, " must be an integer, got ", it->dump()));
      return static_cast<T>(d);
    }
    if (!it->is_number_integer())
      throw Error(str_cat(name, " must be an integer, got ", it->dump()));
    if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      throw Error(str_cat(name, " is out of range: ", it->dump()));
    return static_cast<T>(it->get<int64_t>());
  } else {
    if (!it->is_number()) throw Error(str_cat(name, " must be a number, got ", it->dump()));
    return it->get<T>();
  }
}

json parse_body(const httplib::Request& req) {
  if (req.body.empty()) throw Error("the request has no body; send a JSON object");
  try {
    json j = json::parse(req.body);
    if (!j.is_object()) throw Error("the body must be a JSON object, got " +
                                    std::string(j.type_name()));
    return j;
  } catch (const json::parse_error& e) {
    throw Error(str_cat("malformed JSON at byte ", e.byte, " of the body"));
  }
}

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

Image decode_image(const std::string& b64, const std::string& what) {
  const std::vector<uint8_t> bytes = base64_decode(b64, what);
  try {
    return decode_png(bytes);
  } catch (const Error& e) {
    throw Error(str_cat(what, ": ", e.what()));
  }
}

// An RGBA image over white as RGB (init images may come with transparency); others unchanged.
Image without_alpha(const Image& img) {
  if (img.channels != 4) return img;
  Image out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 3;
  out.pixels.resize(static_cast<size_t>(img.width) * img.height * 3);
  for (size_t i = 0, n = static_cast<size_t>(img.width) * img.height; i < n; ++i) {
    const int a = img.pixels[4 * i + 3];
    for (int c = 0; c < 3; ++c)
      out.pixels[3 * i + c] =
          static_cast<uint8_t>((img.pixels[4 * i + c] * a + 255 * (255 - a) + 127) / 255);
  }
  return out;
}

// OpenAI's edit mask: fully transparent pixels are repainted -> a grey mask, white = repaint.
Image mask_from_alpha(const Image& img) {
  Image out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 1;
  out.pixels.resize(static_cast<size_t>(img.width) * img.height);
  for (size_t i = 0; i < out.pixels.size(); ++i)
    out.pixels[i] = img.pixels[4 * i + 3] == 0 ? 255 : 0;
  return out;
}

enum class State { kQueued, kRunning, kSucceeded, kFailed, kCancelled };

const char* to_string(State s) {
  switch (s) {
    case State::kQueued: return "queued";
    case State::kRunning: return "running";
    case State::kSucceeded: return "succeeded";
    case State::kFailed: return "failed";
    case State::kCancelled: return "cancelled";
  }
  return "?";
}
bool is_final(State s) { return s == State::kSucceeded || s == State::kFailed || s == State::kCancelled; }

using Clock = std::chrono::steady_clock;

// One source of randomness for job ids and seeds (-1), shared by the handler threads.
uint64_t random_u64() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

// A random seed as A1111 draws one for seed -1: in [0, 2^32).
int64_t random_seed() { return static_cast<int64_t>(random_u64() & 0xffffffffu); }

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A job id: 16 hex digits.
std::string random_id() {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(random_u64()));
  return hex;
}

// The route a request counts under in /metrics: its pattern, so ids and file names do not grow
// the label set; anything unrouted is "other".
std::string route_label(const std::string& method, const std::string& path) {
  static const char* kRoutes[] = {
      "/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/images/generations",
      "/v1/images/edits", "/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img",
      "/sdapi/v1/progress", "/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/samplers",
      "/sdapi/v1/schedulers", "/sdapi/v1/sd-models", "/sdapi/v1/options",
      "/sdapi/v1/png-info", "/sdapi/v1/memory", "/sdapi/v1/loras", "/sdapi/v1/refresh-loras",
      "/sdapi/v1/upscalers", "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images"};
  std::string route = "other";
  for (const char* r : kRoutes)
    if (path == r) route = r;
  if (path.rfind("/v1/jobs/", 0) == 0)
    route = path.size() > 7 && path.compare(path.size() - 7, 7, "/events") == 0
                ? "/v1/jobs/{id}/events"
                : "/v1/jobs/{id}";
  if (path.rfind("/outputs/", 0) == 0) route = "/outputs/{name}";
  return method + " " + route;
}

// A Prometheus label value.
std::string label_value(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// One generation request: a job on the worker's queue.
struct Job {
  std::string id, kind;  // kind: "txt2img", "img2img", "generations", "edits", "job"
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

}  // namespace

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

  size_t model_index(const std::string& name) {
    const std::string want = name.empty() ? current : name;
    for (size_t i = 0; i < models.size(); ++i)
      if (models[i].refiner_path.empty() && (models[i].name == want || models[i].path == want))
        return i;
    std::string known;
    for (const Slot& m : models)
      if (m.refiner_path.empty()) known += str_cat(known.empty() ? "" : ", ", m.name);
    throw Error(str_cat("unknown model \"", want, "\"; this server has: ", known),
                ErrorKind::kNotFound);
  }

  // The slot of model `base` finished by the refiner `name` (A1111's refiner_checkpoint).
  size_t refiner_slot(size_t base, const std::string& name) {
    const size_t r = model_index(name);
    if (models[r].variant != "SDXL refiner")
      throw Error(str_cat("refiner_checkpoint: ", models[r].name, " is ",
                          models[r].variant.empty() ? models[r].family : models[r].variant,
                          ", not an SDXL refiner"));
    for (size_t i = 0; i < models.size(); ++i)
      if (models[i].path == models[base].path && models[i].refiner_path == models[r].path) return i;
    throw Error(str_cat("refiner_checkpoint: a refiner finishes SDXL base models; ",
                        models[base].name, " is ",
                        models[base].variant.empty() ? models[base].family : models[base].variant));
  }

  // Loads slot i on the worker, first evicting the least recently used models until it fits.
  void ensure_loaded(size_t i) {
    Slot& m = models[i];
    {
      std::lock_guard<std::mutex> lock(mu);
      if (m.load == Slot::Load::kLoaded) {
        m.last_used = Clock::now();
        return;
      }
    }
    const uint64_t need = m.weights_bytes;  // its weights in memory (Engine::probe)
    if (need > budget_bytes)
      throw HttpError(507, str_cat("model ", m.name, " needs about ", need >> 20,
                                   " MB, more than the server's memory budget of ",
                                   budget_bytes >> 20, " MB (--memory-budget)"));
    for (;;) {
      uint64_t used = 0;
      size_t lru = models.size();
      for (size_t j = 0; j < models.size(); ++j) {
        if (models[j].load != Slot::Load::kLoaded) continue;
        used += models[j].weights_bytes;
        if (lru == models.size() || models[j].last_used < models[lru].last_used) lru = j;
      }
      if (used + need <= budget_bytes || lru == models.size()) break;
      std::fprintf(stderr, "stipple serve: unloading %s to make room for %s\n",
                   models[lru].name.c_str(), m.name.c_str());
      models[lru].engine.reset();
      std::lock_guard<std::mutex> lock(mu);
      models[lru].load = Slot::Load::kUnloaded;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      m.load = Slot::Load::kLoading;
    }
    const auto start = Clock::now();
    try {
      OpenOptions open;
      open.lora_dir = opt.lora_dir;
      open.weight_precision = opt.weight_precision;
      open.low_memory = opt.low_memory;
      open.refiner = m.refiner_path;
      auto engine = std::make_unique<Engine>(Engine::open(m.path, open));
      std::lock_guard<std::mutex> lock(mu);
      m.description = engine->description();
      m.engine = std::move(engine);
      m.load = Slot::Load::kLoaded;
      m.last_used = Clock::now();
      m.error.clear();
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      m.load = Slot::Load::kFailed;
      m.error = e.what();
      throw;
    }
    if (opt.log_requests)
      std::fprintf(stderr, "stipple serve: loaded %s in %.1f s\n", m.name.c_str(), since(start));
  }

  // ---- jobs ----

  // Queues `job` (building its request now when the model is loaded, so a bad field is a 400
  // before anything waits); 429 when the queue is full, 503 while its model loads or the
  // server stops.
  std::shared_ptr<Job> submit(std::shared_ptr<Job> job) {
    std::unique_lock<std::mutex> lock(mu);
    if (!accepting) throw HttpError(503, "the server is shutting down");
    Slot& m = models[job->model];
    if (m.load == Slot::Load::kLoading)
      throw HttpError(503, str_cat("model ", m.name, " is loading; retry in a few seconds"));
    const size_t waiting = queue.size() + (running ? 1 : 0);
    if (waiting > static_cast<size_t>(opt.queue))
      throw HttpError(429, str_cat("the queue is full (", opt.queue,
                                   " generations waiting); retry later"));
    if (m.description) {
      const ModelDescription d = *m.description;
      lock.unlock();  // building decodes images: not under the lock
      job->request = job->build(d, job->notes);
      job->built = true;
      lock.lock();
      if (!accepting) throw HttpError(503, "the server is shutting down");
    }
    job->id = "job-" + random_id();
    jobs[job->id] = job;
    queue.push_back(job);
    cv.notify_all();
    return job;
  }

  // Blocks until `job` has finished.
  void wait(const std::shared_ptr<Job>& job) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return is_final(job->state); });
  }

  void work() {
    try {
      ensure_loaded(0);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "stipple serve: cannot load %s: %s\n", models[0].name.c_str(),
                   e.what());
    }
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        job = queue.front();
        queue.pop_front();
        job->state = State::kRunning;
        job->started = Clock::now();
        ++job->version;
        running = job;
        ++job_count;
        job_timestamp = timestamp();
        cv.notify_all();
      }
      execute(*job);
      std::lock_guard<std::mutex> lock(mu);
      running.reset();
      job->finished = Clock::now();
      ++job->version;
      ++finished_total[job->state];
      finished_order.push_back(job->id);
      forget_old_jobs();
      cv.notify_all();
    }
  }

  void execute(Job& job) {
    try {
      ensure_loaded(job.model);
      if (!job.built) {
        const ModelDescription d = *models[job.model].description;
        job.request = job.build(d, job.notes);
        job.built = true;
      }
      const Engine& engine = *models[job.model].engine;  // only this thread unloads models
      GenerateRequest r = job.request;
      r.preview_every = opt.preview_every;
      // Iteration k draws with seed + k x its images (A1111's n_iter): a random seed is chosen
      // here, so that a skipped iteration does not shift the next one's.
      if (r.seed < 0) r.seed = random_seed();
      const int64_t per_iteration =
          static_cast<int64_t>(r.batch_size) *
          static_cast<int64_t>(std::max<size_t>(1, std::max(r.prompts.size(), r.class_labels.size())));
      const int64_t first_seed = r.seed;
      {
        std::lock_guard<std::mutex> lock(mu);
        job.seed = first_seed;
      }
      for (int it = 0; it < job.iterations; ++it) {
        r.seed = first_seed + it * per_iteration;
        CancelToken token;
        {
          std::lock_guard<std::mutex> lock(mu);
          if (job.cancel_requested) break;
          job.current = token;
          job.iteration = it;
        }
        double last = 0;
        try {
          GenerateResult out = engine.generate(
              r,
              [&](const Progress& p) {
                std::string preview;
                if (p.preview) preview = base64_encode(encode_png(*p.preview));
                std::lock_guard<std::mutex> lock(mu);
                job.total = p.total * job.iterations;
                job.step = p.total * it + p.step;
                step_seconds += p.elapsed_seconds - last;
                ++step_count;
                last = p.elapsed_seconds;
                if (!preview.empty()) {
                  job.preview_b64 = std::move(preview);
                  ++job.preview_no;
                }
                ++job.version;
                cv.notify_all();
              },
              &token);
          std::lock_guard<std::mutex> lock(mu);
          const bool first = job.images.empty();
          for (GeneratedImage& g : out.images) job.images.push_back(std::move(g));
          out.images.clear();
          if (first) {
            job.notes.insert(job.notes.end(), out.notes.begin(), out.notes.end());
            job.result = std::move(out);
          }
          ++job.version;
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::kCancelled) throw;
          std::lock_guard<std::mutex> lock(mu);
          if (job.cancel_requested) break;
          job.skipped = true;  // A1111's skip: on to the next iteration
        }

      }
      if (job.save && !opt.output_dir.empty()) {
        for (size_t i = 0; i < job.images.size(); ++i) {
          const std::string name = str_cat(job.id, "-", i, ".png");
          save_png((std::filesystem::path(opt.output_dir) / name).string(), job.images[i].image,
                   job.images[i].parameters);
          std::lock_guard<std::mutex> lock(mu);
          job.files.push_back(name);
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      job.state = job.cancel_requested ? State::kCancelled : State::kSucceeded;
      job.interrupted = job.cancel_requested;
    } catch (const Error& e) {
      std::lock_guard<std::mutex> lock(mu);
      job.state = State::kFailed;
      job.error = e.what();
      job.error_status = status_of(e);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      job.state = State::kFailed;
      job.error = str_cat("internal error: ", e.what());
      job.error_status = 500;
    }
  }

  // Finished jobs beyond --keep-jobs, or older than the time they are kept, are forgotten.
  void forget_old_jobs() {
    while (!finished_order.empty()) {
      const auto it = jobs.find(finished_order.front());
      const bool too_many = finished_order.size() > static_cast<size_t>(opt.keep_jobs);
      if (it != jobs.end() && !too_many && since(it->second->finished) < opt.job_ttl_seconds)
        break;
      if (it != jobs.end()) jobs.erase(it);
      finished_order.pop_front();
    }
  }

  // Cancels a queued job at once, a running one after its current step.
  void cancel(Job& job) {
    if (job.state == State::kQueued) {
      for (auto it = queue.begin(); it != queue.end(); ++it)
        if (it->get() == &job) {
          queue.erase(it);
          break;
        }
      job.state = State::kCancelled;
      job.interrupted = true;
      job.finished = Clock::now();
      ++finished_total[job.state];
      finished_order.push_back(job.id);
      ++job.version;
    } else if (job.state == State::kRunning) {
      job.cancel_requested = true;
      job.current.cancel();
    }
    cv.notify_all();
  }

  // The error a failed job answers with.
  static void throw_failed(const Job& job) {
    if (job.state == State::kFailed) throw HttpError(job.error_status, job.error);
  }

  int queue_position(const Job& job) const {
    for (size_t i = 0; i < queue.size(); ++i)
      if (queue[i].get() == &job) return static_cast<int>(i) + 1;
    return 0;
  }

  // A job as /v1/jobs shows it (under the lock); the images only when asked.
  json job_json(const Job& job, bool images) const {
    const double elapsed = job.state == State::kQueued ? 0.0
                           : is_final(job.state) && job.finished > job.started
                               ? std::chrono::duration<double>(job.finished - job.started).count()
                               : job.state == State::kRunning ? since(job.started) : 0.0;
    json j = {{"id", job.id},
              {"object", "job"},
              {"kind", job.kind},
              {"model", models[job.model].name},
              {"state", to_string(job.state)},
              {"queue_position", queue_position(job)},
              {"step", job.step},
              {"total", job.total},
              {"progress", job.total > 0 ? static_cast<double>(job.step) / job.total : 0.0},
              {"iteration", job.iteration},
              {"iterations", job.iterations},
              {"elapsed_seconds", elapsed},
              {"eta_seconds", job.state == State::kRunning && job.step > 0
                                  ? json(elapsed / job.step * (job.total - job.step))
                                  : json(nullptr)},
              {"created", job.created_unix},
              {"notes", job.notes},
              {"error", job.state == State::kFailed
                            ? json{{"message", job.error}, {"status", job.error_status}}
                            : json(nullptr)}};
    if (is_final(job.state) && job.state != State::kFailed) {
      json list = json::array();
      for (size_t i = 0; i < job.images.size(); ++i) {
        const GeneratedImage& g = job.images[i];
        json one = {{"seed", g.seed}, {"prompt", g.prompt}, {"parameters", g.parameters}};
        if (images) one["b64_json"] = base64_encode(encode_png(g.image, g.parameters));
        if (i < job.files.size()) one["url"] = "/outputs/" + job.files[i];
        list.push_back(std::move(one));
      }
      j["result"] = {{"images", list},
                     {"seed", job.seed},
                     {"steps", job.result.steps},
                     {"cfg_scale", job.result.cfg_scale},
                     {"sampler", job.result.a1111_sampler},
                     {"width", job.result.width},
                     {"height", job.result.height}};
    }
    return j;
  }

  // ---- A1111 ----

  // A1111's txt2img / img2img body as a GenerateRequest for a model described by `d`; fields
  // stipple cannot honour go to `notes`.
  GenerateRequest a1111_request(const json& body, const ModelDescription& d, bool img2img,
                                std::vector<std::string>& notes) const {
    GenerateRequest r;
    const bool class_model = d.tasks[0] == Task::kClassToImage;
    std::string prompt = field<std::string>(body, "prompt", "");
    if (class_model) {
      // /v1/jobs also takes class_label (a name or an id)
      const auto label = body.find("class_label");
      if (label != body.end() && label->is_number_integer())
        prompt = std::to_string(label->get<int64_t>());
      else if (label != body.end())
        prompt = field<std::string>(body, "class_label", "");
      if (prompt.empty())
        throw Error(str_cat("prompt: ", d.name, " is a class-to-image model; give the class as "
                            "the prompt (e.g. \"", d.class_names.empty() ? "0" : d.class_names[0],
                            "\")"));
      r.class_labels = {prompt};
    } else {
      if (prompt.empty() && !img2img) throw Error("prompt is required");
      r.prompt = prompt;
      r.negative_prompt = field<std::string>(body, "negative_prompt", "");
    }
    r.seed = field<int64_t>(body, "seed", -1);
    if (!d.refiner.empty() && body.contains("refiner_switch_at"))
      r.refiner_switch_at = field<double>(body, "refiner_switch_at", 0.8);
    std::string sampler = field<std::string>(body, "sampler_name", "");
    if (sampler.empty()) sampler = field<std::string>(body, "sampler_index", "");
    const std::string scheduler = field<std::string>(body, "scheduler", "");
    if (!sampler.empty() && (scheduler == "Karras" || scheduler == "karras") &&
        sampler.find("Karras") == std::string::npos)
      sampler += " Karras";
    else if (!scheduler.empty() && scheduler != "Automatic" && scheduler != "automatic" &&
             scheduler != "Karras" && scheduler != "karras")
      notes.push_back(str_cat("scheduler \"", scheduler, "\" is not available; the sampler's "
                              "own was used"));
    r.sampler = sampler;
    r.steps = steps(body);
    if (body.contains("cfg_scale") && !body["cfg_scale"].is_null())
      r.cfg_scale = field<double>(body, "cfg_scale", 0.0);
    const int width = field<int>(body, "width", 0), height = field<int>(body, "height", 0);
    if (width < 0 || height < 0 || static_cast<int64_t>(width) * height > opt.max_pixels)
      throw Error(str_cat("width x height must be at most ", opt.max_pixels, " pixels, got ",
                          width, "x", height));
    if (d.size_multiple == 0) {
      if ((width != 0 && width != d.default_width) || (height != 0 && height != d.default_height))
        notes.push_back(str_cat("width, height: ", d.name, " draws only ", d.default_width, "x",
                                d.default_height));
    } else {
      r.width = width;
      r.height = height;
    }
    r.batch_size = field<int>(body, "batch_size", 1);
    r.prompt_syntax = PromptSyntax::kA1111;  // as A1111's clients write prompts
    if (body.contains("override_settings") && body["override_settings"].is_object()) {
      const json& o = body["override_settings"];
      if (o.contains("CLIP_stop_at_last_layers"))
        r.clip_skip = field<int>(o, "CLIP_stop_at_last_layers", 1);
      if (o.contains("emphasis")) {  // A1111's setting: "Original", "No norm" or "None"
        const std::string e = field<std::string>(o, "emphasis", std::string("Original"));
        if (e == "None")
          r.prompt_syntax = PromptSyntax::kA1111NoEmphasis;
        else if (e != "Original")
          notes.push_back("emphasis: \"" + e + "\" is not supported; \"Original\" was used");
      }
    }
    if (img2img) {
      const auto it = body.find("init_images");
      if (it == body.end() || !it->is_array() || it->empty() || !(*it)[0].is_string())
        throw Error("init_images must be a list holding one base64 PNG");
      if (it->size() > 1) notes.push_back("init_images: only the first image was used");
      r.init_image = without_alpha(decode_image((*it)[0].get<std::string>(), "init_images[0]"));
      if (body.contains("denoising_strength") && !body["denoising_strength"].is_null())
        r.strength = field<double>(body, "denoising_strength", 0.75);
      const std::string mask = field<std::string>(body, "mask", "");
      if (!mask.empty()) {
        Image mk = without_alpha(decode_image(mask, "mask"));
        if (field<int>(body, "inpainting_mask_invert", 0) != 0)
          for (uint8_t& v : mk.pixels) v = static_cast<uint8_t>(255 - v);
        r.mask = std::move(mk);
      }
    }
    // What A1111 would do that stipple does not (yet): said, never silently dropped.
    for (const char* flag : {"enable_hr", "restore_faces", "tiling"})
      if (field<bool>(body, flag, false)) notes.push_back(str_cat(flag, " is not available"));
    if (field<double>(body, "subseed_strength", 0.0) != 0.0)
      notes.push_back("subseed_strength is not available");
    if (!field<std::string>(body, "script_name", "").empty())
      notes.push_back("script_name: scripts are not available");
    if (body.contains("styles") && body["styles"].is_array() && !body["styles"].empty())
      notes.push_back("styles are not available");
    if (field<bool>(body, "save_images", false) && opt.output_dir.empty())
      notes.push_back("save_images: this server was started without --output-dir");
    return r;
  }

  // The body's "steps" within the server's bound (0 when absent: the model's default).
  int steps(const json& body) const {
    const int n = field<int>(body, "steps", 0);
    if (n < 0 || n > opt.max_steps)
      throw Error(str_cat("steps must be in [1, ", opt.max_steps, "], got ", n));
    return n;
  }

  // A job from an A1111-style body (txt2img, img2img and /v1/jobs).
  std::shared_ptr<Job> a1111_job(const json& body, const std::string& kind) {
    auto job = std::make_shared<Job>();
    job->kind = kind;
    std::string name = field<std::string>(body, "model", "");
    if (body.contains("override_settings") && body["override_settings"].is_object())
      name = field<std::string>(body["override_settings"], "sd_model_checkpoint", name);
    const std::string refiner = field<std::string>(body, "refiner_checkpoint", "");
    {
      std::lock_guard<std::mutex> lock(mu);
      job->model = model_index(name);
      if (!refiner.empty() && refiner != "None") job->model = refiner_slot(job->model, refiner);
    }
    const bool img2img = kind == "img2img" || body.contains("init_images");
    const int batch = field<int>(body, "batch_size", 1), iters = field<int>(body, "n_iter", 1);
    if (batch < 1 || iters < 1 || batch * static_cast<int64_t>(iters) > opt.max_images)
      throw Error(str_cat("batch_size x n_iter must be in [1, ", opt.max_images, "], got ", batch,
                          " x ", iters));
    job->iterations = iters;
    job->save = field<bool>(body, "save_images", false) && !opt.output_dir.empty();
    job->build = [this, body, img2img](const ModelDescription& d, std::vector<std::string>& notes) {
      return a1111_request(body, d, img2img, notes);
    };
    return job;
  }

  json a1111_generate(const httplib::Request& req, bool img2img) {
    const json body = parse_body(req);
    const std::shared_ptr<Job> job = submit(a1111_job(body, img2img ? "img2img" : "txt2img"));
    wait(job);
    std::lock_guard<std::mutex> lock(mu);
    throw_failed(*job);
    const GenerateResult& out = job->result;
    const GenerateRequest& r = job->request;
    json images = json::array(), prompts = json::array(), seeds = json::array(),
         infotexts = json::array(), negatives = json::array();
    const bool send = field<bool>(body, "send_images", true);
    for (const GeneratedImage& g : job->images) {
      if (send) images.push_back(base64_encode(encode_png(g.image, g.parameters)));
      prompts.push_back(g.prompt);
      negatives.push_back(r.negative_prompt);
      seeds.push_back(g.seed);
      infotexts.push_back(g.parameters);
    }
    const json info = {
        {"prompt", job->images.empty() ? r.prompt : job->images[0].prompt},
        {"all_prompts", prompts},
        {"negative_prompt", r.negative_prompt},
        {"all_negative_prompts", negatives},
        {"seed", job->seed},
        {"all_seeds", seeds},
        {"subseed", job->seed},
        {"all_subseeds", seeds},
        {"subseed_strength", 0},
        {"width", out.width},
        {"height", out.height},
        {"sampler_name", out.a1111_sampler},
        {"cfg_scale", out.cfg_scale},
        {"steps", out.steps},
        {"batch_size", r.batch_size},
        {"restore_faces", false},
        {"face_restoration_model", nullptr},
        {"sd_model_name", models[job->model].name},
        {"sd_model_hash", nullptr},
        {"sd_vae_name", nullptr},
        {"sd_vae_hash", nullptr},
        {"seed_resize_from_w", -1},
        {"seed_resize_from_h", -1},
        {"denoising_strength", out.strength},
        {"extra_generation_params", json::object()},
        {"index_of_first_image", 0},
        {"infotexts", infotexts},
        {"styles", json::array()},
        {"job_timestamp", job_timestamp},
        {"clip_skip", r.clip_skip},
        {"is_using_inpainting_conditioning", false},
        {"version", std::string("stipple ") + version()},
        {"interrupted", job->interrupted},
        {"skipped", job->skipped},
        {"saved_files", job->files},
        {"not_honoured", job->notes},
    };
    return {{"images", images}, {"parameters", body}, {"info", info.dump()}};
  }

  json progress(const httplib::Request& req) {
    const bool skip_image = req.has_param("skip_current_image") &&
                            req.get_param_value("skip_current_image") != "false";
    std::lock_guard<std::mutex> lock(mu);
    const Job* job = running.get();
    const int step = job ? job->step : 0, total = job ? job->total : 0;
    const double fraction = total > 0 ? static_cast<double>(step) / total : 0.0;
    const double eta = job && step > 0 ? since(job->started) / step * (total - step) : 0.0;
    json image = nullptr;
    if (job && !skip_image && !job->preview_b64.empty()) image = job->preview_b64;
    return {{"progress", fraction},
            {"eta_relative", eta},
            {"state",
             {{"skipped", job && job->skipped},
              {"interrupted", job && job->cancel_requested},
              {"job", job ? job->kind : ""},
              {"job_count", static_cast<int64_t>(queue.size()) + (job ? 1 : 0)},
              {"job_timestamp", job_timestamp},
              {"job_no", job ? job->iteration : 0},
              {"sampling_step", step},
              {"sampling_steps", total}}},
            {"current_image", image},
            {"textinfo", job ? str_cat("step ", step, " of ", total) : "idle"}};
  }

  json sd_models() {
    std::lock_guard<std::mutex> lock(mu);
    json list = json::array();
    for (const Slot& m : models) {
      if (!m.refiner_path.empty()) continue;  // a base with a refiner: not a model of its own
      json s = {{"family", m.family},
                {"variant", m.variant},
                {"loaded", m.load == Slot::Load::kLoaded},
                {"loading", m.load == Slot::Load::kLoading}};
      if (m.description) {
        const ModelDescription& d = *m.description;
        json tasks = json::array();
        for (Task t : d.tasks) tasks.push_back(to_string(t));
        s.update({{"family", d.family},
                  {"tasks", tasks},
                  {"default_steps", d.default_steps},
                  {"default_cfg_scale", d.default_cfg_scale},
                  {"default_sampler", d.default_sampler},
                  {"default_width", d.default_width},
                  {"default_height", d.default_height},
                  {"size_multiple", d.size_multiple},
                  {"class_names", d.class_names}});
      }
      if (!m.error.empty()) s["error"] = m.error;
      // A1111's fields, then stipple's description (what the web page builds its form from).
      list.push_back({{"title", m.name}, {"model_name", m.name}, {"hash", nullptr},
                      {"sha256", nullptr}, {"filename", m.path}, {"config", nullptr},
                      {"stipple", s}});
    }
    return list;
  }

  // ---- A1111 extras: upscaling ----

  static bool is_upscaler(const Slot& m) {
    return m.family == "super-resolution" || m.family == "SD x4 upscaler";
  }

  // A1111's /sdapi/v1/upscalers: "None" and every upscaler model served (its scale once loaded).
  json upscalers() {
    std::lock_guard<std::mutex> lock(mu);
    json list = json::array();
    list.push_back({{"name", "None"}, {"model_name", nullptr}, {"model_path", nullptr},
                    {"model_url", nullptr}, {"scale", 1}});
    for (const Slot& m : models) {
      if (!m.refiner_path.empty() || !is_upscaler(m)) continue;
      list.push_back({{"name", m.name},
                      {"model_name", m.family},
                      {"model_path", m.path},
                      {"model_url", nullptr},
                      {"scale", m.description ? json(m.description->scale) : json(nullptr)}});
    }
    return list;
  }

  // One image of an extras request through the upscaler named by upscaler_1 ("None": as it is).
  // Returns the PNG (with its parameters) and notes on fields stipple does not honour.
  std::vector<uint8_t> extras_upscale(const json& body, const std::string& b64,
                                      const std::string& what, std::vector<std::string>& notes) {
    const Image image = decode_image(b64, what);
    const std::string name = field<std::string>(body, "upscaler_1", "None");
    for (const char* f : {"gfpgan_visibility", "codeformer_visibility",
                          "extras_upscaler_2_visibility"})
      if (field<double>(body, f, 0.0) != 0.0) notes.push_back(str_cat(f, " is not available"));
    const std::string second = field<std::string>(body, "upscaler_2", "None");
    if (!second.empty() && second != "None")
      notes.push_back("upscaler_2 is not available; upscaler_1 alone was used");
    if (name.empty() || name == "None") {
      notes.push_back("upscaler_1 is None: the image is returned as it is");
      return encode_png(image, "");
    }
    auto job = std::make_shared<Job>();
    job->kind = "extras";
    {
      std::lock_guard<std::mutex> lock(mu);
      job->model = model_index(name);
      if (!is_upscaler(models[job->model]))
        throw Error(str_cat("upscaler_1: ", models[job->model].name, " is a ",
                            models[job->model].family, " model, not an upscaler (see "
                            "/sdapi/v1/upscalers)"));
    }
    job->build = [this, body, image](const ModelDescription& d, std::vector<std::string>& n) {
      GenerateRequest r;
      r.init_image = without_alpha(image);
      r.prompt = field<std::string>(body, "prompt", "");  // the x4 upscaler takes a prompt
      r.seed = field<int64_t>(body, "seed", -1);
      r.steps = steps(body);
      if (body.contains("noise_level") && !body["noise_level"].is_null())
        r.noise_level = field<int>(body, "noise_level", 0);
      const int mode = field<int>(body, "resize_mode", 0);
      if (mode == 0) {
        const double factor = field<double>(body, "upscaling_resize", d.scale);
        if (factor != d.scale)
          n.push_back(str_cat("upscaling_resize: ", d.name, " upscales by ", d.scale, ", not ",
                              factor));
      } else {
        const int w = field<int>(body, "upscaling_resize_w", 0),
                  h = field<int>(body, "upscaling_resize_h", 0);
        if (w != image.width * d.scale || h != image.height * d.scale)
          n.push_back(str_cat("upscaling_resize_w/h: ", d.name, " draws ", image.width * d.scale,
                              "x", image.height * d.scale, " from this image, not ", w, "x", h));
      }
      return r;
    };
    submit(job);
    wait(job);
    std::lock_guard<std::mutex> lock(mu);
    throw_failed(*job);
    notes.insert(notes.end(), job->notes.begin(), job->notes.end());
    if (job->images.empty()) throw Error("the upscale was interrupted", ErrorKind::kCancelled);
    return encode_png(job->images[0].image, job->images[0].parameters);
  }

  // The html_info A1111 answers with: the notes, escaped.
  static std::string extras_info(const std::vector<std::string>& notes) {
    std::string html = "<p>";
    for (const std::string& n : notes) {
      for (char c : n) {
        if (c == '<') html += "&lt;";
        else if (c == '>') html += "&gt;";
        else if (c == '&') html += "&amp;";
        else html += c;
      }
      html += "<br>";
    }
    return html + "</p>";
  }

  json extras_single(const httplib::Request& req) {
    const json body = parse_body(req);
    const std::string image = field<std::string>(body, "image", "");
    if (image.empty()) throw Error("image is required (a base64 PNG)");
    std::vector<std::string> notes;
    const std::vector<uint8_t> png = extras_upscale(body, image, "image", notes);
    return {{"image", base64_encode(png)}, {"html_info", extras_info(notes)}};
  }

  // A1111's extra-batch-images: imageList [{data, name}] (at most --max-images).
  json extras_batch(const httplib::Request& req) {
    const json body = parse_body(req);
    const auto list = body.find("imageList");
    if (list == body.end() || !list->is_array() || list->empty())
      throw Error("imageList must be a list of {\"data\": base64 PNG, \"name\": ...}");
    if (static_cast<int64_t>(list->size()) > opt.max_images)
      throw Error(str_cat("imageList holds ", list->size(), " images; at most ", opt.max_images));
    std::vector<std::string> notes;
    json images = json::array();
    for (size_t i = 0; i < list->size(); ++i) {
      const json& item = (*list)[i];
      if (!item.is_object() || !item.contains("data") || !item["data"].is_string())
        throw Error(str_cat("imageList[", i, "] must be an object with \"data\" (a base64 PNG)"));
      std::vector<std::string> n;
      images.push_back(base64_encode(
          extras_upscale(body, item["data"].get<std::string>(), str_cat("imageList[", i, "]"), n)));
      if (i == 0) notes = n;
    }
    return {{"images", images}, {"html_info", extras_info(notes)}};
  }

  // ---- OpenAI Images ----

  // The fields generations and edits share, into `r`; `form(name)` reads one field.
  void openai_common(const std::function<std::optional<json>(const char*)>& form,
                     const ModelDescription& d, GenerateRequest& r) const {
    auto get = [&](const char* name) { return form(name).value_or(json(nullptr)); };
    const json body = {{"n", get("n")},
                       {"size", get("size")},
                       {"seed", get("seed")},
                       {"steps", get("steps")},
                       {"negative_prompt", get("negative_prompt")},
                       {"guidance_scale", get("guidance_scale")},
                       {"sampler", get("sampler")}};
    r.negative_prompt = field<std::string>(body, "negative_prompt", "");
    r.batch_size = field<int>(body, "n", 1);
    if (r.batch_size < 1 || r.batch_size > opt.max_images)
      throw Error(str_cat("n must be in [1, ", opt.max_images, "], got ", r.batch_size));
    const std::string size = field<std::string>(body, "size", "auto");
    if (size != "auto") {
      int w = 0, h = 0;
      char tail = 0;
      if (std::sscanf(size.c_str(), "%dx%d%c", &w, &h, &tail) != 2 || w <= 0 || h <= 0)
        throw Error(str_cat("size must be \"WIDTHxHEIGHT\" or \"auto\", got \"", size, "\""));
      if (static_cast<int64_t>(w) * h > opt.max_pixels)
        throw Error(str_cat("size ", size, " is more than ", opt.max_pixels, " pixels"));
      if (d.size_multiple != 0) {
        r.width = w;
        r.height = h;
      } else if (w != d.default_width || h != d.default_height) {
        throw Error(str_cat("size: ", d.name, " draws only ", d.default_width, "x",
                            d.default_height));
      }
    }
    r.seed = field<int64_t>(body, "seed", -1);
    r.steps = steps(body);
    if (!body["guidance_scale"].is_null())
      r.cfg_scale = field<double>(body, "guidance_scale", 0.0);
    r.sampler = field<std::string>(body, "sampler", "");
  }

  // The response format a client asked for: b64_json, or url (needs --output-dir).
  bool wants_url(const std::string& format) const {
    if (format == "b64_json") return false;
    if (format != "url")
      throw Error(str_cat("response_format must be \"b64_json\" or \"url\", got \"", format, "\""));
    if (opt.output_dir.empty())
      throw Error("response_format \"url\" needs a server started with --output-dir; use "
                  "b64_json");
    return true;
  }

  json openai_response(const httplib::Request& req, const std::shared_ptr<Job>& job, bool url) {
    wait(job);
    std::lock_guard<std::mutex> lock(mu);
    throw_failed(*job);
    if (job->state == State::kCancelled)
      throw HttpError(409, "the generation was cancelled (an interrupt or DELETE /v1/jobs)");
    const std::string host = req.get_header_value("Host");
    const std::string base =
        "http://" + (host.empty() ? str_cat(opt.host, ":", bound_port) : host) + "/outputs/";
    json data = json::array();
    for (size_t i = 0; i < job->images.size(); ++i) {
      const GeneratedImage& g = job->images[i];
      json one = {{"seed", g.seed}, {"revised_prompt", g.prompt}};
      if (url && i < job->files.size())
        one["url"] = base + job->files[i];
      else
        one["b64_json"] = base64_encode(encode_png(g.image, g.parameters));
      data.push_back(std::move(one));
    }
    return json{{"created", job->created_unix},
                {"data", data},
                {"output_format", "png"},
                {"size", str_cat(job->result.width, "x", job->result.height)}};
  }

  json openai_generations(const httplib::Request& req) {
    const json body = parse_body(req);
    auto job = std::make_shared<Job>();
    job->kind = "generations";
    {
      std::lock_guard<std::mutex> lock(mu);
      job->model = model_index(field<std::string>(body, "model", ""));
    }
    const std::string prompt = field<std::string>(body, "prompt", "");
    if (prompt.empty()) throw Error("prompt is required");
    const std::string output = field<std::string>(body, "output_format", "png");
    if (output != "png")
      throw Error(str_cat("output_format \"", output, "\" is not available; use png"));
    const bool url = wants_url(field<std::string>(body, "response_format", "b64_json"));
    job->save = url;
    job->build = [this, body, prompt](const ModelDescription& d, std::vector<std::string>&) {
      GenerateRequest r;
      if (d.tasks[0] == Task::kClassToImage)
        r.class_labels = {prompt};
      else
        r.prompt = prompt;
      openai_common(
          [&body](const char* name) -> std::optional<json> {
            const auto it = body.find(name);
            if (it == body.end()) return std::nullopt;
            return *it;
          },
          d, r);
      return r;
    };
    return openai_response(req, submit(job), url);
  }

  // multipart/form-data: image (PNG), mask (PNG, optional), prompt, n, size, response_format,
  // model; transparent pixels of the mask (or of the image, without a mask) are repainted.
  json openai_edits(const httplib::Request& req) {
    if (!req.is_multipart_form_data())
      throw Error("send multipart/form-data with image (a PNG), prompt and optionally mask");
    auto text = [&req](const char* name) -> std::optional<std::string> {
      if (!req.has_file(name)) return std::nullopt;
      return req.get_file_value(name).content;
    };
    const char* image_field = req.has_file("image") ? "image" : "image[]";
    if (!req.has_file(image_field)) throw Error("image is required (a PNG file)");
    const std::string prompt = text("prompt").value_or("");
    if (prompt.empty()) throw Error("prompt is required");
    auto png = [&](const char* name) {
      const std::string bytes = req.get_file_value(name).content;
      try {
        return decode_png(std::vector<uint8_t>(bytes.begin(), bytes.end()));
      } catch (const Error& e) {
        throw Error(str_cat(name, ": ", e.what()));
      }
    };
    const Image image = png(image_field);
    Image mask;
    std::vector<std::string> notes;
    if (req.has_file("mask")) {
      const Image m = png("mask");
      if (m.width != image.width || m.height != image.height)
        throw Error(str_cat("mask is ", m.width, "x", m.height, " but image is ", image.width,
                            "x", image.height, "; they must be the same size"));
      if (m.channels == 4) {
        mask = mask_from_alpha(m);
      } else {
        mask = m;
        notes.push_back("mask has no alpha channel: its white pixels were repainted");
      }
    } else if (image.channels == 4) {
      mask = mask_from_alpha(image);
    } else {
      throw Error("image has no transparent areas to edit; give a mask (a PNG, fully transparent "
                  "where the image is to be edited) or an image with transparent areas");
    }
    const std::optional<std::string> format = text("response_format");
    const bool url = wants_url(format.value_or("b64_json"));
    auto job = std::make_shared<Job>();
    job->kind = "edits";
    job->save = url;
    job->notes = notes;
    {
      std::lock_guard<std::mutex> lock(mu);
      job->model = model_index(text("model").value_or(""));
    }
    // Form fields are text: numbers are parsed as JSON (so "2" is 2), strings stay strings.
    std::map<std::string, json> fields;
    for (const char* name : {"n", "size", "seed", "steps", "negative_prompt", "guidance_scale",
                             "sampler"}) {
      const std::optional<std::string> v = text(name);
      if (!v) continue;
      const json parsed = json::parse(*v, nullptr, false);
      fields[name] = parsed.is_number() ? parsed : json(*v);
    }
    const Image init = without_alpha(image);
    job->build = [this, fields, prompt, init, mask](const ModelDescription& d,
                                                     std::vector<std::string>&) {
      GenerateRequest r;
      r.prompt = prompt;
      r.init_image = init;
      r.mask = mask;
      openai_common(
          [&fields](const char* name) -> std::optional<json> {
            const auto it = fields.find(name);
            if (it == fields.end()) return std::nullopt;
            return it->second;
          },
          d, r);
      return r;
    };
    return openai_response(req, submit(job), url);
  }

  // ---- operations ----

  std::string metrics() {
    std::ostringstream os;
    std::lock_guard<std::mutex> lock(mu);
    os << "# HELP stipple_http_requests_total HTTP requests answered, by route and status.\n"
          "# TYPE stipple_http_requests_total counter\n";
    for (const auto& [route, by_status] : requests)
      for (const auto& [status, n] : by_status)
        os << "stipple_http_requests_total{route=\"" << label_value(route) << "\",status=\""
           << status << "\"} " << n << "\n";
    os << "# HELP stipple_queue_length Generations waiting behind the running one.\n"
          "# TYPE stipple_queue_length gauge\n"
          "stipple_queue_length " << queue.size() << "\n";
    std::map<State, int> by_state;
    for (const auto& [id, job] : jobs) ++by_state[job->state];
    os << "# HELP stipple_jobs Jobs the server holds, by state (finished ones while kept).\n"
          "# TYPE stipple_jobs gauge\n";
    for (State s : {State::kQueued, State::kRunning, State::kSucceeded, State::kFailed,
                    State::kCancelled})
      os << "stipple_jobs{state=\"" << to_string(s) << "\"} " << by_state[s] << "\n";
    os << "# HELP stipple_jobs_finished_total Jobs finished since the start, by final state.\n"
          "# TYPE stipple_jobs_finished_total counter\n";
    for (State s : {State::kSucceeded, State::kFailed, State::kCancelled})
      os << "stipple_jobs_finished_total{state=\"" << to_string(s) << "\"} "
         << finished_total[s] << "\n";
    os << "# HELP stipple_step_seconds Time per denoising step.\n"
          "# TYPE stipple_step_seconds summary\n"
          "stipple_step_seconds_sum " << step_seconds << "\n"
          "stipple_step_seconds_count " << step_count << "\n";
    int loaded = 0;
    os << "# HELP stipple_model_loaded Whether each model is loaded.\n"
          "# TYPE stipple_model_loaded gauge\n";
    for (const Slot& m : models) {
      const bool in = m.load == Slot::Load::kLoaded;
      loaded += in;
      os << "stipple_model_loaded{model=\"" << label_value(m.name) << "\"} " << in << "\n";
    }
    os << "# HELP stipple_models_loaded Models loaded now.\n"
          "# TYPE stipple_models_loaded gauge\n"
          "stipple_models_loaded " << loaded << "\n"
          "# HELP stipple_memory_budget_bytes The memory budget for loaded models.\n"
          "# TYPE stipple_memory_budget_bytes gauge\n"
          "stipple_memory_budget_bytes " << budget_bytes << "\n"
          "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
          "# TYPE process_resident_memory_bytes gauge\n"
          "process_resident_memory_bytes " << system_memory().process_resident << "\n";
    return os.str();
  }

  void routes() {
    auto reply = [](httplib::Response& res, const json& j, int status = 200) {
      res.status = status;
      res.set_content(j.dump(), "application/json");
    };
    auto fail = [reply](httplib::Response& res, bool openai, const Error& e) {
      const int status = status_of(e);
      if (status == 429 || status == 503) res.set_header("Retry-After", "5");
      if (openai)
        reply(res,
              {{"error",
                {{"message", e.what()},
                 {"type", status == 404 ? "not_found_error"
                          : status >= 500 ? "server_error"
                                          : "invalid_request_error"},
                 {"param", nullptr},
                 {"code", nullptr}}}},
              status);
      else
        reply(res, {{"error", status == 404 ? "NotFound" : status >= 500 ? "ServerError"
                                                                        : "BadRequest"},
                    {"detail", e.what()}}, status);
    };
    auto guard = [reply, fail](bool openai, auto fn) {
      return [reply, fail, openai, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          reply(res, fn(req));
        } catch (const Error& e) {
          fail(res, openai, e);
        }
      };
    };
    const std::string a = "/sdapi/v1/";
    http.Post(a + "txt2img", guard(false, [this](const auto& req) { return a1111_generate(req, false); }));
    http.Post(a + "img2img", guard(false, [this](const auto& req) { return a1111_generate(req, true); }));
    http.Get(a + "progress", guard(false, [this](const auto& req) { return progress(req); }));
    http.Post(a + "interrupt", guard(false, [this](const auto&) {
      std::lock_guard<std::mutex> lock(mu);
      if (running) cancel(*running);
      return json::object();
    }));
    http.Post(a + "skip", guard(false, [this](const auto&) {
      std::lock_guard<std::mutex> lock(mu);
      if (running) {
        running->skipped = true;
        running->current.cancel();
      }
      return json::object();
    }));
    http.Get(a + "samplers", guard(false, [](const auto&) {
      json list = json::array();
      for (const SamplerInfo& s : samplers())
        list.push_back({{"name", s.a1111_name}, {"aliases", {s.name}}, {"options", json::object()}});
      return list;
    }));
    http.Get(a + "schedulers", guard(false, [](const auto&) {
      return json::array({{{"name", "automatic"}, {"label", "Automatic"}, {"aliases", nullptr}},
                          {{"name", "karras"}, {"label", "Karras"}, {"aliases", nullptr}}});
    }));
    http.Get(a + "sd-models", guard(false, [this](const auto&) { return sd_models(); }));
    http.Get(a + "upscalers", guard(false, [this](const auto&) { return upscalers(); }));
    http.Post(a + "extra-single-image",
              guard(false, [this](const auto& req) { return extras_single(req); }));
    http.Post(a + "extra-batch-images",
              guard(false, [this](const auto& req) { return extras_batch(req); }));
    http.Get(a + "options", guard(false, [this](const auto&) {
      std::lock_guard<std::mutex> lock(mu);
      return json{{"sd_model_checkpoint", current}};
    }));
    http.Post(a + "options", guard(false, [this](const auto& req) {
      const json body = parse_body(req);
      const std::string name = field<std::string>(body, "sd_model_checkpoint", "");
      std::lock_guard<std::mutex> lock(mu);
      if (!name.empty()) current = models[model_index(name)].name;  // loads on its first job
      return json(nullptr);
    }));
    http.Post(a + "png-info", guard(false, [](const auto& req) {
      const json body = parse_body(req);
      std::string params;
      decode_png(base64_decode(field<std::string>(body, "image", ""), "image"), &params);
      json items = json::object();
      if (!params.empty()) items["parameters"] = params;
      return json{{"info", params}, {"items", items}};
    }));
    // LoRAs in --lora-dir, as A1111 lists them (none without a folder). Files are read on each
    // request that names one, so a refresh has nothing to do.
    http.Get(a + "loras", guard(false, [this](const auto&) {
      json list = json::array();
      if (opt.lora_dir.empty()) return list;
      for (const LoraFile& f : list_loras(opt.lora_dir)) {
        json metadata = json::object();
        for (const auto& [key, value] : f.metadata) {
          // As A1111: values that hold JSON objects or lists (kohya's tag frequencies) are parsed.
          json v = value;
          if (!value.empty() && (value[0] == '{' || value[0] == '[')) {
            json parsed = json::parse(value, nullptr, /*allow_exceptions=*/false);
            if (!parsed.is_discarded()) v = std::move(parsed);
          }
          metadata[key] = std::move(v);
        }
        json item = {{"name", f.name}, {"alias", f.alias}, {"path", f.path}, {"metadata", metadata}};
        if (!f.error.empty()) item["stipple"] = {{"error", f.error}};
        list.push_back(std::move(item));
      }
      return list;
    }));
    http.Post(a + "refresh-loras", guard(false, [](const auto&) { return json(nullptr); }));
    http.Get(a + "memory", guard(false, [](const auto&) {
      const SystemMemory m = system_memory();
      const double total = static_cast<double>(m.total), free = static_cast<double>(m.available);
      return json{{"ram", {{"free", free}, {"used", total - free}, {"total", total},
                           {"process_resident", static_cast<double>(m.process_resident)}}},
                  {"cuda", {{"error", "stipple serves from the CPU"}}}};
    }));

    // ---- OpenAI Images ----
    http.Post("/v1/images/generations", guard(true, [this](const auto& req) { return openai_generations(req); }));
    http.Post("/v1/images/edits", guard(true, [this](const auto& req) { return openai_edits(req); }));
    http.Get("/v1/models", guard(true, [this](const auto&) {
      json data = json::array();
      for (const Slot& m : models)
        if (m.refiner_path.empty())
          data.push_back({{"id", m.name}, {"object", "model"}, {"created", 0},
                        {"owned_by", "stipple"}});
      return json{{"object", "list"}, {"data", data}};
    }));

    // ---- jobs ----
    http.Post("/v1/jobs", [this, reply, fail](const auto& req, auto& res) {
      try {
        const std::shared_ptr<Job> job = submit(a1111_job(parse_body(req), "job"));
        std::lock_guard<std::mutex> lock(mu);
        res.set_header("Location", "/v1/jobs/" + job->id);
        reply(res, job_json(*job, false), 202);
      } catch (const Error& e) {
        fail(res, false, e);
      }
    });
    http.Get("/v1/jobs", guard(false, [this](const auto&) {
      std::lock_guard<std::mutex> lock(mu);
      json list = json::array();
      for (const auto& [id, job] : jobs) list.push_back(job_json(*job, false));
      return json{{"object", "list"}, {"data", list}};
    }));
    auto find_job = [this](const std::string& id) {
      const auto it = jobs.find(id);
      if (it == jobs.end())
        throw Error(str_cat("no job ", id, " (finished jobs are kept for ", opt.job_ttl_seconds,
                            " s, at most ", opt.keep_jobs, ")"),
                    ErrorKind::kNotFound);
      return it->second;
    };
    const std::string id_pattern = "/v1/jobs/(job-[0-9a-f]{1,32})";
    http.Get(id_pattern, guard(false, [this, find_job](const auto& req) {
      const bool images = !req.has_param("images") || req.get_param_value("images") != "false";
      const bool preview = req.has_param("preview") && req.get_param_value("preview") == "true";
      std::lock_guard<std::mutex> lock(mu);
      const std::shared_ptr<Job> job = find_job(req.matches[1]);
      json j = job_json(*job, images);
      if (preview && job->state == State::kRunning && !job->preview_b64.empty())
        j["preview"] = job->preview_b64;  // the latest live preview
      return j;
    }));
    http.Delete(id_pattern, guard(false, [this, find_job](const auto& req) {
      std::lock_guard<std::mutex> lock(mu);
      const std::shared_ptr<Job> job = find_job(req.matches[1]);
      cancel(*job);
      return job_json(*job, false);
    }));
    http.Get(id_pattern + "/events", [this, find_job, fail](const auto& req, auto& res) {
      std::shared_ptr<Job> job;
      try {
        std::lock_guard<std::mutex> lock(mu);
        job = find_job(req.matches[1]);
        if (streams >= opt.max_streams)
          throw HttpError(429, str_cat("at most ", opt.max_streams, " event streams at once; "
                                       "poll GET /v1/jobs/{id} instead"));
        ++streams;
      } catch (const Error& e) {
        return fail(res, false, e);
      }
      res.set_header("Cache-Control", "no-cache");
      auto last = std::make_shared<uint64_t>(~uint64_t{0});
      auto shown_preview = std::make_shared<int64_t>(0);
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, job, last, shown_preview](size_t, httplib::DataSink& sink) {
            std::unique_lock<std::mutex> lock(mu);
            cv.wait_for(lock, std::chrono::seconds(10),
                        [&] { return job->version != *last || stopping; });
            if (job->version == *last) {  // nothing new: a comment keeps proxies from closing
              lock.unlock();
              const std::string ping = ": keep-alive\n\n";
              return !stopping && sink.write(ping.data(), ping.size());
            }
            *last = job->version;
            const bool done = is_final(job->state);
            json event = job_json(*job, false);
            if (job->preview_no != *shown_preview && !job->preview_b64.empty()) {
              event["preview"] = job->preview_b64;
              *shown_preview = job->preview_no;
            }
            lock.unlock();
            const std::string text = str_cat("event: ", done ? "done" : "progress",
                                             "\ndata: ", event.dump(), "\n\n");
            if (!sink.write(text.data(), text.size())) return false;
            if (done) sink.done();
            return true;
          },
          [this](bool) {
            std::lock_guard<std::mutex> lock(mu);
            --streams;
          });
    });

    // ---- files written with --output-dir ----
    http.Get("/outputs/([A-Za-z0-9][A-Za-z0-9_.-]{0,127}\\.png)", [this, fail](const auto& req, auto& res) {
      try {
        namespace fs = std::filesystem;
        const fs::path file = fs::path(opt.output_dir) / std::string(req.matches[1]);
        std::error_code ec;
        if (opt.output_dir.empty() || !fs::is_regular_file(fs::symlink_status(file, ec)))
          throw Error(str_cat("no image ", req.matches[1]), ErrorKind::kNotFound);
        std::ifstream in(file, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        res.set_content(bytes, "image/png");
      } catch (const Error& e) {
        fail(res, false, e);
      }
    });

    // ---- the web page ----
    http.Get("/", [](const auto&, auto& res) { res.set_content(web_page(), "text/html"); });

    // ---- operations ----
    http.Get("/healthz", [reply](const auto&, auto& res) { reply(res, {{"status", "ok"}}); });
    http.Get("/readyz", [this, reply](const auto&, auto& res) {
      std::lock_guard<std::mutex> lock(mu);
      const Slot& first = models[0];
      json list = json::array();
      for (const Slot& m : models)
        list.push_back({{"name", m.name},
                        {"state", m.load == Slot::Load::kLoaded    ? "loaded"
                                  : m.load == Slot::Load::kLoading ? "loading"
                                  : m.load == Slot::Load::kFailed  ? "failed"
                                                                   : "unloaded"}});
      const bool ready = first.load == Slot::Load::kLoaded && accepting;
      json body = {{"status", !accepting ? "stopping"
                              : ready    ? "ready"
                              : first.load == Slot::Load::kFailed ? "failed"
                                                                  : "loading"},
                   {"models", list}};
      if (first.load == Slot::Load::kFailed) body["error"] = first.error;
      if (!ready) res.set_header("Retry-After", "5");
      reply(res, body, ready ? 200 : 503);
    });
    http.Get("/metrics", [this](const auto&, auto& res) {
      res.set_content(metrics(), "text/plain; version=0.0.4");
    });
    if (!opt.cors_origin.empty())
      http.Options(".*", [](const auto&, auto& res) { res.status = 204; });
  }

  bool authorized(const httplib::Request& req) const {
    if (opt.api_key.empty() && opt.api_auth.empty()) return true;
    if (req.path == "/healthz" || req.path == "/readyz" || req.path == "/") return true;
    if (req.method == "OPTIONS" && !opt.cors_origin.empty()) return true;  // CORS preflight
    const std::string auth = req.get_header_value("Authorization");
    if (!opt.api_key.empty() && auth == "Bearer " + opt.api_key) return true;
    if (!opt.api_auth.empty()) {
      const std::string user_pass(opt.api_auth);
      const std::vector<uint8_t> raw(user_pass.begin(), user_pass.end());
      if (auth == "Basic " + base64_encode(raw)) return true;
    }
    return false;
  }

  void finish(double grace_seconds) {
    {
      std::unique_lock<std::mutex> lock(mu);
      accepting = false;
      while (!queue.empty()) cancel(*queue.front());
      cv.wait_for(lock, std::chrono::duration<double>(std::max(0.0, grace_seconds)),
                  [&] { return !running; });
      if (running) cancel(*running);
      cv.wait(lock, [&] { return !running; });
      stopping = true;
      cv.notify_all();
    }
    if (worker.joinable() && worker.get_id() != std::this_thread::get_id()) worker.join();
    http.stop();
  }
};

Server::Server(const ServerOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.opt = options;
  if (options.models.empty()) throw Error("give at least one model to serve");
  if (options.queue < 0 || options.queue > 256 || options.max_streams < 1 || options.max_streams > 64)
    throw Error(str_cat("queue must be in [0, 256] and max_streams in [1, 64], got ",
                        options.queue, " and ", options.max_streams));
  // Each --model is a model, or a folder of models (every sub-folder a family opens, by name).
  std::vector<std::pair<std::string, ModelProbe>> found;
  for (const std::string& path : options.models) {
    try {
      found.emplace_back(path, Engine::probe(path));
    } catch (const Error& e) {
      namespace fs = std::filesystem;
      if (e.kind() != ErrorKind::kUnsupported || !fs::is_directory(path)) throw;
      std::vector<std::string> inside;
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(path, ec))
        if (entry.is_directory(ec)) inside.push_back(entry.path().string());
      std::sort(inside.begin(), inside.end());
      const size_t before = found.size();
      for (const std::string& sub : inside) {
        try {
          found.emplace_back(sub, Engine::probe(sub));
        } catch (const Error&) {
          // not a model (a classifier, a data folder, ...): not served
        }
      }
      if (found.size() == before)
        throw Error(str_cat(path, " is neither a model nor a folder holding models: ", e.what()),
                    ErrorKind::kUnsupported);
    }
  }
  for (const auto& [path, probe] : found) {
    Impl::Slot m;
    m.path = path;
    m.name = probe.name;
    m.family = probe.family;
    m.variant = probe.variant;
    m.weights_bytes = probe.weights_bytes;
    for (const Impl::Slot& other : s.models)
      if (other.name == m.name)
        throw Error(str_cat("two models are named \"", m.name, "\" (", other.path, " and ", path,
                            "); give folders with different names"));
    s.models.push_back(std::move(m));
  }
  // Each SDXL base with each SDXL refiner (loaded only when a request names the refiner).
  const size_t served = s.models.size();
  for (size_t b = 0; b < served; ++b)
    for (size_t r = 0; r < served; ++r)
      if (s.models[b].variant == "SDXL" && s.models[r].variant == "SDXL refiner") {
        Impl::Slot m;
        m.path = s.models[b].path;
        m.name = s.models[b].name + " + " + s.models[r].name;
        m.family = s.models[b].family;
        m.variant = s.models[b].variant;
        m.refiner_path = s.models[r].path;
        m.weights_bytes = s.models[b].weights_bytes + s.models[r].weights_bytes;
        s.models.push_back(std::move(m));
      }
  s.current = s.models[0].name;
  s.budget_bytes = options.memory_budget_mb > 0 ? options.memory_budget_mb << 20
                                                : system_memory().available / 4 * 3;
  if (!options.output_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.output_dir, ec);
    if (!std::filesystem::is_directory(options.output_dir))
      throw Error(str_cat("--output-dir ", options.output_dir, " is not a folder that can be "
                          "made"),
                  ErrorKind::kIo);
  }
  // Threads: the synchronous routes wait in theirs (queue + the running one), event streams
  // hold theirs; the rest answer at once.
  const int threads = options.queue + options.max_streams + 16;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.http.set_payload_max_length(options.max_body_bytes);
  s.http.set_read_timeout(options.read_timeout_seconds, 0);
  s.http.set_keep_alive_max_count(1000);  // requests per connection (cpp-httplib's default: 5)
  s.http.set_write_timeout(30, 0);
  s.http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (impl_->authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
    res.status = 401;
    if (!impl_->opt.api_auth.empty()) res.set_header("WWW-Authenticate", "Basic realm=\"stipple\"");
    res.set_content(json{{"error", {{"message", "missing or wrong Authorization header"},
                                    {"type", "invalid_request_error"},
                                    {"param", nullptr},
                                    {"code", "invalid_api_key"}}}}
                        .dump(),
                    "application/json");
    return httplib::Server::HandlerResponse::Handled;
  });
  if (!options.cors_origin.empty())
    s.http.set_post_routing_handler([origin = options.cors_origin](const auto&, auto& res) {
      res.set_header("Access-Control-Allow-Origin", origin);
      if (origin != "*") res.set_header("Vary", "Origin");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Max-Age", "600");
    });
  s.http.set_exception_handler([](const httplib::Request&, httplib::Response& res,
                                  std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    res.status = 500;
    res.set_content(json{{"error", "InternalError"}, {"detail", what}}.dump(), "application/json");
  });
  s.http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string detail =
        res.status == 404   ? str_cat("no route ", req.method, " ", req.path)
        : res.status == 413 ? "the request body is too large"
                            : str_cat("HTTP ", res.status);
    res.set_content(json{{"error", res.status == 404 ? "NotFound" : "BadRequest"},
                         {"detail", detail}}
                        .dump(),
                    "application/json");
  });
  s.http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      ++impl_->requests[route_label(req.method, req.path)][res.status];
    }
    if (impl_->opt.log_requests)
      std::fprintf(stderr, "%s %s %d %zu bytes\n", req.method.c_str(), req.path.c_str(),
                   res.status, res.body.size());
  });
  s.routes();
  // Debian's compiled cpp-httplib listens with a backlog of 5: a burst of connections would
  // overflow it, and the kernel resets some. The listening socket is caught here and its backlog
  // widened once bound (listen() again on a listening socket only changes the backlog).
  int listen_fd = -1;
  s.http.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd = sock;
  });
  if (options.port == 0) {
    s.bound_port = s.http.bind_to_any_port(options.host);
  } else {
    s.bound_port = s.http.bind_to_port(options.host, options.port) ? options.port : -1;
  }
  if (s.bound_port <= 0)
    throw Error(str_cat("cannot listen on ", options.host, ":", options.port,
                        " (in use, or not an address of this machine)"),
                ErrorKind::kIo);
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);
  s.worker = std::thread([this] { impl_->work(); });
}

Server::~Server() { stop(); }

int Server::port() const { return impl_->bound_port; }

void Server::run() { impl_->http.listen_after_bind(); }

void Server::shutdown(double grace_seconds) { impl_->finish(grace_seconds); }

void Server::stop() { impl_->finish(0); }

}  // namespace stipple::server

// `stipple serve`'s routes, /metrics, start and stop; see server.h, and server_impl.h for where
// the rest of Server::Impl lives. Everything goes through the public API: the server knows
// models only as stipple::Engine.
#include "server.h"

#include "server_impl.h"

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

std::string Server::Impl::metrics() {
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

void Server::Impl::routes() {
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

bool Server::Impl::authorized(const httplib::Request& req) const {
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

void Server::Impl::finish(double grace_seconds) {
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
  // Requests are counted here, before the response is written: the logger runs after the write,
  // so a client that asks /metrics right after an answer could otherwise miss its count.
  s.http.set_post_routing_handler([this, origin = options.cors_origin](const httplib::Request& req,
                                                                       httplib::Response& res) {
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      ++impl_->requests[route_label(req.method, req.path)][res.status];
    }
    if (origin.empty()) return;
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

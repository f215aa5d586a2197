// Server::Impl's models and jobs: loading and evicting model slots, the queue, the worker that
// runs one generation at a time, cancelling, and a job as /v1/jobs shows it.
#include "server_impl.h"

#include <algorithm>
#include <filesystem>

namespace stipple::server {

size_t Server::Impl::model_index(const std::string& name) {
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
size_t Server::Impl::refiner_slot(size_t base, const std::string& name) {
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
void Server::Impl::ensure_loaded(size_t i) {
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
    open.device = opt.device;
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

// Queues `job` (building its request now when the model is loaded, so a bad field is a 400
// before anything waits); 429 when the queue is full, 503 while its model loads or the
// server stops.
std::shared_ptr<Job> Server::Impl::submit(std::shared_ptr<Job> job) {
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
void Server::Impl::wait(const std::shared_ptr<Job>& job) {
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return is_final(job->state); });
}

void Server::Impl::work() {
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

void Server::Impl::execute(Job& job) {
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
void Server::Impl::forget_old_jobs() {
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
void Server::Impl::cancel(Job& job) {
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
void Server::Impl::throw_failed(const Job& job) {
  if (job.state == State::kFailed) throw HttpError(job.error_status, job.error);
}

int Server::Impl::queue_position(const Job& job) const {
  for (size_t i = 0; i < queue.size(); ++i)
    if (queue[i].get() == &job) return static_cast<int>(i) + 1;
  return 0;
}

// A job as /v1/jobs shows it (under the lock); the images only when asked.
json Server::Impl::job_json(const Job& job, bool images) const {
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

}  // namespace stipple::server

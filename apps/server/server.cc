// `stipple serve`; see server.h. Everything here goes through the public API: the server knows
// models only as stipple::Engine.
#include "server.h"

#include "web_page.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <sstream>
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

}  // namespace

struct Server::Impl {
  struct Model {
    std::string name, path;
    std::unique_ptr<Engine> engine;
  };

  ServerOptions opt;
  httplib::Server http;
  std::vector<Model> models;
  int bound_port = 0;

  std::mutex mu;  // guards everything below
  std::string current;  // A1111's sd_model_checkpoint
  int waiting = 0;      // generations queued behind the running one
  bool running = false;
  int step = 0, total = 0, job_count = 0;
  double elapsed = 0;
  bool interrupted = false;
  std::string job_timestamp;
  CancelToken cancel;  // of the running generation
  std::mutex generation;  // held while a generation runs: one at a time

  const Model& model(const std::string& name) {
    const std::string want = name.empty() ? current_model() : name;
    for (const Model& m : models)
      if (m.name == want || m.path == want) return m;
    std::string known;
    for (const Model& m : models) known += str_cat(known.empty() ? "" : ", ", m.name);
    throw Error(str_cat("unknown model \"", want, "\"; this server has: ", known),
                ErrorKind::kNotFound);
  }
  std::string current_model() {
    std::lock_guard<std::mutex> lock(mu);
    return current;
  }

  // Runs one generation after those queued before it; 429 when the queue is full.
  GenerateResult generate(const Model& m, const GenerateRequest& r) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (waiting >= opt.queue)
        throw HttpError(429, str_cat("the queue is full (", opt.queue,
                                     " generations waiting); retry later"));
      ++waiting;
    }
    std::unique_lock<std::mutex> slot(generation);
    CancelToken token;
    {
      std::lock_guard<std::mutex> lock(mu);
      --waiting;
      running = true;
      interrupted = false;
      step = total = 0;
      elapsed = 0;
      ++job_count;
      job_timestamp = timestamp();
      cancel = token;
    }
    struct Done {
      Impl* self;
      ~Done() {
        std::lock_guard<std::mutex> lock(self->mu);
        self->running = false;
      }
    } done{this};
    return m.engine->generate(
        r,
        [this](const Progress& p) {
          std::lock_guard<std::mutex> lock(mu);
          step = p.step;
          total = p.total;
          elapsed = p.elapsed_seconds;
        },
        &token);
  }

  // The body's "steps" within the server's bound (0 when absent: the model's default).
  int steps(const json& body) const {
    const int n = field<int>(body, "steps", 0);
    if (n < 0 || n > opt.max_steps)
      throw Error(str_cat("steps must be in [1, ", opt.max_steps, "], got ", n));
    return n;
  }

  // ---- A1111 ----

  // A1111's txt2img / img2img body as a GenerateRequest for `m`; fields stipple cannot honour
  // go to `notes`.
  GenerateRequest a1111_request(const json& body, const Model& m, bool img2img,
                                std::vector<std::string>& notes) {
    GenerateRequest r;
    const ModelDescription& d = m.engine->description();
    const bool class_model = d.tasks[0] == Task::kClassToImage;
    const std::string prompt = field<std::string>(body, "prompt", "");
    if (class_model) {
      if (prompt.empty()) throw Error(str_cat("prompt: ", m.name, " is a class-to-image model; "
                                              "give the class as the prompt (e.g. \"",
                                              d.class_names.empty() ? "0" : d.class_names[0],
                                              "\")"));
      r.class_labels = {prompt};
    } else {
      r.prompt = prompt;
      r.negative_prompt = field<std::string>(body, "negative_prompt", "");
    }
    r.seed = field<int64_t>(body, "seed", -1);
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
        notes.push_back(str_cat("width, height: ", m.name, " draws only ", d.default_width, "x",
                                d.default_height));
    } else {
      r.width = width;
      r.height = height;
    }
    const int batch = field<int>(body, "batch_size", 1), iters = field<int>(body, "n_iter", 1);
    if (batch < 1 || iters < 1 || batch * static_cast<int64_t>(iters) > opt.max_images)
      throw Error(str_cat("batch_size x n_iter must be in [1, ", opt.max_images, "], got ", batch,
                          " x ", iters));
    r.batch_size = batch * iters;
    if (body.contains("override_settings") && body["override_settings"].is_object()) {
      const json& o = body["override_settings"];
      if (o.contains("CLIP_stop_at_last_layers"))
        r.clip_skip = field<int>(o, "CLIP_stop_at_last_layers", 1);
    }
    if (img2img) {
      const auto it = body.find("init_images");
      if (it == body.end() || !it->is_array() || it->empty() || !(*it)[0].is_string())
        throw Error("init_images must be a list holding one base64 PNG");
      if (it->size() > 1) notes.push_back("init_images: only the first image was used");
      r.init_image = decode_image((*it)[0].get<std::string>(), "init_images[0]");
      if (body.contains("denoising_strength") && !body["denoising_strength"].is_null())
        r.strength = field<double>(body, "denoising_strength", 0.75);
      const std::string mask = field<std::string>(body, "mask", "");
      if (!mask.empty()) {
        Image mk = decode_image(mask, "mask");
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
    if (field<bool>(body, "save_images", false))
      notes.push_back("save_images: this server keeps no image files");
    return r;
  }

  json a1111_generate(const httplib::Request& req, bool img2img) {
    const json body = parse_body(req);
    std::string name;
    if (body.contains("override_settings") && body["override_settings"].is_object())
      name = field<std::string>(body["override_settings"], "sd_model_checkpoint", "");
    const Model& m = model(name);
    std::vector<std::string> notes;
    const GenerateRequest r = a1111_request(body, m, img2img, notes);
    GenerateResult out;
    bool was_interrupted = false;
    try {
      out = generate(m, r);
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::kCancelled) throw;
      was_interrupted = true;  // A1111 answers an interrupted job normally, with what it has
    }
    notes.insert(notes.end(), out.notes.begin(), out.notes.end());
    json images = json::array(), prompts = json::array(), seeds = json::array(),
         infotexts = json::array(), negatives = json::array();
    const bool send = field<bool>(body, "send_images", true);
    for (const GeneratedImage& g : out.images) {
      if (send) images.push_back(base64_encode(encode_png(g.image, g.parameters)));
      prompts.push_back(g.prompt);
      negatives.push_back(r.negative_prompt);
      seeds.push_back(g.seed);
      infotexts.push_back(g.parameters);
    }
    const json info = {
        {"prompt", out.images.empty() ? "" : out.images[0].prompt},
        {"all_prompts", prompts},
        {"negative_prompt", r.negative_prompt},
        {"all_negative_prompts", negatives},
        {"seed", out.seed},
        {"all_seeds", seeds},
        {"subseed", out.seed},
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
        {"sd_model_name", m.name},
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
        {"job_timestamp", timestamp()},
        {"clip_skip", r.clip_skip},
        {"is_using_inpainting_conditioning", false},
        {"version", std::string("stipple ") + version()},
        {"interrupted", was_interrupted},
        {"not_honoured", notes},
    };
    return {{"images", images}, {"parameters", body}, {"info", info.dump()}};
  }

  json progress() {
    std::lock_guard<std::mutex> lock(mu);
    const double fraction = running && total > 0 ? static_cast<double>(step) / total : 0.0;
    const double eta = running && step > 0 ? elapsed / step * (total - step) : 0.0;
    return {{"progress", fraction},
            {"eta_relative", eta},
            {"state",
             {{"skipped", false},
              {"interrupted", interrupted},
              {"job", running ? "txt2img" : ""},
              {"job_count", running ? 1 + waiting : waiting},
              {"job_timestamp", job_timestamp},
              {"job_no", running ? 0 : job_count},
              {"sampling_step", running ? step : 0},
              {"sampling_steps", running ? total : 0}}},
            {"current_image", nullptr},
            {"textinfo", running ? str_cat("step ", step, " of ", total) : "idle"}};
  }

  void routes() {
    auto reply = [](httplib::Response& res, const json& j, int status = 200) {
      res.status = status;
      res.set_content(j.dump(), "application/json");
    };
    auto guard = [this, reply](bool openai, auto fn) {
      return [this, reply, openai, fn](const httplib::Request& req, httplib::Response& res) {
        try {
          reply(res, fn(req));
        } catch (const Error& e) {
          const int status = status_of(e);
          if (status == 429) res.set_header("Retry-After", "5");
          if (openai)
            reply(res,
                  {{"error",
                    {{"message", e.what()},
                     {"type", status == 404 ? "not_found_error" : "invalid_request_error"},
                     {"param", nullptr},
                     {"code", nullptr}}}},
                  status);
          else
            reply(res, {{"error", status == 404 ? "NotFound" : "BadRequest"},
                        {"detail", e.what()}}, status);
        }
      };
    };
    const std::string a = "/sdapi/v1/";
    http.Post(a + "txt2img", guard(false, [this](const auto& req) { return a1111_generate(req, false); }));
    http.Post(a + "img2img", guard(false, [this](const auto& req) { return a1111_generate(req, true); }));
    http.Get(a + "progress", guard(false, [this](const auto&) { return progress(); }));
    http.Post(a + "interrupt", guard(false, [this](const auto&) {
      std::lock_guard<std::mutex> lock(mu);
      if (running) {
        interrupted = true;
        cancel.cancel();
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
    http.Get(a + "sd-models", guard(false, [this](const auto&) {
      json list = json::array();
      for (const Model& m : models) {
        const ModelDescription& d = m.engine->description();
        json tasks = json::array();
        for (Task t : d.tasks) tasks.push_back(to_string(t));
        // A1111's fields, then stipple's description (what the web page builds its form from).
        list.push_back({{"title", m.name}, {"model_name", m.name}, {"hash", nullptr},
                        {"sha256", nullptr}, {"filename", m.path}, {"config", nullptr},
                        {"stipple",
                         {{"family", d.family},
                          {"tasks", tasks},
                          {"default_steps", d.default_steps},
                          {"default_cfg_scale", d.default_cfg_scale},
                          {"default_sampler", d.default_sampler},
                          {"default_width", d.default_width},
                          {"default_height", d.default_height},
                          {"size_multiple", d.size_multiple},
                          {"class_names", d.class_names}}}});
      }
      return list;
    }));
    http.Get(a + "options", guard(false, [this](const auto&) {
      return json{{"sd_model_checkpoint", current_model()}};
    }));
    http.Post(a + "options", guard(false, [this](const auto& req) {
      const json body = parse_body(req);
      const std::string name = field<std::string>(body, "sd_model_checkpoint", "");
      if (!name.empty()) {
        const Model& m = model(name);
        std::lock_guard<std::mutex> lock(mu);
        current = m.name;
      }
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
    http.Get(a + "memory", guard(false, [](const auto&) {
      const SystemMemory m = system_memory();
      const double total = static_cast<double>(m.total), free = static_cast<double>(m.available);
      return json{{"ram", {{"free", free}, {"used", total - free}, {"total", total},
                           {"process_resident", static_cast<double>(m.process_resident)}}},
                  {"cuda", {{"error", "stipple serves from the CPU"}}}};
    }));

    // ---- OpenAI Images ----
    http.Post("/v1/images/generations", guard(true, [this](const auto& req) {
      const json body = parse_body(req);
      const Model& m = model(field<std::string>(body, "model", ""));
      const ModelDescription& d = m.engine->description();
      const std::string prompt = field<std::string>(body, "prompt", "");
      if (prompt.empty()) throw Error("prompt is required");
      GenerateRequest r;
      if (d.tasks[0] == Task::kClassToImage)
        r.class_labels = {prompt};
      else
        r.prompt = prompt;
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
          throw Error(str_cat("size: ", m.name, " draws only ", d.default_width, "x",
                              d.default_height));
        }
      }
      const std::string format = field<std::string>(body, "response_format", "b64_json");
      if (format != "b64_json")
        throw Error(str_cat("response_format \"", format, "\" is not available; use b64_json"));
      const std::string output = field<std::string>(body, "output_format", "png");
      if (output != "png")
        throw Error(str_cat("output_format \"", output, "\" is not available; use png"));
      r.seed = field<int64_t>(body, "seed", -1);
      r.steps = steps(body);
      if (body.contains("guidance_scale") && !body["guidance_scale"].is_null())
        r.cfg_scale = field<double>(body, "guidance_scale", 0.0);
      r.sampler = field<std::string>(body, "sampler", "");
      const GenerateResult out = generate(m, r);
      json data = json::array();
      for (const GeneratedImage& g : out.images)
        data.push_back({{"b64_json", base64_encode(encode_png(g.image, g.parameters))},
                        {"seed", g.seed}});
      return json{{"created", static_cast<int64_t>(std::time(nullptr))},
                  {"data", data},
                  {"output_format", "png"},
                  {"size", str_cat(out.width, "x", out.height)}};
    }));
    http.Get("/v1/models", guard(true, [this](const auto&) {
      json data = json::array();
      for (const Model& m : models)
        data.push_back({{"id", m.name}, {"object", "model"}, {"created", 0},
                        {"owned_by", "stipple"}});
      return json{{"object", "list"}, {"data", data}};
    }));

    // ---- the web page ----
    http.Get("/", [](const auto&, auto& res) { res.set_content(web_page(), "text/html"); });

    // ---- operations ----
    http.Get("/healthz", [reply](const auto&, auto& res) { reply(res, {{"status", "ok"}}); });
    http.Get("/readyz", [this, reply](const auto&, auto& res) {
      reply(res, {{"status", "ready"}, {"models", models.size()}});
    });
  }

  bool authorized(const httplib::Request& req) const {
    if (opt.api_key.empty() && opt.api_auth.empty()) return true;
    if (req.path == "/healthz" || req.path == "/readyz" || req.path == "/") return true;
    const std::string auth = req.get_header_value("Authorization");
    if (!opt.api_key.empty() && auth == "Bearer " + opt.api_key) return true;
    if (!opt.api_auth.empty()) {
      const std::string user_pass(opt.api_auth);
      const std::vector<uint8_t> raw(user_pass.begin(), user_pass.end());
      if (auth == "Basic " + base64_encode(raw)) return true;
    }
    return false;
  }
};

Server::Server(const ServerOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.opt = options;
  if (options.models.empty()) throw Error("give at least one model to serve");
  for (const std::string& path : options.models) {
    Impl::Model m;
    m.path = path;
    m.engine = std::make_unique<Engine>(Engine::open(path));
    m.name = m.engine->description().name;
    for (const Impl::Model& other : s.models)
      if (other.name == m.name)
        throw Error(str_cat("two models are named \"", m.name, "\" (", other.path, " and ", path,
                            "); give folders with different names"));
    s.models.push_back(std::move(m));
  }
  s.current = s.models[0].name;
  s.http.new_task_queue = [] { return new httplib::ThreadPool(32); };
  s.http.set_payload_max_length(options.max_body_bytes);
  s.http.set_read_timeout(30, 0);
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
  if (options.log_requests)
    s.http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      std::fprintf(stderr, "%s %s %d %zu bytes\n", req.method.c_str(), req.path.c_str(),
                   res.status, res.body.size());
    });
  s.routes();
  if (options.port == 0) {
    s.bound_port = s.http.bind_to_any_port(options.host);
  } else {
    s.bound_port = s.http.bind_to_port(options.host, options.port) ? options.port : -1;
  }
  if (s.bound_port <= 0)
    throw Error(str_cat("cannot listen on ", options.host, ":", options.port,
                        " (in use, or not an address of this machine)"),
                ErrorKind::kIo);
}

Server::~Server() { stop(); }

int Server::port() const { return impl_->bound_port; }

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->cancel.cancel();
  }
  impl_->http.stop();
}

}  // namespace stipple::server

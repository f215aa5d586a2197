// Server::Impl's A1111 routes: txt2img / img2img bodies as engine requests, their replies with
// A1111's info string, progress, sd-models, and the extras tab's upscaling.
#include "server_impl.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace stipple::server {

// A1111's txt2img / img2img body as a GenerateRequest for a model described by `d`; fields
// stipple cannot honour go to `notes`.
GenerateRequest Server::Impl::a1111_request(const json& body, const ModelDescription& d, bool img2img,
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
  // stipple's own field: [low, high] noise levels to guide at ("inf" or null: no upper end)
  if (body.contains("guidance_interval") && !body["guidance_interval"].is_null()) {
    const json& iv = body["guidance_interval"];
    auto bound = [&](const json& v, bool upper) {
      if (upper && (v.is_null() || (v.is_string() && v.get<std::string>() == "inf")))
        return std::numeric_limits<double>::infinity();
      if (!v.is_number())
        throw Error(str_cat("guidance_interval: expected [low, high] numbers (high may be "
                            "\"inf\"), got ", iv.dump()));
      return v.get<double>();
    };
    if (!iv.is_array() || iv.size() != 2)
      throw Error(str_cat("guidance_interval: expected [low, high], got ", iv.dump()));
    r.guidance_interval = GuidanceInterval{bound(iv[0], false), bound(iv[1], true)};
  }
  // stipple's own field: false guides a model that has a guide model with the null class instead
  r.autoguidance = field<bool>(body, "autoguidance", true);
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
int Server::Impl::steps(const json& body) const {
  const int n = field<int>(body, "steps", 0);
  if (n < 0 || n > opt.max_steps)
    throw Error(str_cat("steps must be in [1, ", opt.max_steps, "], got ", n));
  return n;
}

// A job from an A1111-style body (txt2img, img2img and /v1/jobs).
std::shared_ptr<Job> Server::Impl::a1111_job(const json& body, const std::string& kind) {
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

json Server::Impl::a1111_generate(const httplib::Request& req, bool img2img) {
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

json Server::Impl::progress(const httplib::Request& req) {
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

json Server::Impl::sd_models() {
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
                {"default_guidance_interval",
                 {d.default_guidance_interval.low,
                  std::isfinite(d.default_guidance_interval.high)
                      ? json(d.default_guidance_interval.high)
                      : json("inf")}},
                {"default_sampler", d.default_sampler},
                {"guide_model", d.guide_model},
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

bool Server::Impl::is_upscaler(const Slot& m) {
  return m.family == "super-resolution" || m.family == "SD x4 upscaler";
}

// A1111's /sdapi/v1/upscalers: "None" and every upscaler model served (its scale once loaded).
json Server::Impl::upscalers() {
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
std::vector<uint8_t> Server::Impl::extras_upscale(const json& body, const std::string& b64,
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
std::string Server::Impl::extras_info(const std::vector<std::string>& notes) {
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

json Server::Impl::extras_single(const httplib::Request& req) {
  const json body = parse_body(req);
  const std::string image = field<std::string>(body, "image", "");
  if (image.empty()) throw Error("image is required (a base64 PNG)");
  std::vector<std::string> notes;
  const std::vector<uint8_t> png = extras_upscale(body, image, "image", notes);
  return {{"image", base64_encode(png)}, {"html_info", extras_info(notes)}};
}

// A1111's extra-batch-images: imageList [{data, name}] (at most --max-images).
json Server::Impl::extras_batch(const httplib::Request& req) {
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

}  // namespace stipple::server

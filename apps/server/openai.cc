// Server::Impl's OpenAI Images API: generations and edits (multipart), b64_json or url replies.
#include "server_impl.h"

#include <algorithm>
#include <filesystem>

namespace stipple::server {

// The fields generations and edits share, into `r`; `form(name)` reads one field.
void Server::Impl::openai_common(const std::function<std::optional<json>(const char*)>& form,
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
bool Server::Impl::wants_url(const std::string& format) const {
  if (format == "b64_json") return false;
  if (format != "url")
    throw Error(str_cat("response_format must be \"b64_json\" or \"url\", got \"", format, "\""));
  if (opt.output_dir.empty())
    throw Error("response_format \"url\" needs a server started with --output-dir; use "
                "b64_json");
  return true;
}

json Server::Impl::openai_response(const httplib::Request& req, const std::shared_ptr<Job>& job, bool url) {
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

json Server::Impl::openai_generations(const httplib::Request& req) {
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
json Server::Impl::openai_edits(const httplib::Request& req) {
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

}  // namespace stipple::server

#include "http_util.h"

#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>
#include <vector>

namespace stipple::server {

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

// ---------------- requests ----------------

int status_of(const Error& e) {
  if (const auto* h = dynamic_cast<const HttpError*>(&e)) return h->status;
  switch (e.kind()) {
    case ErrorKind::kNotFound: return 404;
    case ErrorKind::kResourceExhausted: return 413;
    case ErrorKind::kIo: return 500;
    default: return 400;
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

// One source of randomness for job ids and seeds (-1), shared by the handler threads.
uint64_t random_u64() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng();
}

// A random seed as A1111 draws one for seed -1: in [0, 2^32).
int64_t random_seed() { return static_cast<int64_t>(random_u64() & 0xffffffffu); }

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

}  // namespace stipple::server

// The HTTP plumbing the server's routes share: typed fields of JSON bodies, errors with their
// HTTP status, images in and out of requests, ids and seeds, and the labels /metrics counts by.
#pragma once

#include <httplib.h>

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stipple/stipple.h>
#include <string>
#include <type_traits>

namespace stipple::server {

using nlohmann::json;

// "a", 1, "b" -> "a1b" (the server uses only the public API, which has no such helper).
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// A request the server refuses with an HTTP status other than 400.
struct HttpError : Error {
  HttpError(int status, const std::string& what) : Error(what), status(status) {}
  int status;
};

// The HTTP status of an error: HttpError's own, else by kind (not found 404, too large 413,
// I/O 500, the rest 400).
int status_of(const Error& e);

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

// The body as a JSON object; an empty or malformed body, or another JSON type, is an error.
json parse_body(const httplib::Request& req);
// Now as A1111's job_timestamp: YYYYMMDDhhmmss (UTC).
std::string timestamp();
// A base64 PNG of a request field; errors name the field (`what`).
Image decode_image(const std::string& b64, const std::string& what);
// An RGBA image over white as RGB (init images may come with transparency); others unchanged.
Image without_alpha(const Image& img);
// OpenAI's edit mask: fully transparent pixels are repainted -> a grey mask, white = repaint.
Image mask_from_alpha(const Image& img);

// One source of randomness for job ids and seeds (-1), shared by the handler threads.
uint64_t random_u64();
// A random seed as A1111 draws one for seed -1: in [0, 2^32).
int64_t random_seed();
// A job id: 16 hex digits.
std::string random_id();
// The route a request counts under in /metrics: its pattern, so ids and file names do not grow
// the label set; anything unrouted is "other".
std::string route_label(const std::string& method, const std::string& path);
// A Prometheus label value.
std::string label_value(const std::string& s);

}  // namespace stipple::server

#include "io/json.h"

#include "io/read_file.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace stipple::io {

using nlohmann::json;

std::string make_strict_json(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool replaced = false;
    for (const char* word : {"-Infinity", "Infinity", "NaN"}) {
      const size_t len = std::char_traits<char>::length(word);
      if (text.compare(i, len, word) == 0) {
        out += str_cat('"', word, '"');
        i += len - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

json parse_json(const std::string& text, const std::string& where) {
  try {
    return json::parse(make_strict_json(text));
  } catch (const json::exception& e) {
    // parse_error, and out_of_range for a number beyond a double ("1e999").
    throw Error(str_cat(where, ": not valid JSON (", e.what(), ")"));
  }
}

json read_json_file(const std::string& path) {
  return parse_json(read_file_bounded(path, "JSON file"), path);
}

JsonConfig::JsonConfig(json j, std::string where) : j_(std::move(j)), where_(std::move(where)) {
  STIPPLE_CHECK(j_.is_object(), where_, ": expected a JSON object");
}

JsonConfig JsonConfig::from_file(const std::string& path) {
  return JsonConfig(read_json_file(path), path);
}

bool JsonConfig::has(const std::string& key) const {
  return j_.contains(key) && !j_[key].is_null();
}

const json& JsonConfig::at(const std::string& key) const {
  STIPPLE_CHECK(has(key), where_, ": missing \"", key, "\"");
  return j_[key];
}

namespace {
double as_number(const json& v, const std::string& where, const std::string& key) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  }
  throw Error(str_cat(where, ": \"", key, "\" must be a number, got ", v.dump()));
}
int64_t as_integer(const json& v, const std::string& where, const std::string& key) {
  const double d = as_number(v, where, key);
  STIPPLE_CHECK(std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15, where, ": \"", key,
                "\" must be an integer, got ", v.dump());
  return static_cast<int64_t>(d);
}
}  // namespace

double JsonConfig::number(const std::string& key) const { return as_number(at(key), where_, key); }
double JsonConfig::number(const std::string& key, double fallback) const {
  return has(key) ? number(key) : fallback;
}
int64_t JsonConfig::integer(const std::string& key) const {
  return as_integer(at(key), where_, key);
}
int64_t JsonConfig::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}
bool JsonConfig::boolean(const std::string& key) const {
  const json& v = at(key);
  STIPPLE_CHECK(v.is_boolean(), where_, ": \"", key, "\" must be true or false, got ", v.dump());
  return v.get<bool>();
}
bool JsonConfig::boolean(const std::string& key, bool fallback) const {
  return has(key) ? boolean(key) : fallback;
}
std::string JsonConfig::string(const std::string& key) const {
  const json& v = at(key);
  STIPPLE_CHECK(v.is_string(), where_, ": \"", key, "\" must be a string, got ", v.dump());
  return v.get<std::string>();
}
std::string JsonConfig::string(const std::string& key, const std::string& fallback) const {
  return has(key) ? string(key) : fallback;
}
std::vector<int64_t> JsonConfig::int_list(const std::string& key) const {
  const json& v = at(key);
  STIPPLE_CHECK(v.is_array(), where_, ": \"", key, "\" must be a list, got ", v.dump());
  std::vector<int64_t> out;
  for (const json& e : v) out.push_back(as_integer(e, where_, key));
  return out;
}
std::vector<int64_t> JsonConfig::int_list(const std::string& key,
                                          const std::vector<int64_t>& fallback) const {
  return has(key) ? int_list(key) : fallback;
}
std::vector<std::string> JsonConfig::string_list(const std::string& key) const {
  const json& v = at(key);
  STIPPLE_CHECK(v.is_array(), where_, ": \"", key, "\" must be a list, got ", v.dump());
  std::vector<std::string> out;
  for (const json& e : v) {
    STIPPLE_CHECK(e.is_string(), where_, ": \"", key, "\" must hold strings, got ", e.dump());
    out.push_back(e.get<std::string>());
  }
  return out;
}
std::vector<std::string> JsonConfig::string_list(const std::string& key,
                                                 const std::vector<std::string>& fallback) const {
  return has(key) ? string_list(key) : fallback;
}
std::vector<int64_t> JsonConfig::int_or_list(const std::string& key, size_t n) const {
  const json& v = at(key);
  if (!v.is_array()) return std::vector<int64_t>(n, as_integer(v, where_, key));
  std::vector<int64_t> out = int_list(key);
  STIPPLE_CHECK(out.size() == n, where_, ": \"", key, "\" has ", out.size(), " entries, expected ",
                n);
  return out;
}

}  // namespace stipple::io

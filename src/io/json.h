// Reading diffusers/transformers JSON configs: a lenient parser (Python's json writes Infinity,
// -Infinity and NaN, which strict JSON lacks) and typed getters whose errors name the file and
// the key, so a bad config.json gets a message a user can act on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace stipple::io {

// Rewrites Infinity, -Infinity and NaN outside strings as the strings "Infinity", ... so that a
// standard parser accepts the text; number() reads them back as numbers.
std::string make_strict_json(const std::string& text);
// Parses text (leniently, as above); `where` names the source in errors.
nlohmann::json parse_json(const std::string& text, const std::string& where);
// Reads and parses a file; errors name the file.
nlohmann::json read_json_file(const std::string& path);

// Typed access to one JSON object. Missing or null keys take the default where one is given.
class JsonConfig {
 public:
  JsonConfig(nlohmann::json j, std::string where);
  static JsonConfig from_file(const std::string& path);

  bool has(const std::string& key) const;  // present and not null
  double number(const std::string& key) const;
  double number(const std::string& key, double fallback) const;
  int64_t integer(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  bool boolean(const std::string& key) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> int_list(const std::string& key) const;
  std::vector<int64_t> int_list(const std::string& key, const std::vector<int64_t>& fallback) const;
  std::vector<std::string> string_list(const std::string& key) const;
  std::vector<std::string> string_list(const std::string& key,
                                       const std::vector<std::string>& fallback) const;
  // A number or a list of numbers (e.g. attention_head_dim): a single number is repeated n times;
  // a list must have n entries.
  std::vector<int64_t> int_or_list(const std::string& key, size_t n) const;

  const nlohmann::json& raw() const { return j_; }
  const std::string& where() const { return where_; }

 private:
  const nlohmann::json& at(const std::string& key) const;
  nlohmann::json j_;
  std::string where_;
};

}  // namespace stipple::io

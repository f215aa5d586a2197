// Fuzzes the JSON config readers. The first byte picks the reader, the rest is the JSON text:
//   0 UNet2DConditionConfig  1 AutoencoderKLConfig  2 CLIPTextConfig  3 CLIPVisionConfig
//   4 DiTConfig  5 PixArtConfig  6 SchedulerConfig (inline JSON only, never a path)
//   7 io::parse_json + every JsonConfig getter on every key
// (byte value modulo 8). Bounded by the input size (-max_len).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "io/json.h"
#include "models/clip_text.h"
#include "models/clip_vision.h"
#include "models/dit.h"
#include "models/pixart.h"
#include "models/unet2d_condition.h"
#include "models/vae.h"
#include "schedulers/scheduler.h"

namespace {

using stipple::io::JsonConfig;

constexpr const char* kWhere = "fuzz/config.json";

JsonConfig config(const std::string& text) {
  return JsonConfig(stipple::io::parse_json(text, kWhere), kWhere);
}

// Every typed getter on every key: each returns a value or throws stipple::Error.
void every_getter(const JsonConfig& c) {
  for (const auto& item : c.raw().items()) {
    const std::string key = item.key();
    stipple::fuzz::run_catching_errors([&] { c.number(key); });
    stipple::fuzz::run_catching_errors([&] { c.integer(key); });
    stipple::fuzz::run_catching_errors([&] { c.boolean(key); });
    stipple::fuzz::run_catching_errors([&] { c.string(key); });
    stipple::fuzz::run_catching_errors([&] { c.int_list(key); });
    stipple::fuzz::run_catching_errors([&] { c.string_list(key); });
    stipple::fuzz::run_catching_errors([&] { c.int_or_list(key, 4); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int reader = data[0] % 8;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  stipple::fuzz::run_catching_errors([&] {
    namespace m = stipple::models;
    switch (reader) {
      case 0:
        m::UNet2DConditionConfig::from_json(config(text));
        break;
      case 1:
        m::AutoencoderKLConfig::from_json(config(text));
        break;
      case 2:
        m::CLIPTextConfig::from_json(config(text));
        break;
      case 3:
        m::CLIPVisionConfig::from_json(config(text));
        break;
      case 4:
        m::DiTConfig::from_json(config(text));
        break;
      case 5:
        m::PixArtConfig::from_json(config(text));
        break;
      case 6: {
        // from_json reads a file unless the text starts with '{': keep to inline JSON.
        const size_t first = text.find_first_not_of(" \t\r\n");
        if (first == std::string::npos || text[first] != '{') break;
        stipple::schedulers::SchedulerConfig::from_json(text);
        break;
      }
      default:
        every_getter(config(text));
        break;
    }
  });
  return 0;
}

// Fuzzes the PNG reader (io::decode_png): image data and text chunks. A decoded image must keep
// the Image contract (1, 3 or 4 channels; width x height x channels bytes). Inputs whose header
// claims more than 16 megapixels are skipped: decode_png accepts up to 64 (a second or more per
// input here); its refusal of larger ones is still fuzzed.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "fuzz_util.h"
#include "io/png.h"

namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The signature, then IHDR's length and type, then width and height (bytes 16..23).
  if (size >= 24) {
    const uint64_t pixels = uint64_t{be32(data + 16)} * be32(data + 20);
    if (pixels > (uint64_t{16} << 20) && pixels <= stipple::io::kMaxPngPixels) return 0;
  }
  stipple::fuzz::run_catching_errors([&] {
    std::map<std::string, std::string> text;
    const stipple::io::Image img = stipple::io::decode_png(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz.png", &text);
    STIPPLE_FUZZ_EXPECT(img.width > 0 && img.height > 0);
    STIPPLE_FUZZ_EXPECT(img.channels == 1 || img.channels == 3 || img.channels == 4);
    STIPPLE_FUZZ_EXPECT(img.pixels.size() ==
                        static_cast<size_t>(img.width) * img.height * img.channels);
  });
  return 0;
}

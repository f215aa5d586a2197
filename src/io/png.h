// PNG in and out, with text chunks. Generated images carry their generation parameters in a
// tEXt chunk named "parameters" (A1111's convention), which `stipple info FILE.png` prints back.
// Writes are atomic (temporary file, then rename).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "stipple/stipple.h"

namespace stipple::io {

// 8-bit, row-major, interleaved; channels 1 grey, 3 RGB, 4 RGBA (the public stipple::Image).
using Image = ::stipple::Image;

// What a PNG read accepts: a bomb or a forged header is refused before anything is allocated.
constexpr uint32_t kMaxPngSide = 65536;
constexpr uint64_t kMaxPngPixels = uint64_t{64} * 1000 * 1000;  // 64 megapixels
constexpr uint64_t kMaxPngChunkBytes = uint64_t{4} << 20;       // a text or ICC chunk, inflated
// Ancillary chunks kept; with kMaxPngChunkBytes this bounds all text and profiles to 256 MiB.
constexpr uint32_t kMaxPngAncillaryChunks = 64;
constexpr size_t kMaxPngFileBytes = size_t{512} << 20;

// The PNG file's bytes; `text` becomes tEXt chunks.
std::string encode_png(const Image& image, const std::map<std::string, std::string>& text = {});
// Reads PNG bytes (`name` says where they came from in errors); see read_png.
Image decode_png(const std::string& bytes, const std::string& name,
                 std::map<std::string, std::string>* text = nullptr);
// Writes `image` to `path`; `text` becomes tEXt chunks (key -> value, Latin-1 keys).
void write_png(const std::string& path, const Image& image,
               const std::map<std::string, std::string>& text = {});
// Reads a PNG (8- or 16-bit; grey, grey+alpha, RGB, RGBA, palette) as 8-bit with its own channel
// count (grey+alpha becomes RGBA). Throws stipple::Error naming the file when it is unreadable.
Image read_png(const std::string& path, std::map<std::string, std::string>* text = nullptr);
std::map<std::string, std::string> read_png_text(const std::string& path);

// [C, H, W] or [1, C, H, W] floats in [lo, hi] -> 8-bit image (clamped, rounded).
Image tensor_to_image(const Tensor& chw, float lo = -1.0f, float hi = 1.0f);
// 8-bit image -> [1, C, H, W] f32 in [lo, hi].
Tensor image_to_tensor(const Image& image, float lo = -1.0f, float hi = 1.0f);
// Tiles [N, C, H, W] images into a grid with `cols` columns and `gap` pixels of black between.
Tensor make_grid(const Tensor& nchw, int cols, int gap = 2);

}  // namespace stipple::io

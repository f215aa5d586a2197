#include "io/png.h"

#include "io/read_file.h"

#include <png.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "io/atomic_file.h"

namespace stipple::io {
namespace {

void on_png_error(png_structp png, png_const_charp msg) {
  auto* where = static_cast<std::string*>(png_get_error_ptr(png));
  if (where) *where = msg;
  std::longjmp(png_jmpbuf(png), 1);
}
void on_png_warning(png_structp, png_const_charp) {}

void append_bytes(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), n);
}
void flush_nothing(png_structp) {}

}  // namespace

std::string encode_png(const Image& image, const std::map<std::string, std::string>& text) {
  STIPPLE_CHECK(image.width > 0 && image.height > 0, "PNG: cannot encode an empty image (",
                image.width, "x", image.height, ")");
  STIPPLE_CHECK(image.channels == 1 || image.channels == 3 || image.channels == 4, "PNG: ",
                image.channels, " channels is not grey, RGB or RGBA");
  STIPPLE_CHECK(image.pixels.size() ==
                    static_cast<size_t>(image.width) * image.height * image.channels,
                "PNG: the pixel buffer holds ", image.pixels.size(), " bytes, not ", image.width,
                "x", image.height, "x", image.channels);
  // libpng reports errors by longjmp. Every object that changes after setjmp lives in `st`, on
  // the heap: a local object modified between setjmp and longjmp has an indeterminate value
  // afterwards (C11 7.13.2.1), and a std::string or vector in that state would be destroyed
  // from stale registers.
  struct WriteState {
    std::string encoded, err;
    std::vector<png_text> chunks;
    std::vector<std::string> keys, values;
    png_structp png = nullptr;
    png_infop info = nullptr;
    ~WriteState() {
      if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
    }
  };
  const auto st = std::make_unique<WriteState>();
  st->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &st->err, on_png_error,
                                    on_png_warning);
  STIPPLE_CHECK(st->png != nullptr, "PNG: libpng could not start");
  st->info = png_create_info_struct(st->png);
  png_structp png = st->png;  // set once, before setjmp
  png_infop info = st->info;
  if (setjmp(png_jmpbuf(png))) throw Error(str_cat("PNG: cannot encode: ", st->err));
  png_set_write_fn(png, &st->encoded, append_bytes, flush_nothing);
  const int color = image.channels == 1   ? PNG_COLOR_TYPE_GRAY
                    : image.channels == 3 ? PNG_COLOR_TYPE_RGB
                                          : PNG_COLOR_TYPE_RGBA;
  png_set_IHDR(png, info, image.width, image.height, 8, color, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (const auto& [k, v] : text) {
    st->keys.push_back(k);
    st->values.push_back(v);
  }
  for (size_t i = 0; i < st->keys.size(); ++i) {
    png_text t{};
    t.compression = PNG_TEXT_COMPRESSION_NONE;
    t.key = st->keys[i].data();
    t.text = st->values[i].data();
    t.text_length = st->values[i].size();
    st->chunks.push_back(t);
  }
  if (!st->chunks.empty())
    png_set_text(png, info, st->chunks.data(), static_cast<int>(st->chunks.size()));
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(image.width) * image.channels;
  for (int y = 0; y < image.height; ++y)
    png_write_row(png, const_cast<png_bytep>(image.pixels.data() + y * stride));
  png_write_end(png, info);
  return std::move(st->encoded);
}

void write_png(const std::string& path, const Image& image,
               const std::map<std::string, std::string>& text) {
  try {
    write_file_atomic(path, encode_png(image, text));
  } catch (const Error& e) {
    if (std::string(e.what()).find(path) != std::string::npos) throw;
    throw Error(str_cat("cannot write ", path, ": ", e.what()), e.kind());
  }
}

namespace {

struct ByteReader {
  const std::string* bytes;
  size_t pos;
};

void read_bytes(png_structp png, png_bytep data, png_size_t n) {
  auto* r = static_cast<ByteReader*>(png_get_io_ptr(png));
  if (n > r->bytes->size() - r->pos) png_error(png, "the file ends early (truncated PNG)");
  std::memcpy(data, r->bytes->data() + r->pos, n);
  r->pos += n;
}

// Checks that every chunk up to IEND fits in the bytes after its header. libpng allocates a text
// chunk's declared length (up to 2 GiB) before reading it, so one forged length in a 200-byte
// file would cost gigabytes; with this check no chunk buffer is larger than the file. A header
// cut short is left to libpng, which reports the truncation.
void check_chunk_lengths(const std::string& bytes, const std::string& name) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t pos = 8;  // after the signature
  while (bytes.size() - pos >= 8) {
    const uint64_t length = (uint64_t{p[pos]} << 24) | (uint64_t{p[pos + 1]} << 16) |
                            (uint64_t{p[pos + 2]} << 8) | p[pos + 3];
    const std::string type = bytes.substr(pos + 4, 4);
    const uint64_t left = bytes.size() - pos - 8;  // the chunk's data and CRC must fit here
    if (length + 4 > left) {
      const bool letters = std::all_of(type.begin(), type.end(), [](char c) {
        return std::isalpha(static_cast<unsigned char>(c)) != 0;
      });
      throw Error(str_cat("cannot read PNG ", name, ": the ", letters ? type : "unnamed",
                          " chunk at byte ", pos, " declares ", length, " data bytes but only ",
                          left >= 4 ? left - 4 : 0, " follow (truncated or corrupt PNG)"));
    }
    pos += 12 + length;
    if (type == "IEND") break;
  }
}

}  // namespace

namespace {

// The state of one decode, on the heap: everything that changes after setjmp lives here, since a
// local object modified between setjmp and longjmp has an indeterminate value afterwards
// (C11 7.13.2.1), and a std::string or vector in that state would be destroyed from stale
// registers.
struct ReadState {
  std::string err;
  Image img;
  std::vector<png_bytep> rows;
  ByteReader reader;
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~ReadState() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

// A libpng error of ours: the message goes to st.err, then libpng unwinds (longjmp). Out of line,
// so that the function holding setjmp builds no strings.
[[noreturn, gnu::noinline]] void refuse(ReadState& st, const std::string& message) {
  st.err = message;
  png_error(st.png, st.err.c_str());
  std::abort();  // png_error does not return
}
[[noreturn, gnu::noinline]] void refuse_size(ReadState& st, uint64_t w, uint64_t h) {
  refuse(st, str_cat("the image is ", w, "x", h, " = ", (w * h + 500000) / 1000000,
                     " megapixels; at most ", kMaxPngPixels / 1000000, " are read"));
}
[[noreturn, gnu::noinline]] void refuse_channels(ReadState& st, int channels, int color) {
  refuse(st, str_cat("the image decodes to ", channels, " channels (colour type ", color,
                     "); only grey, RGB and RGBA are read"));
}

// The libpng calls of decode_png, up to png_read_end; false when libpng reported an error (its
// message in st.err). Only plain values live in this frame.
[[gnu::noinline]] bool read_with_libpng(ReadState& st) {
  png_structp png = st.png;
  png_infop info = st.info;
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &st.reader, read_bytes);
  png_set_sig_bytes(png, 8);
  // Bounds before anything is allocated: the header's size, each chunk (text, ICC profiles:
  // decompression bombs stop here) and the number of ancillary chunks.
  png_set_user_limits(png, kMaxPngSide, kMaxPngSide);
  png_set_chunk_malloc_max(png, kMaxPngChunkBytes);
  png_set_chunk_cache_max(png, kMaxPngAncillaryChunks);
  png_read_info(png, info);
  const uint64_t w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  if (w * h > kMaxPngPixels) refuse_size(st, w, h);
  png_set_strip_16(png);
  png_set_packing(png);
  png_set_expand(png);  // palette -> RGB, low-bit grey -> 8 bit, tRNS -> alpha
  // Grey with alpha becomes RGBA (an Image has 1, 3 or 4 channels): the alpha of a grey+alpha
  // colour type, and the one expand makes from a grey image's tRNS chunk.
  const int color = png_get_color_type(png, info);
  if ((color & PNG_COLOR_MASK_COLOR) == 0 &&
      ((color & PNG_COLOR_MASK_ALPHA) != 0 || png_get_valid(png, info, PNG_INFO_tRNS) != 0)) {
    png_set_gray_to_rgb(png);
  }
  png_read_update_info(png, info);
  Image& img = st.img;
  img.width = static_cast<int>(w);
  img.height = static_cast<int>(h);
  img.channels = png_get_channels(png, info);
  if (img.channels != 1 && img.channels != 3 && img.channels != 4)
    refuse_channels(st, img.channels, color);
  const size_t stride = png_get_rowbytes(png, info);
  img.pixels.resize(stride * img.height);
  st.rows.resize(img.height);
  for (int y = 0; y < img.height; ++y) st.rows[y] = img.pixels.data() + y * stride;
  png_read_image(png, st.rows.data());
  png_read_end(png, info);
  return true;
}

}  // namespace

Image decode_png(const std::string& bytes, const std::string& name,
                 std::map<std::string, std::string>* text) {
  STIPPLE_CHECK(bytes.size() >= 8 &&
                    png_sig_cmp(reinterpret_cast<png_const_bytep>(bytes.data()), 0, 8) == 0,
                name, " is not a PNG file");
  check_chunk_lengths(bytes, name);
  const auto st = std::make_unique<ReadState>();
  st->reader = ByteReader{&bytes, 8};
  st->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st->err, on_png_error, on_png_warning);
  STIPPLE_CHECK(st->png != nullptr, "PNG: libpng could not start");
  st->info = png_create_info_struct(st->png);
  if (!read_with_libpng(*st))
    throw Error(str_cat("cannot read PNG ", name, ": ", st->err.empty() ? "corrupt data" : st->err));
  if (text) {
    png_textp chunks = nullptr;
    int n = 0;
    png_get_text(st->png, st->info, &chunks, &n);
    for (int i = 0; i < n; ++i) {
      // iTXt (UTF-8; A1111 writes its parameters so when the prompt is not Latin-1) keeps its
      // length in itxt_length; tEXt and zTXt in text_length.
      const bool itxt = chunks[i].compression >= PNG_ITXT_COMPRESSION_NONE;
      (*text)[chunks[i].key] =
          std::string(chunks[i].text, itxt ? chunks[i].itxt_length : chunks[i].text_length);
    }
  }
  return std::move(st->img);
}

Image read_png(const std::string& path, std::map<std::string, std::string>* text) {
  return decode_png(read_file_bounded(path, "image", kMaxPngFileBytes), path, text);
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  std::map<std::string, std::string> text;
  read_png(path, &text);
  return text;
}

Image tensor_to_image(const Tensor& t, float lo, float hi) {
  Tensor chw = t.dim() == 4 ? t.squeeze(0) : t;
  STIPPLE_CHECK(chw.dim() == 3 && (chw.size(0) == 1 || chw.size(0) == 3 || chw.size(0) == 4),
                "tensor_to_image: expects [C, H, W] with C in {1, 3, 4}, got ", t.describe());
  const int c = static_cast<int>(chw.size(0)), h = static_cast<int>(chw.size(1)),
            w = static_cast<int>(chw.size(2));
  const std::vector<float> v = chw.to_vector();
  Image img{w, h, c, std::vector<uint8_t>(static_cast<size_t>(w) * h * c)};
  for (int ch = 0; ch < c; ++ch)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const float u = (v[(static_cast<size_t>(ch) * h + y) * w + x] - lo) / (hi - lo);
        const float s = std::nearbyint(std::clamp(u, 0.0f, 1.0f) * 255.0f);
        img.pixels[(static_cast<size_t>(y) * w + x) * c + ch] = static_cast<uint8_t>(s);
      }
  return img;
}

Tensor image_to_tensor(const Image& img, float lo, float hi) {
  Tensor t = Tensor::empty({1, img.channels, img.height, img.width});
  float* p = t.data<float>();
  for (int ch = 0; ch < img.channels; ++ch)
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x)
        p[(static_cast<size_t>(ch) * img.height + y) * img.width + x] =
            lo + (hi - lo) * img.pixels[(static_cast<size_t>(y) * img.width + x) * img.channels + ch] /
                     255.0f;
  return t;
}

Tensor make_grid(const Tensor& nchw, int cols, int gap) {
  STIPPLE_CHECK(nchw.dim() == 4, "make_grid: expects [N, C, H, W], got ", nchw.describe());
  const int64_t n = nchw.size(0), c = nchw.size(1), h = nchw.size(2), w = nchw.size(3);
  cols = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(cols, n)));
  const int64_t rows = (n + cols - 1) / cols;
  const int64_t gh = rows * h + (rows - 1) * gap, gw = cols * w + (cols - 1) * gap;
  const Tensor src = nchw.contiguous().to(DType::kF32);
  const float* ps = src.data<float>();
  // background: the low end of the value range (-1, black)
  Tensor grid = Tensor::full({c, gh, gw}, -1.0);
  float* pg = grid.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t oy = (i / cols) * (h + gap), ox = (i % cols) * (w + gap);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        std::memcpy(pg + (ch * gh + oy + y) * gw + ox, ps + ((i * c + ch) * h + y) * w,
                    w * sizeof(float));
  }
  return grid;
}

}  // namespace stipple::io

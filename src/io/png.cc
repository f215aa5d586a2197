#include "io/png.h"

#include "io/read_file.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
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

void write_png(const std::string& path, const Image& image,
               const std::map<std::string, std::string>& text) {
  STIPPLE_CHECK(image.width > 0 && image.height > 0, "write_png: empty image for ", path);
  STIPPLE_CHECK(image.channels == 1 || image.channels == 3 || image.channels == 4,
                "write_png: ", image.channels, " channels is not grey, RGB or RGBA");
  STIPPLE_CHECK(image.pixels.size() ==
                    static_cast<size_t>(image.width) * image.height * image.channels,
                "write_png: pixel buffer size does not match ", image.width, "x", image.height);
  std::string encoded, err;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error,
                                            on_png_warning);
  STIPPLE_CHECK(png != nullptr, "write_png: libpng could not start");
  png_infop info = png_create_info_struct(png);
  std::vector<png_text> chunks;
  std::vector<std::string> keys, values;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    throw Error(str_cat("write_png ", path, ": ", err));
  }
  png_set_write_fn(png, &encoded, append_bytes, flush_nothing);
  const int color = image.channels == 1   ? PNG_COLOR_TYPE_GRAY
                    : image.channels == 3 ? PNG_COLOR_TYPE_RGB
                                          : PNG_COLOR_TYPE_RGBA;
  png_set_IHDR(png, info, image.width, image.height, 8, color, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  for (const auto& [k, v] : text) {
    keys.push_back(k);
    values.push_back(v);
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    png_text t{};
    t.compression = PNG_TEXT_COMPRESSION_NONE;
    t.key = keys[i].data();
    t.text = values[i].data();
    t.text_length = values[i].size();
    chunks.push_back(t);
  }
  if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(image.width) * image.channels;
  for (int y = 0; y < image.height; ++y)
    png_write_row(png, const_cast<png_bytep>(image.pixels.data() + y * stride));
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  write_file_atomic(path, encoded);
}

Image read_png(const std::string& path, std::map<std::string, std::string>* text) {
  require_regular_file(path, "image");
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  STIPPLE_CHECK(f != nullptr, "cannot open image ", path, ": ", std::strerror(errno));
  unsigned char sig[8];
  STIPPLE_CHECK(std::fread(sig, 1, 8, f.get()) == 8 && png_sig_cmp(sig, 0, 8) == 0, path,
                " is not a PNG file");
  std::string err;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error,
                                           on_png_warning);
  STIPPLE_CHECK(png != nullptr, "read_png: libpng could not start");
  png_infop info = png_create_info_struct(png);
  Image img;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw Error(str_cat("cannot read PNG ", path, ": ", err.empty() ? "corrupt data" : err));
  }
  png_init_io(png, f.get());
  png_set_sig_bytes(png, 8);
  png_read_info(png, info);
  png_set_strip_16(png);
  png_set_packing(png);
  png_set_expand(png);  // palette -> RGB, low-bit grey -> 8 bit, tRNS -> alpha
  if (png_get_color_type(png, info) == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_read_update_info(png, info);
  img.width = static_cast<int>(png_get_image_width(png, info));
  img.height = static_cast<int>(png_get_image_height(png, info));
  img.channels = png_get_channels(png, info);
  const size_t stride = png_get_rowbytes(png, info);
  img.pixels.resize(stride * img.height);
  std::vector<png_bytep> rows(img.height);
  for (int y = 0; y < img.height; ++y) rows[y] = img.pixels.data() + y * stride;
  png_read_image(png, rows.data());
  png_read_end(png, info);
  if (text) {
    png_textp chunks = nullptr;
    int n = 0;
    png_get_text(png, info, &chunks, &n);
    for (int i = 0; i < n; ++i) (*text)[chunks[i].key] = std::string(chunks[i].text, chunks[i].text_length);
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return img;
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

#include "train/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "ops/ops.h"

namespace stipple::train {
namespace {

// A gzip stream (zlib reads a file without the gzip magic as it is, so raw IDX files work too).
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    STIPPLE_CHECK(std::filesystem::exists(path), "no such file: ", path);
    file_ = gzopen(path.c_str(), "rb");
    STIPPLE_CHECK(file_ != nullptr, "cannot open ", path, ": ", std::strerror(errno));
  }
  ~GzFile() {
    if (file_) gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to n bytes; returns how many were read (fewer only at the end of the data).
  size_t read(void* out, size_t n) {
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int got = gzread(file_, static_cast<uint8_t*>(out) + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file_, &errnum);
        throw Error(str_cat(path_, ": corrupt gzip data (", msg ? msg : "unknown error",
                            "); delete the file and reinstall it"));
      }
      if (got == 0) {
        // zlib reports a cut-off gzip stream as an error only through gzerror.
        int errnum = Z_OK;
        const char* msg = gzerror(file_, &errnum);
        STIPPLE_CHECK(errnum == Z_OK, path_, ": truncated or corrupt gzip data (", msg,
                      "); delete the file and reinstall it");
        break;
      }
      done += static_cast<size_t>(got);
    }
    return done;
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

std::string lower_key(const std::string& s) {
  std::string out;
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == ' ' || c == '-' || c == '_') {
      out += '-';
    } else {
      out += static_cast<char>(std::tolower(u));
    }
  }
  return out;
}

}  // namespace

IdxArray read_idx(const std::string& path) {
  GzFile f(path);
  uint8_t magic[4];
  const size_t got = f.read(magic, 4);
  STIPPLE_CHECK(got == 4 && magic[0] == 0 && magic[1] == 0, path,
                ": not an IDX file (expected the magic bytes 00 00 <type> <ndims>)");
  STIPPLE_CHECK(magic[2] == 0x08, path, ": IDX element type 0x", std::hex,
                static_cast<int>(magic[2]), std::dec,
                " is not supported (only 0x08, unsigned byte)");
  const int ndims = magic[3];
  STIPPLE_CHECK(ndims >= 1 && ndims <= 4, path, ": IDX file with ", ndims,
                " dimensions (expected 1 to 4)");
  IdxArray out;
  int64_t total = 1;
  for (int d = 0; d < ndims; ++d) {
    uint8_t b[4];
    STIPPLE_CHECK(f.read(b, 4) == 4, path, ": truncated IDX header");
    const int64_t n = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3];
    out.dims.push_back(n);
    total *= n;
    STIPPLE_CHECK(total <= (int64_t{1} << 33), path, ": IDX header claims ", shape_str(out.dims),
                  ", too large to be real data");
  }
  out.data.resize(static_cast<size_t>(total));
  const size_t n = f.read(out.data.data(), out.data.size());
  STIPPLE_CHECK(n == out.data.size(), path, ": truncated: the header says ", shape_str(out.dims),
                " (", total, " bytes of data) but the file holds ", n,
                "; delete the file and reinstall it");
  uint8_t extra;
  STIPPLE_CHECK(f.read(&extra, 1) == 0, path, ": more data than the header's ", shape_str(out.dims),
                " (not an IDX file, or a corrupt one)");
  return out;
}

Split parse_split(const std::string& name) {
  if (name == "train") return Split::kTrain;
  if (name == "test") return Split::kTest;
  throw Error(str_cat("unknown data split '", name, "' (expected train or test)"));
}

std::string to_string(Split split) { return split == Split::kTrain ? "train" : "test"; }

FashionMnist FashionMnist::load(const std::string& dir, Split split, bool pad_to_32) {
  STIPPLE_CHECK(std::filesystem::is_directory(dir), "Fashion-MNIST folder not found: ", dir,
                " (install the Debian package dataset-fashion-mnist, e.g. with scripts/setup.sh, "
                "or pass the folder that holds train-images-idx3-ubyte.gz)");
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string image_path = dir + "/" + prefix + "-images-idx3-ubyte.gz";
  const std::string label_path = dir + "/" + prefix + "-labels-idx1-ubyte.gz";
  for (const std::string& p : {image_path, label_path})
    STIPPLE_CHECK(std::filesystem::exists(p), "Fashion-MNIST file missing: ", p,
                  " (reinstall the Debian package dataset-fashion-mnist)");
  const IdxArray images = read_idx(image_path);
  const IdxArray labels = read_idx(label_path);
  STIPPLE_CHECK(
      images.dims.size() == 3 && images.dims[1] == kImageSize && images.dims[2] == kImageSize,
      image_path, ": expected images [N, 28, 28], got ", shape_str(images.dims));
  STIPPLE_CHECK(labels.dims.size() == 1 && labels.dims[0] == images.dims[0], label_path,
                ": expected ", images.dims[0], " labels, got ", shape_str(labels.dims));
  const int64_t n = images.dims[0];
  const int64_t pad = pad_to_32 ? 2 : 0;
  const int64_t side = kImageSize + 2 * pad;
  FashionMnist out;
  out.images_ = Tensor::full({n, 1, side, side}, -1.0);
  float* img = out.images_.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < kImageSize; ++y)
      for (int64_t x = 0; x < kImageSize; ++x)
        img[(i * side + y + pad) * side + x + pad] =
            images.data[(i * kImageSize + y) * kImageSize + x] / 127.5f - 1.0f;
  out.labels_ = Tensor::zeros({n}, DType::kI64);
  int64_t* lab = out.labels_.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    STIPPLE_CHECK(labels.data[i] < kNumClasses, label_path, ": label ", int{labels.data[i]},
                  " at index ", i, " is not a Fashion-MNIST class (0..9)");
    lab[i] = labels.data[i];
  }
  return out;
}

const std::vector<std::string>& FashionMnist::class_names() {
  static const std::vector<std::string> names = {"t-shirt/top", "trouser",   "pullover", "dress",
                                                 "coat",        "sandal",    "shirt",    "sneaker",
                                                 "bag",         "ankle-boot"};
  return names;
}

int64_t FashionMnist::class_index(const std::string& name) {
  const std::string key = lower_key(name);
  if (!key.empty() && key.size() <= 2 &&
      std::all_of(key.begin(), key.end(), [](char c) { return std::isdigit(c); })) {
    const int v = std::stoi(key);
    if (v < kNumClasses) return v;
  }
  static const std::map<std::string, int64_t> aliases = {
      {"t-shirt", 0}, {"tshirt", 0},      {"top", 0},       {"t-shirt/top", 0},
      {"tee", 0},     {"trousers", 1},    {"pullovers", 2}, {"dresses", 3},
      {"coats", 4},   {"sandals", 5},     {"shirts", 6},    {"sneakers", 7},
      {"bags", 8},    {"ankle-boots", 9}, {"boot", 9},      {"ankleboot", 9}};
  for (int64_t i = 0; i < kNumClasses; ++i)
    if (class_names()[i] == key) return i;
  const auto it = aliases.find(key);
  if (it != aliases.end()) return it->second;
  std::string all;
  for (const auto& n : class_names()) all += (all.empty() ? "" : ", ") + n;
  throw Error(
      str_cat("unknown Fashion-MNIST class '", name, "' (known: ", all, "; or a label 0-9)"));
}

// ---------------- DataLoader ----------------

DataLoader::DataLoader(Tensor images, Tensor labels, int64_t batch_size, uint64_t seed, bool hflip)
    : images_(images.contiguous()),
      labels_(labels.contiguous()),
      size_(images.defined() ? images.size(0) : 0),
      batch_size_(batch_size),
      hflip_(hflip),
      gen_(seed) {
  STIPPLE_CHECK(images_.dtype() == DType::kF32 && images_.dim() >= 2,
                "DataLoader: images must be "
                "f32 [N, ...], got ",
                images_.describe());
  STIPPLE_CHECK(labels_.dtype() == DType::kI64 && labels_.dim() == 1 && labels_.size(0) == size_,
                "DataLoader: labels must be i64 [", size_, "], got ", labels_.describe());
  STIPPLE_CHECK(batch_size > 0 && batch_size <= size_, "DataLoader: batch size ", batch_size,
                " must be between 1 and the data set size ", size_);
  start_epoch();
}

void DataLoader::start_epoch() {
  epoch_start_state_ = gen_.state();
  ++epoch_;
  position_ = 0;
  // Fisher-Yates from the back, one 64-bit draw per swap.
  order_.resize(size_);
  for (int64_t i = 0; i < size_; ++i) order_[i] = i;
  for (int64_t i = size_ - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(gen_.next_u64() % static_cast<uint64_t>(i + 1));
    std::swap(order_[i], order_[j]);
  }
  flip_.assign(size_, 0);
  if (hflip_)
    for (int64_t i = 0; i < size_; ++i) flip_[i] = gen_.next_u32() & 1u;
}

Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  std::vector<Tensor> parts;
  parts.reserve(rows.size());
  for (int64_t r : rows) parts.push_back(x.narrow(0, r, 1));
  return ops::concat(parts, 0);
}

DataLoader::Batch DataLoader::next() {
  if (position_ + batch_size_ > size_) start_epoch();
  Shape shape = images_.shape();
  shape[0] = batch_size_;
  const int64_t per = images_.numel() / size_;
  const int64_t width = images_.size(-1);
  Batch b{Tensor::empty(shape), Tensor::empty({batch_size_}, DType::kI64)};
  const float* src = images_.data<float>();
  const int64_t* lab = labels_.data<int64_t>();
  float* dst = b.images.data<float>();
  int64_t* dst_lab = b.labels.data<int64_t>();
  for (int64_t k = 0; k < batch_size_; ++k) {
    const int64_t i = order_[position_ + k];
    const float* s = src + i * per;
    float* d = dst + k * per;
    if (flip_[position_ + k]) {
      for (int64_t r = 0; r < per / width; ++r)
        for (int64_t x = 0; x < width; ++x) d[r * width + x] = s[r * width + width - 1 - x];
    } else {
      std::memcpy(d, s, sizeof(float) * per);
    }
    dst_lab[k] = lab[i];
  }
  position_ += batch_size_;
  return b;
}

std::map<std::string, Tensor> DataLoader::state_dict() const {
  return {{"epoch", Tensor::scalar(static_cast<double>(epoch_), DType::kI64)},
          {"position", Tensor::scalar(static_cast<double>(position_), DType::kI64)},
          {"rng_state", bytes_to_tensor(epoch_start_state_)}};
}

void DataLoader::load_state_dict(const std::map<std::string, Tensor>& state) {
  for (const char* key : {"epoch", "position", "rng_state"})
    STIPPLE_CHECK(state.count(key), "DataLoader state: missing '", key, "'");
  const int64_t epoch = state.at("epoch").to_vector_i64().at(0);
  const int64_t position = state.at("position").to_vector_i64().at(0);
  STIPPLE_CHECK(epoch >= 0 && position >= 0 && position <= size_, "DataLoader state: epoch ", epoch,
                " position ", position, " do not fit a data set of ", size_, " images");
  gen_.set_state(tensor_to_bytes(state.at("rng_state")));
  epoch_ = epoch - 1;
  start_epoch();  // re-draws the same permutation and flips
  position_ = position;
}

Tensor bytes_to_tensor(const std::vector<uint8_t>& bytes) {
  std::vector<int64_t> v(bytes.begin(), bytes.end());
  return Tensor::from_vector_i64(v, {static_cast<int64_t>(v.size())});
}

std::vector<uint8_t> tensor_to_bytes(const Tensor& t) {
  std::vector<uint8_t> out;
  for (int64_t v : t.to_vector_i64()) {
    STIPPLE_CHECK(v >= 0 && v <= 255, "byte tensor holds ", v, ", not a byte");
    out.push_back(static_cast<uint8_t>(v));
  }
  return out;
}

}  // namespace stipple::train

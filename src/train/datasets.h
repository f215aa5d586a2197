// Training data: the IDX file format (gzipped or raw), Fashion-MNIST with its class names, and a
// loader that hands out deterministic shuffled minibatches whose position can be saved and
// restored exactly (so a resumed run sees the same images in the same order).
//
// IDX (LeCun's MNIST format): two zero bytes, a type byte (0x08 = unsigned byte, the only type
// read here), the number of dimensions, each dimension as a big-endian u32, then the data in
// row-major order. Fashion-MNIST ships train-images-idx3-ubyte.gz [60000, 28, 28],
// train-labels-idx1-ubyte.gz [60000] and the t10k-* files [10000, ...] for the test split
// (Debian package dataset-fashion-mnist, installed by scripts/setup.sh).
//
// Leaves out: IDX element types other than unsigned byte, and data augmentation beyond a
// horizontal flip.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace stipple::train {

// An IDX array: its dimensions and its bytes (row-major).
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

// Reads an IDX file; gzip-compressed when the file starts with the gzip magic (any name).
// Throws stipple::Error naming the file and the problem: missing, not gzip/IDX, an element type
// other than unsigned byte, or fewer data bytes than the header promises (truncated).
IdxArray read_idx(const std::string& path);

enum class Split { kTrain, kTest };
Split parse_split(const std::string& name);  // "train" or "test"
std::string to_string(Split split);

class FashionMnist {
 public:
  static constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";
  static constexpr int kNumClasses = 10;
  static constexpr int kImageSize = 28;

  // Loads one split from `dir` (the four *-idx?-ubyte.gz files). Images are [N, 1, 28, 28] f32
  // in [-1, 1] (pixel / 127.5 - 1); with pad_to_32 they are [N, 1, 32, 32], framed by 2 pixels
  // of -1 (black, the background) so that patch sizes 2, 4 and 8 divide them. Labels are i64 [N].
  // Throws naming the folder and the missing file (and how to install the data) when absent.
  static FashionMnist load(const std::string& dir = kDefaultDir, Split split = Split::kTrain,
                           bool pad_to_32 = false);

  const Tensor& images() const { return images_; }
  const Tensor& labels() const { return labels_; }
  int64_t size() const { return labels_.defined() ? labels_.size(0) : 0; }
  int64_t image_size() const { return images_.size(-1); }

  // "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
  // "ankle-boot", in label order.
  static const std::vector<std::string>& class_names();
  // The label of a class name: case-insensitive; spaces, '-' and '_' are the same; "t-shirt",
  // "tshirt", "top" and "t-shirt/top" all name class 0, and a number 0..9 is taken as it is.
  // Throws listing the names otherwise.
  static int64_t class_index(const std::string& name);

 private:
  Tensor images_, labels_;
};

// Rows `rows` of x [N, ...], stacked in that order (repeats allowed): [rows.size(), ...].
Tensor gather_rows(const Tensor& x, const std::vector<int64_t>& rows);

// Deterministic shuffled minibatches over (images [N, ...], labels [N]). Each epoch is a fresh
// permutation drawn from the loader's own Generator (and, with hflip, a coin per image); batches
// are consecutive slices of it, and the last partial batch of an epoch is dropped. Everything an
// epoch uses is drawn at its start, so the loader's position is (the Generator's state at the
// start of the epoch, the epoch number, the index within it): state_dict() saves exactly that and
// load_state_dict() re-draws the epoch and continues at the same image.
class DataLoader {
 public:
  DataLoader(Tensor images, Tensor labels, int64_t batch_size, uint64_t seed, bool hflip = false);

  struct Batch {
    Tensor images;  // [B, ...] f32, a copy
    Tensor labels;  // [B] i64
  };
  Batch next();

  int64_t batch_size() const { return batch_size_; }
  int64_t epoch() const { return epoch_; }
  int64_t position() const { return position_; }
  int64_t batches_per_epoch() const { return size_ / batch_size_; }

  // "epoch", "position" (i64 0-d) and "rng_state" (the epoch-start Generator state, bytes as i64).
  std::map<std::string, Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, Tensor>& state);

 private:
  void start_epoch();  // draws the permutation (and flips) from gen_

  Tensor images_, labels_;
  int64_t size_;
  int64_t batch_size_;
  bool hflip_;
  Generator gen_;
  std::vector<uint8_t> epoch_start_state_;
  std::vector<int64_t> order_;
  std::vector<uint8_t> flip_;
  int64_t epoch_ = -1;
  int64_t position_ = 0;
};

// Bytes <-> an i64 tensor [n] holding one byte per element (safetensors has no u8 writer here).
Tensor bytes_to_tensor(const std::vector<uint8_t>& bytes);
std::vector<uint8_t> tensor_to_bytes(const Tensor& t);

}  // namespace stipple::train

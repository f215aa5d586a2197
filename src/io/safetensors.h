// safetensors files (https://github.com/huggingface/safetensors): reading by memory map, and
// writing through atomic_file.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON, then the data region. The
// JSON maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (byte offsets
// into the data region) plus an optional "__metadata__" object of string -> string.
//
// Reading. SafetensorsFile::open maps the file (MAP_PRIVATE; the file is opened read-only and
// never modified: a write into a returned tensor makes a private copy of that page) and
// SafetensorsFile::from_bytes takes a file's bytes held in memory; both run the one parser, which
// checks the whole header up front, so a corrupt or truncated file fails at open() with a stipple::Error
// that names the file and the problem, never later with a crash. The checks follow the reference
// implementation: header length within the file and at most 100 MB, a JSON object, every entry
// with a known dtype, a shape of non-negative integers (whose non-zero sizes multiply to under
// 2^63, so strides fit even in an empty tensor; the one check stricter than the reference, which
// accepts [0, 2^62, 2^62]), data_offsets [begin, end] with
// begin <= end, end - begin == numel * dtype size, and no duplicate names. The tensors must cover
// the data region exactly: no overlaps, no gaps and no trailing bytes. That is what the
// safetensors library itself requires, so every file it accepts is accepted here, and a file with
// uncovered bytes (usually a truncated or hand-edited one) is refused with the offending range.
//
// tensor(name) views the mapping without copying for F32, F16, BF16, I64 and F64, as a contiguous
// Tensor whose Storage keeps the mapping alive (so tensors may outlive the SafetensorsFile). Data
// that is not aligned to its element size in memory (possible only in files not written by the
// usual writers) is copied instead. Integer types BOOL, U8, I8, I16, U16, I32 and U32 are
// converted to I64 (a copy). Other dtypes (U64, F8_*, F4, F6_*, C64, ...) are listed with their
// names and shapes but tensor() refuses them with "unsupported dtype X for tensor Y".
//
// Writing. save_safetensors writes F32, F16, BF16, I64 and F64 tensors as they are (f16/bf16 stay
// 16-bit), "__metadata__" first, the header padded with spaces to a multiple of 8, and the data
// ordered by element size (largest first) and then by name, so every tensor is aligned to its
// element size when the file is mapped.
//
// Leaves out: big-endian hosts (refused at compile time), writing other dtypes, and files changed
// or truncated by someone else while mapped (the OS then raises SIGBUS on access).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stipple::io {

// One tensor's header entry.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // the safetensors name: "F32", "BF16", "I64", "U8", ...
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data region
  uint64_t end = 0;
};

// True when `dtype` is a dtype that tensor() can return (directly or converted to I64).
bool safetensors_dtype_supported(const std::string& dtype);

class SafetensorsFile {
 public:
  // Maps and validates `path`; throws stipple::Error naming the file and the problem.
  static SafetensorsFile open(const std::string& path);
  // Validates a whole safetensors file held in memory, exactly as open() validates a file; `name`
  // stands for the path in errors and path(). The result keeps `bytes` alive and views it.
  static SafetensorsFile from_bytes(std::string bytes, const std::string& name);
  // Tensors already in memory (F32, F16, BF16, I64 or F64), presented like a file's: how other
  // formats (PyTorch checkpoints, io/torch_checkpoint.h) reach the loaders. tensor() returns them
  // as they are; `name` stands for the path.
  static SafetensorsFile from_tensors(std::map<std::string, Tensor> tensors,
                                      const std::string& name);

  const std::string& path() const { return path_; }
  // Tensor names, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }
  size_t size() const { return entries_.size(); }
  // The header entry of `name`; throws naming the file when there is no such tensor.
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  // The stipple dtype tensor(name) returns; throws for unsupported dtypes.
  DType dtype(const std::string& name) const;
  const Shape& shape(const std::string& name) const { return entry(name).shape; }
  // Dimension d of the tensor's shape; throws naming the file and tensor when it has fewer.
  int64_t dim(const std::string& name, size_t d) const;

  // The tensor, viewing the mapping (see the header comment for copies and conversions).
  Tensor tensor(const std::string& name) const;
  // Every tensor; throws if any has an unsupported dtype.
  std::map<std::string, Tensor> tensors() const;

  // The "__metadata__" object (empty when absent). Values that are not strings (the reference
  // library refuses them) are kept as their JSON text.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Mapping;
  SafetensorsFile() = default;
  // The parser of open() and from_bytes(): checks `size` bytes at `bytes` (which `keepalive`
  // keeps alive) and indexes them; `path` names them in errors.
  static SafetensorsFile parse(std::shared_ptr<void> keepalive, const uint8_t* bytes,
                               uint64_t size, const std::string& path);

  std::string path_;
  std::shared_ptr<void> keepalive_;  // the mapping or the in-memory bytes
  bool file_mapped_ = false;         // keepalive_ is a mapping of the file (open())
  const uint8_t* data_ = nullptr;  // start of the data region inside the mapping
  uint64_t data_size_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Tensor> held_;  // from_tensors()
};

// Shorthand for SafetensorsFile::open(path).tensors().
std::map<std::string, Tensor> load_safetensors(const std::string& path);

// Writes `tensors` (any layout; f32, f16, bf16, i64 or f64, on the CPU) atomically to `path`.
// Names must be non-empty and not "__metadata__".
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace stipple::io

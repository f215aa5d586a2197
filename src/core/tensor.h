// Tensor: a shape, strides, a dtype and a device over a shared Storage, plus the autograd fields.
// A Tensor is a handle: copies share the same tensor (as in PyTorch); views share storage.
//
// Layouts. Most tensors are plain strided arrays (strides in elements, any order, 0 for expanded
// dims). A 4-D NCHW tensor may instead be channel-blocked (oneDNN's nChw8c / nChw16c): the data is
// [N][C/b][H][W][b], contiguous, with C a multiple of b. Convolutions keep chains of activations
// in that layout; any op that does not understand it calls contiguous(), which reorders to plain.
//
// Element access from C++ is through data<T>() on contiguous tensors or to_vector(); the math
// lives in src/ops (free functions) and the member shortcuts below forward to it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/storage.h"

namespace stipple {

using Shape = std::vector<int64_t>;

namespace autograd {
class Node;
}

std::string shape_str(const Shape& s);  // "[2, 4, 8, 8]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements; meaningless when channel_block > 0
  DType dtype = DType::kF32;
  int channel_block = 0;  // 0: plain strided; 8 or 16: NCHW stored as nChw{b}c
  // autograd
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- factories (CPU) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::kF32, Device device = Device::kCPU);
  static Tensor zeros(const Shape& shape, DType dtype = DType::kF32);
  static Tensor ones(const Shape& shape, DType dtype = DType::kF32);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::kF32);
  static Tensor scalar(double value, DType dtype = DType::kF32);  // 0-d
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector_i64(const std::vector<int64_t>& values, const Shape& shape);
  static Tensor from_vector_f64(const std::vector<double>& values, const Shape& shape);
  static Tensor arange(int64_t n, DType dtype = DType::kF32);
  // A plain contiguous tensor over existing storage; `byte_offset` must be aligned to the dtype.
  static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset,
                             const Shape& shape, DType dtype);
  // An empty channel-blocked NCHW tensor (see the header comment).
  static Tensor empty_blocked(const Shape& nchw, int block);

  // ---- description ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const;    // negative d counts from the end
  int64_t stride(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  int64_t storage_offset() const { return impl().offset; }
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }
  int channel_block() const { return impl().channel_block; }
  bool is_blocked() const { return impl().channel_block > 0; }
  bool is_contiguous() const;  // plain, row-major, no gaps
  std::string describe() const;  // "f32[2, 4, 8, 8]"
  int64_t normalize_dim(int64_t d) const;  // maps -1 to dim()-1 and checks the range

  // Raw pointer to the first element (storage + offset). For blocked tensors: the block data.
  void* raw_data() const;
  // Typed pointer for host code; checks the dtype (uint16_t for f16 and bf16) and that the tensor
  // is on the CPU (device memory is read through to(Device::kCPU) or to_vector()). Kernels of
  // other devices use raw_data().
  template <typename T>
  T* data() const;

  // Copies out as float (any floating dtype, any layout, any device) / int64 / double.
  std::vector<float> to_vector() const;
  std::vector<int64_t> to_vector_i64() const;
  std::vector<double> to_vector_f64() const;
  float item() const;  // a one-element tensor's value as float

  // ---- autograd ----
  bool requires_grad() const { return impl().requires_grad; }
  // Marks a leaf tensor as a parameter whose gradient backward() accumulates.
  Tensor& set_requires_grad(bool on);
  Tensor grad() const;
  void set_grad(const Tensor& g);
  void zero_grad();  // drops the accumulated gradient
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  // Reverse-mode gradient of this tensor (a scalar unless `grad_output` is given) with respect to
  // every leaf that requires grad; gradients accumulate into their grad().
  void backward(const Tensor& grad_output = Tensor()) const;
  Tensor detach() const;  // same data, outside the graph

  // ---- shortcuts for src/ops functions (see ops/ops.h) ----
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor expand(const Shape& shape) const;
  Tensor unsqueeze(int64_t d) const;
  Tensor squeeze(int64_t d) const;
  Tensor flatten(int64_t start = 0, int64_t end = -1) const;
  Tensor contiguous() const;  // plain row-major (reorders blocked tensors); no copy when already so
  Tensor clone() const;
  Tensor to(DType dtype) const;
  // A copy on `device` (this tensor itself when already there); gradients flow back.
  Tensor to(Device device) const;

  TensorImpl& impl() const {
    STIPPLE_CHECK(impl_ != nullptr, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, float s);
Tensor operator-(const Tensor& a, float s);
Tensor operator*(const Tensor& a, float s);
Tensor operator/(const Tensor& a, float s);
Tensor operator+(float s, const Tensor& a);
Tensor operator-(float s, const Tensor& a);
Tensor operator*(float s, const Tensor& a);
Tensor operator-(const Tensor& a);

}  // namespace stipple

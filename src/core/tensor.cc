#include "core/tensor.h"

#include <cstring>
#include <sstream>

namespace stipple {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

namespace {

// A plain contiguous tensor over fresh storage, zero-filled when asked.
Tensor allocate_plain(const Shape& shape, DType dtype, Device device, bool zero) {
  for (int64_t d : shape) STIPPLE_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(shape_numel(shape) * dtype_size(dtype), device, zero);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  return allocate_plain(shape, dtype, device, false);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  return allocate_plain(shape, dtype, Device::kCPU, true);
}

Tensor Tensor::ones(const Shape& shape, DType dtype) { return full(shape, 1.0, dtype); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype) {
  Tensor t = empty(shape, dtype);
  const int64_t n = t.numel();
  switch (dtype) {
    case DType::kF32: {
      float* p = t.data<float>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value);
      break;
    }
    case DType::kF64: {
      double* p = t.data<double>();
      for (int64_t i = 0; i < n; ++i) p[i] = value;
      break;
    }
    case DType::kI64: {
      int64_t* p = t.data<int64_t>();
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int64_t>(value);
      break;
    }
    case DType::kF16:
    case DType::kBF16: {
      const uint16_t h = dtype == DType::kF16 ? f32_to_f16(static_cast<float>(value))
                                              : f32_to_bf16(static_cast<float>(value));
      uint16_t* p = t.data<uint16_t>();
      for (int64_t i = 0; i < n; ++i) p[i] = h;
      break;
    }
  }
  return t;
}

Tensor Tensor::scalar(double value, DType dtype) { return full({}, value, dtype); }

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  STIPPLE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
                values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::kF32);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::from_vector_i64(const std::vector<int64_t>& values, const Shape& shape) {
  STIPPLE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector_i64: ",
                values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::kI64);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * 8);
  return t;
}

Tensor Tensor::from_vector_f64(const std::vector<double>& values, const Shape& shape) {
  STIPPLE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector_f64: ",
                values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::kF64);
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * 8);
  return t;
}

Tensor Tensor::arange(int64_t n, DType dtype) {
  Tensor t = empty({n}, DType::kF64);
  double* p = t.data<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(i);
  return dtype == DType::kF64 ? t : t.to(dtype);
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset,
                            const Shape& shape, DType dtype) {
  const size_t es = dtype_size(dtype);
  STIPPLE_CHECK(byte_offset % es == 0, "from_storage: byte offset ", byte_offset,
                " is not a multiple of the ", dtype_name(dtype), " element size");
  STIPPLE_CHECK(byte_offset + shape_numel(shape) * es <= storage->nbytes(),
                "from_storage: ", shape_str(shape), " ", dtype_name(dtype),
                " does not fit in the storage");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->offset = static_cast<int64_t>(byte_offset / es);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::empty_blocked(const Shape& nchw, int block) {
  STIPPLE_CHECK(nchw.size() == 4, "a blocked tensor is 4-D NCHW, got ", shape_str(nchw));
  STIPPLE_CHECK(block > 0 && nchw[1] % block == 0, "channels ", nchw[1],
                " are not a multiple of the block ", block);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = Storage::allocate(shape_numel(nchw) * 4, Device::kCPU);
  impl->shape = nchw;
  impl->strides = contiguous_strides(nchw);
  impl->dtype = DType::kF32;
  impl->channel_block = block;
  return Tensor(std::move(impl));
}

int64_t Tensor::normalize_dim(int64_t d) const {
  const int64_t n = dim();
  const int64_t r = d < 0 ? d + n : d;
  STIPPLE_CHECK(r >= 0 && r < n, "dimension ", d, " out of range for a ", n, "-d tensor");
  return r;
}

int64_t Tensor::size(int64_t d) const { return impl().shape[normalize_dim(d)]; }
int64_t Tensor::stride(int64_t d) const { return impl().strides[normalize_dim(d)]; }

bool Tensor::is_contiguous() const {
  const TensorImpl& t = impl();
  if (t.channel_block > 0) return false;
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expect) return false;
    expect *= t.shape[i];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  std::string s = str_cat(dtype_name(dtype()), shape_str(shape()));
  if (is_blocked()) s += str_cat("(nChw", channel_block(), "c)");
  return s;
}

void* Tensor::raw_data() const {
  const TensorImpl& t = impl();
  return static_cast<char*>(t.storage->data()) + t.offset * dtype_size(t.dtype);
}

namespace {
template <typename T>
bool dtype_matches(DType d);
template <>
bool dtype_matches<float>(DType d) { return d == DType::kF32; }
template <>
bool dtype_matches<double>(DType d) { return d == DType::kF64; }
template <>
bool dtype_matches<int64_t>(DType d) { return d == DType::kI64; }
template <>
bool dtype_matches<uint16_t>(DType d) { return d == DType::kF16 || d == DType::kBF16; }
}  // namespace

template <typename T>
T* Tensor::data() const {
  STIPPLE_CHECK(dtype_matches<T>(dtype()), "data<T>(): tensor is ", describe());
  STIPPLE_CHECK(host_may_read(device()), "host code read ", describe(), " on ", device_name(device()),
                "; copy it with .to(Device::kCPU) first");
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int64_t* Tensor::data<int64_t>() const;
template uint16_t* Tensor::data<uint16_t>() const;

std::vector<float> Tensor::to_vector() const {
  Tensor c = to(Device::kCPU).to(DType::kF32).contiguous();
  const float* p = c.data<float>();
  return std::vector<float>(p, p + c.numel());
}

std::vector<int64_t> Tensor::to_vector_i64() const {
  Tensor c = to(Device::kCPU).to(DType::kI64).contiguous();
  const int64_t* p = c.data<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

std::vector<double> Tensor::to_vector_f64() const {
  Tensor c = to(Device::kCPU).to(DType::kF64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

float Tensor::item() const {
  STIPPLE_CHECK(numel() == 1, "item() needs a one-element tensor, got ", describe());
  return to_vector()[0];
}

Tensor& Tensor::set_requires_grad(bool on) {
  STIPPLE_CHECK(!on || is_floating(dtype()), "only floating tensors can require grad, got ",
                describe());
  STIPPLE_CHECK(is_leaf(), "set_requires_grad on a non-leaf tensor; use detach() first");
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return Tensor(impl().grad); }
void Tensor::set_grad(const Tensor& g) { impl().grad = g.impl_ptr(); }
void Tensor::zero_grad() { impl().grad.reset(); }

Tensor Tensor::detach() const {
  auto d = std::make_shared<TensorImpl>(impl());
  d->requires_grad = false;
  d->grad.reset();
  d->grad_fn.reset();
  return Tensor(std::move(d));
}

}  // namespace stipple

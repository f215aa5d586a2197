// Views and data movement: reshape, permute, narrow, expand, contiguous, cast, concat, split,
// pad, and the channel-blocked reorder. Views share storage and cost nothing; their gradients
// are the inverse view (or a sum for expand, a zero-padded scatter for narrow).
#include <algorithm>
#include <numeric>

#include "ops/op_util.h"

namespace stipple::ops {
namespace {

Tensor make_view(const Tensor& x, const Shape& shape, const Shape& strides, int64_t offset) {
  auto v = std::make_shared<TensorImpl>();
  v->storage = x.storage();
  v->offset = offset;
  v->shape = shape;
  v->strides = strides;
  v->dtype = x.dtype();
  return Tensor(std::move(v));
}

// Strides that let `x` (strided) be seen with `shape` without a copy, or empty if impossible.
// Works dim-group by dim-group like PyTorch's computeStride.
Shape view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& shape) {
  if (shape_numel(shape) == 0) return contiguous_strides(shape);
  Shape st(shape.size());
  int64_t view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.empty() ? 1 : old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t td = static_cast<int64_t>(old_shape.size()) - 1; td >= 0; --td) {
    tensor_numel *= old_shape[td];
    if (td == 0 || (old_shape[td - 1] != 1 &&
                    old_strides[td - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
        st[view_d] = view_numel * chunk_base_stride;
        view_numel *= shape[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return {};
      if (td > 0) {
        chunk_base_stride = old_strides[td - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) {
    // remaining leading 1-dims
    for (; view_d >= 0; --view_d) {
      if (shape[view_d] != 1) return {};
      st[view_d] = 1;
    }
  }
  return st;
}

Shape infer_shape(const Shape& shape, int64_t numel, const char* op) {
  Shape out = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      STIPPLE_CHECK(infer < 0, op, ": more than one -1 in ", shape_str(shape));
      infer = static_cast<int64_t>(i);
    } else {
      STIPPLE_CHECK(out[i] >= 0, op, ": negative size in ", shape_str(shape));
      known *= out[i];
    }
  }
  if (infer >= 0) {
    STIPPLE_CHECK(known != 0 && numel % known == 0, op, ": cannot infer -1 in ", shape_str(shape),
                  " for ", numel, " elements");
    out[infer] = numel / known;
  }
  STIPPLE_CHECK(shape_numel(out) == numel, op, ": shape ", shape_str(shape), " does not hold ",
                numel, " elements");
  return out;
}

// Writes src (any dtype/strides) into the f32 strided view dst, element by element.
void copy_into(const Tensor& dst, const Tensor& src) {
  kernels_for(same_device("concat or pad", dst, src)).copy_into(dst, as_f32_contiguous(src));
}

Tensor plain(const Tensor& x) { return x.is_blocked() ? contiguous(x) : x; }

}  // namespace

Tensor reshape(const Tensor& x0, const Shape& shape) {
  const Tensor x = plain(x0);
  const Shape s = infer_shape(shape, x.numel(), "reshape");
  Shape st = view_strides(x.shape(), x.strides(), s);
  Tensor out;
  if (!st.empty() || s.empty()) {
    out = make_view(x, s, s.empty() ? Shape{} : st, x.storage_offset());
  } else {
    const Tensor c = kernels_for(x).copy(x, x.dtype());
    out = make_view(c, s, contiguous_strides(s), c.storage_offset());
  }
  const Shape in_shape = x0.shape();
  autograd::record("reshape", {x0}, out, [in_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{reshape(g, in_shape)};
  });
  return out;
}

Tensor permute(const Tensor& x0, const std::vector<int64_t>& dims) {
  const Tensor x = plain(x0);
  const int64_t n = x.dim();
  STIPPLE_CHECK(static_cast<int64_t>(dims.size()) == n, "permute: ", dims.size(),
                " dims given for ", x.describe());
  std::vector<int64_t> d(n), inverse(n);
  std::vector<bool> seen(n, false);
  Shape shape(n), strides(n);
  for (int64_t i = 0; i < n; ++i) {
    d[i] = x.normalize_dim(dims[i]);
    STIPPLE_CHECK(!seen[d[i]], "permute: dim ", d[i], " repeated");
    seen[d[i]] = true;
    shape[i] = x.shape()[d[i]];
    strides[i] = x.strides()[d[i]];
    inverse[d[i]] = i;
  }
  Tensor out = make_view(x, shape, strides, x.storage_offset());
  autograd::record("permute", {x0}, out, [inverse](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{permute(g, inverse)};
  });
  return out;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  std::vector<int64_t> dims(x.dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[x.normalize_dim(d0)], dims[x.normalize_dim(d1)]);
  return permute(x, dims);
}

Tensor narrow(const Tensor& x0, int64_t dim, int64_t start, int64_t length) {
  const Tensor x = plain(x0);
  const int64_t d = x.normalize_dim(dim);
  const int64_t size = x.shape()[d];
  if (start < 0) start += size;
  STIPPLE_CHECK(start >= 0 && length >= 0 && start + length <= size, "narrow: [", start, ", ",
                start + length, ") is outside dim ", d, " of ", x.describe());
  Shape shape = x.shape();
  shape[d] = length;
  Tensor out = make_view(x, shape, x.strides(), x.storage_offset() + start * x.strides()[d]);
  const Shape in_shape = x.shape();
  autograd::record("narrow", {x0}, out,
                   [in_shape, d, start, length](const Tensor& g, const std::vector<bool>&) {
                     std::vector<int64_t> pads(2 * in_shape.size(), 0);
                     const size_t k = in_shape.size() - 1 - d;  // F.pad order: last dim first
                     pads[2 * k] = start;
                     pads[2 * k + 1] = in_shape[d] - start - length;
                     return std::vector<Tensor>{pad(g, pads)};
                   });
  return out;
}

Tensor expand(const Tensor& x0, const Shape& shape) {
  const Tensor x = plain(x0);
  STIPPLE_CHECK(shape.size() >= static_cast<size_t>(x.dim()), "expand: ", x.describe(),
                " has more dims than ", shape_str(shape));
  const size_t lead = shape.size() - x.dim();
  Shape out_shape(shape.size()), strides(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < lead) {
      STIPPLE_CHECK(shape[i] >= 0, "expand: new leading dim must be given, got ", shape_str(shape));
      out_shape[i] = shape[i];
      strides[i] = 0;
      continue;
    }
    const int64_t have = x.shape()[i - lead];
    const int64_t want = shape[i] == -1 ? have : shape[i];
    STIPPLE_CHECK(have == want || have == 1, "expand: cannot expand ", x.describe(), " to ",
                  shape_str(shape));
    out_shape[i] = want;
    strides[i] = have == want ? x.strides()[i - lead] : 0;
  }
  Tensor out = make_view(x, out_shape, strides, x.storage_offset());
  const Shape in_shape = x.shape();
  autograd::record("expand", {x0}, out, [in_shape](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{sum_to(g, in_shape)};
  });
  return out;
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  const int64_t n = x.dim() + 1;
  const int64_t d = dim < 0 ? dim + n : dim;
  STIPPLE_CHECK(d >= 0 && d < n, "unsqueeze: dim ", dim, " out of range for ", x.describe());
  Shape s = x.shape();
  s.insert(s.begin() + d, 1);
  return reshape(x, s);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  const int64_t d = x.normalize_dim(dim);
  if (x.shape()[d] != 1) return x;
  Shape s = x.shape();
  s.erase(s.begin() + d);
  return reshape(x, s);
}

Tensor flatten(const Tensor& x, int64_t start, int64_t end) {
  if (x.dim() == 0) return reshape(x, {1});
  const int64_t s0 = x.normalize_dim(start), e0 = x.normalize_dim(end);
  STIPPLE_CHECK(s0 <= e0, "flatten: start ", start, " after end ", end);
  Shape s(x.shape().begin(), x.shape().begin() + s0);
  int64_t m = 1;
  for (int64_t i = s0; i <= e0; ++i) m *= x.shape()[i];
  s.push_back(m);
  s.insert(s.end(), x.shape().begin() + e0 + 1, x.shape().end());
  return reshape(x, s);
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = kernels_for(x).copy(x, x.dtype());
  autograd::record("contiguous", {x}, out, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g};
  });
  return out;
}

Tensor clone(const Tensor& x) {
  Tensor out = kernels_for(x).copy(x, x.dtype());
  autograd::record("clone", {x}, out, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{g};
  });
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  const Tensor c = contiguous(x.detach());
  Tensor out = Tensor::empty(c.shape(), c.dtype(), device);
  Storage::copy_bytes(out.raw_data(), device, c.raw_data(), c.device(),
                      static_cast<size_t>(c.numel()) * dtype_size(c.dtype()));
  if (is_floating(x.dtype())) {
    const Device from = x.device();
    autograd::record("to_device", {x}, out, [from](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{to_device(g, from)};
    });
  }
  return out;
}

void assign(const Tensor& dst, const Tensor& src) {
  STIPPLE_CHECK(dst.defined() && src.defined() && dst.shape() == src.shape(), "assign: ",
                src.defined() ? src.describe() : std::string("nothing"), " into ",
                dst.defined() ? dst.describe() : std::string("nothing"),
                " (the shapes must be equal)");
  STIPPLE_CHECK(dst.is_contiguous() && dst.channel_block() == 0, "assign: the destination ",
                dst.describe(), " must be plain contiguous");
  autograd::NoGradGuard no_grad;
  const Tensor c = contiguous(cast(src.detach(), dst.dtype()));
  const size_t nbytes = static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype());
  if (nbytes > 0 && !(c.device() == dst.device() && c.raw_data() == dst.raw_data()))
    Storage::copy_bytes(dst.raw_data(), dst.device(), c.raw_data(), c.device(), nbytes);
  dst.storage()->bump_version();
}

Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor out = kernels_for(x).copy(x, dtype);
  if (is_floating(dtype) && is_floating(x.dtype())) {
    const DType from = x.dtype();
    autograd::record("cast", {x}, out, [from](const Tensor& g, const std::vector<bool>&) {
      return std::vector<Tensor>{cast(g, from)};
    });
  }
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  STIPPLE_CHECK(!xs.empty(), "concat: no tensors given");
  const Tensor& first = xs[0];
  const int64_t d = first.normalize_dim(dim);
  Shape shape = first.shape();
  int64_t total = 0;
  std::vector<int64_t> sizes;
  for (const Tensor& t : xs) {
    check_float(t, "concat", "input");
    STIPPLE_CHECK(t.dim() == first.dim(), "concat: ", t.describe(), " and ", first.describe(),
                  " differ in rank");
    for (int64_t i = 0; i < t.dim(); ++i)
      STIPPLE_CHECK(i == d || t.shape()[i] == shape[i], "concat: ", t.describe(), " and ",
                    first.describe(), " differ outside dim ", d);
    STIPPLE_CHECK(t.device() == first.device(), "concat: ", t.describe(), " is on ",
                  device_name(t.device()), " and ", first.describe(), " on ",
                  device_name(first.device()), "; move one with .to(Device)");
    sizes.push_back(t.shape()[d]);
    total += t.shape()[d];
  }
  shape[d] = total;
  Tensor out = Tensor::empty(shape, DType::kF32, first.device());
  int64_t at = 0;
  for (const Tensor& t : xs) {
    Shape s = shape;
    s[d] = t.shape()[d];
    copy_into(make_view(out, s, out.strides(), at * out.strides()[d]), t);
    at += t.shape()[d];
  }
  autograd::record("concat", xs, out, [sizes, d](const Tensor& g, const std::vector<bool>& needs) {
    std::vector<Tensor> grads(sizes.size());
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (needs[i]) grads[i] = narrow(g, d, at, sizes[i]);
      at += sizes[i];
    }
    return grads;
  });
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const int64_t d = x.normalize_dim(dim);
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  STIPPLE_CHECK(total == x.shape()[d], "split: sizes add up to ", total, " but dim ", d, " of ",
                x.describe(), " is ", x.shape()[d]);
  std::vector<Tensor> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(narrow(x, d, at, s));
    at += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  STIPPLE_CHECK(chunks > 0, "chunk: chunks must be positive, got ", chunks);
  const int64_t d = x.normalize_dim(dim);
  const int64_t n = x.shape()[d];
  const int64_t each = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t at = 0; at < n; at += each) sizes.push_back(std::min(each, n - at));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, d);
}

Tensor pad(const Tensor& x, const std::vector<int64_t>& pads, float value) {
  check_float(x, "pad", "x");
  STIPPLE_CHECK(pads.size() % 2 == 0 && pads.size() / 2 <= static_cast<size_t>(x.dim()),
                "pad: ", pads.size(), " pad values for ", x.describe());
  Shape shape = x.shape();
  Shape offsets(x.dim(), 0);
  for (size_t k = 0; k < pads.size() / 2; ++k) {
    const size_t d = x.dim() - 1 - k;
    STIPPLE_CHECK(pads[2 * k] >= 0 && pads[2 * k + 1] >= 0, "pad: negative padding");
    shape[d] += pads[2 * k] + pads[2 * k + 1];
    offsets[d] = pads[2 * k];
  }
  // Filled on the host and copied to x's device when it is another (one upload of the padded
  // size; a fill kernel would save it).
  Tensor out = Tensor::full(shape, value).to(x.device());
  int64_t off = 0;
  for (int64_t d = 0; d < x.dim(); ++d) off += offsets[d] * out.strides()[d];
  copy_into(make_view(out, x.shape(), out.strides(), off), x);
  const Shape in_shape = x.shape();
  autograd::record("pad", {x}, out, [in_shape, offsets](const Tensor& g, const std::vector<bool>&) {
    Tensor r = g;
    for (size_t d = 0; d < in_shape.size(); ++d)
      if (r.shape()[d] != in_shape[d]) r = narrow(r, d, offsets[d], in_shape[d]);
    return std::vector<Tensor>{r};
  });
  return out;
}

Tensor to_blocked(const Tensor& x, int block) {
  check_float(x, "to_blocked", "x");
  STIPPLE_CHECK(x.dim() == 4, "to_blocked: expects NCHW, got ", x.describe());
  if (x.channel_block() == block) return x;
  Tensor out = kernels_for(x).to_blocked(as_f32_contiguous(x), block);
  autograd::record("to_blocked", {x}, out, [](const Tensor& g, const std::vector<bool>&) {
    return std::vector<Tensor>{contiguous(g)};
  });
  return out;
}

}  // namespace stipple::ops

namespace stipple {

Tensor Tensor::reshape(const Shape& s) const { return ops::reshape(*this, s); }
Tensor Tensor::permute(const std::vector<int64_t>& d) const { return ops::permute(*this, d); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return ops::transpose(*this, a, b); }
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const { return ops::narrow(*this, d, s, l); }
Tensor Tensor::expand(const Shape& s) const { return ops::expand(*this, s); }
Tensor Tensor::unsqueeze(int64_t d) const { return ops::unsqueeze(*this, d); }
Tensor Tensor::squeeze(int64_t d) const { return ops::squeeze(*this, d); }
Tensor Tensor::flatten(int64_t s, int64_t e) const { return ops::flatten(*this, s, e); }
Tensor Tensor::contiguous() const { return ops::contiguous(*this); }
Tensor Tensor::clone() const { return ops::clone(*this); }
Tensor Tensor::to(DType d) const { return ops::cast(*this, d); }
Tensor Tensor::to(Device d) const { return ops::to_device(*this, d); }

}  // namespace stipple

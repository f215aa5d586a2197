// Reference linear-algebra kernels: matmul and 2-D convolution (forward, backward data, backward
// weight) as plain loops that accumulate in double. They are the yardstick the oneDNN kernels in
// fast_linalg.cc are tested against, so they favour being obviously correct over being fast.
// Layout: inputs are plain contiguous f32 (a channel-blocked conv input is made plain first);
// outputs are always plain NCHW.
#include <vector>

#include "backends/cpu/fill.h"

namespace stipple::cpu {

namespace {

int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
  return (in + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
}

// op(a) @ op(b) for a [Ba, M, K] (or [Ba, K, M] if trans_a), b [Bb, K, N] (or [Bb, N, K]).
Tensor ref_matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const int64_t ba = a.size(0), bb = b.size(0);
  const int64_t m = trans_a ? a.size(2) : a.size(1);
  const int64_t k = trans_a ? a.size(1) : a.size(2);
  const int64_t n = trans_b ? b.size(1) : b.size(2);
  const int64_t batch = ba > bb ? ba : bb;
  Tensor out = Tensor::empty({batch, m, n});
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  for (int64_t bi = 0; bi < batch; ++bi) {
    const float* ab = pa + (ba == 1 ? 0 : bi) * m * k;
    const float* bb_ = pb + (bb == 1 ? 0 : bi) * k * n;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0.0;
        for (int64_t p = 0; p < k; ++p) {
          const float av = trans_a ? ab[p * m + i] : ab[i * k + p];
          const float bv = trans_b ? bb_[j * k + p] : bb_[p * n + j];
          acc += static_cast<double>(av) * bv;
        }
        po[(bi * m + i) * n + j] = static_cast<float>(acc);
      }
    }
  }
  return out;
}

// ref_matmul of the operands rounded to bf16 (and back to f32: every bf16 value is one).
Tensor ref_matmul_bf16(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const auto rounded = [](const Tensor& t) {
    Tensor r = Tensor::empty(t.shape());
    float* dst = r.data<float>();
    if (t.dtype() == DType::kBF16) {
      const uint16_t* src = t.data<uint16_t>();
      for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_f32(src[i]);
    } else {
      const float* src = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_f32(f32_to_bf16(src[i]));
    }
    return r;
  };
  return ref_matmul(rounded(a), rounded(b), trans_a, trans_b);
}

// The geometry shared by the three convolution kernels.
struct ConvGeom {
  int64_t n, c, h, w;  // input
  int64_t o, kh, kw;   // weight
  int64_t ho, wo;      // output
};

ConvGeom make_geom(const Shape& x, const Shape& w, const ops::Conv2dParams& p) {
  ConvGeom g{x[0], x[1], x[2], x[3], w[0], w[2], w[3], 0, 0};
  g.ho = conv_out_size(g.h, g.kh, p.stride_h, p.pad_h, p.dilation_h);
  g.wo = conv_out_size(g.w, g.kw, p.stride_w, p.pad_w, p.dilation_w);
  return g;
}

// Calls f(n, o, oh, ow, c, i, j, ih, iw) for every (output, tap) pair that lands inside the
// input: y[n, o, oh, ow] += x[n, c, ih, iw] * w[o, c, i, j].
template <typename F>
void for_each_tap(const ConvGeom& g, const ops::Conv2dParams& p, F&& f) {
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t oh = 0; oh < g.ho; ++oh)
        for (int64_t ow = 0; ow < g.wo; ++ow)
          for (int64_t c = 0; c < g.c; ++c)
            for (int64_t i = 0; i < g.kh; ++i) {
              const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dilation_h;
              if (ih < 0 || ih >= g.h) continue;
              for (int64_t j = 0; j < g.kw; ++j) {
                const int64_t iw = ow * p.stride_w - p.pad_w + j * p.dilation_w;
                if (iw < 0 || iw >= g.w) continue;
                f(n, o, oh, ow, c, i, j, ih, iw);
              }
            }
}

Tensor ref_conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor& bias,
                  const ops::Conv2dParams& p, bool /*allow_blocked*/) {
  const Tensor x = x_in.contiguous();  // reorders a channel-blocked input to plain NCHW
  const Tensor w =
      w_in.dtype() == DType::kF32 ? w_in : reference_kernels().copy(w_in, DType::kF32);  // f16
  const ConvGeom g = make_geom(x.shape(), w.shape(), p);
  std::vector<double> acc(g.n * g.o * g.ho * g.wo, 0.0);
  const float* px = x.data<float>();
  const float* pw = w.data<float>();
  for_each_tap(g, p,
               [&](int64_t n, int64_t o, int64_t oh, int64_t ow, int64_t c, int64_t i, int64_t j,
                   int64_t ih, int64_t iw) {
                 acc[((n * g.o + o) * g.ho + oh) * g.wo + ow] +=
                     static_cast<double>(px[((n * g.c + c) * g.h + ih) * g.w + iw]) *
                     pw[((o * g.c + c) * g.kh + i) * g.kw + j];
               });
  Tensor out = Tensor::empty({g.n, g.o, g.ho, g.wo});
  float* po = out.data<float>();
  const float* pb = bias.defined() ? bias.data<float>() : nullptr;
  const int64_t plane = g.ho * g.wo;
  for (int64_t idx = 0; idx < static_cast<int64_t>(acc.size()); ++idx) {
    const double b = pb ? pb[(idx / plane) % g.o] : 0.0;
    po[idx] = static_cast<float>(acc[idx] + b);
  }
  return out;
}

Tensor ref_conv2d_backward_data(const Tensor& grad_y, const Tensor& w, const Shape& x_shape,
                                const ops::Conv2dParams& p) {
  const Tensor gy = grad_y.contiguous();
  const ConvGeom g = make_geom(x_shape, w.shape(), p);
  std::vector<double> acc(g.n * g.c * g.h * g.w, 0.0);
  const float* pg = gy.data<float>();
  const float* pw = w.data<float>();
  for_each_tap(g, p,
               [&](int64_t n, int64_t o, int64_t oh, int64_t ow, int64_t c, int64_t i, int64_t j,
                   int64_t ih, int64_t iw) {
                 acc[((n * g.c + c) * g.h + ih) * g.w + iw] +=
                     static_cast<double>(pg[((n * g.o + o) * g.ho + oh) * g.wo + ow]) *
                     pw[((o * g.c + c) * g.kh + i) * g.kw + j];
               });
  Tensor out = Tensor::empty(x_shape);
  float* po = out.data<float>();
  for (size_t idx = 0; idx < acc.size(); ++idx) po[idx] = static_cast<float>(acc[idx]);
  return out;
}

void ref_conv2d_backward_weight(const Tensor& x_in, const Tensor& grad_y, const Shape& w_shape,
                                const ops::Conv2dParams& p, Tensor* grad_w, Tensor* grad_b) {
  const Tensor x = x_in.contiguous();
  const Tensor gy = grad_y.contiguous();
  const ConvGeom g = make_geom(x.shape(), w_shape, p);
  const float* px = x.data<float>();
  const float* pg = gy.data<float>();
  if (grad_w) {
    std::vector<double> acc(g.o * g.c * g.kh * g.kw, 0.0);
    for_each_tap(g, p,
                 [&](int64_t n, int64_t o, int64_t oh, int64_t ow, int64_t c, int64_t i, int64_t j,
                     int64_t ih, int64_t iw) {
                   acc[((o * g.c + c) * g.kh + i) * g.kw + j] +=
                       static_cast<double>(pg[((n * g.o + o) * g.ho + oh) * g.wo + ow]) *
                       px[((n * g.c + c) * g.h + ih) * g.w + iw];
                 });
    *grad_w = Tensor::empty(w_shape);
    float* pw = grad_w->data<float>();
    for (size_t idx = 0; idx < acc.size(); ++idx) pw[idx] = static_cast<float>(acc[idx]);
  }
  if (grad_b) {
    *grad_b = Tensor::empty({g.o});
    float* pb = grad_b->data<float>();
    for (int64_t o = 0; o < g.o; ++o) {
      double acc = 0.0;
      for (int64_t n = 0; n < g.n; ++n)
        for (int64_t s = 0; s < g.ho * g.wo; ++s) acc += pg[(n * g.o + o) * g.ho * g.wo + s];
      pb[o] = static_cast<float>(acc);
    }
  }
}

}  // namespace

void fill_reference_linalg(KernelTable& t) {
  t.matmul = ref_matmul;
  t.matmul_bf16 = ref_matmul_bf16;
  t.conv2d = ref_conv2d;
  t.conv2d_backward_data = ref_conv2d_backward_data;
  t.conv2d_backward_weight = ref_conv2d_backward_weight;
}

}  // namespace stipple::cpu

// Generator: PyTorch's CPU random source (torch 1.13), reproduced bit for bit.
//
// What torch does, and what this file mirrors:
//   engine    at::mt19937 seeded with (seed & 0xffffffff), the standard MT19937 twist and temper.
//   random64  two 32-bit draws, the first one the high half.
//   uniform   float: (u32 & (2^24 - 1)) * 2^-24; double: (u64 & (2^53 - 1)) * 2^-53.
//   randn     numel >= 16 (contiguous): fill with uniforms, then Box-Muller on every 16-element
//             chunk, pairing element j with j + 8 (u1 = 1 - d[j], u2 = d[j + 8]); when numel is
//             not a multiple of 16, the last 16 elements are refilled with fresh uniforms and
//             transformed again. float32 takes torch's AVX2 kernel (normal_fill_AVX2), whose log
//             and sincos are avx_mathfun's Cephes polynomials compiled by GCC with FMA
//             contraction; the scalar ports below reproduce those roundings exactly. float64 takes
//             the scalar normal_fill<double> with libm's log/sin/cos.
//             numel < 16: at::normal_distribution<double> per element (uniform doubles u1, u2;
//             r = sqrt(-2 log(1 - u2)), theta = 2 pi u1; returns r cos(theta) and caches
//             r sin(theta) for the next call, for float and double tensors alike).
// Not covered: torch's non-AVX2 float kernel (libm logf/cosf/sinf, which differ by up to a few
// hundred ulp on some elements); half-precision tensors.
#include "core/rng.h"

#include <cmath>
#include <cstring>
#include <numbers>

namespace stipple {

namespace {

constexpr uint32_t kMatrixA = 0x9908b0dfu;
constexpr uint32_t kUpperMask = 0x80000000u;
constexpr uint32_t kLowerMask = 0x7fffffffu;
constexpr int kM = 397;

// The avx_mathfun code is plain mul/add intrinsics; GCC (which builds torch) contracts each
// multiply whose only use is an add or subtract into an FMA. The explicit fmaf calls below are
// exactly those contractions; nothing else may be contracted.
#if defined(__clang__)
#define STIPPLE_NO_CONTRACT
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#define STIPPLE_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define STIPPLE_NO_CONTRACT
#endif

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// avx_mathfun log256_ps for x in (0, 1], one lane.
STIPPLE_NO_CONTRACT float cephes_logf(float x) {
  uint32_t bits = float_to_bits(x);
  if (bits < 0x00800000u) bits = 0x00800000u;  // cut off denormals (x > 0 here)
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 0x7f);
  e = e + 1.0f;
  x = bits_to_float((bits & ~0x7f800000u) | 0x3f000000u);  // mantissa in [0.5, 1)
  const bool below = x < 0.707106781186547524f;            // SQRTHF
  const float tmp = below ? x : 0.0f;
  x = x - 1.0f;
  e = e - (below ? 1.0f : 0.0f);
  x = x + tmp;
  const float z = x * x;
  float y = 7.0376836292E-2f;
  y = std::fmaf(y, x, -1.1514610310E-1f);
  y = std::fmaf(y, x, 1.1676998740E-1f);
  y = std::fmaf(y, x, -1.2420140846E-1f);
  y = std::fmaf(y, x, 1.4249322787E-1f);
  y = std::fmaf(y, x, -1.6668057665E-1f);
  y = std::fmaf(y, x, 2.0000714765E-1f);
  y = std::fmaf(y, x, -2.4999993993E-1f);
  y = std::fmaf(y, x, 3.3333331174E-1f);
  y = y * x;
  y = std::fmaf(y, z, e * -2.12194440e-4f);
  y = std::fmaf(-z, 0.5f, y);
  x = x + y;
  return std::fmaf(e, 0.693359375f, x);
}

// avx_mathfun sincos256_ps, one lane.
STIPPLE_NO_CONTRACT void cephes_sincosf(float x, float* s, float* c) {
  uint32_t xb = float_to_bits(x);
  uint32_t sign_sin = xb & 0x80000000u;
  x = bits_to_float(xb & 0x7fffffffu);
  float y = x * 1.27323954473516f;  // 4 / pi
  int32_t j = static_cast<int32_t>(y);
  j = (j + 1) & ~1;
  y = static_cast<float>(j);
  const uint32_t swap_sign_sin = static_cast<uint32_t>(j & 4) << 29;
  const bool sin_poly = (j & 2) == 0;
  // Extended precision modular arithmetic: x = ((x - y DP1) - y DP2) - y DP3.
  x = std::fmaf(y, -0.78515625f, x);
  x = std::fmaf(y, -2.4187564849853515625e-4f, x);
  x = std::fmaf(y, -3.77489497744594108e-8f, x);
  const uint32_t sign_cos = static_cast<uint32_t>(~(j - 2) & 4) << 29;
  sign_sin ^= swap_sign_sin;
  const float z = x * x;
  float yc = 2.443315711809948E-005f;  // cos polynomial, 0 <= x <= pi/4
  yc = std::fmaf(yc, z, -1.388731625493765E-003f);
  yc = std::fmaf(yc, z, 4.166664568298827E-002f);
  yc = yc * z;
  yc = std::fmaf(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;
  float ys = -1.9515295891E-4f;  // sin polynomial
  ys = std::fmaf(ys, z, 8.3321608736E-3f);
  ys = std::fmaf(ys, z, -1.6666654611E-1f);
  ys = ys * z;
  ys = std::fmaf(ys, x, x);
  // Select as the vector code does (mask, subtract, add), keeping its signed zeros.
  const float ysin2 = sin_poly ? ys : 0.0f;
  const float ysin1 = sin_poly ? 0.0f : yc;
  const float rest_s = ys - ysin2;
  const float rest_c = yc - ysin1;
  *s = bits_to_float(float_to_bits(ysin1 + ysin2) ^ sign_sin);
  *c = bits_to_float(float_to_bits(rest_c + rest_s) ^ sign_cos);
}

// torch normal_fill_16_AVX2 (mean 0, std 1), one chunk of 16.
STIPPLE_NO_CONTRACT void normal_fill_16_f32(float* data) {
  const float two_pi = static_cast<float>(2.0f * std::numbers::pi);
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];
    const float u2 = data[j + 8];
    const float radius = std::sqrt(-2.0f * cephes_logf(u1));
    const float theta = two_pi * u2;
    float s, c;
    cephes_sincosf(theta, &s, &c);
    data[j] = radius * c;
    data[j + 8] = radius * s;
  }
}

// torch normal_fill_16<double> (mean 0, std 1).
void normal_fill_16_f64(double* data) {
  for (int j = 0; j < 8; ++j) {
    const double u1 = 1.0 - data[j];
    const double u2 = data[j + 8];
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double theta = 2.0f * std::numbers::pi * u2;
    data[j] = radius * std::cos(theta);
    data[j + 8] = radius * std::sin(theta);
  }
}

constexpr uint32_t kStateMagic = 0x53524e47u;  // "SRNG"
constexpr uint32_t kStateVersion = 1;

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
template <typename T>
T get(const std::vector<uint8_t>& in, size_t& pos) {
  STIPPLE_CHECK(pos + sizeof(T) <= in.size(), "Generator::set_state: the state is truncated (",
                in.size(), " bytes)");
  T v;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return v;
}

}  // namespace

Generator::Generator(uint64_t seed) { manual_seed(seed); }

void Generator::manual_seed(uint64_t seed) {
  seed_ = seed;
  mt_[0] = static_cast<uint32_t>(seed & 0xffffffffu);
  for (int j = 1; j < kN; ++j) {
    mt_[j] = 1812433253u * (mt_[j - 1] ^ (mt_[j - 1] >> 30)) + static_cast<uint32_t>(j);
  }
  index_ = kN;  // twist before the first draw
  has_next_double_normal_ = false;
  next_double_normal_ = 0.0;
  has_next_float_normal_ = false;
  next_float_normal_ = 0.0f;
}

uint32_t Generator::next_u32() {
  if (index_ >= kN) {
    for (int i = 0; i < kN; ++i) {
      const uint32_t y = (mt_[i] & kUpperMask) | (mt_[(i + 1) % kN] & kLowerMask);
      mt_[i] = mt_[(i + kM) % kN] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
    }
    index_ = 0;
  }
  uint32_t y = mt_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

uint64_t Generator::next_u64() {
  const uint64_t hi = next_u32();
  const uint64_t lo = next_u32();
  return (hi << 32) | lo;
}

namespace {

inline float uniform_f32(Generator& g) {
  return static_cast<float>(g.next_u32() & ((1u << 24) - 1)) * (1.0f / 16777216.0f);
}
inline double uniform_f64(Generator& g) {
  return static_cast<double>(g.next_u64() & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}

}  // namespace

Tensor Generator::rand(const Shape& shape, DType dtype) {
  STIPPLE_CHECK(dtype == DType::kF32 || dtype == DType::kF64,
                "Generator::rand: dtype must be f32 or f64, got ", dtype_name(dtype));
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  if (dtype == DType::kF32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = uniform_f32(*this);
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = uniform_f64(*this);
  }
  return t;
}

Tensor Generator::randn(const Shape& shape, DType dtype) {
  STIPPLE_CHECK(dtype == DType::kF32 || dtype == DType::kF64,
                "Generator::randn: dtype must be f32 or f64, got ", dtype_name(dtype));
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  if (n < 16) {
    // at::normal_distribution<double>, one value per element, with the cached sine half.
    for (int64_t i = 0; i < n; ++i) {
      double v;
      if (has_next_double_normal_) {
        has_next_double_normal_ = false;
        v = next_double_normal_;
      } else {
        const double u1 = uniform_f64(*this);
        const double u2 = uniform_f64(*this);
        const double r = std::sqrt(-2.0 * std::log(1.0 - u2));
        const double theta = 2.0 * std::numbers::pi * u1;
        next_double_normal_ = r * std::sin(theta);
        has_next_double_normal_ = true;
        v = r * std::cos(theta);
      }
      if (dtype == DType::kF32) {
        t.data<float>()[i] = static_cast<float>(v);
      } else {
        t.data<double>()[i] = v;
      }
    }
    return t;
  }
  if (dtype == DType::kF32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = uniform_f32(*this);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16_f32(p + i);
    if (n % 16 != 0) {
      float* tail = p + n - 16;  // recompute the last 16 values
      for (int i = 0; i < 16; ++i) tail[i] = uniform_f32(*this);
      normal_fill_16_f32(tail);
    }
  } else {
    double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i) p[i] = uniform_f64(*this);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16_f64(p + i);
    if (n % 16 != 0) {
      double* tail = p + n - 16;
      for (int i = 0; i < 16; ++i) tail[i] = uniform_f64(*this);
      normal_fill_16_f64(tail);
    }
  }
  return t;
}

std::vector<uint8_t> Generator::state() const {
  std::vector<uint8_t> out;
  out.reserve(16 + 8 + 4 * kN + 4 + 2 + 8 + 4);
  put(out, kStateMagic);
  put(out, kStateVersion);
  put(out, seed_);
  for (int i = 0; i < kN; ++i) put(out, mt_[i]);
  put(out, static_cast<int32_t>(index_));
  put(out, static_cast<uint8_t>(has_next_double_normal_));
  put(out, next_double_normal_);
  put(out, static_cast<uint8_t>(has_next_float_normal_));
  put(out, next_float_normal_);
  return out;
}

void Generator::set_state(const std::vector<uint8_t>& bytes) {
  size_t pos = 0;
  STIPPLE_CHECK(get<uint32_t>(bytes, pos) == kStateMagic,
                "Generator::set_state: these bytes are not a stipple generator state");
  const uint32_t version = get<uint32_t>(bytes, pos);
  STIPPLE_CHECK(version == kStateVersion, "Generator::set_state: unsupported state version ",
                version, " (this build reads version ", kStateVersion, ")");
  Generator g;
  g.seed_ = get<uint64_t>(bytes, pos);
  for (int i = 0; i < kN; ++i) g.mt_[i] = get<uint32_t>(bytes, pos);
  g.index_ = get<int32_t>(bytes, pos);
  STIPPLE_CHECK(g.index_ >= 0 && g.index_ <= kN, "Generator::set_state: bad position ", g.index_);
  g.has_next_double_normal_ = get<uint8_t>(bytes, pos) != 0;
  g.next_double_normal_ = get<double>(bytes, pos);
  g.has_next_float_normal_ = get<uint8_t>(bytes, pos) != 0;
  g.next_float_normal_ = get<float>(bytes, pos);
  STIPPLE_CHECK(pos == bytes.size(), "Generator::set_state: ", bytes.size() - pos,
                " unexpected trailing bytes");
  *this = g;
}

}  // namespace stipple

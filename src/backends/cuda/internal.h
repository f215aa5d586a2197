// What the CUDA backend's .cu files share and nothing outside src/backends/cuda sees: error-check
// macros, the backend's stream and cuBLAS handle, launch helpers, device-side f16/bf16
// conversions that round exactly as src/core/dtype.cc does, and a strided indexer for kernels
// that walk views with arbitrary strides.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "core/error.h"
#include "core/tensor.h"
#include "ops/kernels.h"

namespace stipple::cuda {

[[noreturn]] void throw_cuda_error(const char* call, const char* file, int line, const char* what);

// cuBLAS's entry points that the backend calls. The library is opened on first use (dlopen;
// runtime.cu), not linked: its relocations alone make about 150 MiB resident in every process
// that links it, whether a GPU is used or not. Throws when it cannot be opened.
struct CublasApi {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  // (the header overloads cublasGemmStridedBatchedEx in C++: the exported one, spelled out)
  cublasStatus_t (*gemm_strided_batched_ex)(
      cublasHandle_t, cublasOperation_t, cublasOperation_t, int m, int n, int k,
      const void* alpha, const void* a, cudaDataType a_type, int lda, long long stride_a,
      const void* b, cudaDataType b_type, int ldb, long long stride_b, const void* beta, void* c,
      cudaDataType c_type, int ldc, long long stride_c, int batch, cublasComputeType_t compute,
      cublasGemmAlgo_t algo) = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};
const CublasApi& cublas_api();

}  // namespace stipple::cuda

// Throws stipple::Error naming the failed call, where it is, and CUDA's own words for the error.
#define CUDA_CHECK(call)                                                                \
  do {                                                                                  \
    const cudaError_t err_ = (call);                                                    \
    if (err_ != cudaSuccess)                                                            \
      ::stipple::cuda::throw_cuda_error(#call, __FILE__, __LINE__, cudaGetErrorString(err_)); \
  } while (0)

#define CUBLAS_CHECK(call)                                                              \
  do {                                                                                  \
    const cublasStatus_t st_ = (call);                                                  \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                   \
      ::stipple::cuda::throw_cuda_error(#call, __FILE__, __LINE__,                      \
                                        ::stipple::cuda::cublas_api().status_string(st_)); \
  } while (0)

// After a kernel launch: reports a bad configuration or an earlier asynchronous fault.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace stipple::cuda {

// The backend's one stream (created on first use, non-blocking) and the cuBLAS handle bound to it.
cudaStream_t stream();
cublasHandle_t cublas();
// Whether f32 GEMMs may use TF32 tensor cores (default on; STIPPLE_CUDA_TF32=0 turns it off).
bool tf32_enabled();

constexpr int kThreads = 256;

// Blocks of `threads` covering n items, capped so that grid-stride loops cover the rest.
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > (1 << 20)) b = 1 << 20;
  return static_cast<unsigned>(b);
}

// A fresh plain contiguous tensor on the device.
inline Tensor dev_empty(const Shape& shape, DType dtype = DType::kF32) {
  return Tensor::empty(shape, dtype, Device::kCUDA);
}
inline Tensor dev_zeros(const Shape& shape, DType dtype = DType::kF32) {
  Tensor t = dev_empty(shape, dtype);
  fill_zero(t.raw_data(), static_cast<size_t>(t.numel()) * dtype_size(dtype));
  return t;
}

// Checks that a kernel input is an f32 tensor on the device, contiguous when `contiguous`.
inline void require_f32(const Tensor& t, const char* what, bool contiguous = true) {
  STIPPLE_CHECK(t.defined(), "CUDA kernel: ", what, " is undefined");
  STIPPLE_CHECK(t.device() == Device::kCUDA, "CUDA kernel: ", what, " is not on the CUDA device");
  STIPPLE_CHECK(t.dtype() == DType::kF32, "CUDA kernel: ", what, " must be f32, not ",
                dtype_name(t.dtype()));
  STIPPLE_CHECK(!t.is_blocked(), "CUDA kernel: ", what, " is channel-blocked (CPU-only layout)");
  STIPPLE_CHECK(!contiguous || t.is_contiguous(), "CUDA kernel: ", what, " must be contiguous");
}
inline const float* cf(const Tensor& t) { return static_cast<const float*>(t.raw_data()); }
inline float* mf(const Tensor& t) { return static_cast<float*>(t.raw_data()); }

// The tensor as plain contiguous `dtype` on the device: itself, or a converted copy (defined in
// data.cu, through the backend's copy kernel; f32 -> bf16 rounds to nearest, ties to even, as
// core/dtype.cc does). as_f32_contiguous is its f32 case.
Tensor as_contiguous(const Tensor& t, DType dtype);
Tensor as_f32_contiguous(const Tensor& t);

// Row-major batched GEMM: C[b] = alpha op(A[b]) op(B[b]) + beta C[b], C [M, N] with leading
// dimension ldc; A is [M, K] (lda) or, when ta, stored [K, M]; B is [K, N] or, when tb, [N, K].
// A stride of 0 repeats one matrix over the batch. f32 throughout (TF32 math per tf32_enabled()).
void gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
              int64_t lda, int64_t stride_a, const float* b, int64_t ldb, int64_t stride_b,
              float beta, float* c, int64_t ldc, int64_t stride_c, int64_t batch);

// ---- device-side dtype conversions, bit-for-bit as in src/core/dtype.cc ----

__host__ __device__ inline float bits_to_f32(uint32_t b) {
  float f;
  memcpy(&f, &b, 4);
  return f;
}
__host__ __device__ inline uint32_t f32_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return b;
}

__host__ __device__ inline float dev_f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    exp = 127 - 15 + 1;  // subnormal half: shift the mantissa up until its leading one shows
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    return bits_to_f32(sign | (exp << 23) | ((mant & 0x3ffu) << 13));
  }
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return bits_to_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

__host__ __device__ inline uint16_t dev_f32_to_f16(float f) {
  const uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs < 0x38800000u) {
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t r = m >> shift;
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = (abs >> 13) - ((127 - 15) << 10);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

__host__ __device__ inline float dev_bf16_to_f32(uint16_t h) {
  return bits_to_f32(static_cast<uint32_t>(h) << 16);
}

__host__ __device__ inline uint16_t dev_f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// ---- walking strided views ----

constexpr int kMaxDims = 8;

// Up to kMaxDims dims and, per operand, its strides (in elements). offset(k, lin) gives operand
// k's element offset for the row-major linear index lin. Built by make_indexer, which drops size-1
// dims and merges dims that are contiguous with each other in every operand.
template <int kOperands>
struct Indexer {
  int nd = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[kOperands][kMaxDims] = {};

  __device__ __forceinline__ void offsets(int64_t lin, int64_t* out) const {
#pragma unroll
    for (int k = 0; k < kOperands; ++k) out[k] = 0;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t i = lin % size[d];
      lin /= size[d];
#pragma unroll
      for (int k = 0; k < kOperands; ++k) out[k] += i * stride[k][d];
    }
  }
};

template <int kOperands>
Indexer<kOperands> make_indexer(const Shape& shape, const Shape* const (&strides)[kOperands]) {
  std::vector<int64_t> sz;
  std::vector<std::vector<int64_t>> st(kOperands);
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sz.empty();
    for (int k = 0; k < kOperands && merge; ++k)
      merge = st[k].back() == (*strides[k])[d] * shape[d];
    if (merge) {
      sz.back() *= shape[d];
      for (int k = 0; k < kOperands; ++k) st[k].back() = (*strides[k])[d];
    } else {
      sz.push_back(shape[d]);
      for (int k = 0; k < kOperands; ++k) st[k].push_back((*strides[k])[d]);
    }
  }
  STIPPLE_CHECK(sz.size() <= static_cast<size_t>(kMaxDims), "CUDA kernel: a strided view of ",
                shape_str(shape), " has more than ", kMaxDims, " non-mergeable dims");
  Indexer<kOperands> ix;
  ix.nd = static_cast<int>(sz.size());
  for (int d = 0; d < ix.nd; ++d) {
    ix.size[d] = sz[d];
    for (int k = 0; k < kOperands; ++k) ix.stride[k][d] = st[k][d];
  }
  return ix;
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32 values.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by an earlier call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nwarps ? scratch[lane] : T(0);
  return warp_sum(v);
}

// Per-kernel-file fills of the CUDA table (kernel_table.cu calls them).
void fill_cuda_data(KernelTable& t);         // data.cu: copy, embedding, resample, adamw
void fill_cuda_elementwise(KernelTable& t);  // elementwise.cu
void fill_cuda_reduce(KernelTable& t);       // reduce.cu: sum, max, softmax
void fill_cuda_linalg(KernelTable& t);       // linalg.cu: matmul, conv2d
void fill_cuda_norm(KernelTable& t);         // norm.cu: layer norm, group norm
void fill_cuda_attention(KernelTable& t);    // attention.cu

}  // namespace stipple::cuda

// Micro-benchmarks of the fast linear-algebra kernels at Stable Diffusion 1.5 sizes: the linear
// layers' matmuls (x[4096, 320] @ W^T, 64x64 latents flattened) and a 3x3 320->320 conv at 64x64,
// in a blocked chain (input already in oneDNN's layout, output kept blocked) and in plain NCHW,
// plus conv backward at 32x32. Each reports GFLOP/s (2 flops per multiply-add).
//
//   OMP_NUM_THREADS=2 ./build/stipple_bench_kernels --benchmark_filter='Matmul|Linear|Conv'
//
// Quiet runs on the 2-vCPU development VM (AVX-512; oneDNN 2.6 picks brg:avx512_core matmul and
// jit:avx512_core convs), GFLOP/s: matmul 4096x320x320 319-336, 4096x1280x320 305-328; linear op
// with bias 289-324 / 267-281; 3x3 conv blocked chain 350-369, plain NCHW 334-354; backward data
// 266-304, backward weight 272-304. The VM is shared: under load the same runs read 3-5x lower.
#include <benchmark/benchmark.h>

#include "bench_util.h"

#include <random>

#include "autograd/grad_mode.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace stipple {
namespace {

using bench::random_input;

void set_gflops(benchmark::State& state, double flops) {
  bench::set_rate(state, "GFLOP/s", flops);
}

// x[M, K] @ W[N, K]^T, as in nn.Linear, by one of the fast table's matmul kernels: f32, or bf16
// (ops::MatmulPrecision::kBF16: both operands rounded, f32 sums; the roundings included, the
// label says whether the CPU has bf16 instructions). Sizes: SD 1.5's 64x64 latents, and the
// Fashion-MNIST DiT's training step (batch 64 x 64 tokens, width 192, its 4x feed-forward).
void run_matmul(benchmark::State& state, Tensor (*KernelTable::*kernel)(const Tensor&,
                                                                      const Tensor&, bool, bool)) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const Tensor x = random_input({1, m, k}, 1);
  const Tensor w = random_input({1, n, k}, 2);
  const KernelTable& kt = fast_kernels();
  if (kernel == &KernelTable::matmul_bf16)
    state.SetLabel(kt.native_bf16_matmul ? "bf16 instructions" : "emulated: f32 on rounded values");
  for (auto _ : state) benchmark::DoNotOptimize((kt.*kernel)(x, w, false, true));
  set_gflops(state, 2.0 * m * n * k);
}
void BM_Matmul(benchmark::State& state) { run_matmul(state, &KernelTable::matmul); }
void BM_MatmulBf16(benchmark::State& state) { run_matmul(state, &KernelTable::matmul_bf16); }
void matmul_sizes(benchmark::internal::Benchmark* b) {
  b->Args({4096, 320, 320})->Args({4096, 1280, 320});
  b->Args({4096, 768, 192})->Args({4096, 192, 768})->UseRealTime();
}
BENCHMARK(BM_Matmul)->Apply(matmul_sizes);
BENCHMARK(BM_MatmulBf16)->Apply(matmul_sizes);

// The whole op, ops::linear with bias, at the same sizes: the matmul plus the bias pass.
void BM_LinearOp(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const Tensor x = random_input({m, k}, 1);
  const Tensor w = random_input({n, k}, 2);
  const Tensor b = random_input({n}, 3);
  autograd::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(ops::linear(x, w, b));
  set_gflops(state, 2.0 * m * n * k);
}
BENCHMARK(BM_LinearOp)->Args({4096, 320, 320})->Args({4096, 1280, 320})->UseRealTime();

ops::Conv2dParams pad1() {
  ops::Conv2dParams p;
  p.pad_h = p.pad_w = 1;
  return p;
}

double conv_flops(int64_t n, int64_t c, int64_t o, int64_t ho, int64_t wo, int64_t k) {
  return 2.0 * n * o * ho * wo * c * k * k;
}

// 3x3 320->320 at 64x64. blocked = 1: the input is already in the layout the conv returns and the
// output stays in it (a chain of convs); blocked = 0: plain NCHW in and out.
void BM_Conv3x3(benchmark::State& state) {
  const bool blocked = state.range(0) != 0;
  const int64_t c = 320, h = 64, w = 64;
  const KernelTable& kt = fast_kernels();
  Tensor x = random_input({1, c, h, w}, 3);
  const Tensor wt = random_input({c, c, 3, 3}, 4);
  const Tensor b = random_input({c}, 5);
  if (blocked) {
    x = kt.conv2d(x, wt, b, pad1(), true);
    state.SetLabel(x.describe());
  }
  for (auto _ : state) benchmark::DoNotOptimize(kt.conv2d(x, wt, b, pad1(), blocked));
  set_gflops(state, conv_flops(1, c, c, h, w, 3));
}
BENCHMARK(BM_Conv3x3)->Arg(1)->Arg(0)->UseRealTime();

// Conv backward at 3x3 320->320, 32x32: data (grad_x) and weights (+ bias).
void BM_ConvBackwardData(benchmark::State& state) {
  const int64_t c = 320, h = 32, w = 32;
  const Tensor gy = random_input({1, c, h, w}, 6);
  const Tensor wt = random_input({c, c, 3, 3}, 7);
  const KernelTable& kt = fast_kernels();
  for (auto _ : state)
    benchmark::DoNotOptimize(kt.conv2d_backward_data(gy, wt, {1, c, h, w}, pad1()));
  set_gflops(state, conv_flops(1, c, c, h, w, 3));
}
BENCHMARK(BM_ConvBackwardData)->UseRealTime();

void BM_ConvBackwardWeight(benchmark::State& state) {
  const int64_t c = 320, h = 32, w = 32;
  const Tensor x = random_input({1, c, h, w}, 8);
  const Tensor gy = random_input({1, c, h, w}, 9);
  const KernelTable& kt = fast_kernels();
  for (auto _ : state) {
    Tensor gw, gb;
    kt.conv2d_backward_weight(x, gy, {c, c, 3, 3}, pad1(), &gw, &gb);
    benchmark::DoNotOptimize(gw);
  }
  set_gflops(state, conv_flops(1, c, c, h, w, 3));
}
BENCHMARK(BM_ConvBackwardWeight)->UseRealTime();

}  // namespace
}  // namespace stipple

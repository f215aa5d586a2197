// Micro-benchmarks of the fast attention and normalisation kernels at Stable Diffusion 1.5 sizes:
// self-attention over the 64x64 latent's 4096 tokens (8 heads x 40 dims, the first UNet level),
// cross-attention to 77 text tokens, a 1024-token level (8 x 80), attention backward, and
// GroupNorm(32) on [1, 320, 64, 64] in plain NCHW and in the blocked layouts convs keep, plus
// layer norm and softmax. Attention reports GFLOP/s (4 * Lq * Lk * D * H: two matmuls), the
// memory-bound kernels report GB/s (one read and one write of the tensor).
//
//   OMP_NUM_THREADS=2 ./build/stipple_bench_kernels --benchmark_filter='Attention|Norm|Softmax'
#include <benchmark/benchmark.h>

#include "bench_util.h"
#include <hwy/targets.h>

#include <cmath>
#include <random>

#include "ops/kernels.h"
#include "ops/ops.h"

namespace stipple {
namespace {

using bench::random_input;
using bench::set_rate;

// Args: Lq, Lk, heads, head dim; batch 1.
void BM_Attention(benchmark::State& state) {
  const int64_t lq = state.range(0), lk = state.range(1), h = state.range(2), d = state.range(3);
  const Tensor q = random_input({1, h, lq, d}, 1);
  const Tensor k = random_input({1, h, lk, d}, 2);
  const Tensor v = random_input({1, h, lk, d}, 3);
  const KernelTable& kt = fast_kernels();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (auto _ : state) benchmark::DoNotOptimize(kt.attention(q, k, v, Tensor(), scale, false));
  set_rate(state, "GFLOP/s", 4.0 * lq * lk * d * h);
}
BENCHMARK(BM_Attention)
    ->Args({4096, 4096, 8, 40})  // SD 1.5 level 1 self-attention
    ->Args({4096, 77, 8, 40})    // SD 1.5 level 1 cross-attention
    ->Args({1024, 1024, 8, 80})  // SD 1.5 level 2 self-attention
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The same on the AVX2 code path (what CPUs without AVX-512 run): Highway forced to AVX2. Run
// with OPENBLAS_CORETYPE=Haswell to put OpenBLAS's P V products on AVX2 as well.
void BM_AttentionAvx2(benchmark::State& state) {
  if (!(hwy::SupportedTargets() & HWY_AVX2)) {
    state.SkipWithError("this CPU has no AVX2");
    return;
  }
  hwy::SetSupportedTargetsForTest(HWY_AVX2);
  BM_Attention(state);
  hwy::SetSupportedTargetsForTest(0);
}
BENCHMARK(BM_AttentionAvx2)
    ->Args({4096, 4096, 8, 40})
    ->Args({4096, 77, 8, 40})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Backward: counts the five products a backward needs (S, dP, dV, dK, dQ: 10 * Lq * Lk * D per
// head); the two-pass kernel does seven (S and dP once per pass).
void BM_AttentionBackward(benchmark::State& state) {
  const int64_t lq = state.range(0), lk = state.range(1), h = state.range(2), d = state.range(3);
  const Tensor q = random_input({1, h, lq, d}, 1);
  const Tensor k = random_input({1, h, lk, d}, 2);
  const Tensor v = random_input({1, h, lk, d}, 3);
  const Tensor go = random_input({1, h, lq, d}, 4);
  const KernelTable& kt = fast_kernels();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const AttentionResult r = kt.attention(q, k, v, Tensor(), scale, false);
  for (auto _ : state) {
    Tensor gq, gk, gv;
    kt.attention_backward(q, k, v, Tensor(), scale, false, r.out, r.lse, go, &gq, &gk, &gv);
    benchmark::DoNotOptimize(gq);
  }
  set_rate(state, "GFLOP/s", 10.0 * lq * lk * d * h);
}
BENCHMARK(BM_AttentionBackward)
    ->Args({1024, 1024, 8, 40})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// GroupNorm(32) on [1, 320, 64, 64]. Arg: 0 plain [N, C, S], 8 or 16 blocked nChw{b}c.
void BM_GroupNorm(benchmark::State& state) {
  const int block = static_cast<int>(state.range(0));
  const Shape shape{1, 320, 64, 64};
  Tensor x = random_input(shape, 5);
  x = block ? ops::to_blocked(x, block) : x.reshape({1, 320, 64 * 64});
  const Tensor w = random_input({320}, 6), b = random_input({320}, 7);
  const KernelTable& kt = fast_kernels();
  for (auto _ : state) benchmark::DoNotOptimize(kt.group_norm(x, 32, w, b, 1e-5f));
  set_rate(state, "GB/s", 2.0 * 4 * shape_numel(shape));
}
BENCHMARK(BM_GroupNorm)->Arg(0)->Arg(8)->Arg(16)->UseRealTime();

// The reference twin, for scale (plain layout only).
void BM_GroupNormReference(benchmark::State& state) {
  const Tensor x = random_input({1, 320, 64 * 64}, 5);
  const Tensor w = random_input({320}, 6), b = random_input({320}, 7);
  const KernelTable& kt = reference_kernels();
  for (auto _ : state) benchmark::DoNotOptimize(kt.group_norm(x, 32, w, b, 1e-5f));
  set_rate(state, "GB/s", 2.0 * 4 * x.numel());
}
BENCHMARK(BM_GroupNormReference)->UseRealTime();

// LayerNorm over [4096, 320] (the transformer blocks' norms at level 1).
void BM_LayerNorm(benchmark::State& state) {
  const Tensor x = random_input({4096, 320}, 8);
  const Tensor w = random_input({320}, 9), b = random_input({320}, 10);
  const KernelTable& kt = fast_kernels();
  for (auto _ : state) benchmark::DoNotOptimize(kt.layer_norm(x, w, b, 1e-5f));
  set_rate(state, "GB/s", 2.0 * 4 * x.numel());
}
BENCHMARK(BM_LayerNorm)->UseRealTime();

// Softmax over rows of 4096 scores (one query tile of a non-fused attention).
void BM_Softmax(benchmark::State& state) {
  const Tensor x = random_input({1024, 4096}, 11);
  const KernelTable& kt = fast_kernels();
  for (auto _ : state) benchmark::DoNotOptimize(kt.softmax(x));
  set_rate(state, "GB/s", 2.0 * 4 * x.numel());
}
BENCHMARK(BM_Softmax)->UseRealTime();

}  // namespace
}  // namespace stipple

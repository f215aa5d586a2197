// Google Benchmark entry point for stipple_bench_kernels; the cases live in bench/bench_*.cc.
#include <benchmark/benchmark.h>

BENCHMARK_MAIN();

#!/usr/bin/env bash
# Sets up (Debian packages), builds, runs every test through ctest, installs the library and
# builds and runs examples/embed against the installed package, runs the unit tests again built
# with AddressSanitizer and UndefinedBehaviorSanitizer, then runs each parser fuzzer (fuzz/,
# clang with ASan + UBSan) for 20 seconds. What CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase's wall time, to keep CI under its 20 minutes.
phase_start=$SECONDS
phase() {
  echo "test.sh: $1 took $((SECONDS - phase_start)) s (total $SECONDS s)"
  phase_start=$SECONDS
}
bash scripts/setup.sh --test
phase "setup"
# With MPI: the data-parallel training tests (tests/mpi/) run 2 ranks on this machine. With the
# CUDA backend too where the CUDA toolkit is installed (it is not a Debian package setup.sh
# installs): the backend and tests/test_cuda.cc compile, and without a GPU its tests skip, saying
# why, while every other test runs on the CPU of a library that carries the backend.
cuda=OFF
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then cuda=ON; fi
echo "test.sh: CUDA backend: $cuda"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSTIPPLE_MPI=ON -DSTIPPLE_CUDA=$cuda >/dev/null
cmake --build build -j2
phase "the build"
(
  cd build
  # Passive waiting: two test binaries share the two cores, and spinning OpenMP threads would
  # starve each other. Benchmarks (not run here) keep the default active waiting.
  OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive ctest --output-on-failure --timeout 900 -j2
)
phase "the tests"
# The public API as an application sees it: installed headers, library and CMake package only.
rm -rf build/install build/embed
cmake --install build --prefix build/install >/dev/null
cmake -S examples/embed -B build/embed -DCMAKE_PREFIX_PATH="$PWD/build/install" >/dev/null
cmake --build build/embed -j2 >/dev/null
build/embed/embed models/fashion-mnist-dit build/embed/sneaker.png sneaker
test -s build/embed/sneaker.png
# The same program through pkg-config instead of CMake.
PKG_CONFIG_PATH="$PWD/build/install/lib/pkgconfig" g++ -std=c++20 -O1 examples/embed/main.cc \
  $(PKG_CONFIG_PATH="$PWD/build/install/lib/pkgconfig" pkg-config --cflags --libs stipple) \
  -o build/embed/embed-pkgconfig
build/embed/embed-pkgconfig models/fashion-mnist-dit build/embed/bag.png bag >/dev/null
test -s build/embed/bag.png
echo "examples/embed: built against the installed package (CMake and pkg-config); wrote images"
phase "the installed-package example"
# Every test again under AddressSanitizer + UndefinedBehaviorSanitizer (-O1: a quicker build; any
# report fails the test). Not the load test and the browser test: they measure, and the browser
# is not instrumented; not the Shipped* tests: they hold the shipped models' outputs (checked in
# the run above) and under ASan ran over four minutes (of 340 s of wall time); and without MPI (the
# data-parallel tests ran in the build above).
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Asan -DCMAKE_CXX_FLAGS_ASAN="-O1 -g1" \
  -DSTIPPLE_SANITIZE=ON -DSTIPPLE_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j2
phase "the ASan build"
(
  cd build-asan
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive \
    ctest --output-on-failure --timeout 900 -j2 -E 'server\.load_wrk|Chromium|^Shipped'
)
phase "the ASan tests"
# The parsers under libFuzzer, 20 s each from the seed corpus, two at a time (scripts/fuzz.sh;
# docs/fuzzing.md; the long runs are docs/fuzzing.md's hour per parser).
STIPPLE_FUZZ_PARALLEL=2 bash scripts/fuzz.sh 20
phase "fuzzing"

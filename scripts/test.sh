#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs every test through ctest. What CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
cd build
# Passive waiting: two test binaries share the two cores, and spinning OpenMP threads would
# starve each other. Benchmarks (not run here) keep the default active waiting.
OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive ctest --output-on-failure --timeout 900 -j2

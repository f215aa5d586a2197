#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs every test through ctest. What CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2
cd build
OMP_NUM_THREADS=2 ctest --output-on-failure --timeout 900 -j2

#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs the main job: until a trained model ships in
# models/, the end-to-end demo (train a small diffusion model, sample, write demo.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target stipple_cli
./build/stipple demo --out demo.png "$@"

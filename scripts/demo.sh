#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs the main job: 16 sneakers from the class-conditional
# DiT that ships in models/fashion-mnist-dit (trained here by `stipple train`), as one grid,
# sneakers.png. Extra arguments go to `stipple generate` (e.g. --class-label bag).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target stipple_cli
./build/stipple generate --model models/fashion-mnist-dit --class-label sneaker --num-images 16 \
    --seed 1 --out sneakers.png "$@"

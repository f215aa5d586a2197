#!/usr/bin/env bash
# Sets up (Debian packages), builds, and runs the main job: 16 emoji drawn from the CLDR labels in
# examples/emoji-prompts.txt by the text-to-image model that ships in models/emoji-t2i (its VAE,
# CLIP text encoder and DiT all trained here by stipple), as one 4x4 grid, emoji.png. Extra
# arguments go to `stipple generate` (e.g. --cfg 7 or --seed 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target stipple_cli
./build/stipple generate --model models/emoji-t2i --prompt-file examples/emoji-prompts.txt \
    --seed 1 --out emoji.png "$@"

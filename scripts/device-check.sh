#!/usr/bin/env bash
# The GPU check, as one call on a machine with an NVIDIA GPU: builds stipple with the CUDA
# backend and the reference CPU kernels (-DSTIPPLE_CUDA=ON -DSTIPPLE_CPU_FAST=OFF: no oneDNN,
# OpenBLAS or Highway, which such a machine lacks), against the packages scripts/device-deps.sh
# gathered into .device-deps/ where they are there, then runs the CUDA kernels against the CPU
# reference (tests/test_cuda.cc) and the device seam (tests/test_device.cc), and writes
# device-check.json (GPU, toolkit, build time, each suite's counts) with the suites' own JSON
# reports beside it, into $OUT when set (the device tool's output folder), else build-device/.
# Then, while the time allows (STIPPLE_DEVICE_CHECK_BUDGET_S, default 420 s from the start), the
# benchmarks of the CUDA issue's table with the command built the same way (no server): an SD
# 1.5-shaped generation at 512x512 with CFG on the GPU (`stipple bench generate --device cuda`;
# random f16 weights written by `stipple bench checkpoint`) and the Fashion-MNIST DiT (depth 8,
# width 192, patch 4) training at batch 64 (f32) and 512 (bf16 matmuls, then f32; `stipple train
# --device cuda`), each with its output in bench-*.txt and its figures in device-check.json.
#
# Prepare here, then run there in one call:
#   bash scripts/device-deps.sh
#   device run: bash scripts/device-check.sh   (carry: .device-deps; about 3 to 5 minutes)
# Exit status: 0 when every suite passed, 1 when one failed, 2 when the build failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/build-device}
mkdir -p "$out"
log="$out/device-check.log"
: > "$log"
say() { echo "device-check: $*" | tee -a "$log"; }
json_escape() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' 2>/dev/null || echo '""'; }

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
toolkit=$("$nvcc_bin" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)
say "GPU: ${gpu:-none found}; CUDA toolkit: ${toolkit:-none found}; $(nproc) cores"

args=(-DCMAKE_BUILD_TYPE=Release -DSTIPPLE_CUDA=ON -DSTIPPLE_CPU_FAST=OFF -DSTIPPLE_BUILD_CLI=ON
      -DSTIPPLE_BUILD_SERVER=OFF -DSTIPPLE_BUILD_BENCH=OFF -DSTIPPLE_MPI=OFF
      -DCMAKE_CUDA_COMPILER="$nvcc_bin")
deps=$root/.device-deps
if [ -d "$deps/usr" ]; then
  lib=$deps/usr/lib/x86_64-linux-gnu
  args+=(-DCMAKE_PREFIX_PATH="$deps/usr" -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON
         -DPNG_PNG_INCLUDE_DIR="$deps/usr/include" -DPNG_LIBRARY="$lib/libpng16.a"
         -DZLIB_INCLUDE_DIR="$deps/usr/include" -DZLIB_LIBRARY="$lib/libz.a"
         -DSTIPPLE_UTF8PROC_INCLUDE="$deps/usr/include"
         -DSTIPPLE_UTF8PROC_LIBRARY="$lib/libutf8proc.a"
         -DSTIPPLE_GTEST_SOURCE_DIR="$deps/usr/src/googletest")
  say "using the carried packages in .device-deps"
fi
command -v ninja >/dev/null 2>&1 && args+=(-G Ninja)

start=$SECONDS
build_ok=true
if ! cmake -S . -B build-device "${args[@]}" >>"$log" 2>&1; then
  build_ok=false
  say "cmake configure failed (see device-check.log)"
elif ! cmake --build build-device -j "$(nproc)" --target test_cuda test_device >>"$log" 2>&1; then
  build_ok=false
  say "build failed (see device-check.log)"
elif ! cmake --build build-device -j "$(nproc)" --target stipple_cli >>"$log" 2>&1; then
  say "the command did not build (see device-check.log): no benchmarks"
fi
build_s=$((SECONDS - start))
say "build: $build_ok in ${build_s} s"

suites=""
status=0
if $build_ok; then
  for t in test_device test_cuda; do
    s0=$SECONDS
    timeout 300 "build-device/$t" --gtest_output="json:$out/$t.json" >>"$log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && status=1
    counts=$(python3 - "$out/$t.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
tests = [t for s in r.get("testsuites", []) for t in s.get("testsuite", [])]
skipped = sum(1 for t in tests if t.get("result") == "SKIPPED")
failed = sum(1 for t in tests if t.get("failures"))
print(f'"tests": {len(tests)}, "failed": {failed}, "skipped": {skipped}')
EOF
)
    say "$t: exit $rc in $((SECONDS - s0)) s; ${counts:-no report}"
    suites+="${suites:+, }\"$t\": {\"exit\": $rc, \"seconds\": $((SECONDS - s0))${counts:+, $counts}}"
  done
else
  status=2
fi

# ---- benchmarks, while the time allows ----
budget=${STIPPLE_DEVICE_CHECK_BUDGET_S:-420}
cli=$root/build-device/stipple
benches=""
add_bench() { benches+="${benches:+, }\"$1\": $2"; }
time_left() { echo $((budget - SECONDS)); }
if $build_ok && [ -x "$cli" ]; then
  tmp=$(mktemp -d)
  # SD 1.5 at 512x512, CFG 7.5, f16 weights as stored: s/step and the GPU's peak memory
  if [ "$(time_left)" -gt 120 ] &&
     timeout 150 "$cli" bench checkpoint --family sd15 --out "$tmp/sd15" \
       --tokenizer models/emoji-t2i/tokenizer >>"$log" 2>&1; then
    timeout "$(( $(time_left) > 200 ? 200 : $(time_left) ))" "$cli" bench generate \
      --model "$tmp/sd15" --device cuda --steps 6 >"$out/bench-sd15.txt" 2>&1
    rc=$?
    step=$(grep -o '[0-9.]* s/step' "$out/bench-sd15.txt" | head -1 | cut -d' ' -f1)
    gpu_mb=$(grep -o 'GPU memory: peak [0-9]*' "$out/bench-sd15.txt" | grep -o '[0-9]*$')
    say "SD 1.5 512x512 on the GPU: exit $rc, ${step:-?} s/step, GPU peak ${gpu_mb:-?} MB"
    add_bench sd15_512_step_seconds "${step:-null}"
    add_bench sd15_512_gpu_peak_mb "${gpu_mb:-null}"
    rm -rf "$tmp/sd15"
  else
    say "SD 1.5 benchmark skipped (time or checkpoint; see device-check.log)"
  fi
  # Fashion-MNIST DiT training: steps/s at batch 64 (f32) and images/s at batch 512 (bf16
  # matmuls, the table's autocast row, then f32), from log.csv (the rows after the first, past
  # the start-up)
  data=$root/.device-deps/fashion-mnist
  for run in "64 f32" "512 bf16" "512 f32"; do
    read -r batch precision <<<"$run"
    name="b${batch}_${precision}"
    steps=$([ $batch = 64 ] && echo 300 || echo 120)
    if [ ! -f "$data/train-images-idx3-ubyte.gz" ] || [ "$(time_left)" -lt 60 ]; then
      say "training benchmark at batch $batch ($precision) skipped (no carried data or no time)"
      continue
    fi
    timeout "$(( $(time_left) > 180 ? 180 : $(time_left) ))" "$cli" train --device cuda \
      --data-dir "$data" --out "$tmp/train-$name" --depth 8 --width 192 --heads 3 --patch 4 \
      --batch-size $batch --matmul-precision $precision --steps $steps --log-every 20 \
      --sample-every 0 --checkpoint-every 100000 -q >"$out/bench-train-$name.txt" 2>&1
    rc=$?
    cp "$tmp/train-$name/log.csv" "$out/train-$name-log.csv" 2>/dev/null
    rate=$(awk -F, -v b=$batch 'NR == 2 {s0 = $1; t0 = $NF} NR > 2 {s1 = $1; t1 = $NF}
      END {if (t1 > t0) {r = (s1 - s0) / (t1 - t0); printf "%.2f %.0f", r, r * b}}' \
      "$tmp/train-$name/log.csv" 2>/dev/null)
    say "training at batch $batch ($precision matmuls) on the GPU: exit $rc, ${rate:-?} (steps/s, images/s)"
    add_bench "train_${name}_steps_per_second" "$(echo "${rate:-null}" | cut -d' ' -f1)"
  done
  rm -rf "$tmp"
fi

cat > "$out/device-check.json" <<EOF
{"gpu": $(echo "$gpu" | json_escape), "toolkit": $(echo "$toolkit" | json_escape),
 "build_ok": $build_ok, "build_seconds": $build_s, "suites": {$suites},
 "benchmarks": {$benches}, "status": $status}
EOF
tail -n 60 "$log" > "$out/device-check-tail.log"
say "wrote $out/device-check.json (status $status)"
exit $status

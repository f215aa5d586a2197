#!/usr/bin/env bash
# The GPU check, as one call on a machine with an NVIDIA GPU: builds stipple with the CUDA
# backend and the reference CPU kernels (-DSTIPPLE_CUDA=ON -DSTIPPLE_CPU_FAST=OFF: no oneDNN,
# OpenBLAS or Highway, which such a machine lacks), against the packages scripts/device-deps.sh
# gathered into .device-deps/ where they are there, then runs the CUDA kernels against the CPU
# reference (tests/test_cuda.cc) and the device seam (tests/test_device.cc), and writes
# device-check.json (GPU, toolkit, build time, each suite's counts) with the suites' own JSON
# reports beside it, into $OUT when set (the device tool's output folder), else build-device/.
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

args=(-DCMAKE_BUILD_TYPE=Release -DSTIPPLE_CUDA=ON -DSTIPPLE_CPU_FAST=OFF -DSTIPPLE_BUILD_CLI=OFF
      -DSTIPPLE_BUILD_BENCH=OFF -DSTIPPLE_MPI=OFF -DCMAKE_CUDA_COMPILER="$nvcc_bin")
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

cat > "$out/device-check.json" <<EOF
{"gpu": $(echo "$gpu" | json_escape), "toolkit": $(echo "$toolkit" | json_escape),
 "build_ok": $build_ok, "build_seconds": $build_s, "suites": {$suites}, "status": $status}
EOF
tail -n 60 "$log" > "$out/device-check-tail.log"
say "wrote $out/device-check.json (status $status)"
exit $status

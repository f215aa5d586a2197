#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang with ASan + UBSan) in build-fuzz and runs each for
# SECONDS_PER_TARGET seconds (default 60), one after another, starting from the seed corpus in
# fuzz/corpus/<target>/. Prints, per target, the executions, the final coverage (libFuzzer's
# cov: and ft:) and the crashes found; exits 1 when any target found one.
#
# New corpus inputs go to build-fuzz/corpus/<target>/ and crash inputs to
# build-fuzz/crashes/<target>/ (crash-*, leak-*, timeout-*, oom-*), never into the repository.
# Reproduce a crash with: build-fuzz/fuzz/fuzz_<target> build-fuzz/crashes/<target>/crash-...
#
# Limits: 10 s per input, 2 GB in all, and no single allocation over 512 MB (the inputs are at
# most 128 KB: a larger allocation is a length field taken on trust).
#
# Environment: STIPPLE_FUZZ_TARGETS (a subset, e.g. "png json_config"), STIPPLE_FUZZ_JOBS (build
# jobs, default 2), STIPPLE_FUZZ_PARALLEL (targets run at once, default 1; CI uses 2, one per
# core), STIPPLE_FUZZ_BUILD (the build folder, default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
SECONDS_PER_TARGET="${1:-60}"
BUILD="${STIPPLE_FUZZ_BUILD:-$ROOT/build-fuzz}"
JOBS="${STIPPLE_FUZZ_JOBS:-2}"
PARALLEL="${STIPPLE_FUZZ_PARALLEL:-1}"
TARGETS=(${STIPPLE_FUZZ_TARGETS:-safetensors json_config png clip_tokenizer single_file torch_checkpoint})
# The longest input each target gets: a whole safetensors file or PNG, a config, a prompt, a
# tensor list as long as a Stable Diffusion checkpoint's (about 1,100 names), a torch.save file.
declare -A MAX_LEN=([safetensors]=65536 [json_config]=16384 [png]=65536 [clip_tokenizer]=4096
                    [single_file]=131072 [torch_checkpoint]=65536)

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -DSTIPPLE_FUZZ=ON -DSTIPPLE_BUILD_TESTS=OFF \
    -DSTIPPLE_BUILD_BENCH=OFF -DSTIPPLE_BUILD_CLI=OFF >/dev/null
fi
cmake --build "$BUILD" --target fuzz -j "$JOBS" >/dev/null

export OMP_NUM_THREADS=1
# Runs target $1; writes its result line to $BUILD/fuzz-$1.result, and the reason to
# $BUILD/fuzz-$1.failed when it found something.
run_target() {
  local t="$1"
  local work="$BUILD/corpus/$t" crashes="$BUILD/crashes/$t" log="$BUILD/fuzz-$t.log"
  mkdir -p "$work" "$crashes"
  rm -f "$BUILD/fuzz-$t.failed"
  local before rc
  # libFuzzer's slow-unit-* files are not findings: a unit past -timeout is a timeout-* input;
  # one that took more than 10 s without reaching it stalled with the machine (it reruns in
  # milliseconds), as under a loaded CI host.
  before=$(find "$crashes" -type f ! -name 'slow-unit-*' | wc -l)
  # The work folder first: libFuzzer adds what it finds to the first folder only.
  "$BUILD/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" -max_len="${MAX_LEN[$t]}" \
    -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$crashes/" \
    "$work" "$ROOT/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  local execs last cov ft new
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  new=$(( $(find "$crashes" -type f ! -name 'slow-unit-*' | wc -l) - before ))
  printf '%-15s %8s %12s %8s %8s  %s\n' "$t" "$SECONDS_PER_TARGET" "${execs:-?}" "${cov:-?}" \
    "${ft:-?}" "$new" >"$BUILD/fuzz-$t.result"
  if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
    {
      echo "  $t: libFuzzer exited $rc; log $log; inputs in $crashes/"
      grep -m1 -E 'ERROR: |runtime error|fuzz invariant failed|uncaught exception|terminate called' \
        "$log" | sed 's/^/  /' || true
    } >"$BUILD/fuzz-$t.failed"
  fi
}

# STIPPLE_FUZZ_PARALLEL targets at a time (each fuzzer is one process on one core).
set +e
running=0
for t in "${TARGETS[@]}"; do
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait
set -e
found=0
printf '%-15s %8s %12s %8s %8s  %s\n' target seconds executions cov ft crashes
for t in "${TARGETS[@]}"; do
  cat "$BUILD/fuzz-$t.result"
  if [ -f "$BUILD/fuzz-$t.failed" ]; then
    found=1
    cat "$BUILD/fuzz-$t.failed" >&2
  fi
done
exit "$found"

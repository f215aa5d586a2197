#!/usr/bin/env bash
# A rank that dies or hangs in a data-parallel run (ctest train.mpi_rank_failure):
#   1. kill -9 rank 1 after the first checkpoint: the job ends within a minute with a clear error
#      on rank 0, and mpirun fails;
#   2. the last checkpoint is intact: --resume continues from it on 1 process, and on 2 ranks;
#   3. SIGSTOP rank 1: rank 0 gives up after --dist-timeout (5 s) with an error naming the wait,
#      and the job ends.
# Usage: rank_failure.sh STIPPLE MPIRUN WORK_DIR (Fashion-MNIST installed; as root, the
# OMPI_ALLOW_RUN_AS_ROOT variables set).
set -uo pipefail
STIPPLE="$1" MPIRUN="$2" WORK="$3"
rm -rf "$WORK"
mkdir -p "$WORK"
TRAIN=(train --steps 100000 --depth 1 --width 32 --heads 2 --patch 8 --batch-size 8
       --limit-images 256 --checkpoint-every 10 --sample-every 0 --sample-steps 2
       --samples-per-class 1 --log-every 10 --keep-checkpoints 2 -q)
MPI=("$MPIRUN" -np 2 --oversubscribe)

fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
  pkill -KILL -f -- "--out $WORK/" 2>/dev/null
  exit 1
}
# The pid of rank $2 of the run writing to $1.
rank_pid() {
  for p in $(pgrep -f -- "--out $1\$"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && echo "$p" &&
      return 0
  done
  return 1
}
# Waits (60 s at most) for the run in $1 to write its first checkpoint.
wait_for_checkpoint() {
  for _ in $(seq 1 600); do
    [ -e "$1/latest" ] && return 0
    sleep 0.1
  done
  fail "no checkpoint in $1 after 60 s"
}
# Waits (60 s at most) for the background mpirun $1 to end, and fails unless it failed; TOOK is
# the seconds it took.
wait_for_end() {
  local start=$SECONDS
  for _ in $(seq 1 600); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$1" 2>/dev/null && fail "the job still runs 60 s after a rank failed"
  wait "$1"
  local rc=$?
  [ "$rc" -ne 0 ] || fail "mpirun exited 0 after a rank failed"
  TOOK=$((SECONDS - start))
}

# 1. a rank dies
"${MPI[@]}" "$STIPPLE" "${TRAIN[@]}" --out "$WORK/run" >"$WORK/kill.log" 2>&1 &
job=$!
wait_for_checkpoint "$WORK/run"
victim=$(rank_pid "$WORK/run" 1) || fail "rank 1 not found"
kill -KILL "$victim"
wait_for_end "$job"
grep -q "(rank 0 of 2): ended by the MPI launcher" "$WORK/kill.log" ||
  fail "rank 0 did not say why it ended"
echo "rank 1 killed: the job ended in ${TOOK} s; rank 0 said:"
grep "(rank 0 of 2)" "$WORK/kill.log" | head -1 | sed 's/^/  /'

# 2. the newest checkpoint resumes, on 1 process and on 2 ranks
step=$(readlink "$WORK/run/latest" | sed 's/^checkpoint-//')
[ -n "$step" ] || fail "no latest checkpoint after the failure"
"$STIPPLE" train --resume "$WORK/run/latest" --steps $((step + 10)) -q >"$WORK/resume1.log" 2>&1 ||
  fail "resuming on 1 process failed"
grep -q "finished at step $((step + 10)) of" "$WORK/resume1.log" || fail "1-process resume"
"${MPI[@]}" "$STIPPLE" train --resume "$WORK/run/latest" --steps $((step + 20)) -q \
  >"$WORK/resume2.log" 2>&1 || fail "resuming on 2 ranks failed"
grep -q "finished at step $((step + 20)) of" "$WORK/resume2.log" || fail "2-rank resume"
echo "checkpoint-$step resumed: to step $((step + 10)) on 1 process, then $((step + 20)) on 2 ranks"

# 3. a rank hangs
"${MPI[@]}" "$STIPPLE" "${TRAIN[@]}" --dist-timeout 5 --out "$WORK/hang" >"$WORK/hang.log" 2>&1 &
job=$!
wait_for_checkpoint "$WORK/hang"
victim=$(rank_pid "$WORK/hang" 1) || fail "rank 1 not found"
kill -STOP "$victim"
wait_for_end "$job"
grep -q "waited 5 s for the other ranks" "$WORK/hang.log" || fail "rank 0 did not name the wait"
echo "rank 1 stopped: the job ended in ${TOOK} s; rank 0 said:"
grep "error (rank 0 of 2)" "$WORK/hang.log" | head -1 | sed 's/^/  /'
pkill -KILL -f -- "--out $WORK/hang\$" 2>/dev/null
echo "PASS"

#!/usr/bin/env bash
# Load test of `stipple serve` (ctest server.load_wrk): wrk against /sdapi/v1/samplers and
# /healthz, 10 s each with 32 connections, while generations run; every answer must be a 2xx,
# no socket errors, the jobs must still finish, and SIGTERM must end the server with exit 0.
# Prints requests/s and the server's resident memory before and after. Exit 77: wrk missing.
# Usage: tests/load_wrk.sh STIPPLE_BINARY MODEL
set -euo pipefail
stipple=$1
model=$2
command -v wrk >/dev/null || { echo "no wrk (scripts/setup.sh --test installs it)"; exit 77; }
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
"$stipple" serve --model "$model" --port 0 --quiet --grace 0 > "$work/out" 2> "$work/err" &
server=$!
for _ in $(seq 100); do grep -q "http://" "$work/out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's|.*http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/out")
[ -n "$port" ] || { echo "the server did not start:"; cat "$work/err"; exit 1; }

# One HTTP request with bash's /dev/tcp (no curl on a bare machine): METHOD PATH [BODY].
request() {
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "${#3}" "${3:-}" >&3
  cat <&3
  exec 3<&-
}
resident() { request GET /sdapi/v1/memory "" | sed -n 's/.*"process_resident":\([0-9.e+]*\).*/\1/p'; }

for _ in $(seq 300); do request GET /readyz "" | grep -q '"ready"' && break; sleep 0.1; done
before=$(resident)
# Generations to run while wrk hammers the cheap routes: 4 jobs of 16 images at the server's
# most steps (150), enough to outlast the 20 s of load on a quiet machine (they are cancelled
# after it).
ids=()
for _ in 1 2 3 4; do
  ids+=("$(request POST /v1/jobs '{"prompt": "coat", "steps": 150, "batch_size": 16}' |
           sed -n 's/.*"id":"\(job-[0-9a-f]*\)".*/\1/p')")
done
status=0
for path in /sdapi/v1/samplers /healthz; do
  wrk -t2 -c32 -d10s "http://127.0.0.1:$port$path" > "$work/wrk" 2>&1 || status=1
  rps=$(sed -n 's/^Requests\/sec: *//p' "$work/wrk")
  echo "wrk $path: $rps requests/s (32 connections, 10 s, generations running)"
  if grep -q -E "Non-2xx|Socket errors" "$work/wrk"; then
    echo "FAIL: errors under load on $path:"; cat "$work/wrk"; status=1
  fi
done
running=$(request GET /sdapi/v1/progress "" | sed -n 's/.*"job_count":\([0-9]*\).*/\1/p')
echo "generations queued or running after the load: $running"
[ "${running:-0}" -ge 1 ] || { echo "FAIL: the generations did not run through the load"; status=1; }
for id in "${ids[@]}"; do request DELETE "/v1/jobs/$id" "" > /dev/null; done
after=$(resident)
echo "server resident memory: before $before bytes, after $after bytes"
kill -TERM $server
wait $server || { echo "FAIL: stipple serve exited with $? on SIGTERM"; status=1; }
exit $status

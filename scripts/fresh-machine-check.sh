#!/usr/bin/env bash
# Proves that the README's two commands work on a fresh Debian machine: it debootstraps a clean
# Debian bookworm root (--variant=minbase: nothing but what apt and bash need), puts a clean clone
# of the committed HEAD (no uncommitted files, no build folder) and ../shared in it, and runs, in a
# chroot, the commands the README gives, exactly as it gives them (today `bash scripts/demo.sh`
# and `bash scripts/test.sh`). Nothing else is installed in the root, so a pass shows that
# scripts/setup.sh installs everything the build, the main job and the tests need. Afterwards it
# checks that the main job wrote its PNG (the --out of scripts/demo.sh).
#
# Only this machine's network settings are carried in, so the root reaches the same registries:
# apt's sources, configuration and keys, /etc/resolv.conf and /etc/hosts, the local CA
# certificates (/usr/local/share/ca-certificates, picked up when setup.sh installs
# ca-certificates), npm's configuration (/etc/npmrc, /root/.npmrc, a non-default registry) and
# proxy / NODE_EXTRA_CA_CERTS / npm_config_* environment variables.
#
# Usage (as root): bash scripts/fresh-machine-check.sh [--keep] [--only-demo]
#   --keep       keep the root (under /var/tmp) for inspection; it is unmounted either way
#   --only-demo  run only the main job (the README's first command), not the tests
# Everything runs under `nice -n 19`. Each phase's output goes to a log under /var/tmp, kept.
# On two cores shared with a training job it took 15 min: debootstrap 1, main job (setup and
# build) 10, tests 4. Exits 0 with "fresh-machine check: PASSED in N s", or non-zero with a
# "fresh-machine check: FAILED ..." line naming the phase.
set -euo pipefail

SUITE=bookworm
KEEP=0
ONLY_DEMO=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --only-demo) ONLY_DEMO=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh-machine-check: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "fresh-machine-check: run as root (debootstrap, mount and chroot need it)" >&2
  exit 2
fi

REPO="$(cd "$(dirname "$0")/.." && git rev-parse --show-toplevel)"
SHARED="$(dirname "$REPO")/shared"
LOG="/var/tmp/stipple-fresh-$(date +%Y%m%d-%H%M%S).log"
: >"$LOG"
echo "fresh-machine check: log in $LOG"

# ---------------------------------------------------------------------------------------------
# The root, and a cleanup that unmounts everything under it before it removes it (and never
# removes anything but the folder mktemp made).
ROOT=""
PHASE_PID=""
PHASE_NAME=""
ROOT_PATTERN='^/var/tmp/stipple-fresh\.[A-Za-z0-9]{6}$'

mounts_under_root() {  # deepest first
  findmnt -rn -o TARGET | awk -v r="$ROOT" 'index($0, r "/") == 1' | sort -r
}

unmount_root() {
  local m
  for _ in 1 2 3; do
    while read -r m; do
      [ -n "$m" ] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts_under_root)
    [ -z "$(mounts_under_root)" ] && return 0
    sleep 1
  done
  [ -z "$(mounts_under_root)" ]
}

kill_tree() {  # kill_tree PID: PID and its descendants (a phase this script started)
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

stop_root_processes() {  # processes this script started inside the chroot, if it is interrupted
  local p pid
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] || continue
    pid="${p#/proc/}"
    kill "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$ROOT" ] && [[ "$ROOT" =~ $ROOT_PATTERN ]] && [ -d "$ROOT" ]; then
    if [ -n "$PHASE_PID" ]; then
      echo "fresh-machine check: FAILED: interrupted in phase '$PHASE_NAME' (signal);" \
           "log: $LOG" | tee -a "$LOG"
      kill_tree "$PHASE_PID"
      sleep 2
    fi
    [ "$rc" -ne 0 ] && stop_root_processes
    if ! unmount_root; then
      echo "fresh-machine check: still mounted under $ROOT, NOT removing it:" >&2
      mounts_under_root >&2
    elif [ "$KEEP" -eq 1 ]; then
      echo "fresh-machine check: root kept in $ROOT (unmounted; chroot \"$ROOT\" /bin/bash -l)"
    else
      rm -rf --one-file-system -- "$ROOT"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Phases: each runs in a subshell with errexit, its output appended to the log.
START=$SECONDS
TIMINGS=()

phase() {
  local name="$1" rc t0=$SECONDS
  shift
  PHASE_NAME="$name"
  echo "fresh-machine check: $name ..."
  printf '\n===== %s: %s (%s) =====\n' "$name" "$*" "$(date)" >>"$LOG"
  set +e
  # In the background and waited for, so that a signal to this script is handled at once (the
  # cleanup then stops the phase's processes) rather than when the phase ends.
  ( set -e; "$@" ) </dev/null >>"$LOG" 2>&1 &
  PHASE_PID=$!
  wait "$PHASE_PID"
  rc=$?
  PHASE_PID=""
  set -e
  TIMINGS+=("$(printf '%-12s %5d s' "$name" $((SECONDS - t0)))")
  printf '===== %s: exit %d after %d s =====\n' "$name" "$rc" $((SECONDS - t0)) >>"$LOG"
  if [ "$rc" -ne 0 ]; then
    echo "---- last lines of $LOG ----"
    tail -n 40 "$LOG"
    echo "----"
    {
      printf '  %s\n' "${TIMINGS[@]}"
      echo "fresh-machine check: FAILED in phase '$name' (exit $rc) after $((SECONDS - START)) s;" \
           "log: $LOG"
    } | tee -a "$LOG"
    exit 1
  fi
  echo "fresh-machine check: $name done in $((SECONDS - t0)) s"
}

# The Debian mirror this machine uses for $SUITE (deb822 .sources or one-line .list files).
find_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      BEGIN { RS = ""; FS = "\n" }
      {
        types = ""; uris = ""; suites = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^[ \t]*#/) continue
          if ($i ~ /^Types:/)  { types = $i;  sub(/^Types:[ \t]*/, "", types) }
          if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
        }
        if ((" " types " ") !~ / deb /) next
        if ((" " suites " ") !~ (" " suite " ")) next
        split(uris, u, /[ \t]+/); print u[1]; exit
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -E 's/\[[^]]*\]//' "$f" |
      awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }'
  done
}

MIRROR="$(find_mirror | head -n 1)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

do_debootstrap() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
  fi
  echo "mirror: $MIRROR"
  nice -n 19 debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"
}

copy_if_present() {  # copy_if_present SRC: copies SRC to the same path in the root
  [ -e "$1" ] || return 0
  mkdir -p "$ROOT$(dirname "$1")"
  cp -a "$1" "$ROOT$(dirname "$1")/"
}

do_prepare() {
  # Network settings (see the header), so the root reaches the same registries. debootstrap's
  # own sources.list goes: the root gets exactly this machine's sources.
  local f
  rm -f "$ROOT/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d /etc/apt/apt.conf /etc/apt/apt.conf.d \
           /etc/apt/auth.conf /etc/apt/auth.conf.d /etc/apt/preferences.d /etc/apt/trusted.gpg \
           /etc/apt/trusted.gpg.d /etc/apt/keyrings /etc/npmrc /root/.npmrc; do
    if [ -d "$f" ] && [ -d "$ROOT$f" ]; then
      cp -a "$f/." "$ROOT$f/"
    else
      copy_if_present "$f"
    fi
  done
  for f in /etc/resolv.conf /etc/hosts; do
    rm -f "$ROOT$f"
    cp -L "$f" "$ROOT$f"
  done
  if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
  fi
  if command -v npm >/dev/null 2>&1; then
    local registry
    registry="$(npm config get registry 2>/dev/null || true)"
    if [ -n "$registry" ] && [ "${registry%/}" != "https://registry.npmjs.org" ] &&
       ! grep -qs "^registry=" "$ROOT/root/.npmrc"; then
      echo "registry=$registry" >>"$ROOT/root/.npmrc"
    fi
  fi
  echo "apt sources in the root:"; ls -l "$ROOT/etc/apt/sources.list.d/"
  # The committed HEAD only, and the shared reference data beside it.
  mkdir -p "$ROOT/work"
  git clone --no-hardlinks "$REPO" "$ROOT/work/main"
  git -C "$ROOT/work/main" log --oneline -1
  if [ -d "$SHARED" ]; then
    cp -a "$SHARED" "$ROOT/work/shared"
  else
    echo "no $SHARED: tests that need it will skip"
  fi
}

mount_root() {
  mount -t proc proc "$ROOT/proc"
  mount --bind /sys "$ROOT/sys"
  mount --bind /dev "$ROOT/dev"
  mkdir -p "$ROOT/dev/pts"
  mount --bind /dev/pts "$ROOT/dev/pts"
}

# A login shell as a fresh machine's root has it: no variables from this shell but the network
# ones listed in the header.
CHROOT_ENV=(HOME=/root TERM=dumb USER=root LOGNAME=root
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while IFS='=' read -r name _; do
  case "$name" in
    http_proxy|https_proxy|ftp_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|FTP_PROXY|NO_PROXY| \
    NODE_EXTRA_CA_CERTS|npm_config_*|NPM_CONFIG_*) CHROOT_ENV+=("$name=${!name}") ;;
  esac
done < <(env)

in_root() {  # in_root COMMAND: runs COMMAND with bash -lc in the clone, niced
  nice -n 19 env -i "${CHROOT_ENV[@]}" chroot "$ROOT" /bin/bash -lc "cd /work/main && $1"
}

check_png() {
  local out="$1" f
  local pattern
  pattern="$(sed -E 's/%[0-9]*d/*/g' <<<"$out")"
  [[ "$pattern" = /* ]] || pattern="/work/main/$pattern"
  local found=0
  for f in $ROOT$pattern; do
    [ -f "$f" ] || continue
    if [ "$(head -c 8 "$f" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; then
      echo "PNG: ${f#"$ROOT"} ($(stat -c %s "$f") bytes)"
      found=1
    else
      echo "not a PNG: ${f#"$ROOT"}"
      return 1
    fi
  done
  [ "$found" -eq 1 ] || { echo "no PNG at $out (looked for $pattern in the root)"; return 1; }
}

# ---------------------------------------------------------------------------------------------
ROOT="$(mktemp -d /var/tmp/stipple-fresh.XXXXXX)"
[[ "$ROOT" =~ $ROOT_PATTERN ]] || { echo "unexpected mktemp path $ROOT" >&2; exit 1; }
chmod 755 "$ROOT"  # a root directory as on a real machine (apt's _apt user must traverse it)
echo "fresh-machine check: root in $ROOT, mirror $MIRROR," \
     "HEAD $(git -C "$REPO" rev-parse --short HEAD)" | tee -a "$LOG"

phase debootstrap do_debootstrap
phase prepare do_prepare
phase mount mount_root

# The README's commands: the non-comment lines of its first ```sh block (main job, then tests).
mapfile -t COMMANDS < <(awk '
  /^```/ { if (inblock) exit; if ($0 ~ /^```(sh|bash)/) { inblock = 1 }; next }
  inblock && !/^[ \t]*(#|$)/' "$ROOT/work/main/README.md")
if [ "${#COMMANDS[@]}" -ne 2 ]; then
  echo "fresh-machine check: FAILED: expected 2 commands in README.md's first sh block, found" \
       "${#COMMANDS[@]}: ${COMMANDS[*]:-none}" | tee -a "$LOG"
  exit 1
fi
MAIN_CMD="${COMMANDS[0]}"
TEST_CMD="${COMMANDS[1]}"
# The PNG the main job writes: the --out argument of scripts/demo.sh (as committed).
PNG_OUT="$(grep -oE -- "--out[= ]+[^ \\\\]+" "$ROOT/work/main/scripts/demo.sh" | head -n 1 |
           sed -E "s/^--out[= ]+//; s/^[\"']//; s/[\"']$//")"
if [ -z "$PNG_OUT" ]; then
  echo "fresh-machine check: FAILED: no --out argument in scripts/demo.sh" | tee -a "$LOG"
  exit 1
fi
echo "fresh-machine check: main job '$MAIN_CMD' (writes $PNG_OUT), tests '$TEST_CMD'" |
  tee -a "$LOG"

phase "main job" in_root "$MAIN_CMD"
phase png check_png "$PNG_OUT"
if [ "$ONLY_DEMO" -eq 0 ]; then
  phase tests in_root "$TEST_CMD"
fi

{
  echo "timings:"
  printf '  %s\n' "${TIMINGS[@]}"
  echo "log: $LOG"
  echo "fresh-machine check: PASSED in $((SECONDS - START)) s"
} | tee -a "$LOG"

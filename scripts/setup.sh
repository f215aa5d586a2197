#!/usr/bin/env bash
# Installs every Debian package that stipple's build, tests and data need, and the emoji data
# (npm packages, pinned) into the data folder. Idempotent: quiet when everything is already
# installed. Run as root (or with sudo available). With --test, also what only the tests use
# (headless Chromium and its WebDriver for the web page's test, wrk for the load test, Open MPI
# for the data-parallel training tests of a -DSTIPPLE_MPI=ON build).
#
# Data folder: $STIPPLE_DATA_DIR (default /opt/stipple-data); the emoji go to <it>/emoji, which is
# where `stipple` looks for them (or give --data).
set -euo pipefail
PACKAGES=(
  cmake g++ make pkg-config
  # oneDNN's CMake config looks for the OpenCL runtime it was built with; libdnnl-dev only
  # recommends these, so --no-install-recommends would leave configure failing without them.
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
  libopenblas-openmp-dev libhwy-dev
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libpng-dev libstb-dev libutf8proc-dev zlib1g-dev
  dataset-fashion-mnist
  ca-certificates
  # scripts/fuzz.sh: clang with libFuzzer and the sanitizer runtimes, its OpenMP, llvm-symbolizer
  clang libclang-rt-dev libomp-dev llvm
)
if [ "${1:-}" = "--test" ]; then
  PACKAGES+=(chromium chromium-driver wrk libopenmpi-dev openmpi-bin)
fi
# npm (for the emoji data): Debian's, unless the machine already has one (e.g. from NodeSource).
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -ne 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# The emoji text-to-image data: Twemoji and Noto images with their metadata, and the CLDR
# captions, at pinned versions. npm reaches only its registry; nothing runs at install time.
DATA_DIR="${STIPPLE_DATA_DIR:-/opt/stipple-data}/emoji"
EMOJI_PACKAGES=(emoji-datasource-twitter@16.0.0 emoji-datasource-google@16.0.0 emojibase-data@17.0.0)
have_all=1
for spec in "${EMOJI_PACKAGES[@]}"; do
  name="${spec%@*}" version="${spec##*@}"
  grep -q "\"version\": \"$version\"" "$DATA_DIR/node_modules/$name/package.json" 2>/dev/null \
    || have_all=0
done
if [ "$have_all" -eq 0 ]; then
  echo "setup: installing the emoji data into $DATA_DIR" >&2
  $SUDO mkdir -p "$DATA_DIR"
  $SUDO npm install --prefix "$DATA_DIR" --no-audit --no-fund --ignore-scripts --no-save \
    --loglevel=error "${EMOJI_PACKAGES[@]}" >/dev/null
fi

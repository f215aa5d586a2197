#!/usr/bin/env bash
# Installs every Debian package that stipple's build, tests and data need. Idempotent: quiet when
# everything is already installed. Run as root (or with sudo available).
set -euo pipefail
PACKAGES=(
  cmake g++ make pkg-config
  libdnnl-dev libopenblas-openmp-dev libhwy-dev
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libpng-dev libstb-dev libutf8proc-dev zlib1g-dev
  dataset-fashion-mnist
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "setup: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Gathers, on this machine, the few Debian packages a build on the GPU machine needs and that
# machine lacks (it has nvcc, CMake and a C++ compiler, and no package registry): headers and
# static libraries of libpng, zlib and utf8proc, nlohmann-json's and CLI11's headers and
# GoogleTest's sources (built there by that machine's compiler), unpacked with `dpkg -x` into
# .device-deps/ (ignored by git), and the Fashion-MNIST training split for the training benchmark
# (from the Debian package dataset-fashion-mnist installed here; about 31 MB in all). scripts/device-check.sh builds
# against them there, with -DSTIPPLE_CPU_FAST=OFF so that oneDNN, OpenBLAS and Highway are not
# needed. Shared-library links are removed so the build links the static archives and the test
# programs need nothing carried at run time.
#
# Usage: bash scripts/device-deps.sh    (then carry .device-deps to the device machine)
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libpng-dev zlib1g-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev googletest)
fashion=/usr/share/datasets/fashion-mnist
dest=.device-deps
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "${packages[@]}" >/dev/null 2>&1) || {
  echo "device-deps: apt-get download ${packages[*]} failed (is a Debian registry reachable?)" >&2
  exit 1
}
rm -rf "$dest"
mkdir -p "$dest"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$dest"; done
find "$dest" \( -name '*.so' -o -name '*.so.*' \) -delete
rm -rf "$dest/usr/share/doc" "$dest/usr/share/man"
if [ -f "$fashion/train-images-idx3-ubyte.gz" ]; then
  mkdir -p "$dest/fashion-mnist"
  cp "$fashion"/train-*-idx?-ubyte.gz "$dest/fashion-mnist/"
else
  echo "device-deps: no $fashion (scripts/setup.sh installs it): the training benchmark will be skipped" >&2
fi
grep -qx '/.device-deps/' .git/info/exclude 2>/dev/null || echo '/.device-deps/' >> .git/info/exclude
echo "device-deps: $(du -sh "$dest" | cut -f1) in $dest from: ${packages[*]}"

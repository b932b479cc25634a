#!/usr/bin/env bash
# Builds vhost-device-vsock (rust-vmm, crates.io) and installs it to $PREFIX/bin, cached
# outside the checkout by version.
set -euo pipefail

VERSION=0.3.0
PREFIX=${PREFIX:-/usr/local}
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
OUT="$CACHE/vhost-device-vsock-$VERSION"

if [ ! -x "$OUT/bin/vhost-device-vsock" ]; then
  echo "vhost-device-vsock: building $VERSION"
  start=$(date +%s)
  rm -rf "$OUT.tmp"
  cargo install -q --locked --root "$OUT.tmp" --version "$VERSION" vhost-device-vsock
  rm -rf "$OUT"
  mv "$OUT.tmp" "$OUT"
  echo "vhost-device-vsock: built in $(( $(date +%s) - start )) s"
fi
if cmp -s "$OUT/bin/vhost-device-vsock" "$PREFIX/bin/vhost-device-vsock"; then
  echo "vhost-device-vsock: $VERSION already installed"
else
  install -m 0755 "$OUT/bin/vhost-device-vsock" "$PREFIX/bin/"
  echo "vhost-device-vsock: installed $VERSION"
fi

#!/usr/bin/env bash
# Builds nydusd and nydus-image from the crates.io package nydus-rs (see DESIGN.md) and
# installs them to $PREFIX/bin. The build is cached outside the checkout, keyed by the
# versions below, so a machine that built them once only re-installs (a copy) or skips.
set -euo pipefail

NYDUS_VERSION=2.2.0
FUSE_BACKEND_RS=0.10.4   # 0.10.1 (the locked one) segfaults; 0.10.5 breaks nydus-storage 0.6.2
PREFIX=${PREFIX:-/usr/local}
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
KEY="nydus-rs-${NYDUS_VERSION}-fbrs-${FUSE_BACKEND_RS}-virtiofs"
OUT="$CACHE/$KEY"

installed_ok() {
  for b in nydusd nydus-image; do
    cmp -s "$OUT/$b" "$PREFIX/bin/$b" || return 1
  done
}

if [ -x "$OUT/nydusd" ] && [ -x "$OUT/nydus-image" ]; then
  if installed_ok; then
    echo "nydus: $KEY already installed"
    exit 0
  fi
  install -m 0755 "$OUT/nydusd" "$OUT/nydus-image" "$PREFIX/bin/"
  echo "nydus: installed $KEY from cache"
  exit 0
fi

echo "nydus: building $KEY (about 9 minutes on 2 cores)"
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/lazyvm-nydus.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Let cargo fetch the package source from the registry through a throwaway manifest.
mkdir -p "$work/fetch/src"
cat > "$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-nydus"
version = "0.0.0"
edition = "2021"
[dependencies]
nydus-rs = "=${NYDUS_VERSION}"
TOML
echo 'fn main() {}' > "$work/fetch/src/main.rs"
(cd "$work/fetch" && cargo fetch -q)
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/nydus-rs-"${NYDUS_VERSION}" | head -n 1)
[ -f "$src/Cargo.toml" ] || { echo "nydus: source of nydus-rs $NYDUS_VERSION not found" >&2; exit 1; }

cp -a "$src" "$work/nydus"
cd "$work/nydus"
rm -f rust-toolchain rust-toolchain.toml
cargo update -q -p fuse-backend-rs --precise "$FUSE_BACKEND_RS"
RUSTFLAGS="--cap-lints allow" CARGO_TARGET_DIR="$work/target" \
  cargo build -q --release --locked --features virtiofs --bin nydusd --bin nydus-image

mkdir -p "$OUT.tmp"
install -m 0755 "$work/target/release/nydusd" "$work/target/release/nydus-image" "$OUT.tmp/"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
install -m 0755 "$OUT/nydusd" "$OUT/nydus-image" "$PREFIX/bin/"
echo "nydus: built and installed $KEY in $(( $(date +%s) - start )) s"

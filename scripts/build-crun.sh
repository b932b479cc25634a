#!/usr/bin/env bash
# The guest's OCI runtime: crun built from Debian trixie's source as one static, non-PIE
# executable, against trixie's C library, libseccomp and libcap (a private sysroot of
# their -dev packages; nothing is installed on the host). Prints the executable's path.
#
# Why not Debian's crun binary: under TCG the guest pays for every instruction it runs the
# first time. The dynamic crun maps seven objects (its loader, libc, libm, libsystemd,
# libseccomp, libcap, libyajl) and resolves their symbols on every call, and they add
# 3.4 MiB to the initramfs the kernel unpacks at every boot. The static one is 1.8 MiB
# and starts without a loader; at a fixed address, its code translated by one call is
# reused by the next.
#
# Built without systemd (the agent uses cgroupfs), CRIU and WASM handlers; with seccomp,
# capabilities, eBPF (cgroup v2 device rules) and crun's embedded yajl.
#
# Cached in $LAZYVM_CACHE/guest-crun-static-<version>-<hash of this script>/crun.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
SUITE=trixie
SYSROOT_PACKAGES=(libc6-dev libc6 linux-libc-dev libcrypt-dev libcrypt1
                  libseccomp-dev libseccomp2 libcap-dev libcap2)
log() { echo "build-crun: $*" >&2; }
die() { log "$*"; exit 1; }

for tool in gcc make pkg-config python3 strip file; do
  command -v "$tool" >/dev/null || die "$tool is missing (run make deps)"
done

mkdir -p "$CACHE"
exec 6>"$CACHE/guest-crun-static.lock"
flock 6
# Keyed by the suite's crun version (known offline, from the cached package lists) and
# this recipe: a cached build needs no network.
version=$("$here/debian-suite.sh" version "$SUITE" crun)
recipe=$(sha256sum "$0" | cut -c1-12)
dest="$CACHE/guest-crun-static-$version-$recipe"
if [ -x "$dest/crun" ]; then
  echo "$dest/crun"
  exit 0
fi

work="$CACHE/guest-crun-static.work"
rm -rf "$work"
tarball=$("$here/debian-suite.sh" source "$SUITE" "$work/src" crun)
log "building $(basename "$tarball") for crun $version (static, against $SUITE's libraries)"
sysroot="$work/sysroot"
"$here/debian-suite.sh" unpack "$SUITE" "$sysroot" "${SYSROOT_PACKAGES[@]}"
libdir="$sysroot/usr/lib/x86_64-linux-gnu"
mkdir -p "$work/build"
tar -xf "$tarball" -C "$work/build" --strip-components=1
# gcc looks for the C library and its start files relative to its own prefix, not the
# sysroot: -B and -L point it at the sysroot's.
cc="gcc --sysroot=$sysroot -B$libdir -L$libdir"
(
  cd "$work/build"
  PKG_CONFIG_LIBDIR="$libdir/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$sysroot" \
    CC="$cc" LDFLAGS=-static PYTHON=python3 \
    ./configure --enable-embedded-yajl --disable-systemd --disable-criu \
      --disable-shared --enable-static >configure.log 2>&1 \
    || { tail -n 20 configure.log >&2; exit 1; }
  make -j"$(nproc)" LDFLAGS=-all-static >make.log 2>&1 \
    || { grep -iE "error" make.log | tail -n 20 >&2; exit 1; }
) || die "building crun failed (logs in $work/build)"
bin="$work/build/crun"
file -b "$bin" | grep -q "statically linked" || die "crun is not static: $(file -b "$bin")"
strip "$bin"
features=$("$bin" --version | tail -n 1)
for f in +CAP +SECCOMP +EBPF; do
  [[ "$features" == *"$f"* ]] || die "crun was built without ${f#+}: $features"
done
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
install -m 0755 "$bin" "$dest.tmp/crun"
"$bin" --version >"$dest.tmp/version"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
rm -rf "$work"
log "crun $(head -n 1 "$dest/version" | awk '{print $3}'): $(du -h "$dest/crun" | cut -f1) in $dest"
echo "$dest/crun"

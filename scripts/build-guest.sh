#!/usr/bin/env bash
# Builds lazyvm's guest image into build/guest/ (called by `make guest`):
#   vmlinux                    the minimal kernel (scripts/build-kernel.sh, cached)
#   initramfs.cpio             /init = static lazyvm-agent, static crun (built from trixie's
#                              source by scripts/build-crun.sh)
#   vmlinux-debian             Debian's kernel, uncompressed (fast PVH boots under TCG)
#   initramfs-debian.cpio      the same plus the modules Debian's kernel needs
# Debian's kernel package is fetched with `apt-get download`, unpacked with `dpkg -x`
# (never installed) and cached in $LAZYVM_CACHE/debian-kernel-<package>-<version>-<modules hash>/.
# Environment: LAZYVM_CACHE (default /var/cache/lazyvm), LAZYVM_GUEST_BUSYBOX=1 to add
# busybox (for debugging: the agent needs none of it, and every MiB is unpacked at each
# boot), LAZYVM_GUEST_KERNELS="minimal debian" (either or both), LAZYVM_GUEST_CRUN=debian
# for Debian's dynamically linked crun binary instead of the static build.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out="$repo/build/guest"
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
KERNELS=${LAZYVM_GUEST_KERNELS:-minimal debian}
TARGET=x86_64-unknown-linux-gnu
# The guest's OCI runtime: crun from Debian trixie (runtime-spec 1.2, which containerd
# 1.7 and 2.x write; bookworm's 1.8 refuses it). By default built static from trixie's
# source (scripts/build-crun.sh). Should that build fail, or with LAZYVM_GUEST_CRUN=debian,
# trixie's binary package with its libraries, glibc and its loader (it needs glibc 2.38),
# cached in $LAZYVM_CACHE/guest-crun-trixie-<version>/.
CRUN_SUITE=trixie
CRUN_PACKAGES=(crun libc6 libcap2 libseccomp2 libsystemd0 libyajl2)
# Modules Debian's kernel needs (their dependencies are added).
MODULES=(virtio_pci virtio_mmio vsock vmw_vsock_virtio_transport_common
         vmw_vsock_virtio_transport fuse virtiofs overlay virtio_net)

size() { echo "$(( ($(stat -c %s "$1") + 1023) / 1024 )) KiB"; }
die() { echo "build-guest: $*" >&2; exit 1; }
log() { echo "build-guest: $*"; }

for tool in busybox xz cpio apt-get dpkg; do
  command -v "$tool" >/dev/null || die "$tool is missing (run make deps)"
done
mkdir -p "$out" "$CACHE"
rm -f "$out"/initramfs*.cpio.gz   # the gzip'd images of earlier versions

# ---- crun: static from trixie's source, else trixie's binary and its libraries ----
crun_static=
if [ "${LAZYVM_GUEST_CRUN:-static}" != debian ]; then
  crun_static=$("$here/build-crun.sh") \
    || log "WARNING: building a static crun failed; using Debian's dynamic crun (slower starts)"
fi
if [ -z "$crun_static" ]; then
  crun_ver=$("$here/debian-suite.sh" version "$CRUN_SUITE" crun)
  crun_root="$CACHE/guest-crun-$CRUN_SUITE-$crun_ver"
  exec 7>"$crun_root.lock"
  flock 7
  if [ ! -x "$crun_root/usr/bin/crun" ]; then
    log "fetching crun $crun_ver and its libraries from $CRUN_SUITE"
    "$here/debian-suite.sh" unpack "$CRUN_SUITE" "$crun_root" "${CRUN_PACKAGES[@]}"
  fi
  flock -u 7
  crun_libdir="$crun_root/usr/lib/x86_64-linux-gnu"
  crun_ldso="$crun_libdir/ld-linux-x86-64.so.2"
  "$crun_ldso" --library-path "$crun_libdir" "$crun_root/usr/bin/crun" --version >/dev/null \
    || die "crun $crun_ver from $CRUN_SUITE does not run"
fi

# ---- the agent, static (glibc: no musl target here) ----
log "building lazyvm-agent (static)"
(cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile guest --locked -q -p lazyvm-agent --target "$TARGET")
agent="$repo/target/$TARGET/guest/lazyvm-agent"
file -b "$agent" | grep -qE 'static(-pie)? linked|statically linked' \
  || die "$agent is not statically linked: $(file -b "$agent")"

# ---- a staging tree shared by both initramfs variants ----
stage=$(mktemp -d "${TMPDIR:-/tmp}/lazyvm-guest.XXXXXX")
trap 'rm -rf "$stage"' EXIT
base="$stage/base"
mkdir -p "$base"/{bin,dev,proc,sys,run,tmp,etc,usr/bin,lib/modules}
install -m 0755 "$agent" "$base/init"
strip "$base/init" 2>/dev/null || true
mknod -m 0600 "$base/dev/console" c 5 1
mknod -m 0666 "$base/dev/null" c 1 3
if [ -n "$crun_static" ]; then
  install -m 0755 "$crun_static" "$base/usr/bin/crun"
  log "crun: static, $(size "$crun_static")"
else
  install -m 0755 "$crun_root/usr/bin/crun" "$base/usr/bin/crun"
  # crun's shared libraries (as trixie's loader resolves them), at the paths the guest's
  # loader looks for them; its loader at the path crun names.
  libs=$("$crun_ldso" --library-path "$crun_libdir" --list "$crun_root/usr/bin/crun")
  if grep -q "not found" <<<"$libs"; then die "crun's libraries are incomplete: $libs"; fi
  mkdir -p "$base/usr/lib/x86_64-linux-gnu"
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' <<<"$libs" | while read -r name path; do
    case "$name" in
      /*) mkdir -p "$base$(dirname "$name")"; cp -L "$path" "$base$name" ;;
      *) cp -L "$path" "$base/usr/lib/x86_64-linux-gnu/$name" ;;
    esac
  done
  log "crun $crun_ver ($CRUN_SUITE) with $(awk '$2 == "=>"' <<<"$libs" | wc -l) libraries"
fi
if [ "${LAZYVM_GUEST_BUSYBOX:-0}" != 0 ]; then
  install -m 0755 "$(command -v busybox)" "$base/bin/busybox"
  for a in sh ls cat mount umount ps dmesg ip; do ln -sf busybox "$base/bin/$a"; done
fi
echo "root:x:0:0:root:/:/bin/sh" >"$base/etc/passwd"
echo "root:x:0:" >"$base/etc/group"

# Uncompressed: the guest kernel unpacks a gzip'd initramfs of this size in about 0.2-0.35 s
# under TCG (measured; QEMU loads the 12 MiB raw file in a few milliseconds).
make_cpio() { # dir out
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) \
    >"$2.tmp"
  mv "$2.tmp" "$2"
  log "$(basename "$2"): $(size "$2")"
}

# ---- minimal kernel: everything built in, no modules ----
if [[ " $KERNELS " == *" minimal "* ]]; then
  "$here/build-kernel.sh" "$out/vmlinux" | tail -n 1 >/dev/null
  log "vmlinux: $(size "$out/vmlinux") (minimal kernel)"
  make_cpio "$base" "$out/initramfs.cpio"
fi

# ---- Debian's kernel: vmlinux extracted from the bzImage, plus modules ----
if [[ " $KERNELS " == *" debian "* ]]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-6\.1.*-amd64$/{print $2; exit}')
  [ -n "$pkg" ] || die "cannot find the linux-image-6.1.*-amd64 package (apt-get update?)"
  version=$(apt-cache show --no-all-versions "$pkg" | awk '/^Version:/{print $2; exit}')
  # Keyed by the module list too: a new module needs a new extraction.
  kdir="$CACHE/debian-kernel-$pkg-$version-$(echo "${MODULES[*]}" | sha256sum | cut -c1-8)"
  exec 9>"$kdir.lock"
  flock 9
  if [ ! -f "$kdir/vmlinux" ]; then
    log "fetching $pkg $version"
    work="$kdir.tmp"
    rm -rf "$work"
    mkdir -p "$work/dl" "$work/root" "$work/out"
    chmod 0777 "$work/dl"   # apt-get download runs as _apt where it can
    (cd "$work/dl" && apt-get download -q "$pkg=$version" >/dev/null 2>&1) \
      || die "apt-get download $pkg=$version failed"
    dpkg -x "$work"/dl/*.deb "$work/root"
    release=$(ls "$work/root/lib/modules")
    bz="$work/root/boot/vmlinuz-$release"
    [ -f "$bz" ] || die "no $bz in $pkg"
    # The bzImage's payload is XZ: find the stream's magic and decompress it.
    off=$( (LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" || true) | head -n 1 | cut -d: -f1)
    [ -n "$off" ] || die "no XZ stream in $bz"
    # (xz stops after the stream: feed it from a file, not a pipe that would get SIGPIPE)
    tail -c +$((off + 1)) "$bz" >"$work/payload.xz"
    xz -dc --single-stream <"$work/payload.xz" >"$work/out/vmlinux" \
      || die "decompressing the kernel in $bz failed"
    file -b "$work/out/vmlinux" | grep -q '^ELF 64-bit' || die "extracted vmlinux is not an ELF"
    # The .deb has no modules.dep: make one, then copy the needed modules and their deps.
    busybox depmod -b "$work/root" "$release"
    mdir="$work/root/lib/modules/$release"
    want=()
    for m in "${MODULES[@]}"; do
      path=$(find "$mdir/kernel" -name "$m.ko*" | head -n 1)
      if [ -z "$path" ]; then
        grep -q "/$m.ko" "$mdir/modules.builtin" || die "module $m is neither built in nor shipped"
        continue
      fi
      rel=${path#"$mdir/"}
      want+=("$rel")
      want+=($(awk -v m="$rel" -F': *' '$1 == m {print $2}' "$mdir/modules.dep"))
    done
    dest="$work/out/modules/lib/modules/$release"
    mkdir -p "$dest"
    printf '%s\n' "${want[@]}" | sort -u | while read -r rel; do
      [ -n "$rel" ] || continue
      mkdir -p "$dest/$(dirname "$rel")"
      cp "$mdir/$rel" "$dest/$rel"
    done
    cp "$mdir/modules.builtin" "$dest/" 2>/dev/null || true
    busybox depmod -b "$work/out/modules" "$release"
    echo "$release" >"$work/out/release"
    rm -rf "$kdir"
    mv "$work/out" "$kdir"
    rm -rf "$work"
  fi
  flock -u 9
  cp "$kdir/vmlinux" "$out/vmlinux-debian"
  log "vmlinux-debian: $(size "$out/vmlinux-debian") ($pkg $version)"
  deb="$stage/debian"
  cp -a "$base" "$deb"
  cp -a "$kdir/modules/lib/modules/." "$deb/lib/modules/"
  make_cpio "$deb" "$out/initramfs-debian.cpio"
fi
log "done: $out"

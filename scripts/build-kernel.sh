#!/usr/bin/env bash
# Builds lazyvm's minimal guest kernel (an uncompressed PVH `vmlinux`) from Debian's
# linux-source-6.1, the patches in deploy/guest/kernel-patches/ and
# deploy/guest/kernel-config.fragment:
#   patches (in name order, patch -p1) -> tinyconfig (ARCH=x86_64) -> fragment via
#   scripts/config -> olddefconfig -> every fragment line checked against .config
#   -> make vmlinux.
# The result is cached outside the checkout, keyed by the source package version and the
# hash of the fragment and the patches:  $LAZYVM_CACHE/kernel-<version>-<sha256:12>/vmlinux
# (a cached build is skipped). About 10 minutes on 2 cores.
#
# Usage: scripts/build-kernel.sh [OUT]   -- OUT (optional): where to copy vmlinux.
# Prints the cached vmlinux path on its last line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
FRAGMENT="$repo/deploy/guest/kernel-config.fragment"
PATCHES="$repo/deploy/guest/kernel-patches"
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
out=${1:-}

die() { echo "build-kernel: $*" >&2; exit 1; }

[ -f "$FRAGMENT" ] || die "fragment $FRAGMENT is missing"
[ -f "$SRC_TAR" ] || die "$SRC_TAR is missing (apt-get install $SRC_PKG, or run make deps)"
version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) || die "$SRC_PKG is not installed"
patches=()
if [ -d "$PATCHES" ]; then
  while IFS= read -r p; do patches+=("$p"); done < <(find "$PATCHES" -maxdepth 1 -name '*.patch' | LC_ALL=C sort)
fi
# The key: the fragment, then each patch's name and content (a fragment-only build keeps
# its old key).
if [ ${#patches[@]} -eq 0 ]; then
  hash=$(sha256sum "$FRAGMENT" | cut -c1-12)
else
  hash=$( { cat "$FRAGMENT"; for p in "${patches[@]}"; do basename "$p"; cat "$p"; done; } | sha256sum | cut -c1-12)
fi
dest="$CACHE/kernel-$version-$hash"

mkdir -p "$CACHE"
# One build per key at a time; a second caller waits and then finds the cache warm.
exec 9>"$dest.lock"
flock 9

if [ ! -f "$dest/vmlinux" ]; then
  start=$(date +%s)
  work="$dest.tmp"
  rm -rf "$work"
  mkdir -p "$work"
  # A failed build leaves gigabytes behind: remove them unless asked to keep them.
  if [ "${LAZYVM_KEEP_KERNEL_BUILD:-0}" != 1 ]; then
    trap 'rm -rf "$work"' EXIT
  fi
  echo "build-kernel: unpacking $SRC_TAR ($version)"
  tar -C "$work" -xf "$SRC_TAR"
  src="$work/linux-source-6.1"
  [ -d "$src" ] || die "unexpected layout of $SRC_TAR (no linux-source-6.1/)"
  for p in ${patches[@]+"${patches[@]}"}; do
    echo "build-kernel: applying $(basename "$p")"
    patch -s -p1 -d "$src" < "$p" || die "$(basename "$p") does not apply to $version"
  done

  mk() { make -C "$src" ARCH=x86_64 "$@"; }
  mk -s tinyconfig

  # Apply the fragment: CONFIG_X=y|m|n|<number>|"string" and "# CONFIG_X is not set".
  # Each symbol is undefined first so that scripts/config appends it at the end of .config:
  # for a choice (SLUB vs tinyconfig's SLOB) the assignment read last wins.
  args=()
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "# CONFIG_"*" is not set")
        name=${line#\# CONFIG_}; name=${name% is not set}
        args+=(--undefine "$name" --disable "$name") ;;
      CONFIG_*=*)
        name=${line%%=*}; name=${name#CONFIG_}; val=${line#*=}
        args+=(--undefine "$name")
        case "$val" in
          y) args+=(--enable "$name") ;;
          m) args+=(--module "$name") ;;
          n) args+=(--disable "$name") ;;
          \"*\") val=${val#\"}; val=${val%\"}; args+=(--set-str "$name" "$val") ;;
          *) args+=(--set-val "$name" "$val") ;;
        esac ;;
      ""|"#"*) ;;
      *) die "cannot parse fragment line: $line" ;;
    esac
  done <"$FRAGMENT"
  "$src/scripts/config" --file "$src/.config" "${args[@]}"
  mk -s olddefconfig

  # olddefconfig silently drops options whose dependencies are missing: check every line.
  mismatches=()
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "# CONFIG_"*" is not set")
        name=${line#\# }; name=${name% is not set}
        if grep -q "^$name=" "$src/.config"; then
          mismatches+=("want '$line', have '$(grep "^$name=" "$src/.config")'")
        fi ;;
      CONFIG_*=n)
        name=${line%%=*}
        if grep -q "^$name=" "$src/.config"; then
          mismatches+=("want '$line', have '$(grep "^$name=" "$src/.config")'")
        fi ;;
      CONFIG_*=*)
        if ! grep -qxF "$line" "$src/.config"; then
          name=${line%%=*}
          have=$(grep -E "^($name=|# $name is not set)" "$src/.config" || echo "absent")
          mismatches+=("want '$line', have '$have'")
        fi ;;
    esac
  done <"$FRAGMENT"
  if [ ${#mismatches[@]} -gt 0 ]; then
    echo "build-kernel: the resulting .config does not match the fragment:" >&2
    printf '  %s\n' "${mismatches[@]}" >&2
    die "${#mismatches[@]} fragment line(s) not honoured (missing dependencies?)"
  fi

  echo "build-kernel: building vmlinux with $(nproc) jobs"
  mk -s -j"$(nproc)" vmlinux
  mkdir -p "$work/out"
  cp "$src/vmlinux" "$work/out/vmlinux"
  cp "$src/.config" "$work/out/config"
  cp "$FRAGMENT" "$work/out/kernel-config.fragment"
  for p in ${patches[@]+"${patches[@]}"}; do cp "$p" "$work/out/"; done
  rm -rf "$dest"
  mv "$work/out" "$dest"
  rm -rf "$work"
  echo "build-kernel: built in $(( $(date +%s) - start )) s"
fi

if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  cp "$dest/vmlinux" "$out"
fi
echo "$dest/vmlinux"

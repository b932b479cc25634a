#!/usr/bin/env bash
# Packages from another Debian suite (trixie, sid) for this bookworm host, without
# touching the machine's apt setup: a private apt configuration (its own sources list,
# lists and cache under $LAZYVM_CACHE/apt-<suite>/), `apt-get download`, `dpkg -x`.
#
#   debian-suite.sh version SUITE PKG          the suite's newest version of PKG
#   debian-suite.sh unpack SUITE DEST PKG...   unpacks the suite's newest PKGs into DEST
#                                              (atomically: DEST appears complete or not
#                                              at all); DEST/.versions lists what it holds
#   debian-suite.sh source SUITE DEST SRCPKG   downloads the upstream tarball of the suite's
#                                              SRCPKG into DEST (apt checks its hash) and
#                                              prints its path
#
# The lists are fetched once and refreshed when a download fails (a version superseded
# by a point release) or when they are older than a week.
set -euo pipefail

CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
die() { echo "debian-suite: $*" >&2; exit 1; }

[ $# -ge 3 ] || die "usage: $0 version SUITE PKG | unpack SUITE DEST PKG... | source SUITE DEST SRCPKG"
cmd=$1 suite=$2
shift 2
case "$suite" in
  trixie|sid|forky) ;;
  *) die "unknown suite $suite" ;;
esac

# Source packages have lists of their own, so the binary lists stay as small as they were.
kind=deb apt_dir="$CACHE/apt-$suite"
if [ "$cmd" = source ]; then kind=deb-src apt_dir="$CACHE/apt-$suite-src"; fi
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/dl"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "$kind [signed-by=$keyring] http://deb.debian.org/debian $suite main" >"$apt_dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o Dir::State::status=/dev/null -o APT::Sandbox::User=root -q)

refresh() {
  apt-get "${opts[@]}" update >/dev/null 2>&1 || die "apt-get update for $suite failed"
  touch "$apt_dir/lists/.fetched"
}
exec 8>"$apt_dir.lock"
flock 8
if [ ! -e "$apt_dir/lists/.fetched" ] \
   || [ -n "$(find "$apt_dir/lists/.fetched" -mtime +7 2>/dev/null)" ]; then
  refresh
fi

version() {
  apt-cache "${opts[@]}" policy "$1" | awk '/Candidate:/{print $2; exit}'
}

case "$cmd" in
  version)
    v=$(version "$1")
    [ -n "$v" ] && [ "$v" != "(none)" ] || die "$suite has no package $1"
    echo "$v" ;;
  unpack)
    dest=$1
    shift
    [ $# -ge 1 ] || die "unpack: no packages named"
    work="$dest.tmp"
    rm -rf "$work"
    mkdir -p "$work/root" "$work/dl"
    for pkg in "$@"; do
      v=$(version "$pkg")
      [ -n "$v" ] && [ "$v" != "(none)" ] || die "$suite has no package $pkg"
      if ! (cd "$work/dl" && apt-get "${opts[@]}" download "$pkg=$v" >/dev/null 2>&1); then
        refresh
        v=$(version "$pkg")
        (cd "$work/dl" && apt-get "${opts[@]}" download "$pkg=$v" >/dev/null 2>&1) \
          || die "apt-get download $pkg=$v ($suite) failed"
      fi
      echo "$pkg $v" >>"$work/root/.versions"
    done
    for deb in "$work"/dl/*.deb; do dpkg -x "$deb" "$work/root"; done
    rm -rf "$dest"
    mv "$work/root" "$dest"
    rm -rf "$work" ;;
  source)
    dest=$1 pkg=$2
    mkdir -p "$dest"
    # Only the upstream tarball is needed (the build is lazyvm's own, not Debian's), so
    # a missing Debian patch set or signature does not matter; apt checks the hash of
    # each file it fetches against the signed lists.
    fetch_orig() {
      (cd "$dest" && apt-get "${opts[@]}" source --download-only "$pkg" >/dev/null 2>&1) || true
      compgen -G "$dest/${pkg}_*.orig.tar.*" | grep -v '\.asc$' | head -n 1
    }
    tarball=$(fetch_orig)
    if [ -z "$tarball" ]; then
      refresh
      tarball=$(fetch_orig)
    fi
    [ -n "$tarball" ] || die "could not fetch the source of $pkg ($suite)"
    echo "$tarball" ;;
  *) die "unknown command $cmd" ;;
esac

#!/usr/bin/env bash
# Installs everything lazyvm needs on this host, idempotently: quick when all is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

PACKAGES=(
  # runtime
  qemu-system-x86 containerd runc fuse3 iproute2
  # CRI pod networking in the tests (bridge, host-local, loopback in /usr/lib/cni)
  containernetworking-plugins
  # guest image
  busybox-static cpio linux-source-6.1 flex bison bc libelf-dev xz-utils patch
  # building the guest's static crun (scripts/build-crun.sh)
  gcc make python3 file
  # building nydus, the agent protocol
  cmake pkg-config libssl-dev protobuf-compiler
  # registry for the lazy-pull tests (run by the tests in their own netns)
  docker-registry
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: Debian packages present"
fi

# The docker-registry package enables (and, where the init system lets it, starts) a
# registry on the host's :5000; the tests run their own in a network namespace, so the
# packaged service is stopped and disabled. Quiet and quick when it already is.
if dpkg-query -W -f='${Status}' docker-registry 2>/dev/null | grep -q 'install ok installed'; then
  if command -v systemctl >/dev/null; then
    if systemctl is-enabled --quiet docker-registry 2>/dev/null; then
      systemctl disable docker-registry >/dev/null 2>&1 || true
    fi
    if [ -d /run/systemd/system ] && systemctl is-active --quiet docker-registry 2>/dev/null; then
      systemctl stop docker-registry >/dev/null 2>&1 || true
    fi
  elif command -v update-rc.d >/dev/null; then
    update-rc.d docker-registry disable >/dev/null 2>&1 || true
  fi
  if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/docker-registry ]; then
    /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
  fi
fi

# containerd 1.7 (trixie) and 2.x (sid) for the compatibility tests: unpacked into the
# cache (never installed), reached through the stable links containerd-trixie and
# containerd-sid (see tests/common/containerd.rs, LAZYVM_TEST_CONTAINERD).
CACHE=${LAZYVM_CACHE:-/var/cache/lazyvm}
for suite in trixie sid; do
  v=$("$here/debian-suite.sh" version "$suite" containerd)
  d="$CACHE/containerd-$suite-$v"
  if [ ! -x "$d/usr/bin/containerd" ]; then
    echo "deps: fetching containerd $v ($suite)"
    "$here/debian-suite.sh" unpack "$suite" "$d" containerd
  fi
  ln -sfn "$(basename "$d")" "$CACHE/containerd-$suite"
done
echo "deps: containerd $(cat "$CACHE"/containerd-{trixie,sid}/.versions | awk '{print $2}' | paste -sd' ') for the compatibility tests"

"$here/build-nydus.sh"
"$here/build-vhost-vsock.sh"

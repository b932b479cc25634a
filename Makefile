# lazyvm: see README.md. Every target is safe to run again.
CARGO ?= cargo
PREFIX ?= /usr/local

SHARE ?= $(PREFIX)/share/lazyvm
ETC ?= /etc/lazyvm
SYSTEMD ?= /etc/systemd/system

.PHONY: all deps build guest install test test-compat unit-test demo bench bench-pull soak fuzz lint clean

all: build

## Install what lazyvm needs (Debian packages, nydusd, nydus-image, vhost-device-vsock).
deps:
	@bash scripts/deps.sh

## Build the host binaries.
build:
	$(CARGO) build --release

## The guest image in build/guest/: minimal kernel (cached build), Debian's kernel,
## the static agent and both initramfs variants.
guest:
	@bash scripts/build-guest.sh

## Put the binaries on PATH (the shim, lazyvm, lazyvm-snapshotter, nydus-overlayfs), the
## guest image in $(SHARE), default configurations in $(ETC) where none exist, and the
## snapshotter's and the VM cache's systemd units (`systemctl enable --now lazyvm-snapshotter`;
## `lazyvm-cache` once `[cache] socket` is set).
install: build guest
	install -m 0755 target/release/containerd-shim-lazyvm-v2 target/release/lazyvm \
	  target/release/lazyvm-snapshotter target/release/nydus-overlayfs $(PREFIX)/bin/
	install -d $(SHARE)
	install -m 0644 build/guest/vmlinux build/guest/initramfs.cpio $(SHARE)/
	# Configurations written for earlier versions name the gzip'd image: the kernel takes
	# the uncompressed one under that name too.
	ln -sfn initramfs.cpio $(SHARE)/initramfs.cpio.gz
	install -d $(ETC)
	test -e $(ETC)/config.toml || install -m 0644 deploy/config.toml $(ETC)/config.toml
	test -e $(ETC)/snapshotter.toml || install -m 0600 deploy/snapshotter.toml $(ETC)/snapshotter.toml
	install -d $(SYSTEMD)
	install -m 0644 deploy/lazyvm-snapshotter.service deploy/lazyvm-cache.service $(SYSTEMD)/

## Everything CI runs: deps, the guest image, lint, unit and integration tests against the
## real components (nydusd, QEMU under TCG, containerd).
test: deps guest lint
	LAZYVM_REQUIRE_GUEST=1 $(CARGO) test --workspace --lib --bins --tests --examples -- --test-threads=1
	$(MAKE) --no-print-directory test-compat

## The compatibility matrix's other rows (the full suite above runs on containerd 1.6.20):
## the shim's core tests (run, exit codes, exec, events order, cycles without leaks, a
## killed shim) and the CRI pod test on containerd 1.7 (Debian trixie) and 2.x (sid),
## which `make deps` unpacks into the cache.
COMPAT_FILTER = ctr_ events_ twenty_ killed_shim pod_lifecycle
test-compat:
	@for v in trixie sid; do \
	  echo "== containerd from $$v =="; \
	  LAZYVM_TEST_CONTAINERD=$$v LAZYVM_REQUIRE_GUEST=1 \
	    $(CARGO) test --test shim --test cri -- --test-threads=1 $(COMPAT_FILTER) || exit 1; \
	done

## Unit tests only (no root, no real components).
unit-test:
	$(CARGO) test --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## The main job: a container in a lazyvm micro-VM from a nydus image, on a private
## containerd; prints its output, the start-up phase timings and the bytes nydusd read.
demo: deps guest
	$(CARGO) build --release --bins
	$(CARGO) run --release --example demo

## Benchmarks, each against a baseline in the same run: boot (minimal vs Debian guest
## kernel), ctr (ctr run with lazyvm vs runc and vs a bare boot of the same kernel; the
## teardown time) and pod (a CRI pod's start to its first
## output line, lazyvm vs runc).
bench: deps guest
	$(CARGO) bench --bench boot --bench ctr --bench pod

## The lazy-pull benchmark: a pod's cold start from a registry shaped to 80 Mbit/s, lazyvm
## with a nydus image against lazyvm and runc with the full OCI image, at 100, 300 and
## 600 MiB (about 30 minutes); writes target/bench-pull.svg.
bench-pull: deps guest
	$(CARGO) build --release --bins
	$(CARGO) bench --bench pull

## Endurance (not in CI, which runs tests/soak.rs's 20 cycles): SOAK_CYCLES (default 200)
## container cycles in one long-lived lazyvm pod and whole lazyvm pod cycles through the
## CRI, and `ctr run --rm` cycles; prints containerd's and the shim side's fds, threads
## and RSS every 50 cycles and fails if they grow beyond their bounds or anything is left.
soak: deps guest
	$(CARGO) bench --bench soak

## Fuzzing (nightly toolchain and cargo-fuzz): every target in fuzz/ for FUZZ_SECONDS
## seconds each, one after the other; crashes land in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 60
fuzz:
	@for t in $$($(CARGO) +nightly fuzz list); do \
	  echo "== fuzz $$t =="; \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf build

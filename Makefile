# lazyvm: see README.md. Every target is safe to run again.
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all deps build test unit-test integration-test demo lint clean

all: build

## Install what lazyvm needs (Debian packages, nydusd, nydus-image, vhost-device-vsock).
deps:
	@bash scripts/deps.sh

## Build the host binaries.
build:
	$(CARGO) build --release

## Everything CI runs: deps, lint, unit and integration tests against the real components.
test: deps lint
	$(CARGO) test --all-targets -- --test-threads=1

## Unit tests only (no root, no real components).
unit-test:
	$(CARGO) test --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## The main job: a RAFS image built with nydus-image, mounted and read through nydusd.
demo: deps
	$(CARGO) run --release --example rafs-demo

clean:
	$(CARGO) clean
	rm -rf build

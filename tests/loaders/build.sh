#!/usr/bin/env bash
# Builds the loader programs tests/test_loaders.py runs (docs/loaders.md):
#   build.sh [go] [rust]      (both by default)
# go:   tests/loaders/go/target/sdt-go-loader          (cilium/ebpf, go.sum pinned)
# rust: tests/loaders/rust/target/release/sdt-{aya,libbpf}-loader
#       (aya; libbpf-rs over the libbpf libbpf-sys builds from source; Cargo.lock pinned)
# Dependencies come from the Go module proxy and crates.io on the first run and
# from the toolchains' caches after it; an unchanged tree rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")"

build_go() {
	command -v go >/dev/null || { echo "build.sh: go not found (install Go)" >&2; return 2; }
	(cd go && go build -mod=readonly -buildvcs=false -trimpath -o target/sdt-go-loader .)
}

build_rust() {
	command -v cargo >/dev/null || { echo "build.sh: cargo not found (install Rust)" >&2; return 2; }
	(cd rust && cargo build --release --locked --quiet)
}

targets=("$@")
((${#targets[@]})) || targets=(go rust)
for t in "${targets[@]}"; do
	case $t in
	go) build_go ;;
	rust) build_rust ;;
	*) echo "build.sh: unknown target $t (go, rust)" >&2; exit 2 ;;
	esac
done

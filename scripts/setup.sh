#!/usr/bin/env bash
# Installs what bpf-sdt's demo and tests need on Debian 12, and nothing that is
# already there: apt packages (as root; otherwise prints the exact command),
# a virtualenv in .venv with bpf-sdt and its test tools, and bpffs.
set -euo pipefail
cd "$(dirname "$0")/.."

# libelf-dev, zlib1g-dev, pkg-config: libbpf-sys builds libbpf from source for the Rust loaders.
APT_PACKAGES=(clang-14 clang-19 llvm-19 libbpf-dev bpftool gcc-bpf meson ninja-build make xz-utils python3-venv git
	libelf-dev zlib1g-dev pkg-config zsh groff-base)
# bpftrace: the benches' start-up reference (bench/scale_bench.py's trace row), not the tests'.
if [[ ${BPF_SDT_SETUP_BENCH:-} == 1 ]]; then
	APT_PACKAGES+=(bpftrace)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "setup: missing Debian packages: ${missing[*]}" >&2
		echo "setup: run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
		exit 2
	fi
	echo "setup: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
	echo "setup: creating .venv"
	"$PY" -m venv .venv
fi
stamp=.venv/.bpf-sdt-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
	echo "setup: installing bpf-sdt and test tools into .venv"
	.venv/bin/pip install -q --disable-pip-version-check -e '.[test,dev]' \
		2> >(grep -v "^WARNING: Location .* is ignored" >&2)
	touch "$stamp"
fi

# bpffs, for pinning programs the demo and tests load (root only).
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
	mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "setup: could not mount bpffs on /sys/fs/bpf" >&2
fi
# tracefs, for bpftrace's tracepoints in the benches (root only; a fresh machine has it unmounted).
if [[ ${BPF_SDT_SETUP_BENCH:-} == 1 && $(id -u) -eq 0 ]] && ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
	mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: could not mount tracefs on /sys/kernel/tracing" >&2
fi
# The Go and Rust loader programs of tests/test_loaders.py, built now so the tests
# do not spend their time in a cold build (from the Go module proxy and crates.io;
# cached after the first run).  A missing toolchain is the tests' finding, not ours.
for toolchain in go:go rust:cargo; do
	if command -v "${toolchain#*:}" >/dev/null; then
		echo "setup: building the ${toolchain%%:*} loaders"
		tests/loaders/build.sh "${toolchain%%:*}"
	else
		echo "setup: ${toolchain#*:} not found: tests/test_loaders.py needs it" >&2
	fi
done
exit 0

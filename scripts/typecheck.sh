#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping, so check a symlink tree
# laid out the way the package installs (bpf_sdt/{codegen,postlink,...}).
# MYPY may be relative to the caller's directory (make passes .venv/bin/mypy):
# it is made absolute before this script changes directory.
set -euo pipefail
mypy=${MYPY:-mypy}
if [[ $mypy == */* ]]; then
	mypy="$(cd "$(dirname "$mypy")" && pwd)/$(basename "$mypy")"
fi
cd "$(dirname "$0")/.."
repo=$PWD
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/bpf_sdt"
for f in bpf_sdt/*.py; do ln -s "$repo/$f" "$tree/bpf_sdt/"; done
for d in codegen postlink clang_plugin hooks headers; do ln -s "$repo/$d" "$tree/bpf_sdt/$d"; done
cd "$tree" && "$mypy" --config-file "$repo/pyproject.toml" -p bpf_sdt

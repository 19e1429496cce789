#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping, so check a symlink tree
# laid out the way the package installs (bpf_sdt/{codegen,postlink,...}).
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/bpf_sdt"
for f in bpf_sdt/*.py; do ln -s "$PWD/$f" "$tree/bpf_sdt/"; done
for d in codegen postlink clang_plugin hooks headers; do ln -s "$PWD/$d" "$tree/bpf_sdt/$d"; done
cd "$tree" && "${MYPY:-mypy}" --config-file "$OLDPWD/pyproject.toml" -p bpf_sdt

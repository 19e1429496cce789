#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping, so check a symlink tree
# laid out the way the package installs (bpf_sdt/{codegen,postlink,...}),
# built from pyproject.toml's own package-dir, so a new package is checked
# without editing this script.  MYPY may be relative to the caller's
# directory (make passes one): it is made absolute before the cd.
set -euo pipefail
mypy=${MYPY:-mypy}
if [[ $mypy == */* ]]; then
	mypy="$(cd "$(dirname "$mypy")" && pwd)/$(basename "$mypy")"
fi
cd "$(dirname "$0")/.."
repo=$PWD
python=python3
[[ -x .venv/bin/python ]] && python=.venv/bin/python
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
"$python" - "$repo" "$tree" <<'PY'
import sys, tomllib
from pathlib import Path

repo, tree = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
(tree / "bpf_sdt").mkdir()
for f in (repo / mapping["bpf_sdt"]).glob("*.py"):
    (tree / "bpf_sdt" / f.name).symlink_to(f)
for package, directory in mapping.items():
    if package != "bpf_sdt":
        (tree / package.replace(".", "/")).symlink_to(repo / directory)
PY
cd "$tree" && "$mypy" --config-file "$repo/pyproject.toml" -p bpf_sdt

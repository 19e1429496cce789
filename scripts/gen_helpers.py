#!/usr/bin/env python3
"""Regenerate bpf_sdt/bpf_helpers.py: each BPF helper's id, and how many arguments it takes.

The rewriter's liveness pass needs to know which of r1..r5 a helper call
reads; without the count it must assume all five, which makes registers look
live (and in need of saving) when they are not.  The source is libbpf's
bpf_helper_defs.h (Debian: libbpf-dev), whose every helper reads

    static long (*bpf_map_update_elem)(void *map, const void *key, ...) = (void *) 2;

Usage: scripts/gen_helpers.py [/usr/include/bpf/bpf_helper_defs.h] > bpf_sdt/bpf_helpers.py
"""
import re
import sys

DECL = re.compile(r"\(\s*\*\s*(?:const\s+)?(bpf_\w+)\s*\)\s*\(([^;]*?)\)\s*=\s*\(void \*\)\s*(\d+);", re.S)


def count_args(params: str) -> int:
    params = " ".join(params.split())
    if params in ("", "void"):
        return 0
    depth, n = 0, 1
    for ch in params:
        depth += ch == "("
        depth -= ch == ")"
        n += ch == "," and depth == 0
    return n


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "/usr/include/bpf/bpf_helper_defs.h"
    with open(path) as f:
        text = f.read()
    rows = sorted((int(num), name, count_args(params)) for name, params, num in DECL.findall(text))
    print('"""BPF helpers: the id of each by name, and the arguments each takes, by id (generated\n'
          'by scripts/gen_helpers.py from libbpf\'s bpf_helper_defs.h; do not edit).  Unknown ids:\n'
          'assume 5 arguments."""\n')
    print("HELPER_IDS: dict[str, int] = {")
    for num, name, _n in rows:
        print(f'    "{name}": {num},')
    print("}\n")
    print("HELPER_ARGS: dict[int, int] = {")
    for num, name, n in rows:
        print(f"    {num}: {n},  # {name}")
    print("}")


main()

"""Compile time of probes (issue 22's "compile" target), side by side.

One generated XDP source per site count: functions of SITES_PER_FUNCTION
sites each, every site under its own condition (as probes sit in real
parsers), arguments loaded from the context and computed, of mixed declared
types.  Each source is compiled with `clang -O2 -g -target bpf` three ways:

- with probes (this tree's header),
- `-DBPF_SDT_DISABLE` (the same file without probes: the reference),
- `-DBPF_SDT_STRICT` (the RFC's own encoding; at most 5 arguments, so the
  5-argument family only),
- the floor: bench/run.py's header whose probes are only an empty asm with
  the converted values as "ri" operands and one NOP (no checks, no notes),
- with `--reference-header-dir`, with probes again under another header
  (a previous version: the change's own ratio),

interleaved, `--runs` times, and the median CPU time (user + system of the
child, so other load on the machine counts less than in wall time) is
reported with the ratio of the probes to each other mode and the growth
exponent between the smallest and the largest count (1.0 is linear).

    .venv/bin/python bench/compile_bench.py [--counts 250,1000,4000] [--runs 3] [--clang clang-19]
        [--header-dir DIR] [--reference-header-dir DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import floor_header  # noqa: E402

HEADER_DIR = REPO / "headers"
SITES_PER_FUNCTION = 100
DEFAULT_COUNTS = (250, 1000, 4000)
DEFAULT_RUNS = 3
# Declared types and argument expressions, cycled per site (`c` is the
# context, `i` a value computed in the function).
TYPES = ("__u32", "int", "long", "const void *", "__u16", "__u64", "_Bool")
INT_EXPRS = ("c->a", "c->b + i", "c->e", "c->f", "c->e * 3 + i", "c->a > i", "i")
PTR_EXPRS = ("(const void *)c", "(const void *)&c->f")
FAMILIES = {7: ("probes", "floor", "disabled"), 5: ("probes", "strict", "floor", "disabled")}
MODE_FLAGS = {"probes": [], "disabled": ["-DBPF_SDT_DISABLE"], "strict": ["-DBPF_SDT_STRICT"], "floor": [],
              "reference": []}
REFERENCE = "reference"     # probes with --reference-header-dir's header (a previous version)
FLOOR = "floor"             # bench/run.py's floor header, included before the real one


def source(sites: int, nargs: int) -> str:
    types = ", ".join(TYPES[k % len(TYPES)] for k in range(nargs))
    lines = ["typedef unsigned short __u16; typedef unsigned int __u32; typedef unsigned long long __u64;",
             "#include <bpf_sdt.h>",
             "struct ctx { __u32 a, b; long e; __u16 f; };",
             f"BPF_SDT_DECLARE{nargs}(p, {types});"]
    for f in range(math.ceil(sites / SITES_PER_FUNCTION)):
        lines.append(f'__attribute__((section("xdp"), used)) int f{f}(struct ctx *c)\n{{\n\t__u32 i = c->b;')
        for s in range(min(SITES_PER_FUNCTION, sites - f * SITES_PER_FUNCTION)):
            args = ", ".join(_expr(k, s) for k in range(nargs))
            lines.append(f"\tif (c->a == {s})\n\t\tBPF_SDT_PROBE{nargs}(p, {args});")
        lines.append("\treturn 2;\n}")
    return "\n".join(lines) + "\n"


def _expr(k: int, site: int) -> str:
    """Argument k of a site: of its declared type's kind, rotating per site."""
    exprs = PTR_EXPRS if TYPES[k % len(TYPES)].endswith("*") else INT_EXPRS
    return exprs[(site + k) % len(exprs)]


def cpu_seconds(cmd: list[str]) -> float:
    """User + system CPU time of one child run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"compile failed: {' '.join(cmd)}\n{res.stderr[:2000]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def include_dirs(mode: str, header_dir: Path, reference: Path | None, floor: Path) -> list[str]:
    """-I options of one mode: the floor's header wraps the real one (#include_next)."""
    if mode == REFERENCE and reference is not None:
        return [f"-I{reference}"]
    if mode == FLOOR:
        return [f"-I{floor}", f"-I{header_dir}"]
    return [f"-I{header_dir}"]


def measure(clang: str, src: Path, modes: tuple[str, ...], runs: int, header_dir: Path,
            reference: Path | None, floor: Path) -> dict[str, float]:
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(runs):                   # interleaved: load changes hit every mode alike
        for m in modes:
            cmd = [clang, "-target", "bpf", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
                   *include_dirs(m, header_dir, reference, floor),
                   *MODE_FLAGS[m], "-c", str(src), "-o", os.devnull]
            times[m].append(cpu_seconds(cmd))
    return {m: statistics.median(t) for m, t in times.items()}


def exponent(counts: list[int], seconds: list[float]) -> float:
    """Slope of log(time) over log(sites) between the first and last count."""
    return math.log(seconds[-1] / seconds[0]) / math.log(counts[-1] / counts[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)),
                    help="site counts, comma-separated (default %(default)s)")
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per mode (median; default %(default)s)")
    ap.add_argument("--clang", default="clang-19", help="compiler (default %(default)s)")
    ap.add_argument("--header-dir", type=Path, default=HEADER_DIR,
                    help="directory of the bpf_sdt.h to measure (default: this tree's)")
    ap.add_argument("--reference-header-dir", type=Path,
                    help="also measure the probes with this directory's bpf_sdt.h (e.g. `git show "
                         "REV:headers/bpf_sdt.h`), side by side")
    args = ap.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    clang = shutil.which(args.clang)
    if clang is None:
        sys.exit(f"{args.clang} not found")
    print(f"compile time, {args.clang} -O2 -g, median CPU s of {args.runs} interleaved runs")
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-compile-bench-") as tmp:
        floor = floor_header(Path(tmp))
        for nargs, family in FAMILIES.items():
            modes = family + ((REFERENCE,) if args.reference_header_dir else ())
            others = [m for m in modes if m != "probes"]
            print(f"\n{nargs}-argument sites")
            print("  sites " + "".join(f"{m:>10}" for m in modes) + "".join(f"{'probes/' + m:>20}" for m in others))
            per_mode: dict[str, list[float]] = {m: [] for m in modes}
            for n in counts:
                src = Path(tmp) / f"s{n}-{nargs}.bpf.c"
                src.write_text(source(n, nargs))
                t = measure(clang, src, modes, args.runs, args.header_dir, args.reference_header_dir, floor)
                for m in modes:
                    per_mode[m].append(t[m])
                row = f"  {n:>5} " + "".join(f"{t[m]:>10.2f}" for m in modes)
                row += "".join(f"{t['probes'] / t[m]:>19.2f}x" for m in others)
                print(row, flush=True)
            if len(counts) > 1:
                print("  growth exponent " + ", ".join(f"{m} {exponent(counts, per_mode[m]):.2f}" for m in modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

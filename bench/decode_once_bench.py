"""`bpf-sdt instrument` on 10,000 sites: how often each object's notes are
decoded and `check` runs, and the time and peak memory, for the code at a
git revision ("before") and the work tree ("after"), side by side in one run.

Each side runs in its own Python process with the same interpreter (this
venv's), from a package tree laid out as pyproject.toml maps the folders
(bpf_sdt/, bpf_sdt/postlink -> postlink/, ...), so that neither side imports
the other's modules.  "before" is ``git archive REV``; "after" is the work
tree as it is.  Before it imports the command, the child wraps the notes
decoder (``bpf_sdt.notes._decode_notes``, which only runs when the decoding
cache misses) and ``bpf_sdt.postlink.check.analyze`` with counters per object
path, then runs `bpf-sdt instrument IN -o OUT` through the CLI's ``main`` and
reports its wall time, its own CPU time (which load from other jobs on a
shared machine disturbs less than the wall time) and its own peak RSS (ru_maxrss; the clang and bpftool
it starts are not counted).  Runs alternate between the sides, so load on a
shared machine falls on both alike; the fastest run and the median are shown,
and the two outputs are compared byte for byte (the recorder's temporary
source path normalised, as bench/compare_outputs.py does).

With ``--profile N``, the work tree's command also runs once more under
cProfile, after the timed runs (so the profile slows none of them), and the
N functions with the most CPU time of their own are printed: where the time
goes now, for the next step.

Usage: .venv/bin/python bench/decode_once_bench.py [--before REV] [--runs N] [--sites N] [--profile N]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import many_sites_object  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The revision this session started from (issue 18's reshaping came after it).
DEFAULT_BEFORE = "f90471f"
DEFAULT_RUNS = 5
DEFAULT_SITES = 10_000
KIB_PER_MIB = 1024
# tempfile's random directory name in the recorder's source path (BTF line info)
TEMP_DIR = re.compile(rb"(bpf-sdt-instrument-)[a-z0-9_]{8}/")

# Runs in the child: the counters, then the command.  argv: package tree, IN, OUT.
CHILD = r"""
import collections, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import bpf_sdt
assert bpf_sdt.__file__.startswith(sys.argv[1]), bpf_sdt.__file__
from bpf_sdt import notes
from bpf_sdt.postlink import check

decodes, checks = collections.Counter(), collections.Counter()
decode, analyze = notes._decode_notes, check.analyze

def counted_decode(obj):
    decodes[obj.path] += 1
    return decode(obj)

def counted_analyze(obj):
    checks[obj.path] += 1
    return analyze(obj)

notes._decode_notes, check.analyze = counted_decode, counted_analyze
from bpf_sdt import cli

start, cpu_start = time.perf_counter(), time.process_time()
code = cli.main(["instrument", sys.argv[2], "-o", sys.argv[3]])
wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({"code": code, "wall": wall, "cpu": cpu,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "decodes": decodes, "checks": checks}))
"""


def package_tree(source: Path, dest: Path) -> Path:
    """A directory importing ``bpf_sdt`` from ``source`` the way pyproject.toml
    maps it: bpf_sdt's own files, and each mapped folder at its package path
    (symlinks, so nothing is copied)."""
    mapping: dict[str, str] = tomllib.loads((source / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-dir"]
    root = dest / "bpf_sdt"
    root.mkdir(parents=True)
    for entry in (source / mapping["bpf_sdt"]).iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry.resolve())
    for package, folder in mapping.items():
        if package != "bpf_sdt":
            link = dest / package.replace(".", "/")
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to((source / folder).resolve())
    return dest


def checkout(rev: str, dest: Path) -> Path:
    """``git archive REV`` unpacked into ``dest``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# Runs in the child under the profiler.  argv: package tree, IN, OUT, how many functions.
PROFILED_CHILD = r"""
import cProfile, pstats, sys
sys.path.insert(0, sys.argv[1])
from bpf_sdt import cli
profile = cProfile.Profile()
profile.runcall(cli.main, ["instrument", sys.argv[2], "-o", sys.argv[3]])
pstats.Stats(profile).sort_stats("tottime").print_stats(int(sys.argv[4]))
"""


def profile_side(tree: Path, obj: Path, out: Path, top: int) -> str:
    """cProfile's table of the ``top`` functions by their own CPU time."""
    res = subprocess.run([sys.executable, "-c", PROFILED_CHILD, str(tree), str(obj), str(out), str(top)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"profiled instrument failed in {tree}: {res.stderr.strip().splitlines()[-1:]}")
    return res.stdout


def run_side(tree: Path, obj: Path, out: Path) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(obj), str(out)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"instrument failed in {tree}: {res.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return result


def normalised(path: Path) -> bytes:
    return TEMP_DIR.sub(rb"\1XXXXXXXX/", path.read_bytes())


def per_object(counts: dict[str, int], obj: Path, out: Path) -> str:
    """Counts of IN, OUT and the rest (linked objects, recorder, in temporaries)."""
    inp, outp = counts.get(str(obj), 0), counts.get(str(out), 0)
    rest = sum(counts.values()) - inp - outp
    return f"{inp} / {outp} / {rest}"


def row(label: str, before: str, after: str, ratio: str = "") -> str:
    return f"| {label} | {before} | {after} | {ratio} |"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision measured as 'before'")
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    ap.add_argument("--sites", type=int, default=DEFAULT_SITES)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile the work tree's run once and print its N costliest functions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-decode-bench-") as t:
        tmp = Path(t)
        obj = many_sites_object(tmp, args.sites)
        trees = {"before": package_tree(checkout(args.before, tmp / "src-before"), tmp / "pkg-before"),
                 "after": package_tree(REPO, tmp / "pkg-after")}
        outs = {side: tmp / f"{side}.instr.o" for side in trees}
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in trees}
        for _ in range(args.runs):
            for side, tree in trees.items():
                runs[side].append(run_side(tree, obj, outs[side]))
        same = normalised(outs["before"]) == normalised(outs["after"])
        profile = profile_side(trees["after"], obj, tmp / "profiled.instr.o", args.profile) if args.profile else ""
        shutil.rmtree(tmp / "src-before")
    b, a = runs["before"], runs["after"]

    def fastest(rs: list[dict[str, Any]], what: str = "wall") -> float:
        return float(min(r[what] for r in rs))

    def peak(rs: list[dict[str, Any]]) -> float:
        return float(statistics.median(r["maxrss_kib"] for r in rs)) / KIB_PER_MIB

    print(f"instrument (recorder) on {args.sites:,} sites, {args.runs} alternating runs; "
          f"before = {args.before}, after = the work tree\n")
    print(row("", f"before ({args.before})", "after", "after / before"))
    print("|---|---|---|---|")
    print(row("wall, fastest run (s)", f"{fastest(b):.2f}", f"{fastest(a):.2f}", f"{fastest(a) / fastest(b):.2f}x"))
    print(row("CPU of the command's process, fastest (s)", f"{fastest(b, 'cpu'):.2f}", f"{fastest(a, 'cpu'):.2f}",
              f"{fastest(a, 'cpu') / fastest(b, 'cpu'):.2f}x"))
    print(row("wall, median (s)", f"{statistics.median(r['wall'] for r in b):.2f}",
              f"{statistics.median(r['wall'] for r in a):.2f}", ""))
    print(row("peak RSS, median (MiB)", f"{peak(b):.0f}", f"{peak(a):.0f}", f"{peak(a) / peak(b):.2f}x"))
    print(row("per site (KiB)", f"{peak(b) * KIB_PER_MIB / args.sites:.1f}",
              f"{peak(a) * KIB_PER_MIB / args.sites:.1f}", ""))
    print(row("notes decodes: IN / OUT / others", per_object(b[0]["decodes"], obj, outs["before"]),
              per_object(a[0]["decodes"], obj, outs["after"]), ""))
    print(row("check runs: IN / OUT / others", per_object(b[0]["checks"], obj, outs["before"]),
              per_object(a[0]["checks"], obj, outs["after"]), ""))
    print(f"\noutputs byte-identical (recorder source path normalised): {'yes' if same else 'NO'}")
    if profile:
        print(f"\nthe work tree's run under cProfile (its overhead included), by own time:\n{profile}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

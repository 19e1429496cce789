"""`bpf-sdt lint` of this tree against an earlier commit's, side by side: the
same runs as bench/lint_ir_bench.py (cold with and without the IR rules, -j1
and all cores, warm), on its two file sets, interleaved so that load falls on
both alike.  For checking that a change of lint's code (a refactoring) costs
nothing: wall time (fastest of the runs) and CPU time (user + system of lint
and every process it started; the least disturbed by other load).

    .venv/bin/python bench/lint_against.py REV [--runs N]

Both trees are installed the way users get them (`pip install` into a fresh
venv, bench/run.py's installed_cli); REV's from `git archive REV`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lint_ir_bench import generated_sources, sample_commands  # noqa: E402
from run import HEADERS, REPO, installed_cli, timed_side_by_side, timing_row  # noqa: E402

WIDTH = 34
WARM_RUNS = 15
TREES = ("reference", "this tree")


def reference_cli(rev: str, tmp: Path) -> str:
    """REV's bpf-sdt, installed from `git archive REV` into its own venv."""
    tree = tmp / "reference-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = tmp / "reference-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(tree)], check=True)
    return str(venv / "bin" / "bpf-sdt")


class Lint:
    """One lint command line, run cold (cache emptied first) or warm, that
    adds up the CPU time of every run."""

    def __init__(self, cli: str, args: list[str], cache: Path, cold: bool) -> None:
        self.cmd, self.cache, self.cold = [cli, "lint", *args], cache, cold
        self.env = dict(os.environ, BPF_SDT_CACHE_DIR=str(cache))
        self.cpu: list[float] = []

    def __call__(self) -> None:
        if self.cold:
            shutil.rmtree(self.cache, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def compare(name: str, clis: dict[str, str], lint_args: list[str], tmp: Path, runs: int) -> list[str]:
    jobs = os.cpu_count() or 1
    modes = {"cold -j1, IR": ["-j", "1"], f"cold -j{jobs}, IR": ["-j", str(jobs)],
             f"cold -j{jobs} --no-ir": ["-j", str(jobs), "--no-ir"]}
    lints: dict[str, Lint] = {}
    for mode, extra in modes.items():
        for tree, cli in clis.items():
            lints[f"{mode}|{tree}"] = Lint(cli, [*extra, *lint_args], tmp / f"cache-{name}-{tree}", cold=True)
    cold_jobs: dict[str, Callable[[], object]] = dict(lints)
    times = timed_side_by_side(cold_jobs, runs=runs)
    warm = {f"warm|{tree}": Lint(cli, lint_args, tmp / f"warm-{name}-{tree}", cold=False)
            for tree, cli in clis.items()}
    for w in warm.values():
        w()            # fills the cache
        w.cpu.clear()
    warm_jobs: dict[str, Callable[[], object]] = dict(warm)
    times.update(timed_side_by_side(warm_jobs, runs=WARM_RUNS))
    lints.update(warm)
    out = [f"{name}: fastest of {runs} interleaved runs (warm: {WARM_RUNS}); ratios against the reference:"]
    for mode in [*modes, "warm"]:
        ref, new = lints[f"{mode}|{TREES[0]}"], lints[f"{mode}|{TREES[1]}"]
        base = times[f"{mode}|{TREES[0]}"][0]
        for tree, lint in ((TREES[0], ref), (TREES[1], new)):
            row = timing_row(f"{mode}, {tree}", times[f"{mode}|{tree}"], base if lint is new else None, WIDTH)
            cpu = min(lint.cpu) * 1000
            ratio = f"  {min(new.cpu) / min(ref.cpu):.2f}x" if lint is new else ""
            out.append(f"{row:<{WIDTH + 48}} CPU {cpu:7.1f} ms{ratio}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", help="the commit to compare with (e.g. the one before a change)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-lint-against-") as t:
        tmp = Path(t)
        clis = dict(zip(TREES, (reference_cli(args.rev, tmp), installed_cli(tmp)), strict=True))
        files = generated_sources(tmp / "generated")
        out = compare("generated", clis, [*files, "--", f"-I{HEADERS}"], tmp, args.runs)
        build, samples, _commands = sample_commands()
        out += [""] + compare("samples", clis, ["-p", str(build), *samples], tmp, args.runs)
        print(f"reference: {args.rev}")
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

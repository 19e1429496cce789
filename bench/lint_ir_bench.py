"""`bpf-sdt lint` with the IR rules, cold, next to `clang -O2 -g -c` on the same
files, and warm against the cache.

Two sets of files:
  generated  bench/run.py's 200 lint sources (8 two-argument probes each);
  samples    samples/*.bpf.c with their compile_commands.json (vmlinux.h,
             libbpf-style programs: the front end dominates).
Each set is timed with one process at a time (-j1 / one clang after another:
what a pre-commit hook on a few files sees) and on all cores (`lint -j N`
against N clangs at a time, one process per file as make -jN and ninja run
them; for the generated set also 25 files per clang command, which shows that
the driver does not share its start-up: it runs one front-end process per
input, where lint's shared clang (clang_plugin/irbatch.py) runs one for many).
Cold runs start from an empty cache; `--no-ir`
cold runs show what the IR rules add; warm runs re-lint with the cache filled.
Runs are interleaved (bench/run.py's timed_side_by_side); ratios use the
fastest run of each.

    .venv/bin/python bench/lint_ir_bench.py [--runs N] [--only generated|samples]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import CLANG, HEADERS, REPO, installed_cli, timed_side_by_side, timing_row  # noqa: E402

SAMPLES = REPO / "samples"
GENERATED = 200
WIDTH = 44


def generated_sources(d: Path) -> list[str]:
    """The sources bench/run.py's lint bench uses."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(GENERATED):
        body = "\n".join(f"\tBPF_SDT_PROBE2(p{i}_{k}, c[{k}], {k});" for k in range(8))
        decls = "\n".join(f"BPF_SDT_DECLARE2(p{i}_{k}, int, long);" for k in range(8))
        (d / f"s{i}.bpf.c").write_text(
            f"#include <bpf_sdt.h>\n{decls}\nint f{i}(int *c)\n{{\n{body}\n\treturn 0;\n}}\n")
    return sorted(map(str, d.glob("*.bpf.c")))


def sample_commands() -> tuple[Path, list[str], list[list[str]]]:
    """The samples' build directory, files and compile commands (to /dev/null)."""
    build = SAMPLES / "build"
    db = build / "compile_commands.json"
    if not db.exists():
        subprocess.run(["make", "-s", "-C", str(SAMPLES), "build/compile_commands.json"], check=True)
    entries = json.loads(db.read_text())
    files, commands = [], []
    for e in entries:
        args = shlex.split(e["command"]) if "command" in e else e["arguments"]
        args = [a for a in args if a not in ("-Werror",)]
        if "-o" in args:
            i = args.index("-o")
            del args[i:i + 2]
        files.append(e["file"])
        commands.append(["sh", "-c", f"cd {shlex.quote(e['directory'])} && exec "
                         + shlex.join([*args, "-o", "/dev/null"])])
    return build, files, commands


def run_quiet(cmd: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> None:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, input=stdin, env=env, check=False)


def bench_set(name: str, sdt: str, files: list[str], lint_args: list[str], clang_one: Callable[[], None],
              clang_all: Callable[[], None], tmp: Path, runs: int,
              clang_batched: Callable[[], None] | None = None) -> list[str]:
    jobs = os.cpu_count() or 1
    cache = tmp / f"cache-{name}"
    env = dict(os.environ, BPF_SDT_CACHE_DIR=str(cache))

    def lint(*extra: str) -> Callable[[], None]:
        def go() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            run_quiet([sdt, "lint", *extra, *lint_args], env)
        return go

    jobs_dict: dict[str, Callable[[], object]] = {
        "clang1": clang_one, "lint1": lint("-j", "1"), "noir1": lint("-j", "1", "--no-ir"),
        "clangN": clang_all, "lintN": lint("-j", str(jobs)), "noirN": lint("-j", str(jobs), "--no-ir"),
    }
    if clang_batched is not None:
        jobs_dict["batched"] = clang_batched
    t = timed_side_by_side(jobs_dict, runs=runs)
    run_quiet([sdt, "lint", *lint_args], env)          # fill the cache
    warm = timed_side_by_side({"warm": lambda: run_quiet([sdt, "lint", *lint_args], env)}, runs=15)["warm"]
    per100 = warm[0] / len(files) * 100 * 1000
    return [
        f"{name}: {len(files)} files, {runs} interleaved runs (warm: 15), fastest; ratios against clang:",
        "  one process at a time:",
        timing_row("clang -O2 -g -c, one file after another", t["clang1"], t["clang1"][0], WIDTH),
        timing_row("bpf-sdt lint -j1, cold (libclang + IR)", t["lint1"], t["clang1"][0], WIDTH),
        timing_row("bpf-sdt lint -j1 --no-ir, cold", t["noir1"], t["clang1"][0], WIDTH),
        f"  all {jobs} cores:",
        timing_row(f"clang -O2 -g -c, {jobs} at a time, one per file", t["clangN"], t["clangN"][0], WIDTH),
        timing_row(f"bpf-sdt lint -j{jobs}, cold (libclang + IR)", t["lintN"], t["clangN"][0], WIDTH),
        timing_row(f"bpf-sdt lint -j{jobs} --no-ir, cold", t["noirN"], t["clangN"][0], WIDTH),
        *([timing_row(f"clang -O2 -g -c, 25 files per clang, {jobs} at a time", t["batched"], t["clangN"][0],
                      WIDTH)] if "batched" in t else []),
        timing_row("bpf-sdt lint, warm cache", warm, None, WIDTH)
        + (f"   {per100:.1f} ms per 100 files" if len(files) >= 100 else ""),
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=("generated", "samples"))
    args = ap.parse_args()
    jobs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-lint-ir-") as t:
        tmp = Path(t)
        sdt = installed_cli(tmp)
        out: list[str] = []
        if args.only in (None, "generated"):
            files = generated_sources(tmp / "generated")
            objdir = tmp / "objs"
            objdir.mkdir()
            base = [CLANG, "-target", "bpf", "-O2", "-g", f"-I{HEADERS}", "-c"]
            listing = "\n".join(files).encode()

            def clang_one() -> None:
                for f in files:
                    run_quiet([*base, f, "-o", "/dev/null"])

            def clang_all() -> None:
                run_quiet(["xargs", "-P", str(jobs), "-I{}", *base, "{}", "-o", "/dev/null"], stdin=listing)

            def clang_batched() -> None:
                run_quiet(["sh", "-c", f"cd {shlex.quote(str(objdir))} && xargs -P {jobs} -n 25 "
                           + shlex.join(base)], stdin=listing)

            out += bench_set("generated", sdt, files, [*files, "--", f"-I{HEADERS}"], clang_one, clang_all,
                             tmp, args.runs, clang_batched)
        if args.only in (None, "samples"):
            build, files, commands = sample_commands()

            def samples_one() -> None:
                for c in commands:
                    run_quiet(c)

            def samples_all() -> None:
                with ThreadPoolExecutor(jobs) as pool:
                    list(pool.map(run_quiet, commands))

            out += [""] + bench_set("samples", sdt, files, ["-p", str(build), *files], samples_one, samples_all,
                                    tmp, args.runs)
        print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decoder cost on a generated object with many sites, side by side in one run.

Two parts, each run in interleaved rounds so that load on a shared machine
falls on every job alike:

1. whole commands: `bpf-sdt check` and `bpf-sdt list --json` against
   `llvm-readelf -r -s` on the same object (wall time, fastest of the rounds),
   for each bpf-sdt given (`--cli NAME=PATH`, e.g. an install of an older
   commit next to this one);
2. the decoders alone, in this process (CPU time, fastest of the rounds): the
   ELF reader, the symbol table as Symbols, relocations, notes, BTF and the
   code sections.

    .venv/bin/python bench/decode_bench.py [--sites N] [--cli before=/venv/bin/bpf-sdt ...]

The generator is bench/run.py's (the check bench's object).  Without --cli,
part 1 times a fresh `pip install .` of this tree (run.installed_cli).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py: the generator and the side-by-side timer)

from bpf_sdt import notes  # noqa: E402
from bpf_sdt.btf import parse_btf  # noqa: E402
from bpf_sdt.elf import SHT_REL, SHT_RELA, load_object  # noqa: E402
from bpf_sdt.insn import decode_section  # noqa: E402

ROUNDS = 15


def cpu_best(job: Callable[[], object], rounds: int = ROUNDS) -> float:
    """Fastest CPU time of ``rounds`` runs, in ms (CPU time: other processes
    on the machine change it far less than wall time)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        job()
        best = min(best, time.process_time() - t0)
    return best * 1000


def decoder_rows(obj_path: Path) -> list[str]:
    path = str(obj_path)
    obj = load_object(path)
    btf = obj.section(".BTF")
    jobs: dict[str, Callable[[], object]] = {
        "read the ELF (headers)": lambda: load_object(path),
        "symbols as Symbol tuples": lambda: load_object(path).symbols,
        "relocations, every section": lambda: [obj.decode_relocations(s) for s in obj.sections
                                               if s.type in (SHT_REL, SHT_RELA)],
        "notes (decode_notes)": lambda: notes._decode_notes(load_object(path)),
        "BTF": lambda: parse_btf(obj.section_data(btf)) if btf is not None else None,
        "code sections (insn)": lambda: [decode_section(s.index, s.name, obj.section_data(s), obj.relocations(s)[1])
                                         for s in obj.sections if s.executable],
    }
    return [f"  {name:<28} {cpu_best(job):7.1f} ms" for name, job in jobs.items()]


def command_rows(obj: Path, clis: dict[str, str]) -> list[str]:
    readelf = shutil.which("llvm-readelf-19") or shutil.which("llvm-readelf") or "llvm-readelf"
    jobs = {"readelf": run.command([readelf, "-r", "-s", str(obj)])}
    for name, cli in clis.items():
        jobs[f"{name} check"] = run.command([cli, "check", str(obj)])
        jobs[f"{name} list"] = run.command([cli, "list", "--json", str(obj)])
    times = run.timed_side_by_side(jobs, runs=ROUNDS)
    base = times["readelf"][0]
    rows = [run.timing_row("llvm-readelf -r -s", times["readelf"], base, width=28)]
    for name in clis:
        rows.append(run.timing_row(f"{name}: check", times[f"{name} check"], base, width=28))
        rows.append(run.timing_row(f"{name}: list --json", times[f"{name} list"], base, width=28))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=10_000)
    ap.add_argument("--cli", action="append", default=[], metavar="NAME=PATH",
                    help="a bpf-sdt to time (repeatable); default: a fresh install of this tree")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        obj = run.many_sites_object(Path(tmp), args.sites)
        clis = dict(c.split("=", 1) for c in args.cli) or {"this tree": run.installed_cli(Path(tmp))}
        print(f"object with {args.sites} sites ({obj.stat().st_size // 1024} KiB), {ROUNDS} interleaved rounds")
        print("commands (wall time, fastest; ratio to llvm-readelf):")
        print("\n".join(command_rows(obj, clis)))
        print("decoders in this process (CPU time, fastest):")
        print("\n".join(decoder_rows(obj)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

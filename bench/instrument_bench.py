"""What an enabled probe site costs, and how fast `bpf-sdt instrument` is.

1. Per site, on the samples: instructions `instrument` inserts and the
   verifier's "processed insns", instrumented (recorder) against the same
   object uninstrumented, next to the subprogram alternative: each probe a
   call to an empty noinline subprogram that fentry could attach to, which
   costs its call, argument set-up and verification whether or not anything
   is attached.  The inserted code is also checked against the target:
   spills and fills of the caller-saved registers live across the site, one
   store per argument (plus conversion of narrow types), the site id the
   recorder reads, and r1 = r10; r1 += off; call.
2. Time to instrument an object with 10,000 sites, next to `bpftool gen
   object` on the same object (notes stripped: that linker refuses them),
   interleaved in one run.

Usage: .venv/bin/python bench/instrument_bench.py [--only cost|time]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpf_sdt.instrument.observers import RECORDER_PREFIX  # noqa: E402
from run import CLANG, installed_cli, many_sites_object, timed_side_by_side, timing_row  # noqa: E402

from bpf_sdt.elf import ElfImage, load_object  # noqa: E402
from bpf_sdt.format import NOTES_REL_SECTION, NOTES_SECTION  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
MEASURED = ("xdp_parser", "tc.linked", "loop.linked", "trace_exec", "wide_probe")
BPFTOOL = shutil.which("bpftool") or "/usr/sbin/bpftool"
MAX_SUBPROG_ARGS = 5      # a BPF-to-BPF call passes at most five registers


def alternative_header(d: Path) -> Path:
    """bpf_sdt.h where each probe is a call to an empty static noinline
    subprogram (the fentry route), so that the samples build unchanged."""
    d.mkdir(parents=True, exist_ok=True)
    lines = ["#pragma once"]
    for n in range(13):
        params = ", ".join(f"t{i}" for i in range(1, n + 1))
        args = ", ".join(f"a{i}" for i in range(1, n + 1))
        typed = ", ".join(f"t{i} a{i}" for i in range(1, n + 1)) or "void"
        uses = ", ".join(f'"r"(a{i})' for i in range(1, n + 1))
        keep = f'asm volatile("" :: {uses})' if n else 'asm volatile("")'
        lines.append(f"#define BPF_SDT_DECLARE{n}(name{', ' if n else ''}{params}) "
                     f"static __attribute__((noinline)) int __alt_##name({typed}) {{ {keep}; return 0; }}")
        lines.append(f"#define BPF_SDT_PROBE{n}(name{', ' if n else ''}{args}) __alt_##name({args})")
    (d / "bpf_sdt.h").write_text("\n".join(lines) + "\n")
    return d


def build_samples(out: Path, sdt_cflags: str | None = None) -> bool:
    """Build the samples; with ``sdt_cflags`` (the alternative header) keep
    going past the programs it cannot express (more than five arguments)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = ["make", "-s", "-k", "-C", str(SAMPLES), f"BPF_CLANG={CLANG}", f"BPF_SDT_OUTDIR={out}"]
    if sdt_cflags:
        cmd.append(f"BPF_SDT_CFLAGS={sdt_cflags}")
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False).returncode == 0
    return ok or sdt_cflags is not None


def processed(obj: Path) -> int | None:
    """Sum of the verifier's "processed N insns" over the object's programs."""
    pin = Path("/sys/fs/bpf") / f"sdt_bench_{os.getpid()}"
    res = subprocess.run([BPFTOOL, "-d", "prog", "loadall", str(obj), str(pin)], capture_output=True,
                         text=True, check=False)
    subprocess.run(["rm", "-rf", str(pin)], check=False)
    for pinned in ("bpf_sdt_events", "bpf_sdt_lost"):
        Path("/sys/fs/bpf", pinned).unlink(missing_ok=True)
    if res.returncode:
        return None
    return sum(int(m) for m in re.findall(r"^processed (\d+) insns", res.stdout + res.stderr, re.M))


def code_insns(obj: Path, skip_prefix: str | None = None) -> int:
    """Instructions in the object's code, the recorder's own functions left out."""
    o = load_object(obj)
    total = sum(s.size for s in o.sections if s.executable) // 8
    if skip_prefix:
        total -= sum(s.size for s in o.symbols if s.name.startswith(skip_prefix)) // 8
    return total


def bench_cost(tmp: Path) -> list[str]:
    base, alt = tmp / "base", tmp / "alt"
    if not build_samples(base) or not build_samples(alt, f"-I{alternative_header(tmp / 'althdr')}"):
        return ["building the samples failed"]
    sdt = installed_cli(tmp)
    rows = ["| object | sites | insns added per site | verifier: probes off | instrumented | "
            "subprogram alternative: insns (always on) | verifier |", "|---|---|---|---|---|---|---|"]
    for name in MEASURED:
        obj = base / f"{name}.bpf.o"
        out = tmp / f"{name}.instr.o"
        subprocess.run([sdt, "instrument", str(obj), "-o", str(out)], check=True, capture_output=True)
        sites = sum(1 for _ in load_object(obj).symbols if _.name.startswith("___sdt_jt_"))
        added = code_insns(out, RECORDER_PREFIX) - code_insns(obj)
        alt_obj = alt / f"{name}.bpf.o"
        alt_added = code_insns(alt_obj) - code_insns(obj) if alt_obj.exists() else None
        rows.append(f"| {name} | {sites} | {added / sites:.1f} | {processed(obj)} | {processed(out)} | "
                    f"{'n/a (> 5 args)' if alt_added is None else f'+{alt_added}'} | "
                    f"{processed(alt_obj) if alt_obj.exists() else 'n/a'} |")
    rows.append("\n(\"probes off\" is the object as built: its NOPs cost nothing.  The subprogram "
                "alternative pays its instructions and verification on every load, attached or not; "
                "fentry itself is refused (EPERM) on this machine's kernel, so only its always-on "
                "half is measured.)")
    return rows


def bench_time(tmp: Path) -> list[str]:
    obj = many_sites_object(tmp)
    img = ElfImage.from_object(load_object(obj))
    img.remove_sections({NOTES_SECTION, NOTES_REL_SECTION})
    stripped = tmp / "many.stripped.o"
    stripped.write_bytes(img.to_bytes())
    sdt = installed_cli(tmp)
    observer = tmp / "obs.bpf.c"
    observer.write_text('#define SEC(n) __attribute__((section(n), used))\n'
                        'SEC("bpf_sdt/*") int obs(unsigned long long *ctx) { return 0; }\n')
    obs_o = tmp / "obs.o"
    subprocess.run([CLANG, "-target", "bpf", "-O2", "-g", "-c", str(observer), "-o", str(obs_o)], check=True)

    def job(cmd: list[str]) -> object:
        return lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    t = timed_side_by_side({
        "bpftool": job([BPFTOOL, "gen", "object", str(tmp / "linked.o"), str(stripped)]),
        "recorder": job([sdt, "instrument", str(obj), "-o", str(tmp / "rec.o")]),
        "observer": job([sdt, "instrument", str(obj), "-o", str(tmp / "obs.instr.o"), "--observer", str(obs_o)]),
    }, runs=5)
    base = t["bpftool"][0]
    return [f"object with 10,000 sites ({obj.stat().st_size // 1024} KiB), 5 interleaved runs, fastest:",
            timing_row("bpftool gen object", t["bpftool"], base, 34),
            timing_row("instrument (recorder, builds it)", t["recorder"], base, 34),
            timing_row("instrument --observer", t["observer"], base, 34)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("cost", "time"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-ibench-") as t:
        for name, fn in (("cost", bench_cost), ("time", bench_time)):
            if args.only in (None, name):
                print(f"\n## {name}\n")
                print("\n".join(fn(Path(t))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

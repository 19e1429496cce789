"""What the recorder costs the verifier, per enabled site, now against a
reference commit (by default the last one with the static recorder), in one
run on the same objects.

For each object: the sites, the instructions `instrument` inserts (the
recorder's own functions left out), the verifier's "processed insns" of the
object as built (probes off), instrumented by the reference and instrumented
now, and the load time (bpftool prog loadall, fastest of 3).  The claim
checked: processed(now) - processed(off) <= inserted + a constant per program
(the recorder's global functions, verified once each); the last column shows
that constant, which must not grow with the number of sites.

Objects: the samples, and generated XDP programs with 100, 1,000 and 10,000
sites (100 sites in each of N/100 global functions).

Usage: .venv/bin/python bench/verifier_cost.py [--reference COMMIT]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpf_sdt.instrument.observers import RECORDER_PREFIX  # noqa: E402
from instrument_bench import BPFTOOL, MEASURED, build_samples, code_insns  # noqa: E402
from run import CLANG, HEADERS, installed_cli  # noqa: E402

from bpf_sdt.elf import load_object  # noqa: E402
from bpf_sdt.format import ENTRY_SYMBOL_PREFIX  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
REFERENCE = "54b53f6~1"         # the parent of the commit that made the recorder global
GENERATED_SITES = (100, 1_000, 10_000)
SITES_PER_FUNCTION = 100
LOAD_RUNS = 3
HOST_PINS = Path("/sys/fs/bpf")


def reference_cli(tmp: Path, commit: str) -> str:
    """bpf-sdt as of ``commit``, installed into a venv of its own."""
    src, venv = tmp / "ref-src", tmp / "ref-venv"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(src)], check=True)
    return str(venv / "bin" / "bpf-sdt")


def generated(tmp: Path, n: int) -> Path:
    """An XDP program whose n sites sit in n/100 global functions."""
    decls = "BPF_SDT_DECLARE2(hot, int, long);\nBPF_SDT_DECLARE3(warm, int, int, long);\n"
    funcs, calls = [], []
    for f in range(n // SITES_PER_FUNCTION):
        body = "\n".join(f"\tBPF_SDT_PROBE2(hot, c->v[{i % 8}], {i});" if i % 2 else
                         f"\tBPF_SDT_PROBE3(warm, c->v[{i % 8}], c->v[{(i + 1) % 8}], {i});"
                         for i in range(SITES_PER_FUNCTION))
        funcs.append(f"__attribute__((noinline)) int f{f}(struct vals *c)\n{{\n\tif (!c)\n\t\treturn 0;\n"
                     f"{body}\n\treturn c->v[0];\n}}")
        calls.append(f"\ts += f{f}(&c);")
    src = tmp / f"gen{n}.bpf.c"
    src.write_text("#include <bpf_sdt.h>\n#define SEC(n) __attribute__((section(n), used))\n"
                   "struct xdp_md { unsigned int data, data_end; };\nstruct vals { int v[8]; };\n" + decls
                   + "\n".join(funcs)
                   + "\nSEC(\"xdp\") int gen(struct xdp_md *x)\n{\n\tstruct vals c = {};\n\tint s = 0;\n"
                   "\tc.v[0] = x->data_end - x->data;\n" + "\n".join(calls)
                   + "\n\treturn s & 1 ? 2 : 2;\n}\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n")
    obj = tmp / f"gen{n}.bpf.o"
    subprocess.run([CLANG, "-target", "bpf", "-O2", "-g", f"-I{HEADERS}", "-c", str(src), "-o", str(obj)],
                   check=True)
    return obj


def _loadall(obj: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    pin = HOST_PINS / f"sdt_vbench_{os.getpid()}"
    try:
        return subprocess.run([BPFTOOL, *flags, "prog", "loadall", str(obj), str(pin)], capture_output=True,
                              text=True, check=False)
    finally:
        subprocess.run(["rm", "-rf", str(pin)], check=False)
        for stale in ("bpf_sdt_events", "bpf_sdt_lost"):       # the reference pins by name
            (HOST_PINS / stale).unlink(missing_ok=True)


def load(obj: Path) -> tuple[int | None, float]:
    """Processed insns over the object's programs (from bpftool -d, whose
    verifier log is slow to write) and the fastest plain load time."""
    res = _loadall(obj, "-d")
    if res.returncode:
        return None, float("nan")
    count = sum(int(m) for m in re.findall(r"^processed (\d+) insns", res.stdout + res.stderr, re.M))
    best = float("inf")
    for _ in range(LOAD_RUNS):
        t0 = time.perf_counter()
        _loadall(obj)
        best = min(best, time.perf_counter() - t0)
    return count, best


def row(name: str, obj: Path, ref: str, now: str, tmp: Path) -> str:
    ref_out, now_out = tmp / f"{name}.ref.o", tmp / f"{name}.now.o"
    for cli, out in ((ref, ref_out), (now, now_out)):
        subprocess.run([cli, "instrument", str(obj), "-o", str(out)], check=True, capture_output=True)
    sites = sum(1 for s in load_object(obj).symbols if s.name.startswith(ENTRY_SYMBOL_PREFIX))
    inserted = code_insns(now_out, RECORDER_PREFIX) - code_insns(obj)
    (off, t_off), (before, t_before), (after, t_after) = load(obj), load(ref_out), load(now_out)
    constant = None if None in (after, off) else after - off - inserted    # type: ignore[operator]
    per_site = lambda v: "n/a" if v is None or off is None else f"{(v - off) / sites:.1f}"  # noqa: E731
    return (f"| {name} | {sites} | {inserted / sites:.1f} | {off} | {before} ({per_site(before)}/site) | "
            f"{after} ({per_site(after)}/site) | {t_off * 1e3:.0f} / {t_before * 1e3:.0f} / {t_after * 1e3:.0f} | "
            f"{constant} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", default=REFERENCE, help="commit to compare with (default: %(default)s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-vbench-") as t:
        tmp = Path(t)
        ref, now = reference_cli(tmp, args.reference), installed_cli(tmp)
        samples = tmp / "samples"
        if not build_samples(samples):
            print("building the samples failed", file=sys.stderr)
            return 1
        print(f"reference: {args.reference}; processed insns (verifier), per enabled site over probes off")
        print("| object | sites | insns inserted / site | probes off | reference (static recorder) | "
              "now (global recorder) | load ms off / ref / now | now - off - inserted |")
        print("|---|---|---|---|---|---|---|---|")
        for name in MEASURED:
            print(row(name, samples / f"{name}.bpf.o", ref, now, tmp), flush=True)
        for n in GENERATED_SITES:
            print(row(f"generated, {n} sites", generated(tmp, n), ref, now, tmp), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

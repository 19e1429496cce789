"""Byte-for-byte outputs of `list --json`, `instrument` and `link`, to prove a
refactoring changed none of them (issue 18).

    snapshot DIR [--objects-from SNAP] [--no-matrix]
        Build every input object into DIR/objects (the samples with
        `make -C samples` and clang 19, as tests/conftest.py does, and the
        compile-matrix objects with each installed required clang x -mcpu x
        -O1/-O2, as tests/test_compile_matrix.py does), or copy them from an
        earlier snapshot's objects (so that both runs read the same bytes),
        then write into DIR/outputs, per object:
          <obj>.list.json        `bpf-sdt list --json`
          <obj>.recorded.o       `bpf-sdt instrument --record` (or its error)
          <obj>.linked.o         `bpf-sdt link` of the object alone
        and the samples' two multi-object links (tc, loop).  Each command's exit
        code and stderr are kept beside its output (<out>.rc, <out>.stderr).
    compare A B
        Compare two snapshots file for file, byte for byte; exit 1 on any
        difference (each one listed), 0 if identical.

Normalised: none of the outputs embeds a timestamp.  One random value is
embedded: the instrumented object's BTF line info names the recorder's source
by its path in instrument's temporary directory (/tmp/bpf-sdt-instrument-
<8 random characters>/bpf_sdt_recorder.bpf.c), so those 8 characters are
replaced by XXXXXXXX in every output (same length, so no offset moves); with
that, two full snapshots in a row are identical file for file.  Paths are: the
objects' DWARF names the directory they were compiled in, and `list` and error
messages print the object's path, so every snapshot builds its objects and runs
the commands in one fixed directory (WORK below, emptied first) and only then
moves the files into DIR.  The input objects are compared too (clang and the
make hook's `bpf-sdt link` are deterministic); --objects-from reuses another
snapshot's objects to isolate the commands from the build.

Usage: .venv/bin/python bench/compare_outputs.py snapshot /tmp/reshape-before
       .venv/bin/python bench/compare_outputs.py snapshot /tmp/reshape-after --objects-from /tmp/reshape-before
       .venv/bin/python bench/compare_outputs.py compare /tmp/reshape-before /tmp/reshape-after
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
BPF_SDT = [sys.executable, "-m", "bpf_sdt.cli"]
LINKS = {"tc": ("tc_main.bpf.o", "tc_stats.bpf.o"), "loop": ("loop_main.bpf.o", "loop_lib.bpf.o")}
# Objects the make hook derives from the others (instrumented demos), not inputs.
DERIVED = (".counted.bpf.o", ".recorded.bpf.o")
# tempfile's random names: 8 of [a-z0-9_] (tempfile._RandomNameSequence).
TEMP_DIR = re.compile(rb"(bpf-sdt-instrument-)[a-z0-9_]{8}/")
WORK = Path(tempfile.gettempdir()) / "bpf-sdt-compare-work"


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def build_samples(dest: Path) -> list[Path]:
    from toolchain import clang

    build = dest / "samples-build"
    res = subprocess.run(["make", "-C", str(REPO / "samples"), f"BPF_CLANG={clang(19)}", f"BPF_SDT_OUTDIR={build}"],
                         capture_output=True, text=True, env=_env(), check=False)
    if res.returncode != 0:
        sys.exit(f"make -C samples failed:\n{res.stdout}{res.stderr}")
    out = []
    for obj in sorted(build.glob("*.o")):
        if not obj.name.endswith(DERIVED):
            out.append(dest / f"sample-{obj.name}")
            shutil.copyfile(obj, out[-1])
    shutil.rmtree(build)
    return out


def build_matrix(dest: Path) -> list[Path]:
    from matrix_src import probes, source
    from toolchain import REQUIRED_CLANGS, clangs, compile_bpf, mcpus

    src = dest / "matrix.bpf.c"
    src.write_text(source(probes()))
    out = []
    for version, cc in sorted(clangs().items()):
        if version not in REQUIRED_CLANGS:
            continue
        for cpu in mcpus(version):
            for opt in ("-O1", "-O2"):
                obj = dest / f"matrix-clang{version}-{cpu}{opt}.o"
                compile_bpf(src, obj, cc, mcpu=cpu, opt=opt)
                out.append(obj)
    src.unlink()
    return out


def _normalise(data: bytes) -> bytes:
    return TEMP_DIR.sub(rb"\1XXXXXXXX/", data)


def _run(cmd: list[str], out: Path, *, stdout_is_output: bool) -> None:
    res = subprocess.run(cmd, capture_output=True, env=_env(), check=False)
    if stdout_is_output:
        out.write_bytes(res.stdout)
    elif res.returncode != 0:
        out.unlink(missing_ok=True)
    if out.exists():
        out.write_bytes(_normalise(out.read_bytes()))
    out.with_name(out.name + ".rc").write_text(f"{res.returncode}\n")
    out.with_name(out.name + ".stderr").write_bytes(_normalise(res.stderr))


def snapshot(snap: Path, objects_from: Path | None, matrix: bool) -> None:
    if snap.exists():
        shutil.rmtree(snap)
    if WORK.exists():
        shutil.rmtree(WORK)
    objdir, outdir = WORK / "objects", WORK / "outputs"
    objdir.mkdir(parents=True)
    outdir.mkdir()
    if objects_from:
        objs = []
        for obj in sorted((objects_from / "objects").glob("*.o")):
            objs.append(objdir / obj.name)
            shutil.copyfile(obj, objs[-1])
    else:
        objs = build_samples(objdir) + (build_matrix(objdir) if matrix else [])
    for obj in objs:
        base = outdir / obj.name
        _run([*BPF_SDT, "list", "--json", str(obj)], base.with_name(obj.name + ".list.json"),
             stdout_is_output=True)
        if obj.name != "sample-observer.bpf.o":        # an observer, not a program with probes
            rec = base.with_name(obj.name + ".recorded.o")
            _run([*BPF_SDT, "instrument", "--record", "-o", str(rec), str(obj)], rec,
                 stdout_is_output=False)
        linked = base.with_name(obj.name + ".linked.o")
        _run([*BPF_SDT, "link", "-o", str(linked), str(obj)], linked, stdout_is_output=False)
    for name, parts in LINKS.items():
        ins = [objdir / f"sample-{p}" for p in parts]
        if all(p.exists() for p in ins):
            linked = outdir / f"sample-{name}.multi.linked.o"
            _run([*BPF_SDT, "link", "-o", str(linked), *map(str, ins)], linked, stdout_is_output=False)
    outputs = sum(1 for _ in outdir.iterdir())
    shutil.move(WORK, snap)
    print(f"{snap}: {len(objs)} objects, {outputs} output files")


def compare(a: Path, b: Path) -> int:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in {a}: {p}" for p in sorted(files_a - files_b)]
    diffs += [f"only in {b}: {p}" for p in sorted(files_b - files_a)]
    same = 0
    for p in sorted(files_a & files_b):
        if (a / p).read_bytes() == (b / p).read_bytes():
            same += 1
        else:
            diffs.append(f"differs: {p}")
    for d in diffs:
        print(d)
    print(f"{same} files byte-identical, {len(diffs)} differences")
    return 1 if diffs else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("dir", type=Path)
    s.add_argument("--objects-from", type=Path, help="copy the input objects from this snapshot")
    s.add_argument("--no-matrix", action="store_true", help="the samples only")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = ap.parse_args()
    if args.mode == "snapshot":
        snapshot(args.dir.resolve(), args.objects_from, not args.no_matrix)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())

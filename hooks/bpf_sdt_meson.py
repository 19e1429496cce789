#!/usr/bin/env python3
"""bpf-sdt's meson helper: BPF objects with probes in a project whose C
compiler is gcc (or anything else).

Meson compiles a project's C with one compiler, and BPF needs clang, so BPF
objects are custom targets that call clang themselves (as systemd and other
meson projects do).  This script is the command of those targets; `bpf-sdt
meson` prints its path.  It needs only the Python standard library, because
meson runs it with whatever `python3` its shebang finds.

    bpf_sdt_meson.py compile --bpf-sdt BPF_SDT --depfile DEP SRC OUT -- CLANG FLAG...
        clang SRC to OUT.tmp (with a depfile for ninja), `bpf-sdt check` it,
        then rename it to OUT: the object never exists unless its notes are
        well-formed, so a broken note fails the build.
    bpf_sdt_meson.py compdb --directory DIR --output FILE SRC... -- CLANG FLAG...
        write FILE, a compile_commands.json listing each SRC with those flags,
        for `bpf-sdt lint -p`.  Meson's own compile_commands.json lists only
        its compile targets, never custom targets; call this from meson.build
        with run_command(), so it is rewritten whenever meson configures.

In meson.build (samples/meson.build is a complete example):

    bpf_sdt = find_program('bpf-sdt')
    bpf_sdt_meson = find_program(run_command(bpf_sdt, 'meson', check: true).stdout().strip())
    bpf_clang = find_program(run_command(bpf_sdt, 'clang', check: true).stdout().strip())
    bpf_cflags = ['-target', 'bpf', '-O2', '-g'] + \
                 run_command(bpf_sdt, 'cflags', '--system', check: true).stdout().split()
    prog = custom_target('prog.bpf.o', input: 'prog.bpf.c', output: 'prog.bpf.o',
      depfile: 'prog.bpf.o.d', build_by_default: true,
      command: [bpf_sdt_meson, 'compile', '--bpf-sdt', bpf_sdt, '--depfile', '@DEPFILE@',
                '@INPUT@', '@OUTPUT@', '--', bpf_clang, bpf_cflags])
    run_command(bpf_sdt_meson, 'compdb', '--directory', meson.global_build_root(),
      '--output', meson.current_build_dir() / 'bpf-sdt' / 'compile_commands.json',
      meson.current_source_dir() / 'prog.bpf.c', '--', bpf_clang, bpf_cflags, check: true)

and lint with `bpf-sdt lint -p BUILD/bpf-sdt prog.bpf.c`.  `bpf-sdt clang`
is the clang `bpf-sdt instrument` and the make include use; `cflags --system`
adds the multiarch include directory <linux/bpf.h> needs.  Under -Wextra,
observers written with libbpf's BPF_PROG() also need '-Wno-unused-parameter'
(the macro's `ctx` is rarely used).  `bpf-sdt meson --help` prints this text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# Exit code for a command line this script cannot use (as bpf-sdt's).
EXIT_USAGE = 2


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("bpf_sdt_meson.py: the compiler command goes after --", file=sys.stderr)
        return EXIT_USAGE
    split = argv.index("--")
    own, compiler = argv[:split], argv[split + 1:]
    if not compiler:
        print("bpf_sdt_meson.py: no compiler after --", file=sys.stderr)
        return EXIT_USAGE
    args = _parser().parse_args(own)
    if args.step == "compile":
        return compile_checked(args.bpf_sdt, args.depfile, args.source, args.output, compiler)
    return write_compdb(args.directory, args.output, args.sources, compiler)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bpf_sdt_meson.py", description="bpf-sdt's meson helper")
    steps = ap.add_subparsers(dest="step", required=True)
    c = steps.add_parser("compile", help="compile one BPF source, check its notes, then move it into place")
    c.add_argument("--bpf-sdt", required=True, help="the bpf-sdt program")
    c.add_argument("--depfile", required=True, help="make-style dependency file for ninja")
    c.add_argument("source")
    c.add_argument("output")
    d = steps.add_parser("compdb", help="write compile_commands.json for bpf-sdt lint -p")
    d.add_argument("--directory", required=True, help="where the build runs its commands")
    d.add_argument("--output", required=True, help="the compile_commands.json to write")
    d.add_argument("sources", nargs="+")
    return ap


def compile_checked(bpf_sdt: str, depfile: str, source: str, output: str, compiler: list[str]) -> int:
    tmp = output + ".tmp"
    try:
        rc = subprocess.call([*compiler, "-MD", "-MF", depfile, "-MT", output, "-c", source, "-o", tmp])
        if rc == 0:
            rc = subprocess.call([bpf_sdt, "check", tmp])
        if rc == 0:
            os.replace(tmp, output)
            return 0
        return rc
    except OSError as e:
        print(f"bpf_sdt_meson.py: {e.filename or compiler[0]}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_compdb(directory: str, output: str, sources: list[str], compiler: list[str]) -> int:
    # "arguments", not "command": a list needs no shell quoting, so paths with
    # spaces or quotes survive.
    entries = [{"directory": directory, "file": os.path.abspath(src),
                "arguments": [*compiler, "-c", os.path.abspath(src)]} for src in sources]
    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".compile_commands.", dir=out_dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1)
            os.replace(tmp, output)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        print(f"bpf_sdt_meson.py: {output}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The generated header: drift, generator options, compile-fail cases, the
DISABLE and STRICT modes, and probes in every statement context."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from bpf_sdt.codegen.generate import render_header
from bpf_sdt.postlink.check import analyze
from bpfemu import CTX_BASE, Machine
from matrix_src import CTX_DECL, Fields, Kind, Probe, _s, random_ctx, source
from objview import btf_json, btf_prototypes, disassemble, parse_arg, relocations, sites, symbols
from toolchain import HEADER_DIR, REPO, bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.elf import load_object

CLI = [sys.executable, "-m", "bpf_sdt.cli"]


def test_committed_header_matches_templates() -> None:
    committed = (HEADER_DIR / "bpf_sdt.h").read_text()
    assert committed == render_header(), \
        "headers/bpf_sdt.h drifted from codegen/templates: run `bpf-sdt header -o headers/bpf_sdt.h`"


@pytest.mark.parametrize("n", [0, 1, 5, 6, 12])
def test_max_args_limits_the_macros(n: int, tmp_path: Path) -> None:
    out = tmp_path / "h.h"
    res = run([*CLI, "header", "--max-args", str(n), "-o", str(out)])
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert f"#define BPF_SDT_PROBE{n}(" in text and f"#define BPF_SDT_DECLARE{n}(" in text
    assert f"#define BPF_SDT_PROBE{n + 1}(" not in text
    assert f"#define BPF_SDT_MAX_ARGS\t{n}" in text


@pytest.mark.parametrize("bad", ["13", "-1", "x"])
def test_header_rejects_bad_arity_without_writing(bad: str, tmp_path: Path) -> None:
    out = tmp_path / "h.h"
    res = run([*CLI, "header", "--max-args", bad, "-o", str(out)])
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists()


def test_header_write_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "h.h"
    out.write_text("old")
    assert run([*CLI, "header", "-o", str(out)]).returncode == 0
    assert out.read_text() == render_header()
    assert [p.name for p in tmp_path.iterdir()] == ["h.h"], "no temporary left behind"


def test_cflags_points_at_the_installed_header() -> None:
    res = run([*CLI, "cflags"])
    flag = res.stdout.strip()
    assert flag.startswith("-I") and (Path(flag[2:]) / "bpf_sdt.h").is_file()


@pytest.mark.slow
def test_cflags_after_a_plain_pip_install(tmp_path: Path) -> None:
    """A regular (not editable) install into a fresh venv ships the header, and
    `clang $(bpf-sdt cflags)` compiles a probe with it: no repo on the path."""
    def ok(cmd: list[str]) -> str:
        res = run(cmd, cwd=tmp_path)
        assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr[-2000:]}"
        return str(res.stdout)

    venv = tmp_path / "venv"
    ok([sys.executable, "-m", "venv", str(venv)])
    ok([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-deps", str(REPO)])
    flag = ok([str(venv / "bin" / "bpf-sdt"), "cflags"]).strip()
    installed = Path(flag.removeprefix("-I"))
    assert installed.is_relative_to(venv), flag
    assert (installed / "bpf_sdt.h").read_text() == (HEADER_DIR / "bpf_sdt.h").read_text()
    src = tmp_path / "p.bpf.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(hit, int);\n"
                   "int f(int *c) { BPF_SDT_PROBE1(hit, *c); return 0; }\n")
    obj = tmp_path / "p.bpf.o"
    compile_bpf(src, obj, clang(19), header_dir=installed)
    assert [s.name for s in analyze(load_object(obj)).sites] == ["hit"]


# --- compile-fail cases ------------------------------------------------------

PRELUDE = """#include <bpf_sdt.h>
struct S { long a; };
BPF_SDT_DECLARE1(p1, long); BPF_SDT_DECLARE1(pp, int *); BPF_SDT_DECLARE2(p2, int, int);
"""
# case: (code, substring every compiler's first error contains)
FAIL_CASES = {
    "struct_arg": ("int f(struct S *s) { BPF_SDT_PROBE1(p1, *s); return 0; }",
                   "probe 'p1' argument 1: struct or union passed by value"),
    "ptr_to_int": ("int f(int *x) { BPF_SDT_PROBE1(p1, x); return 0; }",
                   "probe 'p1' argument 1: pointer/integer mismatch"),
    "int_to_ptr": ("int f(int x) { BPF_SDT_PROBE1(pp, x); return 0; }",
                   "probe 'pp' argument 1: pointer/integer mismatch"),
    "wide_arg": ("int f(__int128 *x) { BPF_SDT_PROBE1(p1, *x); return 0; }",
                 "probe 'p1' argument 1: argument is wider than 8 bytes"),
    "decl_struct": ("BPF_SDT_DECLARE1(bad, struct S);",
                    "probe 'bad' argument 1: declared type must be an integer"),
    "decl_wide": ("BPF_SDT_DECLARE1(bad, __int128);",
                  "probe 'bad' argument 1: declared type is wider than 8 bytes"),
    "arity": ("int f(int x) { BPF_SDT_PROBE1(p2, x); return 0; }",
              "probe 'p2' is declared with a different number of arguments"),
    "undeclared": ("int f(int x) { BPF_SDT_PROBE1(nope, x); return 0; }",
                   "__bpf_sdt_nope_nargs"),
    "macro_args": ("int f(int x) { BPF_SDT_PROBE2(p2, x, x, x); return 0; }",
                   "BPF_SDT_PROBE2|too many arguments provided"),
    "over_12": ("int f(int x) { BPF_SDT_PROBE13(p2, x,x,x,x,x,x,x,x,x,x,x,x,x); return 0; }",
                "BPF_SDT_PROBE13"),
    "bad_name": ("BPF_SDT_DECLARE1(my-probe, int);", "error"),
    "redeclared": ("BPF_SDT_DECLARE2(p1, int, int);", "__bpf_sdt_p1_nargs"),
    "decl_atomic": ("BPF_SDT_DECLARE2(bad, int, _Atomic int);",
                    "probe 'bad' argument 2: _Atomic declared type"),
}
COMPILERS = ["clang-14", "clang-19", "bpf-gcc"]


def _compiler(name: str) -> str:
    return str(tool("bpf-gcc") if name == "bpf-gcc" else clang(int(name.split("-")[1])))


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("case", sorted(FAIL_CASES))
def test_compile_fails_with_documented_error(case: str, compiler: str, tmp_path: Path) -> None:
    code, expected = FAIL_CASES[case]
    src = tmp_path / f"{case}.c"
    src.write_text(PRELUDE + code + "\n")
    res = compile_bpf(src, tmp_path / "x.o", _compiler(compiler), check=False)
    assert res.returncode != 0, f"{case} compiled with {compiler}"
    stderr = res.stderr.replace("\\'", "'")   # GCC escapes quotes in static_assert text
    first_error = next(line for line in stderr.splitlines() if "error" in line)
    assert any(e in stderr for e in expected.split("|")), first_error
    docs = (REPO / "docs" / "header.md").read_text()
    assert f"`{case}`" in docs, f"compile-fail case {case} is not documented in docs/header.md"


def test_strict_mode_rejects_six_arguments(tmp_path: Path) -> None:
    src = tmp_path / "s.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE6(s6, int, int, int, int, int, int);\n"
                   "int f(int x) { BPF_SDT_PROBE6(s6, x, x, x, x, x, x); return 0; }\n")
    res = compile_bpf(src, tmp_path / "s.o", clang(19), defines=("BPF_SDT_STRICT",), check=False)
    assert res.returncode != 0 and "BPF_SDT_STRICT allows at most 5 arguments" in res.stderr


# --- modes and statement contexts ---------------------------------------------

CONTEXTS = """#include <bpf_sdt.h>
BPF_SDT_DECLARE2(ctx_probe, int, long);
BPF_SDT_DECLARE(bare);
static inline int inlined(int v) { BPF_SDT_PROBE2(ctx_probe, v, 3); return v * 2; }
static __attribute__((noinline)) int static_sub(int v) { BPF_SDT_PROBE2(ctx_probe, v, v); return v + 1; }
__attribute__((noinline)) int global_sub(int v) { BPF_SDT_PROBE2(ctx_probe, v, 4); return v - 1; }
int prog(int *ctx)
{
	int x = *ctx, y = 0, only_probed = x + 7, i;
	if (x > 3)
		BPF_SDT_PROBE2(ctx_probe, x, 1);
	else
		BPF_SDT_PROBE(bare);
	switch (x) { case 1: BPF_SDT_PROBE2(ctx_probe, only_probed, 2); break; default: break; }
#ifdef __clang__
#pragma clang loop unroll(full)
#endif
	for (i = 0; i < 4; i++)
		BPF_SDT_PROBE2(ctx_probe, i, y);
	while (y < x && y < 100) { BPF_SDT_PROBE2(ctx_probe, y, x); y++; }
	return inlined(x) + static_sub(x) + global_sub(x) + y;
}
"""


def test_probes_in_every_statement_context(tmp_path: Path) -> None:
    src = tmp_path / "ctx.c"
    src.write_text(CONTEXTS)
    obj = tmp_path / "ctx.o"
    compile_bpf(src, obj, clang(19))
    report = analyze(load_object(obj))
    assert not [f for f in report.findings if f.severity == "error"], report.findings
    names = [s.name for s in report.sites]
    # if/else, switch, 4 unrolled copies, while, inlined, static + global subprograms
    assert names.count("ctx_probe") >= 1 + 1 + 4 + 1 + 1 + 2 and names.count("bare") == 1
    funcs = {s.function for s in report.sites}
    assert {"prog", "static_sub", "global_sub"} <= funcs
    code = {i.index: i for i in disassemble(str(obj), ".text")}
    for vs in sites(str(obj)):
        assert "goto +0x0" in code[vs.offset // 8].text


def test_disable_removes_every_nop_and_note(tmp_path: Path) -> None:
    src = tmp_path / "ctx.c"
    src.write_text(CONTEXTS)
    for cc in (clang(14), clang(19), tool("bpf-gcc")):
        obj = tmp_path / "off.o"
        res = compile_bpf(src, obj, cc, defines=("BPF_SDT_DISABLE",))
        assert "warning" not in res.stderr
        o = load_object(obj)
        assert o.section(".bpf_sdt_notes") is None and o.section(".debug_bpf_sdt_types") is None
        text = o.section_data(o.section(".text"))  # type: ignore[arg-type]
        insns = [text[i:i + 8] for i in range(0, len(text), 8)]
        assert bytes.fromhex("0500000000000000") not in insns, "a goto +0 survived"


def test_disable_does_not_evaluate_arguments(tmp_path: Path) -> None:
    src = tmp_path / "ev.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(p, int);\nint g;\n"
                   "int f(void) { BPF_SDT_PROBE1(p, g++); return g; }\n")
    obj = tmp_path / "ev.o"
    compile_bpf(src, obj, clang(19), defines=("BPF_SDT_DISABLE",))
    text = "\n".join(i.text for i in disassemble(str(obj), ".text"))
    assert "+= 0x1" not in text and "+= 1" not in text, text


# Each argument increments its own global; the program returns 0 when every
# one was incremented exactly once, else 100 + the first wrong index.  Args
# 11..12 of the first 12-arg site take the stack path, those of the second
# (two immediates among its arguments) registers; under bpf-gcc 6..12 take
# the stack path.
ONCE_PROG = """#include <bpf_sdt.h>
struct __sk_buff { unsigned int len; };
BPF_SDT_DECLARE2(two, int, long);
BPF_SDT_DECLARE12(wide, int, int, int, int, int, int, int, int, int, int, int, int);
int g[24];
__attribute__((section("tc"), used)) int once(struct __sk_buff *skb)
{
	BPF_SDT_PROBE2(two, g[0]++, g[1]++ + (long)skb->len);
	BPF_SDT_PROBE12(wide, g[2]++, g[3]++, g[4]++, g[5]++, g[6]++, g[7]++, g[8]++, g[9]++,
			g[10]++, g[11]++, g[12]++, g[13]++);
	BPF_SDT_PROBE12(wide, 1, g[14]++, g[15]++, g[16]++, g[17]++, 2, g[18]++, g[19]++,
			g[20]++, g[21]++, g[22]++, g[23]++);
	for (int i = 0; i < 24; i++)
		if (g[i] != 1)
			return 100 + i;
	return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def _kernel_test_run(obj: Path, tmp_path: Path) -> int:
    """Load ``obj`` and run its program once in the kernel (BPF_PROG_TEST_RUN)."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    bpftool = tool("bpftool")
    pin = Path("/sys/fs/bpf") / f"bpf_sdt_once_{os.getpid()}_{tmp_path.name}"
    pkt = tmp_path / "pkt"
    pkt.write_bytes(bytes(64))
    try:
        res = run([bpftool, "prog", "load", str(obj), str(pin)])
        assert res.returncode == 0, res.stderr[-2000:]
        res = run([bpftool, "prog", "run", "pinned", str(pin), "data_in", str(pkt), "repeat", "1"])
        assert res.returncode == 0, res.stderr[-2000:]
    finally:
        pin.unlink(missing_ok=True)
    m = re.search(r"Return value: (\d+)", res.stdout + res.stderr)
    assert m, res.stdout
    return int(m.group(1))


@pytest.mark.parametrize("compiler", ["clang-14", "clang-19", "bpf-gcc"])
def test_arguments_are_evaluated_exactly_once_in_the_kernel(compiler: str, tmp_path: Path) -> None:
    src = tmp_path / "once.bpf.c"
    src.write_text(ONCE_PROG)
    cc = tool("bpf-gcc") if compiler == "bpf-gcc" else clang(int(compiler.split("-")[1]))
    obj = tmp_path / "once.bpf.o"
    compile_bpf(src, obj, cc, mcpu="v1" if compiler == "clang-14" else "v3")
    report = analyze(load_object(obj))
    tails = sorted(tuple(a.kind for a in s.args[10:]) for s in report.sites if s.name == "wide")
    assert tails == ([("stack", "stack")] * 2 if compiler == "bpf-gcc" else [("reg", "reg"), ("stack", "stack")])
    assert len(report.sites) == 3
    assert _kernel_test_run(obj, tmp_path) == 0


def test_disabled_arguments_are_not_evaluated_in_the_kernel(tmp_path: Path) -> None:
    src = tmp_path / "once.bpf.c"
    src.write_text(ONCE_PROG)
    obj = tmp_path / "once.bpf.o"
    compile_bpf(src, obj, clang(19), defines=("BPF_SDT_DISABLE",))
    assert _kernel_test_run(obj, tmp_path) == 100   # g[0] was never incremented


def test_strict_mode_uses_register_moves_only(tmp_path: Path) -> None:
    src = tmp_path / "st.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE3(p, int, long, int);\n"
                   "int f(int *c) { BPF_SDT_PROBE3(p, *c, 5, -1); return 0; }\n")
    obj = tmp_path / "st.o"
    compile_bpf(src, obj, clang(19), defines=("BPF_SDT_STRICT",))
    (site,) = sites(str(obj))
    assert [parse_arg(a)[0] for a in site.args] == ["reg", "reg", "reg"]
    assert [parse_arg(a)[1] for a in site.args] == [1, 2, 3]
    assert site.symbol == "___sdt_jt_p"


def test_python_package_has_no_generic_top_level_modules() -> None:
    res = subprocess.run([sys.executable, "-c", "import codegen"], capture_output=True, cwd="/")
    assert res.returncode != 0, "a top-level `codegen` module is importable"


def test_symbol_address_arguments_compile(tmp_path: Path) -> None:
    """"ri" with a symbol address crashes clang 14 and 19, also when the address
    is cast to an integer; the header's "rn" puts every symbol address in a
    register or slot, and only numbers (NULL included) become immediates."""
    src = tmp_path / "sym.c"
    src.write_text("#include <bpf_sdt.h>\nint g; long arr[4]; int fn(int);\n"
                   "BPF_SDT_DECLARE6(p, int *, long *, int (*)(int), void *, long, void *);\n"
                   "BPF_SDT_DECLARE12(w, int *, int, int, int, int, int, int, int, int, int, long *, void *);\n"
                   "int f(int *c) { BPF_SDT_PROBE6(p, &g, &arr[2], fn, (void *)0, (long)&g,"
                   " (void *)0x123456789ULL);\n"
                   "  BPF_SDT_PROBE12(w, &g, 1, 2, 3, 4, 5, 6, 7, 8, 9, &arr[1], (void *)0); return *c; }\n")
    for cc in (clang(14), clang(19), tool("bpf-gcc")):
        obj = tmp_path / "sym.o"
        compile_bpf(src, obj, cc)
        report = analyze(load_object(obj))
        assert not [f for f in report.findings if f.severity == "error"]
        six, twelve = sorted(report.sites, key=lambda s: len(s.args))
        slot = "stack" if "gcc" in Path(cc).name else "reg"
        assert [a.kind for a in six.args] == ["reg", "reg", "reg", "imm", "reg", slot], cc
        assert six.args[3].value == 0
        # clang: nine immediates leave registers for 11..12; bpf-gcc: slots from 6
        assert [a.kind for a in twelve.args][10:] == [slot, "imm"], cc


# --- args 11..12: registers while immediates leave room (issue 10) --------------

def _bench() -> ModuleType:
    """bench/run.py, for its floor header, compile flags and code-size count:
    the test measures code cost exactly the way the benchmark table does."""
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version", [14, 19])
def test_twelve_computed_arguments_cost_the_floor(version: int, tmp_path: Path) -> None:
    """Issue 10: with arguments 11..12 in stack slots, each computed one cost a
    store over the floor (bench CTX12 at -mcpu=v3: probes 29 insns, floor 26,
    on clang 14 and 19).  The sites' constants leave registers for them."""
    bench = _bench()
    src = tmp_path / "ctx12.bpf.c"
    src.write_text(bench.CTX12)
    floor = bench.floor_header(tmp_path)
    size = {}
    for variant in ("off", "probes", "floor"):
        obj = bench.compile_variant(src, tmp_path / f"{variant}.o", variant, floor, [], clang=clang(version))
        assert obj is not None, variant
        size[variant] = bench.code_size(obj)
    assert size["probes"] == size["floor"], size
    assert size["probes"] - size["off"] == 15, size
    report = analyze(load_object(tmp_path / "probes.o"))
    assert not report.findings, report.findings
    assert sorted(tuple(a.kind for a in s.args[10:]) for s in report.sites) == [("imm", "reg"), ("reg", "reg")]


# Each function has one site; `x` values are loads, so never immediates.
SPLITS = """#include <bpf_sdt.h>
BPF_SDT_DECLARE12(p12, int, int, int, int, int, int, int, int, int, int, int, long);
BPF_SDT_DECLARE11(p11, int, int, int, int, int, int, int, int, int, int, long);
__attribute__((noinline)) int none(int *x) { BPF_SDT_PROBE12(p12, x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], x[12]); return 0; }
__attribute__((noinline)) int one_low(int *x) { BPF_SDT_PROBE12(p12, 5, x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], x[12]); return 0; }
__attribute__((noinline)) int one_last(int *x) { BPF_SDT_PROBE12(p12, x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], -3L); return 0; }
__attribute__((noinline)) int two(int *x) { BPF_SDT_PROBE12(p12, x[1], x[2], 7, x[4], x[5], x[6], x[7], x[8], x[9], 0, x[11], x[12]); return 0; }
__attribute__((noinline)) int wide_const(int *x) { BPF_SDT_PROBE12(p12, x[1], x[2], 7, x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], 1L << 40); return 0; }
__attribute__((noinline)) int e_none(int *x) { BPF_SDT_PROBE11(p11, x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11]); return 0; }
__attribute__((noinline)) int e_one(int *x) { BPF_SDT_PROBE11(p11, x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], 9, x[11]); return 0; }
"""
# Forms of args 11..12 per function: a slot only for what ten registers cannot
# hold once the immediates are counted out.  A wide constant is no immediate.
SPLIT_FORMS = {
    "none": ("stack", "stack"), "one_low": ("reg", "stack"), "one_last": ("stack", "imm"),
    "two": ("reg", "reg"), "wide_const": ("reg", "stack"), "e_none": ("stack",), "e_one": ("reg",),
}


@pytest.mark.parametrize("version", [14, 19])
def test_arguments_beyond_ten_take_slots_only_when_registers_run_out(version: int, tmp_path: Path) -> None:
    src = tmp_path / "splits.c"
    src.write_text(SPLITS)
    for opt in ("-O2", "-O0"):
        obj = tmp_path / f"splits{opt}.o"
        compile_bpf(src, obj, clang(version), opt=opt)
        report = analyze(load_object(obj))
        assert not report.findings, report.findings
        assert len(report.sites) == len(SPLIT_FORMS), "one asm statement survives per site"
        forms = {s.function: tuple(a.kind for a in s.args[10:]) for s in report.sites}
        if opt == "-O0":   # nothing is an immediate, the all-slots statement only
            assert forms == {f: ("stack",) * len(v) for f, v in SPLIT_FORMS.items()}, opt
        else:
            assert forms == SPLIT_FORMS, opt
            text = [i.text for i in disassemble(str(obj), ".text")]
            assert sum(x.startswith("goto +0x0") for x in text) == len(SPLIT_FORMS), "one NOP per site"


# --- qualified declared types ---------------------------------------------------
# A declared type may carry const, volatile or restrict at any level, also
# through a typedef.  Each site copies the value into an unqualified variable
# (the asm operands write it), while the prototype, and so BTF, keeps the
# qualifiers.  _Atomic is refused: clang's BTF writes it as `void`.

QUAL_TYPEDEFS = "typedef const __u32 cu32;\ntypedef const void *const cvp;\n"


@dataclass(frozen=True)
class Qualified:
    kind: Kind
    plain: str      # the declared type without top-level qualifiers


def _q(name: str, ctype: str, plain: str, expr: str, value: Callable[[Fields], int], size: int,
       constant: bool = False) -> Qualified:
    return Qualified(Kind(name, ctype, expr, value, size, constant), plain)


# ctype is spelled as _btf_spelling reads it back: qualifiers in sorted order,
# before a named type, after the `*` of a pointer.
QUALIFIED = [
    _q("const_int", "const int", "int", "c->i", lambda f: f["i"], 4),
    _q("volatile_long", "volatile long", "long", "c->l", lambda f: f["l"], 8),
    _q("cv_short", "const volatile short", "short", "c->s", lambda f: f["s"], 2),
    _q("typedef_const", "cu32", "__u32", "c->u32", lambda f: f["u32"], 4),
    _q("cv_u8", "const volatile __u8", "__u8", "c->u8", lambda f: f["u8"], 1),
    _q("const_bool", "const _Bool", "_Bool", "c->i > 3", lambda f: int(f["i"] > 3), 1),
    _q("const_enum", "const enum color", "enum color", "(enum color)(c->u8 & 3)", lambda f: f["u8"] & 3, 4),
    _q("const_ptr", "int *const", "int *", "&c->i", lambda f: CTX_BASE + 8, 8),
    _q("const_ptr_to_const", "const char *const", "const char *", "(const char *)c", lambda f: CTX_BASE, 8),
    _q("cv_ptr_to_cv", "const volatile __u64 *const volatile", "const volatile __u64 *", "&c->u64",
       lambda f: CTX_BASE + 24, 8),
    _q("typedef_const_ptr", "cvp", "const void *", "c->ptr", lambda f: f["ptr"], 8),
    _q("restrict_ptr", "char *restrict", "char *", "(char *)&c->u8", lambda f: CTX_BASE + 2, 8),
    _q("widen", "const long", "long", "c->u8", lambda f: f["u8"], 8),
    _q("narrow", "volatile int", "int", "c->l", lambda f: _s(f["l"], 32), 4),
    _q("const_imm", "const int", "int", "42", lambda f: 42, 4, constant=True),
    _q("volatile_imm", "volatile long", "long", "-7", lambda f: -7, 8, constant=True),
    _q("cv_u32_imm", "const volatile __u32", "__u32", "0x80000000U", lambda f: 0x80000000, 4, constant=True),
    _q("const_wide", "const __u64", "__u64", "0x123456789ULL", lambda f: 0x123456789, 8),
]


def _qualified_probes(plain: bool = False, max_args: int = 12) -> list[Probe]:
    """One 1-argument probe per qualified type, and one max_args-argument
    probe per rotation of them, so each type also takes the positions of
    clang's slots (11..12) and bpf-gcc's (6..12)."""
    kinds = [dataclasses.replace(q.kind, ctype=q.plain) if plain else q.kind for q in QUALIFIED]
    ones = [Probe(f"q1_{i}", f"f1_{i}", (k,)) for i, k in enumerate(kinds)]
    wide = [Probe(f"q{max_args}_{r}", f"f{max_args}_{r}",
                  tuple(kinds[(r + k) % len(kinds)] for k in range(max_args))) for r in range(len(kinds))]
    return ones + (wide if max_args > 1 else [])


def _qualified_source(plist: list[Probe]) -> str:
    """The compile matrix's source layout, with the typedefs after its types."""
    text = str(source(plist))
    assert CTX_DECL in text
    return text.replace(CTX_DECL, CTX_DECL + QUAL_TYPEDEFS)


BtfJson = dict[str, Any]     # one type of bpftool's `btf dump -j`
VOID: BtfJson = {"kind": "VOID"}


def _btf_spelling(types: dict[int, BtfJson], tid: int) -> str:
    """A BTF type id spelled as C: qualifiers (sorted) before a named type and
    after a pointer's `*`, typedef names kept."""
    quals = []
    t = types[tid] if tid else VOID
    while t["kind"] in ("CONST", "VOLATILE", "RESTRICT"):
        quals.append(str(t["kind"]).lower())
        t = types[int(t["type_id"])] if t["type_id"] else VOID
    q = " ".join(sorted(quals))
    if t["kind"] == "PTR":
        return f"{_btf_spelling(types, int(t['type_id']))} *{q}"
    base = {"VOID": "void", "ENUM": f"enum {t.get('name')}"}.get(t["kind"], t.get("name", t["kind"]))
    return f"{q} {base}" if q else str(base)


def _values_at_nops(obj: Path, plist: list[Probe], immediates: bool = True) -> None:
    """Run each function to its NOP in the emulator: the register, immediate or
    slot each note names holds the argument's converted value.  With
    ``immediates``, every constant kind must be an immediate."""
    elf = load_object(obj)
    report = analyze(elf)
    assert not [f for f in report.findings if f.severity == "error"], report.findings
    assert not relocations(str(obj), ".text"), "the programs use no globals"
    by_name = {p.name: p for p in plist}
    funcs = {name: value for value, flags, sec, _size, name in symbols(str(obj)) if sec == ".text" and "F" in flags}
    code = elf.section_data(elf.section(".text"))  # type: ignore[arg-type]
    assert sorted(s.name for s in report.sites) == sorted(by_name), "one site per probe"
    for seed, site in enumerate(report.sites):
        probe = by_name[site.name]
        ctx, fields = random_ctx(seed)
        state = Machine(code, ctx).run_until(funcs[probe.function] // 8, site.offset // 8)
        for k, (kind, loc) in enumerate(zip(probe.kinds, site.args, strict=True), 1):
            where = f"{obj.name}: {probe.name} arg {k} ({kind.name}, {loc})"
            if kind.constant and immediates:
                assert loc.kind == "imm", where
            if loc.kind == "reg" and loc.reg is not None:
                got = state.regs[loc.reg]
            elif loc.kind == "imm" and loc.value is not None:
                got = loc.value
            else:
                assert loc.kind == "stack" and loc.offset is not None, where
                got = state.read_stack(loc.offset, kind.size)
            mask = (1 << (8 * kind.size)) - 1
            assert got & mask == kind.value(fields) & mask, where


@pytest.mark.parametrize("compiler", COMPILERS)
def test_qualified_declared_types_compile_and_hold_their_values(compiler: str, tmp_path: Path) -> None:
    """const, volatile, restrict and const-qualified typedefs compile cleanly
    (they were "invalid lvalue in asm output"), bpf-sdt check is clean, and
    each value is where its note says, in registers, immediates and slots."""
    plist = _qualified_probes()
    src = tmp_path / "qual.bpf.c"
    src.write_text(_qualified_source(plist))
    gcc = compiler == "bpf-gcc"
    for opt in ("-O2",) if gcc else ("-O2", "-O0"):
        obj = tmp_path / f"qual{opt}.o"
        compile_bpf(src, obj, _compiler(compiler), opt=opt)
        res = run([*CLI, "check", str(obj)])
        assert res.returncode == 0, res.stdout + res.stderr
        if not gcc:     # bpf-gcc has no btf_decl_tag: warning SDT114, nothing else
            assert "warning" not in res.stdout + res.stderr, res.stdout
        _values_at_nops(obj, plist, immediates=opt != "-O0")
        forms = {a.kind for s in analyze(load_object(obj)).sites for a in s.args}
        assert forms == ({"reg", "imm", "stack"} if opt == "-O2" else {"reg", "stack"}), (opt, forms)


@pytest.mark.parametrize("version", [14, 19])
def test_btf_keeps_the_qualified_prototype(version: int, tmp_path: Path) -> None:
    plist = _qualified_probes()
    src = tmp_path / "qual.bpf.c"
    src.write_text(_qualified_source(plist))
    obj = tmp_path / "qual.o"
    compile_bpf(src, obj, clang(version))
    protos = btf_prototypes(str(obj))
    types = {t["id"]: t for t in btf_json(str(obj))["types"]}
    for p in plist:
        assert [_btf_spelling(types, t["id"]) for t in protos[p.name]] == [k.ctype for k in p.kinds], p.name


@pytest.mark.parametrize("compiler", COMPILERS)
def test_qualified_types_cost_what_unqualified_ones_cost(compiler: str, tmp_path: Path) -> None:
    """The unqualified copy makes a qualified declaration generate the same
    code as the plain one, byte for byte (a volatile copy would be a stack
    variable: a store and a load per site)."""
    text = {}
    for plain in (False, True):
        src = tmp_path / f"q{plain}.bpf.c"
        src.write_text(_qualified_source(_qualified_probes(plain)))
        obj = tmp_path / f"q{plain}.o"
        compile_bpf(src, obj, _compiler(compiler))
        o = load_object(obj)
        text[plain] = o.section_data(o.section(".text"))  # type: ignore[arg-type]
    assert text[False] == text[True]


@pytest.mark.parametrize("mode", ["BPF_SDT_STRICT", "BPF_SDT_DISABLE"])
def test_qualified_types_in_strict_and_disabled_modes(mode: str, tmp_path: Path) -> None:
    plist = _qualified_probes(max_args=5)
    src = tmp_path / "qual.bpf.c"
    src.write_text(_qualified_source(plist))
    for cc in (clang(14), clang(19), tool("bpf-gcc")):
        obj = tmp_path / "qual.o"
        compile_bpf(src, obj, cc, defines=(mode,))
        sites_found = analyze(load_object(obj)).sites
        if mode == "BPF_SDT_STRICT":
            _values_at_nops(obj, plist, immediates=False)
            assert {a.kind for s in sites_found for a in s.args} == {"reg"}, cc
        else:
            assert not sites_found, cc


# Each argument increments its own global, through declared types that are
# const, volatile, const pointers and a const typedef; 0 when each was
# evaluated exactly once (bpf-gcc passes 6..12 in slots, clang 11..12).
QUAL_ONCE_PROG = """#include <bpf_sdt.h>
struct __sk_buff { unsigned int len; };
typedef const unsigned int cu32;
BPF_SDT_DECLARE12(q, const int, volatile int, cu32, int *const, const volatile long, const int,
		  const int *const, volatile unsigned char, const long, cu32, volatile int, const int);
int g[12];
__attribute__((section("tc"), used)) int once(struct __sk_buff *skb)
{
	BPF_SDT_PROBE12(q, g[0]++, g[1]++, g[2]++ + skb->len, &g[g[3]++ & 7], g[4]++, g[5]++, &g[g[6]++ & 7],
			g[7]++, g[8]++, g[9]++, g[10]++, g[11]++);
	for (int i = 0; i < 12; i++)
		if (g[i] != 1)
			return 100 + i;
	return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


@pytest.mark.parametrize("compiler", COMPILERS)
def test_qualified_types_load_and_run_in_the_kernel(compiler: str, tmp_path: Path) -> None:
    src = tmp_path / "qonce.bpf.c"
    src.write_text(QUAL_ONCE_PROG)
    obj = tmp_path / "qonce.bpf.o"
    compile_bpf(src, obj, _compiler(compiler))
    (site,) = analyze(load_object(obj)).sites
    assert len(site.args) == 12
    assert _kernel_test_run(obj, tmp_path) == 0


# --- compile cost: what a site leaves for the optimizer (issue 22) -------------

# One site per argument kind: 8-byte integer, pointer, 4-, 2- and 1-byte integer.
GUARD_SRC = """#include <bpf_sdt.h>
BPF_SDT_DECLARE5(g5, long, const void *, int, unsigned short, _Bool);
int f(long *c) { BPF_SDT_PROBE5(g5, c[1], (const void *)c, (int)c[2], (unsigned short)c[3], c[4] > 0); return 0; }
"""
WIDE_ARGS = 2   # long and const void *: the only ones a constant could overflow s32 in


@pytest.mark.parametrize("version", [14, 19])
def test_site_leaves_one_constant_test_per_wide_argument(version: int, tmp_path: Path) -> None:
    """Each llvm.is.constant is a branch that stays until late in the pipeline
    (docs/header.md, "Compile time"): the header asks once per 8-byte argument
    and never for one of 4 bytes or less, in the IR as clang emits it."""
    src = tmp_path / "guard.c"
    src.write_text(GUARD_SRC)
    res = run([clang(version), "-target", "bpf", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{HEADER_DIR}",
               "-S", "-emit-llvm", "-Xclang", "-disable-llvm-passes", "-o", "-", str(src)])
    assert res.returncode == 0, res.stderr
    body = res.stdout[res.stdout.index("define "):]
    body = body[:body.index("\n}\n")]
    assert len(re.findall(r"call i1 @llvm\.is\.constant", body)) == WIDE_ARGS, body
    assert len(re.findall(r"\bbr i1\b", body)) == WIDE_ARGS, body

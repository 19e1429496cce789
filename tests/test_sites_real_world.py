"""Every site found and every site located, on the shapes real programs have.

`extract` and `lint` see probe invocations wherever they are written: in an
included header (xdp-tools keeps its whole program in one), inside the user's
own wrapper macros with `__LINE__` arguments (katran's LB_DROP), macros inside
macros, `##` and variadic forwarding, conditional compilation, several files.
Each is located at the outermost invocation, the line the user wrote, and the
compiled object agrees: `bpf-sdt list` shows each site at that same line (from
.BTF.ext), unrolled and inlined copies included, for every site of the compile
matrix too, with the function and type spellings `extract` uses.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from matrix_src import probes, source
from test_compile_matrix import _configs
from toolchain import REQUIRED_CLANGS, clang, compile_bpf, mcpus, need, run, tool

CLI = [sys.executable, "-m", "bpf_sdt.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run([*CLI, *args])


def extract(*files: Path, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    res = cli("extract", "--json", *map(str, files), "--", *flags)
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def lint(*files: Path, flags: tuple[str, ...] = (), ir: bool = True) -> tuple[int, list[dict[str, Any]]]:
    res = cli("lint", "--no-cache", *([] if ir else ["--no-ir"]), "--format", "json", *map(str, files), "--", *flags)
    assert "Traceback" not in res.stderr and res.returncode in (0, 1), res.stdout + res.stderr
    findings: list[dict[str, Any]] = json.loads(res.stdout)["findings"]
    return res.returncode, findings


def listed(obj: Path) -> list[dict[str, Any]]:
    res = cli("list", "--json", str(obj))
    assert res.returncode == 0, res.stderr
    sites: list[dict[str, Any]] = json.loads(res.stdout)["objects"][0]["probes"]
    return sites


def line_of(path: Path, marker: str) -> int:
    """The 1-based line of the only line of `path` holding `marker`."""
    (n,) = [i for i, text in enumerate(path.read_text().splitlines(), 1) if marker in text]
    return n


# --- a whole program in a header (xdp-tools) --------------------------------------------

HEADER_PROGRAM = """\
#pragma once
/* the program lives here; the .c file only includes it */
static __attribute__((always_inline)) inline int parse(int *ctx)
{
	BPF_SDT_PROBE2(hdr_pkt, ctx[0], ctx[1]);		/* @pkt */
	if (ctx[0] < 0)
		BPF_SDT_PROBE1(hdr_drop, ctx[0]);		/* @drop */
	return ctx[0];
}

/* a helper no program of this file calls: no code, no site, nothing to report */
static inline int unused_helper(int x)
{
	BPF_SDT_PROBE1(hdr_drop, x);
	return x;
}
"""
HEADER_MAIN = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE2(hdr_pkt, int, int);
BPF_SDT_DECLARE1(hdr_drop, int);
#include "prog.h"

__attribute__((section("xdp"), used)) int xdp_main(int *ctx)
{
	return parse(ctx);
}
"""


@pytest.fixture
def header_program(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "prog.h").write_text(HEADER_PROGRAM)
    main = tmp_path / "main.bpf.c"
    main.write_text(HEADER_MAIN)
    return main, tmp_path / "prog.h"


def test_probes_in_an_included_header_are_sites(header_program: tuple[Path, Path]) -> None:
    main, header = header_program
    sites = extract(main)["sites"]
    where = {(Path(s["file"]).name, s["line"], s["name"], s["function"]) for s in sites}
    assert where == {("prog.h", line_of(header, "@pkt"), "hdr_pkt", "parse"),
                     ("prog.h", line_of(header, "@drop"), "hdr_drop", "parse"),
                     ("prog.h", line_of(header, "BPF_SDT_PROBE1(hdr_drop, x)"), "hdr_drop", "unused_helper")}
    # declared in the .c file, probed only in the header: not "never probed";
    # the unused helper's probe has no code, which is not SDT011 either
    code, findings = lint(main)
    assert (code, findings) == (0, [])


def test_header_sites_in_the_object_are_at_the_header_lines(header_program: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    main, header = header_program
    obj = tmp_path / "main.o"
    compile_bpf(main, obj, clang(19))
    got = {(s["name"], Path(s["file"]).name, s["line"], s["function"]) for s in listed(obj)}
    assert got == {("hdr_pkt", "prog.h", line_of(header, "@pkt"), "xdp_main"),
                   ("hdr_drop", "prog.h", line_of(header, "@drop"), "xdp_main")}


# --- the user's macros (katran) ------------------------------------------------------------

MACROS = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE4(lb_drop, int, int, int, long);
BPF_SDT_DECLARE2(lb_trace, int, int);
BPF_SDT_DECLARE1(lb_debug, int);
BPF_SDT_DECLARE(lb_mark);

#define LB_DROP(reason, p)	BPF_SDT_PROBE4(lb_drop, __LINE__, reason, (p)[0], 0L)
#define LB_CHECK(p)		do { if ((p)[1] > 10) LB_DROP(1, p); } while (0)
#define LB_TRACE(...)		BPF_SDT_PROBE2(lb_trace, __VA_ARGS__)
#define PROBE_N(n, ...)		BPF_SDT_PROBE##n(__VA_ARGS__)
#define MARK			BPF_SDT_PROBE(lb_mark)
#define BOTH(p)			do { MARK; LB_TRACE((p)[2], 7); } while (0)

__attribute__((section("xdp"), used)) int lb(int *p)
{
	LB_DROP(2, p);					/* @drop */
	LB_CHECK(p);					/* @check */
	LB_TRACE(p[0], p[1]);				/* @trace */
	PROBE_N(2, lb_trace, p[3], 3);			/* @paste */
	BOTH(p);					/* @both */
#ifdef LB_DEBUG
	BPF_SDT_PROBE1(lb_debug, p[0]);			/* @debug */
#endif
	return 0;
}
"""


@pytest.fixture
def macros_c(tmp_path: Path) -> Path:
    f = tmp_path / "lb.bpf.c"
    f.write_text(MACROS)
    return f


def test_wrapper_macros_are_sites_at_the_users_line(macros_c: Path) -> None:
    sites = extract(macros_c)["sites"]
    got = [(s["line"], s["name"], s["via"], s["args"]) for s in sites]

    def at(marker: str) -> int:
        return line_of(macros_c, marker)

    assert got == [
        (at("@drop"), "lb_drop", ["LB_DROP"], ["__LINE__", "2", "(p)[0]", "0L"]),
        (at("@check"), "lb_drop", ["LB_CHECK", "LB_DROP"], ["__LINE__", "1", "(p)[0]", "0L"]),
        (at("@trace"), "lb_trace", ["LB_TRACE"], ["p[0]", "p[1]"]),
        (at("@paste"), "lb_trace", ["PROBE_N"], ["p[3]", "3"]),
        (at("@both"), "lb_mark", ["BOTH", "MARK"], []),
        (at("@both"), "lb_trace", ["BOTH", "LB_TRACE"], ["(p)[2]", "7"]),
    ]
    assert {s["function"] for s in sites} == {"lb"} and {s["column"] for s in sites} == {2}
    # lb_debug is only probed under LB_DEBUG: still probed, not SDT006
    assert lint(macros_c) == (0, [])
    debug = extract(macros_c, flags=("-DLB_DEBUG",))["sites"]
    assert [s["line"] for s in debug if s["name"] == "lb_debug"] == [line_of(macros_c, "@debug")]


def test_wrapper_macro_sites_in_the_object(macros_c: Path, tmp_path: Path) -> None:
    """The object puts each expansion at the same line, and __LINE__ is that line."""
    obj = tmp_path / "lb.o"
    compile_bpf(macros_c, obj, clang(19))
    src = {(s["name"], s["line"], s["column"]) for s in extract(macros_c)["sites"]}
    sites = listed(obj)
    assert {(s["name"], s["line"], s["column"]) for s in sites} == src
    for s in sites:
        assert s["function"] == "lb" and Path(s["file"]).name == macros_c.name
        if s["name"] == "lb_drop":
            assert s["args"][0] == {"kind": "imm", "value": s["line"]}, s   # the __LINE__ argument


def test_findings_through_macros_name_the_macro(tmp_path: Path) -> None:
    f = tmp_path / "bad.bpf.c"
    f.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(one, int);\n"
                 "#define WRONG(x)\tBPF_SDT_PROBE2(one, x, x)\n"
                 "#define GHOST\t\tBPF_SDT_PROBE(ghost)\n"
                 "#define PTR(x)\t\tBPF_SDT_PROBE1(one, &(x))\n"
                 "int f(int x)\n{\n"
                 "\tWRONG(x);\t/* @wrong */\n"
                 "\tGHOST;\t\t/* @ghost */\n"
                 "\tPTR(x);\t\t/* @ptr */\n"
                 "\treturn 0;\n}\n")
    code, findings = lint(f)
    got = {(g["rule"], int(g["where"].split(":")[0])) for g in findings}
    assert got == {("SDT002", line_of(f, "@wrong")), ("SDT001", line_of(f, "@ghost")),
                   ("SDT003", line_of(f, "@ptr"))}, findings
    assert code == 1
    messages = {g["rule"]: g["message"] for g in findings}
    assert "(through WRONG)" in messages["SDT002"] and "(through GHOST)" in messages["SDT001"]
    assert "'&(x)'" in messages["SDT003"] and "(through PTR)" in messages["SDT003"]


def test_types_classified_as_resolved_not_as_spelled(tmp_path: Path) -> None:
    """Qualified pointers are pointers (spelling checks called `int *const` an integer)."""
    f = tmp_path / "q.bpf.c"
    f.write_text("#include <bpf_sdt.h>\ntypedef int *intp;\n"
                 "BPF_SDT_DECLARE4(q, int *const, char *restrict, const void *const, intp);\n"
                 "BPF_SDT_DECLARE2(r, struct pair *, long);\nstruct pair { long a, b; };\n"
                 "int f(int *p, char *c, struct pair *s) {\n"
                 "\tBPF_SDT_PROBE4(q, p, c, p, p);\n\tBPF_SDT_PROBE2(r, s, s->a);\n\treturn 0;\n}\n")
    assert lint(f) == (0, [])


# --- several files ---------------------------------------------------------------------------


def test_several_files_share_a_header(tmp_path: Path) -> None:
    """A header's probes are sites of each file including it; a finding in the
    header is reported once; a probe declared in one file and probed in
    another is probed."""
    (tmp_path / "common.h").write_text(
        "#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(shared, long);\nBPF_SDT_DECLARE1(bad, long);\n"
        "static inline long helper(long x)\n{\n\tBPF_SDT_PROBE1(shared, x);\n"
        "\tBPF_SDT_PROBE1(bad, &x);\t/* @bad */\n\treturn x;\n}\n")
    a, b = tmp_path / "a.bpf.c", tmp_path / "b.bpf.c"
    a.write_text('#include "common.h"\nBPF_SDT_DECLARE1(only_a, int);\nint fa(long x) { return helper(x); }\n')
    b.write_text('#include "common.h"\nBPF_SDT_DECLARE1(only_a, int);\n'
                 "int fb(int y) { BPF_SDT_PROBE1(only_a, y); return helper(y); }\n")
    sites = extract(a, b)["sites"]
    assert Counter((Path(s["file"]).name, s["name"]) for s in sites) == {
        ("common.h", "shared"): 2, ("common.h", "bad"): 2, ("b.bpf.c", "only_a"): 1}
    code, findings = lint(a, b, ir=False)
    assert code == 1
    assert [(Path(g["path"]).name, g["rule"], g["where"]) for g in findings] == [
        ("common.h", "SDT003", f"{line_of(tmp_path / 'common.h', '@bad')}:2")]


# --- function names: the user's, as the object has them --------------------------------------

BPF_PROG_SOURCE = """\
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE2(unlink, int, const void *);
SEC("fentry/do_unlinkat")
int BPF_PROG(do_unlinkat, int dfd, const void *name)
{
	BPF_SDT_PROBE2(unlink, dfd, name);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""
MULTIARCH = ("-I/usr/include/x86_64-linux-gnu",)   # <asm/types.h> for <linux/types.h>
NO_UNUSED_CTX = ("-Wno-unused-parameter",)          # BPF_PROG leaves ctx unused


def test_bpf_prog_function_is_named_as_list_names_it(tmp_path: Path) -> None:
    """BPF_PROG's body is an inner `____do_unlinkat` the object never has."""
    need(Path("/usr/include/bpf/bpf_tracing.h").exists(), "libbpf-dev headers not installed")
    f = tmp_path / "unlink.bpf.c"
    f.write_text(BPF_PROG_SOURCE)
    obj = tmp_path / "unlink.o"
    compile_bpf(f, obj, clang(19), extra=MULTIARCH + NO_UNUSED_CTX)
    (site,) = extract(f, flags=MULTIARCH)["sites"]
    (obj_site,) = listed(obj)
    assert site["function"] == obj_site["function"] == "do_unlinkat"
    assert (site["line"], site["column"]) == (obj_site["line"], obj_site["column"]) == (9, 2)


# --- list: locations, copies, spellings, immediates ---------------------------------------------

COPIES = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(each, int);
BPF_SDT_DECLARE1(inl, long);
static __attribute__((always_inline)) inline void note(long v)
{
	BPF_SDT_PROBE1(inl, v);					/* @inl */
}
__attribute__((noinline)) int f(int *c)
{
	for (int i = 0; i < 4; i++)
		BPF_SDT_PROBE1(each, c[i]);			/* @each */
	note(c[0]);
	return c[1];
}
__attribute__((noinline)) int g(int *c)
{
	note(c[2]);
	note(c[3]);
	return 0;
}
"""


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_unrolled_and_inlined_copies_carry_the_invocation_line(version: int, tmp_path: Path) -> None:
    src = tmp_path / "copies.bpf.c"
    src.write_text(COPIES)
    obj = tmp_path / "copies.o"
    compile_bpf(src, obj, clang(version), mcpu="v2")
    sites = listed(obj)
    lines = Counter((s["name"], s["line"]) for s in sites)
    assert lines == {("each", line_of(src, "@each")): 4, ("inl", line_of(src, "@inl")): 3}, sites
    assert Counter(s["function"] for s in sites if s["name"] == "inl") == {"f": 1, "g": 2}
    # lint's note counts exactly the copies `list` shows
    _, findings = lint(src, flags=(f"-I{tmp_path}",))
    notes = {int(g["where"].split(":")[0]): g["message"] for g in findings if g["rule"] == "SDT012"}
    assert "compiled into 4 sites" in notes[line_of(src, "@each")]
    assert "compiled into 3 sites" in notes[line_of(src, "@inl")]


def test_immediates_are_listed_at_their_declared_type(tmp_path: Path) -> None:
    src = tmp_path / "imm.bpf.c"
    src.write_text("#include <bpf_sdt.h>\ntypedef unsigned char __u8;\ntypedef unsigned short __u16;\n"
                   "enum color { RED, GREEN };\n"
                   "BPF_SDT_DECLARE5(imm, __u8, __u16, signed char, enum color, _Bool);\n"
                   "int f(void) { BPF_SDT_PROBE5(imm, (__u8)255, (__u16)65535, -1, GREEN, 1); return 0; }\n")
    obj = tmp_path / "imm.o"
    compile_bpf(src, obj, clang(19))
    (site,) = listed(obj)
    values = [(a["kind"], a["value"], a.get("raw")) for a in site["args"]]
    assert values[:3] == [("imm", 255, -1), ("imm", 65535, -1), ("imm", -1, None)]
    text = cli("list", str(obj)).stdout
    assert "$255, $65535, $-1, $GREEN, $true" in text, text


def _invocation_lines(text: str) -> dict[str, int]:
    """Probe name -> the line its BPF_SDT_PROBEn invocation is on."""
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = re.search(r"BPF_SDT_PROBE\d+\((\w+)", line)
        if m:
            out[m.group(1)] = n
    return out


MATRIX = probes()


@pytest.fixture(scope="module")
def matrix_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix-lines") / "matrix.bpf.c"
    path.write_text(source(MATRIX))
    return path


def _check_lines(matrix: Path, obj: Path) -> None:
    want = _invocation_lines(matrix.read_text())
    sites = listed(obj)
    assert len(sites) == len(MATRIX) == len(want)
    for s in sites:
        assert (s["file"], s["line"], s["column"]) == (str(matrix), want[s["name"]], 2), s
    text = cli("list", str(obj)).stdout   # the text table shows the same place
    for s in sites:
        assert re.search(rf"^  {s['name']} .* {re.escape(str(matrix))}:{want[s['name']]}:2 ", text, re.M), s["name"]


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_list_lines_equal_the_invocations_of_the_matrix(version: int, matrix_c: Path, tmp_path: Path) -> None:
    obj = tmp_path / "m.o"
    compile_bpf(matrix_c, obj, clang(version), mcpu=mcpus(version)[-1])
    _check_lines(matrix_c, obj)


@pytest.mark.slow
@pytest.mark.parametrize("compiler,version,mcpu,opt", _configs(), ids=lambda v: str(v).lstrip("-"))
def test_list_lines_every_matrix_configuration(compiler: str, version: int, mcpu: str, opt: str,
                                               matrix_c: Path, tmp_path: Path) -> None:
    obj = tmp_path / "m.o"
    compile_bpf(matrix_c, obj, clang(version), mcpu=mcpu, opt=opt)
    _check_lines(matrix_c, obj)


def test_extract_and_list_spell_types_alike(matrix_c: Path, tmp_path: Path) -> None:
    """Every declaration of the matrix (every argument kind): extract's types
    are list's types, through the one typed argument description."""
    obj = tmp_path / "m.o"
    compile_bpf(matrix_c, obj, clang(19))
    declared = {d["name"]: d["types"] for d in extract(matrix_c)["declarations"]}
    for s in listed(obj):
        assert s["types"] == declared[s["name"]], s["name"]
    assert {s["function"] for s in extract(matrix_c)["sites"]} == {s["function"] for s in listed(obj)}


# --- instrumented objects: the observers each site calls -------------------------------------

INSTRUMENTED = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(hit, int);
BPF_SDT_DECLARE1(other, long);
BPF_SDT_DECLARE(quiet);
__attribute__((section("xdp"), used)) int prog(int *ctx)
{
	BPF_SDT_PROBE1(hit, ctx[0]);
	if (ctx[1])
		BPF_SDT_PROBE1(other, ctx[2]);
	BPF_SDT_PROBE(quiet);
	return 2;
}
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""
OBSERVERS = """\
__attribute__((section("bpf_sdt/hit"), used)) int on_hit(unsigned long long *ctx) { return (int)ctx[0]; }
__attribute__((section("bpf_sdt"), used)) int on_any(unsigned long long *ctx) { return (int)ctx[0]; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""


def test_list_shows_the_observers_of_an_instrumented_object(tmp_path: Path) -> None:
    tool("bpftool")
    src, obs_src = tmp_path / "prog.bpf.c", tmp_path / "obs.bpf.c"
    src.write_text(INSTRUMENTED)
    obs_src.write_text(OBSERVERS)
    obj, obs = tmp_path / "prog.o", tmp_path / "obs.o"
    compile_bpf(src, obj, clang(19))
    compile_bpf(obs_src, obs, clang(19))
    out = tmp_path / "out.o"
    res = cli("instrument", str(obj), "-o", str(out), "--observer", str(obs), "--attach", "on_any=[ho]*",
              "--record", "--probe", "hit", "--probe", "other")
    assert res.returncode == 0, res.stderr
    calls = {s["name"]: s["observers"] for s in listed(out)}
    assert calls == {"hit": ["on_hit", "on_any", "bpf_sdt_record_1"], "other": ["on_any", "bpf_sdt_record_1"],
                     "quiet": []}
    assert all(s["observers"] == [] for s in listed(obj))
    table = cli("list", str(out)).stdout.splitlines()
    assert table[1].split()[-1] == "OBSERVERS" and table[2].endswith("on_hit, on_any, bpf_sdt_record_1")
    assert table[-1].split()[0] == "quiet" and table[-1].endswith(" -")
    assert "OBSERVERS" not in cli("list", str(obj)).stdout, "only an instrumented object has the column"
    # the instrumented sites keep their source lines
    assert [(s["name"], s["line"]) for s in listed(out)] == [(s["name"], s["line"]) for s in listed(obj)]

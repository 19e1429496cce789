"""The IR rules of `bpf-sdt lint` (SDT010..SDT012) on real clang 19 and 14.

Each case is one no clang warning reports (shown by compiling it with every
uninitialized-value and unreachable-code warning as an error), and lint flags
it on the user's line, through the bitcode llvmlite reads.  The objects agree:
a probe the IR rules call dead has no site in the object, and a probe they
note as compiled N times has N sites in `bpf-sdt list`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from toolchain import REQUIRED_CLANGS, clang, compile_bpf, run

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
# Every warning that could see these cases, as errors: the sources compile.
WARNINGS = ("-Wuninitialized", "-Wsometimes-uninitialized", "-Wconditional-uninitialized",
            "-Wunreachable-code-aggressive", "-Wunused")
IR_RULES = {"SDT010", "SDT011", "SDT012"}

UNINIT_FIELD = """\
#include <bpf_sdt.h>
struct pkt { int len; int proto; };
BPF_SDT_DECLARE2(pk, int, int);
int f(int *ctx)
{
	struct pkt p;
	p.len = ctx[0];
	BPF_SDT_PROBE2(pk, p.len, p.proto);		/* @pk */
	return p.len;
}
"""
DEAD_AFTER_INLINING = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(maybe, int);
BPF_SDT_DECLARE1(always, int);
static __attribute__((always_inline)) inline void trace_if(int x, int on)
{
	if (on)
		BPF_SDT_PROBE1(maybe, x);		/* @maybe */
	BPF_SDT_PROBE1(always, x);
}
int f(int *ctx)
{
	trace_if(ctx[0], 0);
	return 0;
}
"""
UNROLLED = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(each, int);
int f(int *c)
{
	for (int i = 0; i < 4; i++)
		BPF_SDT_PROBE1(each, c[i]);		/* @each */
	return c[0];
}
"""
THROUGH_MACRO = """\
#include <bpf_sdt.h>
struct pkt { int len; int proto; };
BPF_SDT_DECLARE3(pk, int, int, int);
#define TRACE_PKT(p)	BPF_SDT_PROBE3(pk, __LINE__, (p).len, (p).proto)
int f(int *ctx)
{
	struct pkt p;
	p.proto = ctx[1];
	TRACE_PKT(p);					/* @macro */
	return p.proto;
}
"""


def line_of(text: str, marker: str) -> int:
    (n,) = [i for i, line in enumerate(text.splitlines(), 1) if marker in line]
    return n


def lint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "lint", *args], capture_output=True, text=True, env=env, check=False)


def ir_env(version: int, **extra: str) -> dict[str, str]:
    return {**os.environ, "BPF_SDT_CLANG": clang(version), **extra}


def findings(res: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert "Traceback" not in res.stderr, res.stderr
    found: list[dict[str, Any]] = json.loads(res.stdout)["findings"]
    return found


def write(tmp_path: Path, text: str, name: str = "t.bpf.c") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def no_clang_warning(f: Path, version: int, tmp_path: Path) -> None:
    """No clang warning reports the case: it compiles under -Werror with them all."""
    res = compile_bpf(f, tmp_path / "warn.o", clang(version), extra=WARNINGS)
    assert "warning" not in res.stderr, res.stderr


def the_one_finding(tmp_path: Path, text: str, version: int) -> tuple[Path, dict[str, Any],
                                                                       subprocess.CompletedProcess[str]]:
    """`text` written out, checked to be a case no clang warning reports,
    and the single finding `lint --format json` has on it."""
    f = write(tmp_path, text)
    no_clang_warning(f, version, tmp_path)
    res = lint("--no-cache", "--format", "json", str(f), env=ir_env(version))
    (hit,) = findings(res)
    return f, hit, res


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_uninitialized_struct_field_argument(version: int, tmp_path: Path) -> None:
    f, hit, res = the_one_finding(tmp_path, UNINIT_FIELD, version)
    assert (hit["rule"], hit["severity"], hit["where"]) == ("SDT010", "error", f"{line_of(UNINIT_FIELD, '@pk')}:2")
    assert "argument 2 ('p.proto') is undef" in hit["message"]
    assert res.returncode == 1 and res.stderr == ""
    text = lint("--no-cache", str(f), env=ir_env(version)).stdout
    assert text.startswith(f"{f}:{line_of(UNINIT_FIELD, '@pk')}:2: error: probe 'pk' argument 2") and "[SDT010]" in text


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_probe_dead_only_after_inlining(version: int, tmp_path: Path) -> None:
    f, hit, res = the_one_finding(tmp_path, DEAD_AFTER_INLINING, version)
    assert (hit["rule"], hit["severity"]) == ("SDT011", "warning")
    assert hit["where"] == f"{line_of(DEAD_AFTER_INLINING, '@maybe')}:3" and "'maybe'" in hit["message"]
    assert res.returncode == 0
    # the object agrees: no site for it, one for the other probe of the helper
    obj = tmp_path / "dead.o"
    compile_bpf(f, obj, clang(version))
    listing = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert [s["name"] for s in listing] == ["always"]


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_unrolled_probe_is_noted_with_its_count(version: int, tmp_path: Path) -> None:
    f = write(tmp_path, UNROLLED)
    res = lint("--no-cache", "--format", "json", str(f), env=ir_env(version))
    (hit,) = findings(res)
    assert (hit["rule"], hit["severity"], hit["where"]) == ("SDT012", "note", f"{line_of(UNROLLED, '@each')}:3")
    assert "compiled into 4 sites: 4 in f (unrolled or duplicated)" in hit["message"]
    assert res.returncode == 0, "a note is no error"
    obj = tmp_path / "unrolled.o"
    compile_bpf(f, obj, clang(version))
    listing = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert len(listing) == 4 and {s["line"] for s in listing} == {line_of(UNROLLED, "@each")}
    text = lint("--no-cache", str(f), env=ir_env(version)).stdout
    assert f":{line_of(UNROLLED, '@each')}:3: note: probe 'each' is compiled into 4 sites" in text


def test_finding_through_a_macro_is_on_the_users_line(tmp_path: Path) -> None:
    f = write(tmp_path, THROUGH_MACRO)
    no_clang_warning(f, 19, tmp_path)
    (hit,) = findings(lint("--no-cache", "--format", "json", str(f), env=ir_env(19)))
    assert (hit["rule"], hit["where"]) == ("SDT010", f"{line_of(THROUGH_MACRO, '@macro')}:2")
    assert "argument 2 ('(p).len')" in hit["message"] and hit["message"].endswith("(through TRACE_PKT)")


def test_no_ir_skips_the_ir_rules(tmp_path: Path) -> None:
    for text in (UNINIT_FIELD, DEAD_AFTER_INLINING, UNROLLED):
        f = write(tmp_path, text)
        res = lint("--no-cache", "--no-ir", "--format", "json", str(f))
        assert findings(res) == [] and res.returncode == 0


def test_disabled_probes_are_not_dead(tmp_path: Path) -> None:
    """Under BPF_SDT_DISABLE no probe has a site; none is reported as dead."""
    f = write(tmp_path, DEAD_AFTER_INLINING.replace("trace_if(ctx[0], 0)", "trace_if(ctx[0], ctx[1])"))
    res = lint("--no-cache", "--format", "json", str(f), "--", "-DBPF_SDT_DISABLE")
    assert findings(res) == [] and res.returncode == 0


def test_sarif_and_json_carry_the_ir_rules(tmp_path: Path) -> None:
    f = write(tmp_path, UNINIT_FIELD.replace("return p.len;", "for (int i = 0; i < 2; i++)\n"
                                             "\t\tBPF_SDT_PROBE2(pk, ctx[i], i);\n\treturn p.len;"))
    doc = json.loads(lint("--no-cache", "--format", "sarif", str(f), env=ir_env(19)).stdout)
    run_ = doc["runs"][0]
    rules = {r["id"]: r["defaultConfiguration"]["level"] for r in run_["tool"]["driver"]["rules"]}
    assert {k: rules[k] for k in IR_RULES} == {"SDT010": "error", "SDT011": "warning", "SDT012": "note"}
    assert sorted((r["ruleId"], r["level"]) for r in run_["results"]) == [("SDT010", "error"), ("SDT012", "note")]


def _logging_clang(directory: Path, name: str, real: str) -> tuple[Path, Path]:
    """A clang that writes one line per run to a log, then runs the real one."""
    log = directory / f"{name}.log"
    script = directory / name
    script.write_text(f"#!/bin/sh\necho run >> '{log}'\nexec '{real}' \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def test_cached_ir_findings_need_no_compile(tmp_path: Path) -> None:
    f = write(tmp_path, UNINIT_FIELD)
    wrapper, log = _logging_clang(tmp_path, "clang-19", clang(19))
    env = ir_env(19, BPF_SDT_CLANG=str(wrapper), BPF_SDT_CACHE_DIR=str(tmp_path / "cache"))
    first = lint("--format", "json", str(f), env=env)
    second = lint("--format", "json", str(f), env=env)
    assert [h["rule"] for h in findings(first)] == ["SDT010"] and second.stdout == first.stdout
    assert log.read_text().count("run") == 1, "the warm run compiled again"
    no_ir = lint("--no-ir", "--format", "json", str(f), env=env)   # its own cache entry
    assert findings(no_ir) == [] and log.read_text().count("run") == 1


def test_the_build_s_own_clang_compiles_the_ir(tmp_path: Path) -> None:
    """compile_commands.json names clang-14: the IR is clang 14's."""
    f = write(tmp_path, UNINIT_FIELD)
    wrapper, log = _logging_clang(tmp_path, "clang-14", clang(14))
    (tmp_path / "compile_commands.json").write_text(json.dumps([{
        "directory": str(tmp_path), "file": f.name,
        "command": f"{wrapper} -target bpf -O2 -g -mcpu=v2 -c {f.name} -o t.o"}]))
    res = lint("--no-cache", "--format", "json", "-p", str(tmp_path), str(f),
               env={**os.environ, "BPF_SDT_CLANG": "/nonexistent/clang"})
    assert [h["rule"] for h in findings(res)] == ["SDT010"] and log.read_text().count("run") == 1


@pytest.mark.parametrize("clang_env, why", [
    ("/nonexistent/clang", "not found"),
    ("FAILING", "clang: error: boom"),
])
def test_ir_rules_that_cannot_run_say_why_once(clang_env: str, why: str, tmp_path: Path) -> None:
    f = write(tmp_path, UNINIT_FIELD)
    if clang_env == "FAILING":
        failing = tmp_path / "clang-fails"
        failing.write_text("#!/bin/sh\necho 'error: boom' >&2\nexit 1\n")
        failing.chmod(0o755)
        clang_env = str(failing)
    res = lint("--no-cache", "--format", "json", str(f), env={**os.environ, "BPF_SDT_CLANG": clang_env})
    assert findings(res) == [] and res.returncode == 0, "the other rules still ran; nothing found"
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("bpf-sdt lint: ") and "IR checks skipped" in line and why in line


def test_a_slow_clang_costs_the_ir_rules_not_the_file(tmp_path: Path) -> None:
    f = write(tmp_path, UNINIT_FIELD + "BPF_SDT_DECLARE(unused);\n")   # an SDT006 libclang finds
    slow = tmp_path / "clang-slow"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    env = {**os.environ, "BPF_SDT_CLANG": str(slow), "BPF_SDT_PARSE_TIMEOUT": "3"}
    res = lint("--no-cache", "--format", "json", str(f), env=env)
    assert [h["rule"] for h in findings(res)] == ["SDT006"] and res.returncode == 0
    assert "IR checks skipped: clang took longer" in res.stderr and len(res.stderr.splitlines()) == 1


def test_a_header_probe_is_judged_per_file_including_it(tmp_path: Path) -> None:
    """Each file compiles the header's helper its own way: dead in one, live
    in the other; the finding names the file whose compile it is about."""
    (tmp_path / "trace.h").write_text(
        "#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(maybe, int);\n"
        "static __attribute__((always_inline)) inline void trace_if(int x, int on)\n{\n"
        "\tif (on)\n\t\tBPF_SDT_PROBE1(maybe, x);\n}\n")
    a, b = write(tmp_path, '#include "trace.h"\nint fa(int *c) { trace_if(c[0], 0); return 0; }\n', "a.bpf.c"), \
        write(tmp_path, '#include "trace.h"\nint fb(int *c) { trace_if(c[0], c[1]); return 0; }\n', "b.bpf.c")
    (hit,) = findings(lint("--no-cache", "--format", "json", str(a), str(b), env=ir_env(19)))
    assert (Path(hit["path"]).name, hit["rule"], hit["where"]) == ("trace.h", "SDT011", "6:3")
    assert hit["message"].endswith(f"(compiling {a})")

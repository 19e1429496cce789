"""The IR compile of many files in one clang (clang_plugin/irbatch.py), on
real clang 19 and 14: the modules it splits out of the stream are byte for
byte what the same command writes for each file alone, and the probe sites
in them are those of a plain per-file `clang -c -emit-llvm`; a file that
does not compile, or hangs, costs only itself."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bpf_sdt.clang_plugin.irbatch import IrBatch, cc1_command, has_core_relocations, split_bitcode
from bpf_sdt.clang_plugin.irlint import IrCompiler, IrUnavailable, ir_sites, start_ir
from bpf_sdt.clang_plugin.parse import compile_flags
from bpf_sdt.clang_plugin.plan import plan_for
from test_samples import SAMPLES, built, make  # noqa: F401  (fixture)
from toolchain import REQUIRED_CLANGS, clang, tool

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
TIMEOUT_S = 30.0


def source(i: int, broken: bool = False) -> str:
    """A file with two probes, one of them reading an uninitialized field
    (a finding the IR rules make), and optionally a compile error."""
    return (f"#include <bpf_sdt.h>\nstruct s{i} {{ int a; int b; }};\n"
            f"BPF_SDT_DECLARE2(p{i}, int, long);\nBPF_SDT_DECLARE1(q{i}, int);\n"
            f"int f{i}(int *c)\n{{\n\tstruct s{i} v;\n\tv.a = c[0];\n"
            f"\tBPF_SDT_PROBE2(p{i}, v.a, {i});\n\tBPF_SDT_PROBE1(q{i}, v.b);\n"
            f"\treturn {'undeclared_name' if broken else 'v.a'};\n}}\n")


# A struct whose member reads are CO-RE relocations (with -g, as the IR compile has).
CORE_STRUCT = "struct hdr { int x; int y; } __attribute__((preserve_access_index));\n"


def core_source(i: int) -> str:
    """source(i) with a CO-RE read of the same field every such file reads."""
    return (source(i).replace(f"int f{i}(int *c)", CORE_STRUCT + f"int f{i}(struct hdr *c)")
            .replace("v.a = c[0];", "v.a = c->y;"))


def core_sources(tmp_path: Path, core: tuple[bool, ...]) -> list[str]:
    out = []
    for i, with_core in enumerate(core):
        f = tmp_path / f"c{i}.bpf.c"
        f.write_text(core_source(i) if with_core else source(i))
        out.append(str(f))
    return out


def sources(tmp_path: Path, n: int, broken: tuple[int, ...] = ()) -> list[str]:
    out = []
    for i in range(n):
        f = tmp_path / f"s{i}.bpf.c"
        f.write_text(source(i, i in broken))
        out.append(str(f))
    return out


def batch(files: list[str], command: list[str], timeout_s: float = TIMEOUT_S) -> dict[str, bytes | IrUnavailable]:
    b = IrBatch(command, files, timeout_s)
    b.start()
    return b.collect()


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_batch_modules_are_each_file_s_own(version: int, tmp_path: Path) -> None:
    files = sources(tmp_path, 5)
    flags = compile_flags([])
    command = cc1_command(clang(version), flags, files[0])
    assert command is not None and command[1] == "-cc1" and "-disable-free" not in command
    got = batch(files, command)
    assert list(got) == files
    for f in files:
        alone = subprocess.run([*command, f], capture_output=True, check=True).stdout
        assert got[f] == alone, f"{f}: the split module differs from the file compiled alone"
        per_file = start_ir(IrCompiler(clang(version)), f, flags).result(TIMEOUT_S)
        sites = ir_sites(got[f])
        assert sites == ir_sites(per_file) and len(sites) == 2
        assert [s.undefined for s in sites] == [(), ((1, "undef"),)] or [s.undefined for s in sites] == [
            (), ((1, "poison"),)]


def test_a_file_that_does_not_compile_costs_only_itself(tmp_path: Path) -> None:
    files = sources(tmp_path, 5, broken=(1, 3))
    command = cc1_command(clang(19), compile_flags([]), files[0])
    assert command is not None
    got = batch(files, command)
    for i, f in enumerate(files):
        if i in (1, 3):
            assert isinstance(got[f], IrUnavailable) and "undeclared_name" in str(got[f])
            assert Path(f).name in str(got[f]), "the error is the file's own"
        else:
            module = got[f]
            assert isinstance(module, bytes) and [s.name for s in ir_sites(module)] == [f"p{i}", f"q{i}"]


def test_a_hanging_compile_is_cut_at_the_file_s_deadline(tmp_path: Path) -> None:
    """A fake compiler that never finishes: each file, in turn, is the one in
    progress when its deadline passes; each gets the reason."""
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(hang.stat().st_mode | stat.S_IXUSR)
    files = sources(tmp_path, 2)
    got = batch(files, [str(hang)], timeout_s=1.0)
    assert all(isinstance(got[f], IrUnavailable) and "took longer than 1 s" in str(got[f]) for f in files)


def test_split_keeps_only_complete_modules(tmp_path: Path) -> None:
    files = sources(tmp_path, 3)
    command = cc1_command(clang(19), compile_flags([]), files[0])
    assert command is not None
    stream = subprocess.run([*command, *files], capture_output=True, check=True).stdout
    modules = split_bitcode(stream)
    assert len(modules) == 3 and b"".join(modules) == stream
    assert split_bitcode(stream[:-4]) == modules[:2], "a module cut short is left out"
    assert split_bitcode(stream[:len(modules[0]) + 9]) == modules[:1]
    assert split_bitcode(b"") == [] and split_bitcode(b"BC\xc0\xde\xff\xff\xff\xff") == []
    assert split_bitcode(b"not bitcode") == []


@pytest.mark.parametrize("flag", ["-MD", "-ftime-trace"])
def test_per_input_outputs_are_not_shared(flag: str, tmp_path: Path) -> None:
    (f,) = sources(tmp_path, 1)
    assert cc1_command(clang(19), [*compile_flags([]), flag], f) is None
    assert cc1_command(str(tmp_path / "no-such-clang"), compile_flags([]), f) is None


def test_lint_of_many_files_equals_each_file_alone(tmp_path: Path) -> None:
    """End to end: a batch of files with one broken one gives every file the
    findings it has when linted by itself, and the broken one its SDT000."""
    files = sources(tmp_path, 4, broken=(2,))
    env = {**os.environ, "BPF_SDT_CLANG": clang(19)}

    def lint(*paths: str) -> list[dict[str, str]]:
        res = subprocess.run([*CLI, "lint", "--no-cache", "--format", "json", "-j", "2", *paths],
                             capture_output=True, text=True, env=env, check=False)
        assert "Traceback" not in res.stderr and res.returncode == 1, res.stderr
        found: list[dict[str, str]] = json.loads(res.stdout)["findings"]
        return found

    together = lint(*files)
    alone = [h for f in files for h in lint(f)]
    assert sorted(map(json.dumps, together)) == sorted(map(json.dumps, alone))
    rules = {(Path(h["path"]).name, h["rule"]) for h in together}
    assert {("s0.bpf.c", "SDT010"), ("s3.bpf.c", "SDT010"), ("s2.bpf.c", "SDT000")} <= rules


def test_bitcode_past_the_limit_is_refused_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each module is read only up to the limit (a hostile file can make clang
    write a huge one): past it, that file gets the reason, the others theirs."""
    import bpf_sdt.clang_plugin.irbatch as irbatch

    files = sources(tmp_path, 3)
    data = "".join(chr(ord("a") + (i * 7919) % 26) for i in range(48 << 10))   # no run LLVM could fold
    (tmp_path / "s1.bpf.c").write_text(source(1) + f'const char big[] = "{data}";\n')
    command = cc1_command(clang(19), compile_flags([]), files[0])
    assert command is not None
    monkeypatch.setattr(irbatch, "MAX_BITCODE_BYTES", 32 << 10)
    got = batch(files, command)
    assert isinstance(got[files[1]], IrUnavailable) and "past the" in str(got[files[1]])
    assert all(isinstance(got[f], bytes) for f in (files[0], files[2]))


# A module LLVM's verifier rejects, with debug info: llvmlite's LLVM verifies
# such a module as it reads it and aborts its process ("Broken module found").
BROKEN_MODULE = """\
define i64 @f(ptr %p) {
entry:
  %a = load i64, ptr %q, align 8
  %q = getelementptr inbounds i8, ptr %p, i64 8
  ret i64 %a
}
!llvm.module.flags = !{!0}
!0 = !{i32 2, !"Debug Info Version", i32 3}
"""


def test_a_module_llvm_refuses_is_compiled_again_alone(tmp_path: Path) -> None:
    """Batch-compiled modules are read in sandboxed workers.  A module that
    makes llvmlite's LLVM abort (assembled with llvm-as -disable-verify, as
    no clang writes one on purpose) ends a worker, not lint; one it cannot
    parse is refused.  Either way the shared clang's module is not trusted:
    the file is compiled alone and gets its IR findings; if that fails too,
    a note says why."""
    from bpf_sdt.clang_plugin.analysis import _batched_ir
    from bpf_sdt.clang_plugin.plan import IrTask, Plan
    from bpf_sdt.clang_plugin.sandbox import Limits
    from bpf_sdt.clang_plugin.worker import analyze_file

    broken = tmp_path / "broken.bc"
    (tmp_path / "broken.ll").write_text(BROKEN_MODULE)
    subprocess.run([tool("llvm-as-19"), "-disable-verify", str(tmp_path / "broken.ll"), "-o", str(broken)],
                   check=True)
    unreadable = broken.read_bytes()[:-8]
    files = sources(tmp_path, 4)
    flags = compile_flags([])
    command = cc1_command(clang(19), flags, files[0])
    assert command is not None
    bitcode: dict[str, bytes | Exception] = dict(batch(files, command))
    bitcode[files[1]] = broken.read_bytes()
    bitcode[files[2]] = bitcode[files[3]] = unreadable
    plan = Plan({f: flags for f in files}, {f: IrTask(clang(19), flags) for f in files})
    plan.ir[files[3]] = IrTask(str(tmp_path / "no-such-clang"), flags)
    data = {f: Path(f).read_bytes() for f in files}
    results = {f: analyze_file(f, flags, data[f], ir_elsewhere=True) for f in files}
    _batched_ir(results, files, data, bitcode, plan, 2, Limits.from_env())
    for f in files[:3]:
        assert [h.rule for h in results[f].findings] == ["SDT010"] and results[f].ir_note is None, f
    note = results[files[3]].ir_note
    assert note is not None and "cannot run" in note and "no-such-clang" in note


def test_a_later_input_gets_the_diagnostics_of_a_file_alone(built: Path) -> None:  # noqa: F811
    """cc1 does not give later inputs the first one's diagnostic state: after
    tc_main, a -Wint-conversion inside libbpf's BPF_PROG (a system header's
    macro, silent when trace_exec compiles alone) stops trace_exec.  The
    batch compiles it again as a first input: no file loses its IR."""
    make("-s", f"BPF_SDT_OUTDIR={built}", f"{built}/compile_commands.json")
    tc, trace = str(SAMPLES / "tc_main.bpf.c"), str(SAMPLES / "trace_exec.bpf.c")
    plan = plan_for([tc, trace], str(built), [], ir=True)
    task = plan.ir[trace]
    assert task is not None and plan.ir[tc] == task
    command = cc1_command(task.compiler, task.flags, trace)
    assert command is not None
    later = subprocess.run([*command, tc, trace], capture_output=True, check=False)
    assert later.returncode != 0 and b"-Wint-conversion" in later.stderr, "clang now keeps the state?"
    alone = start_ir(IrCompiler(task.compiler), trace, task.flags).result(TIMEOUT_S)
    got = batch([tc, trace], command)
    assert all(isinstance(v, bytes) for v in got.values()), got
    assert ir_sites(got[trace]) == ir_sites(alone) and ir_sites(alone)


# CO-RE files right after another (its module still alive in cc1), and two
# inputs later (freed): the files that shared one clang had unreadable or
# silently wrong modules, and lint said only "IR checks skipped".
CORE_LAYOUT = (True, True, False, True)


@pytest.mark.parametrize("version", REQUIRED_CLANGS)
def test_co_re_relocations_do_not_leak_into_later_inputs(version: int, tmp_path: Path) -> None:
    """LLVM's BPF member-access pass keeps its CO-RE globals in a map per
    process: a later cc1 input with the same access got the earlier module's
    global.  The batch gives the files after a CO-RE module a new clang, so
    each module is what the file compiled alone writes."""
    files = core_sources(tmp_path, CORE_LAYOUT)
    command = cc1_command(clang(version), compile_flags([]), files[0])
    assert command is not None
    shared = subprocess.run([*command, *files], capture_output=True, check=False)
    alone = {f: subprocess.run([*command, f], capture_output=True, check=True).stdout for f in files}
    assert shared.returncode != 0 or split_bitcode(shared.stdout)[1] != alone[files[1]], \
        "one cc1 now keeps CO-RE relocations per module? then irbatch need not restart after one"
    assert all(has_core_relocations(alone[f]) == core for f, core in zip(files, CORE_LAYOUT, strict=True))
    got = batch(files, command)
    for f in files:
        assert got[f] == alone[f], f"{f}: the split module differs from the file compiled alone"


def test_lint_of_co_re_files_together_runs_the_ir_rules_on_each(tmp_path: Path) -> None:
    """End to end, -j1 (one shared clang): every file gets its SDT010, none
    the note that its IR checks were skipped."""
    files = core_sources(tmp_path, CORE_LAYOUT)
    res = subprocess.run([*CLI, "lint", "--no-cache", "--format", "json", "-j", "1", *files],
                         capture_output=True, text=True, env={**os.environ, "BPF_SDT_CLANG": clang(19)}, check=False)
    assert res.returncode == 1 and "IR checks skipped" not in res.stderr, res.stderr
    found = {(Path(h["path"]).name, h["rule"]) for h in json.loads(res.stdout)["findings"]}
    assert found == {(Path(f).name, "SDT010") for f in files}


def test_a_file_that_may_have_co_re_relocations_is_its_clang_s_last(tmp_path: Path) -> None:
    """The include scan guesses which files have CO-RE relocations (they name
    the attribute); each such file is the last input of its clang, so none
    after it is compiled, killed and compiled again: each file is compiled
    once (a wrapper around cc1 logs each clang's inputs)."""
    from bpf_sdt.clang_plugin.includes import scan_includes

    files = core_sources(tmp_path, CORE_LAYOUT)
    flags = compile_flags([])
    guessed = {f for f in files if scan_includes(f, Path(f).read_bytes(), flags)[1]}
    assert guessed == {f for f, core in zip(files, CORE_LAYOUT, strict=True) if core}
    command = cc1_command(clang(19), flags, files[0])
    assert command is not None
    log, wrapper = tmp_path / "inputs", tmp_path / "cc1"
    wrapper.write_text(f'#!/bin/sh\nfor a; do case "$a" in *.bpf.c) printf "%s " "$a" >> {log};; esac; done\n'
                       f'echo >> {log}\nexec {command[0]} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    b = IrBatch([str(wrapper), *command[1:]], files, TIMEOUT_S, last_inputs=frozenset(guessed))
    b.start()
    got = b.collect()
    assert [line.split() for line in log.read_text().splitlines()] == [files[:1], files[1:2], files[2:]]
    for f in files:
        assert got[f] == subprocess.run([*command, f], capture_output=True, check=True).stdout, f

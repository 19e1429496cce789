"""Precompiled preambles (clang_plugin/preamble.py): which header a PCH may
stand in for, and on the samples (vmlinux.h) that using one for both front
ends changes nothing but speed: every file's facts and findings, and the
IR rules' verdicts, equal those of the file linted alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from bpf_sdt.clang_plugin import plan, schedule
from bpf_sdt.clang_plugin.parse import compile_flags
from bpf_sdt.clang_plugin.preamble import MIN_HEADER_BYTES, leading_header
from bpf_sdt.clang_plugin.sandbox import Limits
from test_samples import SAMPLES, built, make  # noqa: F401  (fixture)
from toolchain import clang

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
BIG = "struct s{0} {{ int a{0}; long b{0}; }};\n"


def big_header(path: Path, guard: str | None = "BIG_H", extra: str = "") -> Path:
    body = "".join(BIG.format(i) for i in range(MIN_HEADER_BYTES // 30 + 1)) + extra
    if guard:
        body = f"/* a big header */\n#ifndef {guard}\n#define {guard}\n{body}#endif /* {guard} */\n"
    path.write_text(body)
    return path


def source(tmp_path: Path, text: str) -> tuple[str, bytes]:
    f = tmp_path / "t.bpf.c"
    f.write_text(text)
    return str(f), text.encode()


def test_the_first_include_through_guarded_headers(tmp_path: Path) -> None:
    big = big_header(tmp_path / "big.h")
    (tmp_path / "common.h").write_text('#ifndef COMMON_H\n#define COMMON_H\n#include "big.h"\n'
                                       "#include <bpf_sdt.h>\n#endif\n")
    f, data = source(tmp_path, '// SPDX\n/* x */\n#include "common.h"\nint f(void) { return 0; }\n')
    p = leading_header(f, data, compile_flags([]))
    assert p is not None and p.header == str(big) and p.closure == (str(big),)


def test_what_a_pch_may_not_stand_in_for(tmp_path: Path) -> None:
    flags = compile_flags([])
    big_header(tmp_path / "big.h")
    cases = {
        "a macro before the include": '#define X 1\n#include "big.h"\n',
        "code before the include": 'int x;\n#include "big.h"\n',
        "a forced include": '#include "big.h"\n',
    }
    for why, text in cases.items():
        f, data = source(tmp_path, text)
        extra = ["-include", str(tmp_path / "big.h")] if why == "a forced include" else []
        assert leading_header(f, data, [*flags, *extra]) is None, why
    f, data = source(tmp_path, '#include "big.h"\n')
    assert leading_header(f, data, flags) is not None
    big_header(tmp_path / "big.h", guard=None)
    assert leading_header(f, data, flags) is None, "unguarded: the file's own #include would repeat it"
    big_header(tmp_path / "big.h", extra="#define TRACE(x) BPF_SDT_PROBE1(t, x)\n")
    assert leading_header(f, data, flags) is None, "it uses the probe macros: the rules must see it"
    (tmp_path / "big.h").write_text("#ifndef S\n#define S\nstruct s { int a; };\n#endif\n")
    assert leading_header(f, data, flags) is None, "too small to be worth a PCH"
    big_header(tmp_path / "big.h", guard="BIG_H", extra="#ifdef COMMON_H\nint seen;\n#endif\n")
    (tmp_path / "common.h").write_text('#ifndef COMMON_H\n#define COMMON_H\n#include "big.h"\n'
                                       "#include <bpf_sdt.h>\n#endif\n")
    f, data = source(tmp_path, '#include "common.h"\n')
    assert leading_header(f, data, flags) is None, "it reads a guard defined before it"


def test_samples_get_one_pch_per_front_end(built: Path) -> None:  # noqa: F811
    make("-s", f"BPF_SDT_OUTDIR={built}", f"{built}/compile_commands.json")
    files = sorted(map(str, SAMPLES.glob("*.bpf.c")))
    compile_plan = plan.plan_for(files, str(built), [], ir=True)
    sources = {f: Path(f).read_bytes() for f in files}
    with tempfile.TemporaryDirectory() as d:
        pchs = schedule.start_precompiling(files, compile_plan, sources, Limits.from_env(), d)
        schedule.finish_precompiling(pchs, 2, Limits.from_env())
        assert set(pchs.ast) == set(pchs.ir) == set(files), "every sample starts with vmlinux.h"
        assert len(set(pchs.ast.values())) == len(set(pchs.ir.values())) == 1
        assert all(os.path.getsize(p) > MIN_HEADER_BYTES for p in {*pchs.ast.values(), *pchs.ir.values()})
        assert all(any(h.endswith("vmlinux.h") for h in c) for c in pchs.closure.values())


def test_samples_with_a_pch_equal_each_file_alone(built: Path, tmp_path: Path) -> None:  # noqa: F811
    """Together (PCHs, shared clangs) or alone (neither): the same extract
    output and lint findings, and the IR rules ran on every file."""
    make("-s", f"BPF_SDT_OUTDIR={built}", f"{built}/compile_commands.json")
    files = sorted(map(str, SAMPLES.glob("*.bpf.c")))
    env = {**os.environ, "BPF_SDT_CLANG": clang(19), "BPF_SDT_CACHE_DIR": str(tmp_path / "cache")}

    def run(cmd: str, *paths: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*CLI, cmd, "--json" if cmd == "extract" else "--format=json", "-p", str(built),
                              *(["--no-cache", "-j", "2"] if cmd == "lint" else []), *paths],
                             capture_output=True, text=True, env=env, check=False)
        assert "Traceback" not in res.stderr and "IR checks skipped" not in res.stderr, res.stderr
        return res

    together = run("lint", *files)
    alone = [run("lint", f) for f in files]
    assert together.returncode == max(r.returncode for r in alone)
    assert sorted(map(json.dumps, json.loads(together.stdout)["findings"])) == sorted(
        json.dumps(h) for r in alone for h in json.loads(r.stdout)["findings"])
    extracted = json.loads(run("extract", *files).stdout)
    each = [json.loads(run("extract", f).stdout) for f in files]
    assert extracted["sites"] == [s for e in each for s in e["sites"]] and extracted["sites"]
    assert {json.dumps(d, sort_keys=True) for d in extracted["declarations"]} == {
        json.dumps(d, sort_keys=True) for e in each for d in e["declarations"]}


@pytest.mark.timeout(30)
def test_hostile_text_costs_linear_time(tmp_path: Path) -> None:
    """Unterminated comments and huge lines, in the file and in the header it
    includes: answered in one pass (a backtracking regex took minutes)."""
    flags = compile_flags([])
    junk = b"/*" * (1 << 19)
    spaces = b"#define" + b" " * (1 << 20) + b"x\n"
    f, data = str(tmp_path / "t.bpf.c"), junk
    assert leading_header(f, data, flags) is None
    assert leading_header(f, spaces + b'#include "big.h"\n', flags) is None
    (tmp_path / "big.h").write_bytes(b"#ifndef B\n#define B\n" + spaces + junk)
    assert leading_header(f, b'#include "big.h"\n', flags) is None

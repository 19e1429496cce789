"""`lint`/`extract` on hostile input: non-regular files as sources, as
compile_commands.json and behind `#include`; non-UTF-8 bytes; malformed
compile databases; planted or corrupt cache entries; sources the compiler
rejects.  Every CLI run has a timeout: a hang fails the test instead of
stalling the suite."""

from __future__ import annotations

import json
import os
import pickle
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpf_sdt.clang_plugin import parse, plan, worker
from bpf_sdt.clang_plugin.parse import CompileDatabase
from bpf_sdt.clang_plugin.results import FORMAT, FileResult, decode, encode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import HEADER_DIR, clang

from bpf_sdt.errors import InputError
from bpf_sdt.model import Declaration, Finding, SourceSite

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
# Far more than any of these runs needs; reaching it means a hang.
HANG_S = 60
GOOD = """#include <bpf_sdt.h>
BPF_SDT_DECLARE2(ok, int, const char *);
int f(int *c)
{
	BPF_SDT_PROBE2(ok, c[0], "text");
	return 0;
}
"""
BAD_PROBE = GOOD.replace("c[0], ", "c, ")   # a pointer where int is declared: SDT003


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=HANG_S,
                          check=False)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# --- non-regular files ---------------------------------------------------------------


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """One of each kind of file that is not a regular file."""
    fifo = tmp_path / "fifo.c"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.c"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    zero = tmp_path / "zero.c"
    zero.symlink_to("/dev/zero")
    directory = tmp_path / "dir.c"
    directory.mkdir()
    try:
        yield {"fifo": fifo, "socket": sock_path, "dev-zero": zero, "dev-null": Path("/dev/null"),
               "directory": directory}
    finally:
        sock.close()


KIND_WORDS = {"fifo": "FIFO", "socket": "socket", "dev-zero": "character device", "dev-null": "character device",
              "directory": "directory"}


@pytest.mark.parametrize("kind", sorted(KIND_WORDS))
@pytest.mark.parametrize("command", ["lint", "extract"])
def test_non_regular_source_is_one_line_exit_2(kind: str, command: str, specials: dict[str, Path],
                                              tmp_path: Path) -> None:
    good = tmp_path / "good.c"
    good.write_text(GOOD)
    res = cli(command, str(good), str(specials[kind]))
    assert_one_line_error(res, str(specials[kind]), KIND_WORDS[kind])


@pytest.mark.parametrize("kind", sorted(KIND_WORDS))
def test_non_regular_compile_commands_is_one_line_exit_2(kind: str, specials: dict[str, Path],
                                                        tmp_path: Path) -> None:
    src = tmp_path / "good.c"
    src.write_text(GOOD)
    build = tmp_path / "build"
    build.mkdir()
    target = specials[kind]
    if kind == "directory":
        (build / "compile_commands.json").mkdir()
    else:
        (build / "compile_commands.json").symlink_to(target)
    res = cli("lint", "--no-cache", "-p", str(build), str(src))
    assert_one_line_error(res, "compile_commands.json", KIND_WORDS[kind])


def test_build_dir_that_is_not_a_directory(specials: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "good.c"
    src.write_text(GOOD)
    for build in (specials["fifo"], specials["dev-zero"], tmp_path / "missing"):
        assert_one_line_error(cli("lint", "--no-cache", "-p", str(build), str(src)), "compile_commands.json")


# --- includes of FIFOs and devices ---------------------------------------------------


def include_cases(tmp: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (source, extra clang flags, what the message must name)."""
    fifo = tmp / "fifo.h"
    os.mkfifo(fifo)
    inc = tmp / "inc"
    inc.mkdir()
    os.mkfifo(inc / "angled.h")
    (inc / "zero.h").symlink_to("/dev/zero")
    (inc / "nested.h").write_text('#pragma once\n#include "deeper.h"\n')
    (inc / "deeper.h").write_text("/* fine so far */\n  #  include <angled.h>\n")
    os.mkfifo(tmp / "rsp")
    return {
        "absolute /dev/zero": ('#include "/dev/zero"\nint x;\n', [], "/dev/zero"),
        "angled /dev/zero": ("#include </dev/zero>\nint x;\n", [], "/dev/zero"),
        "quoted FIFO beside the source": ('#include "fifo.h"\nint x;\n', [], "FIFO"),
        "angled FIFO on -I": ("#include <angled.h>\nint x;\n", [f"-I{inc}"], "FIFO"),
        "symlink to /dev/zero on -I": ('#include "zero.h"\nint x;\n', [f"-I{inc}"], "/dev/zero"),
        "FIFO two headers deep": ('#include "nested.h"\nint x;\n', [f"-I{inc}"], "FIFO"),
        "include_next": ("#include_next <angled.h>\nint x;\n", [f"-I{inc}"], "FIFO"),
        "-include flag": ("int x;\n", ["-include", "/dev/zero"], "/dev/zero"),
        "response file": ("int x;\n", [f"@{tmp / 'rsp'}"], "FIFO"),
        "-imacros joined": ("int x;\n", ["-imacros/dev/zero"], "/dev/zero"),
    }


def test_include_of_a_fifo_or_device_is_refused_at_once(tmp_path: Path) -> None:
    for name, (source, flags, needle) in include_cases(tmp_path).items():
        src = tmp_path / f"t{abs(hash(name))}.c"
        src.write_text(source)
        start = time.monotonic()
        res = cli("lint", "--no-cache", str(src), "--", *flags)
        assert_one_line_error(res, needle)
        assert time.monotonic() - start < 10, f"{name}: the scan, not a deadline, should refuse it"


def _max_rss_of_descendants(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run `cmd` from a fresh interpreter that reports the peak RSS (KiB) of
    everything it waited for (the CLI and its parse workers)."""
    probe = ("import json, resource, subprocess, sys\n"
             f"r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout={HANG_S})\n"
             "print(json.dumps([r.returncode, r.stdout, r.stderr, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env,
                         timeout=HANG_S + 10, check=True)
    code, stdout, stderr, rss = json.loads(out.stdout)
    return subprocess.CompletedProcess(cmd, code, stdout, stderr), rss


def test_macro_spelled_include_of_dev_zero_is_bounded_by_the_memory_limit(tmp_path: Path) -> None:
    """The scan cannot see through a macro; the worker's RLIMIT_AS must stop
    libclang (which otherwise read 8 GB in 20 s here) with one line.  With
    one worker (-j 1), the file after it still gets a fresh, sound one."""
    src = tmp_path / "z.c"
    src.write_text("#define DEV </dev/zero>\n#include DEV\nint x;\n")
    other = tmp_path / "other.c"
    other.write_text(BAD_PROBE)
    limit_mib = 512
    env = {**os.environ, "BPF_SDT_PARSE_MEMORY": str(limit_mib)}
    res, rss_kib = _max_rss_of_descendants([*CLI, "lint", "--no-cache", "-j", "1", str(src), str(other)], env)
    assert_one_line_error(res, "512 MiB", "BPF_SDT_PARSE_MEMORY")
    assert rss_kib < limit_mib * 1024, f"a process peaked at {rss_kib} KiB"
    assert "[SDT003]" in res.stdout, "the other file is still linted"


def test_include_of_dev_null_is_harmless(tmp_path: Path) -> None:
    src = tmp_path / "n.c"
    src.write_text('#include "/dev/null"\n' + GOOD)
    res = cli("lint", "--no-cache", str(src), "--", "-include", "/dev/null")
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_macro_spelled_include_of_a_fifo_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.h"
    os.mkfifo(fifo)
    src = tmp_path / "f.c"
    src.write_text(f'#define HDR "{fifo}"\n#include HDR\nint x;\n')
    other = tmp_path / "other.c"
    other.write_text(BAD_PROBE)
    env = {**os.environ, "BPF_SDT_PARSE_TIMEOUT": "2"}
    start = time.monotonic()
    res = cli("lint", "--no-cache", "-j", "2", str(src), str(other), env=env)
    assert time.monotonic() - start < 20
    assert_one_line_error(res, "longer than 2 s", "BPF_SDT_PARSE_TIMEOUT")
    assert "[SDT003]" in res.stdout, "the other file is still linted"


def test_parse_limits_must_be_positive_integers(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text(GOOD)
    for name in ("BPF_SDT_PARSE_MEMORY", "BPF_SDT_PARSE_TIMEOUT"):
        for bad in ("0", "-5", "lots"):
            res = cli("lint", "--no-cache", str(src), env={**os.environ, name: bad})
            assert_one_line_error(res, name)


# --- non-UTF-8 bytes ---------------------------------------------------------------


def non_utf8_variants(seed: int, count: int) -> list[bytes]:
    """GOOD with invalid UTF-8 spliced into comments, string literals inside
    the probe call, identifiers and between tokens."""
    rng = random.Random(seed)
    src = GOOD.encode()
    spots = [src.index(b'"text"') + 2, src.index(b"int f") - 1, src.index(b"ok, c[0]") + 1,
             src.index(b"return"), len(src) - 2]
    out = [src.replace(b"{\n", b"{\n\t/* caf\xe9 \xff\xfe\xc3( */\n", 1),
           src.replace(b'"text"', b'"caf\xe9\xff\x80"'),
           src.replace(b'"text"', b'"\xed\xa0\x80"')]   # an encoded surrogate
    for _ in range(count):
        junk = bytes(rng.choice([0x80, 0xbf, 0xc0, 0xc3, 0xe9, 0xed, 0xf5, 0xfe, 0xff])
                     for _ in range(rng.randint(1, 4)))
        at = rng.choice(spots)
        out.append(src[:at] + junk + src[at:])
    return out


def test_non_utf8_bytes_never_crash_lint_or_extract(tmp_path: Path) -> None:
    files = []
    for i, data in enumerate(non_utf8_variants(seed=10, count=25)):
        f = tmp_path / f"v{i}.c"
        f.write_bytes(data)
        files.append(str(f))
    weird_name = tmp_path / os.fsdecode(b"caf\xe9.c")
    weird_name.write_bytes(non_utf8_variants(seed=0, count=0)[1])
    files.append(str(weird_name))
    env = {**os.environ, "BPF_SDT_CACHE_DIR": str(tmp_path / "cache")}
    for args in (["lint", "--format", "json"], ["lint"], ["lint", "--format", "sarif"], ["extract"],
                 ["extract", "--json"]):
        for _ in range(2 if args[0] == "lint" else 1):   # second lint run: from the cache
            res = subprocess.run([*CLI, *args, *files], capture_output=True, env=env, timeout=HANG_S, check=False)
            assert b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
            assert res.returncode in (0, 1), (args, res.stderr.decode(errors="replace"))
            if "--json" in args or "json" in args or "sarif" in args:
                json.loads(res.stdout)
            else:
                res.stdout.decode()   # text output is valid UTF-8
    doc = json.loads(cli("extract", "--json", files[1]).stdout)
    assert doc["sites"][0]["args"][1].startswith('"caf'), "the argument text survives, bad bytes replaced"


# --- compile_commands.json ------------------------------------------------------------


MALFORMED_DB: dict[str, Any] = {
    "not JSON": b"{oops",
    "empty": b"",
    "truncated": b'[{"directory": "/", "file": "t.c", "command": "clang',
    "invalid UTF-8": b'[{"directory": "/", "file": "t\xff.c", "command": "clang -c t.c"}]',
    "nested 100k deep": b"[" * 100_000 + b"]" * 100_000,
    "an object": {"file": "t.c"},
    "null": None,
    "a string": "compile_commands",
    "non-object entry": [1],
    "null entry": [None],
    "list entry": [["clang", "t.c"]],
    "null file": [{"directory": "/", "file": None, "command": "clang -c t.c"}],
    "numeric file": [{"directory": "/", "file": 7, "command": "clang -c t.c"}],
    "empty file": [{"directory": "/", "file": "", "command": "clang -c t.c"}],
    "NUL in file": [{"directory": "/", "file": "t\u0000.c", "command": "clang -c t.c"}],
    "lone surrogate in file": [{"directory": "/", "file": "t\ud800.c", "command": "clang -c t.c"}],
    "list directory": [{"directory": ["/"], "file": "t.c", "command": "clang -c t.c"}],
    "no command": [{"directory": "/", "file": "t.c"}],
    "numeric command": [{"directory": "/", "file": "t.c", "command": 3}],
    "arguments a string": [{"directory": "/", "file": "t.c", "arguments": "clang -c t.c"}],
    "arguments with a number": [{"directory": "/", "file": "t.c", "arguments": ["clang", 1]}],
    "arguments with null": [{"directory": "/", "file": "t.c", "arguments": ["clang", None]}],
}
# Shapes that only fail for the file being looked up.
MALFORMED_FOR_FILE = {
    "unbalanced quote": "clang -DX='unbalanced -c {src}",
    "dangling backslash": "clang -c {src} \\",
    "empty command": "",
}


@pytest.mark.parametrize("case", sorted(MALFORMED_DB) + sorted(MALFORMED_FOR_FILE))
def test_malformed_compile_commands_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text(GOOD)
    build = tmp_path / "build"
    build.mkdir()
    if case in MALFORMED_FOR_FILE:
        doc: Any = [{"directory": str(tmp_path), "file": str(src),
                     "command": MALFORMED_FOR_FILE[case].format(src=src)}]
    else:
        doc = MALFORMED_DB[case]
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    (build / "compile_commands.json").write_bytes(data)
    for command in ("lint", "extract"):
        res = cli(command, "-p", str(build), str(src))
        assert_one_line_error(res, "compile_commands.json")


def _valid_db(tmp: Path) -> bytes:
    return json.dumps([{"directory": str(tmp), "file": "t.c", "command": f"clang -I{tmp}/inc -DX=1 -c t.c -o t.o"},
                       {"directory": str(tmp), "file": "u.c", "arguments": ["clang", "-c", "u.c"]}]).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_compile_commands_give_flags_or_input_error(data: st.DataObject, tmp_path: Path) -> None:
    """Byte flips, truncations and splices of a valid database: flags, no
    entry, or InputError; never any other exception."""
    valid = _valid_db(tmp_path)
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if kind == "truncate":
        mutated = valid[:data.draw(st.integers(0, len(valid)))]
    elif kind == "flip":
        at = data.draw(st.integers(0, len(valid) - 1))
        mutated = valid[:at] + bytes([data.draw(st.integers(0, 255))]) + valid[at + 1:]
    else:
        at = data.draw(st.integers(0, len(valid)))
        mutated = valid[:at] + data.draw(st.sampled_from([b"null", b"[", b"{}", b'"', b"1e999", b"\\", b"\xff",
                                                          b'"\\ud800"', b",", b"[[[["])) + valid[at:]
    (tmp_path / "compile_commands.json").write_bytes(mutated)
    try:
        flags = CompileDatabase(str(tmp_path)).flags(str(tmp_path / "t.c"))
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert flags is None or all(isinstance(f, str) for f in flags)


def test_compile_commands_is_read_once_for_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 files with -p: one read, one index (it was one read per file:
    23 s for a warm lint of 1,000 files, against 0.2 s without -p)."""
    n = 1000
    files = []
    for i in range(n):
        files.append(str(tmp_path / f"s{i}.c"))
    entries = [{"directory": str(tmp_path), "file": f"s{i}.c",
                "command": f"clang -target bpf -O2 -I{tmp_path}/include -DN={i} -c s{i}.c -o s{i}.o"}
               for i in range(n)]
    (tmp_path / "compile_commands.json").write_text(json.dumps(entries))
    reads: list[str] = []
    real = parse.read_regular

    def counting(path: str, limit: int, what: str) -> bytes:
        reads.append(path)
        data: bytes = real(path, limit, what)
        return data

    monkeypatch.setattr(parse, "read_regular", counting)
    start = time.monotonic()
    flags = plan.flags_for(files, str(tmp_path), [])
    elapsed = time.monotonic() - start
    assert reads == [str(tmp_path / "compile_commands.json")]
    assert elapsed < 2.0, f"{elapsed:.2f} s for {n} lookups"
    assert f"-DN={n - 1}" in flags[files[-1]] and f"-I{tmp_path}/include" in flags[files[0]]


def test_compile_commands_lookup_through_symlinks_and_relative_paths(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "t.c").write_text(GOOD)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "compile_commands.json").write_text(json.dumps(
        [{"directory": "real", "file": "t.c", "arguments": ["clang", "-Iinc", "-isystem", "sys", "-c", "t.c"]}]))
    db = CompileDatabase(str(tmp_path))
    expected = [f"-I{real}/inc", "-isystem", f"{real}/sys"]
    assert db.flags(str(real / "t.c")) == expected, "relative directory: from the database's own directory"
    assert db.flags(str(tmp_path / "link" / "t.c")) == expected, "found through a symlink"
    assert db.flags(str(tmp_path / "nope.c")) is None


# --- the cache ----------------------------------------------------------------------


def _lint_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "BPF_SDT_CACHE_DIR": str(tmp / "cache")}


def _entries(tmp: Path) -> list[Path]:
    return [p for p in (tmp / "cache").rglob("*") if p.is_file() or p.is_symlink() or p.is_fifo()]


class _Planted:
    """Unpickling this runs code: what a planted pickle cache entry did."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_planted_and_corrupt_cache_entries_are_misses(tmp_path: Path) -> None:
    src = tmp_path / "t.c"
    src.write_text(BAD_PROBE)
    env = _lint_env(tmp_path)
    first = cli("lint", str(src), env=env)
    assert first.returncode == 1 and "[SDT003]" in first.stdout
    (entry,) = _entries(tmp_path)
    json.loads(entry.read_bytes())   # data, not code
    good_entry = entry.read_bytes()
    marker = tmp_path / "pwned"
    rng = random.Random(5)
    plants: dict[str, Any] = {
        "pickle payload": pickle.dumps(_Planted(marker)),
        "random bytes": bytes(rng.randrange(256) for _ in range(300)),
        "truncated": good_entry[: len(good_entry) // 2],
        "empty": b"",
        "JSON null": b"null",
        "wrong format tag": good_entry.replace(FORMAT.encode(), b"bpf-sdt-lint-0"),
        "wrong key": good_entry.replace(entry.name.encode(), b"0" * 64),
        "findings not a list": good_entry.replace(b'"findings":[', b'"findings":{"x":[') + b"}",
        "FIFO": "fifo",
        "symlink to /dev/zero": "zero",
        "directory": "dir",
    }
    for name, plant in plants.items():
        entry.unlink() if not entry.is_dir() else entry.rmdir()
        if plant == "fifo":
            os.mkfifo(entry)
        elif plant == "zero":
            entry.symlink_to("/dev/zero")
        elif plant == "dir":
            entry.mkdir()
        else:
            entry.write_bytes(plant)
        res = cli("lint", str(src), env=env)
        assert res.returncode == first.returncode and res.stdout == first.stdout, (name, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr == "", (name, res.stderr)
        assert not marker.exists(), f"{name}: the cache ran code"
        if plant in ("fifo", "zero", "dir"):
            continue
        assert json.loads(entry.read_bytes())["format"] == FORMAT, f"{name}: rewritten as JSON"


def _sample_result() -> FileResult:
    from bpf_sdt.clang_plugin.extract import FileFacts

    decl = Declaration("p", ("int", "const char *"), (4, 8), "t.c", 2)
    facts = FileFacts("t.c", declarations=[decl, Declaration("q", (), (), None, None)], local_declarations=[decl],
                      sites=[SourceSite("p", "t.c", 5, 2, ("c[0]", '"caf\udce9"'), "f")],
                      includes=[("/usr/include/x.h", 1_700_000_000_000_000_000, 120)])
    return FileResult("t.c", facts, [Finding("t.c", "5:2", "error", "does not compile: x", "SDT000")])


def test_cache_codec_round_trips() -> None:
    r = _sample_result()
    back = decode(encode(r, "k"), "k", "t.c")
    assert back == r
    assert back is not None and back.facts is not None
    assert back.facts.local_declarations[0] is back.facts.declarations[0]
    assert decode(encode(r, "k"), "other-key") is None and decode(encode(r, "k"), "k", "u.c") is None


def _mutations(value: Any) -> st.SearchStrategy[Any]:
    """A JSON document with one node replaced by a value of another shape."""
    others = st.sampled_from([None, True, 0, -1, 2**70, 1.5, "", "x", [], {}, [None], {"a": 1}, [[1, 2]], ["s", "t"]])
    paths: list[tuple[Any, ...]] = []

    def walk(v: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, (*path, k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, (*path, i))

    walk(value, ())

    def replace(path: tuple[Any, ...], new: Any) -> Any:
        doc = json.loads(json.dumps(value))
        if not path:
            return new
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = new
        return doc

    return st.builds(replace, st.sampled_from(paths[1:]), others)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_wrong_shape_is_a_miss_or_a_well_typed_result(data: st.DataObject) -> None:
    good = json.loads(encode(_sample_result(), "k"))
    mutated = data.draw(_mutations(good))
    r = decode(json.dumps(mutated).encode(), "k")
    if r is None:
        return
    # Whatever decode accepts is fully typed: nothing downstream can trip on it.
    assert isinstance(r.path, str) and (r.unusable is None or isinstance(r.unusable, str))
    for f in r.findings:
        assert all(isinstance(x, str) for x in (f.path, f.where, f.message, f.rule)) and f.severity in (
            "error", "warning")
    if r.facts is not None:
        for d in (*r.facts.declarations, *r.facts.local_declarations):
            assert isinstance(d.name, str) and all(isinstance(t, str) for t in d.types)
            assert all(type(s) is int for s in d.sizes) and (d.line is None or type(d.line) is int)
        for s in r.facts.sites:
            assert type(s.line) is int and type(s.column) is int and all(isinstance(a, str) for a in s.args)
        for p, m, n in r.facts.includes:
            assert isinstance(p, str) and type(m) is int and type(n) is int


def test_warm_lint_never_loads_libclang_or_forks(tmp_path: Path) -> None:
    """A fully cached run decodes JSON and stats includes: no libclang, no
    workers, not even the modules that would start them."""
    files = []
    for i in range(20):
        f = tmp_path / f"s{i}.c"
        f.write_text(GOOD.replace("ok", f"ok{i}"))
        files.append(str(f))
    env = _lint_env(tmp_path)
    assert cli("lint", *files, env=env).returncode == 0
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "bpf_sdt.cli", "lint", *files],
                         capture_output=True, text=True, env=env, timeout=HANG_S, check=False)
    assert res.returncode == 0
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time")}
    assert not imported & {"clang", "clang.cindex", "bpf_sdt.clang_plugin.sandbox", "bpf_sdt.clang_plugin.includes",
                           "concurrent.futures", "multiprocessing"}


# --- files the compiler rejects -------------------------------------------------------


def _deletions(seed: int, count: int) -> list[str]:
    """GOOD with one random character or token deleted: some still compile,
    most do not."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        at = rng.randrange(GOOD.index("BPF_SDT_DECLARE"), len(GOOD) - 1)
        width = rng.choice([1, 1, 2, 4])
        out.append(GOOD[:at] + GOOD[at + width:])
    return out


def test_lint_fails_whenever_the_compiler_rejects_the_file(tmp_path: Path) -> None:
    """Generated property: clang -fsyntax-only fails => lint exits non-zero
    for that file (each file alone, so a finding elsewhere cannot mask it)."""
    cc = clang(19)
    variants = {f"v{i}.c": src for i, src in enumerate(_deletions(seed=3, count=30))}
    variants["twice-different.c"] = GOOD.replace("BPF_SDT_DECLARE2(ok, int, const char *);",
                                                 "BPF_SDT_DECLARE2(ok, int, const char *);\n"
                                                 "BPF_SDT_DECLARE2(ok, long, const char *);")
    variants["twice-same.c"] = GOOD.replace("BPF_SDT_DECLARE2(ok, int, const char *);",
                                            "BPF_SDT_DECLARE2(ok, int, const char *);\n" * 2)
    (tmp_path / "decl.h").write_text("BPF_SDT_DECLARE1(h, int);\n")   # no include guard
    variants["header-twice.c"] = ('#include <bpf_sdt.h>\n#include "decl.h"\n#include "decl.h"\n'
                                  "int f(int x) { BPF_SDT_PROBE1(h, x); return 0; }\n")
    rejected = []
    for name, src in variants.items():
        f = tmp_path / name
        f.write_text(src)
        cc_res = subprocess.run([cc, "-target", "bpf", "-fsyntax-only", f"-I{HEADER_DIR}", str(f)],
                                capture_output=True, text=True, timeout=HANG_S, check=False)
        if cc_res.returncode != 0:
            rejected.append(name)
    assert {"twice-different.c", "twice-same.c", "header-twice.c"} <= set(rejected)
    assert len(rejected) >= 10, "the generator should mostly break the file"
    for name in rejected:
        res = cli("lint", "--no-cache", str(tmp_path / name))
        assert res.returncode in (1, 2), f"{name} does not compile, lint said {res.returncode}:\n" + (
            tmp_path / name).read_text()
        assert "Traceback" not in res.stderr
    twice = cli("lint", "--no-cache", str(tmp_path / "twice-different.c"))
    assert "[SDT005]" in twice.stdout and "declared as (long, const char *), but as (int, const char *)" in twice.stdout
    assert "[SDT005]" in cli("lint", "--no-cache", str(tmp_path / "twice-same.c")).stdout
    # the compiler's error is at the declaration: SDT013 names it and the reason
    header_twice = cli("lint", "--no-cache", str(tmp_path / "header-twice.c")).stdout
    assert "[SDT013]" in header_twice and "declaration of probe 'h'" in header_twice and "redefinition" in header_twice


def test_sources_are_parsed_as_read(tmp_path: Path) -> None:
    """The bytes hashed for the cache are the bytes parsed (unsaved_files), so
    a FIFO swapped in after the read cannot reach libclang."""
    src = tmp_path / "t.c"
    src.write_text(BAD_PROBE)
    data = src.read_bytes()
    src.unlink()
    os.mkfifo(src)
    r = worker.analyze_file(str(src), parse.default_flags([]), data)
    assert r.unusable is None and [f.rule for f in r.findings] == ["SDT003"]


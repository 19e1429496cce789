"""Untrusted input: every malformed object gets exit 2 (or 1) and one line,
never a traceback; sizes from the file are bounded before use; and a fuzz run
over mutated real objects never crashes."""

from __future__ import annotations

import random
import struct
import sys
import time
from pathlib import Path

import pytest
from fuzz_target import mutate, one_input
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import clang, compile_bpf, run

from bpf_sdt.elf import load_object

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
SRC = """#include <bpf_sdt.h>
BPF_SDT_DECLARE2(a, int, long); BPF_SDT_DECLARE7(b, int, int, int, int, int, char, long);
int f(int *c) { BPF_SDT_PROBE2(a, c[0], 3); BPF_SDT_PROBE7(b, c[0], c[1], c[2], c[3], c[4], (char)c[5], 9);
  BPF_SDT_PROBE2(a, c[1], c[2]); return 0; }
"""


@pytest.fixture(scope="module")
def seed_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("seed")
    (d / "s.c").write_text(SRC)
    compile_bpf(d / "s.c", d / "s.o", clang(19))
    return d / "s.o"


def _one_line_exit(args: list[str], code: int) -> str:
    res = run([*CLI, *args])
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["check", "list"])
def test_unusable_inputs(command: str, seed_obj: Path, tmp_path: Path) -> None:
    data = seed_obj.read_bytes()
    cases = {
        "empty.o": b"",
        "text.o": b"hello\n",
        "truncated.o": data[:200],
        "header_only.o": data[:64],
        "nonutf8.o": b"\x7fELF" + bytes(range(256)),
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        line = _one_line_exit([command, str(tmp_path / name)], 2)
        assert name in line
    assert "not a BPF object" in _one_line_exit([command, sys.executable], 2)
    assert "directory" in _one_line_exit([command, str(tmp_path)], 2)
    assert "No such file" in _one_line_exit([command, str(tmp_path / "missing.o")], 2)


def test_usage_errors_exit_2() -> None:
    for args in (["check"], ["frobnicate"], ["list", "--bogus", "x.o"], []):
        res = run([*CLI, *args])
        assert res.returncode == 2 and "Traceback" not in res.stderr


def test_huge_claimed_section_costs_nothing(seed_obj: Path, tmp_path: Path) -> None:
    data = bytearray(seed_obj.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    notes = load_object(seed_obj).section(".bpf_sdt_notes")
    assert notes is not None
    struct.pack_into("<Q", data, shoff + 64 * notes.index + 32, 0xFFFF_FFFF)   # sh_size = 4 GB
    bad = tmp_path / "huge.o"
    bad.write_bytes(bytes(data))
    t0 = time.monotonic()
    line = _one_line_exit(["check", str(bad)], 2)
    assert "runs past the end of the file" in line and time.monotonic() - t0 < 5


def test_good_and_bad_inputs_together(seed_obj: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_text("x")
    res = run([*CLI, "check", str(seed_obj), str(junk)])
    assert res.returncode == 2 and "junk.o" in res.stderr


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_fuzz_mutated_objects_never_crash(seed: int) -> None:
    base = _seed_bytes()
    one_input(mutate(base, random.Random(seed)))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_never_crash(data: bytes) -> None:
    one_input(b"\x7fELF\x02\x01\x01" + data)


_CACHE: dict[str, bytes] = {}


def _seed_bytes() -> bytes:
    if "seed" not in _CACHE:
        import tempfile

        d = Path(tempfile.mkdtemp())
        (d / "s.c").write_text(SRC)
        compile_bpf(d / "s.c", d / "s.o", clang(19))
        _CACHE["seed"] = (d / "s.o").read_bytes()
    return _CACHE["seed"]


def _patched(seed: Path, tmp: Path, name: str, field_off: int, fmt: str, value: int) -> Path:
    data = bytearray(seed.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    notes = load_object(seed).section(".bpf_sdt_notes")
    assert notes is not None
    struct.pack_into(fmt, data, shoff + 64 * notes.index + field_off, value)
    out = tmp / name
    out.write_bytes(bytes(data))
    return out


def test_regression_nobits_notes_section(seed_obj: Path, tmp_path: Path) -> None:
    """Found by bench/fuzz.py: a notes section of type NOBITS has a size, no bytes."""
    obj = _patched(seed_obj, tmp_path, "nobits.o", 4, "<I", 8)   # sh_type = SHT_NOBITS
    res = run([*CLI, "check", str(obj)])
    assert res.returncode == 1 and "[SDT102]" in res.stdout and "Traceback" not in res.stderr


def test_regression_entry_symbol_past_section_end(seed_obj: Path, tmp_path: Path) -> None:
    """Found by bench/fuzz.py: a shrunken section leaves entry symbols past its end."""
    obj = _patched(seed_obj, tmp_path, "short.o", 32, "<Q", 8)   # sh_size = 8
    res = run([*CLI, "check", str(obj)])
    assert res.returncode == 1 and "runs past the section end" in res.stdout
    assert "Traceback" not in res.stderr


def _bad_section_name(section: int, beyond: int) -> tuple[bytes, int]:
    data = bytearray(_seed_bytes())
    shoff, shnum, shstrndx = struct.unpack_from("<Q", data, 0x28)[0], *struct.unpack_from("<HH", data, 0x3C)
    names_size = struct.unpack_from("<Q", data, shoff + 64 * shstrndx + 32)[0]
    index = section % shnum or 1
    struct.pack_into("<I", data, shoff + 64 * index, min(names_size + beyond, 2**32 - 1))
    return bytes(data), index


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(section=st.integers(1, 64), beyond=st.integers(0, 2**32 - 1) | st.integers(0, 16))
def test_section_name_offset_out_of_range_is_unusable(section: int, beyond: int) -> None:
    """Any sh_name at or past the end of the section name table: InputError."""
    from bpf_sdt.elf import BpfObject
    from bpf_sdt.errors import InputError

    data, index = _bad_section_name(section, beyond)
    with pytest.raises(InputError, match=f"section {index}: name offset"):
        BpfObject("bad.o", data)


def test_section_name_offset_out_of_range_through_the_cli(tmp_path: Path) -> None:
    data, index = _bad_section_name(3, 0)
    (tmp_path / "bad.o").write_bytes(data)
    for command in ("check", "list"):
        line = _one_line_exit([command, str(tmp_path / "bad.o")], 2)
        assert "name offset" in line and f"section {index}" in line


def test_memory_per_site_is_bounded() -> None:
    """check and list (sites built one at a time) on 20,000 sites: peak Python
    memory beyond the file itself stays under a per-site bound (measured about
    74 bytes with the entries as columns, 265 with a record per entry; before
    the compact records, 1M sites took 1.3 GB of RSS)."""
    import tracemalloc

    from bpf_sdt.postlink.check import analyze
    from fuzz_target import many_sites_object

    from bpf_sdt.elf import BpfObject

    n = 20_000
    data = many_sites_object(n)
    tracemalloc.start()
    try:
        report = analyze(BpfObject("many.o", data))
        listed = sum(1 for s in report.iter_sites() if s.json_text())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert listed == n == report.site_count
    per_site = peak / n
    assert per_site < 100, f"{per_site:.0f} bytes per site"


def test_entry_cap_through_the_cli(tmp_path: Path) -> None:
    """More entry symbols than the documented cap: exit 2, one line, at once."""
    import subprocess

    from fuzz_target import many_sites_object

    obj = tmp_path / "many.o"
    obj.write_bytes(many_sites_object(20))
    code = ("import sys, bpf_sdt.notes as n; n.MAX_ENTRIES = 10; from bpf_sdt.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, "list", str(obj)], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "20 notes entries, more than the 10" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_regression_relocations_for_the_addrsig_table(seed_obj: Path) -> None:
    """Found by bench/fuzz.py: a REL section applying to .llvm_addrsig (which the
    writer drops) crashed link's stripping of the notes with a KeyError."""
    o = load_object(seed_obj)
    rel, addrsig = o.section(".rel.debug_line"), o.section(".llvm_addrsig")
    assert rel is not None and addrsig is not None
    data = bytearray(seed_obj.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<I", data, shoff + 64 * rel.index + 44, addrsig.index)     # sh_info
    assert one_input(bytes(data)) == "ok"


def test_regression_symbol_table_named_like_the_notes_relocations(seed_obj: Path) -> None:
    """Found by bench/fuzz.py: link stripped sections by name, so a symbol
    table named .rel.bpf_sdt_notes was removed and the writer crashed."""
    o = load_object(seed_obj)
    symtab, notes_rel = o.symtab_section, o.section(".rel.bpf_sdt_notes")
    assert symtab is not None and notes_rel is not None
    data = bytearray(seed_obj.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    name = struct.unpack_from("<I", data, shoff + 64 * notes_rel.index)[0]
    struct.pack_into("<I", data, shoff + 64 * symtab.index, name)                 # sh_name
    assert one_input(bytes(data)) in ("ok", "rejected")

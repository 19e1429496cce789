"""The .BTF.ext reader/writer on real objects (clang-14 and clang-19, CO-RE
relocations, the samples, `bpftool gen object` output): byte-identical round
trips, insn_off positions equal to .rel.BTF.ext, line_info equal to what
llvm-objdump and the kernel show, edits that load, and hostile input."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.btf import Btf, BtfKind
from bpf_sdt.btfext import (
    CORE_RELO,
    FUNC_INFO,
    LINE_INFO,
    BtfExt,
    CoreRelo,
    CoreReloKind,
    FuncInfo,
    LineInfo,
)
from bpf_sdt.elf import TEXT_SECTION, BpfObject, load_object
from bpf_sdt.errors import InputError

REPO = Path(__file__).resolve().parent.parent
STT_SECTION = 3

MULTI = """
int twice(int x) { return 2 * x; }
static __attribute__((noinline)) int sum(int n)
{
	int s = 0;
	for (int i = 0; i < n; i++)
		s += twice(i);
	return s;
}
__attribute__((section("xdp"), used)) int prog(void *ctx)
{
	long v = (long)ctx;
	return sum(v & 7) + twice(v);
}
__attribute__((section("tc"), used)) int other(void *ctx) { return twice((long)ctx) - 1; }
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""

LIB = """
int lib_add(int a, int b) { return a + b; }
__attribute__((section("xdp"), used)) int lib_prog(void *ctx) { return lib_add((long)ctx, 3); }
"""

CORE = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static __attribute__((noinline)) int helper(struct task_struct *t)
{
	return BPF_CORE_READ(t, real_parent, tgid) + bpf_core_field_exists(t->pid);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		*v += helper(prev) + BPF_CORE_READ(next, mm, total_vm) + bpf_core_type_size(struct task_struct);
	return 0;
}

SEC("raw_tp/sys_enter")
int other(void *ctx)
{
	__u32 k = 1;
	__u64 *v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		(*v)++;
	return 0;
}
"""


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples built as a user builds them (also gives a vmlinux.h)."""
    tool("bpftool")
    out = tmp_path_factory.mktemp("samples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["make", "-C", str(REPO / "samples"), f"BPF_SDT_OUTDIR={out}", f"BPF_CLANG={clang(19)}"],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory, samples: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("btfext")
    out: dict[str, Path] = {}
    for name, src in (("multi", MULTI), ("lib", LIB), ("core", CORE)):
        (tmp / f"{name}.c").write_text(src)
        for v in (14, 19):
            obj = tmp / f"{name}{v}.o"
            extra = ("-I", str(samples), "-D__TARGET_ARCH_x86", "-Wno-unused-parameter") if name == "core" else ()
            compile_bpf(tmp / f"{name}.c", obj, clang(v), extra=extra)
            out[f"{name}{v}"] = obj
    linked = tmp / "linked.o"
    res = run([tool("bpftool"), "gen", "object", str(linked), str(out["multi19"]), str(out["lib19"])])
    assert res.returncode == 0, res.stderr
    out["gen_object"] = linked
    for obj in sorted(samples.glob("*.o")):
        out[f"sample:{obj.name}"] = obj
    return out


def _ext(path: Path) -> tuple[bytes, BtfExt, BpfObject]:
    obj = load_object(path)
    sec = obj.section(".BTF.ext")
    assert sec is not None and obj.btf is not None, path
    raw = obj.section_data(sec)
    return raw, BtfExt.parse(raw, obj.btf), obj


# --- round trips on real objects ------------------------------------------------

def test_round_trip_is_byte_identical_on_every_object(objects: dict[str, Path]) -> None:
    assert sum(k.startswith("sample:") for k in objects) >= 9
    for name, path in objects.items():
        raw, ext, _ = _ext(path)
        assert ext.encode() == raw, name
        assert ext.sections, name
        for sec_name, sec in ext.sections.items():
            assert sec.func_info and sec.line_info, (name, sec_name)
            for kind in (FUNC_INFO, LINE_INFO, CORE_RELO):
                assert all(r.insn_off % 8 == 0 for r in sec.records(kind)), (name, sec_name, kind)


def _symbol_target(obj: BpfObject, sym: int) -> str:
    """A relocation's target: a symbol's name, or its section's for a section symbol."""
    s = obj.symbols[sym]
    return s.name if s.name and s.type != STT_SECTION else obj.sections[s.shndx].name


def test_insn_off_fields_are_where_the_object_relocates_them(objects: dict[str, Path]) -> None:
    """Every insn_off in a compiled object has an R_BPF_64_NODYLD32 against
    its code section in .rel.BTF.ext: insn_off_fields() names the same places."""
    checked = 0
    for name, path in objects.items():
        raw, ext, obj = _ext(path)
        sec = obj.section(".BTF.ext")
        assert sec is not None
        _, rels = obj.relocations(sec)
        if not rels:        # linkers drop .rel.BTF.ext
            continue
        assert sorted((r.offset, _symbol_target(obj, r.symbol)) for r in rels) == ext.insn_off_fields(), name
        checked += 1
    assert checked >= 6


def test_core_relocations_decode(objects: dict[str, Path]) -> None:
    for v in (14, 19):
        _, ext, obj = _ext(objects[f"core{v}"])
        btf = obj.btf
        assert btf is not None
        relos = [(n, r) for n, s in ext.sections.items() for r in s.core_relo]
        kinds = {r.kind for _, r in relos}
        assert {CoreReloKind.FIELD_BYTE_OFFSET, CoreReloKind.FIELD_EXISTS, CoreReloKind.TYPE_SIZE} <= kinds, kinds
        for _, r in relos:
            assert re.fullmatch(r"\d+(:\d+)*", ext.access_str(r)), r
            assert btf.kind_of(r.type_id) in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.TYPEDEF, BtfKind.PTR)
        task = {btf.name_of(r.type_id) for _, r in relos}
        assert "task_struct" in task


# --- line_info against llvm-objdump and the kernel ----------------------------

def _objdump_lines(path: Path) -> list[tuple[str, int, tuple[str, ...] | None]]:
    """(section, insn index, source comments in force) for every instruction.
    llvm-objdump prints BTF line info when an object has no DWARF, and only
    where the line changes; line 0 records are not printed."""
    res = run([tool("llvm-objdump-19"), "-d", "-l", "-S", str(path)])
    assert res.returncode == 0, res.stderr
    sec, current = "", None
    pending: list[str] = []
    out: list[tuple[str, int, tuple[str, ...] | None]] = []
    for line in res.stdout.splitlines():
        if m := re.match(r"Disassembly of section (.*):$", line):
            sec, pending, current = m.group(1), [], None
        elif line.startswith("; "):
            pending.append(line[2:])
        elif m := re.match(r"\s*(\d+):\t", line):
            if pending:
                current, pending = tuple(pending), []
            out.append((sec, int(m.group(1)), current))
    return out


@pytest.mark.parametrize("name", ["multi14", "multi19", "core14", "core19", "gen_object",
                                  "sample:loop.linked.bpf.o", "sample:tc.linked.bpf.o"])
def test_line_info_matches_llvm_objdump(name: str, objects: dict[str, Path], tmp_path: Path) -> None:
    stripped = tmp_path / "stripped.o"
    res = run([tool("llvm-objcopy-19"), "--strip-debug", str(objects[name]), str(stripped)])
    assert res.returncode == 0, res.stderr
    _, ext, _ = _ext(objects[name])
    shown = _objdump_lines(stripped)
    assert len(shown) > 5
    for sec, idx, comments in shown:
        index = ext.line_index(sec)
        li = ext.line_of(sec, 8 * idx)
        assert li == index.at(8 * idx)
        while li is not None and li.line == 0:       # objdump skips line-0 records
            li = ext.line_of(sec, li.insn_off - 1) if li.insn_off else None
        want = (f"{ext.file_name(li)}:{li.line}", ext.line_text(li)) if li else None
        assert want == comments, (sec, idx)


def _load_and_dump(obj: Path, prog: str) -> list[tuple[str, int, int]]:
    """Load with bpftool (libbpf) and read back the kernel's line info."""
    pin = Path("/sys/fs/bpf") / f"btfext-{uuid.uuid4().hex[:8]}"
    res = run([tool("bpftool"), "prog", "loadall", str(obj), str(pin)])
    try:
        assert res.returncode == 0, res.stderr
        res = run([tool("bpftool"), "prog", "dump", "xlated", "pinned", str(pin / prog), "linum", "-j"])
        assert res.returncode == 0, res.stderr
    finally:
        for p in pin.glob("*"):
            p.unlink()
        if pin.exists():
            pin.rmdir()
    return [(i["src"], i["line_num"], i.get("line_col", 0)) for i in json.loads(res.stdout) if "src" in i]


def _expected_lines(ext: BtfExt, sections: list[str]) -> list[tuple[str, int, int]]:
    return [(ext.line_text(li).strip(), li.line, li.col) for s in sections for li in ext.sections[s].line_info]


@pytest.mark.kernel
def test_line_info_equals_the_kernels_and_edits_load(objects: dict[str, Path], tmp_path: Path) -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    obj = objects["core19"]
    raw, ext, _ = _ext(obj)
    prog_secs = ["tp_btf/sched_switch", TEXT_SECTION]     # libbpf appends the subprogram
    assert _load_and_dump(obj, "on_switch") == _expected_lines(ext, prog_secs)

    # an edit that changes the section's size: fewer records, other lines
    main = ext.sections["tp_btf/sched_switch"]
    main.line_info = [li._replace(line_col=li.line_col + (1000 << 10)) for li in main.line_info[::3]]
    edited = ext.encode()
    assert len(edited) < len(raw)
    (tmp_path / "ext.bin").write_bytes(edited)
    out = tmp_path / "edited.o"
    res = run([tool("llvm-objcopy-19"), f"--update-section=.BTF.ext={tmp_path / 'ext.bin'}", str(obj), str(out)])
    assert res.returncode == 0, res.stderr
    reread = _ext(out)[1]
    assert reread.encode() == edited
    assert _load_and_dump(out, "on_switch") == _expected_lines(reread, prog_secs)
    assert all(line > 1000 for _, line, _ in _expected_lines(reread, prog_secs[:1]))


# --- edits --------------------------------------------------------------------

def test_remap_moves_every_record_of_one_section(objects: dict[str, Path]) -> None:
    raw, ext, _ = _ext(objects["core19"])
    ext.remap(TEXT_SECTION, lambda off: off)
    assert ext.encode() == raw
    before = BtfExt.parse(raw, ext.strings)
    cut = 5 * 8                                      # two instructions inserted before insn 5
    ext.remap(TEXT_SECTION, lambda off: off + 16 if off >= cut else off)
    old, new = before.sections[TEXT_SECTION], ext.sections[TEXT_SECTION]
    for kind in (FUNC_INFO, LINE_INFO, CORE_RELO):
        pairs = list(zip(old.records(kind), new.records(kind), strict=True))
        assert pairs and all(n.insn_off == o.insn_off + (16 if o.insn_off >= cut else 0) for o, n in pairs)
        assert all(n._replace(insn_off=o.insn_off) == o for o, n in pairs)
    old_line = before.line_of(TEXT_SECTION, cut)
    assert old_line is not None
    assert ext.line_of(TEXT_SECTION, cut + 16) == old_line._replace(insn_off=cut + 16)
    assert ext.sections["tp_btf/sched_switch"] == before.sections["tp_btf/sched_switch"]
    assert BtfExt.parse(ext.encode(), ext.strings).sections == ext.sections
    with pytest.raises(ValueError, match="outside u32"):
        ext.remap(TEXT_SECTION, lambda off: off - 1_000_000)
    with pytest.raises(InputError, match="no records for section"):
        ext.remap(".nope", lambda off: off)


def test_add_records_restores_a_removed_function(objects: dict[str, Path]) -> None:
    raw, ext, obj = _ext(objects["multi19"])
    btf = obj.btf
    assert btf is not None
    text = ext.sections[TEXT_SECTION]
    assert len(text.func_info) == 2
    start = text.func_info[1].insn_off
    func = text.func_info.pop()
    lines = [li for li in text.line_info if li.insn_off >= start]
    text.line_info = [li for li in text.line_info if li.insn_off < start]
    assert ext.encode() != raw
    assert ext.func_of(TEXT_SECTION, start) == text.func_info[0]
    ext.add_records(TEXT_SECTION, func_info=[func], line_info=reversed(lines))
    assert ext.encode() == raw
    assert ext.func_of(TEXT_SECTION, start + 8) == func

    # a section new to .BTF.ext: its name must be a BTF string
    sum_id = btf.find("sum", BtfKind.FUNC)[0]
    file_off = text.line_info[0].file_name_off
    ext.add_records("license", func_info=[FuncInfo(0, sum_id)],
                    line_info=[LineInfo.make(0, file_off, 0, line=7, col=3)])
    again = BtfExt.parse(ext.encode(), btf)
    assert list(again.sections)[-1] == "license"
    assert again.sections["license"].func_info == [FuncInfo(0, sum_id)]
    li = again.sections["license"].line_info[0]
    assert (li.line, li.col, again.file_name(li)) == (7, 3, ext.file_name(text.line_info[0]))
    with pytest.raises(InputError, match="not in the BTF strings"):
        ext.add_records("no_such_section", func_info=[FuncInfo(0, sum_id)])
    with pytest.raises(TypeError):
        ext.add_records(TEXT_SECTION, func_info=[LineInfo(0, 0, 0, 0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="fit"):
        ext.add_records(TEXT_SECTION, func_info=[FuncInfo(-8, sum_id)])
    with pytest.raises(ValueError):
        LineInfo.make(0, 0, 0, line=1 << 22)


# --- forward compatibility: larger records, longer header, padding ------------

def _block(rec_size: int, sections: list[tuple[int, list[bytes]]]) -> bytes:
    out = struct.pack("<I", rec_size)
    for name_off, recs in sections:
        assert all(len(r) == rec_size for r in recs)
        out += struct.pack("<II", name_off, len(recs)) + b"".join(recs)
    return out


STRINGS = b"\0.text\0xdp\0file.c\0int x;\0" + b"0:1\0"
TEXT, XDP, FILE, LINE, ACCESS = 1, 7, 11, 18, 25


def _synthetic(hdr_tail: bytes = b"\xaa" * 8, gap: bytes = b"\x11\x22\x33\x44",
               trailer: bytes = b"\x99\x98\x97", core: bool = True) -> bytes:
    func = _block(12, [(TEXT, [struct.pack("<III", 0, 3, 0xF00D), struct.pack("<III", 64, 4, 0xBEEF)]),
                       (XDP, [struct.pack("<III", 0, 5, 0)])])
    line = _block(20, [(TEXT, [struct.pack("<IIIII", 0, FILE, LINE, (3 << 10) | 2, 7),
                               struct.pack("<IIIII", 64, FILE, LINE, 9 << 10, 8)])])
    relo = _block(24, [(XDP, [struct.pack("<IIII", 8, 3, ACCESS, 0) + b"\x01" * 8])])
    hdr_len = (32 if core else 24) + len(hdr_tail)
    spans = [(0, len(func)), (len(func) + len(gap), len(line))]
    if core:
        spans.append((spans[1][0] + len(line), len(relo)))
    words = [w for span in spans for w in span]
    header = struct.pack(f"<HBBI{len(words)}I", 0xEB9F, 1, 0, hdr_len, *words) + hdr_tail
    return header + func + gap + line + (relo if core else b"") + trailer


@pytest.mark.parametrize("core", [True, False])
def test_larger_records_longer_header_and_padding_survive(core: bool) -> None:
    tail = b"\xaa" * (8 if core else 4)       # without core fields the header must stay under 32
    data = _synthetic(hdr_tail=tail, core=core)
    ext = BtfExt.parse(data, STRINGS)
    assert ext.encode() == data
    text = ext.sections[TEXT_SECTION]
    assert text.func_info[1] == FuncInfo(64, 4, struct.pack("<I", 0xBEEF))
    assert (text.line_info[0].line, text.line_info[0].col, ext.line_text(text.line_info[0])) == (3, 2, "int x;")
    if core:
        assert ext.sections["xdp"].core_relo == [CoreRelo(8, 3, ACCESS, 0, b"\x01" * 8)]
        assert ext.access_str(ext.sections["xdp"].core_relo[0]) == "0:1"
    # a record added to a block with larger records gets zero padding
    ext.add_records("xdp", func_info=[FuncInfo(128, 9)], line_info=[LineInfo(0, FILE, LINE, 1 << 10)])
    again = BtfExt.parse(ext.encode(), STRINGS)
    assert again.sections["xdp"].func_info[-1] == FuncInfo(128, 9, bytes(4))
    assert again.sections["xdp"].line_info == [LineInfo(0, FILE, LINE, 1 << 10, bytes(4))]
    assert again.encode() == ext.encode()
    assert again.header_tail == tail


def test_no_core_block_in_a_short_header() -> None:
    ext = BtfExt.parse(_synthetic(hdr_tail=b"", core=False), STRINGS)
    with pytest.raises(ValueError, match="no core_relo block"):
        ext.add_records(TEXT_SECTION, core_relo=[CoreRelo(0, 1, ACCESS, 0)])


# --- hostile input --------------------------------------------------------------

def test_every_truncation_is_an_input_error(objects: dict[str, Path]) -> None:
    raw, ext, _ = _ext(objects["core19"])
    start = time.perf_counter()
    for cut in range(len(raw)):
        with pytest.raises(InputError):
            BtfExt.parse(raw[:cut], ext.strings)
    assert time.perf_counter() - start < 5


def _patched(data: bytes, offset: int, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, offset, value)
    return bytes(out)


# Byte positions in _synthetic(): the header is 40 bytes; func_info is 56
# bytes (rec_size, .text with 2 records, xdp with 1), then a 4-byte gap.
FUNC_AT = 40
XDP_SEC_AT = FUNC_AT + 4 + 8 + 2 * 12
LINE_AT = FUNC_AT + 56 + 4
HOSTILE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "bad magic": (lambda d: b"\x00\x00" + d[2:], "bad magic"),
    "big endian": (lambda d: b"\xeb\x9f" + d[2:], "big-endian"),
    "version": (lambda d: d[:2] + b"\x02" + d[3:], "unsupported version"),
    "hdr_len small": (lambda d: _patched(d, 4, 8), "header length"),
    "hdr_len huge": (lambda d: _patched(d, 4, 1 << 31), "header length"),
    "func_info past end": (lambda d: _patched(d, 12, 1 << 20), "runs past"),
    "line_info offset wraps": (lambda d: _patched(d, 16, 0xFFFFFFFF), "runs past"),
    "rec_size too small": (lambda d: _patched(d, FUNC_AT, 4), "record size"),
    "rec_size zero": (lambda d: _patched(d, FUNC_AT, 0), "record size"),
    "rec_size unaligned": (lambda d: _patched(d, FUNC_AT, 10), "record size"),
    "count past end": (lambda d: _patched(d, FUNC_AT + 8, 0xFFFFFFFF), "run past the block"),
    "count one too many": (lambda d: _patched(d, XDP_SEC_AT + 4, 2), "run past the block"),
    "section name past strings": (lambda d: _patched(d, FUNC_AT + 4, 5000), "string offset 5000"),
    "line file past strings": (lambda d: _patched(d, LINE_AT + 4 + 8 + 4, 4242), "string offset 4242"),
    "access string past strings": (lambda d: _patched(d, 4 + _patched_core_at(d) + 8 + 8, 4343), "string offset 4343"),
    "overlapping blocks": (lambda d: _patched(d, 16, 4), "overlaps"),
    "block shorter than rec_size": (lambda d: _patched(d, 28, 2), "too short for its record size"),
}


def _patched_core_at(d: bytes) -> int:
    """Absolute position of the core_relo block."""
    return 40 + int(struct.unpack_from("<I", d, 24)[0])


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_ext_is_one_line_error(case: str) -> None:
    data = _synthetic()
    mutate, message = HOSTILE[case]
    with pytest.raises(InputError, match=message) as err:
        BtfExt.parse(mutate(data), STRINGS)
    assert "\n" not in str(err.value)


def test_truncated_section_header_and_duplicate_sections() -> None:
    one = struct.pack("<III", 0, 3, 0)
    block = struct.pack("<I", 12) + struct.pack("<II", TEXT, 1) + one + struct.pack("<I", TEXT)
    data = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(block), len(block), 0) + block
    with pytest.raises(InputError, match="truncated"):
        BtfExt.parse(data, STRINGS)
    block = struct.pack("<I", 12) + (struct.pack("<II", TEXT, 1) + one) * 2
    data = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(block), len(block), 0) + block
    with pytest.raises(InputError, match="twice"):
        BtfExt.parse(data, STRINGS)


@pytest.fixture(scope="module")
def seed_ext(objects: dict[str, Path]) -> tuple[bytes, bytes]:
    raw, ext, _ = _ext(objects["core14"])
    return raw, ext.strings


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(min_value=0, max_value=10_000),
                                st.sampled_from([0, 1, 3, 4, 7, 8, 16, 0x7FFFFFFF, 0xFFFFFFFF]) | st.integers(0, (1 << 32) - 1)),
                      min_size=1, max_size=4),
       cut=st.integers(min_value=0, max_value=16))
def test_mutated_ext_is_rejected_or_round_trips(edits: list[tuple[int, int]], cut: int,
                                                seed_ext: tuple[bytes, bytes]) -> None:
    """Whatever the reader accepts, it writes back byte for byte."""
    raw, strings = seed_ext
    data = bytearray(raw)
    for pos, value in edits:
        pos = (pos % (len(data) - 3)) & ~3
        struct.pack_into("<I", data, pos, value)
    if cut:
        del data[-cut:]
    try:
        ext = BtfExt.parse(bytes(data), strings)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert ext.encode() == bytes(data)


def test_strings_from_btf_or_bytes_agree(objects: dict[str, Path]) -> None:
    raw, ext, obj = _ext(objects["multi14"])
    assert isinstance(obj.btf, Btf)
    assert BtfExt.parse(raw, obj.btf.strings).sections == ext.sections
    with pytest.raises(InputError, match="past the BTF strings"):
        ext.string(len(ext.strings))


@pytest.mark.parametrize("records", [True, False], ids=["records", "line-columns"])
@pytest.mark.parametrize("block", ["line_info", "core_relo"])
def test_a_string_offset_past_the_strings_names_its_record(objects: dict[str, Path], block: str,
                                                           records: bool) -> None:
    """Each block's string offsets are checked however the block is read
    (records, or line_info as columns): one past the BTF strings is one line
    naming the record's byte, never an IndexError later."""
    raw, ext, _ = _ext(objects["core14"])
    sec = next(s for s in ext.sections.values() if s.records(block))
    first = sec.records(block)[0]
    field = "file_name_off" if block == "line_info" else "access_str_off"
    # The record's bytes: its fields, in order, as the block stores them.
    needle = struct.pack("<4I", *first[:4])
    at = raw.find(needle)
    assert at > 0, "the record is in the section"
    data = bytearray(raw)
    struct.pack_into("<I", data, at + 4 * first._fields.index(field), len(ext.strings) + 7)
    with pytest.raises(InputError, match=rf"{block} record at byte \d+: string offset \d+ past the BTF strings"):
        BtfExt.parse(bytes(data), ext.strings, records=records)

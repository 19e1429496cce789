"""bpf_sdt.notes: decode -> encode is byte-identical on every entry of every
sample object and of objects from clang and bpf-gcc with registers, immediates
and stack slots; generated entries survive decode -> encode -> decode; every
entry either decodes or is reported with its place."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from fuzz_target import SyntheticEntry, many_sites_object, synthetic_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_samples import make, objects
from toolchain import clang, compile_bpf, tool

from bpf_sdt.elf import BpfObject, load_object
from bpf_sdt.errors import InputError
from bpf_sdt.format import MAX_ARGS, NAMED_ARGS, NOTES_SECTION
from bpf_sdt.insn import MAX_STACK
from bpf_sdt.model import ArgLocation
from bpf_sdt.notes import (
    MAX_ENTRIES,
    NoteEntry,
    ProblemKind,
    decode_notes,
    encode_arg,
    encode_entry,
)

MIXED = """#include <bpf_sdt.h>
BPF_SDT_DECLARE2(two, int, long);
BPF_SDT_DECLARE7(seven, int, int, int, int, int, signed char, long);
BPF_SDT_DECLARE12(twelve, long, long, long, long, long, long, long, long, long, long, int, long);
int f(int *c) {
  BPF_SDT_PROBE2(two, c[0], -3);
  BPF_SDT_PROBE7(seven, c[0], c[1], c[2], c[3], c[4], (signed char)c[5], 9);
  BPF_SDT_PROBE12(twelve, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11] * 3L);
  BPF_SDT_PROBE2(two, c[1], c[2]);
  return 0;
}
"""


@pytest.fixture(scope="module")
def real_objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every sample (compiled and linked by the make hook) and MIXED from clang
    (arguments 11..12 in stack slots) and bpf-gcc (6..12 in slots)."""
    out = tmp_path_factory.mktemp("notes-objs")
    res = make(f"BPF_SDT_OUTDIR={out}")
    assert res.returncode == 0, res.stdout + res.stderr
    objs = objects(out) + sorted(out.glob("*_main.bpf.o")) + sorted(out.glob("*_lib.bpf.o"))
    src = out / "mixed.c"
    src.write_text(MIXED)
    compile_bpf(src, out / "mixed.clang.o", clang(19))
    compile_bpf(src, out / "mixed.gcc.o", tool("bpf-gcc"))
    return [*objs, out / "mixed.clang.o", out / "mixed.gcc.o"]


def test_round_trip_is_byte_identical_on_real_objects(real_objects: list[Path]) -> None:
    kinds: set[str] = set()
    for path in real_objects:
        obj = load_object(path)
        dec = decode_notes(obj)
        assert dec.notes is not None and dec.entries and not dec.problems, (path, dec.problems)
        notes = obj.section_data(dec.notes)
        for e in dec.entries:
            raw = notes[e.entry_offset: e.entry_offset + e.size]
            assert raw[8:] == e.raw_args
            # address words are section-relative in every producer's objects
            assert encode_entry(e.offset, e.args) == raw, (path, e)
            kinds.update(a.kind for a in e.args)
        # the whole section, rebuilt from the entries in notes order
        assert b"".join(encode_entry(e.offset, e.args) for e in dec.entries) == notes, path
        # notes order: entry offsets ascend
        assert [e.entry_offset for e in dec.entries] == sorted(e.entry_offset for e in dec.entries)
    assert kinds == {"reg", "imm", "stack"}
    assert {p.name for p in real_objects} >= {"tc.linked.bpf.o", "loop.linked.bpf.o", "mixed.gcc.o"}


def test_entries_are_immutable_records(real_objects: list[Path]) -> None:
    e = decode_notes(load_object(real_objects[0])).entries[0]
    assert isinstance(e, NoteEntry)
    with pytest.raises(AttributeError):
        e.offset = 0  # type: ignore[misc]
    assert e.symbol.startswith("___sdt_jt_" + e.probe)
    assert e.section.executable and e.insn_index == e.offset // 8


# --- generated entries ------------------------------------------------------------


def arg_at(index: int) -> st.SearchStrategy[ArgLocation]:
    """Every location the format allows at argument position ``index``."""
    reg = st.builds(lambda r: ArgLocation("reg", reg=r), st.integers(0, 9))
    imm = st.builds(lambda v: ArgLocation("imm", value=v), st.integers(-(1 << 31), (1 << 31) - 1))
    if index <= NAMED_ARGS:
        return reg | imm
    slot = st.sampled_from([1, 2, 4, 8]).flatmap(
        lambda size: st.builds(lambda k: ArgLocation("stack", offset=-size * k, size=size),
                               st.integers(1, MAX_STACK // size)))
    return reg | imm | slot


def args_of(n: int) -> st.SearchStrategy[tuple[ArgLocation, ...]]:
    return st.tuples(*(arg_at(i) for i in range(1, n + 1)))


entry_lists = st.lists(st.integers(0, MAX_ARGS).flatmap(args_of), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(arg_lists=entry_lists, shuffle=st.randoms(use_true_random=False))
def test_generated_entries_round_trip(arg_lists: list[tuple[ArgLocation, ...]], shuffle: random.Random) -> None:
    nops = list(range(0, 8 * len(arg_lists), 8))
    shuffle.shuffle(nops)                      # notes order is not code order
    protos = {f"p{i}": ("long",) * len(a) for i, a in enumerate(arg_lists)}
    entries = [SyntheticEntry(f"p{i}", nop, a) for i, (nop, a) in enumerate(zip(nops, arg_lists, strict=True))]
    data = synthetic_object(entries, protos)
    dec = decode_notes(BpfObject("gen.o", data))
    assert not dec.problems
    assert [(e.probe, e.offset, e.args) for e in dec.entries] == [(s.probe, s.nop, tuple(s.args)) for s in entries]
    # and once more from what was decoded: the same object, byte for byte
    again = [SyntheticEntry(e.probe, e.offset, e.args) for e in dec.entries]
    assert synthetic_object(again, protos) == data


@pytest.mark.parametrize(("nop", "args"), [
    (-8, ()),                                               # negative offset
    (4, ()),                                                # not 8-aligned
    (0, (ArgLocation("reg", reg=10),)),                     # the frame pointer
    (0, (ArgLocation("reg", reg=16),)),                     # not a register
    (0, (ArgLocation("imm", value=1 << 31),)),              # outside s32
    (0, (ArgLocation("stack", offset=-8, size=8),)),        # a slot in a register position
    (0, (ArgLocation("reg", reg=1),) * 5 + (ArgLocation("stack", offset=-6, size=4),)),   # unaligned
    (0, (ArgLocation("reg", reg=1),) * 5 + (ArgLocation("stack", offset=-520, size=8),)),  # below r10-512
    (0, (ArgLocation("reg", reg=1),) * 5 + (ArgLocation("stack", offset=-8, size=3),)),   # no such width
    (0, (ArgLocation("reg", reg=1),) * (MAX_ARGS + 1)),     # too many
    (0, (ArgLocation("reg"),)),                             # no register
])
def test_encode_refuses_what_the_format_cannot_hold(nop: int, args: tuple[ArgLocation, ...]) -> None:
    with pytest.raises(ValueError):
        encode_entry(nop, args)


def test_encoding_matches_the_format_table() -> None:
    """docs/format.md 3.3, spelled out: opcode, dst K (K <= 5) or 0, src, off, imm."""
    assert encode_arg(ArgLocation("reg", reg=3), 1) == bytes([0xBF, 0x31, 0, 0, 0, 0, 0, 0])
    assert encode_arg(ArgLocation("imm", value=-2), 2) == bytes([0xB7, 0x02, 0, 0]) + struct.pack("<i", -2)
    assert encode_arg(ArgLocation("reg", reg=7), 6) == bytes([0xBF, 0x70, 0, 0, 0, 0, 0, 0])
    assert encode_arg(ArgLocation("stack", offset=-16, size=8), 11) == \
        bytes([0x79, 0xA0]) + struct.pack("<hi", -16, 0)
    assert encode_entry(0x48, ()) == struct.pack("<Q", 0x48)


# --- what cannot be decoded ------------------------------------------------------------

GOOD = (ArgLocation("reg", reg=1), ArgLocation("imm", value=7))


def test_broken_entries_are_reported_and_the_rest_decoded() -> None:
    entries = [SyntheticEntry("p", 0, GOOD), SyntheticEntry("p", 8, GOOD), SyntheticEntry("p", 16, GOOD)]
    data = bytearray(synthetic_object(entries, {"p": ("int", "long")}))
    obj = BpfObject("x.o", bytes(data))
    notes = obj.section(NOTES_SECTION)
    assert notes is not None
    struct.pack_into("<Q", data, notes.offset + 24, 8 * 100)        # entry 2 points past the code
    struct.pack_into("<B", data, notes.offset + 48 + 8, 0x0F)       # entry 3: an ALU insn as arg 1
    dec = decode_notes(BpfObject("x.o", bytes(data)))
    assert [e.entry_offset for e in dec.entries] == [0]
    assert [(p.kind, p.entry_offset) for p in dec.problems] == [
        (ProblemKind.ADDRESS, 24), (ProblemKind.ARGUMENT, 48)]
    assert dec.problems[1].where == f"{NOTES_SECTION}+0x38"     # the arg insn itself


def test_negative_rela_addend_is_not_a_site() -> None:
    """A RELA addend of -16 against .text once made code[-16:-8] (a NOP near the
    end) look valid, and `list` printed offset -16."""
    from bpf_sdt.elf import RELA, SHT_RELA, ElfImage, Relocation

    data = synthetic_object([SyntheticEntry("p", 0, GOOD), SyntheticEntry("p", 8, GOOD)], {"p": ("int", "long")})
    img = ElfImage.from_object(BpfObject("x.o", data))
    i = img.index_of(".rel" + NOTES_SECTION)
    assert i is not None
    rel = img.sections[i]
    rel.type, rel.entsize = SHT_RELA, RELA.size
    assert rel.relocs is not None
    rel.relocs = [Relocation(r.offset, r.type, r.symbol, -16 if r.offset else 0) for r in rel.relocs]
    dec = decode_notes(BpfObject("rela.o", img.to_bytes()))
    assert [e.offset for e in dec.entries] == [0]
    (p,) = dec.problems
    assert p.kind == ProblemKind.ADDRESS and "negative" in p.message


def test_two_notes_sections_are_reported() -> None:
    from bpf_sdt.elf import SecRec

    data = synthetic_object([SyntheticEntry("p", 0, GOOD)], {"p": ("int", "long")},
                            extra_sections=[SecRec(NOTES_SECTION, 1, 0, bytes(24))])
    dec = decode_notes(BpfObject("two.o", data))
    assert [p.kind for p in dec.problems] == [ProblemKind.DUPLICATE_SECTION]
    assert len(dec.entries) == 1 and dec.notes is not None and dec.notes.index == 2


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(pokes=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=12),
       arg_lists=entry_lists)
def test_every_entry_decodes_or_is_reported(pokes: list[tuple[int, int]],
                                            arg_lists: list[tuple[ArgLocation, ...]]) -> None:
    """Hostile bytes in the notes and their relocations: each entry symbol's
    entry is either decoded or named by a problem, never silently dropped."""
    protos = {f"p{i}": ("long",) * len(a) for i, a in enumerate(arg_lists)}
    data = bytearray(synthetic_object([SyntheticEntry(f"p{i}", 8 * i, a) for i, a in enumerate(arg_lists)],
                                      protos))
    obj = BpfObject("x.o", bytes(data))
    notes, rel = obj.section(NOTES_SECTION), obj.section(".rel" + NOTES_SECTION)
    assert notes is not None and rel is not None
    span = notes.size + rel.size
    for where, value in pokes:
        where %= span
        data[notes.offset + where if where < notes.size else rel.offset + where - notes.size] = value
    try:
        dec = decode_notes(BpfObject("x.o", bytes(data)))
    except InputError:
        return
    starts = sorted({s.value for s in obj.symbols if s.name.startswith("___sdt_jt_")})
    if any(p.entry_offset < 0 and p.kind in (ProblemKind.NO_RELOCATIONS, ProblemKind.BOUNDARY)
           for p in dec.problems):
        return                                             # nothing can be decoded at all
    covered = {e.entry_offset for e in dec.entries} | {p.entry_offset for p in dec.problems}
    assert set(starts) <= covered


# --- bounds ------------------------------------------------------------------------------


def test_entry_cap_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import bpf_sdt.notes as notes_mod

    data = many_sites_object(50)
    monkeypatch.setattr(notes_mod, "MAX_ENTRIES", 49)
    with pytest.raises(InputError, match="50 notes entries, more than the 49"):
        decode_notes(BpfObject("cap.o", data))
    assert MAX_ENTRIES == 1 << 20

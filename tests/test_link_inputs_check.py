"""The shortcuts of an input's check that `bpf-sdt link` leans on (issue 22,
docs/linking.md "Cost"): the entry symbols' names kept by the decoder for
link instead of read twice, the entries' extents and the symbols' bounds
answered from columns when nothing is wrong, and the entries decoded a
column at a time (_AtOnce).  Each must give what the
per-item code it skips gives: compared on real and on synthetic objects,
faults included."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import _symbols_inside_sections, analyze
from fuzz_target import SyntheticEntry, synthetic_object
from hypothesis import given, settings
from hypothesis import strategies as st
from test_link import A, B, build

from bpf_sdt import notes as notes_module
from bpf_sdt.elf import STB_GLOBAL, STT_OBJECT, BpfObject, SymRec, load_object
from bpf_sdt.format import NOTES_SECTION
from bpf_sdt.insn import INSN_SIZE
from bpf_sdt.model import ArgLocation
from bpf_sdt.notes import ADDRESS_WORD_SIZE, MAX_ENTRY_SIZE, NotesDecoding, _Boundary, decode_notes

ARGS2 = (ArgLocation("reg", reg=1), ArgLocation("imm", value=7))
PROTO = {"p": ("int", "long")}
SHN_ABS = 0xFFF1


def _names_read_again(decoding: NotesDecoding) -> list[str]:
    entries = decoding.entries
    return [entries.symbol(i) for i in range(len(entries))]


@pytest.mark.parametrize("src", [A, B])
def test_kept_names_are_the_names_read_again(tmp_path: Path, src: str) -> None:
    obj = load_object(build(tmp_path, "u", src))
    plain = notes_module._decode_notes(obj)
    kept = notes_module._decode_notes(obj, keep_names=True)
    assert plain.entries.names is None and kept.entries.names is not None
    assert kept.entries.names == _names_read_again(plain) == kept.entries.symbols(0, len(kept.entries))
    assert kept.entries == plain.entries


def test_kept_names_skip_the_entries_that_do_not_decode() -> None:
    """An entry whose address word names no NOP is dropped: the names kept
    are those of the entries left, as reading them again gives."""
    entries = [SyntheticEntry("p", 0, ARGS2), SyntheticEntry("p", 8, ARGS2), SyntheticEntry("p", 16, ARGS2)]
    data = bytearray(synthetic_object(entries, PROTO))
    obj = BpfObject("gen.o", bytes(data))
    text = obj.section(".text")
    assert text is not None
    data[text.offset + 8] = 0xB7          # the second NOP is now a mov
    obj = BpfObject("gen.o", bytes(data))
    kept = notes_module._decode_notes(obj, keep_names=True)
    assert kept.problems and len(kept.entries) == 2
    assert kept.entries.names == _names_read_again(notes_module._decode_notes(obj))
    assert kept.entries.names == ["___sdt_jt_p", "___sdt_jt_p.2"]


def test_link_reads_the_kept_names(tmp_path: Path) -> None:
    """link's check of an input leaves the decoding with its names kept, for
    _link_input to take as they are."""
    from bpf_sdt.postlink.link import checked_input
    obj = load_object(build(tmp_path, "a", A))
    report = checked_input(obj)
    assert report.decoding is decode_notes(obj)
    assert report.decoding.entries.names == _names_read_again(notes_module._decode_notes(obj))


def _valid_by_the_loop(starts: list[int], size: int) -> list[int]:
    bounds = _Boundary(BpfObject("gen.o", synthetic_object([], {})).symbol_table)
    bounds.starts = array("Q", starts)
    bounds.indices, bounds.name_offsets = array("q", [0] * len(starts)), array("q", [0] * len(starts))
    real = notes_module._all_extents_valid
    notes_module._all_extents_valid = lambda starts, size: False
    try:
        return list(notes_module._valid_entries(bounds, size, NotesDecoding()))
    finally:
        notes_module._all_extents_valid = real


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.sampled_from([0, 1, 4, 8, 16, 24, MAX_ENTRY_SIZE, MAX_ENTRY_SIZE + 8]), max_size=6),
       first=st.sampled_from([0, 4, 8]), tail=st.sampled_from([-8, 0, 4, 8, 16, MAX_ENTRY_SIZE + 8]))
def test_extents_valid_at_once_iff_the_loop_finds_no_fault(steps: list[int], first: int, tail: int) -> None:
    starts = [first]
    for step in steps:
        starts.append(starts[-1] + step)
    size = max(starts[-1] + tail, 0)
    by_loop = _valid_by_the_loop(starts, size)
    assert notes_module._all_extents_valid(array("Q", starts), size) == (by_loop == list(range(len(starts))))


def test_no_entries_are_all_valid() -> None:
    assert notes_module._all_extents_valid(array("Q"), 0)


def _object_with(shndx: int, value: int, size: int) -> BpfObject:
    sym = SymRec("g", value, size, (STB_GLOBAL << 4) | STT_OBJECT, 0, shndx)
    return BpfObject("gen.o", synthetic_object([SyntheticEntry("p", 0, ARGS2)], PROTO, extra_symbols=[sym]))


@pytest.mark.parametrize(("shndx", "value", "size", "inside"), [
    (SHN_ABS, 2**64 - 1, 2**64 - 1, True),      # a reserved index: no section, no bound
    (0, 2**63, 8, True),                        # SHN_UNDEF
    (1, 0, 16, True),                           # .text: a NOP and exit
    (1, 8, 9, False),
    (42, 0, 0, False),                          # no section 42
    (0xFEFF, 0, 0, False),                      # the last index below SHN_LORESERVE
])
def test_symbols_inside_sections_agrees_with_check(shndx: int, value: int, size: int, inside: bool) -> None:
    obj = _object_with(shndx, value, size)
    assert _symbols_inside_sections(obj, obj.symbol_table) == inside
    assert ("SDT118" in {f.rule for f in analyze(obj).findings}) == (not inside)


def _decoded_both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[NotesDecoding, NotesDecoding]:
    """The decoding with _AtOnce, and with the per-entry loop alone."""
    obj = BpfObject("gen.o", data)
    at_once = notes_module._decode_notes(obj)
    with monkeypatch.context() as patched:
        patched.setattr(notes_module._AtOnce, "decode", lambda *args: False)
        by_loop = notes_module._decode_notes(obj)
    return at_once, by_loop


def _same_decoding(a: NotesDecoding, b: NotesDecoding) -> None:
    assert a.entries == b.entries and len(a.entries) == len(b.entries)
    assert a.entries.bodies == b.entries.bodies and a.entries.sections == b.entries.sections
    assert list(a.entries.body_ids) == list(b.entries.body_ids)
    assert a.problems == b.problems and a.legacy_relocations == b.legacy_relocations


# More entries than _AtOnce reads at a time: its later chunks are read too.
MANY = notes_module._AT_ONCE_CHUNK + 100


def _many_sites(n: int) -> bytes:
    """n sites of one probe, their second argument one of 50 immediates (50 bodies)."""
    entries = [SyntheticEntry("p", 8 * i, (ArgLocation("reg", reg=1), ArgLocation("imm", value=i % 50)))
               for i in range(n)]
    return synthetic_object(entries, PROTO)


def test_at_once_decodes_as_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    at_once, by_loop = _decoded_both_ways(_many_sites(MANY), monkeypatch)
    assert not at_once.problems and len(at_once.entries) == MANY and len(at_once.entries.bodies) == 50
    _same_decoding(at_once, by_loop)


@pytest.mark.parametrize("fault", ["not_a_nop", "bad_argument", "misaligned_word"])
def test_at_once_leaves_a_fault_in_its_second_chunk_to_the_loop(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    data = bytearray(_many_sites(MANY))
    obj = BpfObject("gen.o", bytes(data))
    text, notes = obj.section(".text"), obj.section(NOTES_SECTION)
    assert text is not None and notes is not None
    site = MANY - 10                                   # in the second chunk
    entry = notes.offset + site * len(notes_module.encode_entry(0, ARGS2))
    if fault == "not_a_nop":
        data[text.offset + 8 * site] = 0xB7
    elif fault == "bad_argument":
        data[entry + ADDRESS_WORD_SIZE + INSN_SIZE: entry + ADDRESS_WORD_SIZE + 2 * INSN_SIZE] = b"\xff" * INSN_SIZE
    else:
        data[entry] += 4
    at_once, by_loop = _decoded_both_ways(bytes(data), monkeypatch)
    assert len(at_once.problems) == 1 and len(at_once.entries) == MANY - 1
    _same_decoding(at_once, by_loop)


def test_forget_drops_the_kept_decoding(tmp_path: Path) -> None:
    """decode_notes keeps its last decoding (one made without names serves a
    caller that asks for them: reading the names again is cheaper than a
    second decode, and instrument decodes each object once); forget drops
    it, so that link's emptied inputs are not handed out again."""
    obj = load_object(build(tmp_path, "a", A))
    plain = decode_notes(obj)
    assert decode_notes(obj, keep_names=True) is plain
    notes_module.forget(obj)
    kept = decode_notes(obj, keep_names=True)
    assert kept is not plain and kept.entries.names is not None and kept.entries == plain.entries

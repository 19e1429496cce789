"""The shortcuts of an input's check that `bpf-sdt link` leans on (issue 22,
docs/linking.md "Cost"): the entry symbols' names kept by the decoder for
link instead of read twice, the entries' extents and the symbols' bounds
answered from columns when nothing is wrong.  Each must give what the
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
from bpf_sdt.model import ArgLocation
from bpf_sdt.notes import MAX_ENTRY_SIZE, NotesDecoding, _Boundary, decode_notes

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

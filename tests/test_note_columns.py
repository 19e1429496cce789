"""The decoded entries and line rows are columns (issue 22: a million sites in
bounded memory): NoteEntries must read as the list of NoteEntry it stands
for, whatever the order of the symbols, NOPs and line rows, and whatever
entries were dropped; LineRows and its index as the LineInfo records."""

from __future__ import annotations

import struct
from pathlib import Path

from bpf_sdt.postlink.check import analyze
from fuzz_target import SyntheticEntry, synthetic_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_btfext import FILE, LINE, STRINGS, TEXT, _block

from bpf_sdt.btfext import BtfExt, _LineIndex
from bpf_sdt.elf import BpfObject, ElfImage, load_object
from bpf_sdt.errors import InputError
from bpf_sdt.format import NOP_INSN
from bpf_sdt.insn import INSN_SIZE
from bpf_sdt.model import ArgLocation
from bpf_sdt.notes import NoteEntries, NoteEntry, decode_notes
from bpf_sdt.sites import site_table

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
REG = ArgLocation("reg", reg=1)
IMM = ArgLocation("imm", value=7)
ARGS = st.sampled_from([(), (REG,), (REG, IMM), (IMM, IMM, REG)])
# Entry symbols: the first site of a probe is ___sdt_jt_<probe>, the next ones <probe>.<n>.
SYMBOL_PREFIX = "___sdt_jt_"
EXIT = bytes([0x95]) + bytes(7)


def assert_reads_as_entries(entries: NoteEntries) -> None:
    """Indexing, iterating, slicing and the bulk readers agree."""
    listed = list(entries)
    assert all(isinstance(e, NoteEntry) for e in listed)
    assert listed == [entries[i] for i in range(len(entries))]
    assert entries == listed and entries == entries[:]
    assert list(entries[1:3]) == listed[1:3]
    assert entries.symbols(0, len(entries)) == [e.symbol for e in listed]
    runs = list(entries.section_runs())
    assert [e.section for e in listed] == [sec for sec, start, stop in runs for _ in range(start, stop)]
    reversed_order = list(range(len(entries)))[::-1]
    assert list(entries.take(reversed_order)) == listed[::-1]


@FAST
@given(st.lists(st.tuples(st.sampled_from("abc"), ARGS), min_size=1, max_size=10), st.randoms())
def test_entries_read_as_their_notes(sites: list[tuple[str, tuple[ArgLocation, ...]]], rnd: object) -> None:
    """NOPs in any order: the decoding keeps notes order, the table sorts by NOP."""
    nops = [INSN_SIZE * k for k in range(len(sites))]
    rnd.shuffle(nops)  # type: ignore[attr-defined]
    synthetic = [SyntheticEntry(probe, nop, args) for (probe, args), nop in zip(sites, nops, strict=True)]
    prototypes = {probe: tuple("long" for _ in args) for probe, args in sites}
    if len({(probe, len(args)) for probe, args in sites}) != len(prototypes):
        prototypes = {}         # one probe with two arities: no prototypes (check says so), still decoded
    obj = BpfObject("cols.o", synthetic_object(synthetic, prototypes))
    decoding = decode_notes(obj)
    assert not decoding.problems
    entries = decoding.entries
    assert [(e.probe, e.offset, e.args) for e in entries] == [(s.probe, s.nop, tuple(s.args)) for s in synthetic]
    assert all(e.symbol.startswith(SYMBOL_PREFIX + e.probe) for e in entries)
    assert_reads_as_entries(entries)
    table = site_table(obj)
    assert list(table.entries) == sorted(entries, key=lambda e: e.offset)
    assert [(s.probe, s.section) for s in table.sites(sources=False)] == table.keys()
    assert table.probes() == sorted({s.probe for s in synthetic})
    assert_reads_as_entries(table.entries)


def test_entry_symbols_out_of_order_in_the_table() -> None:
    """Entry symbols need not be in the symbol table in offset order: the
    entries are the same as when they are."""
    synthetic = [SyntheticEntry(probe, INSN_SIZE * k, (REG,)) for k, probe in enumerate("abcab")]
    data = synthetic_object(synthetic, {"a": ("long",), "b": ("long",), "c": ("long",)})
    img = ElfImage.from_object(BpfObject("in-order.o", data))
    first_entry = 2                                  # after the null and the section symbol
    entry_symbols = img.symbols[first_entry: first_entry + len(synthetic)]
    img.symbols[first_entry: first_entry + len(synthetic)] = entry_symbols[::-1]
    reordered = decode_notes(BpfObject("reordered.o", img.to_bytes()))
    in_order = decode_notes(BpfObject("in-order.o", data))
    assert not reordered.problems and list(reordered.entries) == list(in_order.entries)
    assert reordered.entries.symbol_indices != in_order.entries.symbol_indices


def test_dropped_entries_leave_the_others_aligned() -> None:
    """Entries that do not decode (here: no NOP at their address) are left out,
    and every column of the others still describes the same entry."""
    synthetic = [SyntheticEntry(probe, INSN_SIZE * k, (REG, IMM)[: k % 3]) for k, probe in enumerate("abcdefg")]
    broken = {1, 4, 5}
    code = b"".join(EXIT if k in broken else NOP_INSN for k in range(len(synthetic))) + EXIT
    prototypes = {s.probe: tuple("long" for _ in s.args) for s in synthetic}
    decoding = decode_notes(BpfObject("dropped.o", synthetic_object(synthetic, prototypes, code=code)))
    assert len(decoding.problems) == len(broken)
    kept = [s for k, s in enumerate(synthetic) if k not in broken]
    entries = decoding.entries
    assert [(e.probe, e.offset, e.args, e.symbol) for e in entries] == \
        [(s.probe, s.nop, tuple(s.args), SYMBOL_PREFIX + s.probe) for s in kept]
    assert_reads_as_entries(entries)
    assert decoding.entry_probes == {s.probe for s in synthetic}, "every entry symbol's probe, decoded or not"


def test_samples_read_as_entries(samples_built: Path) -> None:
    for path in sorted(samples_built.glob("*.o")):
        report = analyze(load_object(path))
        assert_reads_as_entries(report.decoding.entries)
        assert_reads_as_entries(report.entries)
        assert report.site_count == len(report.entries)


def _line_info(insn_offs: list[int]) -> bytes:
    """A .BTF.ext with only line_info, one row per offset in this order, line k at row k."""
    rows = [struct.pack("<IIII", off, FILE, LINE, (k + 1) << 10) for k, off in enumerate(insn_offs)]
    line: bytes = _block(16, [(TEXT, rows)])
    return struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 0, 0, len(line)) + line


def test_line_rows_out_of_order_are_indexed_as_the_records() -> None:
    """Line rows the producer did not sort (and equal offsets, which keep file
    order) are looked up as the records' index looks them up."""
    data = _line_info([64, 0, 32, 32, 8])
    rows = BtfExt.parse(memoryview(data), STRINGS, records=False).line_rows[".text"]
    records = BtfExt.parse(data, STRINGS)
    assert rows == [(r.insn_off, r.file_name_off, r.line_off, r.line_col) for r in records.sections[".text"].line_info]
    index, by_records = _LineIndex(rows), records.line_index(".text")
    for offset in range(0, 80, INSN_SIZE):
        row, record = index.at(offset), by_records.at(offset)
        assert (index.line_cols[row] if row >= 0 else None) == (record.line_col if record else None), offset


# --- the symbol table's column readers against one record at a time ----------------

_TABLE_EDITS = st.lists(st.tuples(st.sampled_from(["name", "last name", "shndx", "info", "byte"]), st.integers(0, 1 << 16),
                                  st.integers(0, 255)), max_size=12)


def _edited_table(edits: list[tuple[str, int, int]]) -> BpfObject:
    """A synthetic object (entry symbols in a block, at the notes section)
    with symbols' name offsets (into any name, past the table's end too),
    sections and st_info bytes changed, and string table bytes set (a NUL
    inside a name, a byte that is not ASCII, the last NUL gone)."""
    sites = [SyntheticEntry(probe, INSN_SIZE * k, (REG,)) for k, probe in enumerate("abcab")]
    data = bytearray(synthetic_object(sites, {p: ("long",) for p in "abc"}))
    obj = BpfObject("edited.o", bytes(data))
    symtab, strtab = obj.symtab_section, obj.sections[6]
    assert symtab is not None and strtab.index == symtab.link
    count = symtab.size // 24
    for field, where, value in edits:
        record = symtab.offset + 24 * (where % count)
        if field == "name":
            struct.pack_into("<I", data, record, value % strtab.size)
        elif field == "last name":     # the table's last byte, or just past its end
            struct.pack_into("<I", data, record, strtab.size - 1 + value % 3)
        elif field == "shndx":
            struct.pack_into("<H", data, record + 6, value % len(obj.sections))
        elif field == "info":
            data[record + 4] = value
        else:
            data[strtab.offset + where % strtab.size] = value
    return BpfObject("edited.o", bytes(data))


def _outcome(read: object) -> object:
    try:
        return read()  # type: ignore[operator]
    except InputError as e:
        return str(e)


@FAST
@given(_TABLE_EDITS)
def test_symbol_columns_read_as_the_records(edits: list[tuple[str, int, int]]) -> None:
    """names, in_section, indices_of_type and section_indices (by slices
    and maps, names as slices of the table's text when it is ASCII) give
    what reading each record and name on its own gives, or the same error;
    a table names_are_ascii calls so gives every name in ASCII."""
    table = _edited_table(edits).symbol_table
    records = list(table.records())
    offsets = [r[0] for r in records]
    assert _outcome(lambda: table.names(range(table.count), offsets)) == \
        _outcome(lambda: [table.name(i, off) for i, off in enumerate(offsets)])
    for shndx in (2, 1):            # the notes (the entry symbols' block), .text
        prefix = b"___sdt_jt_"
        want = [(i, r[4], r[0]) for i, r in enumerate(records) if r[3] == shndx and table.has_prefix(r[0], prefix)]
        indices, values, name_offs = table.in_section(shndx, prefix)
        assert list(zip(indices, values, name_offs, strict=True)) == want
    for stt in range(16):
        assert table.indices_of_type(stt) == [i for i, r in enumerate(records) if r[1] & 0xF == stt]
    assert list(table.section_indices()) == [r[3] for r in records]
    if table.names_are_ascii():
        names = _outcome(lambda: [table.name(i, off) for i, off in enumerate(offsets)])
        assert isinstance(names, list) and all(name.isascii() for name in names)

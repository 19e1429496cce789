"""`bpf-sdt link` proves its output's check from what it wrote
(postlink/linkproof.py, docs/linking.md "The output's check") instead of
decoding every site again.  Real objects linked with the installed bpftool;
then one thing broken at a time in the bytes written, as a writer bug would
break it, and the proof must refuse each: an address word moved onto
another NOP, a relocation against another symbol, an argument insn, an entry symbol's value or name, a byte of the
linker's code or BTF, a symbol the linker made."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from bpf_sdt.postlink import link as link_module
from bpf_sdt.postlink.check import analyze
from bpf_sdt.postlink.linkproof import MovedNotes, verify_linked
from test_link import A, B, C, build
from toolchain import tool

from bpf_sdt.elf import REL, SYM, BpfObject, ElfImage, load_object
from bpf_sdt.errors import InputError
from bpf_sdt.format import NOP_INSN, NOTES_REL_SECTION, NOTES_SECTION
from bpf_sdt.toolchain import find_bpftool

Mutation = Callable[[BpfObject, bytearray], None]


def _linked(inputs: list[Path]) -> tuple[bytes, MovedNotes]:
    """What link writes for ``inputs`` and what it moved, before the proof."""
    tool("bpftool")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = link_module._Prepared(Path(tmp))
        for path in inputs:
            prepared.add(link_module.checked_input(load_object(path)))
        linked = link_module._link(prepared, "out.o", find_bpftool(None))
    assert isinstance(linked, link_module.LinkedImage)
    return linked.img.to_bytes(), linked.moved


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, MovedNotes]:
    tmp = tmp_path_factory.mktemp("proof")
    return _linked([build(tmp, "a", A), build(tmp, "b", B), build(tmp, "c", C)])


def _section(obj: BpfObject, name: str) -> tuple[int, int]:
    sec = obj.section(name)
    assert sec is not None
    return sec.offset, sec.size


def _address_word_onto_another_nop(obj: BpfObject, data: bytearray) -> None:
    """The last entry's word set to another entry's NOP in its section:
    still a NOP, but not the one the placement says."""
    notes, _ = _section(obj, NOTES_SECTION)
    entries = analyze(obj).decoding.entries
    last = entries[-1]
    other = next(e for e in entries if e.section.name == last.section.name and e.offset != last.offset)
    struct.pack_into("<Q", data, notes + last.entry_offset, other.offset)


def _relocation_against_another_symbol(obj: BpfObject, data: bytearray) -> None:
    rel, _ = _section(obj, NOTES_REL_SECTION)
    offset, info = REL.unpack_from(data, rel)
    REL.pack_into(data, rel, offset, info + (1 << 32))


def _argument_register(obj: BpfObject, data: bytearray) -> None:
    notes, _ = _section(obj, NOTES_SECTION)
    entry = next(e for e in analyze(obj).decoding.entries if e.args)
    data[notes + entry.entry_offset + 8 + 1] ^= 0x10       # argument 1's source register


def _entry_symbol(change: str) -> Mutation:
    def mutate(obj: BpfObject, data: bytearray) -> None:
        symtab, _ = _section(obj, ".symtab")
        notes = obj.section(NOTES_SECTION)
        assert notes is not None
        table = obj.symbol_table
        k = next(i for i, rec in enumerate(table.records()) if rec[3] == notes.index and rec[4])
        name_off, info, other, shndx, value, size = table.record(k)
        if change == "value":
            SYM.pack_into(data, symtab + SYM.size * k, name_off, info, other, shndx, value + 8, size)
        else:   # its name: one byte of the string table, where only entry names are
            strtab, _ = _section(obj, ".strtab")
            data[strtab + name_off + len("___sdt_jt_")] ^= 0x20
    return mutate


def _linker_byte(section: str) -> Mutation:
    def mutate(obj: BpfObject, data: bytearray) -> None:
        start, size = _section(obj, section)
        at = data.find(NOP_INSN, start, start + size) if section == "xdp" else start + size // 2
        data[at] ^= 0x01
    return mutate


def _linker_symbol(obj: BpfObject, data: bytearray) -> None:
    symtab, _ = _section(obj, ".symtab")
    table = obj.symbol_table
    k = next(i for i, rec in enumerate(table.records()) if rec[1] & 0xF == 2)     # a function
    name_off, info, other, shndx, value, size = table.record(k)
    SYM.pack_into(data, symtab + SYM.size * k, name_off, info, other, shndx, value, size + 8)


MUTATIONS: dict[str, Mutation] = {
    "address word onto another NOP": _address_word_onto_another_nop,
    "relocation against another symbol": _relocation_against_another_symbol,
    "argument register": _argument_register,
    "entry symbol value": _entry_symbol("value"),
    "entry symbol name": _entry_symbol("name"),
    "NOP in the linker's code": _linker_byte("xdp"),
    "byte of the linker's BTF": _linker_byte(".BTF"),
    "function symbol size": _linker_symbol,
}


def test_what_link_writes_passes_its_proof_and_check(linked: tuple[bytes, MovedNotes]) -> None:
    data, moved = linked
    out = BpfObject("out.o", data)
    verify_linked(out, moved)
    assert analyze(out).errors == 0


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_write_is_refused(name: str, linked: tuple[bytes, MovedNotes]) -> None:
    data, moved = linked
    broken = bytearray(data)
    MUTATIONS[name](BpfObject("out.o", data), broken)
    assert bytes(broken) != data
    with pytest.raises(InputError, match="out.o: the linked object fails check: "):
        verify_linked(BpfObject("out.o", bytes(broken)), moved)


def test_link_refuses_to_write_a_corrupted_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through `link` itself: the writer breaks one address word of OUT,
    and nothing is written."""
    inputs = [build(tmp_path, "a", A), build(tmp_path, "b", B)]
    real = ElfImage.to_bytes

    def corrupting(img: ElfImage) -> bytes:
        data = real(img)
        if img.index_of(NOTES_SECTION) is None:          # the copies without notes
            return data
        broken = bytearray(data)
        _address_word_onto_another_nop(BpfObject("x.o", data), broken)
        return bytes(broken)

    monkeypatch.setattr(ElfImage, "to_bytes", corrupting)
    out = tmp_path / "out.o"
    tool("bpftool")
    with pytest.raises(InputError, match="SDT107"):
        link_module.link(out, inputs)
    assert not out.exists()


@pytest.mark.parametrize(("shape", "rule"), [(("shared", 3), "SDT103"), (("undeclared", 1), "SDT110")])
def test_a_site_the_linked_prototypes_do_not_fit_is_refused(shape: tuple[str, int], rule: str,
                                                           linked: tuple[bytes, MovedNotes],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The prototypes are judged per (probe, argument count) against the
    linked BTF: a count it does not declare, a probe it does not declare."""
    data, moved = linked
    monkeypatch.setattr(moved, "shapes", moved.shapes | {shape})
    with pytest.raises(InputError, match=rule):
        verify_linked(BpfObject("out.o", data), moved)

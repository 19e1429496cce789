"""A small writer for BPF relocatable objects: an editable image of sections,
symbols and relocations that serialises back to ELF.

It exists for `bpf-sdt link`, which must remove the notes from inputs and
add them to a linked output; pyelftools only reads.  The parts that are easy
to get wrong are all here, once:

- the symbol table is rebuilt with every local before every global, and its
  ``sh_info`` is the index of the first global;
- symbol indices change when symbols are added or removed, so every REL/RELA
  entry is kept decoded and re-encoded against the new indices;
- section indices change when sections are removed, so ``st_shndx``,
  ``sh_link`` and ``sh_info`` are remapped;
- string tables (.strtab, .shstrtab) are regenerated; section data keeps its
  alignment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bpf_sdt.postlink.objfile import (
    SHN_LORESERVE,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    BpfObject,
    Relocation,
)

from bpf_sdt.errors import InputError

SHT_STRTAB = 3
SHT_LLVM_ADDRSIG = 0x6FFF4C03
STB_LOCAL = 0
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")


@dataclass
class SecRec:
    name: str
    type: int
    flags: int
    data: bytes
    link: int = 0           # index into the image's sections (remapped on write)
    info: int = 0
    addralign: int = 1
    entsize: int = 0
    relocs: list[Relocation] | None = None   # REL/RELA kept decoded


@dataclass
class SymRec:
    name: str
    value: int
    size: int
    info: int
    other: int
    shndx: int              # index into the image's sections, or a reserved index

    @property
    def bind(self) -> int:
        return self.info >> 4


@dataclass
class ElfImage:
    ident: bytes
    e_type: int
    e_machine: int
    e_flags: int
    sections: list[SecRec] = field(default_factory=list)    # [0] is the null section
    symbols: list[SymRec] = field(default_factory=list)     # [0] is the null symbol

    # --- reading ------------------------------------------------------------

    @classmethod
    def from_object(cls, obj: BpfObject) -> ElfImage:
        ident = obj.data[:16]
        e_type, e_machine, _v, _entry, _ph, _sh, e_flags = struct.unpack_from("<HHIQQQI", obj.data, 16)
        img = cls(ident, e_type, e_machine, e_flags)
        for s in obj.sections:
            rec = SecRec(s.name, s.type, s.flags, obj.section_data(s), s.link, s.info,
                         max(s.addralign, 1), s.entsize)
            if s.type in (SHT_REL, SHT_RELA):
                target = obj.section_at(s.info)
                if target is None:
                    raise InputError(f"{obj.path}: {s.name} applies to missing section {s.info}")
                _, rec.relocs = obj.relocations(target)
            img.sections.append(rec)
        img.symbols = [SymRec(s.name, s.value, s.size, (s.bind << 4) | s.type, s.other, s.shndx)
                       for s in obj.symbols]
        if not img.symbols:
            raise InputError(f"{obj.path}: no symbol table")
        return img

    def index_of(self, name: str) -> int | None:
        return next((i for i, s in enumerate(self.sections) if s.name == name), None)

    def section_symbol(self, sec_index: int) -> int:
        """Index of the STT_SECTION symbol for a section, adding one if missing."""
        for i, s in enumerate(self.symbols):
            if s.shndx == sec_index and s.info & 0xF == 3:
                return i
        self.symbols.append(SymRec("", 0, 0, 3, 0, sec_index))
        return len(self.symbols) - 1

    # --- editing --------------------------------------------------------------

    def remove_sections(self, names: set[str]) -> None:
        """Drop sections by name, with their relocation sections and the symbols
        defined in them.  Relocations elsewhere must not refer to those symbols."""
        doomed = {i for i, s in enumerate(self.sections) if i and s.name in names}
        doomed |= {i for i, s in enumerate(self.sections)
                   if s.type in (SHT_REL, SHT_RELA) and s.info in doomed}
        doomed |= {i for i, s in enumerate(self.sections) if s.type == SHT_LLVM_ADDRSIG}
        if not doomed:
            return
        sec_map = {}
        kept: list[SecRec] = []
        for i, s in enumerate(self.sections):
            if i not in doomed:
                sec_map[i] = len(kept)
                kept.append(s)
        sym_map: dict[int, int] = {}
        kept_syms: list[SymRec] = []
        for i, sym in enumerate(self.symbols):
            if 0 < sym.shndx < SHN_LORESERVE and sym.shndx in doomed:
                continue
            sym_map[i] = len(kept_syms)
            if 0 < sym.shndx < SHN_LORESERVE:
                sym.shndx = sec_map[sym.shndx]
            kept_syms.append(sym)
        for s in kept:
            if s.type in (SHT_REL, SHT_RELA, SHT_SYMTAB):
                s.link = sec_map.get(s.link, 0)
            if s.type in (SHT_REL, SHT_RELA):
                s.info = sec_map[s.info]
                assert s.relocs is not None
                for r in s.relocs:
                    if r.symbol not in sym_map:
                        raise InputError(f"a relocation in {s.name} refers to a symbol in a removed section")
                s.relocs = [Relocation(r.offset, r.type, sym_map[r.symbol], r.addend) for r in s.relocs]
            elif s.type == SHT_SYMTAB:
                s.link = sec_map[s.link]
        self.sections, self.symbols = kept, kept_syms

    def add_section(self, rec: SecRec) -> int:
        """Append a section before the symbol/string tables' rebuild; returns its index."""
        self.sections.append(rec)
        return len(self.sections) - 1

    # --- writing --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        order = sorted(range(len(self.symbols)),
                       key=lambda i: (i != 0, self.symbols[i].bind != STB_LOCAL, i))
        new_index = {old: new for new, old in enumerate(order)}
        n_locals = sum(1 for i in order if self.symbols[i].bind == STB_LOCAL)
        symtab_i = next(i for i, s in enumerate(self.sections) if s.type == SHT_SYMTAB)
        strtab_i = self.sections[symtab_i].link
        shstr_i = next((i for i, s in enumerate(self.sections)
                        if s.type == SHT_STRTAB and s.name == ".shstrtab"), None)
        if shstr_i is None:
            shstr_i = self.add_section(SecRec(".shstrtab", SHT_STRTAB, 0, b""))

        strtab = _StringTable()
        sym_bytes = bytearray()
        for old in order:
            s = self.symbols[old]
            sym_bytes += struct.pack("<IBBHQQ", strtab.add(s.name) if s.name else 0, s.info,
                                     s.other, s.shndx, s.value, s.size)
        sym_rec = self.sections[symtab_i]
        sym_rec.data, sym_rec.info, sym_rec.entsize = bytes(sym_bytes), n_locals, 24
        sym_rec.addralign = 8
        self.sections[strtab_i].data = strtab.bytes()

        for sec in self.sections:
            if sec.relocs is not None:
                rela = sec.type == SHT_RELA
                out = bytearray()
                for r in sec.relocs:
                    info = (new_index[r.symbol] << 32) | r.type
                    out += struct.pack("<QQq", r.offset, info, r.addend or 0) if rela \
                        else struct.pack("<QQ", r.offset, info)
                sec.data, sec.link, sec.entsize = bytes(out), symtab_i, 24 if rela else 16
                sec.addralign = 8

        shstr = _StringTable()
        name_offs = [shstr.add(sec.name) if i else 0 for i, sec in enumerate(self.sections)]
        self.sections[shstr_i].data = shstr.bytes()

        blob = bytearray(EHDR.size)
        offsets = [0] * len(self.sections)
        for i, sec in enumerate(self.sections):
            if not i or sec.type == 8:          # null section, NOBITS
                offsets[i] = len(blob) if i else 0
                continue
            blob += bytes(-len(blob) % max(sec.addralign, 1))
            offsets[i] = len(blob)
            blob += sec.data
        blob += bytes(-len(blob) % 8)
        shoff = len(blob)
        for i, sec in enumerate(self.sections):
            if not i:
                blob += bytes(SHDR.size)
                continue
            blob += SHDR.pack(name_offs[i], sec.type, sec.flags, 0, offsets[i], len(sec.data),
                              sec.link, sec.info, sec.addralign, sec.entsize)
        EHDR.pack_into(blob, 0, self.ident, self.e_type, self.e_machine, 1, 0, 0, shoff,
                       self.e_flags, EHDR.size, 0, 0, SHDR.size, len(self.sections), shstr_i)
        return bytes(blob)


class _StringTable:
    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._offsets:
            self._offsets[s] = len(self._data)
            self._data += s.encode() + b"\0"
        return self._offsets[s]

    def bytes(self) -> bytes:
        return bytes(self._data)

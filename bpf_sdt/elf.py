"""The ELF layer every stage shares: named constants, record layouts, a reader
(:class:`BpfObject`) and a writer (:class:`ElfImage`) for BPF relocatable
objects.

Reading: the ELF header, the section header table and the flat arrays
that can hold tens of thousands of records (symbols, relocations) are decoded
with the record layouts below, the same ones the writer packs, in bulk where
there are many (a per-record parse would dominate ``check`` on large
objects; pyelftools' reader, used for DWARF in :mod:`bpf_sdt.inlined`, costs
a tenth of a second of imports before reading a byte).  :class:`SymbolTable` is the one reader of the
symbol table.  The file is untrusted: every size and offset is checked
against the real file length before anything is read, so a section claiming
4 GB costs nothing, and any malformation becomes an :class:`InputError`.

Writing: :class:`ElfImage` is an editable image of sections, symbols and
relocations that serialises back to ELF with the same layouts.  The parts that
are easy to get wrong are all in it, once:

- the symbol table is rebuilt with every local before every global, and its
  ``sh_info`` is the index of the first global;
- symbol indices change when symbols are added or removed, so every REL/RELA
  entry is kept decoded and re-encoded against the new indices;
- section indices change when sections are removed, so ``st_shndx``,
  ``sh_link`` and ``sh_info`` are remapped;
- string tables (.strtab, .shstrtab) are regenerated; every other section
  keeps its type, flags, size (SHT_NOBITS has a size and no bytes), alignment
  and entry size exactly as read.
"""

from __future__ import annotations

import functools
import itertools
import operator
import struct
import sys
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal, NamedTuple

from bpf_sdt.btf import Btf, parse_btf
from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import MAX_OBJECT_SIZE, read_regular

# --- named constants (ELF gABI and the BPF psABI) ---------------------------

EI_NIDENT = 16           # e_ident: its size, and where its class and data encoding bytes are
EI_CLASS = 4
EI_DATA = 5
EM_BPF = 247
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_NONE, ET_REL, ET_EXEC, ET_DYN, ET_CORE = range(5)
EV_CURRENT = 1

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHT_LLVM_ADDRSIG = 0x6FFF4C03

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
SHF_INFO_LINK = 0x40
SHF_COMPRESSED = 0x800

SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00

STB_LOCAL = 0
STB_GLOBAL = 1
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STV_DEFAULT = 0
ST_TYPE_MASK = 0xF       # st_info: type in the low 4 bits, binding above them
ST_BIND_SHIFT = 4


def st_info(bind: int, type_: int) -> int:
    """A symbol's st_info byte from its binding and type."""
    return (bind << ST_BIND_SHIFT) | type_



R_BPF_64_64 = 1          # ld_imm64: map, global data, subprogram address
R_BPF_64_ABS64 = 2       # a 64-bit data word
R_BPF_64_ABS32 = 3       # a 32-bit data word (DWARF)
R_BPF_64_NODYLD32 = 4    # a 32-bit data word no loader applies (.BTF, .BTF.ext)
R_BPF_64_32 = 10         # call imm: helper-less BPF-to-BPF calls, kfuncs
R_SYM_SHIFT = 32         # r_info: symbol index in the high 32 bits, type in the low 32
R_TYPE_MASK = 0xFFFFFFFF

TEXT_SECTION = ".text"   # the subprograms' code section (a program's code is in its own section)

TABLE_ALIGN = 8          # Elf64 symbol, relocation and section header tables: 8-byte aligned
MAX_ALIGN = 1 << 16      # far above any BPF toolchain's section alignment (8)

# --- record layouts: the one definition reader and writer share --------------

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
SHDR = struct.Struct("<IIQQQQIIQQ")         # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")              # Elf64_Sym
REL = struct.Struct("<QQ")                  # Elf64_Rel
RELA = struct.Struct("<QQq")                # Elf64_Rela
_U64 = struct.Struct("<Q")
_SH_OFFSET, _SH_SIZE = 4, 5                 # sh_offset, sh_size: their places in an SHDR record

_ELF_TYPE_NAMES = {ET_NONE: "ET_NONE", ET_REL: "ET_REL", ET_EXEC: "ET_EXEC", ET_DYN: "ET_DYN", ET_CORE: "ET_CORE"}


class ElfHeader(NamedTuple):
    """Elf64_Ehdr, in :data:`EHDR`'s order."""

    e_ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int


def is_reserved_index(shndx: int) -> bool:
    """SHN_UNDEF and SHN_LORESERVE.. name no real section."""
    return shndx == SHN_UNDEF or shndx >= SHN_LORESERVE


def r_info(symbol: int, rtype: int) -> int:
    return (symbol << R_SYM_SHIFT) | rtype


# --- reading -----------------------------------------------------------------


class Section(NamedTuple):
    """One section header (a tuple: immutable, compared and hashed by value)."""

    index: int  # type: ignore[assignment]  # the section's index, which shadows tuple.index
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    addralign: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)


class Symbol(NamedTuple):
    """One symbol-table entry (a tuple: objects can hold tens of thousands)."""

    num: int            # index in the symbol table
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int
    other: int = 0      # st_other (visibility)


class Relocation(NamedTuple):
    offset: int
    type: int
    symbol: int
    addend: int | None      # RELA only; REL keeps the addend in place


class RelocationColumns(NamedTuple):
    """A REL/RELA section's fields as columns of u64 words over the file's
    bytes (:func:`u64_words`): record k is ``offsets[k]``, ``infos[k]`` and,
    RELA only, ``addends[k]`` (unsigned: :func:`signed64`)."""

    offsets: memoryview
    infos: memoryview
    addends: memoryview     # empty for REL


# Elf64_Sym (SYM) as 3 u64 words: st_name | st_info << 32 | st_other << 40 |
# st_shndx << 48, then st_value, then st_size.
_SYM_WORDS = SYM.size // 8
_SYM_INFO_SHIFT = 32
_SYM_OTHER_SHIFT = 40
_SYM_SHNDX_SHIFT = 48
_U32_MASK = 0xFFFFFFFF
_U8_MASK = 0xFF
_ST_INFO_BYTE = 4         # st_info's byte in a record (SYM)
# A record's fields as SymbolTable.column reads them (the checks of a link read them too):
SYM_NAME_U32 = 0          # st_name: the first u32
SYM_TAIL_U32 = 1          # the second u32: st_info | st_other << 8 | st_shndx << SYM_TAIL_SHNDX_SHIFT
SYM_TAIL_SHNDX_SHIFT = 16
SYM_SHNDX_U16 = 3         # st_shndx: the fourth u16


def u64_words(view: memoryview) -> memoryview:
    """``view`` (a multiple of 8 bytes) as little-endian u64s, read in C: a
    column of a table of records is one slice, ``words[field::stride]``,
    instead of a tuple per record (an object may have a million symbols).
    On a little-endian host it is the file's bytes themselves, no copy."""
    return _little_endian_words(view, "Q")


def u32_words(view: memoryview) -> memoryview:
    """``view`` (a multiple of 4 bytes) as little-endian u32s, as
    :func:`u64_words` reads u64s (.BTF.ext's records are u32 fields)."""
    return _little_endian_words(view, "I")


def _little_endian_words(view: memoryview, code: Literal["H", "I", "Q"]) -> memoryview:
    if sys.byteorder == "little":
        return view.cast(code)
    words = array(code)
    words.frombytes(view)
    words.byteswap()
    return memoryview(words)


def put_u64_words(buf: bytearray, indices: Iterable[int], values: Iterable[int]) -> None:
    """Set the little-endian u64 word ``indices[k]`` of ``buf`` to
    ``values[k]``, in one pass in C on a little-endian host (the notes of a
    million sites have a million address words to set)."""
    if sys.byteorder == "little":
        with memoryview(buf) as view, view.cast("Q") as words:
            deque(map(words.__setitem__, indices, values), maxlen=0)
        return
    for index, value in zip(indices, values, strict=True):
        _U64.pack_into(buf, 8 * index, value)


def signed64(u: int) -> int:
    return u - (1 << 64) if u >> 63 else u


class BpfObject:
    """One BPF ELF relocatable object, read fully into memory."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        try:
            header = self._parse_header()
            self.e_flags: int = header.e_flags
            self.sections = self._read_sections(header)
        except InputError:
            raise
        except (struct.error, ValueError, UnicodeDecodeError) as e:   # the checks above should leave none
            raise InputError(f"{path}: not a readable ELF object ({_reason(e)})") from None
        self._by_name: dict[str, Section] = {}
        for s in self.sections:
            self._by_name.setdefault(s.name, s)
        self._data_cache: dict[int, bytes] = {}
        self._rel_cache: dict[int, tuple[Section | None, list[Relocation]]] = {}

    # --- construction ------------------------------------------------------

    def _parse_header(self) -> ElfHeader:
        """The ELF header, decoded with :data:`EHDR` (the layout the writer
        packs) and checked to be a little-endian 64-bit BPF relocatable object."""
        ident = self.data[:EI_NIDENT]
        if len(self.data) < EHDR.size:
            raise InputError(f"{self.path}: {len(self.data)} bytes is shorter than an ELF header")
        if ident[EI_CLASS] != ELFCLASS64:
            raise InputError(f"{self.path}: ELF class {ident[EI_CLASS]}, BPF objects are 64-bit")
        if ident[EI_DATA] != ELFDATA2LSB:
            raise InputError(f"{self.path}: big-endian BPF objects are not supported")
        header = ElfHeader(*EHDR.unpack_from(self.data, 0))
        if header.e_machine != EM_BPF:
            raise InputError(f"{self.path}: not a BPF object (e_machine {header.e_machine}, BPF is {EM_BPF})")
        if header.e_type != ET_REL:
            kind = _ELF_TYPE_NAMES.get(header.e_type, f"e_type {header.e_type}")
            raise InputError(f"{self.path}: {kind}, expected a relocatable object (ET_REL)")
        return header

    def _read_sections(self, header: ElfHeader) -> list[Section]:
        """The section header table, decoded with :data:`SHDR` (the layout the
        writer packs) and checked against the file before any section is read."""
        shoff, shnum, shentsize = header.e_shoff, header.e_shnum, header.e_shentsize
        if shoff == 0 or shnum == 0:
            raise InputError(f"{self.path}: no section header table")
        if shentsize != SHDR.size or shoff + shnum * SHDR.size > len(self.data):
            raise InputError(f"{self.path}: section header table ({shnum} x {shentsize} bytes at "
                             f"{shoff}) runs past the end of the file ({len(self.data)} bytes)")
        headers = list(SHDR.iter_unpack(memoryview(self.data)[shoff: shoff + shnum * SHDR.size]))
        strndx = header.e_shstrndx
        if not 0 < strndx < shnum:
            raise InputError(f"{self.path}: section name table index {strndx} out of range")
        names_offset, names_size = headers[strndx][_SH_OFFSET], headers[strndx][_SH_SIZE]
        if names_offset + names_size > len(self.data):
            raise InputError(f"{self.path}: section name table runs past the end of the file")
        names = self.data[names_offset: names_offset + names_size]
        out = []
        for i, (sh_name, sh_type, flags, _addr, offset, size, link, info, addralign,
                entsize) in enumerate(headers):
            if i and sh_name >= max(len(names), 1):
                raise InputError(f"{self.path}: section {i}: name offset {sh_name} is outside "
                                 f"the section name table ({len(names)} bytes)")
            name = _cstr(names, sh_name) if i else ""
            sec = Section(i, name, sh_type, flags, offset, size, link, info, entsize, addralign)
            if sec.type != SHT_NOBITS and sec.offset + sec.size > len(self.data):
                raise InputError(f"{self.path}: section {name or i} ({sec.size} bytes at "
                                 f"{sec.offset}) runs past the end of the file ({len(self.data)} bytes)")
            out.append(sec)
        return out

    # --- access ------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        """The first section with this name."""
        return self._by_name.get(name)

    def sections_named(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    def section_at(self, index: int) -> Section | None:
        return self.sections[index] if 0 <= index < len(self.sections) else None

    def section_data(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        cached = self._data_cache.get(sec.index)
        if cached is None:
            cached = self._data_cache[sec.index] = self.data[sec.offset: sec.offset + sec.size]
        return cached

    @cached_property
    def symtab_section(self) -> Section | None:
        return next((s for s in self.sections if s.type == SHT_SYMTAB), None)

    @cached_property
    def symbol_table(self) -> SymbolTable:
        """The symbol table as records, read in place (see :class:`SymbolTable`)."""
        return SymbolTable(self)

    @cached_property
    def symbols(self) -> list[Symbol]:
        """Every symbol as a :class:`Symbol`, for the code that edits or resolves
        a handful of them; bulk readers walk :attr:`symbol_table` instead."""
        table = self.symbol_table
        records = list(table.records())
        names = table.names(range(len(records)), [rec[0] for rec in records])
        return [Symbol(i, names[i], value, size, info & ST_TYPE_MASK, info >> ST_BIND_SHIFT, shndx, other)
                for i, (_name_off, info, other, shndx, value, size) in enumerate(records)]

    def relocations(self, target: Section) -> tuple[Section | None, list[Relocation]]:
        """The REL/RELA section applying to ``target`` and its entries."""
        if target.index not in self._rel_cache:
            self._rel_cache[target.index] = self._read_relocations(target)
        return self._rel_cache[target.index]

    def _read_relocations(self, target: Section) -> tuple[Section | None, list[Relocation]]:
        sec = self.relocation_section(target)
        return (sec, self.decode_relocations(sec)) if sec is not None else (None, [])

    def relocation_section(self, target: Section) -> Section | None:
        """The REL/RELA section applying to ``target``, its entries not read."""
        return next((sec for sec in self.sections if sec.type in (SHT_REL, SHT_RELA) and sec.info == target.index),
                    None)

    def decode_relocations(self, sec: Section) -> list[Relocation]:
        rela = sec.type == SHT_RELA
        raw = self.section_data(sec)
        self._relocation_layout(sec, len(raw))
        if rela:
            return [Relocation(off, info & R_TYPE_MASK, info >> R_SYM_SHIFT, addend)
                    for off, info, addend in RELA.iter_unpack(raw)]
        return [Relocation(off, info & R_TYPE_MASK, info >> R_SYM_SHIFT, None)
                for off, info in REL.iter_unpack(raw)]

    def relocation_columns(self, sec: Section) -> RelocationColumns:
        """:meth:`decode_relocations` as columns, no object per record (the
        notes' relocations: one per probe site)."""
        raw = section_view(self, sec)
        stride = self._relocation_layout(sec, len(raw)).size // 8
        words = u64_words(raw)
        return RelocationColumns(words[0::stride], words[1::stride], words[2::stride] if stride > 2 else words[:0])

    def _relocation_layout(self, sec: Section, size: int) -> struct.Struct:
        layout = RELA if sec.type == SHT_RELA else REL
        if size % layout.size:
            raise InputError(f"{self.path}: {sec.name}: size {size} is not a multiple of {layout.size}")
        return layout

    @cached_property
    def btf(self) -> Btf | None:
        sec = self.section(".BTF")
        if sec is None:
            return None
        return parse_btf(self.section_data(sec))


def section_view(obj: BpfObject, sec: Section) -> memoryview:
    """A section's bytes without copying them (SHT_NOBITS: none).  The reader
    has checked that every section with bytes lies inside the file."""
    if sec.type == SHT_NOBITS:
        return memoryview(b"")
    return memoryview(obj.data)[sec.offset: sec.offset + sec.size]


class SymbolTable:
    """The one reader of the symbol table: records decoded with :data:`SYM`
    straight from the file's bytes, names looked up on demand, without a
    :class:`Symbol` per record or a copy of the tables (an object with 1M probe
    sites has 1M entry symbols, and most readers need a few fields of each)."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        sec = obj.symtab_section
        self.raw = section_view(obj, sec) if sec is not None else memoryview(b"")
        strtab = obj.section_at(sec.link) if sec is not None else None
        if sec is not None and strtab is None:
            raise InputError(f"{obj.path}: symbol table links to missing string table {sec.link}")
        self._data = obj.data
        self._names_start = strtab.offset if strtab is not None else 0
        self._names_len = len(section_view(obj, strtab)) if strtab is not None else 0
        if sec is not None and (sec.entsize not in (0, SYM.size) or len(self.raw) % SYM.size):
            raise InputError(f"{obj.path}: symbol table size {len(self.raw)} is not a multiple of {SYM.size}")
        self.count = len(self.raw) // SYM.size

    def records(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """(name offset, info, other, shndx, value, size) per symbol, index order."""
        return SYM.iter_unpack(self.raw)

    def record(self, index: int) -> tuple[int, int, int, int, int, int]:
        return SYM.unpack_from(self.raw, SYM.size * index)

    def name(self, index: int, name_off: int) -> str:
        if name_off and name_off >= self._names_len:
            raise InputError(f"{self.obj.path}: symbol {index}: name offset {name_off} is outside "
                             f"the string table ({self._names_len} bytes)")
        start, stop = self._names_start + name_off, self._names_start + self._names_len
        end = self._data.find(b"\0", start, stop)
        return self._data[start: end if end >= 0 else stop].decode("utf-8", errors="replace")

    def names(self, indices: Sequence[int], name_offs: Sequence[int]) -> list[str]:
        """:meth:`name` of many symbols at once (symbol ``indices[k]`` has its
        name at ``name_offs[k]``): one loop with no call per name."""
        data, first, size = self._data, self._names_start, self._names_len
        stop = first + size
        find = data.find
        if size and not data[stop - 1] and max(name_offs, default=0) < size:
            # A table ending in its NUL (as ELF has it) holds a NUL after every offset in it:
            # each name's end found, sliced and decoded by map in C, no Python step per name.
            starts = array("q", map(first.__add__, name_offs))
            pieces = map(data.__getitem__, map(slice, starts, map(find, itertools.repeat(b"\0"), starts)))
            return list(map(str, pieces, itertools.repeat("utf-8"), itertools.repeat("replace")))
        out = []
        for index, name_off in zip(indices, name_offs, strict=True):
            if name_off and name_off >= size:
                self.name(index, name_off)        # raises the one error message
            start = first + name_off
            end = find(b"\0", start, stop)
            out.append(data[start: end if end >= 0 else stop].decode("utf-8", errors="replace"))
        return out

    def has_prefix(self, name_off: int, prefix: bytes) -> bool:
        start = self._names_start + name_off
        return name_off < self._names_len and \
            self._data.startswith(prefix, start, self._names_start + self._names_len)

    def in_section(self, shndx: int, prefix: bytes) -> tuple[array[int], array[int], array[int]]:
        """(indices, values, name offsets) of the symbols of section ``shndx``
        whose names start with ``prefix``, in index order: read as columns
        of the table (:meth:`column`), no tuple per symbol, and a block of
        them (a compiler writes a section's symbols together) by slices.
        Lists of a million int objects were the peak of `check` on a million
        sites (60 MB for a moment): the columns kept are arrays."""
        # Copied into arrays (count and index in C, two or four bytes a symbol), not lists of ints.
        sections = array("H", self.column("H", SYM_SHNDX_U16).tobytes())
        names, values = self.column("I", SYM_NAME_U32), u64_words(self.raw)[1::_SYM_WORDS]
        count = sections.count(shndx)
        first = sections.index(shndx) if count else 0
        block = sections[first: first + count].count(shndx) == count
        indices = array("q", range(first, first + count)) if block else \
            array("q", itertools.compress(itertools.count(), map(shndx.__eq__, sections)))
        name_offs = array("q", array("I", names[first: first + count].tobytes())) if block else \
            array("q", map(names.__getitem__, indices))
        named = list(self._prefixed(prefix, name_offs))
        if block and all(named):
            return indices, array("Q", values[first: first + count]), name_offs
        kept = array("q", itertools.compress(indices, named))
        return kept, array("Q", map(values.__getitem__, kept)), array("q", itertools.compress(name_offs, named))

    def _prefixed(self, prefix: bytes, name_offs: Iterable[int]) -> Iterator[bool]:
        """has_prefix of each name offset, by map: startswith with the table's
        end as its end is False for an offset outside the table, as
        has_prefix's first test (the prefix is not empty)."""
        start, end = self._names_start, self._names_start + self._names_len
        return map(self._data.startswith, itertools.repeat(prefix), map(start.__add__, name_offs),
                   itertools.repeat(end))

    def column(self, code: Literal["H", "I"], field: int) -> memoryview:
        """Field ``field`` of each symbol record (:data:`SYM`) read as words of
        type ``code``: "I" (six a record: st_name, then st_info | st_other << 8
        | st_shndx << 16, ...) or "H" (st_shndx is the fourth of twelve), as
        the host reads the file's little-endian words."""
        words = _little_endian_words(self.raw, code)
        return words[field::SYM.size // words.itemsize]

    def columns(self) -> tuple[memoryview, memoryview, memoryview]:
        """(heads, values, sizes): the table as three u64 columns, record k
        being ``heads[k]`` (st_name | st_info << 32 | st_other << 40 |
        st_shndx << 48), ``values[k]`` and ``sizes[k]``."""
        words = u64_words(self.raw)
        return words[0::_SYM_WORDS], words[1::_SYM_WORDS], words[2::_SYM_WORDS]

    def section_indices(self) -> memoryview:
        """Each symbol's st_shndx, index order: its u16 column (:meth:`column`)."""
        return self.column("H", SYM_SHNDX_U16)

    def indices_of_type(self, stt: int) -> list[int]:
        """The indices of the symbols of type ``stt``, in order: a scan of the
        st_info byte column in C."""
        return list(itertools.compress(itertools.count(), self.info_bytes().translate(_is_type(stt))))

    def info_bytes(self) -> bytes:
        """Each symbol's st_info, index order: its byte column (one byte a record: no byte order)."""
        return bytes(self.raw[_ST_INFO_BYTE::SYM.size])

    def of_type(self, stt: int) -> list[tuple[str, int, int]]:
        """(name, shndx, value) of every symbol of type ``stt``, index order:
        a column scan, no tuple per symbol of the million entry symbols."""
        heads, values, _ = self.columns()
        indices = self.indices_of_type(stt)
        names = self.names(indices, [heads[i] & _U32_MASK for i in indices])
        return [(name, heads[i] >> _SYM_SHNDX_SHIFT, values[i]) for name, i in zip(names, indices, strict=True)]

    def names_are_ascii(self) -> bool:
        """Whether every name the table can give is ASCII and inside the
        string table: then none decodes with U+FFFD and :meth:`name` raises
        for none, known from one scan of the bytes instead of a name per symbol."""
        if max(self.column("I", SYM_NAME_U32), default=0) >= max(self._names_len, 1):
            return False
        return self._data[self._names_start: self._names_start + self._names_len].isascii()


@functools.cache
def _is_type(stt: int) -> bytes:
    """The bytes.translate table taking an st_info byte to 1 if its type is
    ``stt``, else 0: a scan of the st_info column in C."""
    return bytes(int(info & ST_TYPE_MASK == stt) for info in range(256))


def load_object(path: str | Path) -> BpfObject:
    data = read_regular(str(path), MAX_OBJECT_SIZE, "BPF object")
    if data[:4] != b"\x7fELF":
        raise InputError(f"{path}: not an ELF file")
    return BpfObject(str(path), data)


def _cstr(table: bytes, off: int) -> str:
    if off >= len(table):
        return ""
    end = table.find(b"\0", off)
    return table[off: end if end >= 0 else len(table)].decode("utf-8", errors="replace")


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


# --- writing -----------------------------------------------------------------


class PackedRelocations:
    """REL/RELA records kept as columns instead of a :class:`Relocation` per
    record: the notes of a million sites have a million, and a stripped copy
    of an input keeps its ``.rel.BTF.ext``, about one per site.  Record k is
    ``offsets[k]``, ``infos[k]`` (symbol index in the image's numbering <<
    R_SYM_SHIFT | type) and, RELA only, ``addends[k]`` (as u64)."""

    __slots__ = ("offsets", "infos", "addends")

    def __init__(self, offsets: array[int], infos: array[int], addends: array[int] | None) -> None:
        self.offsets = offsets
        self.infos = infos
        self.addends = addends

    @classmethod
    def read(cls, obj: BpfObject, sec: Section) -> PackedRelocations:
        """A REL/RELA section's records as they are in the file."""
        columns = obj.relocation_columns(sec)
        return cls(array("Q", columns.offsets), array("Q", columns.infos),
                   array("Q", columns.addends) if sec.type == SHT_RELA else None)

    def __len__(self) -> int:
        return len(self.offsets)

    def symbols(self) -> set[int]:
        """The symbol indices the records name."""
        return {info >> R_SYM_SHIFT for info in set(self.infos)}     # few distinct r_info words

    def renumbered(self, new_index: dict[int, int]) -> PackedRelocations:
        """The records with symbol i renamed new_index[i] (every symbol they
        name must have one); the same object when nothing changes."""
        # Records name few distinct (symbol, type) pairs: each is renamed once, then looked up in C.
        renamed = {info: r_info(new_index[info >> R_SYM_SHIFT], info & R_TYPE_MASK) for info in set(self.infos)}
        if all(new == old for old, new in renamed.items()):
            return self
        return PackedRelocations(self.offsets, array("Q", map(renamed.__getitem__, self.infos)), self.addends)

    def extended(self, more: PackedRelocations) -> PackedRelocations:
        if self.addends is None and more.addends is None:
            return PackedRelocations(self.offsets + more.offsets, self.infos + more.infos, None)
        mine, theirs = self.with_addends().addends, more.with_addends().addends
        assert mine is not None and theirs is not None
        return PackedRelocations(self.offsets + more.offsets, self.infos + more.infos, mine + theirs)

    def with_addends(self) -> PackedRelocations:
        """As RELA records: REL ones get addend 0 (what a Relocation without
        an addend writes into a RELA section)."""
        if self.addends is not None:
            return self
        return PackedRelocations(self.offsets, self.infos, array("Q", bytes(8 * len(self))))

    def encode(self) -> bytes:
        """The records in :data:`REL` or :data:`RELA` layout."""
        columns = [self.offsets, self.infos] if self.addends is None else [self.offsets, self.infos, self.addends]
        return interleave_words(columns)


def interleave_words(columns: Sequence[array[int]]) -> bytes:
    """Equal-length u64 columns as little-endian records of one word per
    column: one slice assignment per column, no call per record."""
    stride = len(columns)
    words = array("Q", [0]) * (stride * len(columns[0]))
    for k, column in enumerate(columns):
        words[k::stride] = column
    if sys.byteorder != "little":
        words.byteswap()
    return words.tobytes()


class SecRec:
    """A section being written: its header fields and bytes (or relocations)."""

    __slots__ = ("name", "type", "flags", "data", "link", "info", "addralign", "entsize", "relocs",
                 "packed", "nobits_size")

    def __init__(self, name: str, type: int, flags: int, data: bytes, link: int = 0, info: int = 0,
                 addralign: int = 1, entsize: int = 0, relocs: list[Relocation] | None = None,
                 nobits_size: int = 0, packed: PackedRelocations | None = None) -> None:
        self.name = name
        self.type = type
        self.flags = flags
        self.data = data
        self.link = link                # index into the image's sections (remapped on write)
        self.info = info
        self.addralign = addralign
        self.entsize = entsize
        self.relocs = relocs            # REL/RELA kept decoded
        self.packed = packed            # REL/RELA kept as columns, written after relocs
        self.nobits_size = nobits_size  # SHT_NOBITS: the size it occupies at load time

    @property
    def size(self) -> int:
        return self.nobits_size if self.type == SHT_NOBITS else len(self.data)

    @property
    def is_relocations(self) -> bool:
        return self.relocs is not None or self.packed is not None


class SymRec:
    """A symbol being written.  Slots, no __dict__: an image holds one per
    symbol, a million for 1M sites."""

    __slots__ = ("name", "value", "size", "info", "other", "shndx")
    width = 1           # symbols it writes (SymbolRun: many)

    def __init__(self, name: str, value: int, size: int, info: int, other: int, shndx: int) -> None:
        self.name = name
        self.value = value
        self.size = size
        self.info = info
        self.other = other
        self.shndx = shndx      # index into the image's sections, or a reserved index

    @property
    def bind(self) -> int:
        return self.info >> ST_BIND_SHIFT

    @property
    def type(self) -> int:
        return self.info & ST_TYPE_MASK


class SymbolRun(SymRec):
    """Consecutive local STT_NOTYPE symbols of size 0 in one section, one
    element of :attr:`ElfImage.symbols` that writes ``len(names)`` records:
    the entry symbols of a notes section, the labels of the calls section.
    Nothing refers to them by index, so they need no index of their own."""

    __slots__ = ("names", "values")

    def __init__(self, names: list[str], values: array[int], shndx: int) -> None:
        super().__init__("", 0, 0, st_info(STB_LOCAL, STT_NOTYPE), 0, shndx)
        self.names = names
        self.values = values

    @property
    def width(self) -> int:     # type: ignore[override]  # a property where SymRec has a constant
        return len(self.names)


class ElfImage:
    """An object being written: sections and symbols, laid out by to_bytes."""

    def __init__(self, ident: bytes, e_type: int, e_machine: int, e_flags: int) -> None:
        self.ident = ident
        self.e_type = e_type
        self.e_machine = e_machine
        self.e_flags = e_flags
        self.sections: list[SecRec] = []     # [0] is the null section
        self.symbols: list[SymRec] = []      # [0] is the null symbol

    # --- reading ------------------------------------------------------------

    @classmethod
    def from_object(cls, obj: BpfObject, packed_relocations: bool = False) -> ElfImage:
        """Every section and symbol of ``obj``, at its index; with
        ``packed_relocations`` the REL/RELA sections as columns
        (:attr:`SecRec.packed`), not a Relocation per record."""
        img = cls(obj.data[:EI_NIDENT], ET_REL, EM_BPF, obj.e_flags)
        for s in obj.sections:
            _check_alignment(obj, s)
            rec = _section_record(obj, s)
            if s.type in (SHT_REL, SHT_RELA):
                _check_relocation_target(obj, s)
                if packed_relocations:
                    _check_relocation_symbols(obj, s, len(obj.symbols))
                    rec.data, rec.packed = b"", PackedRelocations.read(obj, s)
                else:
                    rec.relocs = obj.decode_relocations(s)
                    bad = next((r for r in rec.relocs if r.symbol >= len(obj.symbols)), None)
                    if bad is not None:
                        raise _unknown_symbol(obj, s, bad.offset, bad.symbol)
            img.sections.append(rec)
        img.symbols = [SymRec(s.name, s.value, s.size, st_info(s.bind, s.type), s.other, s.shndx)
                       for s in obj.symbols]
        if not img.symbols:
            raise InputError(f"{obj.path}: no symbol table")
        return img

    @classmethod
    def without_sections(cls, obj: BpfObject, removed: set[int]) -> ElfImage:
        """``from_object(obj)`` then ``remove_section_indices(removed)``: the
        same image and the same refusals, built without a SymRec for each
        symbol it drops or a Relocation per record it keeps (an input of a
        million sites has a million entry symbols, and about as many
        ``.rel.BTF.ext`` records)."""
        img = cls(obj.data[:EI_NIDENT], ET_REL, EM_BPF, obj.e_flags)
        table = obj.symbol_table
        for s in obj.sections:        # what from_object refuses, in its order
            _check_alignment(obj, s)
            if s.type in (SHT_REL, SHT_RELA):
                _check_relocation_target(obj, s)
                _check_relocation_symbols(obj, s, table.count)
        if not table.count:
            raise InputError(f"{obj.path}: no symbol table")
        doomed = _removal_closure([(s.type, s.info) for s in obj.sections], removed)
        sec_map = _kept_indices(len(obj.sections), doomed)
        heads, values, sizes = table.columns()
        kept = list(itertools.compress(itertools.count(), map(operator.not_, map(
            doomed.__contains__, table.section_indices()))))     # in C: a million entry symbols
        names = table.names(kept, [heads[i] & _U32_MASK for i in kept])
        sym_map = {old: new for new, old in enumerate(kept)}
        for name, i in zip(names, kept, strict=True):
            head = heads[i]
            shndx = head >> _SYM_SHNDX_SHIFT
            if not is_reserved_index(shndx):
                if shndx not in sec_map:
                    raise InputError(f"{obj.path}: symbol {name or i} is in section {shndx}, which does not exist")
                shndx = sec_map[shndx]
            img.symbols.append(SymRec(name, values[i], sizes[i], head >> _SYM_INFO_SHIFT & _U8_MASK,
                                      head >> _SYM_OTHER_SHIFT & _U8_MASK, shndx))
        for s in obj.sections:
            if s.index in doomed:
                continue
            rec = _section_record(obj, s)
            if s.type in (SHT_REL, SHT_RELA, SHT_SYMTAB):
                rec.link = sec_map.get(s.link, 0)
            if s.type in (SHT_REL, SHT_RELA):
                rec.info = sec_map[s.info]
                packed = PackedRelocations.read(obj, s)
                if not packed.symbols() <= sym_map.keys():
                    raise _removed_symbol(s.name)
                rec.data, rec.packed = b"", packed.renumbered(sym_map)
            img.sections.append(rec)
        return img

    def index_of(self, name: str) -> int | None:
        return next((i for i, s in enumerate(self.sections) if s.name == name), None)

    @property
    def symtab_index(self) -> int:
        return next(i for i, s in enumerate(self.sections) if s.type == SHT_SYMTAB)

    def rel_section_for(self, sec_index: int) -> int | None:
        return next((i for i, s in enumerate(self.sections)
                     if s.type in (SHT_REL, SHT_RELA) and s.info == sec_index), None)

    def section_symbol(self, sec_index: int) -> int:
        """Index of the STT_SECTION symbol for a section, adding one if missing."""
        for i, s in enumerate(self.symbols):
            if s.shndx == sec_index and s.type == STT_SECTION:
                return i
        self.symbols.append(SymRec("", 0, 0, STT_SECTION, 0, sec_index))
        return len(self.symbols) - 1

    # --- editing --------------------------------------------------------------

    def remove_sections(self, names: set[str]) -> None:
        """Drop sections by name, with their relocation sections and the symbols
        defined in them.  Relocations elsewhere must not refer to those symbols."""
        self.remove_section_indices({i for i, s in enumerate(self.sections) if i and s.name in names})

    def remove_section_indices(self, doomed: set[int]) -> None:
        """:meth:`remove_sections` by index."""
        doomed = _removal_closure([(s.type, s.info) for s in self.sections], doomed)
        if not doomed:
            return
        sec_map = _kept_indices(len(self.sections), doomed)
        kept = [s for i, s in enumerate(self.sections) if i not in doomed]
        sym_map: dict[int, int] = {}
        kept_syms: list[SymRec] = []
        for i, sym in enumerate(self.symbols):
            if not is_reserved_index(sym.shndx) and sym.shndx in doomed:
                continue
            sym_map[i] = len(kept_syms)
            if not is_reserved_index(sym.shndx):
                sym.shndx = sec_map[sym.shndx]
            kept_syms.append(sym)
        for s in kept:
            if s.type in (SHT_REL, SHT_RELA, SHT_SYMTAB):
                s.link = sec_map.get(s.link, 0)
            if s.type in (SHT_REL, SHT_RELA):
                s.info = sec_map[s.info]
                assert s.is_relocations
                if s.relocs is not None:
                    if any(r.symbol not in sym_map for r in s.relocs):
                        raise _removed_symbol(s.name)
                    s.relocs = [Relocation(r.offset, r.type, sym_map[r.symbol], r.addend) for r in s.relocs]
                if s.packed is not None:
                    if not s.packed.symbols() <= sym_map.keys():
                        raise _removed_symbol(s.name)
                    s.packed = s.packed.renumbered(sym_map)
        self.sections, self.symbols = kept, kept_syms

    def add_section(self, rec: SecRec) -> int:
        """Append a section; returns its index."""
        self.sections.append(rec)
        return len(self.sections) - 1

    # --- writing --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        order, n_locals = self._symbol_order()
        new_index: dict[int, int] = {}      # image index -> index written (a run writes many)
        written = 0
        for old in order:
            new_index[old] = written
            written += self.symbols[old].width
        symtab_i = self.symtab_index
        strtab_i = self.sections[symtab_i].link
        shstr_i = next((i for i, s in enumerate(self.sections)
                        if s.type == SHT_STRTAB and s.name == ".shstrtab"), None)
        if shstr_i is None:
            shstr_i = self.add_section(SecRec(".shstrtab", SHT_STRTAB, 0, b""))

        strtab = _StringTable()
        sym_bytes = bytearray(SYM.size * written)
        pack_into, add, symbols = SYM.pack_into, strtab.add, self.symbols
        for old in order:
            s = symbols[old]
            if isinstance(s, SymbolRun):
                _write_run(sym_bytes, new_index[old], s, strtab)
                continue
            pack_into(sym_bytes, SYM.size * new_index[old], add(s.name) if s.name else 0, s.info, s.other,
                      s.shndx, s.value, s.size)
        sym_rec = self.sections[symtab_i]
        sym_rec.data, sym_rec.info, sym_rec.entsize = bytes(sym_bytes), n_locals, SYM.size
        del sym_bytes       # a million symbols: 24 MB not to hold twice while the file is joined
        sym_rec.addralign = max(sym_rec.addralign, TABLE_ALIGN)
        self.sections[strtab_i].data = strtab.bytes()

        for sec in self.sections:
            if sec.is_relocations:
                rela = sec.type == SHT_RELA
                sec.data = _encode_relocations(sec.relocs or [], rela, new_index)
                if sec.packed is not None:
                    packed = sec.packed.with_addends() if rela else \
                        PackedRelocations(sec.packed.offsets, sec.packed.infos, None)   # REL: addends in place
                    sec.data += packed.renumbered(new_index).encode()
                sec.link, sec.entsize = symtab_i, (RELA if rela else REL).size
                sec.addralign = max(sec.addralign, TABLE_ALIGN)

        shstr = _StringTable()
        name_offs = [shstr.add(sec.name) if i else 0 for i, sec in enumerate(self.sections)]
        self.sections[shstr_i].data = shstr.bytes()

        parts: list[bytes] = [b""]          # the ELF header, packed last; one join, no growing buffer
        offsets = [0] * len(self.sections)
        at = EHDR.size
        for i, sec in enumerate(self.sections):
            if not i:
                continue
            pad = -at % max(sec.addralign, 1)
            parts.append(bytes(pad))
            offsets[i] = at = at + pad
            if sec.type != SHT_NOBITS:
                parts.append(sec.data)
                at += len(sec.data)
        parts.append(bytes(-at % TABLE_ALIGN))
        shoff = at + -at % TABLE_ALIGN
        parts.append(bytes(SHDR.size))                 # the null section header
        parts += [SHDR.pack(name_offs[i], sec.type, sec.flags, 0, offsets[i], sec.size,
                            sec.link, sec.info, sec.addralign, sec.entsize)
                  for i, sec in enumerate(self.sections[1:], 1)]
        parts[0] = EHDR.pack(self.ident, self.e_type, self.e_machine, EV_CURRENT, 0, 0, shoff,
                             self.e_flags, EHDR.size, 0, 0, SHDR.size, len(self.sections), shstr_i)
        return b"".join(parts)

    def _symbol_order(self) -> tuple[list[int], int]:
        """The symbols' indices as written (the null symbol, the locals, then
        the others, each in index order, as ELF wants locals first) and the
        number of locals written with the null symbol."""
        if not self.symbols:
            return [], 0
        local: list[int] = [0]
        other: list[int] = []
        for i, s in enumerate(self.symbols[1:], 1):
            (local if s.bind == STB_LOCAL else other).append(i)
        n_locals = sum(self.symbols[i].width for i in local)
        return local + other, n_locals - (self.symbols[0].bind != STB_LOCAL)


def _check_alignment(obj: BpfObject, s: Section) -> None:
    if s.addralign > MAX_ALIGN or s.addralign & (s.addralign - 1):
        # the writer pads to it: 2**40 would be a terabyte of zeros
        raise InputError(f"{obj.path}: section {s.name}: alignment {s.addralign} is not a "
                         f"power of two up to {MAX_ALIGN}")


def _check_relocation_target(obj: BpfObject, s: Section) -> None:
    if obj.section_at(s.info) is None:
        raise InputError(f"{obj.path}: {s.name} applies to missing section {s.info}")


def _check_relocation_symbols(obj: BpfObject, s: Section, count: int) -> None:
    """Every record names an existing symbol (the writer renumbers symbols:
    it must know each one); the first that does not is refused."""
    infos = obj.relocation_columns(s).infos
    if not len(infos) or max(infos) >> R_SYM_SHIFT < count:     # the largest r_info has the largest symbol
        return
    k = next(k for k, info in enumerate(infos) if info >> R_SYM_SHIFT >= count)
    raise _unknown_symbol(obj, s, obj.relocation_columns(s).offsets[k], infos[k] >> R_SYM_SHIFT)


def _unknown_symbol(obj: BpfObject, s: Section, offset: int, symbol: int) -> InputError:
    return InputError(f"{obj.path}: {s.name}: relocation at {offset:#x} names symbol {symbol}, "
                      "which does not exist")


def _removed_symbol(rel_name: str) -> InputError:
    return InputError(f"a relocation in {rel_name} refers to a symbol in a removed section")


def _section_record(obj: BpfObject, s: Section) -> SecRec:
    return SecRec(s.name, s.type, s.flags, obj.section_data(s), s.link, s.info,
                  s.addralign, s.entsize, nobits_size=s.size if s.type == SHT_NOBITS else 0)


def _removal_closure(sections: Sequence[tuple[int, int]], doomed: set[int]) -> set[int]:
    """The section indices a removal of ``doomed`` takes, given each
    section's (type, info): the address-significance table too (it lists
    symbol indices, which change), and the relocations of whatever goes."""
    doomed = {i for i in doomed if i}
    doomed |= {i for i, (sh_type, _) in enumerate(sections) if sh_type == SHT_LLVM_ADDRSIG}
    while True:   # relocations for whatever goes (also for relocation sections) go too
        more = {i for i, (sh_type, info) in enumerate(sections)
                if sh_type in (SHT_REL, SHT_RELA) and info in doomed} - doomed
        if not more:
            return doomed
        doomed |= more


def _kept_indices(count: int, doomed: set[int]) -> dict[int, int]:
    """Old section index -> new one, for the sections that stay."""
    return {old: new for new, old in enumerate(i for i in range(count) if i not in doomed)}


def _write_run(sym_bytes: bytearray, at: int, run: SymbolRun, strtab: _StringTable) -> None:
    """A run's symbol records (:data:`SYM` as three u64 words each) into the
    table at record ``at``, by column: no call per record."""
    tail = run.info << _SYM_INFO_SHIFT | run.other << _SYM_OTHER_SHIFT | run.shndx << _SYM_SHNDX_SHIFT
    heads = array("Q", map(tail.__or__, strtab.add_many(run.names)))
    if sys.byteorder != "little":
        sym_bytes[SYM.size * at: SYM.size * (at + len(heads))] = \
            interleave_words([heads, run.values, array("Q", bytes(8 * len(heads)))])
        return
    with memoryview(sym_bytes) as view, view.cast("Q") as words:
        block = words[_SYM_WORDS * at: _SYM_WORDS * (at + len(heads))]
        block[0::_SYM_WORDS] = heads        # sizes (the third word) stay 0
        block[1::_SYM_WORDS] = run.values
        block.release()


def _encode_relocations(relocs: list[Relocation], rela: bool, new_index: dict[int, int]) -> bytes:
    layout = RELA if rela else REL
    out = bytearray(layout.size * len(relocs))
    pack_into, size = layout.pack_into, layout.size
    for k, r in enumerate(relocs):
        info = r_info(new_index[r.symbol], r.type)
        if rela:
            pack_into(out, size * k, r.offset, info, r.addend or 0)
        else:
            pack_into(out, size * k, r.offset, info)
    return bytes(out)


class _StringTable:
    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, s: str) -> int:
        if s not in self._offsets:
            self._offsets[s] = len(self._data)
            self._data += s.encode() + b"\0"
        return self._offsets[s]

    def add_many(self, names: Sequence[str]) -> list[int]:
        """:meth:`add` of each name in turn, in bulk: the new names (first
        occurrences, in order) are appended as one join."""
        offsets = self._offsets
        fresh = [name for name in dict.fromkeys(names) if name not in offsets]
        if fresh:
            joined = "\0".join(fresh) + "\0"
            encoded = joined.encode()
            lengths = map(len, fresh) if len(encoded) == len(joined) else (len(n.encode()) for n in fresh)
            starts = itertools.accumulate((n + 1 for n in lengths), initial=len(self._data))
            offsets.update(zip(fresh, starts, strict=False))   # the last start is the end: one more
            self._data += encoded
        return list(map(offsets.__getitem__, names))

    def bytes(self) -> bytes:
        return bytes(self._data)

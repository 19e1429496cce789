"""Read a BPF ELF object: sections, symbols, relocations, BTF.

pyelftools parses the ELF header and the section header table (where the
structure is subtle); the flat arrays that can hold tens of thousands of
records (symbols, relocations) are decoded in bulk with ``struct``, since a
per-record parse would dominate ``check`` on large objects.

The file is untrusted.  Every size and offset is checked against the real
file length before anything is read, so a section claiming 4 GB costs
nothing, and any malformation becomes an :class:`InputError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.structs import ELFStructs

from bpf_sdt.btf import Btf, parse_btf
from bpf_sdt.errors import InputError

EM_BPF = 247
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9
SHF_EXECINSTR = 0x4
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
STT_FUNC = 2
STT_SECTION = 3
MAX_FILE_SIZE = 1 << 30

# Exceptions pyelftools (and its construct layer) raise on malformed input.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ELFError, ELFParseError, struct.error, ValueError, IndexError, KeyError,
    UnicodeDecodeError, OverflowError, AssertionError, TypeError, AttributeError,
)
try:  # construct's own errors, where the installed version exposes them
    from elftools.construct.core import ConstructError

    _PARSE_ERRORS += (ConstructError,)
except ImportError:  # pragma: no cover - depends on the pyelftools version
    pass


@dataclass(frozen=True)
class Section:
    index: int
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
    other: int = 0      # st_other (visibility), kept so a rewrite can preserve it


class Relocation(NamedTuple):
    offset: int
    type: int
    symbol: int
    addend: int | None      # RELA only; REL keeps the addend in place


class BpfObject:
    """One BPF ELF relocatable object, read fully into memory."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data
        try:
            structs, header = self._parse_header()
            self.sections = self._read_sections(structs, header)
        except InputError:
            raise
        except _PARSE_ERRORS as e:
            raise InputError(f"{path}: not a readable ELF object ({_reason(e)})") from None
        self._by_name = {s.name: s for s in self.sections}
        self._data_cache: dict[int, bytes] = {}
        self._rel_cache: dict[int, tuple[Section | None, list[Relocation]]] = {}

    # --- construction ------------------------------------------------------

    def _parse_header(self) -> tuple[ELFStructs, dict]:  # type: ignore[type-arg]
        """pyelftools' ELF structures (not ELFFile, which also loads DWARF support
        and costs a third of `check`'s start-up)."""
        ident = self.data[:16]
        if len(self.data) < 64:
            raise InputError(f"{self.path}: {len(self.data)} bytes is shorter than an ELF header")
        if ident[4] != 2:
            raise InputError(f"{self.path}: ELF class {ident[4]}, BPF objects are 64-bit")
        if ident[5] != 1:
            raise InputError(f"{self.path}: big-endian BPF objects are not supported")
        structs = ELFStructs(little_endian=True, elfclass=64)
        structs.create_basic_structs()
        header = structs.Elf_Ehdr.parse(self.data)
        if header["e_machine"] not in ("EM_BPF", EM_BPF):
            raise InputError(f"{self.path}: not a BPF object (e_machine {header['e_machine']})")
        if header["e_type"] != "ET_REL":
            raise InputError(f"{self.path}: {header['e_type']}, expected a relocatable object (ET_REL)")
        structs.create_advanced_structs(header["e_type"], header["e_machine"],
                                        header["e_ident"]["EI_OSABI"])
        return structs, header

    def _read_sections(self, structs: ELFStructs, header: dict) -> list[Section]:  # type: ignore[type-arg]
        shoff, shnum, shentsize = header["e_shoff"], header["e_shnum"], header["e_shentsize"]
        if shoff == 0 or shnum == 0:
            raise InputError(f"{self.path}: no section header table")
        if shentsize != 64 or shoff + shnum * 64 > len(self.data):
            raise InputError(f"{self.path}: section header table ({shnum} x {shentsize} bytes at "
                             f"{shoff}) runs past the end of the file ({len(self.data)} bytes)")
        headers = [structs.Elf_Shdr.parse(self.data[shoff + 64 * i: shoff + 64 * (i + 1)])
                   for i in range(shnum)]
        strndx = header["e_shstrndx"]
        if not 0 < strndx < shnum:
            raise InputError(f"{self.path}: section name table index {strndx} out of range")
        names_h = headers[strndx]
        if names_h["sh_offset"] + names_h["sh_size"] > len(self.data):
            raise InputError(f"{self.path}: section name table runs past the end of the file")
        names = self.data[names_h["sh_offset"]: names_h["sh_offset"] + names_h["sh_size"]]
        out = []
        for i, h in enumerate(headers):
            name = _cstr(names, h["sh_name"]) if i else ""
            sec = Section(i, name, _sh_type(h["sh_type"]), h["sh_flags"], h["sh_offset"],
                          h["sh_size"], h["sh_link"], h["sh_info"], h["sh_entsize"], h["sh_addralign"])
            if sec.type != SHT_NOBITS and sec.offset + sec.size > len(self.data):
                raise InputError(f"{self.path}: section {name or i} ({sec.size} bytes at "
                                 f"{sec.offset}) runs past the end of the file ({len(self.data)} bytes)")
            out.append(sec)
        return out

    # --- access ------------------------------------------------------------

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

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
    def symbols(self) -> list[Symbol]:
        sec = self.symtab_section
        if sec is None:
            return []
        strtab = self.section_at(sec.link)
        if strtab is None:
            raise InputError(f"{self.path}: symbol table links to missing string table {sec.link}")
        names = self.section_data(strtab)
        raw = self.section_data(sec)
        if sec.entsize not in (0, 24) or len(raw) % 24:
            raise InputError(f"{self.path}: symbol table size {len(raw)} is not a multiple of 24")
        return [Symbol(i, _cstr(names, name_off), value, size, info & 0xF, info >> 4, shndx, other)
                for i, (name_off, info, other, shndx, value, size)
                in enumerate(struct.iter_unpack("<IBBHQQ", raw))]

    def relocations(self, target: Section) -> tuple[Section | None, list[Relocation]]:
        """The REL/RELA section applying to ``target`` and its entries."""
        if target.index not in self._rel_cache:
            self._rel_cache[target.index] = self._read_relocations(target)
        return self._rel_cache[target.index]

    def _read_relocations(self, target: Section) -> tuple[Section | None, list[Relocation]]:
        for sec in self.sections:
            if sec.type in (SHT_REL, SHT_RELA) and sec.info == target.index:
                rela = sec.type == SHT_RELA
                width = 24 if rela else 16
                raw = self.section_data(sec)
                if len(raw) % width:
                    raise InputError(f"{self.path}: {sec.name}: size {len(raw)} is not a "
                                     f"multiple of {width}")
                fmt = "<QQq" if rela else "<QQ"
                rels = []
                for rec in struct.iter_unpack(fmt, raw):
                    rels.append(Relocation(rec[0], rec[1] & 0xFFFFFFFF, rec[1] >> 32,
                                           rec[2] if rela else None))
                return sec, rels
        return None, []

    @cached_property
    def btf(self) -> Btf | None:
        sec = self.section(".BTF")
        if sec is None:
            return None
        return parse_btf(self.section_data(sec))

    def functions_in(self, sec: Section) -> list[Symbol]:
        return sorted((s for s in self.symbols if s.shndx == sec.index and s.type == STT_FUNC),
                      key=lambda s: s.value)


def load_object(path: str | Path) -> BpfObject:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_SIZE:
            raise InputError(f"{p}: {size} bytes is larger than any BPF object should be")
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory") from None
    except OSError as e:
        raise InputError(f"{p}: {e.strerror or e}") from None
    if data[:4] != b"\x7fELF":
        raise InputError(f"{p}: not an ELF file")
    return BpfObject(str(p), data)


def _sh_type(value: object) -> int:
    names = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3, "SHT_RELA": 4,
             "SHT_NOBITS": 8, "SHT_REL": 9}
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    return -1


def _cstr(table: bytes, off: int) -> str:
    if off >= len(table):
        return ""
    end = table.find(b"\0", off)
    return table[off: end if end >= 0 else len(table)].decode("utf-8", errors="replace")


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]

"""Fuzz target and object generators shared by the tests and bench/fuzz.py.

``one_input`` feeds any bytes to everything that reads objects: the reader,
``check``, ``list`` (decoding, sites, text and JSON rendering) and the part
of ``link`` that runs on each input before the linker (prototype checks,
sites, stripping the notes).  The only acceptable outcomes are a result or an
:class:`InputError`; anything else is a crash.

``mutate`` mixes random byte mutations with field-targeted ones that aim at
the structures the readers trust least: section headers, symbols, string
offsets, relocations, notes entries and BTF type records.

``instrument_input`` feeds a linked object (a target and its observers, as
`instrument` links them) to instrument's analyses and rewriter, in process
and without writing: the acceptable outcomes are a rewritten object or a
one-line :class:`BpfSdtError` (a finding or a refusal).  ``mutate_code``
aims at the instructions themselves, which the analyses read.

``synthetic_object`` builds a probe object directly with
:class:`bpf_sdt.elf.ElfImage` (no compiler): ``many_sites_object`` uses it
for objects with up to a million sites.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bpf_sdt.postlink.check import analyze
from bpf_sdt.postlink.commands import _cells, broken_entries
from bpf_sdt.postlink.link import _check_prototypes, strip_notes

from bpf_sdt.elf import (
    EHDR,
    EM_BPF,
    ET_REL,
    R_BPF_64_ABS64,
    REL,
    SHDR,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHT_PROGBITS,
    SHT_REL,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    SYM,
    BpfObject,
    ElfImage,
    Relocation,
    SecRec,
    SymRec,
)
from bpf_sdt.errors import BpfSdtError, InputError
from bpf_sdt.format import NOP_INSN, NOTES_REL_SECTION, NOTES_SECTION
from bpf_sdt.model import ArgLocation
from bpf_sdt.notes import encode_entry

EXIT_INSN = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])


def one_input(data: bytes) -> str:
    """Returns 'ok' or 'rejected'; raises on a crash."""
    try:
        obj = BpfObject("fuzz.o", data)
        report = analyze(obj)
        for s in report.iter_sites():                 # list: table and JSON
            s.to_json()
            s.json_text()
            _cells(s)
        broken_entries(report)
        for f in report.findings:
            f.render()
            f.to_json()
        if not report.errors:                         # link: what it does to each input
            _check_prototypes([report])
            report.table.notes_order_chains()
            BpfObject("stripped.o", strip_notes(obj))
        return "ok"
    except InputError:
        return "rejected"


def instrument_input(data: bytes) -> str:
    """'ok' or 'rejected' for instrument's rewrite of a linked object; raises on a crash."""
    from bpf_sdt.instrument.commands import Request, _rewrite
    from bpf_sdt.instrument.observers import find_observers

    try:
        obj = BpfObject("fuzz.o", data)
        names = [d.name for d in find_observers(obj)]
        probes = {e.probe for e in analyze(obj).decoding.entries}
        plan = {p: names for p in sorted(probes)}
        _rewrite(obj, plan, Request(Path("fuzz.o"), Path("fuzz.out.o"), skip_unplaceable=True))
        return "ok"
    except BpfSdtError:
        return "rejected"


INSN_BYTES = 8


def mutate_code(seed_data: bytes, rng: random.Random) -> bytes:
    """Change instructions of the executable sections: opcodes, registers,
    offsets and immediates, the fields instrument's analyses decide on."""
    data = bytearray(seed_data)
    code = [(off, size) for off, size in _exec_sections(seed_data) if size >= INSN_BYTES]
    if not code:
        return bytes(data)
    for _ in range(rng.randint(1, 4)):
        off, size = rng.choice(code)
        at = off + INSN_BYTES * rng.randrange(size // INSN_BYTES)
        field_choice = rng.randrange(4)
        if field_choice == 0:
            data[at] = rng.randrange(256)                               # opcode
        elif field_choice == 1:
            data[at + 1] = rng.randrange(256)                           # dst and src registers
        elif field_choice == 2:
            struct.pack_into("<H", data, at + 2, _value(rng, 16))       # offset
        else:
            struct.pack_into("<I", data, at + 4, _value(rng, 32))       # immediate
    return bytes(data)


def _exec_sections(data: bytes) -> list[tuple[int, int]]:
    if len(data) < EHDR.size:
        return []
    shoff, shnum = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<H", data, 0x3C)[0]
    out = []
    for i in range(shnum):
        at = shoff + SHDR.size * i
        if at + SHDR.size > len(data):
            break
        _name, typ, flags, _addr, off, size, *_ = SHDR.unpack_from(data, at)
        if typ == SHT_PROGBITS and flags & SHF_EXECINSTR and off + size <= len(data):
            out.append((off, size))
    return out


# --- mutations -----------------------------------------------------------------


@dataclass
class Layout:
    """Where the interesting fields of a seed object are (read once per seed)."""

    shoff: int = 0
    shnum: int = 0
    sections: list[tuple[int, int, int, int]] = field(default_factory=list)  # (type, offset, size, entsize)
    btf_types: list[int] = field(default_factory=list)      # file offsets of BTF type records


def layout_of(data: bytes) -> Layout:
    out = Layout()
    if len(data) < EHDR.size:
        return out
    out.shoff, out.shnum = struct.unpack_from("<Q", data, 0x28)[0], struct.unpack_from("<H", data, 0x3C)[0]
    for i in range(out.shnum):
        off = out.shoff + SHDR.size * i
        if off + SHDR.size > len(data):
            break
        _name, typ, _flags, _addr, s_off, s_size, _link, _info, _align, entsize = SHDR.unpack_from(data, off)
        out.sections.append((typ, s_off, s_size, entsize))
    out.btf_types = _btf_type_offsets(data, out)
    return out


def _btf_type_offsets(data: bytes, lay: Layout) -> list[int]:
    """File offsets of the BTF type records, walked with the record sizes."""
    try:
        obj = BpfObject("seed.o", data)
        sec = obj.section(".BTF")
        if sec is None:
            return []
        base = sec.offset
        hdr_len, type_off, type_len = struct.unpack_from("<I", data, base + 4)[0], \
            *struct.unpack_from("<II", data, base + 8)
        pos, end = base + hdr_len + type_off, base + hdr_len + type_off + type_len
        out: list[int] = []
        shapes = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
                  15: (0, 12), 17: (4, 0), 19: (0, 12)}
        while pos + 12 <= end and len(out) < 100_000:
            out.append(pos)
            info = struct.unpack_from("<I", data, pos + 4)[0]
            extra, elem = shapes.get((info >> 24) & 0x1F, (0, 0))
            pos += 12 + extra + (info & 0xFFFF) * elem
        return out
    except (InputError, struct.error):
        return []


_INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                0xFFFFFFFF, 0xFFFFFFF8]


def _value(rng: random.Random, bits: int, near: int = 0) -> int:
    mask = (1 << bits) - 1
    choice = rng.random()
    if choice < 0.4:
        return rng.choice(_INTERESTING) & mask
    if choice < 0.7:
        return (near + rng.randint(-16, 16)) & mask
    if choice < 0.85:
        return (-rng.randint(1, 64)) & mask         # small negatives
    return rng.getrandbits(bits)


def _poke(data: bytearray, off: int, fmt: str, rng: random.Random) -> None:
    size = struct.calcsize(fmt)
    if off < 0 or off + size > len(data):
        return
    old = struct.unpack_from(fmt, data, off)[0]
    struct.pack_into(fmt, data, off, _value(rng, 8 * size, old))


# Each targeted mutation picks one field of one record and gives it a boundary,
# nearby or random value.
def _section_header(data: bytearray, lay: Layout, rng: random.Random) -> None:
    if not lay.shnum:
        return
    base = lay.shoff + SHDR.size * rng.randrange(lay.shnum)
    # sh_name, sh_type, sh_flags, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
    off, fmt = rng.choice([(0, "<I"), (4, "<I"), (8, "<Q"), (24, "<Q"), (32, "<Q"), (40, "<I"),
                           (44, "<I"), (48, "<Q"), (56, "<Q")])
    _poke(data, base + off, fmt, rng)


def _records(lay: Layout, types: set[int]) -> list[tuple[int, int, int]]:
    return [(off, size, ent) for typ, off, size, ent in lay.sections if typ in types and size]


def _symbol(data: bytearray, lay: Layout, rng: random.Random) -> None:
    tables = _records(lay, {SHT_SYMTAB})
    if not tables:
        return
    off, size, _ = tables[0]
    n = size // SYM.size
    if n:
        base = off + SYM.size * rng.randrange(n)
        # st_name (a string offset), st_info, st_shndx, st_value, st_size
        field_off, fmt = rng.choice([(0, "<I"), (4, "<B"), (6, "<H"), (8, "<Q"), (16, "<Q")])
        _poke(data, base + field_off, fmt, rng)


def _relocation(data: bytearray, lay: Layout, rng: random.Random) -> None:
    tables = _records(lay, {SHT_REL, 4})
    if not tables:
        return
    off, size, ent = rng.choice(tables)
    ent = ent or REL.size
    n = size // ent
    if n:
        base = off + ent * rng.randrange(n)
        # r_offset, r_info type, r_info symbol, (RELA) r_addend
        choices = [(0, "<Q"), (8, "<I"), (12, "<I")] + ([(16, "<q")] if ent == 24 else [])
        field_off, fmt = rng.choice(choices)
        _poke(data, base + field_off, fmt.replace("q", "Q"), rng)


def _string_offset(data: bytearray, lay: Layout, rng: random.Random) -> None:
    # section names (sh_name) and symbol names (st_name) are string offsets
    if rng.random() < 0.5 and lay.shnum:
        _poke(data, lay.shoff + SHDR.size * rng.randrange(lay.shnum), "<I", rng)
    else:
        tables = _records(lay, {SHT_SYMTAB})
        if tables and tables[0][1] // SYM.size:
            off, size, _ = tables[0]
            _poke(data, off + SYM.size * rng.randrange(size // SYM.size), "<I", rng)


def _notes_entry(data: bytearray, lay: Layout, rng: random.Random) -> None:
    # the notes are the PROGBITS sections with 8-byte entries after the code; any
    # non-executable PROGBITS section may be hit, which is fine
    tables = [t for t in _records(lay, {SHT_PROGBITS}) if t[1] % 8 == 0]
    if not tables:
        return
    off, size, _ = rng.choice(tables)
    insn = off + 8 * rng.randrange(size // 8)
    # opcode, dst/src, off, imm, or the whole address word
    field_off, fmt = rng.choice([(0, "<B"), (1, "<B"), (2, "<H"), (4, "<I"), (0, "<Q")])
    _poke(data, insn + field_off, fmt, rng)


def _btf_type(data: bytearray, lay: Layout, rng: random.Random) -> None:
    if not lay.btf_types:
        return
    base = rng.choice(lay.btf_types)
    if base + 24 > len(data):                          # an earlier mutation truncated it
        return
    choice = rng.random()
    if choice < 0.3:                                   # type id (or size) in the third word
        _poke(data, base + 8, "<I", rng)
    elif choice < 0.5:                                 # kind
        info = struct.unpack_from("<I", data, base + 4)[0]
        struct.pack_into("<I", data, base + 4, (info & ~(0x1F << 24)) | (rng.randrange(32) << 24))
    elif choice < 0.7:                                 # vlen
        info = struct.unpack_from("<I", data, base + 4)[0]
        struct.pack_into("<I", data, base + 4, (info & ~0xFFFF) | _value(rng, 16, info & 0xFFFF))
    elif choice < 0.85:                                # name offset
        _poke(data, base, "<I", rng)
    else:                                              # first member / param / elem type id
        _poke(data, base + 12 + 4 * rng.randrange(3), "<I", rng)


TARGETED: list[Callable[[bytearray, Layout, random.Random], None]] = [
    _section_header, _symbol, _relocation, _string_offset, _notes_entry, _btf_type]


def mutate(seed_data: bytes, rng: random.Random, layout: Layout | None = None) -> bytes:
    """Random byte mutations plus field-targeted ones (layout of the seed)."""
    data = bytearray(seed_data)
    lay = layout or layout_of(seed_data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        pos = rng.randrange(len(data)) if data else 0
        # Truncating or inserting moves the section header table (at the end of the
        # file) away from e_shoff, which the reader refuses at once: keep them rare
        # so that most inputs reach the notes, symbol, relocation and BTF readers.
        if choice < 0.6:                               # a field of a structure
            rng.choice(TARGETED)(data, lay, rng)
        elif choice < 0.8 and data:                    # flip a byte
            data[pos] = rng.randrange(256)
        elif choice < 0.92 and data:                   # smash a 32-bit field
            data[pos:pos + 4] = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)]).to_bytes(4, "little")
        elif choice < 0.96:                            # truncate
            del data[rng.randrange(len(data) + 1):]
        else:                                          # insert junk
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


# --- synthetic objects -------------------------------------------------------------

_INT_TYPES = {"char": (1, True), "short": (2, True), "int": (4, True), "long": (8, True),
              "unsigned char": (1, False), "unsigned int": (4, False), "unsigned long": (8, False)}
TYPEDEFS = {"__u32": "unsigned int", "__s64": "long", "u8": "unsigned char"}
BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_TYPEDEF, BTF_KIND_CONST = 1, 2, 8, 10
BTF_KIND_FUNC_PROTO, BTF_KIND_VAR, BTF_KIND_DECL_TAG = 13, 14, 17
BTF_INT_SIGNED = 1

Prototypes = dict[str, Sequence[str]] | Sequence[tuple[str, Sequence[str]]]


def probe_btf(prototypes: Prototypes, tags: dict[str, str] | None = None) -> bytes:
    """A .BTF section declaring each probe as format.md section 4 says:
    DECL_TAG "bpf_sdt:<name>:<n>" -> VAR -> CONST -> PTR -> FUNC_PROTO.
    Types are the integer names of _INT_TYPES, the typedefs of TYPEDEFS, or
    either with a leading "const ".  A list may name a probe twice (as a
    linked object does); ``tags`` replaces a probe's tag text."""
    protos = list(prototypes.items()) if isinstance(prototypes, dict) else list(prototypes)
    strings = bytearray(b"\0")

    def s(text: str) -> int:
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text.encode()) - 1

    types = bytearray()
    ids: dict[str, int] = {}
    next_id = 1

    def add(record: bytes) -> int:
        nonlocal next_id
        types.extend(record)
        next_id += 1
        return next_id - 1

    def type_id(name: str) -> int:
        if name not in ids:
            if name.startswith("const "):
                ids[name] = add(struct.pack("<III", 0, BTF_KIND_CONST << 24, type_id(name[6:])))
            elif name in TYPEDEFS:
                ids[name] = add(struct.pack("<III", s(name), BTF_KIND_TYPEDEF << 24, type_id(TYPEDEFS[name])))
            else:
                size, signed = _INT_TYPES[name]
                enc = BTF_INT_SIGNED if signed else 0
                ids[name] = add(struct.pack("<IIII", s(name), BTF_KIND_INT << 24, size, (enc << 24) | (8 * size)))
        return ids[name]

    for probe, proto in protos:
        params = b"".join(struct.pack("<II", 0, type_id(t)) for t in proto)
        fp = add(struct.pack("<III", 0, (BTF_KIND_FUNC_PROTO << 24) | len(proto), 0) + params)
        ptr = add(struct.pack("<III", 0, BTF_KIND_PTR << 24, fp))
        const = add(struct.pack("<III", 0, BTF_KIND_CONST << 24, ptr))
        var = add(struct.pack("<IIII", s(f"__sdt_type_{probe}"), BTF_KIND_VAR << 24, const, 0))
        tag = (tags or {}).get(probe, f"bpf_sdt:{probe}:{len(proto)}")
        add(struct.pack("<IIIi", s(tag), BTF_KIND_DECL_TAG << 24, var, -1))
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + bytes(types) + bytes(strings)


@dataclass
class SyntheticEntry:
    probe: str
    nop: int                          # byte offset of the NOP in .text
    args: Sequence[ArgLocation] = ()
    symbol: str | None = None         # default: ___sdt_jt_<probe>[.<n>]


def synthetic_object(entries: Sequence[SyntheticEntry], prototypes: Prototypes,
                     code: bytes | None = None, extra_sections: Sequence[SecRec] = (),
                     extra_symbols: Sequence[SymRec] = (), tags: dict[str, str] | None = None) -> bytes:
    """A relocatable BPF object with one function ``f`` in .text, notes for
    ``entries`` encoded with :func:`encode_entry`, and BTF for ``prototypes``.
    Without ``code``, .text is NOPs up to the last entry, then exit."""
    if code is None:
        size = max((e.nop for e in entries), default=-8) + 8
        code = NOP_INSN * (size // 8) + EXIT_INSN
    img = ElfImage(b"\x7fELF\x02\x01\x01" + bytes(9), ET_REL, EM_BPF, 0)
    img.sections = [SecRec("", 0, 0, b""),
                    SecRec(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, code, addralign=8)]
    notes = bytearray()
    relocs, syms = [], []
    counts: dict[str, int] = {}
    for e in entries:
        n = counts[e.probe] = counts.get(e.probe, -1) + 1
        name = e.symbol or (f"___sdt_jt_{e.probe}" if n == 0 else f"___sdt_jt_{e.probe}.{n}")
        syms.append(SymRec(name, len(notes), 0, (STB_LOCAL << 4) | STT_NOTYPE, 0, 2))
        relocs.append(Relocation(len(notes), R_BPF_64_ABS64, 1, None))
        notes += encode_entry(e.nop, e.args)
    img.sections.append(SecRec(NOTES_SECTION, SHT_PROGBITS, 0, bytes(notes)))
    img.sections.append(SecRec(NOTES_REL_SECTION, SHT_REL, SHF_INFO_LINK, b"", link=5, info=2,
                               addralign=8, entsize=REL.size, relocs=relocs))
    img.sections.append(SecRec(".BTF", SHT_PROGBITS, 0, probe_btf(prototypes, tags), addralign=4))
    img.sections.append(SecRec(".symtab", SHT_SYMTAB, 0, b"", link=6, addralign=8, entsize=SYM.size))
    img.sections.append(SecRec(".strtab", SHT_STRTAB, 0, b""))
    img.sections.extend(extra_sections)
    img.symbols = [SymRec("", 0, 0, 0, 0, 0), SymRec("", 0, 0, STT_SECTION, 0, 1), *syms,
                   SymRec("f", 0, len(code), (STB_GLOBAL << 4) | STT_FUNC, 0, 1), *extra_symbols]
    return img.to_bytes()


def many_sites_object(n: int) -> bytes:
    """``n`` sites of one 2-argument probe (a register and an immediate), one
    per NOP of a long function: the shape of an object at the entry cap."""
    args = (ArgLocation("reg", reg=1), ArgLocation("imm", value=7))
    return synthetic_object([SyntheticEntry("p", 8 * i, args) for i in range(n)], {"p": ("int", "long")})

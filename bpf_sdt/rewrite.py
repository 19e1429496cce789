"""Rewrite the code of a BPF object and keep everything that points into it
right.

:func:`decode_code` turns every executable section into
:class:`~bpf_sdt.insn.CodeSection` objects; callers edit the instruction
lists (insert, replace); :func:`rewrite_object` writes the object back:

- code bytes, branch offsets, call immediates, relocation offsets:
  re-derived by :func:`bpf_sdt.insn.encode_sections`;
- function symbols: value and size follow their instructions;
- data words that hold a code offset in place (the address words of
  ``.bpf_sdt_notes``: REL relocations against a code section or function):
  moved through the old-to-new offset map;
- call labels (:class:`Labels`): written as address words of the non-loaded
  ``.bpf_sdt_calls`` section (docs/format.md section 6), never as symbols in
  code, where loaders would take them for functions; words already there move
  like the notes' ones;
- ``.BTF.ext`` func_info, line_info and CO-RE records: moved through the same
  map, so ``bpftool prog dump xlated`` still shows the right source lines;
- DWARF (``.debug_*`` but our types section): dropped when code changed.  Its
  line tables and location lists hold address *deltas* that no relocation
  describes, so they cannot be moved; loaders read BTF, not DWARF, and the
  libbpf linker drops DWARF too.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from bpf_sdt.btfext import BTF_EXT_SECTION
from bpf_sdt.elf import (
    R_BPF_64_ABS32,
    R_BPF_64_ABS64,
    R_BPF_64_NODYLD32,
    R_SYM_SHIFT,
    R_TYPE_MASK,
    SHF_INFO_LINK,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    STV_DEFAULT,
    BpfObject,
    ElfImage,
    PackedRelocations,
    SecRec,
    SymbolRun,
    interleave_words,
    is_reserved_index,
    r_info,
    st_info,
)
from bpf_sdt.errors import InputError
from bpf_sdt.format import CALL_WORD_SIZE, CALLS_REL_SECTION, CALLS_SECTION, TYPES_SECTION
from bpf_sdt.inlined import carry_into
from bpf_sdt.insn import (
    CodeSection,
    EncodedSection,
    Insn,
    decode_section,
    encode_sections,
    link_code_references,
)

DWARF_PREFIX = ".debug_"
# In-place data words a relocation may hold a code offset in: type -> width.
_IN_PLACE_WIDTH = {R_BPF_64_ABS64: 8, R_BPF_64_ABS32: 4, R_BPF_64_NODYLD32: 4}


@dataclass
class Moved:
    """A code section whose instructions were appended to another one."""

    into: int                            # the section they now belong to
    at: dict[int, Insn]                  # old byte offset -> the instruction


@dataclass
class Labels:
    """Names for places in the code, kept outside it: label k is an address
    word in ``.bpf_sdt_calls`` at a local STT_NOTYPE symbol ``names[k]``,
    for the byte ``offsets[k]`` from where instruction ``anchors[k]`` of
    section ``sections[k]`` is written (negative: before it).  An anchor
    stands once in the code; what is labelled may be an instruction that
    sites share.  Columns: one per inserted call, no object each."""

    names: list[str] = field(default_factory=list)
    sections: list[int] = field(default_factory=list)
    anchors: list[Insn] = field(default_factory=list)
    offsets: array[int] = field(default_factory=lambda: array("q"))

    def add(self, name: str, section: int, anchor: Insn, offset: int) -> None:
        self.names.append(name)
        self.sections.append(section)
        self.anchors.append(anchor)
        self.offsets.append(offset)


@dataclass
class CodeEdits:
    """What a rewrite changes besides the instruction lists themselves."""

    moved: dict[int, Moved] = field(default_factory=dict)
    renamed: dict[int, str] = field(default_factory=dict)
    labels: Labels = field(default_factory=Labels)
    make_static: set[str] = field(default_factory=set)    # function names


def move_code(code: dict[int, CodeSection], source: int, into: int, edits: CodeEdits) -> None:
    """Append section ``source``'s instructions to section ``into``.  Their
    references go with them; their symbols and .BTF.ext records follow when
    the object is rewritten."""
    src, dst = code.pop(source), code[into]
    if any(insn.target is src.end for sec in code.values() for insn in sec.insns) or \
            any(insn.target is src.end for insn in src.insns):
        raise InputError(f"{src.name}: a jump past the end of the section cannot be moved")
    at = {insn.orig: insn for insn in src.insns}
    for insn in src.insns:
        insn.orig = -1        # no longer an instruction of its old section's offsets
    if dst.appended is None and src.insns:
        dst.appended = src.insns[0]
    dst.insns.extend(src.insns)
    edits.moved[source] = Moved(into, at)


def decode_code(obj: BpfObject) -> dict[int, CodeSection]:
    """Every executable section of ``obj``, decoded, with all code references
    (including cross-section calls and function addresses) resolved."""
    sections = {}
    for sec in obj.sections:
        if sec.executable and sec.type != SHT_REL and sec.type != SHT_RELA:
            _, relocs = obj.relocations(sec)
            sections[sec.index] = decode_section(sec.index, sec.name, obj.section_data(sec), relocs)
    link_code_references(sections, obj.symbols)
    return sections


def rewrite_object(obj: BpfObject, code: dict[int, CodeSection], edits: CodeEdits | None = None, *,
                   consume: bool = False) -> ElfImage:
    """An image of ``obj`` with the edited ``code`` written in and every
    reference into it moved.  With ``consume``, ``code``'s instruction
    lists (and ``edits``' references to instructions) are emptied once the
    code is encoded: the instructions are freed before the image is built,
    the peak of a rewrite."""
    edits = edits or CodeEdits()
    moved_symbols = {sym.num: edits.moved[sym.shndx].at[sym.value] for sym in obj.symbols
                     if sym.shndx in edits.moved and sym.type != STT_SECTION
                     and sym.value in edits.moved[sym.shndx].at}
    encoded, values = encode_sections(code, obj.symbols, moved_symbols)
    del moved_symbols
    placed = _Placed.of(encoded, edits)
    if consume:
        _release_instructions(code, edits)
    # After encoding, the peak of a rewrite: not alive during it.  Its relocations are
    # columns, as the encoded code's are (the notes have one per site).
    img = ElfImage.from_object(obj, packed_relocations=True)
    changed = bool(edits.moved) or any(enc.data != obj.section_data(obj.sections[idx])
                                       for idx, enc in encoded.items())
    for idx, enc in encoded.items():
        img.sections[idx].data = enc.data
        _set_code_relocations(img, idx, enc)
    _move_symbols(obj, img, encoded, values)
    _move_moved_symbols(obj, img, edits, placed.moved)
    _move_in_place_words(obj, img, encoded, values)
    _move_btf_ext(obj, img, encoded, edits, placed.moved)
    _append_calls(img, edits.labels.names, edits.labels.sections, placed.labels)
    if edits.make_static:
        _make_static(obj, img, edits.make_static)
    for idx, name in edits.renamed.items():
        _rename_section(img, idx, name)
    drop_indices = set(edits.moved)
    if changed:
        carry_into(obj, img)    # where inlined sites were called: DWARF only has it
        drop_indices |= {i for i, s in enumerate(img.sections)
                         if s.name.startswith(DWARF_PREFIX) and s.name != TYPES_SECTION}
    if changed:   # its relocations describe the old record layout; loaders ignore it
        drop_indices |= {i for i, s in enumerate(img.sections) if s.name == ".rel" + BTF_EXT_SECTION}
    img.remove_section_indices(drop_indices)
    return img


class _Placed(NamedTuple):
    """Where an encoding put what the rest of a rewrite asks of the edits'
    instructions, so that they need not live on."""

    moved: dict[int, dict[int, int]]     # per moved section: old byte offset -> offset where it went
    labels: array[int]                   # each label's byte offset in its section

    @classmethod
    def of(cls, encoded: dict[int, EncodedSection], edits: CodeEdits) -> _Placed:
        moved = {idx: {old: encoded[m.into].position(insn) for old, insn in m.at.items()}
                 for idx, m in edits.moved.items()}
        labels = edits.labels
        return cls(moved, array("Q", map(lambda section, anchor, offset: encoded[section].position(anchor) + offset,
                                         labels.sections, labels.anchors, labels.offsets)))


def _release_instructions(code: dict[int, CodeSection], edits: CodeEdits) -> None:
    """Drop every reference ``code`` and ``edits`` hold to instructions."""
    for sec in code.values():
        sec.insns = []
        sec.appended = None
    edits.labels.anchors.clear()
    for moved in edits.moved.values():
        moved.at.clear()


def append_call_words(img: ElfImage, words: list[tuple[str, int, int]]) -> None:
    """For each (symbol name, code section index, byte offset), one address
    word appended to the calls section (made when missing), as a note's
    address word (docs/format.md section 6)."""
    _append_calls(img, [name for name, _, _ in words], [section for _, section, _ in words],
                  array("Q", [offset for _, _, offset in words]))


def _append_calls(img: ElfImage, names: list[str], sections: list[int], offsets: array[int]) -> None:
    """:func:`append_call_words` by columns (each word its offset, little-endian)."""
    append_address_entries(img, CALLS_SECTION, CALLS_REL_SECTION, CALL_WORD_SIZE, AddressEntries(
        names, sections, interleave_words([offsets]),
        array("Q", range(0, CALL_WORD_SIZE * len(names), CALL_WORD_SIZE))))


class AddressEntries(NamedTuple):
    """Entries that start with an address word into code, as columns: entry
    k is ``data[starts[k]:starts[k + 1]]``, holds its code offset in place
    in its first word, is relocated against section ``code_sections[k]``
    and starts at a symbol ``names[k]``."""

    names: list[str]
    code_sections: list[int]
    data: bytes
    starts: array[int]          # u64, ascending, starts[0] == 0


def append_address_entries(img: ElfImage, section: str, rel_section: str, addralign: int,
                           entries: AddressEntries) -> None:
    """The one writer of sections whose entries start with an address word
    into code (the notes, the calls): ``entries`` appended to ``section``
    (made when missing, with its REL section; flags 0: not SHF_ALLOC, so no
    loader reads it), one R_BPF_64_ABS64 at each entry against its code
    section's symbol, and a local STT_NOTYPE symbol at each.  Written as
    columns (a symbol run, packed relocations): a million sites make no
    object per entry."""
    if not entries.names:
        return
    sec_i = img.index_of(section)
    if sec_i is None:
        sec_i = img.add_section(SecRec(section, SHT_PROGBITS, 0, b"", addralign=addralign))
    rel_i = img.rel_section_for(sec_i)
    if rel_i is None:
        rel_i = img.add_section(SecRec(rel_section, SHT_REL, SHF_INFO_LINK, b"",   # to_bytes lays it out
                                       link=img.symtab_index, info=sec_i, relocs=[]))
    here = len(img.sections[sec_i].data)
    values = array("Q", [here + start for start in entries.starts]) if here else entries.starts
    info_of = {code: r_info(symbol, R_BPF_64_ABS64)
               for code, symbol in _section_symbols(img, sec_i, entries, values).items()}
    run = PackedRelocations(values, array("Q", map(info_of.__getitem__, entries.code_sections)), None)
    rel = img.sections[rel_i]
    rel.packed = run if rel.packed is None else rel.packed.extended(run)
    img.sections[sec_i].data += entries.data


def _section_symbols(img: ElfImage, sec_i: int, entries: AddressEntries, values: array[int]) -> dict[int, int]:
    """The entries' symbols appended (runs, in entry order) and each code
    section's symbol index.  A section's symbol is looked up at its first
    entry, so one that is missing is added there, between the entries'
    symbols, as a writer of one entry at a time would."""
    symbols: dict[int, int] = {}
    done = 0
    for code in dict.fromkeys(entries.code_sections):     # a million entries name a few sections
        first = entries.code_sections.index(code, done)
        if first > done:
            img.symbols.append(SymbolRun(entries.names[done:first], values[done:first], sec_i))
            done = first
        symbols[code] = img.section_symbol(code)
    img.symbols.append(SymbolRun(entries.names[done:], values[done:], sec_i))
    return symbols


def _move_moved_symbols(obj: BpfObject, img: ElfImage, edits: CodeEdits,
                        positions: dict[int, dict[int, int]]) -> None:
    """Symbols of moved sections go where their instructions went (section
    symbols excepted: they go with their sections); ``positions``: per moved
    section, old byte offset -> new one in the section it went into."""
    for sym in obj.symbols:
        moved = edits.moved.get(sym.shndx)
        if moved is None or sym.type == STT_SECTION:
            continue
        new = positions[sym.shndx].get(sym.value)
        if new is None:
            raise InputError(f"{obj.path}: symbol {sym.name} is not on an instruction")
        rec = img.symbols[sym.num]
        rec.shndx, rec.value = moved.into, new


def _make_static(obj: BpfObject, img: ElfImage, names: set[str]) -> None:
    """Local binding in ELF and static linkage in BTF: the verifier then checks
    the function in its caller's context (a global function is checked on its
    own, its pointer arguments sized by their BTF types)."""
    from bpf_sdt.btf import BtfLinkage, find_funcs, set_func_linkage

    for rec in img.symbols:
        if rec.name in names and rec.type == STT_FUNC:
            rec.info = st_info(STB_LOCAL, STT_FUNC)
            rec.other = STV_DEFAULT
    btf_i = img.index_of(".BTF")
    if btf_i is None or obj.btf is None:
        return
    data = img.sections[btf_i].data
    for name in sorted(names):
        for type_id in find_funcs(obj.btf, name):
            data = set_func_linkage(data, type_id, BtfLinkage.STATIC)
    img.sections[btf_i].data = data


def _rename_section(img: ElfImage, idx: int, name: str) -> None:
    old = img.sections[idx].name
    img.sections[idx].name = name
    rel = img.rel_section_for(idx)
    if rel is not None and img.sections[rel].name == ".rel" + old:
        img.sections[rel].name = ".rel" + name


def _set_code_relocations(img: ElfImage, idx: int, enc: EncodedSection) -> None:
    rel_i = img.rel_section_for(idx)
    if rel_i is None:
        if not enc.relocs:
            return
        name = ".rel" + img.sections[idx].name
        rel_i = img.add_section(SecRec(name, SHT_REL, SHF_INFO_LINK, b"", link=img.symtab_index,
                                       info=idx, addralign=8, entsize=16))
    rel = img.sections[rel_i]
    rel.relocs, rel.packed = None, enc.relocs


def _move_symbols(obj: BpfObject, img: ElfImage, encoded: dict[int, EncodedSection],
                  values: dict[int, int]) -> None:
    for sym in obj.symbols:
        if sym.num not in values or sym.shndx not in encoded:   # moved ones: _move_moved_symbols
            continue
        rec = img.symbols[sym.num]
        offsets = encoded[sym.shndx].offsets
        end = offsets.get(sym.value + sym.size)
        rec.value = values[sym.num]
        if sym.size and end is not None:
            rec.size = end - rec.value


def _move_in_place_words(obj: BpfObject, img: ElfImage, encoded: dict[int, EncodedSection],
                         values: dict[int, int]) -> None:
    """REL relocations in data sections against code: the word holds the
    offset (from the symbol) and moves with the code.  Read as columns, and
    what a relocation's r_info word implies worked out once per word: the
    notes have a relocation per site, naming a few (symbol, type) pairs."""
    for rel_sec in obj.sections:
        if rel_sec.type != SHT_REL:
            continue
        target = obj.section_at(rel_sec.info)
        if target is None or target.executable or target.name == BTF_EXT_SECTION \
                or target.name.startswith(DWARF_PREFIX):
            continue
        data: bytearray | None = None
        original = obj.section_data(target)
        columns = obj.relocation_columns(rel_sec)
        kinds: dict[int, _InPlaceWord | None] = {}
        for offset, info in zip(columns.offsets, columns.infos, strict=True):
            if info not in kinds:
                kinds[info] = _in_place_word(obj, info, encoded, values)
            kind = kinds[info]
            if kind is None:
                continue
            width = kind.width
            if offset + width > len(original):
                raise InputError(f"{obj.path}: relocation at {target.name}+{offset:#x} runs past the section")
            addend = int.from_bytes(original[offset: offset + width], "little")
            new = kind.offsets.get(kind.base_old + addend)
            if new is None:
                raise InputError(f"{obj.path}: {target.name}+{offset:#x} points at "
                                 f"{kind.section}+{kind.base_old + addend:#x}, which is not an instruction")
            if data is None:
                data = bytearray(img.sections[target.index].data)
            if offset + width > len(data):
                raise InputError(f"{obj.path}: {rel_sec.name}: relocation at {offset:#x} runs past "
                                 f"{target.name}")
            data[offset: offset + width] = (new - kind.base_new).to_bytes(width, "little")
        if data is not None:
            img.sections[target.index].data = bytes(data)


class _InPlaceWord(NamedTuple):
    """What the relocations of one r_info word (symbol, type) share."""

    width: int                   # of the word holding the offset
    base_old: int                # the symbol's value before (0 for a section symbol)
    base_new: int                # and after
    offsets: dict[int, int]      # its code section's old byte offset -> new one
    section: str                 # that section's name


def _in_place_word(obj: BpfObject, info: int, encoded: dict[int, EncodedSection],
                   values: dict[int, int]) -> _InPlaceWord | None:
    """How relocations with r_info ``info`` move a word holding a code offset,
    or None when they do not (another type, or a symbol outside the code)."""
    width = _IN_PLACE_WIDTH.get(info & R_TYPE_MASK)
    symbol = info >> R_SYM_SHIFT
    if width is None or not 0 <= symbol < len(obj.symbols):
        return None
    sym = obj.symbols[symbol]
    if is_reserved_index(sym.shndx) or sym.shndx not in encoded:
        return None
    section_symbol = sym.type == STT_SECTION
    return _InPlaceWord(width, 0 if section_symbol else sym.value, 0 if section_symbol else values[sym.num],
                        encoded[sym.shndx].offsets, obj.sections[sym.shndx].name)


def _move_btf_ext(obj: BpfObject, img: ElfImage, encoded: dict[int, EncodedSection],
                  edits: CodeEdits, moved_positions: dict[int, dict[int, int]]) -> None:
    ext_sec = obj.section(BTF_EXT_SECTION)
    btf_sec = obj.section(".BTF")
    if ext_sec is None or btf_sec is None:
        return
    from bpf_sdt.btf import append_string, parse_btf
    from bpf_sdt.btfext import BtfExt

    btf_i = img.index_of(".BTF")
    assert btf_i is not None
    for new_name in set(edits.renamed.values()):     # BTF.ext names sections through BTF strings
        img.sections[btf_i].data, _ = append_string(img.sections[btf_i].data, new_name)
    ext = BtfExt.parse(obj.section_data(ext_sec), parse_btf(img.sections[btf_i].data).strings)
    for idx, enc in encoded.items():
        name = obj.sections[idx].name
        if name in ext.sections:
            ext.remap(name, _offset_mapper(enc.offsets, name))
    for idx, new_name in edits.renamed.items():
        ext.move_section(obj.sections[idx].name, new_name, lambda off: off)
    for idx, moved in edits.moved.items():
        name, into = obj.sections[idx].name, obj.sections[moved.into].name
        into = edits.renamed.get(moved.into, into)
        ext.move_section(name, into, _offset_mapper(moved_positions[idx], name))
    img.sections[ext_sec.index].data = ext.encode()


def _offset_mapper(offsets: dict[int, int], section: str) -> Callable[[int], int]:
    def move(old: int) -> int:
        new = offsets.get(old)
        if new is None:
            raise InputError(f".BTF.ext: a record at {section}+{old:#x} is not on an instruction")
        return new
    return move

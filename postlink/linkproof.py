"""The check of what `bpf-sdt link` writes, proved from what it wrote
instead of decoding every site of OUT again (docs/linking.md, "The
output's check").

OUT is the linker's output (``base``: the stripped inputs linked, which
``check`` judges whole, cheaply: it has no notes) with the inputs' notes,
their relocations, their entry symbols, the calls records and the inline
chains added.  Each input passed ``check`` before linking, and the
placement of its code was verified (every function symbol where the layout
says, a NOP at every site's new offset).  What is left to show is that OUT
holds exactly that, read back from OUT's bytes as columns:

- every section the linker made is in OUT unchanged, and every symbol it made;
- OUT has one notes section, not executable, whose address words are the
  moved offsets and whose other bytes are the inputs' notes, which their
  checks decoded;
- one REL section for it, one R_BPF_64_ABS64 per entry on its address word
  against the STT_SECTION symbol of the entry's code section;
- the entry symbols: one per entry, local, at its offset, with its name;
- the calls records and the inline chains as placed;
- the probes' prototypes in the linked BTF fit every site's argument count.

Two entries on one NOP (SDT109) need no scan: each input has none (its
check), and the layout gives each input's section a range of its own.
Warnings are not looked for: link prints none.
"""

from __future__ import annotations

import itertools
import operator
from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from bpf_sdt.elf import (
    R_BPF_64_ABS64,
    R_SYM_SHIFT,
    R_TYPE_MASK,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    ST_TYPE_MASK,
    STB_LOCAL,
    STT_NOTYPE,
    STT_SECTION,
    SYM_NAME_U32,
    SYM_TAIL_SHNDX_SHIFT,
    SYM_TAIL_U32,
    BpfObject,
    Section,
    SymbolTable,
    section_view,
    st_info,
    u64_words,
)
from bpf_sdt.errors import InputError
from bpf_sdt.format import CALL_LABEL_PREFIX, CALLS_REL_SECTION, CALLS_SECTION, NOTES_REL_SECTION, NOTES_SECTION
from bpf_sdt.inlined import INLINE_SECTION, Chain, encode_section
from bpf_sdt.notes import ADDRESS_WORD_SIZE, MAX_ENTRIES
from bpf_sdt.rewrite import AddressEntries

from .check import MAX_ERRORS_SHOWN, ObjectReport, analyze, call_words

SHSTRTAB = ".shstrtab"         # the section names' table the writer adds
# Sections the writer adds after the linker's.
ADDED_SECTIONS = {NOTES_SECTION, NOTES_REL_SECTION, CALLS_SECTION, CALLS_REL_SECTION, INLINE_SECTION, SHSTRTAB}
ENTRY_INFO = st_info(STB_LOCAL, STT_NOTYPE)
GCC_MARK = b"GCC"              # in .comment: notes without prototypes are a warning there (check's SDT114)


class LinkInput(NamedTuple):
    """What link keeps of one checked input (postlink.link._link_input):
    its layout, its calls and inline chains, and its entries as columns."""

    path: str
    sections: list[Section]
    functions: list[tuple[str, int, int]]      # (name, shndx, value) of each STT_FUNC symbol
    runs: list[tuple[str, int, int]]           # (code section, first entry, end) of each run of entries
    nop_offsets: array[int]                    # each entry's NOP offset in its code section
    entry_offsets: array[int]                  # each entry's offset in the notes
    address_words: array[int]                  # each entry's address word: its index in the notes as u64s
    names: list[str]                           # each entry's symbol
    # (probe, argument count) that OUT's prototypes must have: the input's own
    # prototypes, which its check held every site to, else (GCC) the sites'
    shapes: set[tuple[str, int]]
    notes: bytes                               # the notes section
    calls: list[Any]                           # link.InputCall: the calls an instrumented input records
    inline: list[Chain]                        # each entry's inline chain, in notes order


class MovedNotes:
    """What link wrote into the linker's output, per entry in notes order:
    the inputs' decoded, checked entries moved by the verified placement."""

    def __init__(self) -> None:
        self.names: list[str] = []           # entry symbol names
        self.code_sections: list[int] = []   # the code section (index in OUT) of each entry's NOP
        self.targets = array("Q")            # each NOP's offset there
        self.starts = array("Q")             # each entry's offset in OUT's notes
        self.shapes: set[tuple[str, int]] = set()
        self._chunks: list[bytes | bytearray] = []
        # Per input, where its notes start in OUT's, their size and each entry's address word
        # in them (LinkInput.address_words): the proof reads an input's words with its own indices.
        self.inputs: list[tuple[int, int, array[int]]] = []
        self.data = b""                      # OUT's notes, once joined (entries)
        self.size = 0
        self.linker_output: BpfObject | None = None
        self.calls: list[tuple[str, int, int]] = []    # (label, code section, offset) as written
        self.inline: Sequence[Chain] = ()

    def add_input(self, p: LinkInput, moved: bytearray, targets: array[int]) -> None:
        """One input's entries: its notes as moved (which must differ from
        its own in the address words alone) and each NOP's new offset (their
        code sections are added once the linker's output is known)."""
        _only_address_words_moved(p.path, p.notes, p.address_words, moved)
        lo = self.size
        self.inputs.append((lo, len(moved), p.address_words))
        self.starts += array("Q", map(lo.__add__, p.entry_offsets)) if lo else p.entry_offsets
        self.names += p.names
        self.shapes |= p.shapes
        self.targets += targets
        self._chunks.append(moved)
        self.size += len(moved)

    @property
    def entries(self) -> AddressEntries:
        """The notes to write (rewrite.append_address_entries)."""
        if self._chunks:
            self.data, self._chunks = b"".join(self._chunks), []
        return AddressEntries(self.names, self.code_sections, self.data, self.starts)


def _only_address_words_moved(path: str, original: bytes, words: array[int], moved: bytearray) -> None:
    """The moved notes with the input's address words (u64 indices
    ``words``) put back are the input's notes, which its check decoded (the
    arguments: SDT102, SDT108)."""
    restored = bytearray(moved)
    with memoryview(restored) as view, view.cast("Q") as mine, memoryview(original) as o, o.cast("Q") as theirs:
        deque(map(mine.__setitem__, words, map(theirs.__getitem__, words)), maxlen=0)   # raw words: any byte order
    if restored != original:
        at = next(k for k in range(len(original)) if restored[k] != original[k])
        raise InputError(f"{path}: moving its notes changed {NOTES_SECTION}+{at:#x}, not an address word")


def verify_linked(out: BpfObject, moved: MovedNotes) -> None:
    """InputError unless ``check`` of OUT would find no error, as the module
    doc says; the message names OUT and the first reasons."""
    n = len(moved.names)
    if n > MAX_ENTRIES:    # the decoder's cap, its message
        raise InputError(f"{out.path}: {n} notes entries, more than the {MAX_ENTRIES} an object may hold")
    base = moved.linker_output
    assert base is not None
    report = analyze(base)
    errors = [f"{f.where}: {f.message} [{f.rule}]" for f in report.findings if f.severity == "error"]
    if errors:
        _fail(out, "; ".join(errors[:MAX_ERRORS_SHOWN]))
    _same_linker_sections(out, base)
    notes = _notes_section(out, moved)
    calls = out.section(CALLS_SECTION)
    special = {notes.index} | ({calls.index} if calls is not None else set())
    shndx = out.symbol_table.section_indices().tolist()   # each symbol's section
    _same_linker_symbols(out, base, special, shndx)
    _prototypes(out, report, moved.shapes)
    _notes_bytes(out, notes, moved)
    _notes_relocations(out, notes, moved)
    _entry_symbols(out, notes, moved, shndx)
    _calls(out, calls, moved, shndx)
    _inline(out, moved)


def _fail(out: BpfObject, reason: str) -> None:
    raise InputError(f"{out.path}: the linked object fails check: {reason}")


# --- what the linker made -------------------------------------------------------


def _same_linker_sections(out: BpfObject, base: BpfObject) -> None:
    """Every section of the linker's output at its index in OUT, with its
    header and bytes (relocations: the same records, naming the same
    symbols), but the tables the writer makes anew; after them only the
    sections link adds."""
    symtab = base.symtab_section
    remade = {symtab.index, symtab.link} if symtab is not None else set()
    remade |= {s.index for s in base.sections if s.type == SHT_STRTAB and s.name == SHSTRTAB}
    for s in base.sections[1:]:
        if s.index in remade:
            continue
        o = out.section_at(s.index)
        if o is None or _header(o) != _header(s):
            _fail(out, f"section {s.name} is not the one the linker made")
        assert o is not None
        if s.type in (SHT_REL, SHT_RELA):
            if _relocation_keys(out, o) != _relocation_keys(base, s):
                _fail(out, f"{s.name}: relocations are not the ones the linker made")
        elif section_view(out, o) != section_view(base, s):    # views: no copy kept on either object
            _fail(out, f"section {s.name}: bytes are not the ones the linker made")
    extra = [s.name for s in out.sections[len(base.sections):] if s.name not in ADDED_SECTIONS]
    if extra:
        _fail(out, f"unexpected section {extra[0]}")


def _header(s: Section) -> tuple[str, int, int, int, int, int, int, int]:
    return (s.name, s.type, s.flags, s.size, s.link, s.info, s.addralign, s.entsize)


def _relocation_keys(obj: BpfObject, sec: Section) -> list[tuple[int, int, int | None, tuple[object, ...]]]:
    """A relocation section's records with each symbol as what it is, not
    its index (the writer renumbers symbols)."""
    table = obj.symbol_table
    return [(r.offset, r.type, r.addend, _symbol_key(table, r.symbol)) for r in obj.decode_relocations(sec)]


def _symbol_key(table: SymbolTable, index: int) -> tuple[object, ...]:
    if not 0 <= index < table.count:
        return ("missing", index)
    name_off, info, other, shndx, value, size = table.record(index)
    return (table.name(index, name_off), info, other, shndx, value, size)


def _same_linker_symbols(out: BpfObject, base: BpfObject, special: set[int], shndx: list[int]) -> None:
    """OUT's symbols outside the notes and calls sections are the linker's
    (in any order: check reads no order), and maybe an STT_SECTION symbol
    the writer added for a code section that had none."""
    table = out.symbol_table
    rest = itertools.compress(range(len(shndx)), map(operator.not_, map(special.__contains__, shndx)))
    ours = sorted(_symbol_key(table, i) for i in rest)
    theirs = sorted(_symbol_key(base.symbol_table, i) for i in range(base.symbol_table.count))
    if ours != theirs:
        with_symbol = {key[3] for key in theirs if isinstance(key[1], int) and key[1] & ST_TYPE_MASK == STT_SECTION}
        ours = [key for key in ours if not (key[0] == "" and key[1] == STT_SECTION and key[3] not in with_symbol
                                            and key[4] == key[5] == 0)]
        if ours != theirs:
            _fail(out, "the symbols outside the notes are not the ones the linker made")


def _prototypes(out: BpfObject, report: ObjectReport, shapes: set[tuple[str, int]]) -> None:
    """check's SDT110 and SDT103 per (probe, argument count) of the sites,
    against the prototypes of the linked BTF (OUT's: the same bytes)."""
    decls = report.declarations
    if not decls:
        comment = out.section(".comment")
        if shapes and not (comment is not None and GCC_MARK in out.section_data(comment)):
            _fail(out, f"{NOTES_SECTION}+0x0: no BTF probe prototypes (bpf_sdt:<name>:<n> decl tags) "
                  "for the probes used here [SDT110]")
        return
    for probe, nargs in sorted(shapes):
        decl = decls.get(probe)
        if decl is None:
            _fail(out, f"probe '{probe}' has no BTF prototype [SDT110]")
        elif decl.arity != nargs:
            _fail(out, f"probe '{probe}': entry has {nargs} argument insns, its prototype {decl.arity} [SDT103]")


# --- what link added ------------------------------------------------------------


def _notes_section(out: BpfObject, moved: MovedNotes) -> Section:
    found = out.sections_named(NOTES_SECTION)
    if len(found) != 1:
        _fail(out, f"{len(found)} sections are named {NOTES_SECTION} [SDT119]")
    notes = found[0]
    if notes.type != SHT_PROGBITS or notes.flags or notes.size != moved.size:
        _fail(out, f"{NOTES_SECTION} is not the section link wrote (type {notes.type}, flags {notes.flags:#x}, "
              f"{notes.size} bytes)")
    return notes


def _notes_bytes(out: BpfObject, notes: Section, moved: MovedNotes) -> None:
    """OUT's notes are the notes moved (each input's, with only its address
    words changed: MovedNotes.add_input), and each address word holds its
    NOP's new offset, where the verified placement put a NOP (SDT107)."""
    data = section_view(out, notes)
    got = array("Q")
    for lo, size, address_words in moved.inputs:      # each input's words by its own indices
        words = u64_words(data[lo: lo + size - size % ADDRESS_WORD_SIZE])
        got += array("Q", map(words.__getitem__, address_words))
    if got != moved.targets:
        k = next(k for k in range(len(got)) if got[k] != moved.targets[k])
        _fail(out, f"{NOTES_SECTION}+{moved.starts[k]:#x}: address word {got[k]:#x}, "
              f"the NOP is at {moved.targets[k]:#x} [SDT107]")
    if data != moved.data:
        at = next(k for k in range(len(data)) if data[k] != moved.data[k])
        _fail(out, f"{NOTES_SECTION}+{at:#x}: argument insns are not the input's [SDT108]")


def _notes_relocations(out: BpfObject, notes: Section, moved: MovedNotes) -> None:
    """One REL section for the notes; record k on entry k's address word,
    an R_BPF_64_ABS64 against the STT_SECTION symbol of that entry's code
    section (SDT101, SDT104, SDT105, SDT106)."""
    rels = [s for s in out.sections if s.type in (SHT_REL, SHT_RELA) and s.info == notes.index]
    if len(rels) != 1 or rels[0].type != SHT_REL:
        _fail(out, f"{len(rels)} relocation sections apply to {NOTES_SECTION}, want one REL [SDT101]")
    columns = out.relocation_columns(rels[0])
    if len(columns.offsets) != len(moved.starts) or columns.offsets != memoryview(moved.starts):
        _fail(out, f"{rels[0].name}: the relocations are not one per address word [SDT104]")
    table = out.symbol_table
    section_of: dict[int, int] = {}
    for info in set(columns.infos):
        symbol = info >> R_SYM_SHIFT
        if info & R_TYPE_MASK != R_BPF_64_ABS64 or symbol >= table.count:
            _fail(out, f"{rels[0].name}: relocation info {info:#x} is no R_BPF_64_ABS64 of a symbol [SDT105]")
        _name, st_info_, _other, shndx, _value, _size = table.record(symbol)
        sec = out.section_at(shndx)
        if st_info_ & ST_TYPE_MASK != STT_SECTION or sec is None or not sec.flags & SHF_EXECINSTR:
            _fail(out, f"{rels[0].name}: symbol {symbol} is not the symbol of a code section [SDT106]")
        section_of[info] = shndx
    if list(map(section_of.__getitem__, columns.infos)) != moved.code_sections:
        _fail(out, f"{rels[0].name}: an address word is relocated against another code section [SDT107]")


def _entry_symbols(out: BpfObject, notes: Section, moved: MovedNotes, shndx: list[int]) -> None:
    """The symbols of the notes section: one local STT_NOTYPE of size 0 per
    entry, at its offset, with its input's name, in entry order (SDT102).
    Read by column: a million entries make no object each (their names:
    one per distinct name offset)."""
    table = out.symbol_table
    _, values, sizes = table.columns()
    here = _block(shndx, notes.index)
    n = len(here)
    want_tail = ENTRY_INFO | notes.index << SYM_TAIL_SHNDX_SHIFT                  # st_other 0
    if n != len(moved.names) or _select(table.column("I", SYM_TAIL_U32), here) != \
            memoryview(array("I", [want_tail]) * n) or _select(sizes, here) != memoryview(array("Q", [0]) * n) \
            or _select(values, here) != memoryview(moved.starts):
        _fail(out, f"the entry symbols of {NOTES_SECTION} are not one local symbol at each entry [SDT102]")
    name_offs = _select(table.column("I", SYM_NAME_U32), here)
    distinct = list(set(name_offs))          # the names written once each (link.py interns them)
    name_of = dict(zip(distinct, table.names([0] * len(distinct), distinct), strict=True))
    if list(map(name_of.__getitem__, name_offs)) != moved.names:
        _fail(out, f"the entry symbols of {NOTES_SECTION} are not the inputs' names [SDT102]")


def _select(column: memoryview, here: Sequence[int]) -> memoryview:
    """``column``'s rows ``here``: a slice for a block (in C), else one by one."""
    if isinstance(here, range):
        return column[here.start: here.stop]
    return memoryview(array(column.format, map(column.__getitem__, here)))


def _block(shndx: list[int], section: int) -> Sequence[int]:
    """The indices of the symbols in ``section``: a range when they are one
    block, as the writer puts a run (no int per symbol)."""
    count = shndx.count(section)
    first = shndx.index(section) if count else 0
    if shndx[first: first + count].count(section) == count:
        return range(first, first + count)
    return list(itertools.compress(range(len(shndx)), map(section.__eq__, shndx)))


def _calls(out: BpfObject, calls: Section | None, moved: MovedNotes, shndx: list[int]) -> None:
    """The calls records as placed: one label and one address word per call."""
    if calls is None:
        if moved.calls:
            _fail(out, f"no {CALLS_SECTION} for {len(moved.calls)} calls")
        return
    labels = shndx.count(calls.index)
    written = [(label, shndx, offset) for label, shndx, offset in moved.calls]
    found = [(CALL_LABEL_PREFIX + observer, shndx, offset) for observer, shndx, offset in call_words(out)]
    if labels != len(written) or found != written:
        _fail(out, f"{CALLS_SECTION} does not record the calls as placed")


def _inline(out: BpfObject, moved: MovedNotes) -> None:
    sec = out.section(INLINE_SECTION)
    want = encode_section(moved.inline) if any(moved.inline) else None
    if (sec is None) != (want is None) or (sec is not None and out.section_data(sec) != want):
        _fail(out, f"{INLINE_SECTION} is not the inputs' chains")


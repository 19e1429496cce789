"""Where an inlined probe site was called from (docs/format.md section 7).

clang locates a probe's asm at the line of its invocation, inside the inlined
function (`.BTF.ext` line_info), so every copy of a probe in an
always_inline helper shows the helper's line.  Where each copy was called is
in the compiler's DWARF only: the chain of DW_TAG_inlined_subroutine entries
whose address range covers the NOP, each with its DW_AT_call_file and
DW_AT_call_line.  DWARF does not survive `bpf-sdt link` (the libbpf linker
drops it) nor `bpf-sdt instrument` (its address deltas cannot be moved), so
those two write the chains into the non-loaded section `.bpf_sdt_inline`
from their inputs' DWARF: one record per notes entry, in the order of the
entries in `.bpf_sdt_notes`, which both keep.

A reader (:func:`inline_chains`) takes the section when there is one, else the
object's own DWARF.  DWARF is untrusted input read by pyelftools, which
raises many kinds of errors on a broken file: any of them means "no inline
information", never a failed listing.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from bpf_sdt.elf import SHF_COMPRESSED, SHT_PROGBITS, BpfObject, ElfImage, SecRec

if TYPE_CHECKING:
    from bpf_sdt.notes import NoteEntry

INLINE_SECTION = ".bpf_sdt_inline"
INLINE_FORMAT = 1
DEBUG_INFO_SECTION = ".debug_info"
DEBUG_ABBREV_SECTION = ".debug_abbrev"
# DWARF 4 and 5 (section 7.5.3): an abbreviation's tag, and the one attribute
# form whose specification carries a value (a SLEB128 constant).
DW_TAG_INLINED_SUBROUTINE = 0x1D
DW_FORM_IMPLICIT_CONST = 0x21
ULEB_MORE = 0x80          # a (S/U)LEB128 byte with more to come
ULEB_BITS = 0x7F
ULEB_SHIFT = 7
_INLINED_TAG = "DW_TAG_inlined_subroutine"
_SCOPE_TAGS = frozenset({_INLINED_TAG, "DW_TAG_lexical_block"})
# A hostile section may claim anything; a real one is about 40 bytes a site.
MAX_INLINE_SECTION_BYTES = 256 << 20


class CallSite(NamedTuple):
    """One place an inlined function was called at."""

    file: str
    line: int
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column}


Chain = tuple[CallSite, ...]     # innermost call first, outermost (the program's own line) last


class SitePlace(NamedTuple):
    """What the DWARF lookup needs of a site: its code section, the NOP's
    offset there and the function symbol holding it."""

    section: str
    offset: int
    function: str


# --- reading the compiler's DWARF ---------------------------------------------


def dwarf_chains(obj: BpfObject, places: Sequence[SitePlace]) -> list[Chain]:
    """The inlined-at chain of each place from the object's DWARF (() where
    the NOP is in no inlined function, or the object has no usable DWARF)."""
    empty: list[Chain] = [() for _ in places]
    if obj.section(DEBUG_INFO_SECTION) is None or not places:
        return empty
    try:
        return _read_chains(obj, places)
    except Exception:   # noqa: BLE001  pyelftools on untrusted DWARF: any error means none
        return empty


def has_inline_information(obj: BpfObject) -> bool:
    """Whether anything in ``obj`` may say where a site was inlined: its
    `.bpf_sdt_inline`, or DWARF with a unit that declares inlined
    subroutines.  Where nothing does, every chain is () and readers build no
    per-site records (an object of generated code has a million sites and
    DWARF without inlining)."""
    if obj.section(INLINE_SECTION) is not None:
        return True
    if obj.section(DEBUG_INFO_SECTION) is None:
        return False
    if _abbreviations_declare_inlining(obj) is False:
        return False         # no unit can hold an inlined subroutine: pyelftools not even loaded
    try:
        return any(_declares_inlining(cu) for cu in _dwarf_info(obj).iter_CUs())
    except Exception:   # noqa: BLE001  as dwarf_chains: DWARF pyelftools cannot read says nothing
        return False


def _abbreviations_declare_inlining(obj: BpfObject) -> bool | None:
    """Whether any abbreviation in ``.debug_abbrev`` has the tag
    DW_TAG_inlined_subroutine, read here without pyelftools (whose import
    and set-up cost an instrument run some 30 ms): a unit whose table has
    none cannot hold one.  None when the section is missing, compressed or
    not read to its end (then pyelftools answers, as before)."""
    sec = obj.section(DEBUG_ABBREV_SECTION)
    if sec is None or sec.flags & SHF_COMPRESSED:
        return None
    data = obj.section_data(sec)
    pos, end = 0, len(data)

    def leb() -> int:           # the value's bits; SLEB128's sign is not needed to skip it
        nonlocal pos
        value, shift = 0, 0
        while True:
            if pos >= end:
                raise IndexError(pos)
            byte = data[pos]
            pos += 1
            value |= (byte & ULEB_BITS) << shift
            shift += ULEB_SHIFT
            if not byte & ULEB_MORE:
                return value

    try:
        while pos < end:
            if leb() == 0:          # a table's end (tables follow one another)
                continue
            if leb() == DW_TAG_INLINED_SUBROUTINE:
                return True
            pos += 1                # DW_CHILDREN_yes or _no
            while True:             # (attribute, form) pairs up to (0, 0)
                name, form = leb(), leb()
                if form == DW_FORM_IMPLICIT_CONST:
                    leb()
                if name == 0 and form == 0:
                    break
    except IndexError:
        return None
    return False


def _dwarf_info(obj: BpfObject) -> Any:
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(obj.data))
    # Not relocated: clang relocates BPF debug addresses against section
    # symbols (value 0), so the addend in place is the offset in the section.
    return elf.get_dwarf_info(relocate_dwarf_sections=False)


def _read_chains(obj: BpfObject, places: Sequence[SitePlace]) -> list[Chain]:
    dwarf = _dwarf_info(obj)
    wanted = {p.function for p in places}
    scopes: dict[str, list[tuple[int, int, int, Chain]]] = {}   # function -> (lo, hi, depth, chain)
    for cu in dwarf.iter_CUs():
        if not _declares_inlining(cu):
            continue
        files = _file_names(dwarf, cu)
        for die in cu.get_top_DIE().iter_children():
            name = _attr(die, "DW_AT_name")
            if die.tag == "DW_TAG_subprogram" and isinstance(name, bytes):
                function = name.decode("utf-8", "replace")
                if function in wanted:
                    _collect(die, (), 0, files, scopes.setdefault(function, []))
    return [_innermost(scopes.get(p.function, ()), p.offset) for p in places]


def _declares_inlining(cu: Any) -> bool:
    """Whether the unit's abbreviations declare DW_TAG_inlined_subroutine at
    all: a unit without cannot have one, and walking its DIEs is the costly
    part (a generated object with 10,000 sites)."""
    table = cu.get_abbrev_table()
    decls = getattr(table, "_abbrev_map", None)
    return decls is None or any(d["tag"] == _INLINED_TAG for d in decls.values())


def _attr(die: Any, name: str) -> Any:
    a = die.attributes.get(name)
    return a.value if a is not None else None


def _file_names(dwarf: Any, cu: Any) -> list[str]:
    """The unit's line-table files as paths: the compile directory joined
    with the directory and name the compiler was given, normalised, as
    clang's BTF line_info spells them."""
    program = dwarf.line_program_for_CU(cu)
    if program is None:
        return []
    comp_dir = _attr(cu.get_top_DIE(), "DW_AT_comp_dir") or b""
    dirs = [comp_dir, *program["include_directory"]] if program.header.version < 5 \
        else list(program["include_directory"])
    out = []
    for entry in program["file_entry"]:
        d = dirs[entry.dir_index] if entry.dir_index < len(dirs) else b""
        path = os.path.join(comp_dir, d, entry.name)
        out.append(os.path.normpath(path.decode("utf-8", "replace")))
    if program.header.version < 5:
        out.insert(0, "")     # DWARF 4 numbers files from 1
    return out


def _collect(die: Any, chain: Chain, depth: int, files: list[str],
             out: list[tuple[int, int, int, Chain]]) -> None:
    for child in die.iter_children():
        if child.tag not in _SCOPE_TAGS:
            continue
        inner = chain
        if child.tag == _INLINED_TAG:
            line = _attr(child, "DW_AT_call_line")
            index = _attr(child, "DW_AT_call_file")
            if isinstance(line, int) and isinstance(index, int) and 0 <= index < len(files):
                inner = (CallSite(files[index], line, _attr(child, "DW_AT_call_column")), *chain)
                for lo, hi in _ranges(child):
                    out.append((lo, hi, depth + 1, inner))
        _collect(child, inner, depth + 1, files, out)


def _ranges(die: Any) -> Iterable[tuple[int, int]]:
    lo, high = _attr(die, "DW_AT_low_pc"), die.attributes.get("DW_AT_high_pc")
    if isinstance(lo, int) and high is not None and isinstance(high.value, int):
        # DW_AT_high_pc is a length unless it is an address (DW_FORM_addr*)
        hi = high.value if high.form.startswith("DW_FORM_addr") else lo + high.value
        yield lo, hi


def _innermost(scopes: Iterable[tuple[int, int, int, Chain]], offset: int) -> Chain:
    best: tuple[int, Chain] = (0, ())
    for lo, hi, depth, chain in scopes:
        if lo <= offset < hi and depth > best[0]:
            best = (depth, chain)
    return best[1]


# --- the section ----------------------------------------------------------------


def encode_section(chains: Sequence[Chain]) -> bytes:
    """`.bpf_sdt_inline`'s bytes: UTF-8 JSON, one chain per notes entry in
    entry order, each call site [file index, line, column or null], innermost
    first; file names once each."""
    files: dict[str, int] = {}
    sites = [[[files.setdefault(c.file, len(files)), c.line, c.column] for c in chain] for chain in chains]
    doc = {"format": INLINE_FORMAT, "files": list(files), "sites": sites}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_section(data: bytes, count: int) -> list[Chain] | None:
    """The chains of a section for ``count`` entries; None when it is not one
    this version reads or does not describe that many entries."""
    if len(data) > MAX_INLINE_SECTION_BYTES:
        return None
    try:
        doc = json.loads(data)
        files = doc["files"]
        sites = doc["sites"]
        if doc["format"] != INLINE_FORMAT or len(sites) != count:
            return None
        return [tuple(CallSite(str(files[f]), int(line), None if col is None else int(col))
                      for f, line, col in chain) for chain in sites]
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def set_section(img: ElfImage, chains: Sequence[Chain]) -> None:
    """Write (or replace) `.bpf_sdt_inline` in an image; flags 0: not
    SHF_ALLOC, so no loader reads it.  Nothing is written when no chain is
    known, so objects without inlined sites are unchanged."""
    old = img.index_of(INLINE_SECTION)
    if old is not None:
        img.remove_section_indices({old})
    if any(chains):
        img.add_section(SecRec(INLINE_SECTION, SHT_PROGBITS, 0, encode_section(chains)))


# --- writers: link and instrument ----------------------------------------------------


def entry_chains(obj: BpfObject, entries: Sequence[NoteEntry]) -> list[Chain]:
    """The chain of each of ``entries`` (decoded from ``obj``), in their order:
    from the object's section or its DWARF, as a reader would see them."""
    from bpf_sdt.notes import FunctionIndex

    if not has_inline_information(obj):
        return [() for _ in entries]
    functions = FunctionIndex(obj)
    rank = {e.entry_offset: i for i, e in enumerate(sorted(entries, key=lambda e: e.entry_offset))}
    places = [SitePlace(e.section.name, e.offset, functions.at(e.section, e.offset)) for e in entries]
    return inline_chains(obj, places, [rank[e.entry_offset] for e in entries])


def carry_into(obj: BpfObject, img: ElfImage) -> None:
    """Before an image of ``obj`` loses its DWARF (instrument rewrote code):
    the chains its DWARF gives, as `.bpf_sdt_inline`.  An object that has the
    section already keeps it (the image copies it; entries keep their order)."""
    if obj.section(INLINE_SECTION) is not None or obj.section(DEBUG_INFO_SECTION) is None:
        return
    from bpf_sdt.notes import decode_notes

    entries = sorted(decode_notes(obj).entries, key=lambda e: e.entry_offset)
    set_section(img, entry_chains(obj, entries))


# --- one reader for list, trace and instrument ------------------------------------


def inline_chains(obj: BpfObject, places: Sequence[SitePlace], entry_order: Sequence[int]) -> list[Chain]:
    """Each place's chain: from `.bpf_sdt_inline` when the object has one
    (``entry_order[i]`` is place i's index among the notes entries by entry
    offset), else from the object's DWARF."""
    sec = obj.section(INLINE_SECTION)
    if sec is not None:
        chains = decode_section(obj.section_data(sec), len(places))
        if chains is not None:
            return [chains[i] if 0 <= i < len(chains) else () for i in entry_order]
        return [() for _ in places]
    return dwarf_chains(obj, places)

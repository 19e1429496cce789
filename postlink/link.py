"""`bpf-sdt link -o OUT IN...`: static linking that keeps probe notes correct
on any libbpf version (docs/linking.md).

1. Decode every input's sites with the same reader `check` uses.
2. Try the installed linker on the inputs as they are.  Newer libbpf relocates
   an ABS64 word in a data section against code correctly; if its output
   carries exactly the expected sites, it is the result.  Not tried where
   every libbpf would refuse it: notes or call records relocated against a
   section symbol (clang 15 and later write them so).
3. Otherwise (Debian 12's libbpf 1.1 refuses the notes) link copies of the
   inputs with the notes removed, then write the notes back into the linked
   object: entries in input order, each address word moved by where the
   linker placed its input's code section, one R_BPF_64_ABS64 against that
   section's symbol, and the entry symbols.  The calls an instrumented
   input records (.bpf_sdt_calls, docs/format.md section 6) are stripped and
   written back the same way.

The linker's placement (same-named sections appended in input order, each
aligned) is computed, then verified against every input function symbol
and every NOP before anything is written.  OUT is written atomically, and
only once it passes `check`.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bpf_sdt.elf import (
    SHT_STRTAB,
    SHT_SYMTAB,
    ST_TYPE_MASK,
    STT_FUNC,
    STT_SECTION,
    BpfObject,
    ElfImage,
    is_reserved_index,
    load_object,
)
from bpf_sdt.errors import EXIT_OK, InputError, ToolError
from bpf_sdt.format import CALL_LABEL_PREFIX, CALLS_SECTION, NOP_INSN, NOTES_REL_SECTION, NOTES_SECTION
from bpf_sdt.fsutil import resolve_output
from bpf_sdt.inlined import INLINE_SECTION, Chain, set_section
from bpf_sdt.model import Declaration, escape_text
from bpf_sdt.notes import ADDRESS_WORD_SIZE, NoteEntry, encode_entry
from bpf_sdt.rewrite import append_address_entries, append_call_words
from bpf_sdt.toolchain import find_bpftool

from .check import ObjectReport, analyze, call_words, write_checked, write_output

UNDECODABLE = "\ufffd"          # what the ELF reader puts for bytes that are not UTF-8
# The notes section as the compiler emits it: no alignment (docs/format.md).
NOTES_ALIGN = 1


@dataclass(frozen=True)
class InputCall:
    """A call instrument inserted, as one input records it."""

    input: int
    observer: str
    section: str
    offset: int


@dataclass(frozen=True)
class Placement:
    """Where each input's sections start in the linked output."""

    base: dict[tuple[int, str], int]


@dataclass(frozen=True)
class Linked:
    """The linked object, decoded, and check's report of it when linking ran
    one (None: nothing was checked yet; the caller checks what it writes)."""

    obj: BpfObject
    report: ObjectReport | None


# A site of one input: the input's index and its decoded entry, re-encoded
# (never copied) into the output.
InputSite = tuple[int, NoteEntry]


def run_link(output: str, inputs: Sequence[str], bpftool: str | None = None) -> int:
    link(Path(output), [Path(p) for p in inputs], bpftool)
    return EXIT_OK


def link(output: Path, inputs: list[Path], bpftool: str | None = None) -> ObjectReport:
    """`bpf-sdt link`: OUT written atomically, once it passes check."""
    try:   # refuse an output that is no regular file before doing any work
        resolve_output(output)
    except OSError as e:
        raise InputError(f"cannot write {output}: {e.strerror}") from None
    linked = link_objects([checked_input(load_object(p)) for p in inputs], str(output), bpftool)
    if linked.report is None:
        return write_checked(output, linked.obj.data, "the linked object")
    write_output(output, linked.obj.data)
    return linked.report


def link_objects(inputs: list[ObjectReport], name: str, bpftool: str | None = None) -> Linked:
    """Link the analyzed inputs (see checked_input) into one object, decoded
    as ``name``.  Nothing is written but temporaries for the linker."""
    _check_prototypes(inputs)
    objs = [r.obj for r in inputs]
    sites = [(i, e) for i, r in enumerate(inputs) for e in r.decoding.entries]    # notes order: kept
    calls = [InputCall(i, observer, o.sections[shndx].name, offset)
             for i, o in enumerate(objs) for observer, shndx, offset in call_words(o)]
    names = [Path(r.path) for r in inputs]
    tool = find_bpftool(bpftool)     # bpftool, else $BPF_SDT_BPFTOOL, else PATH and /usr/sbin
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-link-") as tmp:
        direct = Path(tmp) / "direct.o"
        if sites and not _linker_refuses_records(objs) and \
                _bpftool_link(tool, direct, _copies(objs, Path(tmp)), check=False):
            linked = load_object(direct)
            report = analyze(linked)
            if not report.errors and _same_sites(report, objs, sites, linked):
                return Linked(BpfObject(name, linked.data), report)
        stripped = []
        for i, o in enumerate(objs):
            path = Path(tmp) / f"in{i}.o"
            path.write_bytes(strip_notes(o))
            stripped.append(path)
        base = Path(tmp) / "base.o"
        _bpftool_link(tool, base, stripped, check=True, names=names)
        linked = load_object(base)
    if not sites:
        return Linked(BpfObject(name, linked.data), analyze(linked))
    placement = _placement(objs, linked)
    inline = [c for r in inputs for c in r.table.notes_order_chains()]   # the linker drops DWARF
    return Linked(BpfObject(name, _add_notes(linked, sites, placement, calls, inline)), None)


def _linker_refuses_records(objs: list[BpfObject]) -> bool:
    """Whether libbpf's linker refuses the inputs as they are because of our
    records: it refuses any relocation against a section symbol in a section
    that is not code (linker.c, linker_append_elf_relos; every version so
    far), and clang 15 and later relocate the notes' and call records'
    address words against the code section's symbol.  The direct link would
    then only cost a linker run over every input (a second of a 1M-site
    link), so it is not tried.  The first relocation decides in practice;
    symbols out of range are the check's to report, not this guess's."""
    for o in objs:
        table = o.symbol_table
        for sec in (*o.sections_named(NOTES_SECTION), *o.sections_named(CALLS_SECTION)):
            _, relocs = o.relocations(sec)
            for r in relocs:
                if 0 <= r.symbol < table.count and table.record(r.symbol)[1] & ST_TYPE_MASK == STT_SECTION:
                    return True
    return False


def _copies(objs: list[BpfObject], tmp: Path) -> list[Path]:
    """The inputs' bytes as files for the linker: the bytes checked are the
    bytes linked, whatever happens to the user's files meanwhile."""
    paths = []
    for i, o in enumerate(objs):
        path = tmp / f"input{i}.o"
        path.write_bytes(o.data)
        paths.append(path)
    return paths


def checked_input(obj: BpfObject) -> ObjectReport:
    """An input's check report; the input is refused if its notes are broken
    (or its names could not be written back)."""
    refuse_undecodable_names(obj)
    report = analyze(obj)
    if report.errors:
        raise InputError(f"{obj.path}: its probe notes are broken ({report.first_error()}); "
                         f"run `bpf-sdt check {obj.path}`")
    return report


def refuse_undecodable_names(obj: BpfObject) -> None:
    """An object is rewritten from its decoded names, and a name that is not
    UTF-8 decodes with U+FFFD in place of its bytes: writing it back would
    rename the symbol or section, so such an object is refused instead."""
    names = [("symbol", sym.name) for sym in obj.symbols] + [("section", sec.name) for sec in obj.sections]
    for kind, name in names:
        if UNDECODABLE in name:
            raise InputError(f"{obj.path}: {kind} name {escape_text(name)!r} is not UTF-8; rewriting the object "
                             "would change it")


def strip_notes(obj: BpfObject) -> bytes:
    """The object without its notes and call records: the sections named
    .bpf_sdt_notes or .bpf_sdt_calls and the relocation sections applying to
    them (found by what they apply to, not by name: a name says nothing about
    what a section is)."""
    img = ElfImage.from_object(obj)
    img.remove_section_indices({s.index for name in (NOTES_SECTION, CALLS_SECTION, INLINE_SECTION)
                                for s in obj.sections_named(name) if s.type not in (SHT_SYMTAB, SHT_STRTAB)})
    return img.to_bytes()


def _check_prototypes(reports: list[ObjectReport]) -> None:
    """One probe name, one prototype: an observer of a linked object gets one
    argument list, so inputs that disagree are refused, naming both."""
    seen: dict[str, tuple[Declaration, str]] = {}
    for report in reports:
        path = report.path
        for name, decl in sorted(report.declarations.items()):
            first = seen.setdefault(name, (decl, path))
            if not first[0].same_prototype(decl):
                raise InputError(f"probe '{name}' is declared as {first[0].prototype()} in {first[1]} "
                                 f"and as {decl.prototype()} in {path}; one name needs one prototype")


def _bpftool_link(tool: str, out: Path, inputs: Sequence[Path], check: bool,
                  names: Sequence[Path] | None = None) -> bool:
    # bpftool prints symbol names as the object spells them, in any bytes
    res = subprocess.run([tool, "gen", "object", str(out), *map(str, inputs)],
                         capture_output=True, encoding="utf-8", errors="backslashreplace", check=False)
    if res.returncode == 0:
        return True
    if check:
        msg = " ".join(line.strip() for line in (res.stderr or res.stdout).splitlines()[-2:])
        for i, n in enumerate(names or inputs):  # name the user's file, not our temporary
            msg = msg.replace(str(inputs[i]), str(n))
        raise ToolError(f"bpftool gen object failed: {msg}")
    return False


def _placement(objs: list[BpfObject], linked: BpfObject) -> Placement:
    """Input section -> output offset, as libbpf's linker lays sections out."""
    base: dict[tuple[int, str], int] = {}
    filled: dict[str, int] = {}
    for i, o in enumerate(objs):
        for s in o.sections:
            if not s.executable:
                continue
            start = filled.get(s.name, 0)
            start += -start % max(s.addralign, 8)
            base[(i, s.name)] = start
            filled[s.name] = start + s.size
    _verify_placement(objs, linked, base)
    return Placement(base)


def _verify_placement(objs: list[BpfObject], linked: BpfObject,
                      base: dict[tuple[int, str], int]) -> None:
    out_funcs: dict[tuple[str, str], list[int]] = {}
    for sym in linked.symbols:
        sec = None if is_reserved_index(sym.shndx) else linked.section_at(sym.shndx)
        if sym.type == STT_FUNC and sec is not None:
            out_funcs.setdefault((sec.name, sym.name), []).append(sym.value)
    for i, o in enumerate(objs):
        for sym in o.symbols:
            sec = None if is_reserved_index(sym.shndx) else o.section_at(sym.shndx)
            if sym.type != STT_FUNC or sec is None or not sec.executable:
                continue
            want = base[(i, sec.name)] + sym.value
            if want not in out_funcs.get((sec.name, sym.name), []):
                raise InputError(f"{o.path}: function {sym.name} is not where the linker layout "
                                 f"says ({sec.name}+{want:#x}); cannot place its probe notes")


def _same_sites(report: ObjectReport, objs: list[BpfObject], sites: list[InputSite],
                linked: BpfObject) -> bool:
    try:
        placement = _placement(objs, linked)
    except InputError:
        return False
    want = sorted((e.section.name, placement.base[(i, e.section.name)] + e.offset) for i, e in sites)
    return want == sorted((e.section.name, e.offset) for e in report.decoding.entries)


def _add_notes(linked: BpfObject, sites: list[InputSite], placement: Placement,
               calls: list[InputCall], inline: Sequence[Chain] = ()) -> bytes:
    img = ElfImage.from_object(linked)
    section_index: dict[str, int] = {}        # a million sites name a few code sections
    args_bytes: dict[int, bytes] = {}     # and have a few argument lists: by id(), the decoder shares them
    entries = []
    for i, e in sites:
        section = e.section.name
        target = placement.base[(i, section)] + e.offset
        sec_index = section_index.get(section)
        if sec_index is None:
            sec_index = section_index[section] = _linked_section(img, section)
        if not img.sections[sec_index].data.startswith(NOP_INSN, target):
            raise InputError(f"{section}+{target:#x} in the linked object is not the probe NOP")
        args = args_bytes.get(id(e.args))
        if args is None:      # the argument insns alone: an entry of no address word's worth
            args = args_bytes[id(e.args)] = encode_entry(0, e.args)[ADDRESS_WORD_SIZE:]
        entries.append((e.symbol, sec_index, encode_entry(target, ()) + args))
    append_address_entries(img, NOTES_SECTION, NOTES_REL_SECTION, NOTES_ALIGN, entries)
    append_call_words(img, [_placed_call(img, c, placement) for c in calls])
    set_section(img, inline)    # one chain per entry, in the order written above
    return img.to_bytes()


def _linked_section(img: ElfImage, name: str) -> int:
    sec_index = img.index_of(name)
    if sec_index is None:
        raise InputError(f"linked object has no section {name}")
    return sec_index


def _placed_call(img: ElfImage, call: InputCall, placement: Placement) -> tuple[str, int, int]:
    return (CALL_LABEL_PREFIX + call.observer, _linked_section(img, call.section),
            placement.base[(call.input, call.section)] + call.offset)

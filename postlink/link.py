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

import contextlib
import itertools
import subprocess
import tempfile
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bpf_sdt.elf import (
    R_SYM_SHIFT,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    ST_TYPE_MASK,
    STT_FUNC,
    STT_SECTION,
    BpfObject,
    ElfImage,
    is_reserved_index,
    load_object,
    put_u64_words,
    section_view,
)
from bpf_sdt.errors import EXIT_OK, InputError, ToolError
from bpf_sdt.format import CALL_LABEL_PREFIX, CALLS_SECTION, NOP_INSN, NOTES_REL_SECTION, NOTES_SECTION
from bpf_sdt.fsutil import resolve_output
from bpf_sdt.inlined import INLINE_SECTION, has_inline_information, set_section
from bpf_sdt.insn import INSN_SIZE
from bpf_sdt.model import Declaration, escape_text
from bpf_sdt.notes import ADDRESS_WORD_SIZE, decode_notes, encode_entry, forget
from bpf_sdt.rewrite import append_address_entries, append_call_words
from bpf_sdt.toolchain import find_bpftool

from .check import ObjectReport, analyze, call_words, write_output
from .linkproof import LinkInput, MovedNotes, verify_linked

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


@dataclass(frozen=True)
class LinkedImage:
    """The linker's output with the notes moved in, not yet written out,
    and what was moved (for linkproof.verify_linked)."""

    img: ElfImage
    moved: MovedNotes


def run_link(output: str, inputs: Sequence[str], bpftool: str | None = None) -> int:
    link(Path(output), [Path(p) for p in inputs], bpftool)
    return EXIT_OK


def link(output: Path, inputs: list[Path], bpftool: str | None = None) -> ObjectReport | None:
    """`bpf-sdt link`: OUT written atomically, once it passes check (proved
    without a second decode of every site: linkproof; then no report).
    Every input is read and its copy without notes written first, so that
    the linker runs while the inputs are checked (_Prepared.start_linker).
    Then each input is checked and kept as columns (LinkInput), its check
    dropped before the next is checked: a million sites are never all objects."""
    try:   # refuse an output that is no regular file before doing any work
        resolve_output(output)
    except OSError as e:
        raise InputError(f"cannot write {output}: {e.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-link-") as tmp:
        prepared = _Prepared(Path(tmp))
        staged, unreadable = _stage(prepared, inputs)
        if unreadable is None and all(refusal is None for _, refusal in staged):
            prepared.start_linker(bpftool)
        with _killed_on_error(prepared.linker):
            while staged:
                obj, refusal = staged.popleft()
                report = checked_input(obj)
                prepared.add(report, refusal)
                _release(report)
                del obj, report
            if unreadable is not None:
                raise unreadable
            linked = _link(prepared, str(output), bpftool)
    if isinstance(linked, Linked):       # linked directly, or no sites: checked by _link
        write_output(output, linked.obj.data)
        return linked.report
    del prepared
    out, moved = BpfObject(str(output), linked.img.to_bytes()), linked.moved
    del linked          # the image's tables: OUT holds them now
    verify_linked(out, moved)
    write_output(output, out.data)
    return None


def _stage(prepared: _Prepared, inputs: list[Path]) -> tuple[deque[tuple[BpfObject, InputError | None]],
                                                               InputError | None]:
    """Each input read, and staged for the linker (_Prepared.stage), in
    order, up to the first that cannot be read (its error: the second
    value) or staged (its refusal: beside it).  Either is raised at that
    input's turn, after the checks of the inputs before it, so link reports
    what it reported when each input was checked before the next was read."""
    staged: deque[tuple[BpfObject, InputError | None]] = deque()
    for path in inputs:
        try:
            obj = load_object(path)
        except InputError as e:
            return staged, e
        try:
            prepared.stage(obj)
        except InputError as e:
            staged.append((obj, e))
            break
        staged.append((obj, None))
    return staged, None


def _release(report: ObjectReport) -> None:
    """An input kept as columns is done with: its object's caches (its
    symbol table, site table, ...) refer back to it, so its check would live
    on in cycles until the collector ran, over everything alive (a quarter
    of a second at 1M sites).  Dropped here, reference counting frees the
    check (a million entries) before the next input is read.  The notes
    decoder's kept decoding goes first: it refers to the object too, and
    would hand the emptied object to a later decode of the same bytes."""
    forget(report.obj)
    vars(report.obj).clear()


def link_objects(inputs: list[ObjectReport], name: str, bpftool: str | None = None) -> Linked:
    """Link the analyzed inputs (see checked_input) into one object, decoded
    as ``name``.  Nothing is written but temporaries for the linker."""
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-link-") as tmp:
        prepared = _Prepared(Path(tmp))
        for report in inputs:
            prepared.add(report)
        linked = _link(prepared, name, bpftool)
    if isinstance(linked, LinkedImage):
        return Linked(BpfObject(name, linked.img.to_bytes()), None)
    return linked


class _Prepared:
    """The inputs as link keeps them, in order: each one's columns, its copy
    without notes for the linker and, while the direct link is still
    possible, its bytes as they are (the bytes checked are the bytes linked,
    whatever happens to the user's files meanwhile)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.inputs: list[LinkInput] = []
        self.stripped: list[Path] = []
        self.copies: list[Path] | None = []     # None: some input's records the linker refuses
        self.prototypes: dict[str, tuple[Declaration, str]] = {}
        self.names: dict[str, str] = {}          # one string per entry symbol name across inputs
        self.linker: subprocess.Popen[str] | None = None    # linking the stripped copies, once started

    def stage(self, obj: BpfObject) -> None:
        """The input's copies for the linker: without its notes and, while
        the direct link is possible, as it is."""
        i = len(self.stripped)
        if self.copies is not None:
            if _linker_refuses_records(obj):
                self.copies = None
            else:
                self.copies.append(self._write(f"input{i}.o", obj.data))
        self.stripped.append(self._write(f"in{i}.o", strip_notes(obj)))

    def add(self, report: ObjectReport, refusal: InputError | None = None) -> None:
        """A checked input, staged already or now.  ``refusal``: what staging
        it raised (link stages every input before checking any), raised here,
        after its prototypes, as when an input was staged once checked."""
        i = len(self.inputs)
        _check_prototypes([report], self.prototypes)
        if refusal is not None:
            raise refusal
        if i == len(self.stripped):
            self.stage(report.obj)
        self.inputs.append(_link_input(i, report, self.names))

    def start_linker(self, bpftool: str | None) -> None:
        """The link of the stripped copies started before the inputs are
        checked, to run meanwhile (at 1M sites bpftool takes about a sixth of
        link's time), where it is the link made: when no direct link is to be
        tried (some input's records the linker refuses) and bpftool is found
        (else _link looks for it after the checks, as it always did)."""
        if self.copies is not None:
            return
        try:
            tool = find_bpftool(bpftool)
        except ToolError:
            return
        self.linker = _start_bpftool(tool, self.tmp / "base.o", self.stripped)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    @property
    def has_sites(self) -> bool:
        return any(len(p.nop_offsets) for p in self.inputs)


def _link_input(i: int, report: ObjectReport, names: dict[str, str]) -> LinkInput:
    """What link keeps of an input: its sections, functions, calls and
    inline chains, and its entries as columns: runs of one code section
    (the decoder gives the entries of one section one Section object), each
    NOP's and entry's offset, the entry symbols' names, the notes' bytes."""
    obj, entries = report.obj, report.decoding.entries
    if entries:
        _check_argument_encoding(report)
    symbols = entries.symbols(0, len(entries))
    notes = report.decoding.notes
    return LinkInput(
        path=report.path, sections=obj.sections, functions=obj.symbol_table.of_type(STT_FUNC),
        runs=[(sec.name, lo, hi) for sec, lo, hi in entries.section_runs()],
        nop_offsets=array("Q", entries.offsets), entry_offsets=array("Q", entries.entry_offsets),
        address_words=array("Q", map(ADDRESS_WORD_SIZE.__rfloordiv__, entries.entry_offsets)),
        names=list(map(names.setdefault, symbols, symbols)), shapes=_shapes(report),
        notes=section_view(obj, notes).tobytes() if notes is not None and entries else b"",
        calls=[InputCall(i, observer, _call_section(report, shndx), offset)
               for observer, shndx, offset in call_words(obj)],
        # Where nothing says a site was inlined, every chain is () (inlined.has_inline_information):
        # no per-site pass over the table for them.  An input without sites (the recorder, an
        # observer object) has no chain to read: its DWARF is not even loaded (pyelftools, ~30 ms).
        inline=report.table.notes_order_chains() if entries and has_inline_information(obj)
        else [()] * len(entries))


def _call_section(report: ObjectReport, shndx: int) -> str:
    """The code section a recorded call is in: link moves a call word by
    where the linker put that section.  checked_input has refused an input
    with a call anywhere else (check's SDT120)."""
    sec = report.obj.section_at(shndx)
    assert sec is not None and sec.executable, f"{report.path}: a call outside code passed SDT120"
    return sec.name


def _shapes(report: ObjectReport) -> set[tuple[str, int]]:
    """(probe, argument count) of an input's sites: its prototypes' counts,
    which its check held every site to, and for a probe it does not declare
    (GCC's objects declare none) the sites' own counts."""
    decls = report.declarations
    shapes = {(probe, decls[probe].arity) for probe in report.decoding.entry_probes if probe in decls}
    if not report.decoding.entry_probes <= decls.keys():
        entries = report.decoding.entries
        shapes |= {(entries.probes[p], len(entries.bodies[b].raw) // INSN_SIZE)
                   for p, b in set(zip(entries.probe_ids, entries.body_ids, strict=True))
                   if entries.probes[p] not in decls}
    return shapes


def _link(prepared: _Prepared, name: str, bpftool: str | None) -> Linked | LinkedImage:
    """Link the prepared inputs: directly where the linker takes their
    records (and then their sites must be where they belong), else their
    copies without notes, the notes then moved into the linker's output and
    left as an image: the caller may drop the inputs first."""
    tool = find_bpftool(bpftool)     # bpftool, else $BPF_SDT_BPFTOOL, else PATH and /usr/sbin
    inputs = prepared.inputs
    tmp = prepared.tmp
    if prepared.has_sites and prepared.copies is not None and \
            _bpftool_link(tool, tmp / "direct.o", prepared.copies):
        linked = load_object(tmp / "direct.o")
        report = analyze(linked)
        if not report.errors and _same_sites(report, inputs, linked):
            return Linked(BpfObject(name, linked.data), report)
    linker = prepared.linker or _start_bpftool(tool, tmp / "base.o", prepared.stripped)
    with _killed_on_error(linker):     # the notes are moved while the linker runs: neither needs the other
        layout = _layout(inputs)
        moved = _move_notes(inputs, layout) if prepared.has_sites else MovedNotes()
        _bpftool_result(linker, prepared.stripped, check=True, names=[Path(p.path) for p in inputs])
    linked = load_object(tmp / "base.o")
    if not prepared.has_sites:
        return Linked(BpfObject(name, linked.data), analyze(linked))
    _verify_placement(inputs, linked, layout)
    placement = Placement(layout)
    img = ElfImage.from_object(linked)
    _place_notes(img, inputs, moved)
    placed_calls = [_placed_call(img, c, placement) for p in inputs for c in p.calls]
    inline = [c for p in inputs for c in p.inline]   # the linker drops DWARF
    append_address_entries(img, NOTES_SECTION, NOTES_REL_SECTION, NOTES_ALIGN, moved.entries)
    append_call_words(img, placed_calls)
    set_section(img, inline)    # one chain per entry, in the order written above
    moved.linker_output, moved.calls, moved.inline = linked, placed_calls, inline
    return LinkedImage(img, moved)


def _linker_refuses_records(o: BpfObject) -> bool:
    """Whether libbpf's linker refuses an input as it is because of our
    records: it refuses any relocation against a section symbol in a section
    that is not code (linker.c, linker_append_elf_relos; every version so
    far), and clang 15 and later relocate the notes' and call records'
    address words against the code section's symbol.  The direct link would
    then only cost a linker run over every input (a second of a 1M-site
    link), so it is not tried.  The first relocation decides in practice
    (read from the columns: no object per record); symbols out of range are
    the check's to report, not this guess's."""
    table = o.symbol_table
    for sec in (*o.sections_named(NOTES_SECTION), *o.sections_named(CALLS_SECTION)):
        rel = next((s for s in o.sections if s.type in (SHT_REL, SHT_RELA) and s.info == sec.index), None)
        for info in o.relocation_columns(rel).infos if rel is not None else ():
            symbol = info >> R_SYM_SHIFT
            if symbol < table.count and table.record(symbol)[1] & ST_TYPE_MASK == STT_SECTION:
                return True
    return False


def checked_input(obj: BpfObject) -> ObjectReport:
    """An input's check report; the input is refused if its probe records
    (notes, calls) are broken, or its names could not be written back."""
    refuse_undecodable_names(obj)
    # Decoded first (analyze's first step, kept for it) with the entry symbols'
    # names kept: _link_input needs every one, and they are read anyway to find
    # the probes; read again, they were 0.4 s of a 1M-site link.
    decode_notes(obj, keep_names=True)
    report = analyze(obj)
    if report.errors:
        raise InputError(f"{obj.path}: its probe records are broken ({report.first_error()}); "
                         f"run `bpf-sdt check {obj.path}`")
    return report


def refuse_undecodable_names(obj: BpfObject) -> None:
    """An object is rewritten from its decoded names, and a name that is not
    UTF-8 decodes with U+FFFD in place of its bytes: writing it back would
    rename the symbol or section, so such an object is refused instead."""
    table = obj.symbol_table    # ASCII names (the rule, and one scan) decode as they are
    symbols = [] if table.names_are_ascii() else [("symbol", sym.name) for sym in obj.symbols]
    for kind, name in [*symbols, *(("section", sec.name) for sec in obj.sections)]:
        if UNDECODABLE in name:
            raise InputError(f"{obj.path}: {kind} name {escape_text(name)!r} is not UTF-8; rewriting the object "
                             "would change it")


def strip_notes(obj: BpfObject) -> bytes:
    """The object without its notes and call records: the sections named
    .bpf_sdt_notes or .bpf_sdt_calls and the relocation sections applying to
    them (found by what they apply to, not by name: a name says nothing about
    what a section is)."""
    return ElfImage.without_sections(obj, {s.index for name in (NOTES_SECTION, CALLS_SECTION, INLINE_SECTION)
                                           for s in obj.sections_named(name)
                                           if s.type not in (SHT_SYMTAB, SHT_STRTAB)}).to_bytes()


def _check_prototypes(reports: Sequence[ObjectReport], seen: dict[str, tuple[Declaration, str]] | None = None) -> None:
    """One probe name, one prototype: an observer of a linked object gets one
    argument list, so inputs that disagree (with each other, or with one
    before them: ``seen``, each name's first prototype and its input) are
    refused, naming both."""
    seen = {} if seen is None else seen
    for report in reports:
        path = report.path
        for name, decl in sorted(report.declarations.items()):
            first = seen.setdefault(name, (decl, path))
            if not first[0].same_prototype(decl):
                raise InputError(f"probe '{name}' is declared as {first[0].prototype()} in {first[1]} "
                                 f"and as {decl.prototype()} in {path}; one name needs one prototype")


def _bpftool_link(tool: str, out: Path, inputs: Sequence[Path]) -> bool:
    """Whether bpftool links ``inputs`` into ``out`` (the direct link: a
    failure is no error, the stripped copies are linked next)."""
    return _bpftool_result(_start_bpftool(tool, out, inputs), inputs, check=False)


def _start_bpftool(tool: str, out: Path, inputs: Sequence[Path]) -> subprocess.Popen[str]:
    # bpftool prints symbol names as the object spells them, in any bytes
    return subprocess.Popen([tool, "gen", "object", str(out), *map(str, inputs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, encoding="utf-8", errors="backslashreplace")


@contextlib.contextmanager
def _killed_on_error(proc: subprocess.Popen[str] | None) -> Iterator[None]:
    """As subprocess.run does: a failure (or a signal) meanwhile ends the
    child (if one was started)."""
    try:
        yield
    except BaseException:
        if proc is not None:
            proc.kill()
            proc.wait()
        raise


def _bpftool_result(proc: subprocess.Popen[str], inputs: Sequence[Path], check: bool,
                    names: Sequence[Path] | None = None) -> bool:
    with _killed_on_error(proc):
        stdout, stderr = proc.communicate()
    if proc.returncode == 0:
        return True
    if check:
        msg = " ".join(line.strip() for line in (stderr or stdout).splitlines()[-2:])
        for i, n in enumerate(names or inputs):  # name the user's file, not our temporary
            msg = msg.replace(str(inputs[i]), str(n))
        raise ToolError(f"bpftool gen object failed: {msg}")
    return False


def _placement(inputs: list[LinkInput], linked: BpfObject) -> Placement:
    """Input section -> output offset, as libbpf's linker lays sections out,
    verified against the linker's output."""
    base = _layout(inputs)
    _verify_placement(inputs, linked, base)
    return Placement(base)


def _layout(inputs: list[LinkInput]) -> dict[tuple[int, str], int]:
    """Input section -> output offset, as libbpf's linker lays sections out
    (same-named sections appended in input order, each aligned)."""
    base: dict[tuple[int, str], int] = {}
    filled: dict[str, int] = {}
    for i, p in enumerate(inputs):
        for s in p.sections:
            if not s.executable:
                continue
            start = filled.get(s.name, 0)
            start += -start % max(s.addralign, 8)
            base[(i, s.name)] = start
            filled[s.name] = start + s.size
    return base


def _verify_placement(inputs: list[LinkInput], linked: BpfObject,
                      base: dict[tuple[int, str], int]) -> None:
    out_funcs: dict[tuple[str, str], list[int]] = {}
    for name, shndx, value in linked.symbol_table.of_type(STT_FUNC):
        sec = None if is_reserved_index(shndx) else linked.section_at(shndx)
        if sec is not None:
            out_funcs.setdefault((sec.name, name), []).append(value)
    for i, p in enumerate(inputs):
        for name, shndx, value in p.functions:
            sec = None if is_reserved_index(shndx) or shndx >= len(p.sections) else p.sections[shndx]
            if sec is None or not sec.executable:
                continue
            want = base[(i, sec.name)] + value
            if want not in out_funcs.get((sec.name, name), []):
                raise InputError(f"{p.path}: function {name} is not where the linker layout "
                                 f"says ({sec.name}+{want:#x}); cannot place its probe notes")


def _same_sites(report: ObjectReport, inputs: list[LinkInput], linked: BpfObject) -> bool:
    try:
        placement = _placement(inputs, linked)
    except InputError:
        return False
    want = sorted((section, placement.base[(i, section)] + offset) for i, p in enumerate(inputs)
                  for section, lo, hi in p.runs for offset in p.nop_offsets[lo:hi])
    entries = report.decoding.entries
    names = [sec.name for sec in entries.sections]
    return want == sorted(zip(map(names.__getitem__, entries.section_ids), entries.offsets, strict=True))


def _move_notes(inputs: list[LinkInput], layout: dict[tuple[int, str], int]) -> MovedNotes:
    """Every input's notes moved to where ``layout`` puts its code: in input
    order, each input's notes section copied with every address word set
    to its NOP's new offset (its code section's placement plus the old
    offset).  The argument insns are the input's bytes, which its check
    decoded (and _check_argument_encoding found to be their encoding).  By
    column, a run of entries of one code section at a time: no object per
    site.  Needs no linker output: _place_notes checks the NOPs there."""
    moved = MovedNotes()
    for i, p in enumerate(inputs):
        if not p.runs:
            continue
        targets = array("Q")
        for section, lo, hi in p.runs:
            targets += array("Q", map(layout[(i, section)].__add__, p.nop_offsets[lo:hi]))
        copy = bytearray(p.notes)
        put_u64_words(copy, p.address_words, targets)
        moved.add_input(p, copy, targets)
    return moved


def _place_notes(img: ElfImage, inputs: list[LinkInput], moved: MovedNotes) -> None:
    """Each moved entry's code section in the linker's output ``img``, whose
    code must hold the NOP at every moved offset."""
    section_index: dict[str, int] = {}        # a million sites name a few code sections
    first = 0
    for p in inputs:
        for section, lo, hi in p.runs:
            code_index = section_index.get(section, -1)
            if code_index < 0:
                code_index = section_index[section] = _linked_section(img, section)
            _check_nops(section, img.sections[code_index].data, moved.targets[first + lo: first + hi])
            moved.code_sections += [code_index] * (hi - lo)
        first += len(p.nop_offsets)


def _check_nops(section: str, code: bytes, targets: array[int]) -> None:
    if not all(map(code.startswith, itertools.repeat(NOP_INSN), targets)):
        target = next(t for t in targets if not code.startswith(NOP_INSN, t))
        raise InputError(f"{section}+{target:#x} in the linked object is not the probe NOP")


def _check_argument_encoding(report: ObjectReport) -> None:
    """The argument insns copied are what encode_entry makes of the decoded
    arguments: link writes no byte the decoder did not read as that."""
    for raw, args in report.decoding.entries.bodies:
        if encode_entry(0, args)[ADDRESS_WORD_SIZE:] != raw:
            raise InputError(f"{report.path}: argument insns {raw.hex()} do not re-encode as they are")


def _linked_section(img: ElfImage, name: str) -> int:
    sec_index = img.index_of(name)
    if sec_index is None:
        raise InputError(f"linked object has no section {name}")
    return sec_index


def _placed_call(img: ElfImage, call: InputCall, placement: Placement) -> tuple[str, int, int]:
    return (CALL_LABEL_PREFIX + call.observer, _linked_section(img, call.section),
            placement.base[(call.input, call.section)] + call.offset)

"""Validate the probes of one BPF object against docs/format.md.

Decoding lives in :mod:`bpf_sdt.notes`; this module judges: it turns what
could not be decoded into findings, reads the prototypes from BTF, and checks
what only the whole object can show (duplicates, arity against the
prototype, symbols outside their sections, limits).  ``check`` prints the
findings, ``list`` the sites, and ``link`` refuses inputs with errors.

Rule ids (documented in docs/check.md) are stable; tests build one broken
object per rule.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections import Counter
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bpf_sdt.btf import Btf, BtfKind
from bpf_sdt.elf import (
    R_BPF_64_ABS64,
    R_SYM_SHIFT,
    R_TYPE_MASK,
    SHN_LORESERVE,
    SHT_NOBITS,
    SHT_RELA,
    ST_BIND_SHIFT,
    ST_TYPE_MASK,
    STB_LOCAL,
    STT_FUNC,
    STT_NOTYPE,
    STT_SECTION,
    TEXT_SECTION,
    BpfObject,
    RelocationColumns,
    Section,
    is_reserved_index,
    signed64,
)
from bpf_sdt.errors import InputError
from bpf_sdt.format import (
    CALL_LABEL_PREFIX,
    CALL_WORD_SIZE,
    CALLS_SECTION,
    DECL_TAG_PREFIX,
    INSN_ARRAY_MAX,
    NOTES_SECTION,
)
from bpf_sdt.fsutil import write_atomic
from bpf_sdt.insn import INSN, INSN_SIZE, JMP, JMP_CALL, LD_IMM64, PSEUDO_CALL, SRC_SHIFT
from bpf_sdt.model import Declaration, Finding, Severity, SiteRecord
from bpf_sdt.notes import NoteEntries, ProblemKind, RawSymbols
from bpf_sdt.probes import TAG_RE, tagged_prototype
from bpf_sdt.rules import Rule, RuleTable
from bpf_sdt.sites import SiteTable, site_table

if TYPE_CHECKING:   # imported where used: `check` reads neither line info nor typed arguments
    from bpf_sdt.argtype import ArgType

_QUALIFIERS = {BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG}

# Every rule: its id, its severity and what it means (docs/check.md has the
# table; a test keeps the two equal).  SDT105 and SDT115 are warnings in one
# documented case each (WARNING_CASES), errors otherwise.
RULES: RuleTable = {
    "SDT101": Rule("error", "the notes section has no relocation section"),
    "SDT102": Rule("error", "entry boundaries: symbols missing, misplaced or entries of a bad size"),
    "SDT103": Rule("error", "an entry's argument count differs from its BTF prototype"),
    "SDT104": Rule("error", "an address word without exactly one relocation, or a misplaced relocation"),
    "SDT105": Rule("error", "a relocation type other than R_BPF_64_ABS64"),
    "SDT106": Rule("error", "a relocation symbol outside an executable section"),
    "SDT107": Rule("error", "an address that is not on a goto +0 in its code section"),
    "SDT108": Rule("error", "an argument instruction the format does not allow"),
    "SDT109": Rule("error", "two entries describe one NOP"),
    "SDT110": Rule("error", "a probe with sites but no BTF prototype"),
    "SDT111": Rule("error", "a tag's count differs from its prototype, or one name has two prototypes"),
    "SDT112": Rule("error", "a prototype parameter is a struct/union by value or wider than 8 bytes"),
    "SDT113": Rule("warning", "a declared probe with no site in the object"),
    "SDT114": Rule("warning", "notes without prototypes from GCC: counts and types unchecked"),
    "SDT115": Rule("error", "a linker corrupted the address words, or the notes section is executable"),
    "SDT116": Rule("warning", "more than 256 sites in one program (its functions and those it calls)"),
    "SDT117": Rule("error", "a malformed bpf_sdt: tag, or unreadable BTF"),
    "SDT118": Rule("error", "a symbol outside its section, or in a section that does not exist"),
    "SDT119": Rule("error", "more than one section named .bpf_sdt_notes"),
    "SDT120": Rule("error", "a recorded observer call outside any code section"),
}
WARNING_CASES = {
    "SDT105": "relocation type 12 (binutils <= 2.40, bpf-gcc 12), read as ABS64",
    "SDT115": "the notes section is marked executable (nothing corrupted yet)",
}

# The rule each kind of undecodable note breaks.
RULE_OF_PROBLEM = {
    ProblemKind.NO_RELOCATIONS: "SDT101",
    ProblemKind.NO_BYTES: "SDT102",
    ProblemKind.BOUNDARY: "SDT102",
    ProblemKind.RELOCATION: "SDT104",
    ProblemKind.RELOCATION_TYPE: "SDT105",
    ProblemKind.RELOCATION_SYMBOL: "SDT106",
    ProblemKind.ADDRESS: "SDT107",
    ProblemKind.ARGUMENT: "SDT108",
    ProblemKind.LINKER_OFFSET: "SDT115",
    ProblemKind.DUPLICATE_SECTION: "SDT119",
}
RULE_SYMBOL_OUTSIDE_SECTION = "SDT118"
RULE_CALL_OUTSIDE_CODE = "SDT120"
NOTES_START = f"{NOTES_SECTION}+0x0"
# A refused output's message names this many of its errors.
MAX_ERRORS_SHOWN = 3
# ObjectReport.iter_sites looks up this many sites' functions, places and
# symbols at once: few calls, and short lists.
SITES_AT_A_TIME = 512


class ObjectReport:
    """What ``analyze`` found in one object: its site table, prototypes and
    findings.  Sites are built on demand from the table (``check`` needs
    none; ``list`` streams them)."""

    def __init__(self, obj: BpfObject, table: SiteTable) -> None:
        self.path = obj.path
        self.obj = obj
        self.table = table
        self.decoding = table.decoding
        self.declarations: dict[str, Declaration] = {}
        self.findings: list[Finding] = []

    def add(self, where: str, severity: Severity, message: str, rule: str) -> None:
        known = RULES[rule].severity   # an unknown rule id is a bug here: KeyError
        if severity != known and not (severity == "warning" and rule in WARNING_CASES):
            raise ValueError(f"{rule} is a {known}, not a {severity}")
        self.findings.append(Finding(self.path, where, severity, message, rule))

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    def first_error(self) -> str:
        """The first error, as one line ("" if none)."""
        first = next((f for f in self.findings if f.severity == "error"), None)
        return f"{first.where}: {first.message} [{first.rule}]" if first else ""

    @property
    def entry_names(self) -> set[str]:
        """Probe names of every entry, decoded or not."""
        return self.decoding.entry_probes

    @property
    def entries(self) -> NoteEntries:
        """Decoded entries in site-id order (bpf_sdt.sites)."""
        return self.table.entries

    @property
    def site_count(self) -> int:
        return len(self.decoding.entries)

    def iter_sites(self) -> Iterator[SiteRecord]:
        """`list`'s record of each site, in site-id order: the table's
        function, location and chain, the prototype's spellings and the
        observers the site calls."""
        entries = self.table.entries
        for sec, start, stop in entries.section_runs(SITES_AT_A_TIME):
            yield from self._run_sites(sec, start, stop)

    def _run_sites(self, sec: Section, start: int, stop: int) -> Iterator[SiteRecord]:
        """The records of sites ``start:stop``, of one code section: their
        functions, places and symbols looked up together."""
        table = self.table
        entries = table.entries
        decls, observers, types = self.declarations, self.observers, self.arg_types
        probes, bodies = entries.probes, entries.bodies
        offsets = entries.offsets[start:stop]
        for offset, entry_offset, p, b, symbol, function, (file, line, column), chain in zip(
                offsets, entries.entry_offsets[start:stop], entries.probe_ids[start:stop],
                entries.body_ids[start:stop], entries.symbols(start, stop), table.functions.names(sec, offsets),
                table.lines.places(sec.name, offsets), table.inlined_at[start:stop], strict=True):
            probe = probes[p]
            decl = decls.get(probe)
            yield SiteRecord(probe, sec.name, offset, function, bodies[b].args, decl.types if decl else (),
                             entry_offset, symbol, file, line, column, observers.get((sec.index, offset), ()),
                             types.get(probe, ()), chain)

    @cached_property
    def arg_types(self) -> dict[str, tuple[ArgType, ...]]:
        """Each probe's typed arguments, to show immediates at their declared
        types; none from BTF that cannot be read (check reports it)."""
        try:
            return self.table.types
        except InputError:
            return {}

    @cached_property
    def observers(self) -> dict[tuple[int, int], tuple[str, ...]]:
        """(code section index, NOP offset) -> the observers an instrumented
        site calls, in order (see call_labels)."""
        return call_labels(self.obj, self.entries)

    @cached_property
    def sites(self) -> list[SiteRecord]:
        return list(self.iter_sites())


# --- where sites are, and what they call -------------------------------------

LABEL_INFO = STB_LOCAL << ST_BIND_SHIFT | STT_NOTYPE     # a call label's st_info


def call_labels(obj: BpfObject, entries: NoteEntries) -> dict[tuple[int, int], tuple[str, ...]]:
    """Observers each site calls in an object `bpf-sdt instrument` wrote
    (docs/format.md section 6): per inserted call, an address word in
    .bpf_sdt_calls at a local STT_NOTYPE symbol `___sdt_call_<observer>`
    holds the offset of the call's first instruction, which is in the site's
    code section after its NOP and before the next original instruction.  So
    a call belongs to the nearest probe NOP at or before it in its section."""
    labels: dict[int, list[tuple[int, str]]] = {}
    for observer, code_index, offset in call_words(obj):
        labels.setdefault(code_index, []).append((offset, observer))
    if not labels:
        return {}
    nops: dict[int, list[int]] = {}
    for sec, start, stop in entries.section_runs():
        nops.setdefault(sec.index, []).extend(entries.offsets[start:stop])
    out: dict[tuple[int, int], list[str]] = {}
    for shndx, found in labels.items():
        starts = sorted(set(nops.get(shndx, ())))
        for value, observer in sorted(found):
            k = bisect.bisect_right(starts, value) - 1
            if k >= 0:
                out.setdefault((shndx, starts[k]), []).append(observer)
    return {key: tuple(v) for key, v in out.items()}


def call_words(obj: BpfObject) -> list[tuple[str, int, int]]:
    """(observer, code section index, byte offset) of every call the calls
    section records, in section order."""
    calls = obj.section(CALLS_SECTION)
    if calls is None or calls.type == SHT_NOBITS:
        return []
    symbols = RawSymbols(obj)
    labels = _call_labels(calls, symbols)
    if not labels.words:
        return []
    places = _CallPlaces(obj, calls, symbols)
    keep = list(map(places.placed.__contains__, labels.words))
    words = list(itertools.compress(labels.words, keep))
    observers = symbols.names(list(itertools.compress(labels.indices, keep)),
                              list(itertools.compress(labels.name_offs, keep)))
    found = sorted((word, observer[len(CALL_LABEL_PREFIX):], *places.target(word))
                   for word, observer in zip(words, observers, strict=True))
    return [(observer, code_index, offset) for _, observer, code_index, offset in found
            if places.lands(code_index, offset)]


class _CallLabels(NamedTuple):
    """The call labels, index order: label k is symbol ``indices[k]``, at
    address word ``words[k]`` of the calls section, named at ``name_offs[k]``."""

    indices: array[int]
    words: array[int]
    name_offs: array[int]


def _call_labels(calls: Section, symbols: RawSymbols) -> _CallLabels:
    """Every call label: a local STT_NOTYPE symbol ``___sdt_call_<observer>``
    of the calls section, its value the offset of its word.  Read from the
    symbol table's columns (a call or more per site, and more symbols)."""
    labels = _CallLabels(*symbols.in_section(calls.index, CALL_LABEL_PREFIX.encode()))
    infos = symbols.info_bytes()
    is_label = list(map(LABEL_INFO.__eq__, map(infos.__getitem__, labels.indices)))
    if all(is_label):
        return labels
    return _CallLabels(*(array(column.typecode, itertools.compress(column, is_label)) for column in labels))


class _CallPlaces:
    """The calls section's words a relocation places, and where: an
    R_BPF_64_ABS64 against a defined symbol with the whole word inside the
    section, resolved as a note's address word is.  Any other word names
    nothing (check_calls: SDT120).  Read as the relocations' columns: their
    distinct r_info values (a code section's symbol each) are resolved
    once, not per call."""

    def __init__(self, obj: BpfObject, calls: Section, symbols: RawSymbols) -> None:
        self._obj = obj
        self._sizes: dict[int, int] = {}
        self.data = obj.section_data(calls)
        rel = obj.relocation_section(calls)
        self.columns = obj.relocation_columns(rel) if rel is not None else RelocationColumns(*[memoryview(b"")] * 3)
        self.rela = rel is not None and rel.type == SHT_RELA
        self.targets: dict[int, tuple[int, int, int]] = {}     # r_info -> (section index, base, symbol)
        for info in set(self.columns.infos):
            sym = info >> R_SYM_SHIFT
            if info & R_TYPE_MASK != R_BPF_64_ABS64 or sym >= symbols.count:
                continue
            _name, st_info, _other, shndx, value, _size = symbols.record(sym)
            if not is_reserved_index(shndx):
                self.targets[info] = (shndx, 0 if st_info & ST_TYPE_MASK == STT_SECTION else value, sym)
        last = len(self.data) - CALL_WORD_SIZE
        placing = list(map(operator.and_, map(self.targets.__contains__, self.columns.infos),
                           map(last.__ge__, self.columns.offsets)))
        # word offset -> the relocation placing it (of two at one word, the last: as the old reader kept)
        self.placed = dict(zip(itertools.compress(self.columns.offsets, placing),
                               itertools.compress(itertools.count(), placing), strict=True))

    def lands(self, shndx: int, offset: int) -> bool:
        """Whether a resolved offset is an instruction's inside its section
        (an addend may point anywhere: a word past the section names nothing)."""
        size = self._sizes.get(shndx)
        if size is None:
            sec = self._obj.section_at(shndx)
            size = self._sizes[shndx] = sec.size if sec is not None else 0
        return 0 <= offset < size and offset % INSN_SIZE == 0

    def target(self, word: int) -> tuple[int, int]:
        """(section index, byte offset) a placed word names."""
        k = self.placed[word]
        shndx, base, _sym = self.targets[self.columns.infos[k]]
        addend = signed64(self.columns.addends[k]) if self.rela else \
            int.from_bytes(self.data[word: word + CALL_WORD_SIZE], "little")
        return shndx, base + addend


# --- BTF: probe prototypes --------------------------------------------------


def read_declarations(obj: BpfObject, report: ObjectReport) -> None:
    """Fill ``report.declarations`` from DECL_TAG -> VAR -> PTR -> FUNC_PROTO."""
    btf = obj.btf
    if btf is None:
        return
    for t in btf.types:
        if t.kind != BtfKind.DECL_TAG or not t.name.startswith(DECL_TAG_PREFIX):
            continue
        where = f".BTF+type{t.id}"
        m = TAG_RE.fullmatch(t.name)   # fullmatch: `$` would accept a trailing newline
        if m is None:
            report.add(where, "error", f"malformed probe tag {t.name!r} (want bpf_sdt:<name>:<n>)",
                       "SDT117")
            continue
        name, nargs = m.group(1), int(m.group(2))
        proto = tagged_prototype(btf, t.type)
        if proto is None:
            report.add(where, "error", f"probe '{name}': tag does not lead to VAR -> PTR -> "
                       "FUNC_PROTO", "SDT117")
            continue
        params = [p.type for p in proto.members]
        if len(params) != nargs:
            report.add(where, "error", f"probe '{name}': tag says {nargs} arguments, prototype "
                       f"has {len(params)}", "SDT111")
        for i, ty in enumerate(params, 1):
            size = btf.size_of(ty)
            if btf.is_aggregate(ty):
                report.add(where, "error", f"probe '{name}' argument {i}: struct/union passed by "
                           "value", "SDT112")
            elif size > 8:
                report.add(where, "error", f"probe '{name}' argument {i}: {size}-byte type is "
                           "wider than 8 bytes", "SDT112")
        decl = Declaration(name, tuple(btf.c_spelling(ty) for ty in params),
                           tuple(btf.size_of(ty) for ty in params),
                           canonical=tuple(canonical_type(btf, ty) for ty in params))
        prev = report.declarations.setdefault(name, decl)
        if not prev.same_prototype(decl):
            # A linked object holds one tag per input; an observer gets one prototype.
            report.add(where, "error", f"probe '{name}' is declared twice with different "
                       f"prototypes: {prev.prototype()} and {decl.prototype()}", "SDT111")


def canonical_type(btf: Btf, type_id: int) -> str:
    """A parameter's type as the C function type sees it: top-level qualifiers
    dropped (they are not part of a function type), typedefs resolved."""
    for _ in range(len(btf.types)):
        t = btf.get(type_id)
        if t.kind not in _QUALIFIERS:
            break
        type_id = t.type
    return btf.c_spelling(type_id, canonical=True)


# --- notes -------------------------------------------------------------------


def report_notes(report: ObjectReport) -> None:
    """Findings for the notes section itself and for everything not decoded."""
    notes = report.decoding.notes
    if notes is not None and notes.executable:
        report.add(NOTES_START, "warning", "notes section is marked executable; linkers relocate it "
                   "like code and corrupt it", "SDT115")
    for p in report.decoding.problems:
        report.add(p.where, "error", p.message, RULE_OF_PROBLEM[p.kind])


def check_symbols(obj: BpfObject, report: ObjectReport) -> None:
    """A symbol must lie inside its section (SHT_NOBITS too: its size is what
    the loader allocates).  A linker that loses a section's size leaves the
    object unloadable ("Invalid size for section .bss")."""
    symbols = RawSymbols(obj)
    if _symbols_inside_sections(obj, symbols):
        return          # the usual answer, from the table's columns in C: no Python step per symbol
    sections = obj.sections
    for i, (name_off, _info, _other, shndx, value, size) in enumerate(symbols.records()):
        if is_reserved_index(shndx):
            continue
        if shndx >= len(sections):
            report.add(".symtab", "error", f"symbol {symbols.name(i, name_off) or i} is in section "
                       f"{shndx}, which does not exist", RULE_SYMBOL_OUTSIDE_SECTION)
            continue
        sec = sections[shndx]
        if value > sec.size or value + size > sec.size:
            kind = ", SHT_NOBITS" if sec.type == SHT_NOBITS else ""
            report.add(f"{sec.name}+{value:#x}", "error", f"symbol {symbols.name(i, name_off) or i} "
                       f"({size} bytes at {value:#x}) lies outside {sec.name} ({sec.size} bytes{kind})",
                       RULE_SYMBOL_OUTSIDE_SECTION)


def check_calls(obj: BpfObject, report: ObjectReport) -> None:
    """Every call the calls section records (docs/format.md section 6) is
    placed: its label's word is relocated (R_BPF_64_ABS64) against a
    defined symbol of a code section, at one of that section's
    instructions.  link moves a call with where the linker put its section,
    and list and trace find its site before it there; a call recorded in
    data has neither, and one whose word names nothing would be dropped
    without a word.  Resolved by call_words' own _CallPlaces, so check
    refuses exactly the calls the others cannot place: one pass over the
    labels, each relocation's symbol judged once."""
    calls = obj.section(CALLS_SECTION)
    if calls is None or calls.type == SHT_NOBITS:
        return
    symbols = RawSymbols(obj)
    labels = _call_labels(calls, symbols)
    if not labels.words:
        return
    places = _CallPlaces(obj, calls, symbols)
    outside_code = {info for info, (shndx, _base, _sym) in places.targets.items() if not _in_code(obj, shndx)}
    unplaced: list[tuple[int, int, int]] = []
    astray: list[tuple[int, int, int]] = []
    in_data: Counter[int] = Counter()
    infos, placed, lands, target = places.columns.infos, places.placed, places.lands, places.target
    for record in zip(labels.words, labels.indices, labels.name_offs, strict=True):
        k = placed.get(record[0])
        if k is None:
            unplaced.append(record)
        elif infos[k] in outside_code:
            in_data[infos[k]] += 1
        elif not lands(*target(record[0])):
            astray.append(record)
    for found, what in ((unplaced, "no R_BPF_64_ABS64 relocation against a defined symbol"),
                        (astray, "an address outside its code section's instructions")):
        if found:
            word, label, name_off = min(found)
            report.add(CALLS_SECTION, "error", f"{_calls(len(found))} {what} (the first: "
                       f"{symbols.name(label, name_off)} at +{word:#x}), so no tool can place them",
                       RULE_CALL_OUTSIDE_CODE)
    for info in sorted(in_data):
        shndx, _base, sym = places.targets[info]
        sec = obj.section_at(shndx)
        where = sec.name if sec is not None else f"section {shndx}"
        name = symbols.name(sym, symbols.record(sym)[0]) or str(sym)
        count = in_data[info]
        report.add(CALLS_SECTION, "error", f"{count} recorded call{'s' * (count != 1)} relocated against "
                   f"symbol {name} of {where}, outside any code section", RULE_CALL_OUTSIDE_CODE)


def _in_code(obj: BpfObject, shndx: int) -> bool:
    sec = obj.section_at(shndx)
    return sec is not None and sec.executable


def _calls(count: int) -> str:
    return "1 recorded call has" if count == 1 else f"{count} recorded calls have"


# What _symbols_inside_sections allows a symbol of a reserved index (SHN_UNDEF,
# SHN_LORESERVE..): more than any end (value + size < 2**65), so none is out.
_NO_SECTION_LIMIT = 1 << 65
# A section index past the last section: every symbol there is out.
_NO_SECTION = -1
_SHN_COUNT = 1 << 16        # st_shndx is 16 bits


def _symbols_inside_sections(obj: BpfObject, symbols: RawSymbols) -> bool:
    """Whether check_symbols finds nothing: every symbol's end (value +
    size, so its value too) within the size of the section it names, read
    as a map over the columns with each index's limit in a list."""
    sections = obj.sections
    limits = [_NO_SECTION_LIMIT, *(sec.size for sec in sections[1:SHN_LORESERVE])]
    limits += [_NO_SECTION] * (SHN_LORESERVE - len(limits)) + [_NO_SECTION_LIMIT] * (_SHN_COUNT - SHN_LORESERVE)
    _heads, values, sizes = symbols.columns()
    ends = map(operator.add, values, sizes)
    return not any(map(operator.gt, ends, map(limits.__getitem__, symbols.section_indices())))


# --- cross checks ------------------------------------------------------------


def cross_check(obj: BpfObject, report: ObjectReport) -> None:
    entries = report.entries
    _duplicate_nops(report)
    have_tags = bool(report.declarations)
    old = report.decoding.legacy_relocations
    gcc = old > 0 or _has_gcc_comment(obj)
    if old:
        report.add(NOTES_START, "warning", f"{old} address words use relocation type "
                   "12, R_BPF_64_ABS64 in the numbering of binutils <= 2.40 (bpf-gcc 12); read as "
                   "ABS64, but libbpf and newer tools expect type 2", "SDT105")
    if entries and not have_tags:
        if gcc:
            report.add(NOTES_START, "warning", "no BTF probe prototypes: GCC 12 has "
                       "no btf_decl_tag, so argument counts and types cannot be checked", "SDT114")
        else:
            report.add(NOTES_START, "error", "no BTF probe prototypes "
                       "(bpf_sdt:<name>:<n> decl tags) for the probes used here", "SDT110")
    # Per distinct (probe, argument count), not per site: only when one does
    # not fit its prototype are the sites walked, for their findings in order.
    shapes = _shapes(entries)
    if not all(_fits(report.declarations.get(probe), n) for probe, n in shapes):
        _report_prototypes(report, have_tags)
    probed = {probe for probe, _ in shapes}
    for name in sorted(set(report.declarations) - probed - report.entry_names):
        report.add(".BTF", "warning", f"probe '{name}' is declared but never probed", "SDT113")
    _sites_per_program(obj, report)


def _shapes(entries: NoteEntries) -> set[tuple[str, int]]:
    """(probe, argument count) of every entry: read from the distinct pairs
    of the entries' probe and body indices."""
    names, counts = entries.probes, entries.arg_counts()
    return {(names[p], counts[b]) for p, b in set(zip(entries.probe_ids, entries.body_ids, strict=True))}


def _fits(decl: Declaration | None, nargs: int) -> bool:
    return decl is not None and nargs == decl.arity


def _report_prototypes(report: ObjectReport, have_tags: bool) -> None:
    """SDT110 and SDT103 for each site whose probe has no prototype (when the
    object has prototypes at all) or another argument count, in site order."""
    for e in report.entries:
        decl = report.declarations.get(e.probe)
        if decl is None:
            if have_tags:
                report.add(f"{NOTES_SECTION}+{e.entry_offset:#x}", "error",
                           f"probe '{e.probe}' has no BTF prototype", "SDT110")
            continue
        if len(e.args) != decl.arity:
            report.add(f"{NOTES_SECTION}+{e.entry_offset:#x}", "error", f"probe '{e.probe}': entry "
                       f"has {len(e.args)} argument insns, its prototype {decl.arity}", "SDT103")


# --- sites per program (SDT116) ------------------------------------------------
# The RFC's consumer gives each program one insn_array map of at most 256
# sites, and a program is its entry function plus every function it may call
# (libbpf appends a copy of each subprogram to every program calling it).

JMP_CALL_OPCODE = JMP | JMP_CALL
# A BPF-to-BPF call: BPF_JMP|BPF_CALL with src_reg PSEUDO_CALL (dst_reg 0).
_PSEUDO_CALL_BYTES = bytes([JMP_CALL_OPCODE, PSEUDO_CALL << SRC_SHIFT])


class _CallGraph:
    """Functions (STT_FUNC symbols of code sections) and the calls between
    them: calls and callbacks (an ld_imm64 of a function, for bpf_loop and
    the like) through relocations, and calls within a section by their
    pc-relative offset.  Built only from the bytes of calls and the
    relocations of code sections, not a decode of every instruction."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.symbols = RawSymbols(obj)
        self.starts: dict[int, list[int]] = {}          # section index -> sorted function starts
        self.names: dict[tuple[int, int], str] = {}     # (section, start) -> name
        self.globals: set[tuple[int, int]] = set()
        for i in self.symbols.indices_of_type(STT_FUNC):     # a few of a million symbols: the rest not read
            name_off, info, _other, shndx, value, _size = self.symbols.record(i)
            if not is_reserved_index(shndx):
                self.starts.setdefault(shndx, []).append(value)
                self.names[(shndx, value)] = self.symbols.name(i, name_off)
                if info >> ST_BIND_SHIFT != STB_LOCAL:
                    self.globals.add((shndx, value))
        for starts in self.starts.values():
            starts.sort()
        self.callees: dict[tuple[int, int], set[tuple[int, int]]] = {}
        for sec in obj.sections:
            if sec.executable and sec.type != SHT_NOBITS:
                self._scan(sec)

    def function_at(self, sec_index: int, offset: int) -> tuple[int, int]:
        """The function holding ``offset``; a section without function
        symbols (hand-written asm) is one function at 0."""
        starts = self.starts.get(sec_index, [])
        i = bisect.bisect_right(starts, offset) - 1
        return (sec_index, starts[i] if i >= 0 else 0)

    def name(self, fn: tuple[int, int]) -> str:
        sec = self.obj.section_at(fn[0])
        return self.names.get(fn, sec.name if sec is not None else str(fn[0]))

    def _edge(self, sec: Section, at: int, target: tuple[int, int] | None) -> None:
        if target is not None:
            self.callees.setdefault(self.function_at(sec.index, at), set()).add(
                self.function_at(*target))

    def _scan(self, sec: Section) -> None:
        """The calls of one code section, read in the file's bytes (no copy
        of the section: the code of a million sites is 8 MB)."""
        data, first, end = self.obj.data, sec.offset, sec.offset + sec.size
        _, relocs = self.obj.relocations(sec)
        relocated = set()
        for r in relocs:
            if r.offset + INSN_SIZE > sec.size or r.offset % INSN_SIZE:
                continue
            relocated.add(r.offset)
            self._edge(sec, r.offset, self._relocated_target(data, first + r.offset, r.symbol))
        at = data.find(_PSEUDO_CALL_BYTES, first, end)
        while at >= 0:
            offset = at - first
            if offset % INSN_SIZE == 0 and offset not in relocated:
                _op, _regs, _off, imm = INSN.unpack_from(data, at)
                self._edge(sec, offset, (sec.index, offset + (imm + 1) * INSN_SIZE))
            at = data.find(_PSEUDO_CALL_BYTES, at + 1, end)

    def _relocated_target(self, data: bytes, at: int, symbol: int) -> tuple[int, int] | None:
        """Where a call or a function's address loaded at ``at`` (in the
        file) leads, if its symbol is in a code section (REL: the addend is
        the insn's imm)."""
        if symbol >= self.symbols.count:
            return None
        _name, _info, _other, shndx, value, _size = self.symbols.record(symbol)
        target = self.obj.section_at(shndx) if not is_reserved_index(shndx) else None
        if target is None or not target.executable:
            return None
        op, regs, _off, imm = INSN.unpack_from(data, at)
        if op == JMP_CALL_OPCODE and regs >> SRC_SHIFT == PSEUDO_CALL:
            return (shndx, value + (imm + 1) * INSN_SIZE)
        if op == LD_IMM64:
            return (shndx, value + imm)
        return None

    def entries(self) -> list[tuple[int, int]]:
        """Program entries: functions outside .text (and code sections with
        none); an object with no program yet (a library before linking) has
        its global .text functions, which some program will call."""
        out = []
        for sec in self.obj.sections:
            if sec.executable and sec.name != TEXT_SECTION:
                out += [(sec.index, v) for v in self.starts.get(sec.index, [0])]
        return out or sorted(self.globals)

    def reachable(self, entry: tuple[int, int]) -> set[tuple[int, int]]:
        seen, todo = {entry}, [entry]
        while todo:
            for g in self.callees.get(todo.pop(), ()):
                if g not in seen:
                    seen.add(g)
                    todo.append(g)
        return seen


def _sites_per_program(obj: BpfObject, report: ObjectReport) -> None:
    """SDT116 for each program whose functions hold more than the RFC
    consumer's map does.  An object with no more sites than that in all
    cannot have such a program, and is not scanned."""
    if len(report.entries) <= INSN_ARRAY_MAX:
        return
    graph = _CallGraph(obj)
    per_function = _sites_per_function(graph, report.entries)
    for entry in graph.entries():
        n = sum(per_function.get(fn, 0) for fn in graph.reachable(entry))
        if n > INSN_ARRAY_MAX:
            sec = obj.section_at(entry[0])
            report.add(f"{sec.name if sec else entry[0]}+{entry[1]:#x}", "warning",
                       f"{n} probe sites in program {graph.name(entry)} and the functions it calls: "
                       f"the RFC consumer maps at most {INSN_ARRAY_MAX} per program", "SDT116")


def _sites_per_function(graph: _CallGraph, entries: NoteEntries) -> Counter[tuple[int, int]]:
    """How many of ``entries`` each function holds (:meth:`_CallGraph.function_at`
    of each), counted by bisecting each run of one section's entries at its
    function starts, not by looking up every site: entries are in site
    order, so a run's offsets are sorted."""
    per_function: Counter[tuple[int, int]] = Counter()
    offsets = entries.offsets
    for section, first, last in entries.section_runs():
        starts = graph.starts.get(section.index, [])
        # Sites before the first function start belong to "function" 0, as function_at says.
        bounds = [0, *starts[bisect.bisect_right(starts, 0):]] if starts else [0]
        lows = [bisect.bisect_left(offsets, b, first, last) for b in bounds[1:]]
        for start, low, high in zip(bounds, [first, *lows], [*lows, last], strict=True):
            if high > low:
                per_function[(section.index, start)] += high - low
    return per_function


def _duplicate_nops(report: ObjectReport) -> None:
    """SDT109: entries are sorted by NOP, so entries describing one NOP are
    adjacent, and have equal offsets: without two neighbours at one offset
    (one C-level pass) there is nothing to look for."""
    entries = report.entries
    offsets = entries.offsets
    if not any(map(operator.eq, offsets, itertools.islice(offsets, 1, None))):
        return
    ids = entries.section_ids
    i = 0
    while i < len(offsets):
        j = i + 1
        while j < len(offsets) and ids[j] == ids[i] and offsets[j] == offsets[i]:
            j += 1
        if j - i > 1:
            sec = entries.sections[ids[i]]
            report.add(f"{sec.name}+{offsets[i]:#x}", "error", f"{j - i} entries describe one NOP",
                       "SDT109")
        i = j


def _has_gcc_comment(obj: BpfObject) -> bool:
    comment = obj.section(".comment")
    return comment is not None and b"GCC" in obj.section_data(comment)


def analyze(obj: BpfObject) -> ObjectReport:
    report = ObjectReport(obj, site_table(obj))
    try:
        read_declarations(obj, report)
    except InputError as e:
        report.add(".BTF", "error", f"unreadable BTF: {e}", "SDT117")
    report_notes(report)
    check_symbols(obj, report)
    check_calls(obj, report)
    cross_check(obj, report)
    return report


# --- verify, then write ---------------------------------------------------------


def verified(path: str, data: bytes, what: str) -> ObjectReport:
    """`check` of bytes about to be written as ``path`` (by link or
    instrument): the report, or InputError naming the first errors."""
    report = analyze(BpfObject(path, data))
    if report.errors:
        errors = [f"{f.where}: {f.message} [{f.rule}]" for f in report.findings if f.severity == "error"]
        raise InputError(f"{path}: {what} fails check: " + "; ".join(errors[:MAX_ERRORS_SHOWN]))
    return report


def write_checked(output: Path, data: bytes, what: str, durable: bool = True) -> ObjectReport:
    """Write ``data`` to ``output`` atomically, only if it passes check
    (``durable``: fsutil.write_atomic's)."""
    report = verified(str(output), data, what)
    write_output(output, data, durable)
    return report


def write_output(output: Path, data: bytes, durable: bool = True) -> None:
    try:
        write_atomic(output, data, durable=durable)
    except OSError as e:
        raise InputError(f"cannot write {output}: {e.strerror or e}") from None

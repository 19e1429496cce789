"""Decode and validate the probe notes of one BPF object (docs/format.md).

``analyze()`` turns an object into the shared model: the probe sites it
holds, the prototypes its BTF declares, and a finding for everything that
breaks the format.  ``check`` prints the findings, ``list`` the sites, and
``link`` uses the same decoding to carry notes across a link.

Rule ids (documented in docs/check.md) are stable; tests build one broken
object per rule.
"""

from __future__ import annotations

import bisect
import functools
import re
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from bpf_sdt.btf import Btf, BtfType
from bpf_sdt.elf import STT_SECTION, BpfObject, Relocation, Section, Symbol, is_reserved_index
from bpf_sdt.errors import InputError
from bpf_sdt.format import (
    DECL_TAG_PREFIX,
    ENTRY_SYMBOL_PREFIX,
    FRAME_REG,
    INSN_ARRAY_MAX,
    INSN_SIZE,
    MAX_ARGS,
    NAMED_ARGS,
    NOP_INSN,
    NOTES_SECTION,
    OP_LDX,
    OP_MOV64_K,
    OP_MOV64_X,
    R_BPF_64_ABS64,
    R_BPF_64_ABS64_OLD_BINUTILS,
    entry_symbol_probe_name,
)
from bpf_sdt.model import ArgLocation, Declaration, Finding, Severity, Site

_TAG_RE = re.compile(r"^bpf_sdt:([A-Za-z_][A-Za-z0-9_]*):(\d+)$")


@dataclass
class ObjectReport:
    path: str
    sites: list[Site] = field(default_factory=list)
    entry_names: set[str] = field(default_factory=set)   # every entry, resolved or not
    declarations: dict[str, Declaration] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, where: str, severity: Severity, message: str, rule: str) -> None:
        self.findings.append(Finding(self.path, where, severity, message, rule))

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")


class Entry(NamedTuple):
    """One entry of the notes section, bounded by its symbol and the next."""

    symbol: Symbol
    name: str
    start: int
    end: int


def _at(offset: int) -> str:
    """A place in the notes section, as findings spell it (built only for findings)."""
    return f"{NOTES_SECTION}+{offset:#x}"


# --- BTF: probe prototypes --------------------------------------------------


def read_declarations(obj: BpfObject, report: ObjectReport) -> None:
    """Fill ``report.declarations`` from DECL_TAG -> VAR -> PTR -> FUNC_PROTO."""
    btf = obj.btf
    if btf is None:
        return
    for t in btf.types:
        if t.kind != 17 or not t.name.startswith(DECL_TAG_PREFIX):
            continue
        where = f".BTF+type{t.id}"
        m = _TAG_RE.match(t.name)
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
        if name in report.declarations and len(report.declarations[name].types) != len(params):
            report.add(where, "error", f"probe '{name}' is declared twice with different "
                       "prototypes", "SDT111")
        for i, ty in enumerate(params, 1):
            size = btf.size_of(ty)
            if btf.is_aggregate(ty):
                report.add(where, "error", f"probe '{name}' argument {i}: struct/union passed by "
                           "value", "SDT112")
            elif size > 8:
                report.add(where, "error", f"probe '{name}' argument {i}: {size}-byte type is "
                           "wider than 8 bytes", "SDT112")
        report.declarations.setdefault(name, Declaration(
            name, tuple(btf.c_spelling(ty) for ty in params),
            tuple(btf.size_of(ty) for ty in params)))


def tagged_prototype(btf: Btf, var_id: int) -> BtfType | None:
    """The FUNC_PROTO a probe tag's VAR points to (VAR -> [CONST] -> PTR -> FUNC_PROTO)."""
    var = btf.get(var_id)
    if var.kind != 14:
        return None
    ptr = btf.resolve(var.type)
    if ptr.kind != 2:
        return None
    proto = btf.resolve(ptr.type)
    return proto if proto.kind == 13 else None


# --- notes ---------------------------------------------------------------


def find_entries(obj: BpfObject, notes: Section, report: ObjectReport) -> list[Entry]:
    """Entry boundaries come from the entry symbols, sorted by value."""
    syms = sorted((s for s in obj.symbols
                   if s.shndx == notes.index and s.name.startswith(ENTRY_SYMBOL_PREFIX)),
                  key=lambda s: (s.value, s.num))
    if notes.size and not syms:
        report.add(f"{NOTES_SECTION}+0x0", "error", "notes section has no ___sdt_jt_ entry "
                   "symbols, so its entries cannot be told apart", "SDT102")
        return []
    if syms and syms[0].value != 0:
        report.add(f"{NOTES_SECTION}+0x0", "error", f"{syms[0].value} bytes before the first "
                   "entry symbol", "SDT102")
    entries = []
    size_limit = INSN_SIZE * (MAX_ARGS + 1)
    for i, sym in enumerate(syms):
        end = syms[i + 1].value if i + 1 < len(syms) else notes.size
        start = sym.value
        if end == start:
            report.add(_at(start), "error", f"{sym.name}: two entry symbols at one offset", "SDT102")
            continue
        if start >= notes.size or end > notes.size:
            report.add(_at(start), "error", f"{sym.name}: entry runs past the section end "
                       f"({notes.size} bytes)", "SDT102")
            continue
        size = end - start
        if start % INSN_SIZE or size % INSN_SIZE or size > size_limit:
            report.add(_at(start), "error", f"{sym.name}: entry of {size} bytes at offset "
                       f"{start} (entries are 8 + 8*N bytes, N <= {MAX_ARGS}, 8-aligned)",
                       "SDT102")
            continue
        entries.append(Entry(sym, entry_symbol_probe_name(sym.name) or "", start, end))
    return entries


@functools.lru_cache(maxsize=8192)
def decode_args(body: bytes) -> tuple[tuple[ArgLocation, ...], tuple[tuple[int, str], ...]]:
    """All argument insns of one entry -> (locations, (insn index, error) pairs).
    Memoized per entry body: identical entries repeat across many sites."""
    locs, errors = [], []
    for i in range(len(body) // INSN_SIZE):
        loc, err = decode_arg(body[INSN_SIZE * i: INSN_SIZE * (i + 1)], i + 1)
        if err:
            errors.append((i + 1, err))
        elif loc:
            locs.append(loc)
    return tuple(locs), tuple(errors)


@functools.lru_cache(maxsize=4096)
def decode_arg(insn: bytes, index: int) -> tuple[ArgLocation | None, str | None]:
    """One argument insn -> its location, or an error message.  Memoized: the
    same few words repeat across thousands of sites, and the result is immutable."""
    op, regs, off, imm = struct.unpack("<BBhi", insn)
    dst, src = regs & 0xF, regs >> 4
    want_dst = index if index <= NAMED_ARGS else 0
    if op == OP_MOV64_X:
        if off or imm:
            return None, f"argument {index}: register move with nonzero offset/imm"
        if src > 9:
            return None, f"argument {index}: source register r{src} (must be r0..r9)"
        loc = ArgLocation("reg", reg=src)
    elif op == OP_MOV64_K:
        if src or off:
            return None, f"argument {index}: immediate move with nonzero src/offset"
        loc = ArgLocation("imm", value=imm)
    elif op in OP_LDX:
        size = OP_LDX[op]
        if index <= NAMED_ARGS:
            return None, f"argument {index}: stack slots are for arguments {NAMED_ARGS + 1}.. only"
        if src != FRAME_REG or imm:
            return None, f"argument {index}: load must be relative to r10"
        if off >= 0 or off < -512 or off % size:
            return None, f"argument {index}: stack offset {off} is not an aligned slot in the frame"
        loc = ArgLocation("stack", offset=off, size=size)
    else:
        return None, f"argument {index}: opcode {op:#04x} is not an argument form the format allows"
    if dst != want_dst:
        return None, f"argument {index}: destination r{dst}, the format says r{want_dst}"
    return loc, None


def _relocation_for(word_offset: int, rels_by_offset: dict[int, list[Relocation]],
                    report: ObjectReport) -> Relocation | None:
    rels = rels_by_offset.get(word_offset)
    if not rels:
        report.add(_at(word_offset), "error", "address word has no relocation", "SDT104")
        return None
    if len(rels) > 1:
        report.add(_at(word_offset), "error", f"address word has {len(rels)} relocations", "SDT104")
    return rels[0]


class TargetResolver:
    """Resolves address words.  What depends only on the relocation's symbol
    (its section, whether that is code, its bytes) is worked out once per
    symbol: thousands of entries share one section symbol."""

    def __init__(self, obj: BpfObject, report: ObjectReport) -> None:
        self.obj = obj
        self.report = report
        self._symbols: dict[int, tuple[Section, int, bytes] | str] = {}

    def _symbol(self, index: int) -> tuple[Section, int, bytes] | str:
        """(section, base offset, section bytes), or why the symbol is unusable."""
        if index not in self._symbols:
            obj = self.obj
            if not 0 <= index < len(obj.symbols):
                self._symbols[index] = f"relocation names symbol {index}, which does not exist"
            else:
                sym = obj.symbols[index]
                sec = None if is_reserved_index(sym.shndx) else obj.section_at(sym.shndx)
                if sec is None or not sec.executable:
                    self._symbols[index] = (f"relocation against {sym.name or 'a symbol'} outside "
                                            "any executable section")
                else:
                    base = 0 if sym.type == STT_SECTION else sym.value
                    self._symbols[index] = (sec, base, obj.section_data(sec))
        return self._symbols[index]

    def resolve(self, notes_data: bytes, entry: Entry, rel: Relocation) -> tuple[Section, int] | None:
        """The code section and byte offset an entry's address word points to."""
        report = self.report
        if rel.type != R_BPF_64_ABS64 and rel.type != R_BPF_64_ABS64_OLD_BINUTILS:
            # (type 12 is reported once per object by cross_check())
            report.add(_at(entry.start), "error", f"relocation type {rel.type}, want "
                       "R_BPF_64_ABS64 (2)", "SDT105")
            return None
        info = self._symbol(rel.symbol)
        if isinstance(info, str):
            report.add(_at(entry.start), "error", info, "SDT106")
            return None
        sec, base, code = info
        word = int.from_bytes(notes_data[entry.start: entry.start + 8], "little")
        addend = rel.addend if rel.addend is not None else word
        target = base + addend
        if target < sec.size and not target % INSN_SIZE \
                and code[target: target + INSN_SIZE] == NOP_INSN:
            return sec, target
        self._explain(entry, sec, base, word, addend, target, rel.addend is None, code)
        return None

    def _explain(self, entry: Entry, sec: Section, base: int, word: int, addend: int,
                 target: int, in_place: bool, code: bytes) -> None:
        where = _at(entry.start)
        hi, lo = addend >> 32, addend & 0xFFFFFFFF
        if hi and in_place and base + lo + hi < sec.size:
            self.report.add(where, "error", f"address word {word:#018x} has {hi:#x} added into "
                            "bytes 4..7: a linker treated the notes as code (section marked "
                            "executable); relink with `bpf-sdt link`", "SDT115")
        elif target >= sec.size or target % INSN_SIZE:
            self.report.add(where, "error", f"address {target:#x} is outside {sec.name} "
                            f"({sec.size} bytes) or not 8-aligned", "SDT107")
        else:
            insn = code[target: target + INSN_SIZE]
            self.report.add(where, "error", f"{sec.name}+{target:#x} is {insn.hex(' ')}, "
                            "not goto +0", "SDT107")


class FunctionIndex:
    """The function symbol containing an offset, per code section (bisect)."""

    def __init__(self, obj: BpfObject) -> None:
        self._obj = obj
        self._by_section: dict[int, tuple[list[int], list[Symbol]]] = {}

    def at(self, sec: Section, offset: int) -> str:
        if sec.index not in self._by_section:
            funcs = self._obj.functions_in(sec)
            self._by_section[sec.index] = ([f.value for f in funcs], funcs)
        starts, funcs = self._by_section[sec.index]
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return ""
        f = funcs[i]   # the last function starting at or before the offset
        return f.name if offset < f.value + f.size or f.size == 0 else ""


def decode_sites(obj: BpfObject, report: ObjectReport) -> None:
    notes = obj.section(NOTES_SECTION)
    if notes is None:
        return
    where0 = f"{NOTES_SECTION}+0x0"
    if notes.executable:
        report.add(where0, "warning", "notes section is marked executable; linkers relocate it "
                   "like code and corrupt it", "SDT115")
    data = obj.section_data(notes)
    if len(data) != notes.size:   # SHT_NOBITS: a size but no bytes
        report.add(where0, "error", f"{NOTES_SECTION} claims {notes.size} bytes but has "
                   f"{len(data)} in the file (section type {notes.type})", "SDT102")
        return
    entries = find_entries(obj, notes, report)
    report.entry_names.update(e.name for e in entries)
    rel_sec, rels = obj.relocations(notes)
    if rel_sec is None and notes.size:
        report.add(where0, "error", f"{NOTES_SECTION} has no relocation section, so no address "
                   "word can be resolved", "SDT101")
        return
    rels_by_offset: dict[int, list[Relocation]] = defaultdict(list)
    for r in rels:
        rels_by_offset[r.offset].append(r)
    starts = {e.start for e in entries}
    for off in sorted(rels_by_offset):
        if off not in starts:
            report.add(f"{NOTES_SECTION}+{off:#x}", "error", "relocation inside an entry, not on "
                       "an address word", "SDT104")
    functions = FunctionIndex(obj)
    resolver = TargetResolver(obj, report)
    declarations = report.declarations
    for e in entries:
        rel = _relocation_for(e.start, rels_by_offset, report)
        if rel is None:
            continue
        target = resolver.resolve(data, e, rel)
        if target is None:
            continue
        sec, offset = target
        args, errors = decode_args(data[e.start + INSN_SIZE: e.end])
        for index, err in errors:
            report.add(_at(e.start + INSN_SIZE * index), "error", f"probe '{e.name}' {err}", "SDT108")
        decl = declarations.get(e.name)
        report.sites.append(Site(
            name=e.name, section=sec.name, offset=offset,
            function=functions.at(sec, offset), args=list(args),
            types=list(decl.types) if decl else [], entry_offset=e.start, symbol=e.symbol.name))


# --- cross checks --------------------------------------------------------


def cross_check(obj: BpfObject, report: ObjectReport) -> None:
    sites_by_nop = Counter((s.section, s.offset) for s in report.sites)
    for (sec, off), n in sites_by_nop.items():
        if n > 1:
            report.add(f"{sec}+{off:#x}", "error", f"{n} entries describe one NOP", "SDT109")
    have_tags = bool(report.declarations)
    old = _old_binutils_relocs(obj)
    gcc = old > 0 or _has_gcc_comment(obj)
    if old:
        report.add(f"{NOTES_SECTION}+0x0", "warning", f"{old} address words use relocation type "
                   "12, R_BPF_64_ABS64 in the numbering of binutils <= 2.40 (bpf-gcc 12); read as "
                   "ABS64, but libbpf and newer tools expect type 2", "SDT105")
    if report.sites and not have_tags:
        if gcc:
            report.add(f"{NOTES_SECTION}+0x0", "warning", "no BTF probe prototypes: GCC 12 has "
                       "no btf_decl_tag, so argument counts and types cannot be checked", "SDT114")
        else:
            report.add(f"{NOTES_SECTION}+0x0", "error", "no BTF probe prototypes "
                       "(bpf_sdt:<name>:<n> decl tags) for the probes used here", "SDT110")
    probed = set()
    for s in report.sites:
        probed.add(s.name)
        decl = report.declarations.get(s.name)
        where = f"{NOTES_SECTION}+{s.entry_offset:#x}"
        if decl is None:
            if have_tags:
                report.add(where, "error", f"probe '{s.name}' has no BTF prototype", "SDT110")
            continue
        if len(s.args) != decl.arity:
            report.add(where, "error", f"probe '{s.name}': entry has {len(s.args)} argument "
                       f"insns, its prototype {decl.arity}", "SDT103")
    for name in sorted(set(report.declarations) - probed - report.entry_names):
        report.add(".BTF", "warning", f"probe '{name}' is declared but never probed", "SDT113")
    per_section = Counter(s.section for s in report.sites)
    for sec, n in sorted(per_section.items()):
        if n > INSN_ARRAY_MAX:
            report.add(f"{sec}+0x0", "warning", f"{n} probe sites in {sec}: the RFC consumer maps "
                       f"at most {INSN_ARRAY_MAX} per program", "SDT116")


def _old_binutils_relocs(obj: BpfObject) -> int:
    notes = obj.section(NOTES_SECTION)
    if notes is None:
        return 0
    _, rels = obj.relocations(notes)
    return sum(1 for r in rels if r.type == R_BPF_64_ABS64_OLD_BINUTILS)


def _has_gcc_comment(obj: BpfObject) -> bool:
    comment = obj.section(".comment")
    return comment is not None and b"GCC" in obj.section_data(comment)


def analyze(obj: BpfObject) -> ObjectReport:
    report = ObjectReport(obj.path)
    try:
        read_declarations(obj, report)
    except InputError as e:
        report.add(".BTF", "error", f"unreadable BTF: {e}", "SDT117")
    decode_sites(obj, report)
    cross_check(obj, report)
    report.sites.sort(key=lambda s: (s.section, s.offset, s.entry_offset))
    return report

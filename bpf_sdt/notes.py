"""Decode and encode probe notes (docs/format.md section 3), nothing else.

:func:`decode_notes` turns an object's ``.bpf_sdt_notes`` into its entries
that decode (:class:`NoteEntries`, one :class:`NoteEntry` each), in notes
order, and one
:class:`NoteProblem` for everything that could not be decoded (where and
why).  It does not judge the rest of the object: ``check`` validates on top
of it (BTF prototypes, duplicates, limits), ``list`` prints it, ``link``
re-encodes its entries with :func:`encode_entry`, and ``instrument`` finds
its sites with it.

Objects are untrusted and may hold up to :data:`MAX_ENTRIES` entries, so the
decoder works from the raw symbol and relocation tables (the record layouts
of :mod:`bpf_sdt.elf`) instead of materialising every symbol and relocation
as an object, and keeps the entries as columns (array items per entry; the
repeated parts, argument tuples, argument bytes, probe names and sections,
once each), so that a million sites cost a few array items each, not an
object and a name each.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum
from operator import add, eq, le, lt, or_, rshift, sub
from typing import NamedTuple, overload

from bpf_sdt.elf import (
    R_BPF_64_ABS64,
    R_SYM_SHIFT,
    R_TYPE_MASK,
    SHT_REL,
    SHT_RELA,
    ST_TYPE_MASK,
    STT_FUNC,
    STT_SECTION,
    BpfObject,
    RelocationColumns,
    Section,
    SymbolTable,
    is_reserved_index,
    section_view,
    signed64,
    u64_words,
)
from bpf_sdt.errors import InputError
from bpf_sdt.format import (
    ENTRY_SYMBOL_PREFIX,
    FRAME_REG,
    MAX_ARGS,
    NAMED_ARGS,
    NOP_INSN,
    NOTES_SECTION,
    OP_LDX,
    OP_MOV64_K,
    OP_MOV64_X,
    R_BPF_64_ABS64_OLD_BINUTILS,
    entry_symbols_probe_names,
)
from bpf_sdt.insn import INSN_SIZE, MAX_STACK, Insn, decode_insn
from bpf_sdt.model import ArgLocation

# The symbol table's reader is the ELF layer's; its old name here stays importable.
RawSymbols = SymbolTable

# An object holds at most this many notes entries (documented in docs/check.md).
# A program is at most 1M instructions, so no real object comes near it; the cap
# bounds what a hostile file can make the decoder allocate.
MAX_ENTRIES = 1 << 20

ADDRESS_WORD = struct.Struct("<Q")    # a notes entry's first word: the NOP's offset (the REL addend)
ADDRESS_WORD_SIZE = ADDRESS_WORD.size
MAX_ENTRY_SIZE = ADDRESS_WORD_SIZE + INSN_SIZE * MAX_ARGS
MAX_REGISTER = 9                # r0..r9 hold values; r10 is the frame pointer
_ENTRY_PREFIX = ENTRY_SYMBOL_PREFIX.encode()
_LDX_OPCODE = {size: op for op, size in OP_LDX.items()}


class ProblemKind(Enum):
    """What kind of thing could not be decoded; ``check`` maps each to a rule."""

    DUPLICATE_SECTION = "duplicate-section"    # several sections named .bpf_sdt_notes
    NO_BYTES = "no-bytes"                      # the notes have a size but no file bytes
    BOUNDARY = "boundary"                      # entry symbols do not delimit valid entries
    NO_RELOCATIONS = "no-relocations"          # no REL/RELA section for the notes
    RELOCATION = "relocation"                  # missing, repeated or stray relocations
    RELOCATION_TYPE = "relocation-type"        # not R_BPF_64_ABS64
    RELOCATION_SYMBOL = "relocation-symbol"    # the symbol is not in a code section
    ADDRESS = "address"                        # the address is not on a NOP in the code
    LINKER_OFFSET = "linker-offset"            # a linker added an offset into bytes 4..7
    ARGUMENT = "argument"                      # an argument insn the format does not allow


class NoteProblem(NamedTuple):
    """Something in the notes that could not be decoded."""

    kind: ProblemKind
    offset: int                 # byte offset in the notes section (entry or insn)
    message: str
    entry_offset: int = -1      # the entry it breaks, -1 if none in particular

    @property
    def where(self) -> str:
        return f"{NOTES_SECTION}+{self.offset:#x}"


class NoteEntry(NamedTuple):
    """One decoded entry: a probe site.  A named tuple (immutable, like a
    frozen dataclass) because one is made per site and a tuple is made
    three times faster."""

    symbol: str                         # ___sdt_jt_<name>[.n]
    probe: str
    entry_offset: int                   # byte offset of the entry in the notes section
    section: Section                    # the code section holding the NOP
    offset: int                         # byte offset of the NOP in that section
    args: tuple[ArgLocation, ...]
    raw_args: bytes                     # the entry's argument insns, 8 bytes each

    @property
    def insn_index(self) -> int:
        return self.offset // INSN_SIZE

    @property
    def size(self) -> int:
        """The entry's size in the notes section."""
        return ADDRESS_WORD_SIZE + len(self.raw_args)


class NoteEntries(Sequence[NoteEntry]):
    """Decoded entries as columns, one :class:`NoteEntry` made on access.

    An object may hold a million sites (issue 22), so no object is kept per
    site: per entry only array items (offsets, the index of its code section,
    of its probe name and of its argument bytes, its symbol's index and name
    offset), and each distinct section, probe name and argument body once.
    A symbol's name is read from the string table when asked for (the
    decoder has checked every name offset).  ``check`` and ``list`` read the
    columns; other callers index or iterate as a list of entries."""

    __slots__ = ("entry_offsets", "offsets", "section_ids", "probe_ids", "body_ids", "symbol_indices",
                 "name_offsets", "sections", "probes", "bodies", "_symbols", "names")

    def __init__(self, symbols: SymbolTable | None = None) -> None:
        self.entry_offsets: Sequence[int] = array("Q")   # byte offset of each entry in the notes
        self.offsets: Sequence[int] = array("Q")         # byte offset of each NOP in its code section
        self.section_ids: Sequence[int] = array("I")     # -> sections
        self.probe_ids: Sequence[int] = array("I")       # -> probes
        self.body_ids: Sequence[int] = array("I")        # -> bodies
        self.symbol_indices: Sequence[int] = array("q")  # each entry symbol's index in the symbol table
        self.name_offsets: Sequence[int] = array("q")    # and its name's offset in the string table
        self.sections: list[Section] = []                # the code sections holding NOPs
        self.probes: list[str] = []                      # probe names
        self.bodies: list[EntryBody] = []                # distinct argument bytes, decoded
        self._symbols = symbols
        self.names: list[str] | None = None              # every entry symbol, when the decoder kept them

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> NoteEntry: ...

    @overload
    def __getitem__(self, index: slice) -> NoteEntries: ...

    def __getitem__(self, index: int | slice) -> NoteEntry | NoteEntries:
        if isinstance(index, slice):
            return self._columns(lambda column: column[index])
        body = self.bodies[self.body_ids[index]]
        return NoteEntry(self.symbol(index), self.probes[self.probe_ids[index]], self.entry_offsets[index],
                         self.sections[self.section_ids[index]], self.offsets[index], body.args, body.raw)

    def __iter__(self) -> Iterator[NoteEntry]:
        probes, sections, bodies = self.probes, self.sections, self.bodies
        for start in range(0, len(self), _NAME_CHUNK):     # names read a chunk at a time
            stop = start + _NAME_CHUNK
            for symbol, probe, entry_offset, section, offset, body in zip(
                    self.symbols(start, stop), self.probe_ids[start:stop], self.entry_offsets[start:stop],
                    self.section_ids[start:stop], self.offsets[start:stop], self.body_ids[start:stop],
                    strict=True):
                args = bodies[body]
                yield NoteEntry(symbol, probes[probe], entry_offset, sections[section], offset, args.args,
                                args.raw)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(map(eq, self, other))

    __hash__ = None     # type: ignore[assignment]  # compared by value, as a list is

    def __repr__(self) -> str:
        return f"NoteEntries({len(self)} entries)"

    def symbol(self, index: int) -> str:
        """The entry symbol of entry ``index``."""
        assert self._symbols is not None     # entries exist only with a symbol table
        return self._symbols.name(self.symbol_indices[index], self.name_offsets[index])

    def symbols(self, start: int, stop: int) -> list[str]:
        """The entry symbols of entries ``start:stop``, in one call."""
        if self._symbols is None:
            return []
        if self.names is not None:
            return self.names[start:stop]
        return self._symbols.names(self.symbol_indices[start:stop], self.name_offsets[start:stop])

    def section_runs(self, most: int | None = None) -> Iterator[tuple[Section, int, int]]:
        """(section, start, stop) of each run of consecutive entries in one
        code section, cut into runs of at most ``most`` entries if given."""
        for sec, first, last in self._section_runs():
            step = most or last - first
            for start in range(first, last, step):
                yield sec, start, min(start + step, last)

    def _section_runs(self) -> Iterator[tuple[Section, int, int]]:
        ids, sections = self.section_ids, self.sections
        if len(sections) == 1:      # one code section (compilers' programs often): one run
            if ids:
                yield sections[0], 0, len(ids)
            return
        start = 0
        for sid, run in itertools.groupby(ids):
            stop = start + sum(1 for _ in run)
            yield sections[sid], start, stop
            start = stop

    def arg_counts(self) -> list[int]:
        """Per distinct body (``body_ids``), its argument count."""
        return [len(body.args) for body in self.bodies]

    def take(self, order: Sequence[int]) -> NoteEntries:
        """The entries at ``order``'s indices, in that order."""
        return self._columns(lambda column: array(column.typecode, map(column.__getitem__, order)))  # type: ignore[attr-defined]

    def _columns(self, pick: Callable[[Sequence[int]], Sequence[int]]) -> NoteEntries:
        out = NoteEntries(self._symbols)
        for name in _COLUMNS:
            setattr(out, name, pick(getattr(self, name)))
        out.sections, out.probes, out.bodies = self.sections, self.probes, self.bodies
        return out


class EntryBody(NamedTuple):
    """The argument insns of entries (bytes many entries share) and their locations."""

    raw: bytes
    args: tuple[ArgLocation, ...]


# NoteEntries' per-entry columns, in the order of its slots.
_COLUMNS = NoteEntries.__slots__[:7]
# Symbol names are read this many at a time: one call per chunk, and no list
# of a million names.
_NAME_CHUNK = 4096


class NotesDecoding:
    """What decoding a notes section found: its entries and its problems."""

    def __init__(self) -> None:
        self.notes: Section | None = None              # the section read (the first of that name)
        self.entries = NoteEntries()
        self.problems: list[NoteProblem] = []
        self.entry_probes: set[str] = set()            # probe names of every entry symbol
        self.legacy_relocations = 0                    # type-12 words read as R_BPF_64_ABS64

    def problem(self, kind: ProblemKind, offset: int, message: str, entry_offset: int = -1) -> None:
        self.problems.append(NoteProblem(kind, offset, message, entry_offset))


# --- encoding ---------------------------------------------------------------


def encode_entry(nop_offset: int, args: Sequence[ArgLocation]) -> bytes:
    """One notes entry: the address word (the NOP's offset, stored in place as the
    REL addend of an R_BPF_64_ABS64 against its code section) and one argument
    insn per argument.  Raises ValueError for anything the format cannot hold,
    so an encoded entry always decodes back to ``args``."""
    if not 0 <= nop_offset < 1 << 64 or nop_offset % INSN_SIZE:
        raise ValueError(f"NOP offset {nop_offset} is not an 8-aligned offset")
    if len(args) > MAX_ARGS:
        raise ValueError(f"{len(args)} arguments, the format holds at most {MAX_ARGS}")
    return nop_offset.to_bytes(ADDRESS_WORD_SIZE, "little") + b"".join(
        encode_arg(loc, index) for index, loc in enumerate(args, 1))


@functools.lru_cache(maxsize=4096)
def encode_arg(loc: ArgLocation, index: int) -> bytes:
    """The argument insn for argument ``index`` (1-based) at ``loc``."""
    dst = index if index <= NAMED_ARGS else 0
    try:
        if loc.kind == "reg" and loc.reg is not None:
            insn = Insn(OP_MOV64_X, dst, loc.reg).encode()
        elif loc.kind == "imm" and loc.value is not None:
            insn = Insn(OP_MOV64_K, dst, imm=loc.value).encode()
        elif loc.kind == "stack" and loc.offset is not None and loc.size in _LDX_OPCODE:
            insn = Insn(_LDX_OPCODE[loc.size], src=FRAME_REG, off=loc.offset).encode()
        else:
            raise ValueError(f"argument {index}: {loc} is not a location the format can hold")
    except struct.error:
        raise ValueError(f"argument {index}: {loc} does not fit an instruction") from None
    # The decoder is the one definition of what is valid: whatever it refuses or
    # reads back differently (r10, a slot in a register position...) is refused here.
    decoded, error = decode_arg(insn, index)
    if error or decoded != loc:
        raise ValueError(error or f"argument {index}: {loc} does not round-trip")
    return insn


# --- decoding one argument ----------------------------------------------------


@functools.lru_cache(maxsize=8192)
def decode_args(body: bytes) -> tuple[tuple[ArgLocation, ...], tuple[tuple[int, str], ...]]:
    """All argument insns of one entry -> (locations, (arg index, error) pairs).
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
    decoded = decode_insn(insn)
    op, dst, src, off, imm = decoded.op, decoded.dst, decoded.src, decoded.off, decoded.imm
    want_dst = index if index <= NAMED_ARGS else 0
    if op == OP_MOV64_X:
        if off or imm:
            return None, f"argument {index}: register move with nonzero offset/imm"
        if src > MAX_REGISTER:
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
        if off >= 0 or off < -MAX_STACK or off % size:
            return None, f"argument {index}: stack offset {off} is not an aligned slot in the frame"
        loc = ArgLocation("stack", offset=off, size=size)
    else:
        return None, f"argument {index}: opcode {op:#04x} is not an argument form the format allows"
    if dst != want_dst:
        return None, f"argument {index}: destination r{dst}, the format says r{want_dst}"
    return loc, None


# --- functions by offset ------------------------------------------------------


class FunctionIndex:
    """The function symbol containing an offset, per code section (bisect)."""

    def __init__(self, obj: BpfObject, symbols: SymbolTable | None = None) -> None:
        self._by_section: dict[int, tuple[list[int], list[tuple[int, str]]]] = {}
        syms = symbols or obj.symbol_table
        found: dict[int, list[tuple[int, int, str]]] = {}
        for i, (name_off, info, _other, shndx, value, size) in enumerate(syms.records()):
            if info & ST_TYPE_MASK == STT_FUNC and not is_reserved_index(shndx):
                found.setdefault(shndx, []).append((value, size, syms.name(i, name_off)))
        for shndx, funcs in found.items():
            funcs.sort(key=lambda f: f[0])
            self._by_section[shndx] = ([f[0] for f in funcs], [(f[0] + f[1], f[2]) for f in funcs])

    def at(self, sec: Section, offset: int) -> str:
        """The function holding ``offset`` in ``sec``, or "" if none does."""
        starts, funcs = self._by_section.get(sec.index, ((), ()))
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return ""
        end, name = funcs[i]   # the last function starting at or before the offset
        return name if offset < end or end == starts[i] else ""

    def names(self, sec: Section, offsets: Sequence[int]) -> list[str]:
        """:meth:`at` of many offsets in one section, in one loop (`list`
        asks it of every site).  The rule is at's, written out: a call per
        site costs `list --json` 7% at 100,000 sites; tests/test_list_json.py
        holds the two to the same answers (its records come from at)."""
        starts, funcs = self._by_section.get(sec.index, ((), ()))
        if not starts:
            return [""] * len(offsets)
        out = []
        find = bisect.bisect_right
        for offset in offsets:
            i = find(starts, offset) - 1
            if i < 0:
                out.append("")
                continue
            end, name = funcs[i]
            out.append(name if offset < end or end == starts[i] else "")
        return out


# --- decoding the section -------------------------------------------------------


class _Boundary:
    """Entry symbols in offset order, before their entries are checked, as
    columns: offsets, symbol indices and name offsets in arrays (8 bytes each,
    not an int object), probe names as indices into one list of names."""

    __slots__ = ("starts", "indices", "name_offsets", "probe_ids", "probes", "names", "_symbols")

    def __init__(self, symbols: SymbolTable) -> None:
        self.starts: array[int] = array("Q")        # symbol values (u64)
        self.indices: array[int] = array("q")       # symbol indices
        self.name_offsets: array[int] = array("q")  # their names' offsets in the string table
        self.probe_ids: array[int] = array("I")     # -> probes
        self.probes: list[str] = []                 # probe names, each once
        self.names: list[str] | None = None         # the symbols' names, if kept
        self._symbols = symbols

    def symbol(self, i: int) -> str:
        """The name of entry symbol ``i`` (for a message)."""
        return self._symbols.name(self.indices[i], self.name_offsets[i])


# The last decoding, by (path, bytes): one command reads the same object in
# several stages one after the other (instrument: its own checks, the
# recorder's identity and link's check of IN; link's check of its output and
# the rewrite), and the bytes, not the instance, decide the result.  Only one
# is kept, and dropped before the next is decoded, so that checking many
# large objects in turn holds no more than one decoding more.  Callers only
# read a decoding.
_DECODED: dict[tuple[str, bytes], NotesDecoding] = {}


def decode_notes(obj: BpfObject, keep_names: bool = False) -> NotesDecoding:
    """Every entry of the object's notes that decodes, and what did not.
    ``keep_names``: the entries keep their symbols' names, read once to find
    their probes (NoteEntries.names), for a caller that needs every one
    (link): else they are read again from the string table when asked for,
    and no list of a million names is held (check, list)."""
    if not isinstance(obj.data, bytes):
        return _decode_notes(obj, keep_names)
    key = (obj.path, obj.data)
    out = _DECODED.get(key)
    if out is None:     # a hit kept without names serves keep_names too: names read when asked, not a decode again
        _DECODED.clear()
        out = _DECODED[key] = _decode_notes(obj, keep_names)
    return out


def forget(obj: BpfObject) -> None:
    """Drops the kept decoding of ``obj``, if it is the one kept: for a
    caller done with an object before it reads the next (link's inputs)."""
    if isinstance(obj.data, bytes):
        _DECODED.pop((obj.path, obj.data), None)


def _decode_notes(obj: BpfObject, keep_names: bool = False) -> NotesDecoding:
    out = NotesDecoding()
    candidates = obj.sections_named(NOTES_SECTION)
    if not candidates:
        return out
    notes = out.notes = candidates[0]
    if len(candidates) > 1:
        indices = ", ".join(str(s.index) for s in candidates)
        out.problem(ProblemKind.DUPLICATE_SECTION, 0, f"{len(candidates)} sections are named "
                    f"{NOTES_SECTION} (section indices {indices}): which one describes the sites is "
                    f"ambiguous; only section {notes.index} is read")
    data = section_view(obj, notes)
    if len(data) != notes.size:   # SHT_NOBITS: a size but no bytes
        out.problem(ProblemKind.NO_BYTES, 0, f"{NOTES_SECTION} claims {notes.size} bytes but has "
                    f"{len(data)} in the file (section type {notes.type})")
        return out
    symbols = obj.symbol_table
    bounds = _entry_symbols(obj, notes, symbols, out, keep_names)
    out.entry_probes.update(bounds.probes)
    valid = _valid_entries(bounds, notes.size, out)
    rel_sec = _relocation_section(obj, notes, out)
    if rel_sec is None:
        if notes.size:
            out.problem(ProblemKind.NO_RELOCATIONS, 0, f"{NOTES_SECTION} has no relocation section, "
                        "so no address word can be resolved")
        return out
    relocations = obj.relocation_columns(rel_sec)
    first, repeats = _match_relocations(relocations, bounds, valid, notes.size, out)
    _decode_entries(obj, data, rel_sec, relocations, bounds, valid, first, repeats, symbols, out)
    return out


def _entry_symbols(obj: BpfObject, notes: Section, symbols: SymbolTable, out: NotesDecoding,
                   keep_names: bool) -> _Boundary:
    """Entry symbols of the notes section, sorted by value (then index)."""
    indices, values, name_offs = symbols.in_section(notes.index, _ENTRY_PREFIX)
    if len(values) > MAX_ENTRIES:
        raise InputError(f"{obj.path}: {len(values)} notes entries, more than the {MAX_ENTRIES} "
                         "an object may hold")
    bounds = _Boundary(symbols)
    if all(map(le, values, itertools.islice(values, 1, None))):   # compilers emit them in order: no reordered copies
        bounds.starts, bounds.indices, bounds.name_offsets = values, indices, name_offs
    else:
        ordered = sorted(range(len(values)), key=values.__getitem__)   # stable: ties keep index order
        bounds.starts = array("Q", map(values.__getitem__, ordered))
        bounds.indices = array("q", map(indices.__getitem__, ordered))
        bounds.name_offsets = array("q", map(name_offs.__getitem__, ordered))
    bounds.names = [] if keep_names else None
    bounds.probe_ids, bounds.probes = _probe_names(symbols, bounds.indices, bounds.name_offsets, bounds.names)
    n = len(bounds.starts)
    if notes.size and not n:
        out.problem(ProblemKind.BOUNDARY, 0, "notes section has no ___sdt_jt_ entry symbols, so "
                    "its entries cannot be told apart")
    elif n and bounds.starts[0] != 0:
        out.problem(ProblemKind.BOUNDARY, 0, f"{bounds.starts[0]} bytes before the first entry symbol")
    return bounds


def _probe_names(symbols: SymbolTable, indices: array[int], name_offs: array[int],
                 kept: list[str] | None) -> tuple[array[int], list[str]]:
    """Per entry symbol the index of its probe name, and the names, each
    once.  Names are read a chunk at a time, so no list of every symbol's
    name is held unless ``kept`` is given (the names are added to it); a name
    offset outside the string table raises the symbol table's error, as
    reading the names in one call does."""
    ids = array("I")
    seen: dict[str, int] = {}
    for start in range(0, len(indices), _NAME_CHUNK):
        stop = start + _NAME_CHUNK
        symbol_names = symbols.names(indices[start:stop], name_offs[start:stop])
        if kept is not None:
            kept.extend(symbol_names)
        names = entry_symbols_probe_names(symbol_names)
        for probe in dict.fromkeys(names):      # the chunk's few probes, in first-use order
            seen.setdefault(probe, len(seen))
        ids.extend(map(seen.__getitem__, names))
    return ids, list(seen)


def _valid_entries(bounds: _Boundary, size: int, out: NotesDecoding) -> Sequence[int]:
    """Indices (into ``bounds``) of the entries whose extent is well-formed:
    a range when all are (no array of a million indices)."""
    starts = bounds.starts
    n = len(starts)
    if _all_extents_valid(starts, size):
        return range(n)
    invalid = []
    for i in range(n):
        start = starts[i]
        end = starts[i + 1] if i + 1 < n else size
        if end == start:
            out.problem(ProblemKind.BOUNDARY, start, f"{bounds.symbol(i)}: two entry symbols at one offset",
                        start)
        elif start >= size or end > size:
            out.problem(ProblemKind.BOUNDARY, start, f"{bounds.symbol(i)}: entry runs past the section end "
                        f"({size} bytes)", start)
        elif start % INSN_SIZE or (end - start) % INSN_SIZE or end - start > MAX_ENTRY_SIZE:
            out.problem(ProblemKind.BOUNDARY, start, f"{bounds.symbol(i)}: entry of {end - start} bytes at offset "
                        f"{start} (entries are 8 + 8*N bytes, N <= {MAX_ARGS}, 8-aligned)", start)
        else:
            continue
        invalid.append(i)
    if not invalid:
        return range(n)
    gone = set(invalid)
    return array("q", [i for i in range(n) if i not in gone])


def _all_extents_valid(starts: array[int], size: int) -> bool:
    """Whether _valid_entries' loop would find no fault, from the extents'
    sizes by map (in C): each positive (no two symbols at one offset, the
    last before the end), 8-aligned (no low bit set in any: their OR) from an
    8-aligned first start (so every start is) and at most MAX_ENTRY_SIZE; the last runs to the section's end,
    so none runs past it."""
    if not starts:
        return True
    extents = list(map(sub, itertools.islice(starts, 1, None), starts))
    extents.append(size - starts[-1])
    return (starts[0] % INSN_SIZE == 0 and min(extents) > 0 and max(extents) <= MAX_ENTRY_SIZE
            and not functools.reduce(or_, extents) & _INSN_MISALIGNMENT)


# An offset's bits below INSN_SIZE (a power of two): any set, it is not 8-aligned.
_INSN_MISALIGNMENT = INSN_SIZE - 1


def _relocation_section(obj: BpfObject, notes: Section, out: NotesDecoding) -> Section | None:
    found = [s for s in obj.sections if s.type in (SHT_REL, SHT_RELA) and s.info == notes.index]
    if len(found) > 1:
        out.problem(ProblemKind.RELOCATION, 0, f"{len(found)} relocation sections apply to "
                    f"{NOTES_SECTION} ({', '.join(s.name for s in found)}); only {found[0].name} is read")
    return found[0] if found else None


def _match_relocations(relocations: RelocationColumns, bounds: _Boundary, valid: Sequence[int],
                       size: int, out: NotesDecoding) -> tuple[Sequence[int], dict[int, int]]:
    """Per valid entry, the index of the first relocation on its address word
    (-1: none), and how many relocations each entry with more than one has."""
    starts = bounds.starts
    offsets = relocations.offsets
    if offsets == starts and all(map(lt, starts, itertools.islice(starts, 1, None))):
        # What compilers and linkers write: relocation k is on entry k's
        # address word, one each, so entry i's first relocation is i.
        return valid, {}
    slot = array("q", [-1]) * len(starts)       # bounds index -> valid position
    for pos, i in enumerate(valid):
        slot[i] = pos
    first = array("q", [-1]) * len(valid)
    repeats: dict[int, int] = {}
    for k, offset in enumerate(offsets):
        i = bisect.bisect_left(starts, offset)
        if i < len(starts) and starts[i] == offset:
            pos = slot[i]
            if pos < 0:
                continue            # the entry itself is broken (reported already)
            if first[pos] < 0:
                first[pos] = k
            else:
                repeats[pos] = repeats.get(pos, 1) + 1
        elif offset >= size:
            out.problem(ProblemKind.RELOCATION, offset, f"relocation at offset {offset:#x} is outside "
                        f"{NOTES_SECTION} ({size} bytes)")
        else:
            out.problem(ProblemKind.RELOCATION, offset, "relocation inside an entry, not on an "
                        "address word", _containing(starts, offset))
    return first, repeats


def _containing(starts: Sequence[int], offset: int) -> int:
    i = bisect.bisect_right(starts, offset) - 1
    return starts[i] if i >= 0 else -1


class _Target(NamedTuple):
    """What a relocation's symbol resolves to."""

    section: Section        # its code section
    base: int               # the address word is relative to this offset in it
    code: memoryview        # the section's bytes
    section_id: int         # the section's index in NoteEntries.sections
    last_nop: int           # the last offset a NOP fits at, -1 if the section has no bytes in the file


# A relocation that names no target: the kind of problem and its message.
_Unusable = tuple[ProblemKind, str]


class _Targets:
    """What depends only on a relocation's symbol (its section, whether that is
    code, its bytes) is worked out once per symbol: thousands of entries share
    one section symbol."""

    def __init__(self, obj: BpfObject, symbols: SymbolTable, sections: list[Section]) -> None:
        self.obj = obj
        self.symbols = symbols
        self.cache: dict[int, _Target | str] = {}
        self.sections = sections                    # the code sections found, in first-use order
        self._section_ids: dict[int, int] = {}

    def symbol(self, index: int) -> _Target | str:
        """Where symbol ``index`` is, or why the symbol is unusable."""
        hit = self.cache.get(index)
        if hit is None:
            hit = self.cache[index] = self._lookup(index)
        return hit

    def _lookup(self, index: int) -> _Target | str:
        if not 0 <= index < self.symbols.count:
            return f"relocation names symbol {index}, which does not exist"
        name_off, info, _other, shndx, value, _size = self.symbols.record(index)
        sec = None if is_reserved_index(shndx) else self.obj.section_at(shndx)
        if sec is None or not sec.executable:
            name = self.symbols.name(index, name_off) or "a symbol"
            return f"relocation against {name} outside any executable section"
        base = 0 if info & ST_TYPE_MASK == STT_SECTION else value
        section_id = self._section_ids.setdefault(sec.index, len(self.sections))
        if section_id == len(self.sections):
            self.sections.append(sec)
        code = section_view(self.obj, sec)
        return _Target(sec, base, code, section_id, sec.size - INSN_SIZE if len(code) == sec.size else -1)

    def relocation(self, rel_info: int) -> tuple[bool, _Target | _Unusable]:
        """What an address word's relocation (its r_info) names: whether its
        type is the old binutils number, and its target or why it has none."""
        rtype, rsym = rel_info & R_TYPE_MASK, rel_info >> R_SYM_SHIFT
        legacy = rtype == R_BPF_64_ABS64_OLD_BINUTILS
        if not legacy and rtype != R_BPF_64_ABS64:
            return legacy, (ProblemKind.RELOCATION_TYPE, f"relocation type {rtype}, want R_BPF_64_ABS64 (2)")
        target = self.symbol(rsym)
        if isinstance(target, str):
            return legacy, (ProblemKind.RELOCATION_SYMBOL, target)
        return legacy, target


def _decode_entries(obj: BpfObject, data: memoryview, rel_sec: Section, relocations: RelocationColumns,
                    bounds: _Boundary, valid: Sequence[int], first: Sequence[int], repeats: dict[int, int],
                    symbols: SymbolTable, out: NotesDecoding) -> None:
    rela = rel_sec.type == SHT_RELA
    rel_infos, rel_addends = relocations.infos, relocations.addends
    entries = out.entries = NoteEntries(symbols)
    targets = _Targets(obj, symbols, entries.sections)
    # Per distinct r_info (thousands of entries share one): what it names.
    relocated: dict[int, tuple[bool, _Target | _Unusable]] = {}
    # Per distinct argument bytes: (its index in entries.bodies, its errors).
    bodies: dict[bytes, tuple[int, tuple[tuple[int, str], ...]]] = {}
    starts, probe_ids, probes = bounds.starts, bounds.probe_ids, bounds.probes
    last = len(starts) - 1          # the last entry ends at the section's end, the others at the next
    # Every valid entry is 8-aligned and lies inside the section, so its
    # address word is one of these (a ragged tail holds none).
    words = u64_words(data[:len(data) - len(data) % ADDRESS_WORD_SIZE])
    file = obj.data
    notes_at = out.notes.offset if out.notes is not None else 0
    # Relocation i on entry i's word, every entry valid, the bytes hashable (bodies are dict keys):
    if first is valid and isinstance(valid, range) and not repeats and isinstance(file, bytes):
        at_once = _AtOnce(file, notes_at, len(data), starts, words, rel_addends if rela else None)
        if at_once.decode(rel_infos, relocated, targets, entries, out):
            _keep_bounds(entries, bounds, None)
            return
    # The columns, an item per valid entry, allocated once at their size (grown
    # by appends, a million items leave freed copies behind in the heap); and
    # the positions (in valid) of the entries that do not decode.
    count = len(valid)
    offsets, section_ids, body_ids = array("Q", [0]) * count, array("I", [0]) * count, array("I", [0]) * count
    dropped: list[int] = []
    # The loop runs once per site (up to MAX_ENTRIES): it reads the file's bytes in
    # place (no slice objects), finds a relocation's symbol in the cache first and
    # sets three array items per entry.
    for pos, (i, k) in enumerate(zip(valid, first, strict=True)):
        start = starts[i]
        if k < 0:
            out.problem(ProblemKind.RELOCATION, start, "address word has no relocation", start)
            dropped.append(pos)
            continue
        if repeats and pos in repeats:
            out.problem(ProblemKind.RELOCATION, start, f"address word has {repeats[pos]} relocations", start)
        rel_info = rel_infos[k]
        hit = relocated.get(rel_info)
        if hit is None:
            hit = relocated[rel_info] = targets.relocation(rel_info)
        legacy, found = hit
        if legacy:
            out.legacy_relocations += 1
        if not isinstance(found, _Target):
            kind, message = found
            out.problem(kind, start, message, start)
            dropped.append(pos)
            continue
        sec, base, code, section_id, last_nop = found
        word = words[start >> 3]
        addend = signed64(rel_addends[k]) if rela else word
        target = base + addend
        if not (0 <= target <= last_nop and not target % INSN_SIZE
                and file.startswith(NOP_INSN, sec.offset + target)):
            _explain(out, start, sec, base, word, addend, target, not rela, code)
            dropped.append(pos)
            continue
        end = starts[i + 1] if i < last else len(data)
        body = bytes(file[notes_at + start + ADDRESS_WORD_SIZE: notes_at + end])   # no copy of a bytes slice
        decoded = bodies.get(body)
        if decoded is None:
            decoded = bodies[body] = _new_body(entries.bodies, body)
        body_id, errors = decoded
        if errors:
            for index, err in errors:
                out.problem(ProblemKind.ARGUMENT, start + INSN_SIZE * index,
                            f"probe '{probes[probe_ids[i]]}' {err}", start)
            dropped.append(pos)
            continue
        offsets[pos] = target
        section_ids[pos] = section_id
        body_ids[pos] = body_id
    entries.offsets, entries.section_ids, entries.body_ids = _without(dropped, offsets, section_ids, body_ids)
    _keep_bounds(entries, bounds, _decoded_positions(valid, dropped, len(starts)))


class _AtOnce:
    """_decode_entries' loop for what compilers and linkers write, a column
    at a time by map (in C), when it can only find nothing wrong: relocation
    i on entry i's address word, one r_info for all (one code section), each
    word naming a NOP of it, each distinct body decoding.  Anything else
    (``decode`` answers False, having changed nothing but the caches) is the
    loop's, for its findings in order.  Read a chunk of entries at a time:
    no list of a million targets or bodies."""

    def __init__(self, file: bytes, notes_at: int, size: int, starts: Sequence[int], words: Sequence[int],
                 addends: Sequence[int] | None) -> None:
        self.file, self.notes_at, self.size = file, notes_at, size
        self.starts, self.words, self.addends = starts, words, addends     # addends: RELA's, else None

    def decode(self, rel_infos: Sequence[int], relocated: dict[int, tuple[bool, _Target | _Unusable]],
               targets: _Targets, entries: NoteEntries, out: NotesDecoding) -> bool:
        count = len(self.starts)
        if not count or len(set(rel_infos)) != 1:
            return False
        rel_info = rel_infos[0]
        hit = relocated.get(rel_info)
        if hit is None:
            hit = relocated[rel_info] = targets.relocation(rel_info)
        legacy, found = hit
        if not isinstance(found, _Target) or (self.addends is not None and max(self.addends) >> 63):
            return False        # (a negative RELA addend: signed64 is not the identity)
        offsets, body_ids = array("Q", [0]) * count, array("I", [0]) * count
        bodies: list[EntryBody] = []
        body_index: dict[bytes, int] = {}
        for lo in range(0, count, _AT_ONCE_CHUNK):
            hi = min(lo + _AT_ONCE_CHUNK, count)
            nops = self._nops(found, lo, hi)
            chunk_bodies = self._bodies(lo, hi)
            if nops is None or not _decode_new_bodies(chunk_bodies, bodies, body_index):
                return False
            offsets[lo:hi] = array("Q", nops)
            body_ids[lo:hi] = array("I", map(body_index.__getitem__, chunk_bodies))
        entries.bodies.extend(bodies)
        entries.offsets, entries.body_ids = offsets, body_ids
        entries.section_ids = array("I", [found.section_id]) * count
        if legacy:
            out.legacy_relocations += count
        return True

    def _nops(self, found: _Target, lo: int, hi: int) -> list[int] | None:
        """The NOP offsets entries lo:hi's words name, None unless each is 8-aligned,
        in the section's bytes and a NOP."""
        if self.addends is not None:
            addends: Iterable[int] = self.addends[lo:hi]
        else:
            addends = map(self.words.__getitem__, map(rshift, self.starts[lo:hi], itertools.repeat(_WORD_SHIFT)))
        nops = list(map(add, addends, itertools.repeat(found.base)))
        if min(nops) < 0 or max(nops) > found.last_nop or functools.reduce(or_, nops) & _INSN_MISALIGNMENT:
            return None
        at = found.section.offset
        named = map(self.file.startswith, itertools.repeat(NOP_INSN), map(add, nops, itertools.repeat(at)))
        return nops if all(named) else None

    def _bodies(self, lo: int, hi: int) -> list[bytes]:
        """Entries lo:hi's argument bytes: from after the address word to the next entry."""
        first, ends = self.notes_at + ADDRESS_WORD_SIZE, list(self.starts[lo + 1: hi + 1])
        if hi == len(self.starts):
            ends.append(self.size)       # the last entry runs to the section's end
        return list(map(self.file.__getitem__, map(slice, map(add, self.starts[lo:hi], itertools.repeat(first)),
                                                   map(add, ends, itertools.repeat(self.notes_at)))))


# _AtOnce reads this many entries at a time; an entry's address word is word
# start >> _WORD_SHIFT of the notes.
_AT_ONCE_CHUNK = 1 << 12
_WORD_SHIFT = ADDRESS_WORD_SIZE.bit_length() - 1


def _decode_new_bodies(chunk: list[bytes], bodies: list[EntryBody], index: dict[bytes, int]) -> bool:
    """The bodies of ``chunk`` not in ``index`` decoded, in first-use order,
    into ``bodies``: False if one does not decode."""
    for body in dict.fromkeys(chunk):
        if body not in index:
            body_id, errors = _new_body(bodies, body)
            if errors:
                return False
            index[body] = body_id
    return True


def _without(dropped: list[int], *columns: array[int]) -> tuple[array[int], ...]:
    """``columns`` without the items at the positions ``dropped``."""
    if not dropped:
        return columns
    gone = set(dropped)
    keep = [pos not in gone for pos in range(len(columns[0]))]
    return tuple(array(column.typecode, itertools.compress(column, keep)) for column in columns)


def _new_body(known: list[EntryBody], body: bytes) -> tuple[int, tuple[tuple[int, str], ...]]:
    """A body not seen before: decoded, and kept in ``known`` if it decodes."""
    args, errors = decode_args(body)
    if errors:
        return -1, errors
    known.append(EntryBody(body, args))
    return len(known) - 1, ()


def _decoded_positions(valid: Sequence[int], dropped: list[int], count: int) -> array[int] | None:
    """The boundary indices of the entries that decoded, None when all of
    ``count`` did (then the boundary's columns are the entries' own)."""
    if not dropped and len(valid) == count:
        return None
    gone = set(dropped)
    return array("q", [i for pos, i in enumerate(valid) if pos not in gone])


def _keep_bounds(entries: NoteEntries, bounds: _Boundary, kept: array[int] | None) -> None:
    """The boundary's columns for the decoded entries: the arrays themselves
    when every entry decoded (no copy), else the decoded entries' items.
    ``probes`` holds the name of every entry symbol's probe, decoded or not."""
    entries.probes = bounds.probes
    if kept is None:
        entries.entry_offsets, entries.probe_ids = bounds.starts, bounds.probe_ids
        entries.symbol_indices, entries.name_offsets = bounds.indices, bounds.name_offsets
        entries.names = bounds.names
        return
    if bounds.names is not None:
        entries.names = list(map(bounds.names.__getitem__, kept))
    for name, column in (("entry_offsets", bounds.starts), ("probe_ids", bounds.probe_ids),
                         ("symbol_indices", bounds.indices), ("name_offsets", bounds.name_offsets)):
        setattr(entries, name, array(column.typecode, map(column.__getitem__, kept)))


def _explain(out: NotesDecoding, start: int, sec: Section, base: int, word: int, addend: int,
             target: int, in_place: bool, code: memoryview) -> None:
    """Why an address word does not name a NOP, as precisely as the bytes allow."""
    hi, lo = addend >> 32, addend & 0xFFFFFFFF
    if addend < 0:
        out.problem(ProblemKind.ADDRESS, start, f"relocation addend {addend} is negative: the "
                    f"address {target:#x} is not a NOP offset in {sec.name}", start)
    elif hi and in_place and base + lo + hi < sec.size:
        out.problem(ProblemKind.LINKER_OFFSET, start, f"address word {word:#018x} has {hi:#x} added "
                    "into bytes 4..7: a linker treated the notes as code (section marked executable); "
                    "relink with `bpf-sdt link`", start)
    elif target < 0 or target + INSN_SIZE > sec.size or target % INSN_SIZE:
        out.problem(ProblemKind.ADDRESS, start, f"address {target:#x} is outside {sec.name} "
                    f"({sec.size} bytes) or not 8-aligned", start)
    elif len(code) != sec.size:
        out.problem(ProblemKind.ADDRESS, start, f"{sec.name} has no bytes in the file "
                    f"(section type {sec.type}), so {target:#x} holds no goto +0", start)
    else:
        insn = code[target: target + INSN_SIZE].hex(" ")
        out.problem(ProblemKind.ADDRESS, start, f"{sec.name}+{target:#x} is {insn}, "
                    "not goto +0", start)

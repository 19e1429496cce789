"""The site table of an object: its probe sites in site-id order, located.

A site's **id** is its index in one order: code section name, then the NOP's
offset there (then the entry's offset in the notes, for two entries on one
NOP, which `check` refuses).  It is the order `list` prints, the order whose
indices `instrument` passes to the recorder and the one `trace` decodes an
event's site id with.  Instrumenting inserts code only after NOPs and keeps
section names, so an object and its instrumented copy have the same order.

:func:`site_table` builds one :class:`SiteTable` per object, once, over what
:func:`bpf_sdt.notes.decode_notes` decoded: the ordered entries at once, and on
first use what needs more of the object (each site's function, its source
location from `.BTF.ext`, its inlined-at chain, the probes' typed arguments).
`check`, `list`, `link`, `instrument` and `trace` all read it, so each of those
is worked out once per object and in one place.  Sites found in C sources
(:class:`bpf_sdt.model.SourceSite`) are another thing, joined to these by
source location.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from itertools import islice
from operator import lt
from typing import TYPE_CHECKING

from bpf_sdt.elf import BpfObject
from bpf_sdt.format import RECORDER_IDENTITY_HEX
from bpf_sdt.insn import INSN_SIZE
from bpf_sdt.located_site import LocatedSite as LocatedSite
from bpf_sdt.notes import FunctionIndex, NoteEntries, NoteEntry, NotesDecoding, decode_notes

if TYPE_CHECKING:   # imported where used: `check` reads neither line info nor typed arguments
    from bpf_sdt.argtype import ArgType
    from bpf_sdt.btfext import SourceLines
    from bpf_sdt.inlined import CallSite

# The packed sort key below: (section rank, NOP offset, entry offset) in one
# int.  Offsets are byte offsets into sections of an object held in memory,
# so they stay below 2**32.
_OFFSET_BITS = 32
_RANK_SHIFT = 2 * _OFFSET_BITS
# Where the table is kept on its object (see site_table).
_CACHE_ATTRIBUTE = "_bpf_sdt_site_table"
NO_LOCATION: tuple[None, None, None] = (None, None, None)


def ordered_sites(decoding: NotesDecoding) -> NoteEntries:
    """Every decoded entry in site-id order: by code section name, NOP offset,
    entry offset.  Compilers emit notes in code order, so most objects need
    no sorted copy."""
    entries = decoding.entries
    names = sorted({sec.name for sec in entries.sections})
    ranks = [names.index(sec.name) for sec in entries.sections]    # per section id: a few sections
    if _in_site_order(entries, ranks):
        return entries
    keys = list(_keys(entries, ranks))
    return entries.take(sorted(range(len(keys)), key=keys.__getitem__))


def _in_site_order(entries: NoteEntries, ranks: list[int]) -> bool:
    """Whether the entries' keys ascend.  One code section whose NOP offsets
    ascend (what compilers and linkers write) is told by one comparison per
    site in C; anything else by the keys, one at a time, none kept."""
    offsets = entries.offsets
    if len(ranks) <= 1 and all(map(lt, offsets, islice(offsets, 1, None))):
        return True
    return all(map(lt, _keys(entries, ranks), islice(_keys(entries, ranks), 1, None)))


def _keys(entries: NoteEntries, ranks: list[int]) -> Iterator[int]:
    """Each entry's sort key as one int, not a tuple: up to MAX_ENTRIES of them."""
    return map(_key, map(ranks.__getitem__, entries.section_ids), entries.offsets, entries.entry_offsets)


def _key(rank: int, offset: int, entry_offset: int) -> int:
    return (rank << _RANK_SHIFT) | (offset << _OFFSET_BITS) | entry_offset


class SiteTable:
    """An object's sites in site-id order (``entries[site_id]``), and what is
    known of each, worked out once on first use."""

    def __init__(self, obj: BpfObject, decoding: NotesDecoding) -> None:
        self.obj = obj
        self.decoding = decoding
        self.entries = ordered_sites(decoding)

    def __len__(self) -> int:
        return len(self.entries)

    @cached_property
    def functions(self) -> FunctionIndex:
        return FunctionIndex(self.obj)

    @cached_property
    def lines(self) -> SourceLines:
        from bpf_sdt.btfext import SourceLines

        return SourceLines(self.obj)

    @cached_property
    def types(self) -> dict[str, tuple[ArgType, ...]]:
        """Probe name -> its typed arguments.  Raises InputError for BTF that
        cannot be read (check reports it; other stages refuse the object)."""
        from bpf_sdt.probes import probe_types

        return probe_types(self.obj.btf)

    @cached_property
    def inlined_at(self) -> list[tuple[CallSite, ...]]:
        """Per site (in id order), where its inlined function was called."""
        return self.lines.inlined_at(self.entries, self.functions)

    def notes_order_chains(self) -> list[tuple[CallSite, ...]]:
        """The inlined-at chain of every entry in notes order: what
        `.bpf_sdt_inline` holds (bpf_sdt.inlined)."""
        by_entry = dict(zip(self.entries.entry_offsets, self.inlined_at, strict=True))
        return [by_entry[offset] for offset in self.decoding.entries.entry_offsets]

    def function(self, entry: NoteEntry) -> str:
        return self.functions.at(entry.section, entry.offset)

    def location(self, entry: NoteEntry) -> tuple[str | None, int | None, int | None]:
        """(file, line, column) of a site, as .BTF.ext line_info gives it."""
        return self.lines.at(entry.section.name, entry.offset)

    def probes(self) -> list[str]:
        """The probe names that have sites, sorted."""
        names = self.entries.probes
        return sorted({names[i] for i in set(self.entries.probe_ids)})

    def keys(self) -> list[tuple[str, str]]:
        """(probe, code section) per site: what two tables must agree on to
        name the same sites by the same ids."""
        entries = self.entries
        names, sections = entries.probes, [sec.name for sec in entries.sections]
        return [(names[p], sections[s]) for p, s in zip(entries.probe_ids, entries.section_ids, strict=True)]

    def sites(self, *, sources: bool = True, types: dict[str, tuple[ArgType, ...]] | None = None,
              chains: Sequence[tuple[CallSite, ...]] | None = None) -> Iterator[LocatedSite]:
        """Every site, in id order.  Without ``sources`` no line info or
        DWARF is read (file, line and chain are None and ()); ``types``
        replaces the table's own (another object's prototypes), ``chains``
        its inlined-at chains (another object's, of the same sites in the
        same order: its DWARF is then not read)."""
        functions = self.functions.at
        declared = self.types if types is None else types
        where = self.lines.at if sources else None
        if not sources:
            chains = ()
        elif chains is None:
            chains = self.inlined_at
        entries = self.entries
        names, sections = entries.probes, entries.sections
        for site_id, (p, s, offset) in enumerate(zip(entries.probe_ids, entries.section_ids, entries.offsets,
                                                     strict=True)):
            probe, sec = names[p], sections[s]
            file, line, column = where(sec.name, offset) if where is not None else NO_LOCATION
            yield LocatedSite(site_id, probe, functions(sec, offset), sec.name, offset // INSN_SIZE,
                              file, line, declared.get(probe, ()), chains[site_id] if sources else (),
                              column)


def site_table(obj: BpfObject) -> SiteTable:
    """The object's site table, built on first use and kept on the object
    (as its cached properties are), so that every stage of one command reads
    the same one; an object's bytes do not change."""
    table = obj.__dict__.get(_CACHE_ATTRIBUTE)
    if not isinstance(table, SiteTable):
        table = SiteTable(obj, decode_notes(obj))
        obj.__dict__[_CACHE_ATTRIBUTE] = table
    return table


def recorder_identity(obj: BpfObject, plan_id: str = "") -> str:
    """The recorder's identity of an object: a digest of what decoding its
    events depends on, per site id: probe, code section, function and the
    argument types, and the recorder's filter and aggregation options
    (``plan_id``, trace.aggregate.plan_id; empty without any).  Instrumenting
    keeps the sites (only instructions are inserted), so the object given to
    `instrument` and its output have the same identity, and a reader computes
    it from OUT and the same options alone."""
    import hashlib  # here: loading OpenSSL costs `check` and `list` 2-3 ms of start-up

    digest = hashlib.sha256()
    if plan_id:
        digest.update(f"plan {plan_id}\n".encode())
    table = site_table(obj)
    entries = table.entries
    functions = table.functions.at
    typed: dict[str, str] = {}      # per probe: thousands of sites share a few prototypes
    names, sections = entries.probes, entries.sections
    lines = []          # digested at once: one update, not one per site (a digest of the concatenation)
    for site_id, (p, s, offset) in enumerate(zip(entries.probe_ids, entries.section_ids, entries.offsets,
                                                 strict=True)):    # no line info or DWARF: the digest needs neither
        probe, sec = names[p], sections[s]
        types = typed.get(probe)
        if types is None:
            types = typed[probe] = ";".join(f"{t.canonical}/{t.size}/{int(t.signed)}/{t.kind}"
                                            for t in table.types.get(probe, ()))
        lines.append(f"{site_id}|{probe}|{sec.name}|{functions(sec, offset)}|{types}\n")
    digest.update("".join(lines).encode())
    return digest.hexdigest()[:RECORDER_IDENTITY_HEX]

"""What trace knows about each probe site: the table events are decoded with.

The recorder writes a site id into every event: the site's index in
:func:`bpf_sdt.instrument.command.ordered_sites` of the instrumented object.
That order (code section name, NOP offset) survives instrumenting, because
code is only inserted after NOPs and section names stay, so the object the
user gave has the same sites in the same order.  Trace shows each site as
`bpf-sdt list OBJ` does (function, insn) plus its source line, taken from
OBJ when the two orders agree, from the instrumented object otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePath

from bpf_sdt.instrument.command import ordered_sites

from bpf_sdt.argtype import ArgType
from bpf_sdt.btfext import SourceLines
from bpf_sdt.elf import BpfObject
from bpf_sdt.format import RECORDER_IDENTITY_HEX
from bpf_sdt.inlined import CallSite
from bpf_sdt.notes import FunctionIndex, NoteEntry, decode_notes
from bpf_sdt.probes import probe_types


@dataclass(frozen=True)
class Site:
    site_id: int
    probe: str
    function: str               # "" when no function symbol covers the site
    section: str
    insn: int                   # the NOP's instruction index in its section, as `bpf-sdt list` shows it
    file: str | None            # source file and line from .BTF.ext line_info, when present
    line: int | None
    types: tuple[ArgType, ...]
    # where the inlined function holding the site was called, innermost first (as `list` shows)
    inlined_at: tuple[CallSite, ...] = ()

    @property
    def source(self) -> str | None:
        """``file:line`` with the file's base name, for text output, and the
        lines the site's function was inlined at."""
        if self.file is None:
            return None
        here = f"{PurePath(self.file).name}:{self.line}"
        if self.inlined_at:
            here += " (inlined at " + ", at ".join(f"{PurePath(c.file).name}:{c.line}" for c in self.inlined_at) + ")"
        return here


def site_table(instrumented: BpfObject, shown: BpfObject | None = None, *, sources: bool = True) -> list[Site]:
    """Site id -> Site for an object instrumented with the recorder.  Functions,
    instructions and lines come from ``shown`` (the object the user gave) when
    its sites line up with the instrumented object's, one for one."""
    ordered = ordered_sites(decode_notes(instrumented))
    types = probe_types(instrumented.btf)
    where, entries = instrumented, ordered
    if shown is not None and shown is not instrumented:
        theirs = ordered_sites(decode_notes(shown))
        if [(e.probe, e.section.name) for e in theirs] == [(e.probe, e.section.name) for e in ordered]:
            where, entries = shown, theirs
    functions = FunctionIndex(where)
    lines = SourceLines(where) if sources else None
    chains = lines.inlined_at(entries, functions) if lines is not None else [()] * len(entries)
    return [_site(i, e, functions, lines, types.get(e.probe, ()), chain)
            for i, (e, chain) in enumerate(zip(entries, chains, strict=True))]


def _site(site_id: int, entry: NoteEntry, functions: FunctionIndex, lines: SourceLines | None,
          types: tuple[ArgType, ...], inlined_at: tuple[CallSite, ...]) -> Site:
    file, line, _column = lines.at(entry.section.name, entry.offset) if lines is not None else (None, None, None)
    return Site(site_id, entry.probe, functions.at(entry.section, entry.offset), entry.section.name,
                entry.insn_index, file, line, types, inlined_at)


def recorder_identity(obj: BpfObject, plan_id: str = "") -> str:
    """The recorder's identity of an object: a digest of what decoding its
    events depends on, per site id: probe, code section, function and the
    argument types, and the recorder's filter and aggregation options
    (``plan_id``, trace.aggregate.plan_id; empty without any).  Instrumenting
    keeps the sites (only instructions are inserted), so the object given to
    `instrument` and its output have the same identity, and a reader computes
    it from OUT and the same options alone."""
    digest = hashlib.sha256()
    if plan_id:
        digest.update(f"plan {plan_id}\n".encode())
    for s in site_table(obj, sources=False):     # no line info or DWARF read: the digest needs neither
        types = ";".join(f"{t.canonical}/{t.size}/{int(t.signed)}/{t.kind}" for t in s.types)
        digest.update(f"{s.site_id}|{s.probe}|{s.section}|{s.function}|{types}\n".encode())
    return digest.hexdigest()[:RECORDER_IDENTITY_HEX]

"""What trace knows about each probe site: the table events are decoded with.

The recorder writes a site id into every event: the site's index in the
instrumented object's site table (:mod:`bpf_sdt.sites`).  That order survives
instrumenting, so the object the user gave has the same sites in the same
order.  Trace shows each site as `bpf-sdt list OBJ` does (function, insn) plus
its source line, taken from OBJ when the two tables agree, from the
instrumented object otherwise.

The site table's module (with the ELF, notes and instruction layers behind
it) is imported only where a table is built: a cached trace decodes its
sites from the cache entry, and needs only their record (docs/trace.md,
"Start-up").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bpf_sdt.located_site import LocatedSite

if TYPE_CHECKING:
    from bpf_sdt.elf import BpfObject

# An event's site, as trace decodes and prints it.
Site = LocatedSite

__all__ = ["Site", "recorder_identity", "site_table"]


def site_table(instrumented: BpfObject, shown: BpfObject | None = None, *, sources: bool = True) -> list[Site]:
    """Site id -> Site for an object instrumented with the recorder.  Functions,
    instructions and lines come from ``shown`` (the object the user gave) when
    its sites line up with the instrumented object's, one for one; argument
    types and inlined-at chains always from the instrumented object (its
    recorder decodes the arguments; its `.bpf_sdt_inline` holds the chains)."""
    from bpf_sdt.sites import site_table as table_of

    table = table_of(instrumented)
    if shown is not None and shown is not instrumented:
        theirs = table_of(shown)
        if theirs.keys() == table.keys():
            # Chains from the instrumented object's section, which instrument
            # wrote from OBJ's DWARF: that DWARF is not read a second time.
            chains = table.inlined_at if sources else None
            return list(theirs.sites(sources=sources, types=table.types, chains=chains))
    return list(table.sites(sources=sources, types=table.types))


def recorder_identity(obj: BpfObject, plan_id: str = "") -> str:
    """:func:`bpf_sdt.sites.recorder_identity`, whose module comes with the
    object's site table (never on a cached trace's way)."""
    from bpf_sdt.sites import recorder_identity as identity

    return identity(obj, plan_id)

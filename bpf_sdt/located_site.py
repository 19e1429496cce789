"""A located probe site: the record the site table (:mod:`bpf_sdt.sites`)
yields and trace decodes events with.

Plain data, in a module of its own: trace keeps these beside a cached
instrumented object (trace/instcache.py), and a cached trace builds them
again from that entry without importing the ELF, notes and instruction
layers the site table is made with (docs/trace.md, "Start-up").
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from bpf_sdt.argtype import ArgType
    from bpf_sdt.inlined import CallSite


class LocatedSite(NamedTuple):
    """One site of the table: its id and where it is (the note entry itself
    is ``table.entries[site_id]``).  Plain data: trace keeps these beside a
    cached instrumented object."""

    site_id: int
    probe: str
    function: str               # the function symbol holding the NOP, "" if none
    section: str                # the code section holding the NOP
    insn: int                   # the NOP's instruction index in that section
    file: str | None            # from .BTF.ext line_info, when the object has it
    line: int | None
    types: tuple[ArgType, ...]  # the probe's declared argument types (from BTF)
    # where the inlined function holding the site was called, innermost first
    inlined_at: tuple[CallSite, ...] = ()
    column: int | None = None

    @property
    def source(self) -> str | None:
        """``file:line`` with the file's base name, and the lines the site's
        function was inlined at: how trace prints a site."""
        if self.file is None:
            return None
        here = f"{PurePath(self.file).name}:{self.line}"
        if self.inlined_at:
            here += " (inlined at " + ", at ".join(f"{PurePath(c.file).name}:{c.line}" for c in self.inlined_at) + ")"
        return here

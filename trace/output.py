"""Trace's event sink: :class:`Decoder` turns the recorder's events into
output lines and hit counts.  Decoding (bytes -> typed values per site) is
:mod:`.decode`, formatting (text or JSON lines, runs, counts) is
:mod:`.report`, and the stdout that never waits is :mod:`.writer`; the
decoder joins the first two in one precompiled function per site, because the
per-event path has a budget of about a microsecond (bench/trace_bench.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from bpf_sdt.recorder_abi import EVENT_SITE

from .decode import SiteCodec, Unpack, site_codec
from .decode import slot_code as slot_code
from .report import Render, ReportLines, column_widths, event_formatter
from .sites import Site
from .writer import Writer as Writer

if TYPE_CHECKING:
    from .ring import Sink

# Per site: event size, event unpacker (header and arguments), and either a
# %-template for the unpacked event (struct codes converting) or a render function.
_Codec = tuple[int, Unpack, bytes | None, Render | None]


class Decoder(ReportLines):
    """Turns events into output lines (``lines``, written by :meth:`flush`) and
    hit counts.  ``sample`` is the per-event entry point: fast, no checks
    beyond what makes a foreign event harmless."""

    def __init__(self, sites: Sequence[Site], *, as_json: bool = False, count_only: bool = False,
                 shown: set[int] | None = None, t0_ns: int = 0, err: TextIO | None = None) -> None:
        super().__init__(sites, as_json=as_json, shown=shown, err=err)
        self.t0_ns = t0_ns
        self.hits = [0] * len(self.sites)
        self.foreign = 0            # events that do not fit the site table
        self._widths = column_widths([self.sites[i] for i in sorted(self.shown)])
        self._codecs = [self._codec(s, render=not count_only and s.site_id in self.shown) for s in self.sites]
        self.sample: Sink = self._sampler()

    @property
    def events(self) -> int:
        return sum(self.hits)

    def counts(self) -> None:
        """Hits per probe and per site (every shown site, also those that never fired)."""
        self.hit_counts(self.hits)

    def _codec(self, site: Site, render: bool) -> _Codec:
        codec: SiteCodec = site_codec(site)
        if not render:
            return codec.size, codec.unpack, None, None
        template, renderer = event_formatter(site, codec.converts, as_json=self.as_json, widths=self._widths,
                                             t0_ns=self.t0_ns)
        return codec.size, codec.unpack, template, renderer

    # --- the hot path --------------------------------------------------------------

    def _sampler(self) -> Sink:
        codecs, hits, append, foreign = self._codecs, self.hits, self.lines.append, self._foreign
        site_of = EVENT_SITE.unpack_from

        def sample(buf: Any, off: int, size: int) -> None:
            (site,) = site_of(buf, off)
            try:
                expected, unpack, template, render = codecs[site]
            except IndexError:
                foreign(site, size)
                return
            if expected != size:
                foreign(site, size)
                return
            hits[site] += 1
            if template is not None:
                append(template % unpack(buf, off))
            elif render is not None:
                append(render(unpack(buf, off)))

        return sample

    def _foreign(self, site: int, size: int) -> None:
        if not self.foreign:
            expected = f"{self._codecs[site][0]}-byte events" if site < len(self._codecs) else "no such site"
            self.err.write(f"bpf-sdt trace: an event of {size} bytes for site {site} ({expected}; the object has "
                           f"{len(self.sites)} sites): is OBJ the object that was loaded?\n")
        self.foreign += 1

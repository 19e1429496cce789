"""Formatting what trace reports: event lines (text or JSON lines, docs/trace.md
"Output"), test runs, refused packets, hit counts, lost and taken events.

Events are formatted from the values :mod:`.decode` unpacked: per site, either
a %-template for the whole unpacked event (JSON whose arguments are numbers or
pointers, with struct codes converting) or a render function.  Lines are kept
as UTF-8 bytes (formatting bytes is faster than str, and needs no encode)
until :meth:`ReportLines.flush` hands them to stdout or a :class:`.writer.Writer`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from bpf_sdt.argtype import ArgType
from bpf_sdt.errors import escape_text

from .decode import EVENT_FIELDS, Convert, converted
from .sites import Site
from .writer import Writer

JSON_FORMAT_VERSION = 2     # docs/trace.md "JSON lines": the first line of a stream carries it
U64_MASK = (1 << 64) - 1
NS_PER_S = 1_000_000_000

# Return values of the program types trace can test-run, for text output.
XDP_ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")
TC_ACTIONS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
              3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
              7: "TC_ACT_REDIRECT", 8: "TC_ACT_TRAP"}
TC_PROG_TYPES = ("sched_cls", "sched_act")

Render = Callable[[tuple[int, ...]], bytes]    # (ts, site, cpu, *slot values) -> line
Widths = tuple[int, int, int]                  # the text columns: probe, location, source


def retval_name(prog_type: str, retval: int) -> str | None:
    """XDP_PASS, TC_ACT_SHOT...: what a program's return value means, if known."""
    if prog_type == "xdp" and 0 <= retval < len(XDP_ACTIONS):
        return XDP_ACTIONS[retval]
    if prog_type in TC_PROG_TYPES:
        return TC_ACTIONS.get(shown_retval(prog_type, retval))
    return None


def shown_retval(prog_type: str, retval: int) -> int:
    """The return value as the program type means it: tc actions are a
    signed int (TC_ACT_UNSPEC is -1, not 4294967295); the kernel reports u32."""
    if prog_type in TC_PROG_TYPES and retval >= 1 << 31:
        return retval - (1 << 32)
    return retval


# --- event lines -------------------------------------------------------------------------


def event_formatter(site: Site, converts: tuple[Convert, ...] | None, *, as_json: bool, widths: Widths,
                    t0_ns: int) -> tuple[bytes | None, Render | None]:
    """How one site's unpacked events become a line: a %-template (the fast
    path) or a render function; ``converts`` are the decoder's conversions
    still to apply (None: the unpacked values are already typed)."""
    if as_json:
        if all(t.kind in _JSON_TEMPLATED for t in site.types):
            template = _json_template(site, typed=False)
            if converts is None:
                return template, None
            return None, _converting(converts, template.__mod__)
        return None, _json_typed(site, _json_template(site, typed=True))
    text = _text_renderer(site, widths, t0_ns)
    return None, text if converts is None else _converting(converts, text)


def column_widths(sites: Sequence[Site]) -> Widths:
    return (max((len(escape_text(s.probe)) for s in sites), default=0),
            max((len(_location(s)) for s in sites), default=0),
            max((len(escape_text(s.source or "-")) for s in sites), default=0))


def _json_template(site: Site, typed: bool) -> bytes:
    """A %-template for the whole unpacked event: ts, site, cpu, args
    (``typed``: each argument a ready JSON text, and the enum names)."""
    where: dict[str, object] = {"probe": site.probe, "function": site.function, "insn": site.insn,
                                "file": site.file, "line": site.line}
    if site.inlined_at:
        where["inlined_at"] = [c.as_json() for c in site.inlined_at]
    fixed = json.dumps(where, separators=(",", ":"))
    args = ",".join("%s" if typed else _JSON_PLACEHOLDER[t.kind] for t in site.types)
    enums = ',"enums":%s' if typed and any(t.kind == "enum" for t in site.types) else ""
    text = ('{"type":"event","ts":%d,"site":%d,"cpu":%d,' + fixed[1:-1].replace("%", "%%") + ',"args":['
            + args + "]" + enums + "}")
    return text.encode()          # json.dumps escaped everything outside ASCII


def _text_renderer(site: Site, widths: Widths, t0: int) -> Render:
    wp, wl, ws = widths
    head = f"{escape_text(site.probe):<{wp}}  {_location(site):<{wl}}  {escape_text(site.source or '-'):<{ws}}"
    formats = tuple(t.format for t in site.types)

    def text(event: tuple[int, ...]) -> bytes:
        args = ", ".join([f(v) for f, v in zip(formats, event[EVENT_FIELDS:], strict=True)])
        return f"{(event[0] - t0) / NS_PER_S:14.9f}  cpu {event[2]:<3} {head}  {args}".encode()

    return text


_JSON_NUMBERS = ("int", "char")           # kinds whose JSON value is the number itself
# Kinds a %-template writes straight from the unpacked slot (the hot path):
# numbers, and pointers as hex strings (a pointer's slot unpacks unsigned).
_JSON_PLACEHOLDER = {"int": "%d", "char": "%d", "pointer": '"0x%x"'}
_JSON_TEMPLATED = tuple(_JSON_PLACEHOLDER)


def _json_value(t: ArgType) -> Callable[[int], bytes]:
    """JSON text of a converted value: booleans as booleans, enums as their
    number (the names go beside), pointers and anything else as hex strings
    (JSON numbers above 2^53 are not safe)."""
    if t.kind in _JSON_NUMBERS or t.kind == "enum":
        return lambda v: b"%d" % v
    if t.kind == "bool":
        return lambda v: b"true" if v else b"false"
    return lambda v: b'"0x%x"' % (v & U64_MASK)


def _json_typed(site: Site, template: bytes) -> Render:
    """Render of an event with booleans, enums or pointers among its arguments."""
    converts = tuple(t.convert for t in site.types)
    values = tuple(_json_value(t) for t in site.types)
    enum_names = [t if t.kind == "enum" else None for t in site.types]
    has_enums = any(enum_names)

    def render(event: tuple[int, ...]) -> bytes:
        args = [c(v) for c, v in zip(converts, event[EVENT_FIELDS:], strict=True)]
        pieces: list[object] = [*event[:EVENT_FIELDS], *(f(v) for f, v in zip(values, args, strict=True))]
        if has_enums:
            names = [t.format(v) if t is not None and t.format(v) != str(v) else None
                     for t, v in zip(enum_names, args, strict=True)]
            pieces.append(json.dumps(names, separators=(",", ":")).encode())
        return template % tuple(pieces)

    return render


def _converting(converts: tuple[Convert, ...], render: Render) -> Render:
    """``render`` after ArgType.convert on every slot (widths without a struct code)."""
    def render_converted(event: tuple[int, ...]) -> bytes:
        return render(converted(converts, event))

    return render_converted


def _location(site: Site) -> str:
    return f"{escape_text(site.function or '-')} insn {site.insn}"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    numeric = {len(head) - 1}                # the count column aligns right

    def row(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [row(head)] + [row(r) for r in rows]


# --- the report's other lines, and handing the lines out ------------------------------------


class ReportLines:
    """The output lines of one trace (``lines``, written by :meth:`flush`):
    events appended by the decoder, and the lines that are not events."""

    def __init__(self, sites: Sequence[Site], *, as_json: bool, shown: set[int] | None,
                 err: TextIO | None) -> None:
        self.sites = list(sites)
        self.as_json = as_json
        self.shown = set(range(len(self.sites))) if shown is None else shown
        self.err = err or sys.stderr
        self.lines: list[bytes] = []    # UTF-8
        self._other_lines = 0           # of ``lines``, those that are not events (runs, counts, lost)
        self._version_written = False   # JSON: the first line got the format version

    def _line(self, text: str) -> None:
        self.lines.append(text.encode())
        self._other_lines += 1

    def note_line(self, text: str) -> None:
        """A line that is not an event (aggregations, the recorder's counters)."""
        self._line(text)

    def _versioned(self) -> None:
        """The first JSON line of the stream, whatever its type, carries the format version."""
        if self.as_json and not self._version_written and self.lines:
            first = self.lines[0]
            self.lines[0] = b'{"format_version":%d,' % JSON_FORMAT_VERSION + first[1:]
            self._version_written = True

    def flush(self, out: TextIO | Writer) -> None:
        """Hands the lines so far to ``out``: a :class:`Writer` (which says
        how many events it could not write), else a text stream, written
        now (to its binary buffer when it has one)."""
        self._versioned()
        if self.lines:
            events = len(self.lines) - self._other_lines
            self.lines.append(b"")          # the last line's newline, without copying the whole text again
            data = b"\n".join(self.lines)
            self.lines.clear()
            self._other_lines = 0
            if isinstance(out, Writer):
                out.write(data, events)
                return
            binary = getattr(out, "buffer", None)
            if binary is not None:
                out.flush()
                binary.write(data)
            else:
                out.write(data.decode())
        if not isinstance(out, Writer):
            out.flush()

    def run_line(self, number: int, prog: str, prog_type: str, retval: int, repeat: int, events: int,
                 duration_ns: int) -> None:
        """One test run's result, after its events."""
        retval = shown_retval(prog_type, retval)
        if self.as_json:
            self._line(json.dumps({"type": "run", "run": number, "prog": prog, "retval": retval, "repeat": repeat,
                                   "events": events, "duration_ns": duration_ns}, separators=(",", ":")))
            return
        name = retval_name(prog_type, retval)
        meaning = f" ({name})" if name else ""
        times = f" x{repeat} ({duration_ns} ns per run)" if repeat > 1 else ""
        self._line(f"run {number}: {escape_text(prog)}{times} returned {retval}{meaning}; "
                   f"{events} event{'s' if events != 1 else ''}")

    def refused_line(self, number: int, prog: str, size: int, reason: str) -> None:
        """A packet the kernel would not test-run: it checks headers before
        running (an Ethernet header for every type; complete IPv4/IPv6
        headers for skb programs)."""
        if self.as_json:
            self._line(json.dumps({"type": "refused", "run": number, "prog": prog, "error": reason, "size": size},
                                  separators=(",", ":")))
            return
        self._line(f"run {number}: {escape_text(prog)}: the kernel refused the {size}-byte packet ({reason}; "
                   "it wants an Ethernet header, and complete IP headers for skb programs)")

    def hit_counts(self, hits: Sequence[int]) -> None:
        """Hits per probe and per site (every shown site, also those that never fired)."""
        shown = [s for s in self.sites if s.site_id in self.shown]
        per_probe: dict[str, int] = {}
        for s in shown:
            per_probe[s.probe] = per_probe.get(s.probe, 0) + hits[s.site_id]
        if self.as_json:
            sites = [{"site": s.site_id, "probe": s.probe, "function": s.function, "insn": s.insn,
                      "file": s.file, "line": s.line, "hits": hits[s.site_id]} for s in shown]
            self._line(json.dumps({"type": "counts", "counts": {"probes": per_probe, "sites": sites}},
                                  separators=(",", ":")))
            return
        for line in _table(("PROBE", "HITS"), [(escape_text(p), str(n)) for p, n in sorted(per_probe.items())]):
            self._line(line)
        for line in _table(("SITE", "PROBE", "FUNCTION", "INSN", "SOURCE", "HITS"),
                           [(str(s.site_id), escape_text(s.probe), escape_text(s.function or "-"), str(s.insn),
                             escape_text(s.source or "-"), str(hits[s.site_id])) for s in shown]):
            self._line(line)

    def lost_line(self, lost: int) -> None:
        """The ring buffer overflowed: always said, on stdout in JSON (so a
        consumer of the stream sees it) and on stderr."""
        if self.as_json:
            self._line(json.dumps({"type": "lost", "lost": lost}))
        self.err.write(f"bpf-sdt trace: {lost} event{'s' if lost != 1 else ''} lost: the ring buffer was full "
                       "(raise --ringbuf-size or narrow --probe)\n")

    def taken_line(self, taken: int) -> None:
        """Events the recorder submitted that this reader never saw: another
        reader of the same ring consumed them (each reader misses what the
        other takes)."""
        if self.as_json:
            self._line(json.dumps({"type": "taken", "taken_by_another_reader": taken}))
        self.err.write(f"bpf-sdt trace: {taken} event{'s' if taken != 1 else ''} submitted to the ring buffer "
                       "were read by another reader of it (counted by the recorder, not seen here)\n")

"""Decoding recorder events and printing them: text, JSON lines, or counts.

An event (:func:`bpf_sdt.recorder_abi.event_struct`, rendered into the
recorder's C) is, little endian::

    u64 ts (bpf_ktime_get_ns, CLOCK_MONOTONIC)   u32 site id   u32 cpu
    u64 arg[n]      already converted to the probe's declared C type

The recorder converts, but trace converts again with the shared
:class:`~bpf_sdt.argtype.ArgType` of each argument (what it converted to is
the BTF prototype, and a stale or foreign object must not print wrong
numbers), then prints through :meth:`ArgType.format`.  Per site, the argument
slots are read by one precompiled :class:`struct.Struct` whose codes are
derived from each ArgType's ``bits`` and ``signed`` (reading the low
``bits/8`` bytes of a little-endian slot, signed or not, is exactly
``ArgType.convert``); widths without a struct code go through ``convert``.
This keeps decoding under a microsecond per event in CPython (bench/trace_bench.py).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import os
import select
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from bpf_sdt.trace.sites import Site

from bpf_sdt.argtype import ArgType
from bpf_sdt.errors import BpfSdtError
from bpf_sdt.model import escape_text
from bpf_sdt.recorder_abi import ARG_SLOT, EVENT_HEADER, EVENT_HEADER_FIELDS, EVENT_SITE

JSON_FORMAT_VERSION = 2     # docs/trace.md "JSON lines": the first line of a stream carries it
EVENT_FIELDS = EVENT_HEADER_FIELDS          # ts, site id, cpu: the unpacked event's first values
U64_MASK = (1 << 64) - 1
NS_PER_S = 1_000_000_000
_INT_CODES = {8: "b", 16: "h", 32: "i", 64: "q"}

# Return values of the program types trace can test-run, for text output.
XDP_ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")
TC_ACTIONS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
              3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
              7: "TC_ACT_REDIRECT", 8: "TC_ACT_TRAP"}
TC_PROG_TYPES = ("sched_cls", "sched_act")

Sink = Callable[[Any, int, int], None]      # (buffer, offset, size) of one event


def slot_code(t: ArgType) -> str | None:
    """The struct code that reads one 8-byte slot the way ``t.convert`` does,
    or None when no struct code has ``t``'s width."""
    code = _INT_CODES.get(t.bits)
    if code is None:
        return None
    if not t.signed:
        code = code.upper()
    pad = ARG_SLOT - t.bits // 8
    return code + (f"{pad}x" if pad else "")


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


Render = Callable[[tuple[int, ...]], bytes]    # (ts, site, cpu, *slot values) -> line
# Per site: event size, event unpacker (header and arguments), and either a
# %-template for the unpacked event (JSON, struct codes converting) or a
# render function.
_Codec = tuple[int, Callable[[Any, int], tuple[int, ...]], bytes | None, Render | None]


class Decoder:
    """Turns events into output lines (``lines``, written by :meth:`flush`) and
    hit counts.  ``sample`` is the per-event entry point: fast, no checks
    beyond what makes a foreign event harmless."""

    def __init__(self, sites: Sequence[Site], *, as_json: bool = False, count_only: bool = False,
                 shown: set[int] | None = None, t0_ns: int = 0, err: TextIO | None = None) -> None:
        self.sites = list(sites)
        self.as_json = as_json
        self.shown = set(range(len(self.sites))) if shown is None else shown
        self.t0_ns = t0_ns
        self.err = err or sys.stderr
        self.lines: list[bytes] = []    # UTF-8: formatting bytes is faster than str, and needs no encode
        self._other_lines = 0           # of ``lines``, those that are not events (runs, counts, lost)
        self._version_written = False   # JSON: the first line got the format version
        self.hits = [0] * len(self.sites)
        self.foreign = 0            # events that do not fit the site table
        self._widths = _column_widths([self.sites[i] for i in sorted(self.shown)])
        self._codecs = [self._codec(s, render=not count_only and s.site_id in self.shown) for s in self.sites]
        self.sample: Sink = self._sampler()

    @property
    def events(self) -> int:
        return sum(self.hits)

    # --- per-site precomputation --------------------------------------------------

    def _codec(self, site: Site, render: bool) -> _Codec:
        codes = [slot_code(t) for t in site.types]
        unpack = struct.Struct(EVENT_HEADER.format + "".join(c or "Q" for c in codes)).unpack_from
        size = EVENT_HEADER.size + ARG_SLOT * len(site.types)
        if not render:
            return size, unpack, None, None
        converts = None if all(codes) else tuple(t.convert for t in site.types)
        if self.as_json:
            if all(t.kind in _JSON_TEMPLATED for t in site.types):
                template = self._json_template(site, typed=False)
                if converts is None:
                    return size, unpack, template, None
                return size, unpack, None, _converting(converts, template.__mod__)
            return size, unpack, None, _json_typed(site, self._json_template(site, typed=True))
        text = self._text_renderer(site)
        return size, unpack, None, text if converts is None else _converting(converts, text)

    @staticmethod
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

    def _text_renderer(self, site: Site) -> Render:
        wp, wl, ws = self._widths
        head = f"{escape_text(site.probe):<{wp}}  {_location(site):<{wl}}  {escape_text(site.source or '-'):<{ws}}"
        formats = tuple(t.format for t in site.types)
        t0 = self.t0_ns

        def text(event: tuple[int, ...]) -> bytes:
            args = ", ".join([f(v) for f, v in zip(formats, event[EVENT_FIELDS:], strict=True)])
            return f"{(event[0] - t0) / NS_PER_S:14.9f}  cpu {event[2]:<3} {head}  {args}".encode()

        return text

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

    # --- output ------------------------------------------------------------------------

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

    def counts(self) -> None:
        """Hits per probe and per site (every shown site, also those that never fired)."""
        shown = [s for s in self.sites if s.site_id in self.shown]
        per_probe: dict[str, int] = {}
        for s in shown:
            per_probe[s.probe] = per_probe.get(s.probe, 0) + self.hits[s.site_id]
        if self.as_json:
            sites = [{"site": s.site_id, "probe": s.probe, "function": s.function, "insn": s.insn,
                      "file": s.file, "line": s.line, "hits": self.hits[s.site_id]} for s in shown]
            self._line(json.dumps({"type": "counts", "counts": {"probes": per_probe, "sites": sites}},
                                  separators=(",", ":")))
            return
        for line in _table(("PROBE", "HITS"), [(escape_text(p), str(n)) for p, n in sorted(per_probe.items())]):
            self._line(line)
        for line in _table(("SITE", "PROBE", "FUNCTION", "INSN", "SOURCE", "HITS"),
                             [(str(s.site_id), escape_text(s.probe), escape_text(s.function or "-"), str(s.insn),
                               escape_text(s.source or "-"), str(self.hits[s.site_id])) for s in shown]):
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


# --- writing without waiting -------------------------------------------------------------

MAX_PENDING = 4 << 20           # bytes of output held for a slow stdout before events are dropped
PUMP_S = 0.05                   # longest a write of queued output lasts between reads of the ring
PIPE_BUF = select.PIPE_BUF      # a blocking pipe that polls writable takes this much without waiting
PIPE_SIZE = 1 << 20             # asked of stdout's pipe (the unprivileged limit, fs.pipe-max-size)
_NEWLINE = 0x0A


class Writer:
    """Trace's stdout, written without ever waiting on its reader.

    A reader slower than the events (``| sleep 25``, a slow consumer) must
    not stop trace from ending on time, honouring signals or reading the
    ring.  Output queues here, at most ``limit`` bytes; what does not fit is
    dropped and counted (``not_written``, in events), and :meth:`close` gives
    the reader a deadline, not a wait (test runs, which can pace themselves,
    wait for the queue to empty first: the runner's ``_wait_for_reader``).
    Writes never block:

    - a pipe, FIFO or terminal is reopened through ``/proc/self/fd`` as a
      file description of trace's own, non-blocking (setting O_NONBLOCK on
      the inherited one would change it for the shell and everyone sharing it),
      and written in pieces of at most ``PIPE_BUF`` bytes of whole lines: the
      kernel writes such a piece whole or not at all;
    - a socket is written with ``MSG_DONTWAIT``;
    - a regular file or other device is written directly (they do not stall);
    - otherwise, at most ``PIPE_BUF`` bytes once ``poll`` says writable.

    Whole lines are written where a line fits the write, so output cut off
    at the deadline ends with a complete line."""

    def __init__(self, out: TextIO, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self.not_written = 0            # events dropped or left unwritten
        self.closed = False             # the reader went away (EPIPE): nothing more can be written
        self.failed = False             # a write error (a full disk): said once, as the error
        self._text: TextIO | None = None
        self._pending: collections.deque[tuple[memoryview, int]] = collections.deque()  # (bytes, events)
        self._bytes = 0
        self._own_fd = -1
        self._sock: socket.socket | None = None
        self._fd = -1
        self._piece: int | None = None  # most bytes per write (None: no limit)
        self._poll_first = False        # a blocking fd that takes PIPE_BUF once poll says writable
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):  # io.StringIO and the like: written at once
            self._text = out
            return
        out.flush()
        self._fd = fd
        try:
            self._open(fd)
        except OSError:                 # no stdout at all (`>&-`): as if its reader had left
            self.closed = True

    def _open(self, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or os.isatty(fd):
            self._piece = PIPE_BUF
            try:
                self._own_fd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC |
                                       os.O_NOCTTY)
                self._fd = self._own_fd
            except OSError:
                self._poll_first = True
            if stat.S_ISFIFO(mode):     # a bigger pipe: fewer wake-ups of the reader (best effort)
                with contextlib.suppress(OSError):
                    fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        elif stat.S_ISSOCK(mode):
            self._sock = socket.socket(fileno=os.dup(fd))

    @property
    def fd(self) -> int:
        """Select for writing on this while :attr:`pending` (-1: nothing to watch)."""
        return self._fd if self._text is None else -1

    @property
    def pending(self) -> int:
        return self._bytes

    def write(self, data: bytes, events: int) -> None:
        """Queues ``data`` (whole lines, ``events`` of them events) and writes
        what the reader takes now; over the limit, drops and counts them."""
        if self._text is not None:
            if not self.closed:
                try:
                    self._text.write(data.decode())
                    self._text.flush()
                except (AttributeError, OSError, ValueError):   # no stdout (`>&-`) or a closed stream
                    self.closed = True
            if self.closed:
                self.not_written += events
            return
        if self.closed or self._bytes + len(data) > self.limit:
            self.not_written += events
            return
        self._pending.append((memoryview(data), events))
        self._bytes += len(data)
        self.pump()

    def pump(self, most_s: float | None = PUMP_S) -> None:
        """Writes queued output until the reader would make trace wait, or
        for ``most_s`` seconds (None: no limit): a reader that keeps up with
        a large queue cannot hold trace from the ring and its signals."""
        until = None if most_s is None else time.monotonic() + most_s
        while self._pending and (until is None or time.monotonic() < until):
            view, events = self._pending[0]
            piece = _whole_lines(view, self._piece or len(view))
            if self._poll_first and not select.select([], [self._fd], [], 0)[1]:
                return
            try:
                done = self._write(piece)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:        # EPIPE and the like: no reader left; the rest cannot be written
                if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                    self._drop_all()    # a full disk, an I/O error: one line, exit 2 (docs/cli.md)
                    self.failed = True
                    raise BpfSdtError(f"cannot write to standard output: {e.strerror or e}") from None
                self.closed = True
                self._drop_all()
                return
            self._bytes -= done
            if done == len(view):
                self._pending.popleft()
            else:
                written_events = min(events, _lines_in(view[:done]))
                self._pending[0] = (view[done:], events - written_events)

    def _write(self, piece: memoryview) -> int:
        if self._sock is not None:
            return self._sock.send(piece, socket.MSG_DONTWAIT)
        return os.write(self._fd, piece)

    def close(self, deadline: float) -> None:
        """Writes what is queued until ``deadline`` (time.monotonic()); what
        is left is counted in ``not_written``."""
        while self._pending and self._text is None:
            self.pump(None)
            timeout = deadline - time.monotonic()
            if not self._pending or timeout <= 0:
                break
            select.select([], [self._fd], [], timeout)
        self._drop_all()
        if self._own_fd >= 0:
            os.close(self._own_fd)
            self._own_fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def not_written_line(self) -> str | None:
        """The stderr line about events read but not written, if it is due
        (not after a write error or a reader that left: those say it otherwise)."""
        if not self.not_written or self.closed or self.failed:
            return None
        n = self.not_written
        return f"bpf-sdt trace: {n} event{'s' if n != 1 else ''} not written: stdout too slow\n"

    def _drop_all(self) -> None:
        for view, events in self._pending:
            self.not_written += min(events, _lines_in(view))
        self._pending.clear()
        self._bytes = 0


def _whole_lines(view: memoryview, most: int) -> memoryview:
    """The longest prefix of ``view`` of at most ``most`` bytes that ends a
    line (or ``most`` bytes, if not even one line fits)."""
    if len(view) <= most:
        return view
    end = bytes(view[:most]).rfind(b"\n") + 1
    return view[:end or most]


def _lines_in(view: memoryview) -> int:
    return bytes(view).count(_NEWLINE)


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


def _converting(converts: tuple[Callable[[int], int], ...], render: Render) -> Render:
    """``render`` after ArgType.convert on every slot (widths without a struct code)."""
    def converted(event: tuple[int, ...]) -> bytes:
        args = tuple(f(v) for f, v in zip(converts, event[EVENT_FIELDS:], strict=True))
        return render((*event[:EVENT_FIELDS], *args))

    return converted


def _location(site: Site) -> str:
    return f"{escape_text(site.function or '-')} insn {site.insn}"


def _column_widths(sites: Sequence[Site]) -> tuple[int, int, int]:
    return (max((len(escape_text(s.probe)) for s in sites), default=0),
            max((len(_location(s)) for s in sites), default=0),
            max((len(escape_text(s.source or "-")) for s in sites), default=0))


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    numeric = {len(head) - 1}                # the count column aligns right

    def row(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [row(head)] + [row(r) for r in rows]

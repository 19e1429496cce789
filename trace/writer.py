"""Trace's standard output, written without ever waiting on its reader
(:class:`Writer`): events and report lines queue here, bounded, and what a
slow reader cannot take in time is dropped and counted, never waited for."""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import stat
import time
from typing import TYPE_CHECKING, TextIO

from bpf_sdt.errors import BpfSdtError

if TYPE_CHECKING:
    import socket  # imported only for a stdout that is one: a millisecond of every trace's start otherwise

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
        self._dont_wait = 0             # socket.MSG_DONTWAIT, set with _sock
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
            import socket

            self._sock, self._dont_wait = socket.socket(fileno=os.dup(fd)), socket.MSG_DONTWAIT

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
            return self._sock.send(piece, self._dont_wait)
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

"""The child process trace instruments in (docs/trace.md): forked, in its own
process group with the clang it starts, so that a stop signal ends the work at
once (the group is killed) and instrument's memory is returned when it exits.

--live forks it before anything else (trace/cli.py): while the parent imports
trace's modules and finds the running program, the child imports
instrument's and compiles the recorder's template, a tenth of a second each
that would otherwise come one after the other; the job then comes through a
pipe.  Kept out of trace.runner so that forking it early imports no more than
this module does.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bpf_sdt.errors import BpfSdtError

from .runtime import STOP_SIGNALS, StopSignals

if TYPE_CHECKING:
    from bpf_sdt.instrument.observers import RecorderOptions

    from .instcache import Job


class InstrumentWorker:
    """The child process that instruments (forked: its own process group,
    with the clang it starts, so that a stop signal ends it at once: it is
    killed).  It may be forked before its job is known, as --live does first
    thing: it then imports instrument and compiles the recorder's template
    (a tenth of a second) while the parent finds the running program and
    picks the job, which comes through a pipe.  A worker is used once;
    :meth:`close` ends one that was not (a cached object needed none)."""

    def __init__(self) -> None:
        job_read, self._job_fd = os.pipe2(os.O_CLOEXEC)
        self._answer_fd, answer_write = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:                                # the child: never returns
            os.close(self._job_fd)
            os.close(self._answer_fd)
            _worker_child(job_read, answer_write)
        self.pid: int | None = pid
        os.close(job_read)
        os.close(answer_write)
        with contextlib.suppress(OSError):      # the child does it too: whichever runs first
            os.setpgid(pid, pid)

    def run(self, job: Job, output: Path, plan: RecorderOptions | None, stop: StopSignals,
            meanwhile: Callable[[], None] | None = None, reap_later: bool = False) -> list[tuple[int, str]] | None:
        """Instruments ``job``'s object at ``output``; None if a stop signal
        came first.  ``plan``: the recorder's, if the parent made it already;
        ``meanwhile`` runs once the job is sent.  Returns (site id, probe) of
        the instrumented sites; the child's one-line errors are raised here
        as they were.  ``reap_later``: the child writes instrument's cache
        entries after its answer (recorder_cache.defer_writes), while the
        caller goes on; the caller's :meth:`close` reaps the child, or ends
        it if it is still at them."""
        data = None
        try:
            _write_all(self._job_fd, pickle.dumps((job, output, plan, reap_later)))
            os.close(self._job_fd)
            self._job_fd = -1
            if meanwhile is not None:
                meanwhile()
            data = _read_until_stopped(self._answer_fd, stop)
        finally:
            if data is None or not reap_later:
                self.close(kill=data is None)       # stopped, or meanwhile failed: the work is not wanted
            else:
                self._close_pipes()
        if data is None:
            return None
        kind, payload = pickle.loads(data)          # our own child's answer
        if kind == "ok":
            return list(payload)
        if kind == "error":
            exit_code, message = payload
            error = BpfSdtError(message)
            error.exit_code = exit_code
            raise error
        raise RuntimeError(f"instrument failed in its child process:\n{payload}")

    def close(self, kill: bool = True, wait: bool = True) -> None:
        """Ends the child (``kill``) or waits for it to end; with ``wait``
        false, only reaps it if it has ended: one still writing its cache
        entries after its answer (reap_later) is left to them rather than
        waited for, which would hold a stop signal up too; the trace's last
        close() kills it if it is still at them (an entry is written whole
        or not at all)."""
        if self.pid is None:
            return
        self._close_pipes()
        if kill:
            _kill_group(self.pid)
        if kill or wait:
            os.waitpid(self.pid, 0)
        elif os.waitpid(self.pid, os.WNOHANG)[0] == 0:
            return                  # still writing: reaped, or killed, by the next close()
        self.pid = None

    def _close_pipes(self) -> None:
        for fd in (self._job_fd, self._answer_fd):
            if fd >= 0:
                os.close(fd)
        self._job_fd = self._answer_fd = -1


_early: list[InstrumentWorker] = []        # forked by fork_early, not yet taken


def fork_early() -> None:
    """Forks the worker of a `trace --live` as soon as the command's entry
    point sees one (bpf_sdt.cli.entry), before its arguments are parsed:
    the child's imports then start a few hundredths of a second earlier,
    on the core the parser leaves idle.  :func:`take_early` hands it to the
    trace; :func:`discard_early` ends one nobody took (a usage error)."""
    _early.append(InstrumentWorker())


def take_early() -> InstrumentWorker | None:
    return _early.pop() if _early else None


def discard_early() -> None:
    while _early:
        _early.pop().close()


def _worker_child(job_fd: int, answer_fd: int) -> None:
    code = 0
    # No cyclic collector in the child: it imports instrument (a tenth of
    # its imports' time went to collections finding nothing) and then runs
    # it, which turns it off anyway; the process exits when done.
    gc.disable()
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(Exception):    # noqa: BLE001 - a failure shows when the job needs it
            _prepare_to_instrument()
        request = _read_all(job_fd)
        if not request:                         # closed unused
            os._exit(0)
        job, output, plan, writes_after = pickle.loads(request)   # from our own parent
        # instrument's own temporaries go inside trace's directory: a child
        # killed mid-way cannot remove them, the parent's cleanup does
        os.environ["TMPDIR"] = tempfile.tempdir = str(output.parent)
        if writes_after:
            from bpf_sdt.instrument import recorder_cache

            recorder_cache.defer_writes()
        try:
            message: tuple[str, object] = ("ok", _instrument_here(job, output, plan))
        except BpfSdtError as e:
            message = ("error", (e.exit_code, str(e)))
        except BaseException:           # noqa: BLE001 - a bug: its traceback goes to the parent
            # Imported only then: the import was on the way to the fork.
            import traceback

            message = ("crash", traceback.format_exc())
        _write_all(answer_fd, pickle.dumps(message))
        os.close(answer_fd)                     # the parent has its answer: it goes on
        if writes_after:
            _write_cache_entries()
    except BaseException:               # noqa: BLE001 - nothing may unwind into the parent's code
        code = 1
    os._exit(code)


def _write_cache_entries() -> None:
    """The recorder cache's entries kept while the parent waited (its
    --version query, a clang run, among them): written while the parent
    loads the copy, on the core the verifier leaves free."""
    from bpf_sdt.instrument import recorder_cache

    with contextlib.suppress(Exception):    # noqa: BLE001 - a cache that cannot be written is no error
        recorder_cache.write_deferred()


def _prepare_to_instrument() -> None:
    """What every instrument run imports and compiles before it reads its
    input: done while the job is not known yet.  Not pyelftools: instrument
    reads the DWARF while clang builds the recorder, and imports it then."""
    import bpf_sdt.instrument.commands  # noqa: F401
    import bpf_sdt.postlink.check  # noqa: F401
    import bpf_sdt.postlink.link  # noqa: F401
    from bpf_sdt.instrument.observers import prepare_recorder

    prepare_recorder()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _instrument_here(job: Job, output: Path, plan: RecorderOptions | None) -> list[tuple[int, str]]:
    """The child's work: (site id, probe) of every site instrumented.  No
    plan: the recorder only writes events, which instrument's default
    recorder does (the plan of no options makes the same object, and costs
    a parse of OBJ's DWARF)."""
    from bpf_sdt.instrument.commands import Request, instrument

    request = Request(job.input, output, job.probes, ringbuf_size=job.ringbuf_size, programs=job.programs,
                      durable=False)
    if plan is not None:
        import dataclasses  # instrument's Request is one; a cached trace imports neither

        request = dataclasses.replace(request, recorder=plan)
    return [(s.site_id, s.probe) for s in instrument(request).sites]


def _read_until_stopped(fd: int, stop: StopSignals) -> bytes | None:
    """Everything written to ``fd`` until its writer closes it; None if a stop
    signal came first."""
    chunks: list[bytes] = []
    while not stop.requested:
        ready, _, _ = select.select([fd, stop.fd], [], [])
        stop.drain()
        if fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    return None


def _kill_group(pid: int) -> None:
    """SIGKILL to the child's process group (the child and the clang it runs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)

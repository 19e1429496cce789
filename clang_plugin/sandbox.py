"""Run parses in child processes with a memory limit and a deadline per file.

libclang is C++ run in-process: a parse that never ends (an `#include` of a
FIFO spelled through a macro) or that reads until memory runs out (`/dev/zero`)
cannot be interrupted from Python, and an LLVM abort kills its process.  So
parses run in forked workers, at most `jobs` at a time.  Each worker sets
RLIMIT_AS once, then takes task numbers from a pipe (the tasks themselves it
inherited at fork) and, per task, arms an alarm whose default action ends it
even inside a blocking open(), runs it, and writes the result back framed by
its length.  The parent kills a worker past its deadline; a worker that dies
fails only its current task, with a one-line reason, and a new one is forked
for the rest.  Workers are reused (a fork per file cost a third more CPU:
copy-on-write faults and cold caches in every child).

Limits: BPF_SDT_PARSE_MEMORY (MiB of address space, default 2048: a parse of
a program including the whole vmlinux.h peaks near 230) and
BPF_SDT_PARSE_TIMEOUT (seconds per file, default 60; that parse takes under
one).
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import struct
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TypeVar

from bpf_sdt.errors import UsageError

MEMORY_ENV = "BPF_SDT_PARSE_MEMORY"
TIMEOUT_ENV = "BPF_SDT_PARSE_TIMEOUT"
DEFAULT_MEMORY_MIB = 2048
DEFAULT_TIMEOUT_S = 60
# Past the worker's own alarm, how long the parent waits before SIGKILL.
KILL_GRACE_S = 1.0
# A worker's exit code when Python itself ran out of memory.
EXIT_NO_MEMORY = 3
# What LLVM prints when an allocation fails ("LLVM ERROR: out of memory").
OOM_MARK = b"out of memory"
# Frames on the pipes: a task number to the worker; back, a result's length
# and whether the worker retires after it (it will exit, take no more tasks).
_TASK = struct.Struct("<I")
_HEADER = struct.Struct("<QB")

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    memory_mib: int = DEFAULT_MEMORY_MIB
    timeout_s: int = DEFAULT_TIMEOUT_S

    @classmethod
    def from_env(cls) -> Limits:
        return cls(_positive_env(MEMORY_ENV, DEFAULT_MEMORY_MIB), _positive_env(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))

    def memory_message(self) -> str:
        return (f"parsing needed more than {self.memory_mib} MiB (an #include of a device such as /dev/zero?); "
                f"{MEMORY_ENV}=MiB raises the limit")

    def timeout_message(self) -> str:
        return (f"parsing took longer than {self.timeout_s} s (an #include of a FIFO?); "
                f"{TIMEOUT_ENV}=SECONDS raises the limit")


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{name}={raw}: not a positive integer")
    return value


# Set in a worker: where its stderr goes, and how long it was when the
# current task started.
_worker_stderr: int | None = None
_task_stderr_start = 0


def ran_out_of_memory() -> bool:
    """In a worker: did LLVM report an allocation failure during the current
    task?  libclang's crash recovery turns one into a plain "Error parsing
    translation unit", and the allocation that failed (a doubling buffer)
    never shows in VmPeak, so its message is the evidence."""
    if _worker_stderr is None:
        return False
    return OOM_MARK in _read_from(_worker_stderr, _task_stderr_start)


@dataclass
class Outcome:
    """A task's result bytes, or why there are none."""

    payload: bytes | None = None
    failure: str | None = None


@dataclass
class _Worker:
    pid: int
    results: int            # the parent reads frames here
    tasks: int              # and writes task numbers here
    stderr: IO[bytes]
    task: int | None = None
    deadline: float = 0.0
    stderr_start: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    killed: bool = False


def run_isolated(tasks: Sequence[T], work: Callable[[T], bytes], jobs: int, limits: Limits) -> list[Outcome]:
    """`work(task)` for every task, in forked workers under `limits`."""
    outcomes = [Outcome() for _ in tasks]
    queue = deque(range(len(tasks)))
    workers: dict[int, _Worker] = {}
    sel = selectors.DefaultSelector()
    try:
        while queue or any(w.task is not None for w in workers.values()):
            while queue and len(workers) < max(1, jobs):
                w = _fork_worker(tasks, work, limits, [fd for o in workers.values() for fd in (o.results, o.tasks)])
                workers[w.results] = w
                sel.register(w.results, selectors.EVENT_READ)
                _assign(w, queue, limits)
            busy = [w.deadline for w in workers.values() if w.task is not None]
            wait = max(0.0, min(busy) + KILL_GRACE_S - time.monotonic()) if busy else None
            for key, _ in sel.select(wait):
                w = workers[key.fd]
                chunk = os.read(w.results, 1 << 20)
                if not chunk:   # the worker died (or was killed): its task fails
                    sel.unregister(w.results)
                    del workers[w.results]
                    status = _reap(w)
                    if w.task is not None:
                        outcomes[w.task] = Outcome(failure=_why(status, w, limits))
                    w.stderr.close()
                    continue
                w.buffer += chunk
                while w.task is not None and (frame := _frame(w.buffer)) is not None:
                    outcomes[w.task] = Outcome(payload=frame[0])
                    if frame[1]:
                        w.task = None   # it exits; a new worker takes the next task
                    else:
                        _assign(w, queue, limits)
            now = time.monotonic()
            for w in workers.values():
                if w.task is not None and not w.killed and now > w.deadline + KILL_GRACE_S:
                    os.kill(w.pid, signal.SIGKILL)
                    w.killed = True
    finally:
        _stop(list(workers.values()))   # done, or interrupted: leave no worker behind
        sel.close()
    return outcomes


def _assign(w: _Worker, queue: deque[int], limits: Limits) -> None:
    """Give an idle worker its next task, or nothing (it waits to be stopped)."""
    w.task = queue.popleft() if queue else None
    if w.task is not None:
        w.deadline = time.monotonic() + limits.timeout_s
        w.stderr_start = _size(w.stderr.fileno())
        os.write(w.tasks, _TASK.pack(w.task))


def _frame(buffer: bytearray) -> tuple[bytes, bool] | None:
    """One complete frame off the front of `buffer`: (payload, retiring)."""
    if len(buffer) < _HEADER.size:
        return None
    n, retiring = _HEADER.unpack_from(buffer)
    end = _HEADER.size + n
    if len(buffer) < end:
        return None
    payload = bytes(buffer[_HEADER.size:end])
    del buffer[:end]
    return payload, bool(retiring)


def _fork_worker(tasks: Sequence[T], work: Callable[[T], bytes], limits: Limits, siblings: list[int]) -> _Worker:
    """A new worker.  It closes the pipe ends the parent holds for its
    siblings: a copy of a sibling's task pipe would keep that sibling from
    ever seeing EOF, its signal to exit."""
    results_r, results_w = os.pipe()
    tasks_r, tasks_w = os.pipe()
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the worker is reaped or stopped
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the worker; coverage cannot follow it
        for fd in (results_r, tasks_w, *siblings):
            os.close(fd)
        _worker(tasks, work, limits, tasks_r, results_w, err.fileno())
    os.close(results_w)
    os.close(tasks_r)
    return _Worker(pid, results_r, tasks_w, err)


def _worker(tasks: Sequence[T], work: Callable[[T], bytes], limits: Limits,
            inbox: int, outbox: int, err: int) -> None:  # pragma: no cover - runs in the worker
    global _worker_stderr, _task_stderr_start
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        # A process group of its own: whatever it starts (lint's IR compile)
        # is killed with it when it dies or is killed (_reap, _stop).
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        os.dup2(err, 2)   # libclang's crash reports go to the parent, not the terminal
        _worker_stderr = 2
        limit = limits.memory_mib << 20
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        while (raw := _read_exactly(inbox, _TASK.size)) is not None:
            (index,) = _TASK.unpack(raw)
            _task_stderr_start = _size(2)
            signal.alarm(limits.timeout_s)   # SIG_DFL: the kernel ends us, even in open() on a FIFO
            payload = work(tasks[index])
            signal.alarm(0)
            # libclang survived running out of memory; do not trust this process further
            retiring = ran_out_of_memory()
            _write_all(outbox, _HEADER.pack(len(payload), retiring) + payload)
            if retiring:
                break
        code = 0
    except MemoryError:
        code = EXIT_NO_MEMORY
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(code)


def _read_exactly(fd: int, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _why(status: int, w: _Worker, limits: Limits) -> str:
    said = _read_from(w.stderr.fileno(), w.stderr_start)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGALRM or w.killed:
            return limits.timeout_message()
        if OOM_MARK in said or sig == signal.SIGKILL:
            return limits.memory_message()   # LLVM's abort, or the kernel's OOM killer
        return f"libclang crashed ({signal.Signals(sig).name})"
    if os.WEXITSTATUS(status) == EXIT_NO_MEMORY or OOM_MARK in said:
        return limits.memory_message()
    last = said.decode(errors="replace").strip().splitlines()
    return f"the parse failed ({last[-1] if last else f'exit {os.WEXITSTATUS(status)}'})"


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _read_from(fd: int, start: int, limit: int = 4096) -> bytes:
    """At most the last `limit` bytes written to `fd` since offset `start`."""
    try:
        end = os.fstat(fd).st_size
        start = max(start, end - limit)
        return os.pread(fd, end - start, start) if end > start else b""
    except OSError:
        return b""


def _kill_group(pid: int) -> None:
    """SIGKILL a worker's process group (its children: a clang compiling for
    it).  Called before the worker is reaped, so the group's id cannot have
    been reused."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _reap(w: _Worker) -> int:
    _kill_group(w.pid)
    _, status = os.waitpid(w.pid, 0)
    for fd in (w.results, w.tasks):
        with contextlib.suppress(OSError):
            os.close(fd)
    return status


def _stop(workers: list[_Worker]) -> None:
    """Idle workers exit when their task pipe closes; busy ones are killed."""
    for w in workers:
        with contextlib.suppress(OSError):
            os.close(w.tasks)
        if w.task is not None:
            with contextlib.suppress(OSError):
                os.kill(w.pid, signal.SIGKILL)
    for w in workers:
        _kill_group(w.pid)
        with contextlib.suppress(OSError):
            os.waitpid(w.pid, 0)
        with contextlib.suppress(OSError):
            os.close(w.results)
        w.stderr.close()

"""Process-level plumbing for trace: a private bpffs for pins by name,
and SIGINT/SIGTERM/SIGHUP turned into a stop request.

**Pins.** The recorder's maps ask for no pin (docs/instrument.md, "Pins"), but
the traced object's own maps may be pinned by name (``LIBBPF_PIN_BY_NAME``):
libbpf would pin them under /sys/fs/bpf, and *reuse* a compatible map already
pinned there, shared with a production loader.  Trace therefore moves itself into a private mount namespace
(``unshare(CLONE_NEWNS)``, with mount propagation turned off so nothing leaks
back) and mounts a fresh bpffs there as libbpf's ``pin_root_path``.  The
mount, and every pin on it, exist only in trace's namespace and vanish with
the process, whatever ends it (even SIGKILL).  /sys/fs/bpf is never touched.

**Signals.** While tracing, SIGINT, SIGTERM and SIGHUP (a closed terminal or
SSH session: the default would kill trace with its attachments and
temporaries in place) only set a flag and write to a wakeup pipe
(``signal.set_wakeup_fd``) that the event loop watches, so a
signal never raises in the middle of reading the ring or detaching: the loop
sees the request, detaches, reads what is left and prints the summary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Generic, TypeVar

from bpf_sdt.errors import InputError

if TYPE_CHECKING:
    import ctypes

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
BPFFS = b"bpf"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

T = TypeVar("T")


class InBackground(Generic[T]):
    """fn(*args) in a thread (a daemon: a stop signal does not wait for it);
    result() waits and returns its value or re-raises its exception in the
    caller's thread.  For work that overlaps a child process or the kernel's
    verifier (both outside the GIL)."""

    def __init__(self, fn: Callable[..., T], *args: object) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., T], *args: object) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:   # noqa: BLE001 - re-raised by result() in the caller's thread
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self.wait()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._value  # type: ignore[return-value]   # set when fn returned


def _libc() -> ctypes.CDLL:
    # ctypes is imported here, not with the module: trace --live's instrument
    # worker, forked by the command's entry point, imports this module (its
    # stop signals) and needs no ctypes; the import was on the way to the fork.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    return libc


def _fail(what: str) -> InputError:
    import ctypes

    err = ctypes.get_errno()
    return InputError(f"{what}: {os.strerror(err)} (trace loads programs: it needs root)")


@contextlib.contextmanager
def private_bpffs(where: Path) -> Iterator[Path]:
    """A fresh bpffs mounted at ``where`` (an empty directory) in a mount
    namespace of this process's own.  Unmounted on exit; the namespace (and
    with it any mount left by a crash) ends with the process."""
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise _fail("making a private mount namespace for the recorder's pins")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _fail("making mounts private")
    where.mkdir(exist_ok=True)
    if libc.mount(BPFFS, os.fsencode(where), BPFFS, 0, None) != 0:
        raise _fail(f"mounting a bpffs at {where}")
    try:
        yield where
    finally:
        libc.umount2(os.fsencode(where), MNT_DETACH)


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP -> ``requested`` (and the readable ``fd``), while active."""

    # Whether a signal-ended trace may end the process at once after its
    # clean-up (the CLI); in-process callers (tests) set False.
    exit_at_once = True

    def __init__(self) -> None:
        self.requested = False
        self.signal: int | None = None
        self.fd = -1
        self._write_fd = -1
        self._saved: dict[int, object] = {}
        self._saved_wakeup = -1

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        self.signal = signum

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the stop signals back while the block runs, delivering them after.
        A test-run batch that a signal interrupts in the kernel has run an
        unknown number of times (EINTR says nothing), so its events could not
        be matched with a run count: batches run whole, and the stop flag ends
        the loop between them."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def drain(self) -> None:
        """Empties the wakeup pipe (it only says "a signal came")."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 64):
                pass

    def __enter__(self) -> StopSignals:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._on_signal)
        self._saved_wakeup = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._saved_wakeup)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        os.close(self.fd)
        os.close(self._write_fd)

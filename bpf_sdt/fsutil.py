"""File writing that never leaves a half-written output or a stray temporary
behind, and never replaces something that is not a regular file."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from bpf_sdt.errors import InputError

DEFAULT_MODE = 0o644
TEMP_PREFIX = "."
TEMP_TOKEN_BYTES = 6         # 12 hex digits: unique enough beside one output
DEFAULT_NAME_MAX = 255       # NAME_MAX where the filesystem does not say
MAX_OBJECT_SIZE = 1 << 30  # the largest BPF object any command reads (1 GiB; a 1M-site link is 93 MB)
READ_CHUNK = 1 << 24         # what read_regular reads at a time past the size fstat gave
# Signals that end a process by default and can be caught: the temporary is
# removed before the process ends.  SIGKILL cannot be caught (nothing can).
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class NotRegularFileError(OSError):
    """The output path exists and is not a regular file (device, FIFO,
    directory, socket): replacing it would destroy it, so nothing is written."""


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None,
                 durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file beside it.

    - A symlink is written through: its target is replaced, the link stays.
    - An existing path that is not a regular file raises NotRegularFileError.
    - The final ``os.replace`` is atomic, so readers see either the old file or
      the complete new one, and a failure leaves ``path`` untouched.
    - SIGTERM/SIGINT/SIGHUP during the write remove the temporary, then take
      their usual effect.
    - An existing file keeps its permission bits; a new one gets ``mode``
      (default 0644).
    - ``durable``: the data and the rename are on disk when it returns (two
      fsyncs).  False for what nobody needs after a crash: a cache entry
      checked when read (a torn one is a miss), a temporary loaded at once.
    """
    target = resolve_output(Path(path))
    payload = data.encode() if isinstance(data, str) else data
    with _TemporaryBeside(target) as (fd, tmp):
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(payload)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        try:
            old_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            old_mode = None
        os.chmod(tmp, old_mode if old_mode is not None else mode if mode is not None else DEFAULT_MODE)
        os.replace(tmp, target)
    if durable:
        _sync_directory(target.parent)


def resolve_output(path: Path) -> Path:
    """The regular file a write to ``path`` should replace: symlinks followed
    to their final target (which need not exist yet).  Anything else that
    exists there is refused."""
    target = Path(os.path.realpath(path))
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(st.st_mode):
        kind = file_kind(st.st_mode)
        raise NotRegularFileError(errno.EEXIST if kind != "a directory" else errno.EISDIR,
                                  f"{kind}, not a regular file; refusing to replace it", str(path))
    return target


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink that loops")):
        if test(mode):
            return name
    return "not a regular file"


class _Killed(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _TemporaryBeside:
    """A new file next to ``target``, removed on any error or caught signal.

    The name is chosen and remembered before the file is created (O_EXCL), so a
    signal at any point finds either no file or a file it knows to remove."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.with_name(_temporary_name(target))
        self._previous: dict[int, object] = {}

    def __enter__(self) -> tuple[int, Path]:
        self._install()
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except BaseException as e:
            self._abort(e)
            raise
        return fd, self.tmp

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self._restore()
        else:
            self._abort(exc)

    def _abort(self, exc: BaseException) -> None:
        killed = exc if isinstance(exc, _Killed) and exc.signum in self._previous else None
        try:
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)
        finally:
            self._restore()
        if killed is not None:  # our handler (else unwinding_on_termination's, which ends the process)
            # The temporary is gone: now let the signal do what it would have done
            # (SIGTERM ends the process here; SIGINT raises KeyboardInterrupt).
            os.kill(os.getpid(), killed.signum)
            raise InterruptedError(errno.EINTR, f"interrupted by signal {killed.signum}")

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return          # only the main thread may set handlers (its signals arrive there)
        for sig in CLEANUP_SIGNALS:
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, signal.default_int_handler):   # not ignored, not custom
                self._previous[sig] = current
                signal.signal(sig, _raise_killed)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def _temporary_name(target: Path) -> str:
    """A hidden, unique name beside ``target`` that fits the directory's name
    limit whenever ``target``'s own name does (the name is cut, not the suffix)."""
    # os.urandom is what secrets.token_hex reads; importing secrets (hmac, random)
    # cost every command some 4 ms at start-up, as bpf_sdt.elf imports this module.
    suffix = f".{os.urandom(TEMP_TOKEN_BYTES).hex()}.tmp"
    try:
        name_max = os.pathconf(target.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = DEFAULT_NAME_MAX
    room = max(name_max - len(suffix) - len(TEMP_PREFIX), 1)
    stem = os.fsencode(target.name)[:room].decode(errors="ignore") or "out"
    return f"{TEMP_PREFIX}{stem}{suffix}"


# Signals that end a process by default and do not interrupt it as Ctrl-C
# does (SIGINT raises KeyboardInterrupt already, which unwinds).
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def unwinding_on_termination() -> Iterator[None]:
    """Within the block, a termination signal is raised in the main thread
    (as _Killed) instead of ending the process where it stands: every `with`
    unwinds (temporary directories removed, child tools ended), then the
    process dies of the signal as it would have, so a parent sees the same
    status.  Handlers that are not the default (ignored, custom) are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield           # only the main thread may set handlers (its signals arrive there)
        return
    previous = {sig: signal.signal(sig, _raise_killed) for sig in TERMINATION_SIGNALS
                if signal.getsignal(sig) == signal.SIG_DFL}
    try:
        yield
    except _Killed as e:
        if e.signum not in previous:
            raise
        signal.signal(e.signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {e.signum})
        os.kill(os.getpid(), e.signum)
        raise SystemExit(128 + e.signum) from None     # not reached: the signal ends the process
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_killed(signum: int, frame: FrameType | None) -> None:
    raise _Killed(signum)


def _sync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- reading: regular files only ----------------------------------------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def kind(mode: int) -> str:
    """'a FIFO', 'a character device'...: what a non-regular file is."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, what: str = "file") -> tuple[int, os.stat_result]:
    """A read-only descriptor of a regular file and its fstat, else InputError.

    Opened non-blocking (a FIFO's open returns at once instead of waiting for
    a writer) and checked with fstat on the open descriptor, so a path
    swapped between a check and the open cannot slip a device in."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        raise InputError(f"{path}: {_not_regular(path) or e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: {kind(st.st_mode)}, not a {what}")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else InputError
    (opened as :func:`open_regular` does)."""
    fd, st = open_regular(path, what)
    try:
        if st.st_size > limit:
            raise InputError(f"{path}: {st.st_size} bytes, larger than any {what} ({limit})")
        # The size fstat gives (and a byte more, to see the end) in one read:
        # the bytes are allocated once and returned as they are, not read in
        # chunks joined into a second copy (a 93 MB object cost twice its size).
        first = os.read(fd, st.st_size + 1)
        chunks, total = [first], len(first)
        while total <= limit:   # bounded even if the file grows while we read
            chunk = os.read(fd, min(READ_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(f"{path}: larger than any {what} ({limit} bytes)")
        return first if len(chunks) == 1 else b"".join(chunks)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _not_regular(path: str) -> str | None:
    """Why open() failed, when it is the kind of file (a socket: ENXIO)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else f"{kind(mode)}, not a regular file"

"""Reading the files `extract`/`lint` are given or find: sources, headers,
compile_commands.json, cache entries.

Only regular files are read.  A FIFO blocks `open` until a writer appears,
`/dev/zero` never ends, a directory is not text: each of those as an input is
one clear error instead of a hang or a MemoryError.  (bpf_sdt.elf has the same
guard for objects, but importing it costs a warm `lint` a third of its time.)
"""

from __future__ import annotations

import os
import stat
from functools import cache

from bpf_sdt.errors import InputError

# No BPF source or header comes near this; vmlinux.h is about 3 MB.
MAX_SOURCE_BYTES = 64 << 20
# Chromium-sized compile databases are a few hundred MB.
MAX_COMPDB_BYTES = 1 << 30

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def kind(mode: int) -> str:
    """'a FIFO', 'a character device'...: what a non-regular file is."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def is_hazard(st: os.stat_result) -> bool:
    """Something a reader would block on or never finish: not a regular
    file, not a directory (its read fails at once) and not /dev/null (which
    ends at once; `#include "/dev/null"` is an old idiom for nothing)."""
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return False
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == _null_device())


@cache
def _null_device() -> int | None:
    try:
        st = os.stat(os.devnull)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISCHR(st.st_mode) else None


def read_regular(path: str, limit: int = MAX_SOURCE_BYTES, what: str = "source file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else InputError.

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
        if st.st_size > limit:
            raise InputError(f"{path}: {st.st_size} bytes, larger than any {what} ({limit})")
        chunks, total = [], 0
        while total <= limit:   # bounded even if the file grows while we read
            chunk = os.read(fd, min(1 << 24, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InputError(f"{path}: larger than any {what} ({limit} bytes)")
        return b"".join(chunks)
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

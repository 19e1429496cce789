"""Where bpf-sdt keeps what it can build again, and whom it trusts there.

Trace's instrumented objects and learned tags (trace/instcache.py) and
instrument's compiled recorders (instrument/recorder_cache.py) live under one
root: ``$BPF_SDT_CACHE`` (``off`` disables both), else
``$XDG_CACHE_HOME/bpf-sdt``, else ``~/.cache/bpf-sdt``; each in a directory of
its own.  What is read back decides what bpf-sdt loads and swaps, so it is
trusted like bpf-sdt's own files: a directory or file that is not this user's,
or that others may write to, is not read (directories are made mode 0700,
entries 0600).  (lint's result cache predates this root and keeps its own
variable, BPF_SDT_CACHE_DIR: docs/lint.md.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

CACHE_ENV = "BPF_SDT_CACHE"
CACHE_OFF = "off"
DIR_MODE = 0o700
ENTRY_MODE = 0o600
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def cache_dir(name: str) -> Path | None:
    """The directory of one cache, or None when caching is off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == CACHE_OFF:
        return None
    if chosen:
        return Path(chosen) / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bpf-sdt" / name


def is_own(path: Path) -> bool:
    """Is ``path`` this user's, and writable by nobody else?  (OSError if it is missing.)"""
    return _own(os.stat(path))


def read_own(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes that is this user's
    alone, in a directory that is too; None otherwise (a link is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        try:
            if not (stat.S_ISREG(st.st_mode) and _own(st) and st.st_size <= limit and is_own(path.parent)):
                return None
        except OSError:
            return None
        return f.read(limit + 1)[:limit]


def _own(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & OTHERS_WRITE

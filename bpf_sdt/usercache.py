"""Where bpf-sdt keeps what it can build again, and whom it trusts there.

Trace's instrumented objects and learned tags (trace/instcache.py) and
instrument's compiled recorders (instrument/recorder_cache.py) live under one
root: ``$BPF_SDT_CACHE`` (``off`` disables both), else
``$XDG_CACHE_HOME/bpf-sdt``, else ``~/.cache/bpf-sdt``; each in a directory of
its own.  What is read back decides what bpf-sdt loads and swaps, so it is
trusted like bpf-sdt's own files: a directory or file that is not this user's,
or that others may write to, is not read (directories are made mode 0700,
entries 0600), and a root below a directory that others could change is not
used at all (:func:`cache_dir`).  (lint's result cache predates this root and keeps its own
variable, BPF_SDT_CACHE_DIR: docs/lint.md.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

CACHE_ENV = "BPF_SDT_CACHE"
CACHE_OFF = "off"
DIR_MODE = 0o700
ENTRY_MODE = 0o600
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def cache_dir(name: str) -> Path | None:
    """The directory of one cache, or None when caching is off or the root
    is somewhere others could swap it (:func:`_held_by_us`): the root with
    its links resolved, so that later uses follow none."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == CACHE_OFF:
        return None
    if chosen:
        root = Path(chosen)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "bpf-sdt"
    try:
        root = Path(os.path.abspath(root))        # a relative one's parents reach the real root too
        return Path(os.path.realpath(root)) / name if _held_by_us(root) else None
    except OSError:                               # no working directory (removed) for a relative root
        return None


def make_dirs(path: Path) -> None:
    """``path`` and its missing parents, each made mode 0700 (Path.mkdir
    gives parents the umask's mode, group-writable under umask 002); then
    OSError unless no one else can swap any of them.  A parent someone
    else made first, while we made the rest, is found here (its owner could
    move ours away), and the cache is not written."""
    missing = []
    for d in [path, *path.parents]:
        if os.path.lexists(d):
            break
        missing.append(d)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):      # made meanwhile: judged below with the rest
            os.mkdir(d, DIR_MODE)
    if not (_held_by_us(path, missing_ok=False) and is_own(path)):
        raise PermissionError(errno.EPERM, "cache directory others can change", str(path))


def _held_by_us(path: Path, missing_ok: bool = True) -> bool:
    """Can only this user and root rename or replace ``path`` and the
    directories above it, both as named and with its links resolved?
    Without this, an owner of a directory above a shared cache
    (BPF_SDT_CACHE=/tmp/shared, traced as root) could move the checked
    directory away between the check and the write, or repoint a link of
    theirs on the way, and send the write anywhere.  A directory not there
    yet passes only with ``missing_ok``: make_dirs, once it has made them
    all, counts one that vanished as someone else's (renamed away during the
    check, it could be renamed back after)."""
    chains = (path, Path(os.path.realpath(path)))
    return all(_unchangeable_by_others(d, missing_ok) for chain in chains for d in [chain, *chain.parents])


def _unchangeable_by_others(d: Path, missing_ok: bool) -> bool:
    """Is ``d`` (not followed) this user's or root's, and writable by no one
    else?  Sticky counts as unwritable (in /tmp others cannot rename what is
    ours), and so does group write for a user private group."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return missing_ok           # made later by make_dirs, which judges it then
    except OSError:
        return False
    if st.st_uid not in (0, os.geteuid()):
        return False                # a link too: its owner could repoint it
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & OTHERS_WRITE or st.st_mode & stat.S_ISVTX:
        return True                 # a link's target is judged on the resolved chain
    return not st.st_mode & stat.S_IWOTH and _private_group(st.st_gid)


def _private_group(gid: int) -> bool:
    """Is ``gid`` a user private group: this user's primary group, named
    after the user, with no other member?  Debian, Ubuntu and Fedora give
    each user one, with umask 002, so ~/.cache is often 0775; its group
    write lets no one else in.  (An account given this group as its own
    primary group is not seen: that is not how such groups are made.)"""
    # Imported only here: most paths never have a group-writable directory.
    import grp
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    return gid == os.getegid() and group.gr_name == user and set(group.gr_mem) <= {user}


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

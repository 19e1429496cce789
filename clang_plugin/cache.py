"""The lint cache: each file's facts and per-file findings as JSON
(results.py) under $BPF_SDT_CACHE_DIR (default ~/.cache/bpf-sdt/lint), keyed
by the file's content, its flags, the libclang and bpf-sdt versions, the IR
compile (compiler and flags) and the cache format.  A hit is only used if
every file the parse included still has the size and mtime it had.
"""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bpf_sdt import __version__
from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular

from .results import FORMAT, FileResult, decode, encode

if TYPE_CHECKING:   # plan.py imports this module
    from .plan import IrTask

CACHE_ENV = "BPF_SDT_CACHE_DIR"
# A cache entry is a few KB; anything near this is not one of ours.
MAX_CACHE_ENTRY_BYTES = 16 << 20
# Entries live in subdirectories named by their key's first characters.
FANOUT_CHARS = 2
# What llvmlite_identity says when llvmlite is not installed.
NOT_INSTALLED = "none"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bpf-sdt" / "lint"


def ir_identity(task: IrTask | None) -> str:
    """The IR rules' part of a cache key: none, or the compiler (path, size,
    mtime, llvmlite's version) and its flags."""
    if task is None:
        return "|no-ir"
    return f"|ir:{file_identity(task.compiler)}:{llvmlite_identity()}:" + "\0".join(task.flags)


def file_identity(path: str) -> str:
    """Path, size and mtime: what changes when a compiler or package is upgraded."""
    try:
        st = os.stat(path)
    except OSError:
        return path
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


_llvmlite: list[str] = []


def llvmlite_identity() -> str:
    """Identifies the installed llvmlite without importing it (nor
    importlib.metadata: a warm lint must stay fast): its package file's
    identity, which an upgrade changes.  NOT_INSTALLED when it is not installed."""
    if not _llvmlite:
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec("llvmlite")
        origin = spec.origin if spec is not None else None
        _llvmlite.append(file_identity(origin) if origin else NOT_INSTALLED)
    return _llvmlite[0]


def cache_key(path: str, flags: list[str], data: bytes, version: str) -> str:
    h = hashlib.sha256()
    for part in (FORMAT, version, __version__, path, "\0".join(flags)):
        h.update(os.fsencode(part) + b"\0")
    h.update(data)
    return h.hexdigest()


def cache_load(key: str, directory: str, path: str | None = None) -> FileResult | None:
    """The entry for `key`, or None: missing, not a regular file, not ours in
    shape (see results.decode), or stale (an include changed)."""
    try:
        data = read_regular(os.path.join(directory, key[:FANOUT_CHARS], key), MAX_CACHE_ENTRY_BYTES,
                            "cache entry")
    except InputError:
        return None
    result = decode(data, key, path)
    if result is None or result.facts is None:
        return None
    for inc, mtime, size in result.facts.includes:
        try:
            st = os.stat(inc)
        except (OSError, ValueError):
            return None
        if st.st_mtime_ns != mtime or st.st_size != size:
            return None
    return result


def cache_store(key: str, result: FileResult) -> None:
    if result.facts is None:   # unusable files are re-parsed: the cause may be elsewhere
        return
    from bpf_sdt.fsutil import write_atomic

    d = cache_dir() / key[:FANOUT_CHARS]
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(d / key, encode(result, key))
    except OSError:
        pass   # a cache that cannot be written is only slower


def load_cached(files: list[str], flags: dict[str, list[str]], sources: dict[str, bytes], version: str,
                ir: dict[str, IrTask | None]) -> tuple[dict[str, FileResult], dict[str, str]]:
    """Cache hits by file, and every file's cache key.  The cyclic collector is
    paused meanwhile: decoding allocates tens of thousands of small objects,
    which set it off dozens of times (each pass also walking every imported
    module), though none of them can be garbage yet."""
    hits, keys = {}, {}
    directory = str(cache_dir())
    gc.disable()
    try:
        for f in files:
            keys[f] = cache_key(os.path.realpath(f), flags[f], sources[f], version + ir_identity(ir.get(f)))
            hit = cache_load(keys[f], directory, f)
            if hit is not None:
                hits[f] = hit
    finally:
        gc.enable()
    return hits, keys

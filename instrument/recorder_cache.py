"""A cache of compiled recorders, so that instrumenting (and so tracing) again
runs no clang when a recorder of the same source was built before, and no
Jinja2 when a recorder of the same template and parameters was rendered before.

**Key.** A SHA-256 over the rendered recorder source with the object's
identity (the only part of the source that names the object: its counters'
struct, docs/instrument.md "Identity") replaced by a token of the same length,
the clang that compiles it (its path, the resolved binary's path, size and
modification time, and its ``--version`` output) and the flags.  So every object
whose probes have the same arities and options shares one entry, and a new
template, clang or flag is a new key.

**Entry.** One file ``<key>.entry``: a JSON header line, then the object clang
wrote.  The header names the three strings that differ between two builds of one
key, each with the number of times it occurs in the object: the identity, the
build directory (clang runs in it, so its path is the only one the object
holds: the source's name in BTF and DWARF, DWARF's compilation directory) and
the MD5 of the source (DWARF 5 line tables carry it).  A hit puts this build's
strings in their place, each of the same length, which gives exactly the bytes
clang would have written (tests/test_recorder.py compares); a build directory of
another length is a miss.

**Rendered sources.** Rendering the source (importing Jinja2 and compiling
the template: some 45 ms of CPU under load) would be the whole cost of a hit,
so the source is cached too, keyed without rendering: a SHA-256 over what
rendering depends on (observers.py's ``render_inputs``: the templates' bytes,
hashed; the Python whose methods and properties the template calls on its
variables (observers.py, argtype.py, recorder_abi.py), hashed; the Jinja2 that
renders it, by path, size and modification time; the environment's options;
the template's variables, which carry the probes' argument types, the ring
size and the plan's options) with the identity replaced by the same token.
One file ``<key>.source``, JSON: ``{"format": 2, "parts": [...], "sha256":
H}``, the rendered source split at the identity's occurrences, so this
build's source is ``identity.join(parts)`` (and then its object is looked up
by the key above, through the same checks), and H the SHA-256 of the parts'
JSON, so that an entry damaged since it was written is a miss, not a source
clang refuses at every build.  It is
written only once a second render, for another identity of the same length,
was seen to equal that join (the template uses the identity as text only):
a template that did otherwise leaves no entry.  An entry of any other shape
(not that JSON, no identity in it, another digest, of more than 1 MB) is a miss.

**Trust.** An entry is written whole or not at all (``fsutil.write_atomic``,
not fsynced: one torn by a crash fails the checks below and is a miss), read
only when it is this user's and nobody else may write it, and checked before
use: the header's counts must match, and the result must parse as a BPF ELF
object carrying the expected functions, maps and identity.  Anything else is
a miss: clang builds the recorder and the entry is written again.

**Deferred writes.** A process that has better things to do first (trace's
instrument worker, whose parent waits for the instrumented object) calls
:func:`defer_writes`: a new entry, and the ``--version`` of a clang not
asked before, are then kept for :func:`write_deferred`, which it calls once
its answer is out; the build itself is the same.

The directory is ``$BPF_SDT_CACHE/recorders`` (``BPF_SDT_CACHE=off`` disables
it, as for trace's cache of instrumented objects), else
``$XDG_CACHE_HOME/bpf-sdt/recorders``, else ``~/.cache/bpf-sdt/recorders``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bpf_sdt import usercache
from bpf_sdt.btf import BtfKind
from bpf_sdt.elf import BpfObject
from bpf_sdt.errors import BpfSdtError
from bpf_sdt.fsutil import write_atomic
from bpf_sdt.recorder_abi import RECORDER_IDENTITY_PREFIX

SUBDIR = "recorders"
ENTRY_SUFFIX = ".entry"
SOURCE_SUFFIX = ".source"
SOURCE_FORMAT = 2                       # the source entry's layout: a new one is a new key
MAX_SOURCE = 1 << 20                    # a rendered recorder is some 10-50 KB: more is not an entry
CHECK_IDENTITY_CHARS = "fe"             # the second render's identity, of another string than this build's
VERSION_SUFFIX = ".clang-version"
ENTRY_FORMAT = 1                        # the header's layout: a new one is a new key
MAX_ENTRY = 16 << 20                    # a recorder object is some 10-100 KB: more is not an entry
MAX_HEADER = 4096
VERSION_TIMEOUT_S = 10                  # a clang that does not answer --version: no cache, not a hang
IDENTITY_TOKEN_CHAR = "0"               # the key's stand-in for an identity, of its length

# The writes kept for write_deferred() (a list) once defer_writes() was called in this process.
_deferred: list[Callable[[], None]] | None = None


@dataclass(frozen=True)
class Build:
    """One recorder build: what instrument asks for."""

    source: str                         # the rendered C
    identity: str                       # the hex digest named in the source
    workdir: Path                       # where clang runs and the source is
    clang: str
    cflags: tuple[str, ...]

    @property
    def strings(self) -> dict[str, bytes]:
        """The bytes that differ between two builds of one key, by name."""
        return {"identity": self.identity.encode(), "workdir": os.fsencode(self.workdir),
                "md5": hashlib.md5(self.source.encode()).digest()}


def cache_dir() -> Path | None:
    return usercache.cache_dir(SUBDIR)


def fetch(build: Build, expected_symbols: Iterable[str]) -> bytes | None:
    """The object clang would write for ``build``, from the cache; None on a miss."""
    where = cache_dir()
    if where is None:
        return None
    try:
        entry = where / (_key(build, where) + ENTRY_SUFFIX)
        raw = usercache.read_own(entry, MAX_ENTRY)
        if raw is None:
            return None
        header, _, data = raw.partition(b"\n")
        if len(header) > MAX_HEADER:
            return None
        relocated = _relocated(json.loads(header), data, build.strings)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, subprocess.SubprocessError):
        return None
    if relocated is None or not _is_recorder(relocated, build.identity, expected_symbols):
        return None
    return relocated


def fetch_source(inputs: str, identity: str) -> str | None:
    """The source that rendering ``inputs`` (which name ``identity``) gives,
    from the cache; None on a miss."""
    where = cache_dir()
    if where is None:
        return None
    raw = usercache.read_own(where / (_source_key(inputs, identity) + SOURCE_SUFFIX), MAX_SOURCE)
    if raw is None:
        return None
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    parts = entry.get("parts") if isinstance(entry, dict) and entry.get("format") == SOURCE_FORMAT else None
    if not (isinstance(parts, list) and len(parts) > 1 and all(isinstance(p, str) for p in parts)):
        return None                     # not an entry this module wrote, or one without the identity
    if entry.get("sha256") != _parts_digest(parts):
        return None                     # damaged since it was written
    return identity.join(parts)


def _parts_digest(parts: list[str]) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def has_sources() -> bool:
    """Does the cache hold a rendered source (of this user's, by name only)?
    No when caching is off: then every recorder is rendered."""
    where = cache_dir()
    if where is None:
        return False
    try:
        with os.scandir(where) as entries:
            return any(e.name.endswith(SOURCE_SUFFIX) for e in entries)
    except OSError:
        return False


def store_source(inputs: str, identity: str, source: str, render: Callable[[str], str]) -> None:
    """Keeps ``source`` (the render of ``inputs``) for the next render of the
    same key.  ``render(other)`` renders the same parameters for another
    identity: the entry is written only if that equals the source with the
    identity replaced, the join a hit makes."""
    _write_soon(lambda: _store_source_now(inputs, identity, source, render))


def _store_source_now(inputs: str, identity: str, source: str, render: Callable[[str], str]) -> None:
    parts = source.split(identity)
    other = _check_identity(identity)
    if len(parts) < 2 or render(other) != other.join(parts):
        return                          # the identity is not plain text in the source: no entry can stand for it
    where = cache_dir()
    if where is None:
        return
    entry = json.dumps({"format": SOURCE_FORMAT, "parts": parts, "sha256": _parts_digest(parts)}).encode()
    _write_entry(where, _source_key(inputs, identity) + SOURCE_SUFFIX, entry)


def _check_identity(identity: str) -> str:
    """An identity of the same length that differs from ``identity`` at every character."""
    return "".join(CHECK_IDENTITY_CHARS[c == CHECK_IDENTITY_CHARS[0]] for c in identity)


def _source_key(inputs: str, identity: str) -> str:
    neutral = inputs.replace(identity, IDENTITY_TOKEN_CHAR * len(identity))
    return hashlib.sha256(json.dumps({"format": SOURCE_FORMAT, "inputs": neutral}).encode()).hexdigest()


def defer_writes() -> None:
    """From now on this process keeps new entries, and the ``--version``
    query their keys need, for :func:`write_deferred`: a clang run of some
    30 ms that would otherwise compete with the build on the caller's path."""
    global _deferred
    if _deferred is None:
        _deferred = []


def write_deferred() -> None:
    """Writes the entries kept since :func:`defer_writes` (asking clang's
    version first where it is not remembered), and writes at once again."""
    global _deferred
    kept, _deferred = _deferred or [], None
    for write in kept:
        write()


def store(build: Build, data: bytes) -> None:
    """Keeps clang's object for the next build of the same key; a cache that
    cannot be written is no error."""
    _write_soon(lambda: _store_now(build, data))


def _write_soon(write: Callable[[], None]) -> None:
    """Runs ``write`` now, or keeps it for :func:`write_deferred`."""
    if _deferred is not None:
        _deferred.append(write)
        return
    write()


def _store_now(build: Build, data: bytes) -> None:
    where = cache_dir()
    if where is None:
        return
    strings = build.strings
    header = {"format": ENTRY_FORMAT,
              "strings": {name: [value.hex(), data.count(value)] for name, value in strings.items()}}
    try:
        name = _key(build, where) + ENTRY_SUFFIX
    except (OSError, subprocess.SubprocessError):
        return
    _write_entry(where, name, json.dumps(header, sort_keys=True).encode() + b"\n" + data)


def _write_entry(where: Path, name: str, content: bytes) -> None:
    """Writes one entry whole, mode 0600, in a directory of this user's alone."""
    try:
        usercache.make_dirs(where)
        if not usercache.is_own(where):
            return
        entry = where / name
        # Not durable: an entry torn by a crash fails the checks of its fetch, a miss.
        write_atomic(entry, content, mode=usercache.ENTRY_MODE, durable=False)
        os.chmod(entry, usercache.ENTRY_MODE)     # write_atomic keeps a replaced file's mode: one others could write
    except (OSError, BpfSdtError):
        return


# --- the key ------------------------------------------------------------------------------


def _key(build: Build, where: Path) -> str:
    neutral = build.source.replace(build.identity, IDENTITY_TOKEN_CHAR * len(build.identity))
    digest = hashlib.sha256(json.dumps({"format": ENTRY_FORMAT, "source": neutral,
                                        "clang": _clang_identity(build.clang, where),
                                        "cflags": list(build.cflags)}, sort_keys=True).encode())
    return digest.hexdigest()


def _clang_identity(clang: str, where: Path) -> list[object]:
    """Path, resolved binary, size, mtime and ``--version`` output.  The version
    is asked once per binary (clang takes some 80 ms to answer) and kept beside
    the entries, under a name made of the other four."""
    ident, memo = _version_memo(clang, where)
    version = usercache.read_own(memo, MAX_ENTRY)
    if version is None:
        res = subprocess.run([clang, "--version"], capture_output=True, check=False, timeout=VERSION_TIMEOUT_S)
        version = res.stdout
        if res.returncode == 0:
            _remember_version(memo, version)
    return [*ident, version.decode("utf-8", "replace")]


def _version_memo(clang: str, where: Path) -> tuple[list[object], Path]:
    real = os.path.realpath(clang)
    st = os.stat(real)
    ident: list[object] = [clang, real, st.st_size, st.st_mtime_ns]
    return ident, where / (hashlib.sha256(json.dumps(ident).encode()).hexdigest() + VERSION_SUFFIX)


def _remember_version(memo: Path, version: bytes) -> None:
    try:
        usercache.make_dirs(memo.parent)
        # Not durable: a memo torn by a crash only makes keys no entry has yet.
        write_atomic(memo, version, mode=usercache.ENTRY_MODE, durable=False)
    except (OSError, BpfSdtError):
        pass


class ClangVersion:
    """Whether this clang's ``--version`` is remembered (``known``: then an
    entry may be this clang's); if not, it is asked in the background, while
    the recorder compiles, and remembered by :meth:`result`, so that the
    entry the build leaves is keyed without a second clang run on the way
    (with writes deferred, not asked here: when the entry is written)."""

    def __init__(self, clang: str) -> None:
        self.known = False
        self._memo: Path | None = None
        self._query: subprocess.Popen[bytes] | None = None
        where = cache_dir()
        if where is None:
            return
        try:
            _, self._memo = _version_memo(clang, where)
            self.known = usercache.read_own(self._memo, MAX_ENTRY) is not None
            # Deferred writes: the entry's key asks the version when it is written.
            if not self.known and _deferred is None:
                self._query = subprocess.Popen([clang, "--version"], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except (OSError, ValueError):
            self._query = None          # no cache for this clang: the build goes on without one

    def result(self) -> None:
        query, self._query = self._query, None
        if query is None or self._memo is None:
            return
        try:
            version, _ = query.communicate(timeout=VERSION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            query.kill()
            query.communicate()
            return
        if query.returncode == 0:
            _remember_version(self._memo, version)

    def close(self) -> None:
        if self._query is not None:
            self._query.kill()
            self._query.communicate()
            self._query = None


# --- reading an entry ---------------------------------------------------------------------


def _relocated(header: dict[str, object], data: bytes, wanted: dict[str, bytes]) -> bytes | None:
    """``data`` with the header's strings replaced by ``wanted``'s, or None when
    they do not fit: another length, or counts that do not match the bytes."""
    if header.get("format") != ENTRY_FORMAT:
        return None
    strings = header["strings"]
    if not isinstance(strings, dict) or set(strings) != set(wanted):
        return None
    for name, new in wanted.items():
        old_hex, count = strings[name]
        old = bytes.fromhex(old_hex)
        if not isinstance(count, int) or len(old) != len(new) or data.count(old) != count:
            return None
        if old != new:
            if data.count(new):
                return None             # this build's string is in the object already: no safe place
            data = data.replace(old, new)
    return data


def _is_recorder(data: bytes, identity: str, expected_symbols: Iterable[str]) -> bool:
    """Does ``data`` parse as a BPF object with these symbols and the counters'
    struct named after ``identity``?"""
    try:
        obj = BpfObject("(cached recorder)", data)
        names = {s.name for s in obj.symbols}
        btf = obj.btf
    except (BpfSdtError, ValueError, IndexError, KeyError):
        return False
    return (btf is not None and set(expected_symbols) <= names
            and bool(btf.find(RECORDER_IDENTITY_PREFIX + identity, BtfKind.STRUCT)))

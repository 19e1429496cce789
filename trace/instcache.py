"""A cache of instrumented objects for `trace` (test runs, attaching and
`--live`), so that tracing the same object again costs only the load (the
verifier), not instrument's analysis, the recorder's compilation and the
site table's parse too; and of the kernel tag OBJ's program got when trace
last loaded it for the identity check on this kernel and libbpf, so that a
match needs no second verification.

An entry is keyed by everything the instrumented object depends on: OBJ's
bytes, the job (probes, programs, ring size, the recorder's options as
given), the bpf-sdt package's own source files (instrument's analysis and
the recorder's template), and the clang that builds the recorder (its
path, size and modification time).  Anything else changing gives a new
key; an entry is never updated, only written whole (atomically, by rename)
or not at all.  It holds the instrumented object, the sites instrument
instrumented and the site table trace decodes events with, as JSON: each
named tuple by its fields and its class name, decoded only into bpf-sdt's
own named tuples (their shape follows the sources, which are part of the
key).  An entry of any other shape is a miss, never an error and
never code run.  The instrumented object is loaded into the kernel, so the
cache is trusted like bpf-sdt's own files: a cache directory or entry that
is not the user's own, or that others may write to, is not read (it is
created mode 0700).

The directory is ``$BPF_SDT_CACHE/instrumented`` (``BPF_SDT_CACHE=off``
disables the cache; instrument's recorder cache is ``recorders`` beside it),
else ``$XDG_CACHE_HOME/bpf-sdt/instrumented``, else
``~/.cache/bpf-sdt/instrumented``.  It keeps the MAX_ENTRIES entries used
last.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import stat
import tempfile
import time

# hashlib's own BLAKE2 (hashlib.blake2b is this function; hashlib never takes it from
# OpenSSL), imported without hashlib loading OpenSSL: 2 ms of a cached trace's start.
from _blake2 import blake2b
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import bpf_sdt
from bpf_sdt import core_btf, usercache
from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import MAX_OBJECT_SIZE, read_regular
from bpf_sdt.toolchain import find_clang

if TYPE_CHECKING:
    from collections.abc import Callable
    from subprocess import Popen

    from .sites import Site

INSTRUMENTED_DIR = "instrumented"
MAX_ENTRIES = 64                # the least recently used beyond these are removed when one is stored
KEY_HEX = 64                    # an entry's name: a 32-byte BLAKE2b digest in hex
KEY_BYTES = KEY_HEX // 2
STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 24 * 3600
SOURCE_SUFFIXES = (".py", ".j2", ".c", ".h")
PYCACHE = "__pycache__"
OBJECT_NAME, SITES_NAME = "instrumented.bpf.o", "sites.json"
OWN_MODULES = "bpf_sdt."              # the only classes an entry may name
CLASS_KEY, FIELDS_KEY, BYTES_KEY = "class", "fields", "hex"
MAX_TAG_FILE = 4096              # a tag file is a short JSON list
# Whose sources the output depends on: instrument links with postlink's linker,
# the recorder includes the headers codegen renders.
PACKAGES = ("bpf_sdt", "bpf_sdt.instrument", "bpf_sdt.trace", "bpf_sdt.postlink", "bpf_sdt.codegen",
            "bpf_sdt.headers")


class Job(NamedTuple):
    """An instrumented object trace asks for: the input and every option the
    output depends on besides bpf-sdt's sources and clang."""

    input: Path
    probes: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()                  # () is every program
    ringbuf_size: int = 0
    recorder: tuple[object, ...] = ()               # the recorder's options, as trace was given them


class Instrumented(NamedTuple):
    """What trace needs of an instrumented object besides its bytes."""

    shown: list[tuple[int, str]]                    # (site id, probe) of every instrumented site
    sites: list[Site]                               # site id -> Site: the table events are decoded with


def cache_dir() -> Path | None:
    return usercache.cache_dir(INSTRUMENTED_DIR)     # beside the recorder cache's directory (instrument)


@functools.cache
def _package_digest() -> str:
    """The bpf-sdt sources instrument's output depends on (all of them: safe
    against a change anywhere in the pipeline), by path, size and
    modification time, as Python's own bytecode cache tells a changed
    source: a stat per file instead of reading and hashing each (a tenth
    of a cached trace's time)."""
    digest = _digest(bpf_sdt.__version__.encode())
    for root in _package_dirs():
        for top, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != PYCACHE)
            for name in sorted(files):
                if name.endswith(SOURCE_SUFFIXES):
                    st = os.stat(os.path.join(top, name))
                    digest.update(f"{top}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _package_dirs() -> list[Path]:
    """The directories of bpf-sdt's packages: bpf_sdt.instrument and
    bpf_sdt.trace live outside bpf_sdt/ in a source tree (package-dir).
    Found by their specs, not imported: importing instrument costs more
    than a whole cached trace."""
    dirs = set()
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            dirs.add(Path(location).resolve())
    return sorted(dirs)


def _digest(data: bytes) -> blake2b:
    """The hash of the cache's keys (BLAKE2b: as fast as OpenSSL's SHA-256
    here, about 1 GB/s, and it needs no OpenSSL)."""
    return blake2b(data, digest_size=KEY_BYTES)


def key(job: Job) -> str:
    clang = find_clang()
    stat = os.stat(clang)
    # Read as load_object reads it: a missing, special or huge input is one
    # line (InputError) here, where it is read first, not a traceback or a hang.
    digest = _digest(read_regular(str(job.input), MAX_OBJECT_SIZE, "BPF object"))
    digest.update(json.dumps({"probes": job.probes, "programs": job.programs, "ringbuf": job.ringbuf_size,
                              "recorder": job.recorder,
                              "clang": [clang, stat.st_size, stat.st_mtime_ns], "sources": _package_digest()},
                             sort_keys=True).encode())
    return digest.hexdigest()


class Entry:
    """A cache hit whose object is at the output already and whose site table
    is decoded only by :meth:`decode`: trace loads the copy meanwhile, and the
    site table's modules are imported beside the verifier (docs/trace.md,
    "Start-up").  A table that does not decode makes the entry a miss after all."""

    def __init__(self, path: Path, shown: list[tuple[int, str]], sites: object) -> None:
        self.path = path
        self.shown = shown                  # (site id, probe) of every instrumented site
        self._sites = sites                 # the site table as JSON (a list, if the entry is sound), not decoded
        self.core_btf, self.core_btf_known = core_btf_of(path)

    def decode(self) -> Instrumented | None:
        """The sites and their table; None when the table is not one this cache wrote."""
        try:
            found = Instrumented(self.shown, [_site(s) for s in self._sites])  # type: ignore[attr-defined]
        except (ValueError, TypeError, KeyError, AttributeError, ImportError):
            # Removed, so that the next trace stores a sound one (store cannot rename onto it).
            shutil.rmtree(self.path, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):          # pruned meanwhile by another trace: still a hit
            os.utime(self.path)                     # recently used: kept by _prune
        return found


def fetch_entry(job: Job, output: Path) -> Entry | None:
    """Copies a cached instrumented object to ``output``; the entry, its
    site table still to decode (:meth:`Entry.decode`), or None."""
    where = cache_dir()
    if where is None:
        return None
    entry = where / key(job)
    try:
        if not (usercache.is_own(where) and usercache.is_own(entry)):
            return None
        cached = json.loads((entry / SITES_NAME).read_text())
        shown = [(int(site_id), str(probe)) for site_id, probe in cached["shown"]]
        sites = cached["sites"]
        shutil.copyfile(entry / OBJECT_NAME, output)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return Entry(entry, shown, sites)


def store(job: Job, output: Path, instrumented: Instrumented) -> Path | None:
    """Keeps ``output`` for next time; the entry, or None (a cache that
    cannot be written is no error)."""
    where = cache_dir()
    if where is None:
        return None
    try:
        sites = json.dumps({"shown": instrumented.shown, "sites": [_encoded(s) for s in instrumented.sites]})
    except TypeError:                   # a site table this cache cannot keep: traced without the cache
        return None
    try:
        usercache.make_dirs(where)      # ours alone, and no one else can move it
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=where))
        shutil.copyfile(output, staging / OBJECT_NAME)
        (staging / SITES_NAME).write_text(sites)
        entry = where / key(job)
        try:
            staging.rename(entry)
        except OSError:                 # another trace stored the same entry first
            shutil.rmtree(staging, ignore_errors=True)
        _prune(where)
    except OSError:
        return None
    return entry


def _prune(where: Path) -> None:
    """Removes the least recently used entries beyond MAX_ENTRIES (and
    staging directories of traces that died storing, a day old, here and in
    the entries), so that the cache does not grow with every object and
    bpf-sdt version traced."""
    entries, now = [], time.time()
    for path in where.iterdir():
        with contextlib.suppress(OSError):
            if len(path.name) == KEY_HEX and path.is_dir():
                entries.append((path.stat().st_mtime, path))
            elif path.name.startswith(STAGING_PREFIX) and now - path.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)
    ranked = sorted(entries, reverse=True)
    for _, path in ranked[MAX_ENTRIES:]:
        shutil.rmtree(path, ignore_errors=True)
    for _, path in ranked[:MAX_ENTRIES]:
        _remove_stale_staging(path)         # a cut-down BTF's, left by a trace killed while bpftool wrote


def _encoded(value: object) -> object:
    """A site-table value as JSON: a named tuple as its class and fields,
    other tuples as lists, bytes as hex; ints, strings, bools and
    None as they are."""
    fields = _record_fields(value)
    if fields is not None:
        cls = type(value)
        return {CLASS_KEY: f"{cls.__module__}:{cls.__qualname__}",
                FIELDS_KEY: {name: _encoded(getattr(value, name)) for name in fields}}
    if isinstance(value, tuple | list):
        return [_encoded(v) for v in value]
    if isinstance(value, bytes):
        return {BYTES_KEY: value.hex()}
    if value is None or isinstance(value, int | str):
        return value
    raise TypeError(f"a site table holds a {type(value).__name__}, which the cache does not keep")


def _record_fields(value: object) -> tuple[str, ...] | None:
    """The fields a record's constructor takes: a named tuple's (the site
    table's types are all named tuples); None for anything else."""
    if _is_named_tuple_class(type(value)):
        return tuple(type(value)._fields)     # type: ignore[attr-defined]
    return None


def _is_named_tuple_class(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple)


def _site(data: object) -> Site:
    from bpf_sdt.located_site import LocatedSite  # trace.sites.Site: the record alone, not the site table's modules

    site = _decoded(data)
    if not isinstance(site, LocatedSite):
        raise ValueError(f"a cached site is a {type(site).__name__}")
    return site


def _decoded(data: object) -> object:
    """_encoded's inverse.  Only bpf-sdt's own named tuples are made,
    through their constructors; anything else raises (the entry is then a
    miss)."""
    if isinstance(data, list):
        return tuple(_decoded(v) for v in data)
    if isinstance(data, dict):
        if set(data) == {BYTES_KEY}:
            return bytes.fromhex(str(data[BYTES_KEY]))
        module, _, name = str(data[CLASS_KEY]).partition(":")
        if not module.startswith(OWN_MODULES) or "." in name:
            raise ValueError(f"not a bpf-sdt class: {data[CLASS_KEY]}")
        cls = getattr(importlib.import_module(module), name)
        fields = data[FIELDS_KEY]
        if not (_is_named_tuple_class(cls) and isinstance(fields, dict)):
            raise ValueError(f"not a bpf-sdt named tuple: {data[CLASS_KEY]}")
        record = cls(**{str(k): _decoded(v) for k, v in fields.items()})
        check_fields = getattr(record, "check_fields", None)    # a record that can say it is malformed
        if check_fields is not None:
            check_fields()
        return record
    if data is None or isinstance(data, int | str):
        return data
    raise ValueError(f"unexpected {type(data).__name__} in a cached site table")


# --- identities: the kernel tag OBJ's program got when trace loaded it -------------

TAGS_NAME = "tags"


def _tag_key(obj: Path, prog_name: str) -> str:
    """OBJ's bytes, the program, this kernel and this libbpf: what the tag of
    a load depends on (libbpf's relocations follow the kernel's BTF)."""
    from bpf_sdt.libbpf import libbpf_path, libbpf_version

    uname = os.uname()
    digest = _digest(read_regular(str(obj), MAX_OBJECT_SIZE, "BPF object"))
    digest.update(json.dumps([prog_name, uname.release, uname.version, libbpf_version(), libbpf_path()]).encode())
    return digest.hexdigest()


def known_tag(obj: Path, prog_name: str) -> tuple[str, str, str] | None:
    """(name, type, tag) OBJ's program had when loaded here before, if known."""
    where = cache_dir()
    if where is None:
        return None
    # A tag read here stands in for the identity load: trusted only as the cache's entries are.
    raw = usercache.read_own(where / TAGS_NAME / _tag_key(obj, prog_name), MAX_TAG_FILE)
    if raw is None:
        return None
    try:
        name, type_name, tag = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return str(name), str(type_name), str(tag)


def remember_tag(obj: Path, prog_name: str, identity: tuple[str, str, str]) -> None:
    where = cache_dir()
    if where is None:
        return
    try:
        usercache.make_dirs(where / TAGS_NAME)
        fd, staging = tempfile.mkstemp(prefix=".staging-", dir=where / TAGS_NAME)
        with os.fdopen(fd, "w") as f:
            json.dump(list(identity), f)
        os.replace(staging, where / TAGS_NAME / _tag_key(obj, prog_name))
    except OSError:
        return


# --- each entry's cut-down kernel BTF (bpf_sdt.core_btf) ---------------------------
#
# Beside an entry's object: kernel-btf-<this kernel's BTF>.btf, the BTF its
# CO-RE relocations are resolved against (libbpf's load then reads a few
# hundred bytes, not the kernel's 5 MB), or .none when bpftool could not make
# one that loads the same.  Written after trace's session, each file whole
# (renamed into place); another kernel's file goes when this one's is written.

CORE_BTF_PREFIX = "kernel-btf-"
CORE_BTF_SUFFIX, NO_CORE_BTF_SUFFIX = ".btf", ".none"
CORE_BTF_STAGING = STAGING_PREFIX + CORE_BTF_PREFIX
MAX_CORE_BTF = 16 << 20             # bpftool writes bytes to kilobytes for one object
CORE_BTF_WRITTEN = "kernel.btf"     # bpftool's output, in its staging directory
PRIVATE_UMASK = 0o077               # bpftool's: its output is read only if the user's alone
POLL_S = 0.02                       # how often a wait for bpftool looks for a stop


def _core_btf_names(entry: Path) -> tuple[Path, Path] | None:
    """(the entry's cut-down BTF for this kernel, its "none" marker); None
    without a kernel BTF."""
    identity = core_btf.kernel_btf_identity()
    if identity is None:
        return None
    stem = CORE_BTF_PREFIX + _digest(identity.encode()).hexdigest()[:KEY_HEX // 2]
    return entry / (stem + CORE_BTF_SUFFIX), entry / (stem + NO_CORE_BTF_SUFFIX)


def core_btf_of(entry: Path) -> tuple[Path | None, bool]:
    """(the cut-down BTF to load the entry's object with, or None; whether
    that is known for this kernel, so that nothing is left to write)."""
    names = _core_btf_names(entry)
    if names is None:
        return None, True
    usable, none = names
    for path in names:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & usercache.OTHERS_WRITE:
            return (path if path == usable else None), True
    return None, False


def forget_core_btf(path: Path) -> None:
    """Removes a cut-down BTF the copy did not load with (the next trace
    writes it again)."""
    with contextlib.suppress(OSError):
        path.unlink()


class CoreBtfWriter:
    """bpftool writing an entry's cut-down kernel BTF, in the background:
    started once trace has loaded the copy, waited for once its session is
    over (:meth:`finish`), so that neither waits for the other."""

    def __init__(self, entry: Path, names: tuple[Path, Path], staging: Path, proc: Popen[bytes]) -> None:
        self.entry = entry
        self.usable, self.none = names
        self.staging = staging
        self.proc = proc

    @classmethod
    def start(cls, entry: Path) -> CoreBtfWriter | None:
        """bpftool started on the entry's object; None when there is nothing
        to write, no bpftool, or an entry or cache directory that is not the
        user's alone (what is written there would be written where others
        chose: the copy keeps loading with the kernel's BTF)."""
        import subprocess

        from bpf_sdt.errors import ToolError
        from bpf_sdt.toolchain import find_bpftool

        names = _core_btf_names(entry)
        if names is None or core_btf_of(entry)[1] or not _is_own_entry(entry):
            return None
        _remove_stale_staging(entry)
        try:
            bpftool = find_bpftool()
            # bpftool writes into a directory of its own, made here: a name no one else can have
            # chosen first, and (umask) a file read_own takes as the user's alone.
            staging = Path(tempfile.mkdtemp(prefix=CORE_BTF_STAGING, dir=entry))
        except (ToolError, OSError):
            return None
        try:
            cmd = core_btf.min_core_btf_command(bpftool, entry / OBJECT_NAME, staging / CORE_BTF_WRITTEN)
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, umask=PRIVATE_UMASK)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return None
        return cls(entry, names, staging, proc)

    def finish(self, stopping: Callable[[], bool]) -> None:
        """Waits for bpftool (not past a stop, nor MIN_CORE_BTF_TIMEOUT_S),
        then keeps what it wrote if it loads the same (core_btf.same_load),
        else the marker that says it does not (a bpftool that fails, or
        writes no file it could, answers so too: it would fail each time).
        Only a stop or a bpftool too slow for a busy host leaves the entry
        to the next trace."""
        deadline = time.monotonic() + core_btf.MIN_CORE_BTF_TIMEOUT_S
        try:
            while self.proc.poll() is None:
                if stopping() or time.monotonic() > deadline:
                    return
                with contextlib.suppress(Exception):
                    self.proc.wait(POLL_S)
            self._mark(usable=self.proc.returncode == 0 and self._loads_the_same())
        except OSError:
            return
        finally:
            self.cancel()

    def cancel(self) -> None:
        """bpftool ended, its directory removed (once :meth:`finish` kept its output, nothing else is in it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _loads_the_same(self) -> bool:
        from bpf_sdt.elf import load_object

        # In bpftool's own directory, with its umask: a file that does not read is one it could not write.
        written = usercache.read_own(self.staging / CORE_BTF_WRITTEN, MAX_CORE_BTF)
        if written is None:
            return False
        try:
            obj = load_object(self.entry / OBJECT_NAME)
            btf, ext = obj.section(".BTF"), obj.section(".BTF.ext")
            if btf is None:
                return False
            return core_btf.same_load(obj.section_data(btf), obj.section_data(ext) if ext else None, written)
        except InputError:
            return False

    def _mark(self, usable: bool) -> None:
        """Renames the answer into place: the file bpftool wrote, or an empty
        marker made beside it (a rename replaces whatever is at the name, a
        link too, and never writes through one)."""
        if usable:
            os.replace(self.staging / CORE_BTF_WRITTEN, self.usable)
        else:
            marker = self.staging / NO_CORE_BTF_SUFFIX
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             usercache.ENTRY_MODE))
            os.replace(marker, self.none)
        keep = self.usable if usable else self.none
        for old in self.entry.glob(f"{CORE_BTF_PREFIX}*"):      # another kernel's
            if old != keep:
                with contextlib.suppress(OSError):
                    old.unlink()


def _is_own_entry(entry: Path) -> bool:
    try:
        return usercache.is_own(entry.parent) and usercache.is_own(entry)
    except OSError:
        return False


def _remove_stale_staging(entry: Path) -> None:
    """What a trace killed while bpftool wrote left (a day old: another may be writing now)."""
    now = time.time()
    for path in entry.glob(f"{CORE_BTF_STAGING}*"):
        with contextlib.suppress(OSError):
            if now - path.lstat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)

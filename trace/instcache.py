"""A cache of instrumented objects for `trace --live`, so that tracing the
same running program again costs only the load (the verifier), not
instrument's analysis too; and of the kernel tag OBJ's program got when
trace last loaded it for the identity check on this kernel and libbpf, so
that a match needs no second verification.

An entry is keyed by everything the instrumented object depends on: OBJ's
bytes, the request (probes, programs, ring size), the bpf-sdt package's
own source files (instrument's analysis and the recorder's template), and
the clang that builds the recorder (its path, size and modification time).
Anything else changing gives a new key; an entry is never updated, only
written whole (atomically, by rename) or not at all.

The directory is ``$BPF_SDT_CACHE`` (``off`` disables the cache), else
``$XDG_CACHE_HOME/bpf-sdt/instrumented``, else ``~/.cache/bpf-sdt/instrumented``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from bpf_sdt.instrument.command import Request

import bpf_sdt
from bpf_sdt.toolchain import find_clang

CACHE_ENV = "BPF_SDT_CACHE"
CACHE_OFF = "off"
SOURCE_SUFFIXES = (".py", ".j2", ".c", ".h")
OBJECT_NAME, SITES_NAME = "instrumented.bpf.o", "sites.json"


def cache_dir() -> Path | None:
    chosen = os.environ.get(CACHE_ENV)
    if chosen == CACHE_OFF:
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bpf-sdt" / "instrumented"


@functools.cache
def _package_digest() -> str:
    """The bpf-sdt sources instrument's output depends on (all of them: cheap,
    and safe against a change anywhere in the pipeline)."""
    digest = hashlib.sha256(bpf_sdt.__version__.encode())
    seen = set()
    for root in _package_dirs():
        for path in sorted(root.rglob("*")):
            real = path.resolve()
            if (real.suffix in SOURCE_SUFFIXES and real.is_file() and real not in seen
                    and "__pycache__" not in real.parts):
                seen.add(real)
                digest.update(str(real).encode())
                digest.update(real.read_bytes())
    return digest.hexdigest()


def _package_dirs() -> list[Path]:
    """The directories of bpf-sdt's packages: bpf_sdt.instrument and
    bpf_sdt.trace live outside bpf_sdt/ in a source tree (package-dir)."""
    modules = [importlib.import_module(name) for name in ("bpf_sdt", "bpf_sdt.instrument.command", __name__)]
    return sorted({Path(m.__file__).resolve().parent for m in modules if m.__file__})


def key(req: Request) -> str:
    clang = find_clang()
    stat = os.stat(clang)
    digest = hashlib.sha256(Path(req.input).read_bytes())
    rec = req.recorder
    recorder = [rec.plan_id, rec.map_entries, rec.hits_entries, rec.pin_by_name]   # what the recorder compiles in
    digest.update(json.dumps({"probes": req.probes, "programs": req.programs, "ringbuf": req.ringbuf_size,
                              "recorder": recorder,
                              "clang": [clang, stat.st_size, stat.st_mtime_ns], "sources": _package_digest()},
                             sort_keys=True).encode())
    return digest.hexdigest()


def fetch(req: Request) -> list[tuple[int, str]] | None:
    """Copies a cached instrumented object to req.output; its sites, or None."""
    where = cache_dir()
    if where is None:
        return None
    entry = where / key(req)
    try:
        sites = json.loads((entry / SITES_NAME).read_text())
        shutil.copyfile(entry / OBJECT_NAME, req.output)
    except (OSError, ValueError):
        return None
    return [(int(site_id), str(probe)) for site_id, probe in sites]


def store(req: Request, sites: list[tuple[int, str]]) -> None:
    """Keeps req.output for next time; a cache that cannot be written is no error."""
    where = cache_dir()
    if where is None:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=where))
        shutil.copyfile(req.output, staging / OBJECT_NAME)
        (staging / SITES_NAME).write_text(json.dumps(sites))
        try:
            staging.rename(where / key(req))
        except OSError:                 # another trace stored the same entry first
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        return


# --- identities: the kernel tag OBJ's program got when trace loaded it -------------

TAGS_NAME = "tags"


def _tag_key(obj: Path, prog_name: str) -> str:
    """OBJ's bytes, the program, this kernel and this libbpf: what the tag of
    a load depends on (libbpf's relocations follow the kernel's BTF)."""
    from bpf_sdt.libbpf import libbpf_path, libbpf_version

    uname = os.uname()
    digest = hashlib.sha256(obj.read_bytes())
    digest.update(json.dumps([prog_name, uname.release, uname.version, libbpf_version(), libbpf_path()]).encode())
    return digest.hexdigest()


def known_tag(obj: Path, prog_name: str) -> tuple[str, str, str] | None:
    """(name, type, tag) OBJ's program had when loaded here before, if known."""
    where = cache_dir()
    if where is None:
        return None
    try:
        name, type_name, tag = json.loads((where / TAGS_NAME / _tag_key(obj, prog_name)).read_text())
    except (OSError, ValueError, TypeError):
        return None
    return str(name), str(type_name), str(tag)


def remember_tag(obj: Path, prog_name: str, identity: tuple[str, str, str]) -> None:
    where = cache_dir()
    if where is None:
        return
    try:
        (where / TAGS_NAME).mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=".staging-", dir=where / TAGS_NAME)
        with os.fdopen(fd, "w") as f:
            json.dump(list(identity), f)
        os.replace(staging, where / TAGS_NAME / _tag_key(obj, prog_name))
    except OSError:
        return

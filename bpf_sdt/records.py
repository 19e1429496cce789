"""bpf-sdt's own records on bpffs: what a running trace changed in the kernel,
kept where it outlives the process (SIGKILL, OOM, a closed terminal).

The format is specified in docs/records.md; in short, one directory per
attach point that trace changed::

    /sys/fs/bpf/bpf-sdt/<key>/record         array map, 1 entry: the JSON record
    /sys/fs/bpf/bpf-sdt/<key>/original       the program that ran there (live swaps)
    /sys/fs/bpf/bpf-sdt/<key>/instrumented   the program trace put there

The directory is created with mkdir, which is atomic: it is the lock that
keeps two traces off one attach point.  bpffs holds only BPF objects and
directories, so the JSON lives in a one-entry array map pinned beside the
programs, readable with ``bpftool map dump pinned .../record``.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf_sdt.errors import BpfSdtError
from bpf_sdt.libbpf import LibbpfError, Map, map_create, obj_get, obj_pin

RECORDS_ENV = "BPF_SDT_RECORDS"            # another root (tests, a bpffs mounted elsewhere)
TAG_ENV = "BPF_SDT_RECORD_TAG"             # written into each record: who started the trace (a test session)
TMP_PREFIX = "bpf-sdt-trace-"              # trace's temporary directories, the only ones restore removes
DEFAULT_ROOT = Path("/sys/fs/bpf/bpf-sdt")
RECORD_PIN, ORIGINAL_PIN, INSTRUMENTED_PIN = "record", "original", "instrumented"
RECORD_MAP_NAME = "bpf_sdt_record"
RECORD_VERSION = 1
RECORD_SIZE = 4096                      # bytes of JSON a record may hold (NUL-padded)
BPF_MAP_TYPE_ARRAY = 2
_KEY0 = bytes(4)
_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]")
_STAT_START_FIELD = 21                  # /proc/PID/stat: starttime, after "pid (comm)" and 19 fields
# A directory without a readable record is a trace taking the attach point
# (mkdir, then the record pin a moment later) until it is this old; only
# then is it a trace killed while it began, for restore to remove.
STARTING_GRACE_S = 10.0


ROOT_RETRIES = 3                # a record's mkdir racing the removal of the empty root


def root() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or DEFAULT_ROOT)


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, None if it is gone:
    with the PID it names one process, whatever reuses the number later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[_STAT_START_FIELD - 2])


@dataclass
class Record:
    """One attach point trace changed.  `hook` says where (see docs/records.md)."""
    key: str
    kind: str                           # "live" (a swap) or "attach" (--xdp/--tc)
    where: str                          # as the user wrote it, for messages
    hook: dict[str, Any]
    pid: int = field(default_factory=os.getpid)
    pid_start: int | None = None
    state: str = "preparing"            # preparing -> swapped/attached
    extra: dict[str, Any] = field(default_factory=dict)
    tmp: str | None = None              # the trace's temporary directory (a SIGKILL leaves it)
    tag: str | None = field(default_factory=lambda: os.environ.get(TAG_ENV) or None)

    @property
    def path(self) -> Path:
        return root() / self.key

    def alive(self) -> bool:
        """Is the trace that wrote this record still running?"""
        return self.pid_start is not None and process_start(self.pid) == self.pid_start

    def to_json(self) -> bytes:
        return json.dumps({"version": RECORD_VERSION, "kind": self.kind, "where": self.where, "hook": self.hook,
                           "pid": self.pid, "pid_start": self.pid_start, "state": self.state, "tmp": self.tmp,
                           "tag": self.tag, **self.extra}, sort_keys=True).encode()


def record_key(*parts: object) -> str:
    """A directory name from an attach point's parts (safe characters only)."""
    return _SAFE_KEY.sub("_", "-".join(str(p) for p in parts))


class RecordsUnavailable(BpfSdtError):
    """No bpffs where records go (e.g. inside `ip netns exec`, which mounts
    a fresh /sys without /sys/fs/bpf)."""


class RecordBusy(Exception):
    """The attach point has a record already: `record` says whose (None:
    a directory without a readable record, being created or left broken)."""

    def __init__(self, key: str, record: Record | None) -> None:
        super().__init__(key)
        self.key, self.record = key, record


class Held:
    """A record this process created and keeps up to date; remove() at the end."""

    def __init__(self, record: Record, record_map: Map) -> None:
        self.record, self._map = record, record_map

    def write(self, **changes: Any) -> None:
        for name, value in changes.items():
            if hasattr(self.record, name):
                setattr(self.record, name, value)
            else:
                self.record.extra[name] = value
        self._map.update(_KEY0, _padded(self.record.to_json()))

    def pin(self, name: str, fd: int) -> None:
        obj_pin(fd, self.record.path / name)

    def remove(self) -> None:
        self._map.close()
        remove(self.record.key)


def _padded(data: bytes) -> bytes:
    if len(data) > RECORD_SIZE:
        raise LibbpfError("writing a bpf-sdt record", errnos.E2BIG, detail=f"{len(data)} bytes of JSON")
    return data.ljust(RECORD_SIZE, b"\0")


def _make_record_dir(path: Path) -> None:
    """mkdir of a record's directory, and of the root if it is missing: the
    root goes with its last record (remove), maybe between the two mkdirs."""
    for _ in range(ROOT_RETRIES):
        root().mkdir(exist_ok=True)
        try:
            path.mkdir()
            return
        except FileNotFoundError:
            continue
    path.mkdir()


def create(record: Record) -> Held:
    """Takes the attach point: mkdir (atomic; RecordBusy if it exists), then
    the record map pinned inside with the JSON."""
    record.pid_start = process_start(record.pid)
    try:
        _make_record_dir(record.path)
    except FileExistsError:
        raise RecordBusy(record.key, read(record.key)) from None
    except OSError as e:
        raise RecordsUnavailable(f"bpf-sdt's records at {root()}: {e.strerror} (is bpffs mounted at "
                                 f"{root().parent}? `ip netns exec` mounts a /sys without it: use "
                                 "`nsenter --net=/run/netns/NAME` instead)") from None
    try:
        rmap = map_create(BPF_MAP_TYPE_ARRAY, RECORD_MAP_NAME, len(_KEY0), RECORD_SIZE, 1)
        try:
            held = Held(record, rmap)
            held.write()
            obj_pin(rmap.fd, record.path / RECORD_PIN)
        except BaseException:
            rmap.close()
            raise
    except BaseException:
        remove(record.key)
        raise
    return held


def read(key: str) -> Record | None:
    """The record of `key`, None if it has none (yet) or it does not parse."""
    try:
        with Map.open_pinned(root() / key / RECORD_PIN) as rmap:
            raw = rmap.lookup(_KEY0)
    except LibbpfError:
        return None
    if raw is None:
        return None
    try:
        data = json.loads(raw.rstrip(b"\0"))
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    known = {"version", "kind", "where", "hook", "pid", "pid_start", "state", "tmp", "tag"}
    return Record(key=key, kind=str(data.get("kind")), where=str(data.get("where")), hook=dict(data.get("hook", {})),
                  pid=int(data.get("pid", 0)), pid_start=data.get("pid_start"), state=str(data.get("state")),
                  extra={k: v for k, v in data.items() if k not in known},
                  tmp=data.get("tmp") if isinstance(data.get("tmp"), str) else None,
                  tag=data.get("tag") if isinstance(data.get("tag"), str) else None)


def record_keys() -> list[str]:
    """Every record directory, sorted (none without a records root)."""
    try:
        return sorted(p.name for p in root().iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise RecordsUnavailable(f"bpf-sdt's records at {root()}: {e.strerror} (reading them needs root)") from None


def starting(key: str, now: float | None = None) -> bool:
    """Is `key`, a directory without a readable record, a trace that is
    still taking the attach point (younger than STARTING_GRACE_S)?  False
    once it is gone."""
    try:
        mtime = (root() / key).stat().st_mtime
    except FileNotFoundError:
        return False
    return (time.time() if now is None else now) - mtime < STARTING_GRACE_S


def stale() -> Iterator[tuple[str, Record | None]]:
    """Records whose trace is gone (killed): what `bpf-sdt restore` puts back.
    A directory without a record counts only once it is no longer starting."""
    for key in record_keys():
        rec = read(key)
        if rec is None and starting(key):
            continue
        if rec is None or not rec.alive():
            yield key, rec


@contextlib.contextmanager
def pinned_fd(key: str, name: str) -> Iterator[int | None]:
    """An fd for a program pinned in a record, None if there is no such pin."""
    try:
        fd = obj_get(root() / key / name)
    except LibbpfError as e:
        if e.errno != errnos.ENOENT:
            raise
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def remove_tmp(rec: Record) -> None:
    """A dead trace's temporary directory (only one named like trace's)."""
    if rec.tmp and Path(rec.tmp).name.startswith(TMP_PREFIX) and not rec.alive():
        shutil.rmtree(rec.tmp, ignore_errors=True)


def remove(key: str) -> None:
    """Unpins everything in a record directory and removes it (a pinned
    program is freed once nothing else holds it)."""
    path = root() / key
    with contextlib.suppress(FileNotFoundError):
        for entry in path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        path.rmdir()
    with contextlib.suppress(OSError):      # the last record: leave no empty bpf-sdt directory behind
        root().rmdir()

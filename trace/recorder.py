"""Reading a loaded recorder (docs/instrument.md, "The recorder"): its
identity, its counters, and finding its maps whoever loaded it.

**Identity.** ``bpf_sdt_counts``'s BTF value type is named
``bpf_sdt_id_<digest of the site table>`` (:func:`trace.sites.recorder_identity`).
The kernel keeps a map's BTF, so the name is read back from the loaded map
(map info -> BTF id and value type id -> the BTF's bytes), and a reader
compares it with the digest it computes from OBJ before decoding a single
event: a ring of another instrumented object is refused.

**Counters.** Per CPU: events submitted to the ring, reservations that failed
(lost), firings a filter rejected, aggregation updates that found their map
full (overflow).  Summed over CPUs here.  ``submitted - read - lost`` after
the last read is what another reader of the same ring took.

**Finding the maps.** In a pin directory (``bpftool ... pinmaps DIR``,
libbpf's pin root with ``instrument --pin-by-name``), or among every map the
kernel has loaded: a ``bpf_sdt_counts`` whose identity is OBJ's, and the
``bpf_sdt_events`` ring of the program(s) that use it (program info's map
ids), through :mod:`bpf_sdt.kernel`'s iterators.
"""

from __future__ import annotations

import os
from errno import ENOENT
from pathlib import Path
from typing import NamedTuple

from bpf_sdt.errors import InputError
from bpf_sdt.libbpf import LibbpfError, Map
from bpf_sdt.recorder_abi import (
    COUNTERS,
    RECORDER_COUNTERS,
    RECORDER_COUNTS_MAP,
    RECORDER_IDENTITY_PREFIX,
    RECORDER_RINGBUF_MAP,
    percpu_stride,
)

BPF_MAP_TYPE_RINGBUF = 27
BPF_MAP_TYPE_PERCPU_ARRAY = 6
COUNTS_KEY = bytes(4)


def map_identity(fd: int) -> str | None:
    """The identity a recorder's counters map carries (the hex digest), or
    None when the map's value type is not named as a recorder's."""
    from bpf_sdt.btf import parse_btf
    from bpf_sdt.kernel import btf_bytes, map_info

    info = map_info(fd)
    if not info.btf_id or not info.btf_value_type_id:
        return None
    name = parse_btf(btf_bytes(info.btf_id)).get(info.btf_value_type_id).name
    if not name.startswith(RECORDER_IDENTITY_PREFIX):
        return None
    return name[len(RECORDER_IDENTITY_PREFIX):]


class CounterValues(NamedTuple):
    submitted: int = 0
    lost: int = 0
    filtered: int = 0
    overflow: int = 0

    def __sub__(self, other: CounterValues) -> CounterValues:
        return CounterValues(*(getattr(self, f) - getattr(other, f) for f in RECORDER_COUNTERS))


class Counters:
    """The recorder's per-CPU counters, summed; ``since_start`` against the
    values when the reader started."""

    def __init__(self, counts: Map | None) -> None:
        self._map = counts
        self.base = self.read()
        self.reported_lost = 0

    def read(self) -> CounterValues:
        if self._map is None:
            return CounterValues()
        raw = self._map.lookup(COUNTS_KEY) or b""
        stride = percpu_stride(self._map.value_size)
        sums = [0] * len(RECORDER_COUNTERS)
        for cpu in range(0, len(raw) - COUNTERS.size + 1, stride):
            for k, value in enumerate(COUNTERS.unpack_from(raw, cpu)):
                sums[k] += value
        return CounterValues(*sums)

    def since_start(self) -> CounterValues:
        return self.read() - self.base


class RecorderMaps:
    """The ring and the counters of one loaded recorder, opened here (closed
    by close()), and how to find its other maps (the aggregations)."""

    def __init__(self, ring: Map, counts: Map, where: str, pin_dir: Path | None = None,
                 map_ids: tuple[int, ...] = ()) -> None:
        self.ring = ring
        self.counts = counts
        self.where = where                  # for messages: the pin or the kernel map id
        self.pin_dir = pin_dir              # its maps are pinned here, or
        self.map_ids = map_ids              # they are among these (the program's)
        self.others: list[Map] = []

    def find(self, name: str) -> Map:
        """Another map of the same recorder, by name."""
        if self.pin_dir is not None:
            m = _open_pin(self.pin_dir / name)
        else:
            from bpf_sdt.kernel import map_fd_by_id, map_info

            found = None
            for ident in self.map_ids:
                fd = map_fd_by_id(ident)
                try:
                    if map_info(fd).name == name:
                        found = ident
                        break
                finally:
                    os.close(fd)
            if found is None:
                raise InputError(f"the loaded recorder has no map {name}")
            m = _map_by_id(found)
        self.others.append(m)
        return m

    def close(self) -> None:
        self.ring.close()
        self.counts.close()
        for m in self.others:
            m.close()


def check_identity(counts: Map, expected: str, obj: Path, where: str) -> None:
    """Refuses a counters map that is not OBJ's recorder (exit 2)."""
    found = map_identity(counts.fd)
    if found is None:
        raise InputError(f"{where}: not a bpf-sdt recorder's counters (its value type carries no identity)")
    if found != expected:
        raise InputError(f"{where}: the recorder of another object, or of other --filter/aggregation options "
                         f"(identity {found}, {obj} with these options has {expected}); give the instrumented "
                         "object that was loaded and the options it was instrumented with")


def open_pinned(pin_dir: Path, identity: str, obj: Path) -> RecorderMaps:
    """The recorder's maps pinned in ``pin_dir``, checked against OBJ's identity."""
    counts = _open_pin(pin_dir / RECORDER_COUNTS_MAP)
    try:
        check_identity(counts, identity, obj, str(pin_dir / RECORDER_COUNTS_MAP))
        ring = _open_pin(pin_dir / RECORDER_RINGBUF_MAP)
    except BaseException:
        counts.close()
        raise
    if ring.type_id != BPF_MAP_TYPE_RINGBUF:
        ring.close()
        counts.close()
        raise InputError(f"{pin_dir / RECORDER_RINGBUF_MAP}: a {ring.type} map, not the recorder's ring buffer")
    return RecorderMaps(ring, counts, f"the ring buffer pinned at {pin_dir / RECORDER_RINGBUF_MAP}", pin_dir=pin_dir)


def _open_pin(path: Path) -> Map:
    try:
        return Map.open_pinned(path)
    except LibbpfError as e:
        if e.errno == ENOENT:
            raise InputError(f"{path}: no such pin; is the instrumented object loaded with its maps pinned "
                             "there (bpftool prog loadall OUT DIR pinmaps MAPDIR)?") from None
        raise


def find_loaded(identity: str, obj: Path) -> RecorderMaps:
    """The recorder of OBJ among the kernel's loaded maps: its counters by name
    and identity, its ring through a program that uses both."""
    from bpf_sdt.kernel import iter_map_infos, iter_prog_infos, map_fd_by_id

    counts_ids = []
    for m in iter_map_infos():
        if m.name == RECORDER_COUNTS_MAP and m.type_id == BPF_MAP_TYPE_PERCPU_ARRAY:
            fd = map_fd_by_id(m.id)
            try:
                if map_identity(fd) == identity:
                    counts_ids.append(m.id)
            finally:
                os.close(fd)
    if not counts_ids:
        raise InputError(f"{obj}: no loaded recorder has this object's identity ({identity}); is it loaded?")
    rings = {m.id: m for m in iter_map_infos() if m.name == RECORDER_RINGBUF_MAP and m.type_id == BPF_MAP_TYPE_RINGBUF}
    progs = list(iter_prog_infos())
    pairs = sorted({(c, r) for p in progs for c in p.map_ids if c in counts_ids for r in p.map_ids if r in rings})
    if len({c for c, _ in pairs}) != 1 or len(pairs) != 1:
        if not pairs and any(c in p.map_ids for p in progs for c in counts_ids):
            what = "the program of its recorder uses no ring buffer (it only aggregates), so its maps cannot be"
            raise InputError(f"{obj}: {what} told apart from others' by the kernel's ids; name them with --pin-dir DIR")
        what = "no program uses" if not pairs else f"{len(pairs)} loaded copies have"
        raise InputError(f"{obj}: {what} its recorder's maps; name them with --pin-dir DIR")
    counts_id, ring_id = pairs[0]
    counts = _map_by_id(counts_id)
    try:
        ring = _map_by_id(ring_id)
    except BaseException:
        counts.close()
        raise
    map_ids = tuple(sorted({m for p in progs if counts_id in p.map_ids for m in p.map_ids}))
    return RecorderMaps(ring, counts, f"the ring buffer map id {ring_id}", map_ids=map_ids)


def _map_by_id(ident: int) -> Map:
    from bpf_sdt.kernel import map_fd_by_id, map_info

    fd = map_fd_by_id(ident)
    try:
        m = map_info(fd)
    except BaseException:
        os.close(fd)
        raise
    return Map(None, None, fd=fd, name=m.name, type_id=m.type_id, key_size=m.key_size, value_size=m.value_size,
               max_entries=m.max_entries)

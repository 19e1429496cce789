"""What the kernel says about loaded BPF objects: programs, maps and links
by ID, read with libbpf's id iterators and ``bpf_obj_get_info_by_fd``.

Every function here only reads; each fd it opens is closed before it
returns, except where the caller asks for one (``*_fd_by_id``).  An object
that disappears between "next id" and "fd by id" (freed meanwhile) is
skipped by the iterators, since that is what a concurrent system does.

The info structs are prefixes of the kernel's (linux/bpf.h): the kernel
fills as many bytes as ``info_len`` says and zeroes nothing beyond it, so a
prefix is always accepted, on old and new kernels alike.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import os
from collections.abc import Iterator
from dataclasses import dataclass

from bpf_sdt.libbpf import LibbpfError, _check, _lib, _name

BPF_TAG_SIZE = 8
BPF_OBJ_NAME_LEN = 16          # names are truncated to 15 bytes + NUL by the kernel
NAME_MAX_CHARS = BPF_OBJ_NAME_LEN - 1
BPF_MAP_TYPE_PROG_ARRAY = 3
# enum bpf_link_type (linux/bpf.h); TCX and NETKIT are newer than libbpf 1.1's headers.
LINK_TYPES = {1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
              7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx",
              12: "uprobe_multi", 13: "netkit", 14: "sockmap"}
LINK_XDP, LINK_TCX = 6, 11
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47     # enum bpf_attach_type


class _ProgInfo(ctypes.Structure):
    """struct bpf_prog_info, up to gpl_compatible."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("ifindex", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class _MapInfo(ctypes.Structure):
    """struct bpf_map_info, up to name."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


_LINK_UNION_WORDS = 8          # the per-type union: the fields read here fit in its first words


class _LinkInfo(ctypes.Structure):
    """struct bpf_link_info: type, id, prog_id, then a union aligned to 8."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("union", ctypes.c_uint32 * _LINK_UNION_WORDS)]


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type_id: int
    type: str                   # libbpf's name: "xdp", "sched_cls", ...
    name: str                   # as the kernel keeps it: at most 15 bytes
    tag: str                    # 16 hex digits, as bpftool prints it
    map_ids: tuple[int, ...]


@dataclass(frozen=True)
class MapInfo:
    id: int
    type_id: int
    type: str                   # libbpf's name: "hash", "array", "ringbuf", ...
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type_id: int
    type: str                   # "xdp", "tcx", "cgroup", ... ("unknown N" past this table)
    prog_id: int
    ifindex: int = 0            # xdp, tcx, netkit links
    attach_type: int = 0        # tcx, netkit, cgroup links


def _info(fd: int, struct: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(struct))
    _check(what, _lib().bpf_obj_get_info_by_fd, fd, ctypes.byref(struct), ctypes.byref(size))


def prog_info(fd: int) -> ProgInfo:
    """The program behind `fd`: name, type, kernel tag and every map it uses."""
    info = _ProgInfo()
    _info(fd, info, "querying program")
    count = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(count, 1))()
    if count:
        # Second call with room for the map IDs (the first one told how many).
        info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
        _info(fd, info, "querying program's maps")
        count = min(count, info.nr_map_ids)
    lib = _lib()
    return ProgInfo(id=info.id, type_id=info.type, type=_name(lib.libbpf_bpf_prog_type_str(info.type)) or "unknown",
                    name=_name(info.name), tag=bytes(info.tag).hex(), map_ids=tuple(ids[:count]))


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info, "querying map")
    return MapInfo(id=info.id, type_id=info.type, type=_name(_lib().libbpf_bpf_map_type_str(info.type)) or "unknown",
                   name=_name(info.name), key_size=info.key_size, value_size=info.value_size,
                   max_entries=info.max_entries, flags=info.map_flags)


def link_info(fd: int) -> LinkInfo:
    info = _LinkInfo()
    _info(fd, info, "querying link")
    words = list(info.union)
    ifindex = attach_type = 0
    type_name = LINK_TYPES.get(info.type, f"unknown {info.type}")
    if type_name == "xdp":
        ifindex = words[0]
    elif type_name in ("tcx", "netkit"):
        ifindex, attach_type = words[0], words[1]
    elif type_name == "cgroup":
        attach_type = words[2]          # after the 64-bit cgroup_id
    return LinkInfo(id=info.id, type_id=info.type, type=type_name, prog_id=info.prog_id, ifindex=ifindex,
                    attach_type=attach_type)


def _fd_by_id(kind: str, ident: int) -> int:
    return _check(f"opening {kind} id {ident}", getattr(_lib(), f"bpf_{kind}_get_fd_by_id"), ident)


def prog_fd_by_id(ident: int) -> int:
    """A new fd for program `ident` (the caller closes it)."""
    return _fd_by_id("prog", ident)


def map_fd_by_id(ident: int) -> int:
    """A new fd for map `ident` (the caller closes it)."""
    return _fd_by_id("map", ident)


def link_fd_by_id(ident: int) -> int:
    """A new fd for link `ident` (the caller closes it)."""
    return _fd_by_id("link", ident)


def _ids(kind: str) -> Iterator[int]:
    next_fn = getattr(_lib(), f"bpf_{kind}_get_next_id")
    current, nxt = 0, ctypes.c_uint32()
    while True:
        ret = next_fn(current, ctypes.byref(nxt))
        if ret == -errnos.ENOENT:
            return
        if ret < 0:
            raise LibbpfError(f"listing {kind} ids", -ret)
        current = nxt.value
        yield current


def _each(kind: str) -> Iterator[int]:
    """An fd for each live object of `kind`, closed when the consumer moves on."""
    for ident in _ids(kind):
        try:
            fd = _fd_by_id(kind, ident)
        except LibbpfError as e:
            if e.errno == errnos.ENOENT:
                continue            # freed since its id was listed
            raise
        try:
            yield fd
        finally:
            os.close(fd)


def iter_map_infos() -> Iterator[MapInfo]:
    """Every map loaded in the kernel, by increasing id, with name and type
    (stable API: used to find maps, e.g. a recorder's ring, by name)."""
    for fd in _each("map"):
        yield map_info(fd)


def iter_prog_infos() -> Iterator[ProgInfo]:
    """Every program loaded in the kernel, by increasing id."""
    for fd in _each("prog"):
        yield prog_info(fd)


def iter_link_infos() -> Iterator[LinkInfo]:
    """Every BPF link in the kernel, by increasing id."""
    for fd in _each("link"):
        yield link_info(fd)

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

import contextlib
import ctypes
import errno as errnos
import hashlib
import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bpf_sdt.insn import INSN_SIZE, LD_IMM64, PSEUDO_MAP_FD, PSEUDO_MAP_VALUE
from bpf_sdt.libbpf import (
    LibbpfError,
    Map,
    _check,
    _lib,
    _MapInfo,
    _name,
    ifindex,
    link_update,
    tc_query,
    tc_replace,
    xdp_query,
    xdp_replace,
)

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
    btf_id: int = 0             # the map's BTF object (0: none), and its value's type there
    btf_value_type_id: int = 0


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


# The kernel's program tag (bpf_prog_calc_tag): the first 8 bytes of a hash
# of the instructions as loaded, with both immediates of each map-fd and
# map-value ld_imm64 zeroed, so that the fds of one load do not show.  The
# hash is SHA-256 on this machine's 6.18 (measured: tests/test_live.py) and
# SHA-1 on older kernels.
_INSN = struct.Struct("<BBhi")
_TAG_HASHES = ("sha256", "sha1")


def program_tags(insns: bytes) -> frozenset[str]:
    """The tags, one per hash kernels have used, that a program of exactly
    these instructions gets: a running program's tag among them proves it
    was loaded from these bytes."""
    canonical = bytearray(insns)
    in_map_load = False
    for at in range(0, len(canonical) - len(canonical) % INSN_SIZE, INSN_SIZE):
        code, regs, off, _ = _INSN.unpack_from(canonical, at)
        if not in_map_load and code == LD_IMM64 and regs >> 4 in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
            in_map_load = True
        elif in_map_load and code == 0 and regs == 0 and off == 0:
            in_map_load = False                         # its second half
        else:
            in_map_load = False
            continue
        _INSN.pack_into(canonical, at, code, regs, off, 0)
    return frozenset(hashlib.new(name, canonical).digest()[:BPF_TAG_SIZE].hex() for name in _TAG_HASHES)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info, "querying map")
    return MapInfo(id=info.id, type_id=info.type, type=_name(_lib().libbpf_bpf_map_type_str(info.type)) or "unknown",
                   name=_name(info.name), key_size=info.key_size, value_size=info.value_size,
                   max_entries=info.max_entries, flags=info.map_flags, btf_id=info.btf_id,
                   btf_value_type_id=info.btf_value_type_id)


MAX_BTF_BYTES = 64 << 20        # a program's BTF is kilobytes to megabytes; a bound against a hostile size


class _BtfInfo(ctypes.Structure):
    """struct bpf_btf_info, up to id."""
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32)]


def btf_bytes(btf_id: int) -> bytes:
    """The raw BTF the kernel holds as object ``btf_id`` (a map's or program's)."""
    fd = _check(f"opening BTF id {btf_id}", _lib().bpf_btf_get_fd_by_id, btf_id)
    try:
        info = _BtfInfo()
        _info(fd, info, f"querying BTF id {btf_id}")
        size = info.btf_size
        if not 0 < size <= MAX_BTF_BYTES:
            raise LibbpfError(f"reading BTF id {btf_id}", errnos.E2BIG, detail=f"{size} bytes")
        buf = ctypes.create_string_buffer(size)
        info = _BtfInfo(btf=ctypes.addressof(buf), btf_size=size)
        _info(fd, info, f"reading BTF id {btf_id}")
        return buf.raw[:size]
    finally:
        os.close(fd)


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


# --- where a program runs, and swapping it there --------------------------------

NETNS_SELF = "/proc/thread-self/ns/net"
# Program types whose attachments are trampolines, perf events or struct_ops:
# the kernel has no atomic replace for them.
UNSWAPPABLE_TYPES = {
    "tracing": "fentry/fexit/tp_btf programs run from trampolines, which cannot be updated in place",
    "raw_tracepoint": "raw tracepoint links cannot be updated in place",
    "raw_tracepoint_writable": "raw tracepoint links cannot be updated in place",
    "kprobe": "kprobes are perf-event attachments, which cannot be updated in place",
    "tracepoint": "tracepoints are perf-event attachments, which cannot be updated in place",
    "perf_event": "perf-event attachments cannot be updated in place",
    "struct_ops": "struct_ops maps replace whole operation tables, not one program",
    "ext": "freplace programs cannot be replaced in place",
    "lsm": "LSM programs run from trampolines, which cannot be updated in place",
}


def netns_inode() -> int:
    """This thread's network namespace, as the inode the kernel names it by."""
    return os.stat(NETNS_SELF).st_ino


class Replaced(Exception):
    """The attach point no longer runs the program a swap expected: someone
    else (the program's own loader) changed it meanwhile.  Nothing was swapped."""

    def __init__(self, where: str, now: int) -> None:
        super().__init__(f"{where} runs program id {now} now" if now else f"{where} runs no program now")
        self.now = now


def prog_id_of_fd(fd: int) -> int:
    return prog_info(fd).id


def _libc_setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


CLONE_NEWNET = 0x40000000
NETNS_DIRS = ("/run/netns",)


def netns_path(inode: int) -> str | None:
    """A path that opens network namespace `inode`: a named one (ip netns),
    else any process's; None if no namespace has that inode any more."""
    candidates = [os.path.join(d, n) for d in NETNS_DIRS if os.path.isdir(d) for n in os.listdir(d)]
    candidates.insert(0, NETNS_SELF)
    candidates += [f"/proc/{p}/ns/net" for p in os.listdir("/proc") if p.isdigit()]
    for path in candidates:
        try:
            if os.stat(path).st_ino == inode:
                return path
        except OSError:
            continue
    return None


@contextlib.contextmanager
def entered_netns(inode: int) -> Iterator[None]:
    """Runs the block (this thread) in network namespace `inode`."""
    if inode == netns_inode():
        yield
        return
    path = netns_path(inode)
    if path is None:
        raise LibbpfError(f"network namespace {inode}", errnos.ENOENT, detail="it no longer exists")
    home = os.open(NETNS_SELF, os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _libc_setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _libc_setns(home)
    finally:
        os.close(home)


def _check_ifindex(index: int, iface: str) -> None:
    """The interface is still there (in this thread's namespace): a query of
    a missing one would say "no program", as if the hook were empty."""
    try:
        socket.if_indextoname(index)
    except OSError:
        raise LibbpfError(f"interface {iface} (index {index})", errnos.ENODEV,
                          detail="not in its network namespace any more: deleted or moved") from None


class Hook:
    """Somewhere a program runs, and how to swap the program there."""

    kind = ""
    # How swap() replaces the program, as stderr says it: a compare-and-swap
    # only where the kernel makes one (XDP_FLAGS_REPLACE, BPF_F_REPLACE).
    atomic = "compare-and-swap by the kernel"

    def key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def current(self) -> int:
        """The id of the program running there now (0: none)."""
        raise NotImplementedError

    def swap(self, new_fd: int, old_fd: int) -> None:
        """`new_fd` runs there instead of `old_fd`; Replaced (nothing changed)
        if `old_fd` is not what runs there."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}

    def close(self) -> None:
        """Releases fds the hook holds."""


class XdpNetlink(Hook):
    """An interface's XDP program attached by netlink (ip link, bpftool net)."""

    kind = "xdp"

    def __init__(self, iface: str, ifindex: int, mode: str, mode_flag: int, netns: int) -> None:
        self.iface, self.ifindex, self.mode, self.mode_flag, self.netns = iface, ifindex, mode, mode_flag, netns

    def key(self) -> tuple[object, ...]:
        return ("xdp", self.netns, self.ifindex)

    def describe(self) -> str:
        return f"XDP of {self.iface} ({self.mode} mode, netlink)"

    def current(self) -> int:
        with entered_netns(self.netns):
            _check_ifindex(self.ifindex, self.iface)
            return xdp_query(self.ifindex).prog_id

    def swap(self, new_fd: int, old_fd: int) -> None:
        with entered_netns(self.netns):
            try:
                xdp_replace(self.ifindex, new_fd, old_fd, self.mode_flag)
            except LibbpfError as e:
                if e.errno != errnos.EEXIST:
                    raise
                raise Replaced(self.describe(), self.current()) from None


class LinkHook(Hook):
    """A BPF link (XDP, tcx, cgroup, netkit): updated with BPF_F_REPLACE."""

    kind = "link"

    def __init__(self, link_id: int, link_type: str, ifindex: int = 0, iface: str = "") -> None:
        self.link_id, self.link_type, self.ifindex, self.iface = link_id, link_type, ifindex, iface
        self._fd = link_fd_by_id(link_id)

    def key(self) -> tuple[object, ...]:
        return ("link", self.link_id)

    def describe(self) -> str:
        on = f" on {self.iface}" if self.iface else ""
        return f"{self.link_type} link {self.link_id}{on}"

    def current(self) -> int:
        return link_info(self._fd).prog_id

    def swap(self, new_fd: int, old_fd: int) -> None:
        try:
            link_update(self._fd, new_fd, old_fd)
        except LibbpfError as e:
            if e.errno == errnos.EPERM:
                raise Replaced(self.describe(), self.current()) from None
            if e.errno == errnos.ENOLINK:
                raise Replaced(self.describe() + " (detached)", 0) from None
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ClsBpf(Hook):
    """A cls_bpf filter (tc filter ... bpf da, libbpf's bpf_tc_attach): the
    filter at the same handle and priority is replaced.  The kernel has no
    compare-and-swap here, so the expected program is checked just before."""

    kind = "cls_bpf"
    atomic = ("check-then-replace, not a compare-and-swap: the program there checked, then the filter replaced in "
              "place by the kernel (same handle and priority)")

    def __init__(self, iface: str, ifindex: int, direction: str, handle: int, priority: int, netns: int,
                 chain: int = 0) -> None:
        self.iface, self.ifindex, self.direction = iface, ifindex, direction
        self.handle, self.priority, self.netns, self.chain = handle, priority, netns, chain

    def key(self) -> tuple[object, ...]:
        return ("tc", self.netns, self.ifindex, self.direction, self.handle, self.priority)

    def describe(self) -> str:
        chain = f", chain {self.chain}" if self.chain else ""
        return (f"tc {self.direction} filter of {self.iface} (handle {self.handle:#x}, priority {self.priority}"
                f"{chain})")

    def current(self) -> int:
        with entered_netns(self.netns):
            _check_ifindex(self.ifindex, self.iface)
            return tc_query(self.ifindex, self.direction, self.handle, self.priority)

    def swap(self, new_fd: int, old_fd: int) -> None:
        now = self.current()
        if now != prog_id_of_fd(old_fd):
            raise Replaced(self.describe(), now)
        with entered_netns(self.netns):
            tc_replace(self.ifindex, self.direction, self.handle, self.priority, new_fd)


class ProgArraySlot(Hook):
    """A prog_array entry: the program tail calls reach through it."""

    kind = "prog_array"
    atomic = ("check-then-replace, not a compare-and-swap: the slot checked, then rewritten by one map update "
              "(no tail call sees it empty)")

    def __init__(self, map_id: int, index: int, map_name: str = "") -> None:
        self.map_id, self.index, self.map_name = map_id, index, map_name
        self._map = Map.from_fd(map_fd_by_id(map_id), f"map id {map_id}")

    def key(self) -> tuple[object, ...]:
        return ("slot", self.map_id, self.index)

    def describe(self) -> str:
        return f"slot {self.index} of prog_array {self.map_name or self.map_id} (map id {self.map_id})"

    def current(self) -> int:
        value = self._map.lookup(self.index.to_bytes(PROG_ARRAY_KEY_SIZE, "little"))
        return int.from_bytes(value[:PROG_ARRAY_KEY_SIZE], "little") if value else 0

    def swap(self, new_fd: int, old_fd: int) -> None:
        now = self.current()
        if now != prog_id_of_fd(old_fd):
            raise Replaced(self.describe(), now)
        self._map.update(self.index.to_bytes(PROG_ARRAY_KEY_SIZE, "little"),
                         new_fd.to_bytes(PROG_ARRAY_KEY_SIZE, "little"))

    def close(self) -> None:
        self._map.close()


PROG_ARRAY_KEY_SIZE = 4             # keys and (from user space) values are u32: index, program fd/id


def hook_from_dict(data: dict[str, Any]) -> Hook:
    """The hook a record describes (Hook.to_dict's inverse)."""
    fields = {k: v for k, v in data.items() if k != "kind"}
    kinds: dict[str, type[Hook]] = {c.kind: c for c in (XdpNetlink, LinkHook, ClsBpf, ProgArraySlot)}
    cls = kinds.get(str(data.get("kind")))
    if cls is None:
        raise LibbpfError(f"attach point of kind {data.get('kind')!r}", errnos.EINVAL, detail="unknown kind")
    try:
        return cls(**fields)
    except TypeError as e:              # a record of another shape
        raise LibbpfError(f"attach point of kind {data.get('kind')!r}", errnos.EINVAL, detail=str(e)) from None


# --- finding where a program runs ----------------------------------------------

TC_BIN = "tc"
TC_LIST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ClsBpfFilter:
    """A cls_bpf filter as iproute2 lists it."""
    handle: int
    priority: int
    prog_id: int
    prog_name: str
    direct_action: bool
    protocol: str
    chain: int = 0              # tc chain: libbpf's (and so trace's) replace reaches chain 0 only


def tc_filter_listing(iface: str, direction: str) -> list[dict[str, Any]]:
    """Every filter on an interface's clsact hook (any classifier) in this
    thread's network namespace, as iproute2's `tc -json filter show` lists
    them (netlink dumps are iproute2's job); [] without a clsact qdisc."""
    try:
        res = subprocess.run([TC_BIN, "-json", "filter", "show", "dev", iface, direction], capture_output=True,
                             text=True, timeout=TC_LIST_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LibbpfError(f"listing tc filters of {iface} (tc)", errnos.ENOEXEC, detail=str(e)) from None
    if res.returncode != 0:
        if "Cannot find device" in res.stderr:
            raise LibbpfError(f"interface {iface}", errnos.ENODEV)
        return []           # no clsact qdisc: no filters
    try:
        listed = json.loads(res.stdout or "[]")
    except ValueError:
        raise LibbpfError(f"listing tc filters of {iface}", errnos.EPROTO, detail="tc printed no JSON") from None
    return [entry for entry in listed if isinstance(entry, dict)]


def has_clsact(iface: str) -> bool:
    """Does the interface (of this thread's network namespace) have a clsact qdisc?"""
    try:
        res = subprocess.run([TC_BIN, "-json", "qdisc", "show", "dev", iface], capture_output=True, text=True,
                             timeout=TC_LIST_TIMEOUT_S, check=False)
        listed = json.loads(res.stdout or "[]") if res.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError) as e:
        raise LibbpfError(f"listing qdiscs of {iface} (tc)", errnos.ENOEXEC, detail=str(e)) from None
    return any(isinstance(q, dict) and q.get("kind") == "clsact" for q in listed)


def cls_bpf_filters(iface: str, direction: str) -> list[ClsBpfFilter]:
    """The bpf filters on an interface's clsact hook, in priority order."""
    found = []
    for entry in tc_filter_listing(iface, direction):
        options = entry.get("options") or {}
        prog = options.get("prog") or {}
        if entry.get("kind") != "bpf" or "id" not in prog:
            continue            # the chain head iproute2 lists first, or another classifier
        found.append(ClsBpfFilter(handle=int(str(options.get("handle", "0")), 0), priority=int(entry.get("pref", 0)),
                                  prog_id=int(prog["id"]), prog_name=str(prog.get("name", "")),
                                  direct_action=bool(options.get("direct-action")),
                                  protocol=str(entry.get("protocol", "")), chain=int(entry.get("chain", 0))))
    return sorted(found, key=lambda f: (f.priority, f.handle))


def tcx_attach_type(direction: str) -> int:
    return BPF_TCX_INGRESS if direction == "ingress" else BPF_TCX_EGRESS


def links_of_prog(prog_id: int) -> list[LinkInfo]:
    return [link for link in iter_link_infos() if link.prog_id == prog_id]


def xdp_hooks(iface: str) -> list[tuple[Hook, int]]:
    """The XDP program of an interface: by a link or by netlink."""
    attached = xdp_query(iface)
    if not attached.prog_id:
        return []
    index = ifindex(iface)
    for link in links_of_prog(attached.prog_id):
        if link.type == "xdp" and link.ifindex == index:
            return [(LinkHook(link.id, link.type, index, iface), attached.prog_id)]
    if attached.mode == "multi":
        raise LibbpfError(f"XDP on {iface}", errnos.EOPNOTSUPP,
                          detail="programs in several modes at once; detach all but one")
    return [(XdpNetlink(iface, index, attached.mode, attached.mode_flag, netns_inode()), attached.prog_id)]


def tc_hooks(iface: str, direction: str) -> list[tuple[Hook, int]]:
    """The tc programs of an interface's hook: tcx links first (they run
    before cls_bpf filters), then cls_bpf filters in priority order."""
    index = ifindex(iface)
    found: list[tuple[Hook, int]] = []
    for link in iter_link_infos():
        if link.type == "tcx" and link.ifindex == index and link.attach_type == tcx_attach_type(direction):
            found.append((LinkHook(link.id, link.type, index, iface), link.prog_id))
    for filt in cls_bpf_filters(iface, direction):
        found.append((ClsBpf(iface, index, direction, filt.handle, filt.priority, netns_inode(), filt.chain),
                      filt.prog_id))
    return found


def prog_array_slots(prog_id: int) -> list[ProgArraySlot]:
    """Every prog_array entry that holds the program (from user space a
    prog_array lookup returns program ids)."""
    slots = []
    for info in iter_map_infos():
        if info.type_id != BPF_MAP_TYPE_PROG_ARRAY:
            continue
        try:
            with Map.from_fd(map_fd_by_id(info.id), info.name) as prog_array:
                for index in range(info.max_entries):
                    value = prog_array.lookup(index.to_bytes(PROG_ARRAY_KEY_SIZE, "little"))
                    if value and int.from_bytes(value[:PROG_ARRAY_KEY_SIZE], "little") == prog_id:
                        slots.append((info.id, index, info.name))
        except LibbpfError as e:
            if e.errno != errnos.ENOENT:
                raise
    return [ProgArraySlot(map_id, index, name) for map_id, index, name in slots]


def hooks_of_prog(prog_id: int) -> list[tuple[Hook, int]]:
    """Every place program `prog_id` runs that can be swapped: its links,
    XDP and tc hooks of this network namespace's interfaces, prog_array slots."""
    found: list[tuple[Hook, int]] = []
    for link in links_of_prog(prog_id):
        found.append((LinkHook(link.id, link.type, link.ifindex), prog_id))
    linked = {h.link_id for h, _ in found if isinstance(h, LinkHook)}
    for _, iface in socket.if_nameindex():
        for hook, running in xdp_hooks(iface) + [h for d in ("ingress", "egress") for h in tc_hooks(iface, d)]:
            if running == prog_id and not (isinstance(hook, LinkHook) and hook.link_id in linked):
                found.append((hook, running))
            else:
                hook.close()
    found += [(slot, prog_id) for slot in prog_array_slots(prog_id)]
    return found

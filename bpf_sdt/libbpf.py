"""A thin ctypes layer over the system libbpf (`libbpf.so.1`, 1.0 or newer).

Load, attach and read BPF objects the way the rest of the ecosystem does,
without a compiled extension: every call goes straight to libbpf.  The
library is found like libclang is (see clang_plugin/parse.py): the
`BPF_SDT_LIBBPF=/path/libbpf.so.1` environment variable wins, otherwise the
dynamic loader's `libbpf.so.1`.

One class per libbpf concept, each a context manager that releases what it
holds on exit, also when the block raises:

    with BpfObject.open("prog.bpf.o") as obj:
        obj.load()
        with obj.find_program("on_exec").attach(), RingBuffer(obj.find_map("events"), print) as rb:
            rb.poll(100)

`BpfObject.close()` first destroys the links and tc filters made from its
programs, then closes the object (programs and maps).  Every failure raises
:class:`LibbpfError`: errno plus one line saying what failed, with the
verifier's or libbpf's own reason appended.  libbpf's log never reaches
stderr; the full text of what it printed during a failed call is kept in
`LibbpfError.log`.

Struct layouts follow /usr/include/bpf/{libbpf,bpf}.h of libbpf 1.1 and begin
with their `sz` field, so newer libbpf versions accept them unchanged
(tests/test_libbpf.py compares them with the C compiler's view).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errnos
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bpf_sdt.errors import BpfSdtError

# Imported where used, not here: the instruction layer (bpf_sdt.insn, which
# imports the ELF and BTF readers), platform and socket are milliseconds of a
# cached `trace --run`'s start (docs/trace.md, "Start-up") that only
# relocated_program, the va_list size and interface names need.

LIBBPF_ENV = "BPF_SDT_LIBBPF"
LIBBPF_SONAME = "libbpf.so.1"
MIN_LIBBPF_MAJOR = 1          # 1.0 "strict mode": NULL + errno, negative error codes

_c_int, _c_u32, _c_u64, _c_size = ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t
_c_ptr, _c_str = ctypes.c_void_p, ctypes.c_char_p


# --- errors -----------------------------------------------------------------

LIBBPF_ERRNO_START = 4000     # libbpf's own error codes (LIBBPF_ERRNO__FORMAT...) start here
_STRERROR_BUF = 128
_REASON_LINES = 2             # the verifier states its reason in the last line or two
_VERIFIER_LOG = re.compile(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", re.S)
# Verifier log lines that are not the reason: totals, instruction dumps
# ("12: (61) r2 = ..."), source annotations ("; x = 1 @ f.c:3"), register states.
_NOT_A_REASON = re.compile(r"^(processed \d+ insns|verification time|stack depth|\d+:|; |from \d+ to \d+|\s*$)")
# libbpf lines that only restate that something above failed.
_WRAP_UP = re.compile(r"failed to load object|failed to load: -|BPF program load failed|-- (BEGIN|END) PROG")
_PROG_NAME = re.compile(r"prog '([^']+)': -- BEGIN PROG LOAD LOG")


class LibbpfError(BpfSdtError):
    """A libbpf call failed.  `errno` is the positive error code (libbpf's own
    codes are >= 4000), `log` what libbpf printed while the call ran."""

    def __init__(self, what: str, err: int, log: Sequence[str] = (), detail: str | None = None) -> None:
        self.what = what
        self.errno = err
        self.log = "".join(log)
        text = strerror(err)
        reason = detail if detail is not None else _reason(self.log)
        if reason.endswith(text):
            reason = ""   # libbpf only repeated what the errno says
        super().__init__(f"{what}: {text}" + (f" ({reason})" if reason else ""))


def strerror(err: int) -> str:
    """errno text, libbpf's for its own codes."""
    if err >= LIBBPF_ERRNO_START:
        buf = ctypes.create_string_buffer(_STRERROR_BUF)
        _lib().libbpf_strerror(err, buf, _STRERROR_BUF)
        return buf.value.decode(errors="replace")
    return os.strerror(err)


def _reason(log: str) -> str:
    """The meaningful line(s) of libbpf's output: the verifier's verdict (the
    last lines of its log) when a program was rejected, else libbpf's first
    specific warning (later ones tend to be consequences of it)."""
    blocks = list(_VERIFIER_LOG.finditer(log))
    if blocks:
        reason: list[str] = []
        for line in reversed(blocks[-1].group(1).splitlines()):
            if _NOT_A_REASON.match(line):
                if reason:
                    break
                continue
            reason.insert(0, line.strip())
            if len(reason) == _REASON_LINES:
                break
        prog = _PROG_NAME.search(log[: blocks[-1].end()])
        return f"verifier: {'prog ' + repr(prog.group(1)) + ': ' if prog else ''}{'; '.join(reason)}"
    lines = [ln.removeprefix("libbpf: ").strip() for ln in log.splitlines()]
    specific = [ln for ln in lines if ln and not _WRAP_UP.search(ln)]
    return specific[0] if specific else ""


# --- the library and its log --------------------------------------------------

# Signatures of every libbpf function used here: name -> (restype, argtypes).
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_major_version": (_c_u32, []),
    "libbpf_version_string": (_c_str, []),
    "libbpf_strerror": (_c_int, [_c_int, _c_ptr, _c_size]),
    "libbpf_set_print": (_c_ptr, [_c_ptr]),
    "libbpf_num_possible_cpus": (_c_int, []),
    "libbpf_bpf_prog_type_str": (_c_str, [_c_int]),
    "libbpf_bpf_map_type_str": (_c_str, [_c_int]),
    "bpf_object__open_file": (_c_ptr, [_c_str, _c_ptr]),
    "bpf_object__load": (_c_int, [_c_ptr]),
    "bpf_object__close": (None, [_c_ptr]),
    "bpf_object__name": (_c_str, [_c_ptr]),
    "bpf_object__next_program": (_c_ptr, [_c_ptr, _c_ptr]),
    "bpf_object__next_map": (_c_ptr, [_c_ptr, _c_ptr]),
    "bpf_program__name": (_c_str, [_c_ptr]),
    "bpf_program__section_name": (_c_str, [_c_ptr]),
    "bpf_program__type": (_c_int, [_c_ptr]),
    "bpf_program__expected_attach_type": (_c_int, [_c_ptr]),
    "bpf_program__insns": (_c_ptr, [_c_ptr]),
    "bpf_program__insn_cnt": (_c_size, [_c_ptr]),
    "libbpf_register_prog_handler": (_c_int, [_c_str, _c_int, _c_int, _c_ptr]),
    "libbpf_unregister_prog_handler": (_c_int, [_c_int]),
    "bpf_program__fd": (_c_int, [_c_ptr]),
    "bpf_program__attach": (_c_ptr, [_c_ptr]),
    "bpf_program__attach_xdp": (_c_ptr, [_c_ptr, _c_int]),
    "bpf_link__destroy": (_c_int, [_c_ptr]),
    "bpf_link__fd": (_c_int, [_c_ptr]),
    "bpf_map__name": (_c_str, [_c_ptr]),
    "bpf_map__fd": (_c_int, [_c_ptr]),
    "bpf_map__type": (_c_int, [_c_ptr]),
    "bpf_map__key_size": (_c_u32, [_c_ptr]),
    "bpf_map__value_size": (_c_u32, [_c_ptr]),
    "bpf_map__max_entries": (_c_u32, [_c_ptr]),
    "bpf_map__pin": (_c_int, [_c_ptr, _c_str]),
    "bpf_map__unpin": (_c_int, [_c_ptr, _c_str]),
    "bpf_map__pin_path": (_c_str, [_c_ptr]),
    "bpf_map__set_pin_path": (_c_int, [_c_ptr, _c_str]),
    "bpf_map_lookup_elem": (_c_int, [_c_int, _c_ptr, _c_ptr]),
    "bpf_map_update_elem": (_c_int, [_c_int, _c_ptr, _c_ptr, _c_u64]),
    "bpf_map_get_next_key": (_c_int, [_c_int, _c_ptr, _c_ptr]),
    "bpf_obj_get": (_c_int, [_c_str]),
    "bpf_obj_pin": (_c_int, [_c_int, _c_str]),
    "bpf_obj_get_info_by_fd": (_c_int, [_c_int, _c_ptr, ctypes.POINTER(_c_u32)]),
    "bpf_prog_test_run_opts": (_c_int, [_c_int, _c_ptr]),
    "bpf_tc_hook_create": (_c_int, [_c_ptr]),
    "bpf_tc_hook_destroy": (_c_int, [_c_ptr]),
    "bpf_tc_attach": (_c_int, [_c_ptr, _c_ptr]),
    "bpf_tc_detach": (_c_int, [_c_ptr, _c_ptr]),
    "bpf_prog_get_next_id": (_c_int, [_c_u32, ctypes.POINTER(_c_u32)]),
    "bpf_map_get_next_id": (_c_int, [_c_u32, ctypes.POINTER(_c_u32)]),
    "bpf_link_get_next_id": (_c_int, [_c_u32, ctypes.POINTER(_c_u32)]),
    "bpf_prog_get_fd_by_id": (_c_int, [_c_u32]),
    "bpf_map_get_fd_by_id": (_c_int, [_c_u32]),
    "bpf_btf_get_fd_by_id": (_c_int, [_c_u32]),
    "bpf_link_get_fd_by_id": (_c_int, [_c_u32]),
    "bpf_map__reuse_fd": (_c_int, [_c_ptr, _c_int]),
    "bpf_map_create": (_c_int, [_c_int, _c_str, _c_u32, _c_u32, _c_u32, _c_ptr]),
    "bpf_program__set_autoload": (_c_int, [_c_ptr, ctypes.c_bool]),
    "bpf_link_update": (_c_int, [_c_int, _c_int, _c_ptr]),
    "bpf_xdp_attach": (_c_int, [_c_int, _c_int, _c_u32, _c_ptr]),
    "bpf_xdp_query": (_c_int, [_c_int, _c_int, _c_ptr]),
    "bpf_tc_query": (_c_int, [_c_ptr, _c_ptr]),
    "ring_buffer__new": (_c_ptr, [_c_int, _c_ptr, _c_ptr, _c_ptr]),
    "ring_buffer__poll": (_c_int, [_c_ptr, _c_int]),
    "ring_buffer__consume": (_c_int, [_c_ptr]),
    "ring_buffer__epoll_fd": (_c_int, [_c_ptr]),
    "ring_buffer__free": (None, [_c_ptr]),
}


def libbpf_path() -> str:
    """The libbpf that will be loaded: $BPF_SDT_LIBBPF, else the loader's libbpf.so.1."""
    return os.environ.get(LIBBPF_ENV) or LIBBPF_SONAME


@functools.cache
def _lib() -> ctypes.CDLL:
    """libbpf, every function typed, its log routed into :class:`LibbpfError`."""
    path = libbpf_path()
    if os.environ.get(LIBBPF_ENV) and not Path(path).is_file():
        raise LibbpfError(f"{LIBBPF_ENV}={path}", errnos.ENOENT)
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        raise LibbpfError(f"loading {path}", errnos.ELIBACC,
                          detail=f"{e}; install libbpf1 or set {LIBBPF_ENV}") from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise LibbpfError(path, errnos.ENOSYS, detail=f"no symbol {name}; libbpf 1.0 or newer needed") from None
        fn.restype, fn.argtypes = restype, argtypes
    if lib.libbpf_major_version() < MIN_LIBBPF_MAJOR:
        raise LibbpfError(path, errnos.ENOSYS,
                          detail=f"libbpf {lib.libbpf_version_string().decode()}; 1.0 or newer needed")
    lib.libbpf_set_print(_PRINT_CALLBACK)
    return lib


def libbpf_version() -> str:
    """The loaded libbpf's version, e.g. "v1.1"."""
    return str(_lib().libbpf_version_string().decode())


# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list ap).
_PRINT_FN = ctypes.CFUNCTYPE(_c_int, _c_int, _c_ptr, _c_ptr)
_LIBBPF_DEBUG = 2             # enum libbpf_print_level: WARN, INFO, DEBUG
# A va_list parameter reaches the callback as a pointer on x86-64 (an array
# type, decayed) and on arm64 (a struct over 16 bytes, passed by reference).
# va_copy is a byte copy of the pointee there, which lets us size the message
# with one vsnprintf and print it with a second.
_VA_LIST_SIZES = {"x86_64": 24, "amd64": 24, "aarch64": 32, "arm64": 32}
_VA_LIST_SIZE = _VA_LIST_SIZES.get(os.uname().machine.lower())     # platform.machine(), without importing it
_UNSIZED_MESSAGE_MAX = 1 << 20   # elsewhere: one pass, a message's first MiB
_tls = threading.local()          # .lines: where the running call's log goes


@functools.cache
def _vsnprintf() -> Any:
    fn = ctypes.CDLL(None).vsnprintf
    fn.restype, fn.argtypes = _c_int, [_c_ptr, _c_size, _c_ptr, _c_ptr]
    return fn


def _vformat(fmt: int, ap: int) -> str:
    """printf(fmt, ap) as libc does it; consumes `ap`."""
    vsnprintf = _vsnprintf()
    size = _UNSIZED_MESSAGE_MAX
    if _VA_LIST_SIZE:
        ap_copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        ctypes.memmove(ap_copy, ap, _VA_LIST_SIZE)
        size = max(vsnprintf(None, 0, fmt, ap_copy), 0) + 1
    buf = ctypes.create_string_buffer(size)
    vsnprintf(buf, size, fmt, ap)
    return buf.value.decode(errors="replace")


def _on_libbpf_print(level: int, fmt: int, ap: int) -> int:
    lines = getattr(_tls, "lines", None)
    if lines is None or level >= _LIBBPF_DEBUG:
        return 0    # not inside one of our calls, or chatter: dropped unformatted
    with contextlib.suppress(Exception):   # an exception must never unwind into C
        lines.append(_vformat(fmt, ap))
    return 0


_PRINT_CALLBACK = _PRINT_FN(_on_libbpf_print)   # module-level: libbpf keeps the pointer forever


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Collects what libbpf prints on this thread while the block runs."""
    outer = getattr(_tls, "lines", None)
    lines: list[str] = []
    _tls.lines = lines
    try:
        yield lines
    finally:
        _tls.lines = outer


def _check(what: str, fn: Callable[..., Any], *args: Any) -> int:
    """Calls a libbpf function returning an int; negative is -errno."""
    with _captured() as log:
        ret = int(fn(*args))
    return _ok(what, ret, log)


@contextlib.contextmanager
def printing_off() -> Iterator[None]:
    """libbpf prints nothing while the block runs (its print callback is
    process-wide: a call that wants its log, LibbpfError's reason, must not
    run meanwhile).  For a load in a thread (LoadedObject.load(log=False))
    beside Python work in this one: each of libbpf's messages would call
    into Python and wait for the GIL that work holds, up to a switch
    interval (5 ms) each time; the callback is switched here, in the
    thread doing that work, because a ctypes call in the loading thread
    would wait so too, once for its return."""
    lib = _lib()
    lib.libbpf_set_print(None)
    try:
        yield
    finally:
        lib.libbpf_set_print(_PRINT_CALLBACK)


def _ok(what: str, ret: int, log: Sequence[str] = ()) -> int:
    """`ret` if it is not a negative error code."""
    if ret < 0:
        raise LibbpfError(what, -ret, log)
    return ret


def _check_ptr(what: str, fn: Callable[..., Any], *args: Any) -> int:
    """Calls a libbpf function returning a pointer; NULL means errno is set."""
    with _captured() as log:
        ctypes.set_errno(0)
        ptr = fn(*args)
        err = ctypes.get_errno()
    if not ptr:
        raise LibbpfError(what, err or errnos.EINVAL, log)
    return int(ptr)


def _name(raw: bytes | None) -> str:
    return raw.decode(errors="replace") if raw else ""


# --- option structs (libbpf 1.1 layouts, `sz` first) ---------------------------

class _OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts"""
    _fields_ = [("sz", _c_size), ("object_name", _c_str), ("relaxed_maps", ctypes.c_bool),
                ("pin_root_path", _c_str), ("_attach_prog_fd", _c_u32), ("kconfig", _c_str),
                ("btf_custom_path", _c_str), ("kernel_log_buf", _c_ptr), ("kernel_log_size", _c_size),
                ("kernel_log_level", _c_u32)]


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts"""
    _fields_ = [("sz", _c_size), ("data_in", _c_ptr), ("data_out", _c_ptr),
                ("data_size_in", _c_u32), ("data_size_out", _c_u32),
                ("ctx_in", _c_ptr), ("ctx_out", _c_ptr), ("ctx_size_in", _c_u32), ("ctx_size_out", _c_u32),
                ("retval", _c_u32), ("repeat", _c_int), ("duration", _c_u32), ("flags", _c_u32),
                ("cpu", _c_u32), ("batch_size", _c_u32)]


class _TcHook(ctypes.Structure):
    """struct bpf_tc_hook"""
    _fields_ = [("sz", _c_size), ("ifindex", _c_int), ("attach_point", _c_int), ("parent", _c_u32)]


class _TcOpts(ctypes.Structure):
    """struct bpf_tc_opts"""
    _fields_ = [("sz", _c_size), ("prog_fd", _c_int), ("flags", _c_u32), ("prog_id", _c_u32),
                ("handle", _c_u32), ("priority", _c_u32)]


# libbpf_prog_prepare_load_fn_t: int (*)(struct bpf_program *, struct bpf_prog_load_opts *, long cookie)
_PREPARE_LOAD_FN = ctypes.CFUNCTYPE(_c_int, _c_ptr, _c_ptr, ctypes.c_long)


class _ProgHandlerOpts(ctypes.Structure):
    """struct libbpf_prog_handler_opts"""
    _fields_ = [("sz", _c_size), ("cookie", ctypes.c_long), ("prog_setup_fn", _c_ptr),
                ("prog_prepare_load_fn", _PREPARE_LOAD_FN), ("prog_attach_fn", _c_ptr)]


class _MapInfo(ctypes.Structure):
    """The leading fields of the kernel's struct bpf_map_info (linux/bpf.h); the
    kernel fills as much as info_len says, so a prefix is always accepted."""
    _fields_ = [("type", _c_u32), ("id", _c_u32), ("key_size", _c_u32), ("value_size", _c_u32),
                ("max_entries", _c_u32), ("map_flags", _c_u32), ("name", ctypes.c_char * 16),
                ("ifindex", _c_u32), ("btf_vmlinux_value_type_id", _c_u32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("btf_id", _c_u32), ("btf_key_type_id", _c_u32),
                ("btf_value_type_id", _c_u32)]


def _opts(struct: type[ctypes.Structure], **fields: Any) -> Any:
    return struct(sz=ctypes.sizeof(struct), **fields)


# --- objects, programs, maps -------------------------------------------------

# libbpf's program handlers are process-wide and bind to an object's programs
# when it is opened: no object opens while relocated_program() has one
# registered (a re-entrant lock: it opens objects itself).
_HANDLER_LOCK = threading.RLock()
# libbpf 1.1 frees its handler array when the last handler goes and keeps the
# freed pointer, so the next registration corrupts the heap (measured: glibc
# aborts on the second call).  One handler for a section no object has stays
# registered for the process's life, and the count never reaches zero.
_ANCHOR_SECTION = b"bpf-sdt/no-program-has-this-section"
_PROG_TYPE_SOCKET_FILTER = 1


@functools.cache
def _anchor_handler() -> int:
    return _check("registering bpf-sdt's anchor program handler", _lib().libbpf_register_prog_handler,
                  _ANCHOR_SECTION, _PROG_TYPE_SOCKET_FILTER, 0, ctypes.byref(_opts(_ProgHandlerOpts)))

class LoadedObject:
    """An opened BPF ELF object (struct bpf_object).  Use as a context manager."""

    def __init__(self, ptr: int, path: str) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self.name = _name(_lib().bpf_object__name(ptr))
        self._attachments: list[Link | TcFilter] = []
        self.programs = [LoadedProgram(self, p) for p in self._walk("bpf_object__next_program")]
        self.maps = [Map(self, m) for m in self._walk("bpf_object__next_map")]

    @classmethod
    def open(cls, path: str | os.PathLike[str], pin_root_path: str | os.PathLike[str] | None = None,
             object_name: str | None = None, core_btf: str | os.PathLike[str] | None = None) -> LoadedObject:
        """Opens (parses) an object; maps pinned by name go under `pin_root_path`
        (a bpffs directory; libbpf's default is /sys/fs/bpf).  ``core_btf``:
        the BTF its CO-RE relocations are resolved against instead of the
        kernel's (btf_custom_path; bpf_sdt.core_btf)."""
        path = os.fspath(path)
        opts = _opts(_OpenOpts, object_name=object_name.encode() if object_name else None,
                     pin_root_path=os.fsencode(pin_root_path) if pin_root_path else None,
                     btf_custom_path=os.fsencode(core_btf) if core_btf else None)
        lib = _lib()
        with _HANDLER_LOCK:
            ptr = _check_ptr(f"opening {path}", lib.bpf_object__open_file, os.fsencode(path), ctypes.byref(opts))
        return cls(ptr, path)

    def _walk(self, next_fn: str) -> Iterator[int]:
        fn, item = getattr(_lib(), next_fn), None
        while item := fn(self._ptr, item):
            yield item

    def _live(self) -> int:
        if self._ptr is None:
            raise LibbpfError(self.path, errnos.EBADF, detail="object closed")
        return self._ptr

    def load(self, log: bool = True) -> LoadedObject:
        """Creates the maps and loads every program into the kernel.  On failure
        the object is closed (libbpf cannot retry a failed load).  ``log``
        false: what libbpf prints is not kept, so the error of a failure has
        neither libbpf's nor the verifier's reason (a fresh open loaded with
        its log has); with :func:`printing_off` around it, none of the
        hundreds of debug lines of a load with CO-RE relocations calls into
        Python, for a load in a thread beside Python work."""
        what = f"loading {self.path}"
        try:
            if log:
                _check(what, _lib().bpf_object__load, self._live())
            else:
                _ok(what, int(_lib().bpf_object__load(self._live())))
        except LibbpfError:
            self.close()
            raise
        return self

    def find_program(self, name: str) -> LoadedProgram:
        for prog in self.programs:
            if prog.name == name:
                return prog
        have = ", ".join(p.name for p in self.programs) or "none"
        raise LibbpfError(f"{self.path}: program {name!r}", errnos.ENOENT, detail=f"programs: {have}")

    def find_map(self, name: str) -> Map:
        for m in self.maps:
            if m.name == name:
                return m
        have = ", ".join(m.name for m in self.maps) or "none"
        raise LibbpfError(f"{self.path}: map {name!r}", errnos.ENOENT, detail=f"maps: {have}")

    def close(self) -> None:
        """Detaches everything attached from this object (newest first), then
        unloads its programs and maps.  Idempotent; pinned maps stay pinned."""
        errors: list[LibbpfError] = []
        while self._attachments:
            try:
                self._attachments[-1].destroy()
            except LibbpfError as e:
                errors.append(e)
        if self._ptr is not None:
            _lib().bpf_object__close(self._ptr)
            self._ptr = None
        if errors:
            raise errors[0]

    def __enter__(self) -> LoadedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RelocatedProgram(NamedTuple):
    name: str
    type: str                   # libbpf's name for the type it gives the program
    instructions: bytes


def relocated_program(path: str | os.PathLike[str], prog_name: str, object_name: str | None = None,
                      prepare: Callable[[LoadedObject], object] | None = None) -> RelocatedProgram:
    """The instructions libbpf hands the kernel for `prog_name` of `path`:
    maps, subprograms and CO-RE relocated, map fds in their ld_imm64s, but
    never loaded (no verifier run).  A handler registered for the program's
    section copies them in its prepare-load callback, which libbpf calls just
    before the load syscall, and cancels the load there.  `prepare(object)`
    sets the opened object up first (maps to reuse, as the real load would);
    the object's other programs are not loaded.  The maps a load would create
    are created, and freed again on return."""
    from bpf_sdt.insn import INSN_SIZE

    path = os.fspath(path)
    with LoadedObject.open(path, object_name=object_name) as probe:
        wanted = probe.find_program(prog_name)
        section, type_id, attach_type = wanted.section, wanted.type_id, wanted.expected_attach_type
        type_name = wanted.type
    lib = _lib()
    copied: list[bytes] = []

    def copy_and_cancel(prog: int, _load_opts: int, _cookie: int) -> int:
        with contextlib.suppress(Exception):   # an exception must never unwind into C
            if _name(lib.bpf_program__name(prog)) == prog_name:
                copied.append(ctypes.string_at(lib.bpf_program__insns(prog),
                                               lib.bpf_program__insn_cnt(prog) * INSN_SIZE))
        return -errnos.ECANCELED

    callback = _PREPARE_LOAD_FN(copy_and_cancel)     # referenced until the handler is gone
    handler_opts = _opts(_ProgHandlerOpts, prog_prepare_load_fn=callback)
    what = f"relocating prog {prog_name!r} of {path}"
    with _HANDLER_LOCK:
        _anchor_handler()
        handler = _check(f"{what}: registering a handler for section {section!r}",
                         lib.libbpf_register_prog_handler, section.encode(), type_id, attach_type,
                         ctypes.byref(handler_opts))
        try:
            with LoadedObject.open(path, object_name=object_name) as bpf:
                for prog in bpf.programs:
                    if prog.name != prog_name:
                        prog.set_autoload(False)
                if prepare is not None:
                    prepare(bpf)
                with _captured() as log:
                    ret = int(lib.bpf_object__load(bpf._live()))
        finally:
            # After the close: the object's program points at the handler's entry.
            lib.libbpf_unregister_prog_handler(handler)
    if not copied:
        raise LibbpfError(what, -ret if ret < 0 else errnos.ENOEXEC, log,
                          detail=None if ret < 0 else "libbpf did not reach the program's load")
    return RelocatedProgram(prog_name, type_name, copied[0])


class RunResult(NamedTuple):
    """One BPF_PROG_TEST_RUN: the program's return value, the packet as the
    program left it, and the mean run time per repetition."""
    retval: int
    data: bytes
    duration_ns: int


TC_INGRESS, TC_EGRESS = 1, 2                   # enum bpf_tc_attach_point
_TC_DIRECTIONS = {"ingress": TC_INGRESS, "egress": TC_EGRESS}
TEST_RUN_DATA_SLACK = 4096    # room for a program that grows the packet (at most a page for XDP)


class LoadedProgram:
    """A program of a BpfObject (struct bpf_program); valid while the object is open."""

    def __init__(self, obj: LoadedObject, ptr: int) -> None:
        lib = _lib()
        self._obj, self._ptr = obj, ptr
        self.name = _name(lib.bpf_program__name(ptr))
        self.section = _name(lib.bpf_program__section_name(ptr))
        self.type_id = int(lib.bpf_program__type(ptr))
        self.type = _name(lib.libbpf_bpf_prog_type_str(self.type_id)) or "unknown"
        self.expected_attach_type = int(lib.bpf_program__expected_attach_type(ptr))

    def __repr__(self) -> str:
        return f"<Program {self.name} section={self.section!r} type={self.type}>"

    @property
    def fd(self) -> int:
        """The loaded program's fd (owned by the object)."""
        self._obj._live()
        fd = int(_lib().bpf_program__fd(self._ptr))
        if fd < 0:
            raise LibbpfError(f"prog {self.name!r} of {self._obj.path}", errnos.EBADF, detail="not loaded")
        return fd

    def set_autoload(self, load: bool) -> None:
        """Before load: whether BpfObject.load() loads this program."""
        _check(f"autoload of prog {self.name!r}", _lib().bpf_program__set_autoload, self._ptr, load)

    def attach(self) -> Link:
        """Attaches as the section name says (tp_btf/, raw_tp/, tp/, ...)."""
        self._obj._live()
        return self._link(_check_ptr(f"attaching prog {self.name!r} (section {self.section!r})",
                                     _lib().bpf_program__attach, self._ptr))

    def attach_xdp(self, interface: int | str) -> Link:
        """Attaches to an interface (index or name) of the caller's network namespace."""
        self._obj._live()
        index = ifindex(interface)
        return self._link(_check_ptr(f"attaching XDP prog {self.name!r} to {interface}",
                                     _lib().bpf_program__attach_xdp, self._ptr, index))

    def attach_tc(self, interface: int | str, direction: str = "ingress", priority: int = 0,
                  handle: int = 0) -> TcFilter:
        """Attaches as a tc (clsact) filter, direction "ingress" or "egress"."""
        filt = TcFilter(self, interface, direction, priority, handle)
        self._obj._attachments.append(filt)
        return filt

    def _link(self, ptr: int) -> Link:
        link = Link(ptr, self._obj, f"prog {self.name!r}")
        self._obj._attachments.append(link)
        return link

    def test_run(self, data: bytes | None, repeat: int = 1, ctx: bytes | None = None) -> RunResult:
        """Runs the program on `data` in the kernel (BPF_PROG_TEST_RUN), `repeat` times.

        ``data=None`` passes no packet at all and ``repeat`` must then be 1: the
        kernel refuses both for raw tracepoints, which run on ``ctx`` alone."""
        if data is None:
            opts = _opts(_TestRunOpts)
            data_out = ctypes.create_string_buffer(0)
        else:
            data_in = ctypes.create_string_buffer(bytes(data), len(data))
            data_out = ctypes.create_string_buffer(len(data) + TEST_RUN_DATA_SLACK)
            opts = _opts(_TestRunOpts, data_in=ctypes.addressof(data_in), data_size_in=len(data),
                         data_out=ctypes.addressof(data_out), data_size_out=len(data_out), repeat=repeat)
        if ctx is not None:
            ctx_in = ctypes.create_string_buffer(bytes(ctx), len(ctx))
            opts.ctx_in, opts.ctx_size_in = ctypes.addressof(ctx_in), len(ctx)
        _check(f"test run of prog {self.name!r}", _lib().bpf_prog_test_run_opts, self.fd, ctypes.byref(opts))
        return RunResult(opts.retval, data_out.raw[: opts.data_size_out], opts.duration)


_PERCPU_MAP_TYPES = {5, 6, 10, 21}   # BPF_MAP_TYPE_{PERCPU_HASH,PERCPU_ARRAY,LRU_PERCPU_HASH,PERCPU_CGROUP_STORAGE}
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2   # map update flags


class Map:
    """A BPF map: one of a BpfObject's (fd owned by the object), or one opened
    from its pin with :meth:`open_pinned` (fd owned here, closed by close())."""

    def __init__(self, obj: LoadedObject | None, ptr: int | None, *, fd: int = -1, name: str = "",
                 type_id: int = 0, key_size: int = 0, value_size: int = 0, max_entries: int = 0) -> None:
        self._obj, self._ptr, self._fd = obj, ptr, fd
        if ptr is not None:
            lib = _lib()
            name, type_id = _name(lib.bpf_map__name(ptr)), lib.bpf_map__type(ptr)
            key_size, value_size = lib.bpf_map__key_size(ptr), lib.bpf_map__value_size(ptr)
            max_entries = lib.bpf_map__max_entries(ptr)
        self.name, self.type_id = name, type_id
        self.type = _name(_lib().libbpf_bpf_map_type_str(type_id)) or "unknown"
        self.key_size, self.value_size, self.max_entries = key_size, value_size, max_entries

    @classmethod
    def open_pinned(cls, path: str | os.PathLike[str]) -> Map:
        """Opens a map pinned on bpffs (by another loader, or by us)."""
        return cls.from_fd(obj_get(path), os.fspath(path))

    @classmethod
    def from_fd(cls, fd: int, what: str = "") -> Map:
        """A map of an fd this Map then owns (closed by close(), also when the
        query fails): a pin's, or one opened by id."""
        path = what or f"fd {fd}"
        info = _MapInfo()
        size = _c_u32(ctypes.sizeof(info))
        try:
            kind = bpf_fd_kind(fd)      # the info query would read a program's info as a map's
            if kind != "map":
                raise LibbpfError(f"opening map {path}", errnos.EINVAL, detail=f"a pinned {kind}, not a map")
            _check(f"querying map {path}", _lib().bpf_obj_get_info_by_fd, fd, ctypes.byref(info),
                   ctypes.byref(size))
        except LibbpfError:
            os.close(fd)
            raise
        return cls(None, None, fd=fd, name=_name(info.name), type_id=info.type, key_size=info.key_size,
                   value_size=info.value_size, max_entries=info.max_entries)

    def __repr__(self) -> str:
        return f"<Map {self.name} type={self.type} key={self.key_size} value={self.value_size}>"

    @property
    def fd(self) -> int:
        if self._ptr is None:
            if self._fd < 0:
                raise LibbpfError(f"map {self.name!r}", errnos.EBADF, detail="closed")
            return self._fd
        assert self._obj is not None
        self._obj._live()
        fd = int(_lib().bpf_map__fd(self._ptr))
        if fd < 0:
            raise LibbpfError(f"map {self.name!r} of {self._obj.path}", errnos.EBADF, detail="not created until load")
        return fd

    def reuse_fd(self, fd: int) -> None:
        """Before load: use the existing kernel map `fd` instead of creating
        one (libbpf dups the fd and reads the map's parameters from the
        kernel; an internal map reused this way is not re-initialised)."""
        if self._ptr is None:
            raise LibbpfError(f"map {self.name!r}", errnos.EINVAL, detail="only an object's map can reuse a map")
        _check(f"reusing a kernel map for map {self.name!r}", _lib().bpf_map__reuse_fd, self._ptr, fd)

    @property
    def pin_path(self) -> str | None:
        """Where libbpf pins (or pinned) this object map, if anywhere."""
        if self._ptr is None:
            return None
        return _name(_lib().bpf_map__pin_path(self._ptr)) or None

    def no_pin(self) -> None:
        """Before load: libbpf neither pins this map nor reuses a pin (a
        LIBBPF_PIN_BY_NAME map otherwise does both, under the pin root)."""
        if self._ptr is not None:
            _check(f"unsetting the pin path of map {self.name!r}", _lib().bpf_map__set_pin_path, self._ptr, None)

    def pin(self, path: str | os.PathLike[str]) -> None:
        what = f"pinning map {self.name!r} at {os.fspath(path)}"
        if self._ptr is not None:
            _check(what, _lib().bpf_map__pin, self._ptr, os.fsencode(path))
        else:
            _check(what, _lib().bpf_obj_pin, self.fd, os.fsencode(path))

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        """Removes the pin at `path` (default: the object map's pin_path)."""
        what = f"unpinning map {self.name!r}"
        if self._ptr is not None:
            _check(what, _lib().bpf_map__unpin, self._ptr, os.fsencode(path) if path is not None else None)
            return
        if path is None:
            raise LibbpfError(what, errnos.EINVAL, detail="a pinned map needs the path to unpin")
        try:
            os.unlink(path)
        except OSError as e:
            raise LibbpfError(f"{what} at {os.fspath(path)}", e.errno or errnos.EIO) from None

    @property
    def _value_buffer_size(self) -> int:
        """Per-CPU maps hold one 8-byte-aligned value per possible CPU."""
        if self.type_id in _PERCPU_MAP_TYPES:
            return (self.value_size + 7) // 8 * 8 * int(_lib().libbpf_num_possible_cpus())
        return self.value_size

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.key_size:
            raise LibbpfError(f"map {self.name!r}", errnos.EINVAL,
                              detail=f"key of {len(key)} bytes, map keys have {self.key_size}")
        return ctypes.create_string_buffer(bytes(key), len(key))

    def lookup(self, key: bytes) -> bytes | None:
        """The value at `key` (all CPUs' values concatenated for per-CPU maps), None if absent."""
        value = ctypes.create_string_buffer(self._value_buffer_size)
        ret = _lib().bpf_map_lookup_elem(self.fd, self._key(key), value)
        if ret == -errnos.ENOENT:
            return None
        _ok(f"looking up in map {self.name!r}", ret)
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self._value_buffer_size:
            raise LibbpfError(f"map {self.name!r}", errnos.EINVAL,
                              detail=f"value of {len(value)} bytes, map values have {self._value_buffer_size}")
        _check(f"updating map {self.name!r}", _lib().bpf_map_update_elem, self.fd, self._key(key),
               ctypes.create_string_buffer(bytes(value), len(value)), flags)

    def keys(self) -> Iterator[bytes]:
        """Every key, in the kernel's order; at most max_entries of them, so a
        map changing underneath cannot make this loop forever."""
        fd, lib = self.fd, _lib()
        key, nxt = None, ctypes.create_string_buffer(self.key_size)
        for _ in range(self.max_entries):
            ret = lib.bpf_map_get_next_key(fd, key, nxt)
            if ret == -errnos.ENOENT:
                return
            _ok(f"iterating map {self.name!r}", ret)
            yield nxt.raw
            key = ctypes.create_string_buffer(nxt.raw, self.key_size)

    __iter__ = keys

    def close(self) -> None:
        """Closes a pinned map's fd; object maps are closed with their object."""
        if self._ptr is None and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FD_KINDS = (("map_type:", "map"), ("prog_type:", "program"), ("link_type:", "link"), ("btf_id:", "BTF object"))


def bpf_fd_kind(fd: int) -> str:
    """"map", "program", "link" or "BTF object": what a BPF fd refers to, from
    the kernel's fdinfo (each kind has its own fields there)."""
    try:
        info = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return "map"                # no procfs: let the kernel's info query decide
    for field, kind in _FD_KINDS:
        if f"\n{field}" in f"\n{info}":
            return kind
    return "BPF object of an unknown kind"


def obj_get(path: str | os.PathLike[str]) -> int:
    """An fd for a pinned BPF object (bpf_obj_get); the caller closes it."""
    return _check(f"opening pinned {os.fspath(path)}", _lib().bpf_obj_get, os.fsencode(path))


def map_create(type_id: int, name: str, key_size: int, value_size: int, max_entries: int) -> Map:
    """A new map outside any object (the returned Map owns its fd)."""
    fd = _check(f"creating map {name!r}", _lib().bpf_map_create, type_id, name.encode(), key_size, value_size,
                max_entries, None)
    return Map.from_fd(fd, name)


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """Pins the BPF object behind `fd` (program, map or link) at `path` on bpffs."""
    _check(f"pinning at {os.fspath(path)}", _lib().bpf_obj_pin, fd, os.fsencode(path))


# --- replacing what runs (compare-and-swap where the kernel offers it) ----------

XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE = 1 << 1, 1 << 2, 1 << 3
XDP_FLAGS_REPLACE = 1 << 4
# bpf_xdp_query's attach_mode (XDP_ATTACHED_*) -> the flag that attaches in that mode.
XDP_ATTACHED_MODES = {1: ("native", XDP_FLAGS_DRV_MODE), 2: ("generic", XDP_FLAGS_SKB_MODE),
                      3: ("offload", XDP_FLAGS_HW_MODE)}
XDP_ATTACHED_MULTI = 4
BPF_F_REPLACE = 1 << 2          # bpf_link_update: fail unless old_prog_fd is the current program
BPF_TC_F_REPLACE = 1


class _XdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts"""
    _fields_ = [("sz", _c_size), ("old_prog_fd", _c_int)]


class _XdpQueryOpts(ctypes.Structure):
    """struct bpf_xdp_query_opts"""
    _fields_ = [("sz", _c_size), ("prog_id", _c_u32), ("drv_prog_id", _c_u32), ("hw_prog_id", _c_u32),
                ("skb_prog_id", _c_u32), ("attach_mode", ctypes.c_uint8)]


class _LinkUpdateOpts(ctypes.Structure):
    """struct bpf_link_update_opts"""
    _fields_ = [("sz", _c_size), ("flags", _c_u32), ("old_prog_fd", _c_u32)]


class XdpAttachment(NamedTuple):
    """What runs at an interface's XDP hook (by netlink or by a link)."""
    prog_id: int            # 0: nothing
    mode: str               # "native", "generic", "offload", "" (none) or "multi"
    mode_flag: int          # the XDP_FLAGS_*_MODE that attaches in this mode


def xdp_query(interface: int | str) -> XdpAttachment:
    """The XDP program of an interface of this thread's network namespace."""
    opts = _opts(_XdpQueryOpts)
    _check(f"querying XDP on {interface}", _lib().bpf_xdp_query, ifindex(interface), 0, ctypes.byref(opts))
    if opts.attach_mode == XDP_ATTACHED_MULTI:
        return XdpAttachment(opts.prog_id, "multi", 0)
    mode, flag = XDP_ATTACHED_MODES.get(opts.attach_mode, ("", 0))
    return XdpAttachment(opts.prog_id, mode, flag)


def xdp_replace(interface: int | str, new_fd: int, old_fd: int, mode_flag: int) -> None:
    """Netlink compare-and-swap: `new_fd` runs instead of `old_fd` in the same
    mode, or nothing changes (EEXIST when another program runs there now)."""
    opts = _opts(_XdpAttachOpts, old_prog_fd=old_fd)
    _check(f"replacing the XDP program of {interface}", _lib().bpf_xdp_attach, ifindex(interface), new_fd,
           XDP_FLAGS_REPLACE | mode_flag, ctypes.byref(opts))


def link_update(link_fd: int, new_fd: int, old_fd: int) -> None:
    """A link's program replaced by `new_fd` if it is still `old_fd` (EPERM
    from the kernel otherwise), atomically."""
    opts = _opts(_LinkUpdateOpts, flags=BPF_F_REPLACE, old_prog_fd=old_fd)
    _check("updating a link's program", _lib().bpf_link_update, link_fd, new_fd, ctypes.byref(opts))


def _tc_hook(interface: int | str, direction: str) -> Any:
    if direction not in _TC_DIRECTIONS:
        raise LibbpfError(f"tc attach point {direction!r}", errnos.EINVAL, detail="ingress or egress")
    return _opts(_TcHook, ifindex=ifindex(interface), attach_point=_TC_DIRECTIONS[direction])


def tc_query(interface: int | str, direction: str, handle: int, priority: int) -> int:
    """The program id of the cls_bpf filter at handle/priority, 0 if none."""
    hook = _tc_hook(interface, direction)
    opts = _opts(_TcOpts, handle=handle, priority=priority)
    ret = _lib().bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if ret in (-errnos.ENOENT, -errnos.EINVAL):
        return 0        # no such filter (EINVAL: no clsact qdisc at all)
    _ok(f"querying tc {direction} filter {handle:#x} prio {priority} on {interface}", ret)
    return int(opts.prog_id)


def tc_replace(interface: int | str, direction: str, handle: int, priority: int, prog_fd: int) -> None:
    """The filter at handle/priority runs `prog_fd` from now on (a direct-action
    cls_bpf filter, as libbpf makes them); the kernel swaps it under RCU, so
    no packet meets an empty hook."""
    hook = _tc_hook(interface, direction)
    opts = _opts(_TcOpts, prog_fd=prog_fd, flags=BPF_TC_F_REPLACE, handle=handle, priority=priority)
    _check(f"replacing tc {direction} filter {handle:#x} prio {priority} on {interface}", _lib().bpf_tc_attach,
           ctypes.byref(hook), ctypes.byref(opts))


def tc_detach(interface: int | str, direction: str, handle: int, priority: int) -> None:
    """Deletes the filter at handle/priority."""
    hook = _tc_hook(interface, direction)
    opts = _opts(_TcOpts, handle=handle, priority=priority)
    _check(f"deleting tc {direction} filter {handle:#x} prio {priority} on {interface}", _lib().bpf_tc_detach,
           ctypes.byref(hook), ctypes.byref(opts))


def tc_remove_clsact(interface: int | str) -> None:
    """Deletes the interface's clsact qdisc, with every filter on it."""
    whole = _opts(_TcHook, ifindex=ifindex(interface), attach_point=TC_INGRESS | TC_EGRESS)
    _check(f"removing clsact qdisc of {interface}", _lib().bpf_tc_hook_destroy, ctypes.byref(whole))


def ifindex(interface: int | str) -> int:
    """The index of an interface of this network namespace, by name or index."""
    import socket

    if isinstance(interface, int):
        return interface
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise LibbpfError(f"interface {interface}", errnos.ENODEV) from None


# --- attachments ----------------------------------------------------------------

class Link:
    """An attachment (struct bpf_link): destroying it detaches the program."""

    def __init__(self, ptr: int, obj: LoadedObject, what: str) -> None:
        self._ptr: int | None = ptr
        self._obj, self._what = obj, what

    @property
    def fd(self) -> int:
        if self._ptr is None:
            raise LibbpfError(f"link of {self._what}", errnos.EBADF, detail="destroyed")
        return _check(f"link of {self._what}", _lib().bpf_link__fd, self._ptr)

    def destroy(self) -> None:
        """Detaches and frees the link.  Idempotent."""
        if self._ptr is None:
            return
        ptr, self._ptr = self._ptr, None
        with contextlib.suppress(ValueError):
            self._obj._attachments.remove(self)
        _check(f"detaching {self._what}", _lib().bpf_link__destroy, ptr)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class TcFilter:
    """A program attached as a direct-action filter on an interface's clsact
    qdisc (bpf_tc_hook_create + bpf_tc_attach).  destroy() detaches it and, if
    this filter created the clsact qdisc, removes the qdisc too (with anything
    attached to it since).  Netlink works in the calling thread's network
    namespace: destroy from the namespace the filter was attached in."""

    def __init__(self, prog: LoadedProgram, interface: int | str, direction: str, priority: int, handle: int) -> None:
        if direction not in _TC_DIRECTIONS:
            raise LibbpfError(f"tc attach point {direction!r}", errnos.EINVAL, detail="ingress or egress")
        self.interface, self.direction = interface, direction
        self._what = f"tc {direction} prog {prog.name!r} on {interface}"
        self._obj = prog._obj
        opts = _opts(_TcOpts, prog_fd=prog.fd, priority=priority, handle=handle)   # fails before any change
        self._hook = _opts(_TcHook, ifindex=ifindex(interface), attach_point=_TC_DIRECTIONS[direction])
        lib = _lib()
        created = lib.bpf_tc_hook_create(ctypes.byref(self._hook))
        if created < 0 and created != -errnos.EEXIST:
            _ok(f"creating clsact qdisc on {interface}", created)
        self._owns_qdisc: bool = created == 0
        try:
            _check(f"attaching {self._what}", lib.bpf_tc_attach, ctypes.byref(self._hook), ctypes.byref(opts))
        except LibbpfError:
            self._remove_qdisc()
            raise
        self.handle, self.priority, self.prog_id = opts.handle, opts.priority, opts.prog_id
        self._attached = True

    @property
    def owns_qdisc(self) -> bool:
        """Did this filter create the clsact qdisc (and will remove it)?"""
        return self._owns_qdisc

    def keep_qdisc(self) -> None:
        """destroy() leaves the qdisc: the caller decides (others may use it)."""
        self._owns_qdisc = False

    def _remove_qdisc(self) -> None:
        if self._owns_qdisc:
            self._owns_qdisc = False
            whole = _opts(_TcHook, ifindex=self._hook.ifindex, attach_point=TC_INGRESS | TC_EGRESS)
            _check(f"removing clsact qdisc of {self.interface}", _lib().bpf_tc_hook_destroy, ctypes.byref(whole))

    def destroy(self) -> None:
        """Detaches the filter (and our qdisc).  Idempotent."""
        if not self._attached:
            return
        self._attached = False
        with contextlib.suppress(ValueError):
            self._obj._attachments.remove(self)
        opts = _opts(_TcOpts, handle=self.handle, priority=self.priority)   # detach wants fd/id/flags 0
        try:
            _check(f"detaching {self._what}", _lib().bpf_tc_detach, ctypes.byref(self._hook), ctypes.byref(opts))
        finally:
            self._remove_qdisc()

    def __enter__(self) -> TcFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


# --- ring buffers -------------------------------------------------------------

# ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)
_SAMPLE_FN = ctypes.CFUNCTYPE(_c_int, _c_ptr, _c_ptr, _c_size)
_STOP = -errnos.ECANCELED     # returned to libbpf when the Python callback raised


class RingBuffer:
    """Reads a BPF_MAP_TYPE_RINGBUF map (ring_buffer__new).  `callback(sample)`
    gets a copy of each record as bytes; if it raises, consumption stops and
    poll()/consume() re-raise the exception.  The map's fd is borrowed: keep the
    map (or its object) open while reading."""

    def __init__(self, ring_map: Map | int, callback: Callable[[bytes], object]) -> None:
        self._callback = callback
        self._error: BaseException | None = None
        self._sample_fn = _SAMPLE_FN(self._on_sample)   # referenced for as long as libbpf may call it
        fd = ring_map.fd if isinstance(ring_map, Map) else ring_map
        name = ring_map.name if isinstance(ring_map, Map) else f"fd {fd}"
        self._what = f"ring buffer {name!r}"
        self._ptr: int | None = _check_ptr(f"opening {self._what}", _lib().ring_buffer__new, fd,
                                           self._sample_fn, None, None)

    def _on_sample(self, _ctx: int | None, data: int, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size))
        except BaseException as e:   # noqa: BLE001 - re-raised by poll()/consume(), never into C
            self._error = e
            return _STOP
        return 0

    def _live(self) -> int:
        if self._ptr is None:
            raise LibbpfError(self._what, errnos.EBADF, detail="closed")
        return self._ptr

    def _finish(self, what: str, ret: int) -> int:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if ret == -errnos.EINTR:
            return 0      # a signal: Python runs its handler (e.g. KeyboardInterrupt) next
        return _ok(f"{what} {self._what}", ret)

    def poll(self, timeout_ms: int = 100) -> int:
        """Waits up to timeout_ms for records, hands them to the callback;
        returns how many were consumed."""
        return self._finish("polling", _lib().ring_buffer__poll(self._live(), timeout_ms))

    def consume(self) -> int:
        """Hands every record already in the ring to the callback, without waiting."""
        return self._finish("consuming", _lib().ring_buffer__consume(self._live()))

    @property
    def epoll_fd(self) -> int:
        """An fd that turns readable when records arrive (for select/selectors)."""
        return int(_lib().ring_buffer__epoll_fd(self._live()))

    def close(self) -> None:
        if self._ptr is not None:
            _lib().ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

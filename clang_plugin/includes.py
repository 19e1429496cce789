"""Refuse a translation unit that would make libclang hang or eat memory.

libclang reads a non-regular file until EOF: `#include "/dev/zero"` read
24 GB (8 GB in 20 s here, with libclang 18 and 19 alike), and `#include` of a
FIFO blocks in open() until a writer appears.  No libclang option changes
that, and its crash recovery does not cover it.

Two layers, because neither alone is enough:

1. This scan, before the parse: it follows the literal `#include`/
   `#include_next`/`#import`/`#embed` directives of the source and of every
   header they reach, resolved along the flags' search path the way clang
   resolves them, plus the files flags name (`-include F`, `@F`, `--x=F`).  If
   one of them is a FIFO, device or socket, the file is refused at once with
   a message naming the directive.  It costs a regex pass over the headers
   (~10 ms for vmlinux.h) and catches every include a human writes.
2. The parse itself runs in a child process with an address-space limit and
   a deadline (sandbox.py), for what a textual scan cannot see: an include
   spelled through a macro, a search path this scan approximates.  That
   bounds the damage; the scan gives the precise message.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import kind, read_regular

from .files import MAX_SOURCE_BYTES, is_hazard

# Directives that make the preprocessor open a file.  `__has_include` only
# looks a name up, so it is no hazard.
DIRECTIVE_RE = re.compile(rb'^[ \t]*#[ \t]*(include_next|include|import|embed)[ \t]*([<"])([^>"\r\n]+)[>"]', re.M)
# Where `-target bpf` looks for <...> after -I and -isystem (clang-19 -v);
# the builtin-header directory is passed explicitly by default_flags.
SYSTEM_DIRS = ("/usr/local/include", "/usr/include")
# Enough for any real program's include graph; past it the sandbox's limits
# still hold, the scan only stops looking.
MAX_SCANNED_FILES = 5000
# What may make a file's IR hold CO-RE relocations (irbatch.py: a shared
# clang's last input): the attribute, or a builtin that makes one.
CORE_HINT = b"preserve_"
CORE_RE = re.compile(rb"preserve_(?:access_index|field_info|type_info|enum_value)")
MAX_SCANNED_BYTES = 512 << 20

_QUOTE_FLAGS = ("-iquote",)
_ANGLED_FLAGS = ("-I", "-isystem")
_AFTER_FLAGS = ("-idirafter",)
_FILE_FLAGS = ("-include", "-imacros")


@dataclass
class SearchPath:
    quote: list[str] = field(default_factory=list)     # "x" only, after the includer's directory
    angled: list[str] = field(default_factory=list)    # "x" and <x>
    forced: list[str] = field(default_factory=list)    # -include / -imacros files


def search_path(flags: list[str]) -> SearchPath:
    sp = SearchPath()
    after: list[str] = []
    system = True
    pending: list[str] | None = None
    for a in flags:
        if pending is not None:
            pending.append(a)
            pending = None
            continue
        if a in ("-nostdinc", "-nostdlibinc"):
            system = False
            continue
        for names, target in ((_QUOTE_FLAGS, sp.quote), (_ANGLED_FLAGS, sp.angled),
                              (_AFTER_FLAGS, after), (_FILE_FLAGS, sp.forced)):
            name = next((n for n in names if a.startswith(n)), None)
            if name is not None:
                if a == name:
                    pending = target
                else:
                    target.append(a[len(name):])
                break
    sp.angled += [*(SYSTEM_DIRS if system else ()), *after]
    return sp


def flag_hazard(flags: list[str]) -> str | None:
    """A flag naming a FIFO or device: `-include /dev/zero`, `@fifo`, `--x=/dev/zero`."""
    for a in flags:
        for candidate in _flag_paths(a):
            try:
                st = os.stat(candidate)
            except (OSError, ValueError):
                continue
            if is_hazard(st):
                return f"flag '{a}' names {kind(st.st_mode)} ({candidate}), which libclang would read forever"
    return None


def _flag_paths(a: str) -> list[str]:
    if a.startswith("@"):
        return [a[1:]]
    if not a.startswith("-"):
        return [a]
    out = [a.split("=", 1)[1]] if "=" in a else []
    out += [a[len(f):] for f in (*_FILE_FLAGS, *_QUOTE_FLAGS, *_ANGLED_FLAGS, *_AFTER_FLAGS)
            if a.startswith(f) and len(a) > len(f)]
    return out


def include_hazard(path: str, source: bytes, flags: list[str]) -> str | None:
    """The first directive, at any depth, whose file is a FIFO/device/socket:
    'file:line: #include "x" is a character device (/dev/zero) ...'."""
    return scan_includes(path, source, flags)[0]


def scan_includes(path: str, source: bytes, flags: list[str]) -> tuple[str | None, bool]:
    """include_hazard's message, and whether the files scanned name a CO-RE
    attribute or builtin (CORE_RE; a guess: directives under #if count too)."""
    msg = flag_hazard(flags)
    if msg:
        return f"{path}: {msg}", False
    sp = search_path(flags)
    scan = _Scan(sp)
    for forced in sp.forced:
        msg = scan.file(forced)
        if msg:
            return msg, scan.core
    return scan.text(path, source), scan.core


def include_closure(path: str, source: bytes, sp: SearchPath) -> dict[str, bytes] | None:
    """`path` and every file it includes at any depth (as the scan follows
    them), by absolute path, with their bytes; None if one is a hazard or
    cannot be read, or the scan's limits cut it short."""
    scan = _Scan(sp, keep=True)
    if scan.text(path, source) is not None or scan.incomplete:
        return None
    return scan.kept


class _Scan:
    def __init__(self, sp: SearchPath, keep: bool = False) -> None:
        self.sp = sp
        self.seen: set[str] = set()
        self.bytes = 0
        self.keep = keep                       # hold each file's bytes in `kept`
        self.kept: dict[str, bytes] = {}
        self.incomplete = False                # a file was left unread (limits, unreadable)
        self.core = False                      # a file names a CO-RE attribute or builtin

    def file(self, path: str) -> str | None:
        key = os.path.normpath(os.path.abspath(path))
        if key in self.seen:
            return None
        if len(self.seen) >= MAX_SCANNED_FILES or self.bytes >= MAX_SCANNED_BYTES:
            self.incomplete = True
            return None
        self.seen.add(key)
        try:
            data = read_regular(path, MAX_SOURCE_BYTES, "header")
        except InputError as e:
            self.incomplete = True
            return str(e) if _exists_as_hazard(path) else None   # missing: libclang says so
        return self.text(key, data)

    def text(self, path: str, data: bytes) -> str | None:
        """Scan one file's directives; `path` as messages should show it."""
        key = os.path.normpath(os.path.abspath(path))
        self.seen.add(key)
        if self.keep:
            self.kept[key] = data
        self.bytes += len(data)
        self.core = self.core or (CORE_HINT in data and CORE_RE.search(data) is not None)
        here = os.path.dirname(os.path.abspath(path))
        for directive, quoted, name, offset in directives(data):
            found = self._resolve(name, quoted, here)
            if found is None:
                continue
            target, st = found
            if is_hazard(st):
                line = data.count(b"\n", 0, offset) + 1
                op, cl = ('"', '"') if quoted else ("<", ">")
                real = os.path.realpath(target)
                shown = target if real == target else f"{target} -> {real}"
                return (f"{path}:{line}: #{directive} {op}{name}{cl} is {kind(st.st_mode)} ({shown}), "
                        "not a header; libclang would block or read it forever")
            msg = self.file(target)
            if msg:
                return msg
        return None

    def _resolve(self, name: str, quoted: bool, here: str) -> tuple[str, os.stat_result] | None:
        return resolve(self.sp, name, quoted, here)


def resolve(sp: SearchPath, name: str, quoted: bool, here: str) -> tuple[str, os.stat_result] | None:
    """Where `#include "name"` (quoted) or `<name>` in directory `here` leads, and its stat."""
    dirs = [here, *sp.quote, *sp.angled] if quoted else sp.angled
    for cand in [name] if os.path.isabs(name) else [os.path.join(d, name) for d in dirs]:
        try:
            st = os.stat(cand)
        except (OSError, ValueError):
            continue
        if not stat.S_ISDIR(st.st_mode):   # clang skips directories and searches on
            return cand, st
    return None


# A file's directives, by its bytes' digest: every file of a project scans the
# same headers (vmlinux.h alone is 10 ms of regex), and forked parse workers
# inherit what the planning process scanned.
_DIRECTIVES: dict[bytes, list[tuple[str, bool, str, int]]] = {}
MAX_REMEMBERED_FILES = 4096


def directives(data: bytes) -> list[tuple[str, bool, str, int]]:
    """(directive, quoted, name, offset) of each include-like directive."""
    digest = hashlib.blake2b(data, digest_size=16).digest()
    found = _DIRECTIVES.get(digest)
    if found is None:
        found = [(m.group(1).decode(), m.group(2) == b'"', os.fsdecode(m.group(3)), m.start())
                 for m in DIRECTIVE_RE.finditer(data)]
        if len(_DIRECTIVES) < MAX_REMEMBERED_FILES:
            _DIRECTIVES[digest] = found
    return found


def _exists_as_hazard(path: str) -> bool:
    try:
        return is_hazard(os.stat(path))
    except (OSError, ValueError):
        return False

"""Parsing BPF C with libclang, the way the compiler sees it.

The `libclang` wheel bundles libclang.so, so this works after a plain pip
install.  `BPF_SDT_LIBCLANG=/path/to/libclang.so` points it at a system
libclang instead (for example /usr/lib/llvm-19/lib/libclang.so.1).

Flags come from compile_commands.json (`-p BUILD_DIR`) or from the command
line.  `-target bpf` and the -I of the shipped bpf_sdt.h are added when the
flags do not already say otherwise.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular

from .files import MAX_COMPDB_BYTES

LIBCLANG_ENV = "BPF_SDT_LIBCLANG"
# clang, clang-19, bpf-clang...: a compiler whose IR the IR rules can read
CLANG_NAME_RE = re.compile(r"^(.*-)?clang(-\d+(\.\d+)*)?$")

# Flags that only matter to code generation or build bookkeeping.
_DROP_WITH_VALUE = {"-o", "-MF", "-MT", "-MQ", "-Xclang"}
# Flags naming a directory or file relative to the build's directory; both
# "-Idir" and "-I dir" spellings.  (Path / absolute keeps the absolute one.)
_PATH_FLAGS = ("-I", "-iquote", "-isystem", "-idirafter", "-include", "-imacros")
_DROP = {"-c", "-S", "-E", "-MD", "-MMD", "-MP", "-M", "-MM", "-g", "-pipe", "-Werror",
         "-fdiagnostics-color=always"}


@cache
def cindex():  # type: ignore[no-untyped-def]
    """The configured `clang.cindex` module."""
    try:
        import clang.cindex as ci
    except ImportError as e:  # pragma: no cover - the wheel is a dependency
        raise InputError(f"libclang Python bindings are missing ({e}): pip install libclang") from None
    lib = os.environ.get(LIBCLANG_ENV)
    if lib:
        if not Path(lib).is_file():
            raise InputError(f"{LIBCLANG_ENV}={lib}: no such file")
        ci.Config.set_library_file(lib)
    _decode_losslessly(ci)
    try:
        ci.conf.lib  # noqa: B018 - loads the library and binds every function now
    except ci.LibclangError as e:
        first = str(e).split(". ")[0]
        raise InputError(f"libclang unusable ({first}); the bindings need libclang 16 or newer: "
                         f"set {LIBCLANG_ENV} to a newer one or unset it to use the wheel's") from None
    return ci


def _decode_losslessly(ci) -> None:  # type: ignore[no-untyped-def]
    """The bindings decode every string libclang returns (token and cursor
    spellings, diagnostics, file names) as strict UTF-8, so one Latin-1 byte
    in a string literal inside a probe call raised UnicodeDecodeError.  Decode
    the way Python decodes file names instead (undecodable bytes become lone
    surrogates): nothing is lost, paths still compare equal to os.fsdecode'd
    ones, and output turns the surrogates into U+FFFD where it must."""
    cls = getattr(ci, "c_interop_string", None)
    if cls is None or getattr(cls, "_bpf_sdt_lossless", False):
        return

    def value(self: ctypes.c_char_p) -> str | None:
        raw = super(ctypes.c_char_p, self).value
        return None if raw is None else bytes(raw).decode("utf-8", "surrogateescape")

    cls.value = property(value)
    cls._bpf_sdt_lossless = True


def libclang_path() -> str:
    """The libclang the bindings will load, found without loading it (a warm,
    fully cached lint never needs libclang at all)."""
    lib = os.environ.get(LIBCLANG_ENV)
    if lib:
        return lib
    # PathFinder, not importlib.util.find_spec: the same search of sys.path for
    # the wheel's package, without importing importlib.util (5 ms of a warm run).
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("clang")
    for base in (spec.submodule_search_locations or []) if spec else []:
        for name in ("libclang.so", "libclang.dylib"):
            if (Path(base) / "native" / name).exists():
                return str(Path(base) / "native" / name)
    return "libclang"


def libclang_version() -> str:
    """Identifies the libclang in use, for cache keys: its path, size and mtime
    (clang_getClangVersion returns a CXString the bindings do not decode)."""
    name = libclang_path()
    try:
        st = os.stat(name)
        return f"{name}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return name


@cache
def resource_dir_flags() -> tuple[str, ...]:
    """clang's builtin headers (stddef.h, stdbool.h...), which the wheel lacks:
    the newest installed clang's, found on disk (no subprocess per run)."""
    candidates = sorted(Path("/usr/lib").glob("llvm-*/lib/clang/*/include"),
                        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    return ("-isystem", str(candidates[-1])) if candidates else ()


def default_flags(extra: list[str]) -> list[str]:
    """libclang's flags: the compiler's, plus the builtin headers the wheel lacks."""
    return [*compile_flags(extra), *resource_dir_flags()]


def compile_flags(extra: list[str]) -> list[str]:
    """A real clang's flags (it has its own builtin headers): `-target bpf`
    unless a target is given, the shipped bpf_sdt.h's directory, and the
    system directory `-target bpf` misses (asm/types.h), last, as a build
    through `bpf-sdt cflags --system` has them: no compile database needed."""
    from bpf_sdt.sysinclude import system_include_flags

    flags = list(extra)
    if not any(f == "-target" or f.startswith("--target") for f in flags):
        flags = ["-target", "bpf", *flags]
    flags.append(_header_flag())
    flags.extend(system_include_flags())
    return flags


@cache
def _header_flag() -> str:
    from bpf_sdt.headers import header_dir

    return f"-I{header_dir()}"


class CompileDatabase:
    """BUILD_DIR/compile_commands.json, read and checked once per run.

    Every entry's shape is checked on load (one bad entry is one error line,
    not a traceback later); `command` strings are split only for the files
    asked about.  Lookups go by normalized absolute path, then by real path
    (symlinks), so 1,000 files cost one read and one index, not 1,000."""

    def __init__(self, build_dir: str) -> None:
        self.path = os.path.join(build_dir, "compile_commands.json")
        self._entries = _load_entries(self.path)
        self._by_path: dict[str, int] = {}
        for i, (directory, file, _) in enumerate(self._entries):
            self._by_path.setdefault(os.path.normpath(os.path.join(directory, file)), i)
        self._by_realpath: dict[str, int] | None = None

    def flags(self, file: str) -> list[str] | None:
        """The file's flags, compile-only parts kept; None if it has no entry."""
        found = self._command(file)
        if found is None:
            return None
        directory, source, args = found
        return _compile_only(args[1:], Path(directory), source)

    def compiler(self, file: str) -> str | None:
        """The build's compiler for the file when it is a clang (the IR rules
        should see what the build's optimizer does); None otherwise."""
        found = self._command(file)
        if found is None:
            return None
        directory, _, args = found
        name = args[0]
        if not CLANG_NAME_RE.match(os.path.basename(name)):
            return None
        if os.sep in name:
            path = os.path.join(directory, name)
            return path if os.access(path, os.X_OK) else None
        return shutil.which(name)

    def _command(self, file: str) -> tuple[str, str, list[str]] | None:
        i = self._by_path.get(os.path.normpath(os.path.abspath(file)))
        if i is None:
            if self._by_realpath is None:   # built on the first miss only
                self._by_realpath = {}
                for key, j in self._by_path.items():
                    self._by_realpath.setdefault(os.path.realpath(key), j)
            i = self._by_realpath.get(os.path.realpath(file))
            if i is None:
                return None
        directory, source, command = self._entries[i]
        if isinstance(command, str):
            try:
                args = shlex.split(command)
            except ValueError as e:   # "No closing quotation", "No escaped character"
                raise InputError(f"{self.path}: entry {i}: command: {e}") from None
        else:
            args = command
        if not args:
            raise InputError(f"{self.path}: entry {i}: empty command")
        return directory, source, args


# directory (absolute), file, arguments (list) or command (str)
_Entry = tuple[str, str, "list[str] | str"]


def _load_entries(db: str) -> list[_Entry]:
    if not os.path.lexists(db):
        raise InputError(f"{db}: no such file (generate it with your build, or drop -p)")
    data = read_regular(db, MAX_COMPDB_BYTES, "compile_commands.json")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:   # bad JSON, bad encoding, absurd nesting
        raise InputError(f"{db}: not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(doc, list):
        raise InputError(f"{db}: not a JSON array of compile commands")
    base = os.path.dirname(os.path.abspath(db))
    return [_entry(db, i, e, base) for i, e in enumerate(doc)]


def _entry(db: str, i: int, e: object, base: str) -> _Entry:
    def bad(why: str) -> InputError:
        return InputError(f"{db}: entry {i}: {why}")

    if not isinstance(e, dict):
        raise bad(f"a JSON {type(e).__name__}, not an object")
    directory = e.get("directory", base)
    file = e.get("file")
    for name, value in (("directory", directory), ("file", file)):
        if not isinstance(value, str) or not _is_path_text(value):
            raise bad(f'"{name}" is not a path string')
    assert isinstance(directory, str) and isinstance(file, str)
    if "arguments" in e:
        args = e["arguments"]
        if not isinstance(args, list) or not all(isinstance(a, str) and _is_arg_text(a) for a in args):
            raise bad('"arguments" is not a list of strings')
        command: list[str] | str = args
    elif isinstance(e.get("command"), str) and _is_arg_text(e["command"]):
        command = e["command"]
    else:
        raise bad('neither "arguments" (a list of strings) nor "command" (a string)')
    # The spec wants an absolute directory; a relative one is taken from the
    # database's own directory rather than from wherever lint happens to run.
    return os.path.join(base, directory), file, command


def _is_arg_text(s: str) -> bool:
    """No NUL (C strings end there) and encodable back to the bytes it came
    from (JSON can spell a lone surrogate that no file name has)."""
    if "\0" in s:
        return False
    try:
        os.fsencode(s)
    except UnicodeError:
        return False
    return True


def _is_path_text(s: str) -> bool:
    return s != "" and _is_arg_text(s)


def _compile_only(args: list[str], directory: Path, source: str) -> list[str]:
    """Drop output/dependency flags and the source itself; make the paths of
    search-path and forced-include flags absolute (the build ran them from
    `directory`, lint runs from anywhere)."""
    out, skip, path_next = [], False, False
    for a in args:
        if skip:
            skip = False
        elif path_next:
            path_next = False
            out.append(str(directory / a))
        elif a in _DROP_WITH_VALUE:
            skip = True
        elif a in _DROP or a == source or a.endswith((".c", ".o")) and not a.startswith("-"):
            continue
        elif a in _PATH_FLAGS:
            out.append(a)
            path_next = True
        else:
            flag = next((f for f in _PATH_FLAGS if a.startswith(f) and len(a) > len(f)), None)
            out.append(f"{flag}{directory / a[len(flag):]}" if flag else a)
    return out


def skipped_ranges(tu, path: str) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Byte ranges of `path` the preprocessor skipped (branches of #if not
    taken), from clang_getSkippedRanges, which the Python bindings do not wrap.
    Empty when the library lacks it."""
    ci = cindex()
    lib = ci.conf.lib
    fn: Any = getattr(lib, "clang_getSkippedRanges", None)
    dispose: Any = getattr(lib, "clang_disposeSourceRangeList", None)
    if fn is None or dispose is None:
        return []
    try:
        f = tu.get_file(os.fsencode(path))
    except Exception:   # noqa: BLE001 - the bindings raise a bare Exception for an unknown file
        return []

    class RangeList(ctypes.Structure):
        _fields_ = [("count", ctypes.c_uint), ("ranges", ctypes.POINTER(ci.SourceRange))]

    fn.restype = ctypes.POINTER(RangeList)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    dispose.argtypes = [ctypes.POINTER(RangeList)]
    dispose.restype = None
    found = fn(tu._as_parameter_, f._as_parameter_)
    if not found:
        return []
    try:
        ranges = found.contents
        return [(ranges.ranges[i].start.offset, ranges.ranges[i].end.offset) for i in range(ranges.count)]
    finally:
        dispose(found)

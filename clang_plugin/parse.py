"""Parsing BPF C with libclang, the way the compiler sees it.

The `libclang` wheel bundles libclang.so, so this works after a plain pip
install.  `BPF_SDT_LIBCLANG=/path/to/libclang.so` points it at a system
libclang instead (for example /usr/lib/llvm-19/lib/libclang.so.1).

Flags come from compile_commands.json (`-p BUILD_DIR`) or from the command
line.  `-target bpf` and the -I of the shipped bpf_sdt.h are added when the
flags do not already say otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
from functools import cache
from pathlib import Path

from bpf_sdt.errors import InputError

LIBCLANG_ENV = "BPF_SDT_LIBCLANG"

# Flags that only matter to code generation or build bookkeeping.
_DROP_WITH_VALUE = {"-o", "-MF", "-MT", "-MQ", "-Xclang"}
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
    try:
        ci.conf.lib  # noqa: B018 - loads the library and binds every function now
    except ci.LibclangError as e:
        first = str(e).split(". ")[0]
        raise InputError(f"libclang unusable ({first}); the bindings need libclang 16 or newer: "
                         f"set {LIBCLANG_ENV} to a newer one or unset it to use the wheel's") from None
    return ci


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
    flags = list(extra)
    if not any(f == "-target" or f.startswith("--target") for f in flags):
        flags = ["-target", "bpf", *flags]
    flags += [_header_flag(), *resource_dir_flags()]
    return flags


@cache
def _header_flag() -> str:
    from bpf_sdt.headers import header_dir

    return f"-I{header_dir()}"


def compdb_flags(build_dir: Path, file: Path) -> list[str] | None:
    """The file's flags from BUILD_DIR/compile_commands.json, compile-only parts kept."""
    db = build_dir / "compile_commands.json"
    try:
        entries = json.loads(db.read_text())
    except FileNotFoundError:
        raise InputError(f"{db}: no such file (generate it with your build, or drop -p)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{db}: unreadable ({e})") from None
    target = file.resolve()
    for entry in entries if isinstance(entries, list) else []:
        directory = Path(entry.get("directory", "."))
        path = Path(entry.get("file", ""))
        if not path.is_absolute():
            path = directory / path
        if path.resolve() != target:
            continue
        args = entry.get("arguments") or shlex.split(entry.get("command", ""))
        return _compile_only(args[1:], directory, str(entry.get("file", "")))
    return None


def _compile_only(args: list[str], directory: Path, source: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in _DROP_WITH_VALUE:
            skip = True
        elif a in _DROP or a == source or a.endswith((".c", ".o")) and not a.startswith("-"):
            continue
        elif a.startswith("-I") and len(a) > 2 and not Path(a[2:]).is_absolute():
            out.append(f"-I{directory / a[2:]}")
        else:
            out.append(a)
    return out

"""Finding the external tools bpf-sdt runs: clang (to build the recorder) and
bpftool (the libbpf linker).  An environment variable names each exactly;
otherwise the usual names on PATH are tried, newest clang first."""

from __future__ import annotations

import os
import stat

from bpf_sdt.errors import ToolError

CLANG_ENV = "BPF_SDT_CLANG"
BPFTOOL_ENV = "BPF_SDT_BPFTOOL"
NEWEST_CLANG, OLDEST_CLANG = 30, 14     # clang-N names tried, newest first
SBIN = ("/usr/sbin", "/sbin")           # Debian installs bpftool here, off a user's PATH


def _is_program(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.X_OK)
    except OSError:
        return False


def _which(name: str, search: list[str] | None = None) -> str | None:
    """``name`` if it is a path, else its first executable on ``search`` (PATH,
    then SBIN).  Not shutil.which: find_clang asks for 18 names on every
    trace, a cached one too, and shutil (with the compression modules it
    imports) cost it 3 ms of a 60 ms start."""
    if os.sep in name:
        return name if _is_program(name) else None
    dirs = _search_path() if search is None else search
    return next((path for d in dirs if _is_program(path := os.path.join(d, name))), None)


def _search_path() -> list[str]:
    return [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d] + list(SBIN)


def find_clang() -> str:
    wanted = os.environ.get(CLANG_ENV) or os.environ.get("BPF_CLANG")
    if wanted:
        path = _which(wanted)
        if path is None:
            raise ToolError(f"{wanted} (from ${CLANG_ENV}/$BPF_CLANG) not found")
        return path
    search = _search_path()
    for name in ["clang", *(f"clang-{v}" for v in range(NEWEST_CLANG, OLDEST_CLANG - 1, -1))]:
        if path := _which(name, search):
            return path
    raise ToolError(f"clang not found: install clang (Debian: apt-get install clang-19) or set ${CLANG_ENV}")


def find_bpftool(name: str | None = None) -> str:
    wanted = name or os.environ.get(BPFTOOL_ENV) or "bpftool"
    path = _which(wanted)
    if path is None:
        raise ToolError(f"{wanted} not found: install bpftool (Debian: apt-get install bpftool) "
                        f"or set ${BPFTOOL_ENV}")
    return path

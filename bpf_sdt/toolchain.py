"""Finding the external tools bpf-sdt runs: clang (to build the recorder) and
bpftool (the libbpf linker).  An environment variable names each exactly;
otherwise the usual names on PATH are tried, newest clang first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bpf_sdt.errors import ToolError

CLANG_ENV = "BPF_SDT_CLANG"
BPFTOOL_ENV = "BPF_SDT_BPFTOOL"
NEWEST_CLANG, OLDEST_CLANG = 30, 14     # clang-N names tried, newest first
SBIN = ("/usr/sbin", "/sbin")           # Debian installs bpftool here, off a user's PATH


def _which(name: str) -> str | None:
    if os.sep in name:
        return name if Path(name).is_file() and os.access(name, os.X_OK) else None
    found = shutil.which(name)
    if found:
        return found
    return next((str(Path(d) / name) for d in SBIN if (Path(d) / name).is_file()), None)


def find_clang() -> str:
    wanted = os.environ.get(CLANG_ENV) or os.environ.get("BPF_CLANG")
    if wanted:
        path = _which(wanted)
        if path is None:
            raise ToolError(f"{wanted} (from ${CLANG_ENV}/$BPF_CLANG) not found")
        return path
    for name in ["clang", *(f"clang-{v}" for v in range(NEWEST_CLANG, OLDEST_CLANG - 1, -1))]:
        if path := _which(name):
            return path
    raise ToolError(f"clang not found: install clang (Debian: apt-get install clang-19) or set ${CLANG_ENV}")


def find_bpftool(name: str | None = None) -> str:
    wanted = name or os.environ.get(BPFTOOL_ENV) or "bpftool"
    path = _which(wanted)
    if path is None:
        raise ToolError(f"{wanted} not found: install bpftool (Debian: apt-get install bpftool) "
                        f"or set ${BPFTOOL_ENV}")
    return path

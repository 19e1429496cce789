"""Finding and running the real tools the tests need (clang, bpf-gcc, bpftool,
llvm-objdump).  Under CI (CI=true) a missing tool fails the test: CI runs as
root on a machine where `.ci/run` installed everything, so a skip there would
hide a broken install step."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEADER_DIR = REPO / "headers"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CLANG_VERSIONS = (14, 15, 16, 17, 18, 19)
REQUIRED_CLANGS = (14, 19)


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    need(path is not None, f"{name} not installed")
    assert path
    return path


@functools.cache
def clangs() -> dict[int, str]:
    """Installed clang-N binaries by major version."""
    return {v: p for v in CLANG_VERSIONS if (p := shutil.which(f"clang-{v}"))}


def clang(version: int) -> str:
    path = clangs().get(version)
    need(path is not None, f"clang-{version} not installed")
    assert path
    return path


def mcpus(version: int) -> list[str]:
    return ["v1", "v2", "v3", "v4"] if version >= 18 else ["v1", "v2", "v3"]


def objdump() -> str:
    for v in (19, 18, 17, 16, 15, 14):
        if p := shutil.which(f"llvm-objdump-{v}"):
            return p
    return tool("llvm-objdump")


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def compile_bpf(src: Path | str, out: Path, cc: str, *, mcpu: str = "v3", opt: str = "-O2",
                defines: tuple[str, ...] = (), extra: tuple[str, ...] = (),
                check: bool = True, header_dir: Path = HEADER_DIR) -> subprocess.CompletedProcess[str]:
    """Compile BPF C the way a real project does, warnings as errors."""
    if "gcc" in Path(cc).name:
        cmd = [cc, opt, "-gbtf", f"-mcpu={mcpu}" if mcpu != "v4" else "-mcpu=v3"]
    else:
        cmd = [cc, "-target", "bpf", opt, "-g", f"-mcpu={mcpu}"]
    cmd += ["-Wall", "-Wextra", "-Werror", f"-I{header_dir}", *[f"-D{d}" for d in defines],
            *extra, "-c", str(src), "-o", str(out)]
    res = run(cmd)
    if check and res.returncode != 0:
        raise AssertionError(f"compile failed: {' '.join(cmd)}\n{res.stderr}")
    return res


def bpf_permitted() -> bool:
    """Can this process load BPF programs? (root with CAP_BPF/CAP_SYS_ADMIN)"""
    return os.geteuid() == 0 and Path("/sys/fs/bpf").exists()

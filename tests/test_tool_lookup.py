"""bpf_sdt.toolchain finds clang and bpftool as a shell would: PATH order,
executables only, the newest clang first, explicit names, and bpftool in
/usr/sbin off a user's PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpf_sdt import toolchain
from bpf_sdt.errors import ToolError


def _program(where: Path, name: str, mode: int = 0o755) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (toolchain.CLANG_ENV, "BPF_CLANG", toolchain.BPFTOOL_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_newest_clang_wins_whatever_the_directory_order(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    _program(tmp_path / "a", "clang-15")
    newest = _program(tmp_path / "b", "clang-18")
    clean_env.setenv("PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert toolchain.find_clang() == str(newest)


def test_plain_clang_first_then_earlier_path_entry(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    _program(tmp_path / "a", "clang-19")
    first = _program(tmp_path / "b", "clang")
    _program(tmp_path / "c", "clang")
    clean_env.setenv("PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}:{tmp_path / 'c'}")
    assert toolchain.find_clang() == str(first)


def test_not_executable_and_directories_are_skipped(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    _program(tmp_path / "a", "clang", mode=0o644)              # not executable
    (tmp_path / "b" / "clang").mkdir(parents=True)              # a directory of that name
    found = _program(tmp_path / "c", "clang-14")
    clean_env.setenv("PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}:{tmp_path / 'c'}")
    assert toolchain.find_clang() == str(found)


def test_no_clang_is_one_error_naming_the_variable(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match=toolchain.CLANG_ENV):
        toolchain.find_clang()


def test_variables_name_the_tool_by_path_or_name(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    named = _program(tmp_path / "bin", "my-clang")
    clean_env.setenv("PATH", str(tmp_path / "bin"))
    clean_env.setenv(toolchain.CLANG_ENV, "my-clang")
    assert toolchain.find_clang() == str(named)
    clean_env.setenv(toolchain.CLANG_ENV, str(named))
    assert toolchain.find_clang() == str(named)
    clean_env.setenv(toolchain.CLANG_ENV, str(tmp_path / "bin" / "missing"))
    with pytest.raises(ToolError, match="missing"):
        toolchain.find_clang()
    _program(tmp_path / "bin", "not-exec", mode=0o644)
    with pytest.raises(ToolError):
        toolchain.find_bpftool(str(tmp_path / "bin" / "not-exec"))


def test_bpftool_in_sbin_off_path(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Debian's bpftool is /usr/sbin/bpftool; a user's PATH often lacks sbin."""
    sbin = [d for d in toolchain.SBIN if os.access(os.path.join(d, "bpftool"), os.X_OK)]
    if not sbin:
        pytest.fail("bpftool is not installed in /usr/sbin or /sbin (scripts/setup.sh installs it)")
    clean_env.setenv("PATH", str(tmp_path))
    assert toolchain.find_bpftool() == os.path.join(sbin[0], "bpftool")

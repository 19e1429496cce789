"""fsutil's private directory and copy, which a cached trace uses instead of
tempfile and shutil (docs/trace.md, "Start-up"): a directory only its owner
enters, removed with its contents however the block ends, links removed and
never followed; a copy that refuses what is not a regular file at once."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from bpf_sdt import cli
from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import copy_file, private_directory


def test_made_under_tmpdir_for_its_owner_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    os.umask(old := os.umask(0))        # the widest umask: the mode must still be 0700
    try:
        with private_directory("bpf-sdt-test-") as where:
            assert where.parent == tmp_path and where.name.startswith("bpf-sdt-test-")
            assert stat.S_IMODE(os.lstat(where).st_mode) == 0o700
    finally:
        os.umask(old)


def test_removed_with_its_contents_and_links_never_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("kept")
    with private_directory("bpf-sdt-test-") as where:
        (where / "pins" / "deep").mkdir(parents=True)
        (where / "pins" / "deep" / "f").write_text("x")
        (where / "instrumented.bpf.o").write_bytes(b"\x7fELF")
        (where / "to-dir").symlink_to(outside, target_is_directory=True)
        (where / "pins" / "to-file").symlink_to(outside / "keep")
    assert not where.exists()
    assert (outside / "keep").read_text() == "kept"


def test_removed_when_the_block_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(KeyboardInterrupt), private_directory("bpf-sdt-test-") as where:
        (where / "f").write_text("x")
        raise KeyboardInterrupt
    assert not where.exists()


def test_two_directories_never_share_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with private_directory("p-") as a, private_directory("p-") as b:
        assert a != b and a.is_dir() and b.is_dir()


def test_copy_is_the_bytes_over_a_file_and_never_through_a_link(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(data)
    copy_file(str(tmp_path / "src"), tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) == 0o600
    (tmp_path / "dst").write_bytes(b"longer than the copy" * 200_000)
    copy_file(str(tmp_path / "src"), tmp_path / "dst")              # as shutil.copyfile: replaced whole
    assert (tmp_path / "dst").read_bytes() == data
    (tmp_path / "victim").write_text("kept")
    (tmp_path / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(OSError):
        copy_file(str(tmp_path / "src"), tmp_path / "link")
    assert (tmp_path / "victim").read_text() == "kept"


def test_copy_of_a_fifo_or_directory_is_refused_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("fifo", "dir"):
        with pytest.raises(InputError, match="not a cached object"):
            copy_file(str(tmp_path / name), tmp_path / f"{name}.copy", "cached object")
        assert not (tmp_path / f"{name}.copy").exists()


@pytest.mark.parametrize("columns", [None, "40", "200", "0", "wide"])
def test_help_width_is_shutils(columns: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's parser finds the help width itself (argparse would import
    shutil for every option it adds): the same width as shutil's."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.delenv("LINES", raising=False)
    assert cli._help_width() == shutil.get_terminal_size().columns - 2

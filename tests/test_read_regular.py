"""fsutil.read_regular reads a file once into the bytes it returns (issue 22:
an object of a million sites is 93 MB, and chunks joined into a second copy
cost twice that), and keeps its bounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular

MIB = 1 << 20
BIG = 64 * MIB          # several of the reader's chunks
# What a read may cost beyond the file's own bytes, as a share of them (the
# interpreter's own pages move a little too).
SLACK = 0.25


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, MIB + 3])
def test_contents(tmp_path: Path, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (tmp_path / "f").write_bytes(data)
    assert read_regular(str(tmp_path / "f"), size + 1) == data
    assert read_regular(str(tmp_path / "f"), size) == data


def test_larger_than_the_limit(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    with pytest.raises(InputError, match="10 bytes, larger than any"):
        read_regular(str(tmp_path / "f"), 9)


def test_one_copy_in_memory(tmp_path: Path) -> None:
    """Peak RSS grows by the file's size, not twice it."""
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(BIG)
    code = ("import resource, sys\nfrom bpf_sdt.fsutil import read_regular\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "data = read_regular(sys.argv[1], 1 << 30)\n"
            "print(len(data), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, check=True)
    size, grown = map(int, out.stdout.split())
    assert size == BIG
    assert grown < (1 + SLACK) * BIG, f"peak RSS grew by {grown / MIB:.0f} MiB for a {BIG // MIB} MiB file"

"""Suite-wide set-up, and the check at the end of the session that the tests
left nothing in the kernel or on bpffs (issue 17).

Other sessions may run at the same time on the same machine, so only what
this session made is considered, by its names: network namespaces
`sdt<pid>x<n>` (tests/netns.py), pins on /sys/fs/bpf whose name holds
`bpf_sdt_test` and this process's id, and bpf-sdt's own records
(/sys/fs/bpf/bpf-sdt, docs/records.md) tagged with this session through
BPF_SDT_RECORD_TAG, which every trace the tests start inherits.  Programs,
filters, qdiscs and links live in those namespaces or behind those pins;
trace's temporary directories are listed in its records (a killed trace's
is removed by `bpf-sdt restore`)."""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns import Iproute2PinDirs  # noqa: E402 - the tests' helper, after the path

BPFFS = Path("/sys/fs/bpf")
RECORDS = BPFFS / "bpf-sdt"
NETNS_DIR = Path("/run/netns")
TAG = f"pytest-{os.getpid()}"
os.environ["BPF_SDT_RECORD_TAG"] = TAG


@pytest.fixture(scope="session")
def samples_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """samples/ built once per session (clang 19, the make include), for every
    module that traces them (test_trace's `built` and the modules that import it)."""
    import subprocess

    from toolchain import clang, tool

    tool("bpftool")
    out = tmp_path_factory.mktemp("trace-samples")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["make", "-C", str(Path(__file__).resolve().parent.parent / "samples"),
                          f"BPF_CLANG={clang(19)}", f"BPF_SDT_OUTDIR={out}"],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def _our_netns() -> list[str]:
    prefix = f"sdt{os.getpid() % 100000}x"          # tests/netns.py's naming
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)) if NETNS_DIR.is_dir() else []


def _our_pins() -> list[str]:
    mark = str(os.getpid())
    try:
        return sorted(p.name for p in BPFFS.iterdir() if "bpf_sdt_test" in p.name and mark in p.name)
    except OSError:
        return []


def _our_records() -> list[str]:
    """Records written by traces of this session (bpftool reads them back,
    not our own code)."""
    if not RECORDS.is_dir():
        return []
    import subprocess

    found = []
    for entry in sorted(RECORDS.iterdir()):
        res = subprocess.run(["bpftool", "map", "dump", "pinned", str(entry / "record"), "-j"], capture_output=True,
                             text=True, check=False)
        try:
            value = json.loads(res.stdout)[0]["value"]
            raw = bytes(int(b, 16) for b in value) if isinstance(value, list) else b""
            record = json.loads(raw.rstrip(b"\0") or b"{}")
        except (ValueError, IndexError, KeyError, TypeError):
            continue
        if isinstance(record, dict) and record.get("tag") == TAG:
            found.append(entry.name)
    return found


# What of iproute2's pin directories this session caused goes again.
_iproute2_dirs: Iproute2PinDirs | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _iproute2_dirs
    _iproute2_dirs = Iproute2PinDirs()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _iproute2_dirs is not None:
        _iproute2_dirs.remove_new()
    left = {"network namespaces": _our_netns(), "pins": _our_pins(), "bpf-sdt records": _our_records()}
    left = {what: names for what, names in left.items() if names}
    if left:
        listed = "; ".join(f"{what}: {', '.join(names)}" for what, names in left.items())
        sys.stderr.write(f"\nthe tests left kernel state behind: {listed}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

"""`list --json` encodes sites from shared templates, without a SiteRecord
per site (issue 22): its text must be what each record's ``json_text()``
gives, and that ``json.dumps(to_json())``, on every kind of object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import ObjectReport, analyze
from bpf_sdt.postlink.commands import _json_chunks
from fuzz_target import SyntheticEntry, synthetic_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sites_real_world import INSTRUMENTED, OBSERVERS
from toolchain import clang, compile_bpf, tool

from bpf_sdt.cli import main
from bpf_sdt.elf import BpfObject, load_object
from bpf_sdt.model import ArgLocation

FAST = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


def assert_same_text(report: ObjectReport) -> None:
    fast = [text for chunk in _json_chunks(report) for text in chunk]
    records = list(report.iter_sites())
    assert fast == [s.json_text() for s in records]
    assert [json.loads(t) for t in fast] == [s.to_json() for s in records]


def test_samples(samples_built: Path) -> None:
    objects = sorted(samples_built.glob("*.o"))
    assert objects
    for obj in objects:
        assert_same_text(analyze(load_object(obj)))


def test_instrumented_object_with_observers(tmp_path: Path) -> None:
    tool("bpftool")
    src, obs_src = tmp_path / "prog.bpf.c", tmp_path / "obs.bpf.c"
    src.write_text(INSTRUMENTED)
    obs_src.write_text(OBSERVERS)
    obj, obs, out = tmp_path / "prog.o", tmp_path / "obs.o", tmp_path / "out.o"
    compile_bpf(src, obj, clang(19))
    compile_bpf(obs_src, obs, clang(19))
    assert main(["instrument", str(obj), "-o", str(out), "--observer", str(obs), "--attach", "on_any=[ho]*",
                 "--record"]) == 0
    report = analyze(load_object(out))
    assert report.observers, "the object calls observers"
    assert_same_text(report)


# Probe names as an object may hold them: '%' would break a %-template,
# quotes and control characters need escapes, and non-ASCII is \u-escaped.
NAMES = st.text(alphabet=st.sampled_from("ab_%\"\\\n\x01é€𝄞."), min_size=1, max_size=6)
ARGS = st.lists(st.one_of(st.builds(lambda r: ArgLocation("reg", reg=r), st.integers(0, 9)),
                          st.builds(lambda v: ArgLocation("imm", value=v), st.integers(-2**31, 2**31 - 1))),
                max_size=5)


@FAST
@given(st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=12))
def test_synthetic_objects(sites: list[tuple[str, list[ArgLocation]]]) -> None:
    entries = [SyntheticEntry(name, 8 * k, args) for k, (name, args) in enumerate(sites)]
    prototypes = {name: tuple("long" for _ in args) for name, args in sites}
    try:
        data = synthetic_object(entries, prototypes)
    except ValueError:           # a name BTF or the notes cannot hold
        return
    assert_same_text(analyze(BpfObject("syn%s.o", data)))


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunks_split_anywhere(samples_built: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import bpf_sdt.postlink.commands as commands

    monkeypatch.setattr(commands, "_CHUNK", chunk)
    for obj in sorted(samples_built.glob("*.o")):
        report = analyze(load_object(obj))
        chunks = list(_json_chunks(report))
        assert all(0 < len(c) <= chunk for c in chunks)
        assert [t for c in chunks for t in c] == [s.json_text() for s in report.iter_sites()]

"""The recorder as other loaders see it (issues 17, 20, 21): its maps pin where
the loader says (`bpftool prog loadall OUT DIR pinmaps MAPDIR`), never in
/sys/fs/bpf by itself; it carries the instrumented object's identity, so
`trace --pinned` refuses another object's ring; it counts what it submitted,
so a second reader's share is reported; its functions are global (the
verifier walks them once per program).  All against the real kernel, with
bpftool as the loader and test runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_trace
from bpf_sdt.instrument.observers import (
    HITS_MAP,
    PAGE_SIZE,
    AggregationCode,
    ProbePlan,
    RecorderOptions,
    build_recorder,
)
from bpf_sdt.trace.recorder import Counters, map_identity
from bpf_sdt.trace.sites import recorder_identity
from test_trace import CLI, XDP_PACKETS, Tracer, _env, json_lines, observed, xdp_parser_model
from toolchain import REPO, clang, compile_bpf, run, tool

from bpf_sdt import recorder_abi as abi
from bpf_sdt.argtype import ArgType
from bpf_sdt.btf import BtfKind
from bpf_sdt.elf import load_object
from bpf_sdt.format import MAX_ARGS, RECORDER_COUNTS_MAP, RECORDER_IDENTITY_PREFIX, RECORDER_RINGBUF_MAP
from bpf_sdt.libbpf import Map, RingBuffer

# test_trace's fixtures, found by pytest under these names.
built, bpffs, tracers = test_trace.built, test_trace.bpffs, test_trace.tracers
HOST_BPFFS = Path("/sys/fs/bpf")
BTF_FUNC_GLOBAL = 1
RECORDER_FUNCTION = "bpf_sdt_record_"


def instrument(obj: Path, out: Path, *extra: str) -> Path:
    res = run([*CLI, "instrument", str(obj), "-o", str(out), *extra], env=_env())
    assert res.returncode == 0, res.stderr
    return out


def loadall(obj: Path, pins: Path, name: str) -> subprocess.CompletedProcess[str]:
    return run([tool("bpftool"), "prog", "loadall", str(obj), str(pins / name), "pinmaps", str(pins / f"{name}-maps")])


def prog_run(pins: Path, prog: str, packet: Path, repeat: int) -> None:
    res = run([tool("bpftool"), "prog", "run", "pinned", str(pins / prog), "data_in", str(packet),
               "repeat", str(repeat)])
    assert res.returncode == 0, res.stderr


def host_recorder_pins() -> set[str]:
    return {p.name for p in HOST_BPFFS.iterdir() if p.name.startswith("bpf_sdt")}


def trace_pinned(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "trace", *args], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)


# --- the recorder's functions --------------------------------------------------------


def test_recorder_functions_are_global_and_take_the_site_id_struct(built: Path, tmp_path: Path) -> None:
    out = instrument(built / "xdp_parser.bpf.o", tmp_path / "x.o")
    btf = load_object(out).btf
    assert btf is not None
    funcs = [t for t in btf.types if t.kind == BtfKind.FUNC and t.name.startswith(RECORDER_FUNCTION)]
    assert {t.name for t in funcs} == {f"{RECORDER_FUNCTION}{n}" for n in (1, 2, 4)}
    assert all(t.linkage == BTF_FUNC_GLOBAL for t in funcs), "the recorder must stay global (verified once)"
    ids = [t for t in btf.types if t.kind == BtfKind.STRUCT and t.name.startswith(RECORDER_IDENTITY_PREFIX)]
    assert [t.name for t in ids] == [RECORDER_IDENTITY_PREFIX + recorder_identity(load_object(built / "xdp_parser.bpf.o"))]
    assert recorder_identity(load_object(out)) == recorder_identity(load_object(built / "xdp_parser.bpf.o"))


# --- pins where the loader says ---------------------------------------------------------


@pytest.mark.kernel
def test_bpftool_pinmaps_then_trace_pinned_pin_dir(built: Path, bpffs: Path, tracers: list[Tracer],
                                                   tmp_path: Path) -> None:
    before = host_recorder_pins()
    inst = instrument(built / "xdp_parser.bpf.o", tmp_path / "xdp.inst.o")
    res = loadall(inst, bpffs, "xdp")
    assert res.returncode == 0, res.stderr
    maps = bpffs / "xdp-maps"
    assert {p.name for p in maps.iterdir()} >= {RECORDER_RINGBUF_MAP, RECORDER_COUNTS_MAP}
    assert host_recorder_pins() == before, "nothing pinned in /sys/fs/bpf"
    pkt, repeat = XDP_PACKETS[1], 4
    (tmp_path / "p.bin").write_bytes(pkt)
    tracer = Tracer(str(inst), "--pinned", "--pin-dir", str(maps), "--json")
    tracers.append(tracer)
    tracer.wait_ready()
    prog_run(bpffs / "xdp", "xdp_parse", tmp_path / "p.bin", repeat)
    _, expected = xdp_parser_model(pkt)
    tracer.wait_lines(lambda ls: len(ls) >= repeat * len(expected))
    assert tracer.finish(signal.SIGTERM, owns=False) == 0, tracer.err.decode()
    assert observed(json_lines(tracer.out.decode())) == expected * repeat
    with Map.open_pinned(maps / RECORDER_COUNTS_MAP) as counts:
        values = Counters(counts).read()
        assert (values.submitted, values.lost, values.filtered) == (repeat * len(expected), 0, 0)


@pytest.mark.kernel
def test_a_failed_load_leaves_nothing_pinned(built: Path, bpffs: Path, tmp_path: Path) -> None:
    """The verifier refuses this program (a packet read without a bounds check),
    after libbpf created the recorder's maps: no pin may stay, anywhere."""
    src = tmp_path / "bad.bpf.c"
    src.write_text('#include "common.h"\nBPF_SDT_DECLARE1(first, __u8);\n'
                   'SEC("xdp") int bad(struct xdp_md *ctx) {\n'
                   '\t__u8 *p = (void *)(long)ctx->data;\n\tBPF_SDT_PROBE1(first, *p);\n\treturn XDP_PASS;\n}\n'
                   'char LICENSE[] SEC("license") = "GPL";\n')
    compile_bpf(src, tmp_path / "bad.bpf.o", clang(19), extra=("-I", str(built), "-I", str(REPO / "samples")))
    inst = instrument(tmp_path / "bad.bpf.o", tmp_path / "bad.inst.o")
    before = host_recorder_pins()
    res = loadall(inst, bpffs, "bad")
    assert res.returncode != 0 and "invalid access to packet" in res.stderr, res.stderr
    assert not (bpffs / "bad-maps").exists() or not list((bpffs / "bad-maps").iterdir())
    assert host_recorder_pins() == before


# --- identity -----------------------------------------------------------------------------


@pytest.mark.kernel
def test_two_recorders_side_by_side_and_the_wrong_object_refused(built: Path, bpffs: Path, tracers: list[Tracer],
                                                                 tmp_path: Path) -> None:
    xdp = instrument(built / "xdp_parser.bpf.o", tmp_path / "xdp.inst.o")
    tc = instrument(built / "tc.linked.bpf.o", tmp_path / "tc.inst.o")
    for obj, name in ((xdp, "xdp"), (tc, "tc")):
        res = loadall(obj, bpffs, name)
        assert res.returncode == 0, res.stderr
    with Map.open_pinned(bpffs / "xdp-maps" / RECORDER_COUNTS_MAP) as m:
        assert map_identity(m.fd) == recorder_identity(load_object(xdp))
    res = trace_pinned(str(xdp), "--pinned", "--pin-dir", str(bpffs / "tc-maps"), "--duration", "1")
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.splitlines()) == 1, res.stderr
    assert "the recorder of another object" in res.stderr


UNIQUE_SOURCE = r"""
#include "common.h"
BPF_SDT_DECLARE1(seen_PID, __u32);
SEC("xdp") int prog_PID(struct xdp_md *ctx)
{
	BPF_SDT_PROBE1(seen_PID, ctx->data_end - ctx->data);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_pinned_without_a_pin_finds_the_recorder_by_identity(built: Path, bpffs: Path, tracers: list[Tracer],
                                                             tmp_path: Path) -> None:
    """Without --pin-dir (and nothing in /sys/fs/bpf): the loaded maps are
    searched by name and identity.  The object is this test's own (names with
    the test's pid), so no other loaded copy can share its identity."""
    pid = str(os.getpid())
    (tmp_path / "u.bpf.c").write_text(UNIQUE_SOURCE.replace("PID", pid))
    compile_bpf(tmp_path / "u.bpf.c", tmp_path / "u.bpf.o", clang(19), extra=("-I", str(built), "-I", str(REPO / "samples")))
    inst = instrument(tmp_path / "u.bpf.o", tmp_path / "u.inst.o")
    assert loadall(inst, bpffs, "u").returncode == 0
    pkt = XDP_PACKETS[0]
    (tmp_path / "p.bin").write_bytes(pkt)
    tracer = Tracer(str(inst), "--pinned", "--json")
    tracers.append(tracer)
    tracer.wait_ready()
    assert b"map id" in tracer.err
    prog_run(bpffs / "u", f"prog_{pid}", tmp_path / "p.bin", 3)
    tracer.wait_lines(lambda ls: len(ls) >= 3)
    assert tracer.finish(signal.SIGTERM, owns=False) == 0, tracer.err.decode()
    assert [(e["probe"], e["args"]) for e in json_lines(tracer.out.decode())] == [(f"seen_{pid}", [len(pkt)])] * 3


@pytest.mark.kernel
def test_events_another_reader_took_are_reported(built: Path, bpffs: Path, tracers: list[Tracer],
                                                  tmp_path: Path) -> None:
    """trace is stopped (SIGSTOP) while the runs happen and a second reader
    (libbpf's ring_buffer__consume) takes every event: trace, continued, reads
    none of them and says how many the recorder submitted that it did not see."""
    inst = instrument(built / "xdp_parser.bpf.o", tmp_path / "xdp.inst.o")
    assert loadall(inst, bpffs, "xdp").returncode == 0
    (tmp_path / "p.bin").write_bytes(XDP_PACKETS[2])            # one non_ip event per run
    runs = 50
    tracer = Tracer(str(inst), "--pinned", "--pin-dir", str(bpffs / "xdp-maps"), "--json", "--count")
    tracers.append(tracer)
    tracer.wait_ready()
    os.kill(tracer.proc.pid, signal.SIGSTOP)
    try:
        prog_run(bpffs / "xdp", "xdp_parse", tmp_path / "p.bin", runs)
        taken: list[bytes] = []
        with Map.open_pinned(bpffs / "xdp-maps" / RECORDER_RINGBUF_MAP) as ring, \
                RingBuffer(ring, taken.append) as rb:
            rb.consume()
        assert len(taken) == runs
    finally:
        os.kill(tracer.proc.pid, signal.SIGCONT)
    assert tracer.finish(signal.SIGTERM, owns=False) == 0, tracer.err.decode()
    lines = json_lines(tracer.out.decode())
    assert {"type": "taken", "taken_by_another_reader": runs} in lines
    assert next(x["counts"] for x in lines if "counts" in x)["probes"]["non_ip"] == 0
    assert f"{runs} events submitted to the ring buffer were read by another reader" in tracer.err.decode()


def test_pin_by_name_keeps_libbpf_pinning(built: Path, tmp_path: Path) -> None:
    """--pin-by-name: both maps carry libbpf's `pinning` member; by default none does."""
    def pinning_members(obj: Path) -> int:
        res = run([tool("bpftool"), "btf", "dump", "file", str(obj)])
        assert res.returncode == 0, res.stderr
        return res.stdout.count("'pinning'")

    assert pinning_members(instrument(built / "xdp_parser.bpf.o", tmp_path / "x.o", "--pin-by-name")) == 2
    assert pinning_members(instrument(built / "xdp_parser.bpf.o", tmp_path / "y.o")) == 0


# --- one contract: the compiled recorder's BTF is what the readers decode --------------------

CONTRACT_TYPES = {"__u32": ArgType("__u32", "unsigned int", 4, False, "int"),
                  "__s8": ArgType("signed char", "signed char", 1, True, "int")}
CONTRACT_IDENTITY = "ab" * 16
CONTRACT_NAMES = ("bpf_sdt_",)          # every struct the contract describes, and nothing of clang's own


def _bpftool_structs(obj: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Struct name -> (member, byte offset, byte size), from bpftool's BTF dump:
    an oracle independent of bpf_sdt.btf."""
    res = run([tool("bpftool"), "btf", "dump", "file", str(obj), "-j"])
    assert res.returncode == 0, res.stderr
    import json

    types = {t["id"]: t for t in json.loads(res.stdout)["types"]}

    def size(type_id: int) -> int:
        t = types[type_id]
        if t["kind"] == "TYPEDEF":
            return size(t["type_id"])
        if t["kind"] == "ARRAY":
            return int(t["nr_elems"]) * size(t["type_id"])
        return int(t["size"])

    return {t["name"]: [(m["name"], m["bits_offset"] // 8, size(m["type_id"])) for m in t["members"]]
            for t in types.values() if t["kind"] == "STRUCT" and t["name"].startswith(CONTRACT_NAMES)}


def _own_structs(obj: Path) -> dict[str, list[tuple[str, int, int]]]:
    btf = load_object(obj).btf
    assert btf is not None
    return {t.name: [(m.name, m.offset // 8, btf.size_of(m.type)) for m in t.members]
            for t in btf.types if t.kind == BtfKind.STRUCT and t.name}


def _dwarf_structs(obj: Path) -> dict[str, list[tuple[str, int, int]]]:
    """The same from DWARF, through pyelftools: BTF has no types of locals, so
    the event struct (a local pointer's target) is only described there."""
    from elftools.elf.elffile import ELFFile

    def size(die: Any) -> int:
        while "DW_AT_byte_size" not in die.attributes:
            if die.tag == "DW_TAG_array_type":
                count = sum(c.attributes["DW_AT_count"].value if "DW_AT_count" in c.attributes else 0
                            for c in die.iter_children() if c.tag == "DW_TAG_subrange_type")
                return int(count) * size(die.get_DIE_from_attribute("DW_AT_type"))
            die = die.get_DIE_from_attribute("DW_AT_type")
        return int(die.attributes["DW_AT_byte_size"].value)

    out = {}
    with obj.open("rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None or not name.value.startswith(b"bpf_sdt_"):
                    continue
                out[name.value.decode()] = [(m.attributes["DW_AT_name"].value.decode(),
                                             int(m.attributes["DW_AT_data_member_location"].value), size(m))
                                            for m in die.iter_children() if m.tag == "DW_TAG_member"]
    return out


def test_the_compiled_recorder_lays_out_its_structs_as_the_contract_says(tmp_path: Path) -> None:
    """Every struct the recorder shares with trace, compiled by clang, has
    the members, offsets and sizes of recorder_abi's description, and the
    readers' struct codecs have the same sizes: the C is rendered from the
    description, and this proves the compiler agrees with both."""
    probes = {"none": (), "one": (CONTRACT_TYPES["__u32"],), "three": (CONTRACT_TYPES["__s8"],) * 3,
              "twelve": (CONTRACT_TYPES["__u32"],) * MAX_ARGS}
    aggregations = (AggregationCode(HITS_MAP, "count"), AggregationCode(1, "count", ("arg0", "arg1")),
                    AggregationCode(2, "hist", (), "arg2"))
    options = RecorderOptions(probes={"three": ProbePlan(filter="arg0 > 1", aggregations=aggregations)})
    obj = build_recorder(probes, PAGE_SIZE, CONTRACT_IDENTITY, tmp_path, options)
    expected = [abi.event_struct(), abi.counters_struct(CONTRACT_IDENTITY), abi.aggregation_value_struct(),
                abi.aggregation_key_struct(0, 0), abi.aggregation_key_struct(1, 2), abi.aggregation_key_struct(2, 0),
                *(abi.args_struct(len(t)) for t in probes.values())]
    by_bpftool, by_ours, by_dwarf = _bpftool_structs(obj), _own_structs(obj), _dwarf_structs(obj)
    for s in expected:
        assert by_dwarf.get(s.name) == list(s.members()), s.name
        if s.name == abi.RECORDER_EVENT:
            continue                    # a local's type: not in BTF
        assert by_bpftool.get(s.name) == list(s.members()), s.name
        assert by_ours.get(s.name) == by_bpftool[s.name], s.name
    # The readers' codecs: the event's fixed part, the site id's place, the counters, the aggregation maps.
    assert abi.EVENT_HEADER.size == sum(size for _, _, size in abi.event_struct().members())
    event = {name: (off, size) for name, off, size in by_dwarf[abi.RECORDER_EVENT]}
    assert abi.EVENT_SITE.size == event["site"][0] + event["site"][1]
    assert abi.EVENT_HEADER.size == event["args"][0]
    assert abi.COUNTERS.size == sum(size for _, _, size in by_bpftool[abi.counters_struct(CONTRACT_IDENTITY).name])
    assert [name for name, _, _ in by_bpftool[abi.counters_struct(CONTRACT_IDENTITY).name]] == \
        list(abi.RECORDER_COUNTERS)
    assert list(Counters(None).read()._fields) == list(abi.RECORDER_COUNTERS)
    assert abi.AGGREGATION_VALUE.size == sum(size for _, _, size in by_bpftool[abi.AGGREGATION_VALUE_STRUCT])
    assert abi.aggregation_key(2).size == sum(size for _, _, size in by_bpftool[abi.aggregation_key_struct(1, 2).name])
    assert abi.aggregation_key(0).size == sum(size for _, _, size in by_bpftool[abi.aggregation_key_struct(0, 0).name])
    # The recorder functions are named by the contract's prefix, and the maps by its names.
    names = {s.name for s in load_object(obj).symbols}
    assert {f"{abi.RECORDER_PREFIX}{len(t)}" for p, t in probes.items() if p != "three"} <= names
    assert f"{abi.RECORDER_PREFIX}3_three" in names
    assert {abi.RECORDER_RINGBUF_MAP, abi.RECORDER_COUNTS_MAP, f"{abi.AGGREGATION_MAP_PREFIX}1"} <= names


# --- the recorder build cache (issue 22: no clang run for a recorder built before) ----------

CACHE_PROBES = {"one": (CONTRACT_TYPES["__u32"],), "three": (CONTRACT_TYPES["__s8"],) * 3}
OTHER_IDENTITY = "cd" * 16


def counting_clang(tmp_path: Path) -> tuple[Path, Path]:
    """A clang that logs each compile (not --version) before running the real one."""
    log = tmp_path / "compiles"
    wrapper = tmp_path / "clang-counting"
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo "$@" >> {log}\nexec {clang(19)} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def compiles(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def build_in(workdir: Path, identity: str) -> bytes:
    workdir.mkdir()
    return build_recorder(CACHE_PROBES, PAGE_SIZE, identity, workdir).read_bytes()


@pytest.fixture
def recorder_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wrapper, log = counting_clang(tmp_path)
    monkeypatch.setenv("BPF_SDT_CLANG", str(wrapper))
    monkeypatch.setenv("BPF_SDT_CACHE", str(tmp_path / "cache"))
    return log


def fresh_build(workdir: Path, identity: str, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """What clang writes for this build without any cache, in the same directory."""
    with monkeypatch.context() as m:
        m.setenv("BPF_SDT_CACHE", "off")
        for f in workdir.iterdir():
            f.unlink()
        return build_recorder(CACHE_PROBES, PAGE_SIZE, identity, workdir).read_bytes()


def test_a_second_recorder_build_runs_no_clang_and_gives_clangs_bytes(recorder_cache: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another object (another identity) in another build directory of the same
    length: the cache's object is exactly what clang writes there."""
    first = build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    second = build_in(tmp_path / "build-2", OTHER_IDENTITY)
    assert compiles(recorder_cache) == 1, "the second build ran clang"
    assert first != second
    assert second == fresh_build(tmp_path / "build-2", OTHER_IDENTITY, monkeypatch)
    assert compiles(recorder_cache) == 2
    btf = load_object(tmp_path / "build-2" / "bpf_sdt_recorder.bpf.o").btf
    assert btf is not None and btf.find(abi.counters_struct(OTHER_IDENTITY).name, BtfKind.STRUCT)


def test_a_build_directory_of_another_length_is_built_by_clang(recorder_cache: Path, tmp_path: Path) -> None:
    build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    build_in(tmp_path / "a-longer-build-directory", CONTRACT_IDENTITY)
    assert compiles(recorder_cache) == 2


@pytest.mark.parametrize("damage", ["object", "header", "counts", "empty", "deep header", "others-may-write"])
def test_a_damaged_or_foreign_cache_entry_is_rebuilt(recorder_cache: Path, tmp_path: Path, damage: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    (entry,) = (tmp_path / "cache" / "recorders").glob("*.entry")
    header, _, data = entry.read_bytes().partition(b"\n")
    if damage == "object":              # still an ELF file, but not a BPF object with the recorder's symbols
        entry.write_bytes(header + b"\n" + data[:64] + bytes(len(data) - 64))
    elif damage == "header":
        entry.write_bytes(b"{not json\n" + data)
    elif damage == "counts":            # a header that does not describe these bytes
        entry.write_bytes(header.replace(b'", 1]', b'", 7]').replace(b'", 2]', b'", 7]') + b"\n" + data)
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "deep header":               # within MAX_HEADER, deeper than json's recursion
        entry.write_bytes(b"[" * 4000 + b"\n" + data)
    else:
        entry.chmod(0o666)
    rebuilt = build_in(tmp_path / "build-2", OTHER_IDENTITY)
    assert compiles(recorder_cache) == 2, "a damaged entry was used"
    assert rebuilt == fresh_build(tmp_path / "build-2", OTHER_IDENTITY, monkeypatch)
    assert entry.stat().st_mode & 0o777 == 0o600
    build_in(tmp_path / "build-3", CONTRACT_IDENTITY)
    assert compiles(recorder_cache) == 3, "the rewritten entry serves the next build"


def test_instrument_record_with_and_without_the_cache_writes_the_same_bytes(built: Path, recorder_cache: Path,
                                                                            tmp_path: Path) -> None:
    """The command: outputs equal to an uncached run's (the temporary build
    directory's random name aside, which every run has its own of)."""
    import re

    temp_name = re.compile(rb"(bpf-sdt-instrument-)[a-z0-9_]{8}/")

    def recorded(name: str, **env: str) -> bytes:
        out = tmp_path / name
        res = run([*CLI, "instrument", "--record", str(built / "xdp_parser.bpf.o"), "-o", str(out)],
                  env={**_env(), **env})
        assert res.returncode == 0, res.stderr
        return temp_name.sub(rb"\1XXXXXXXX/", out.read_bytes())

    uncached = recorded("uncached.o", BPF_SDT_CACHE="off")
    first, second = recorded("first.o"), recorded("second.o")
    assert compiles(recorder_cache) == 2, "the cached run ran clang"
    assert uncached == first == second


def test_deferred_writes_leave_the_entry_once_written(recorder_cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """trace's instrument worker defers the cache's writes (the entry and the
    --version memo its key needs) until its answer is out: until then the
    build leaves nothing, afterwards the same entry a build writes at once."""
    from bpf_sdt.instrument import recorder_cache as cache

    entries = tmp_path / "cache" / "recorders"
    cache.defer_writes()
    try:
        first = build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
        assert not entries.exists() or not list(entries.iterdir()), "written before write_deferred"
    finally:
        cache.write_deferred()
    assert {p.suffix for p in entries.iterdir()} == {cache.VERSION_SUFFIX, cache.ENTRY_SUFFIX, cache.SOURCE_SUFFIX}
    second = build_in(tmp_path / "build-2", OTHER_IDENTITY)
    assert compiles(recorder_cache) == 1, "the deferred entry did not serve the next build"
    assert first != second == fresh_build(tmp_path / "build-2", OTHER_IDENTITY, monkeypatch)


# --- the rendered-source cache (a cached recorder needs no Jinja2) -------------------------

SOURCE_PROBE_SETS = {
    "record": (CACHE_PROBES, RecorderOptions()),
    "one arity": ({"solo": (CONTRACT_TYPES["__u32"],) * 2}, RecorderOptions()),
    "aggregating": ({"one": (CONTRACT_TYPES["__u32"],), "agg": (CONTRACT_TYPES["__s8"], CONTRACT_TYPES["__u32"])},
                    RecorderOptions(probes={"agg": ProbePlan(filter="arg1 > 2", ring=False, aggregations=(
                        AggregationCode(1, "count", keys=("arg0",)), AggregationCode(2, "sum", ("arg0",), "arg1")))},
                        plan_id="agg-sum")),
}
SOURCE_IDENTITIES = (CONTRACT_IDENTITY, OTHER_IDENTITY, "0123456789abcdef" * 2)


def recorder_from(workdir: Path, probes: Any, options: RecorderOptions, identity: str) -> bytes:
    """Built in ``workdir``, emptied first: its path is in the object."""
    workdir.mkdir(exist_ok=True)
    for f in workdir.iterdir():
        f.unlink()
    return build_recorder(probes, PAGE_SIZE, identity, workdir, options).read_bytes()


def cache_files(cache: Path, suffix: str) -> list[Path]:
    return list((cache / "recorders").glob(f"*{suffix}"))


@pytest.mark.parametrize("probe_set", sorted(SOURCE_PROBE_SETS))
def test_the_recorder_is_the_same_bytes_rendered_from_the_old_key_or_the_source_key(
        recorder_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe_set: str) -> None:
    """For several identities: the object clang writes for the rendered
    source (no cache), the one relocated from an object entry found by the
    rendered source's key (the source entries removed: rendered again), and
    the one found through the source entry (no render) are equal, byte for byte."""
    from bpf_sdt.instrument import observers
    from bpf_sdt.instrument import recorder_cache as cache

    probes, options = SOURCE_PROBE_SETS[probe_set]
    where, workdir = tmp_path / "cache", tmp_path / "build"
    for identity in SOURCE_IDENTITIES:
        with monkeypatch.context() as m:
            m.setenv("BPF_SDT_CACHE", "off")
            rendered = recorder_from(workdir, probes, options, identity)
        for entry in cache_files(where, cache.SOURCE_SUFFIX):
            entry.unlink()
        by_old_key = recorder_from(workdir, probes, options, identity)
        assert cache_files(where, cache.SOURCE_SUFFIX), "the render left no source entry"
        with monkeypatch.context() as m:
            m.setattr(observers, "recorder_template", _no_render)
            by_source_key = recorder_from(workdir, probes, options, identity)
        assert rendered == by_old_key == by_source_key, identity
    assert compiles(recorder_cache) == len(SOURCE_IDENTITIES) + 1, "a cached build ran clang"


def _no_render() -> None:
    raise AssertionError("rendered although the source was cached")


def test_a_cached_source_equals_the_render_for_every_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bpf_sdt.instrument.observers import recorder_source, render_recorder

    monkeypatch.setenv("BPF_SDT_CACHE", str(tmp_path / "cache"))
    for probes, options in SOURCE_PROBE_SETS.values():
        for identity in SOURCE_IDENTITIES:
            assert recorder_source(probes, PAGE_SIZE, identity, options) == \
                render_recorder(probes, PAGE_SIZE, identity, options)
        assert recorder_source(probes, PAGE_SIZE * 2, OTHER_IDENTITY, options) == \
            render_recorder(probes, PAGE_SIZE * 2, OTHER_IDENTITY, options), "the ring size is part of the key"


def test_a_recorder_built_before_imports_no_jinja2(recorder_cache: Path, tmp_path: Path) -> None:
    """A fresh process builds a cached recorder for another identity without
    Jinja2 (whose import and template compilation cost some 45 ms under load)."""
    build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    (tmp_path / "build-2").mkdir()
    script = ("import sys\n"
              "from bpf_sdt.argtype import ArgType\n"
              "from bpf_sdt.instrument.observers import PAGE_SIZE, build_recorder, prepare_recorder\n"
              "prepare_recorder()\n"
              f"probes = {{'one': ({CONTRACT_TYPES['__u32']!r},), 'three': ({CONTRACT_TYPES['__s8']!r},) * 3}}\n"
              f"build_recorder(probes, PAGE_SIZE, {OTHER_IDENTITY!r}, __import__('pathlib').Path({str(tmp_path / 'build-2')!r}))\n"
              "print(sorted(m for m in sys.modules if m.startswith(('jinja2', 'markupsafe'))))\n")
    res = run([sys.executable, "-c", script], env=dict(os.environ))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    assert compiles(recorder_cache) == 1


def test_with_the_cache_off_the_worker_prepares_the_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """BPF_SDT_CACHE=off means no cache, the rendered sources' too: every
    trace renders, so trace's worker compiles the template before its job."""
    from bpf_sdt.instrument import observers

    monkeypatch.setenv("BPF_SDT_CACHE", "off")
    observers.recorder_template.cache_clear()
    observers.prepare_recorder()
    assert observers.recorder_template.cache_info().currsize == 1


@pytest.mark.parametrize("damage", ["not json", "no parts", "parts not strings", "no identity", "a part cut short",
                                    "empty", "deep", "others-may-write", "a link"])
def test_a_damaged_or_foreign_source_entry_is_rendered_again(recorder_cache: Path, tmp_path: Path, damage: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from bpf_sdt.instrument import recorder_cache as cache

    build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    (entry,) = cache_files(tmp_path / "cache", cache.SOURCE_SUFFIX)
    good = entry.read_bytes()
    if damage == "not json":
        entry.write_bytes(good[:-10])
    elif damage == "no parts":
        entry.write_text(json.dumps({"format": cache.SOURCE_FORMAT}))
    elif damage == "parts not strings":
        entry.write_text(json.dumps({"format": cache.SOURCE_FORMAT, "parts": ["a", 2]}))
    elif damage == "no identity":             # one part: the source would not name this build's identity
        entry.write_text(json.dumps({"format": cache.SOURCE_FORMAT, "parts": ["int x;"]}))
    elif damage == "a part cut short":        # well-formed, but not what was written: clang would refuse it
        data = json.loads(good)
        data["parts"][-1] = data["parts"][-1][:-40]
        entry.write_text(json.dumps(data))
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "deep":                      # deeper than json's recursion: a miss, not a RecursionError
        entry.write_bytes(b"[" * 100_000)
    elif damage == "others-may-write":
        entry.chmod(0o666)
    else:
        (tmp_path / "elsewhere").write_bytes(good)
        entry.unlink()
        entry.symlink_to(tmp_path / "elsewhere")
    rendered = []
    from bpf_sdt.instrument import observers

    real = observers.recorder_template
    monkeypatch.setattr(observers, "recorder_template", lambda: rendered.append(1) or real())
    rebuilt = build_in(tmp_path / "build-2", OTHER_IDENTITY)
    assert rendered, "a damaged source entry was used"
    assert compiles(recorder_cache) == 1, "the object entry was not used"
    assert rebuilt == fresh_build(tmp_path / "build-2", OTHER_IDENTITY, monkeypatch)
    # Rewritten as the render left it (a link is written through, as fsutil.write_atomic does: never read).
    assert entry.read_bytes() == good and entry.stat().st_mode & 0o777 == 0o600


def test_a_template_that_uses_the_identity_otherwise_leaves_no_source_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry stands for every identity only if the identity is plain text
    in the source: checked by a second render before the entry is written."""
    from bpf_sdt.instrument import recorder_cache as cache

    monkeypatch.setenv("BPF_SDT_CACHE", str(tmp_path / "cache"))
    def render(identity: str) -> str:         # the identity's first characters too, not the identity
        return f"struct s_{identity} {{ int x_{identity[:4]}; }};"

    source = render(CONTRACT_IDENTITY)
    cache.store_source("inputs " + CONTRACT_IDENTITY, CONTRACT_IDENTITY, source, render)
    assert not cache_files(tmp_path / "cache", cache.SOURCE_SUFFIX)
    cache.store_source("inputs " + CONTRACT_IDENTITY, CONTRACT_IDENTITY, source,
                       lambda other: source.replace(CONTRACT_IDENTITY, other))
    assert cache.fetch_source("inputs " + OTHER_IDENTITY, OTHER_IDENTITY) == source.replace(CONTRACT_IDENTITY,
                                                                                          OTHER_IDENTITY)


def test_a_changed_renderer_is_a_new_source_key(recorder_cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The template calls methods of its variables (AggregationCode.last,
    ArgType's): the Python that defines them is part of the source's key, so
    an upgrade that changes it renders again instead of serving the old
    source."""
    from bpf_sdt.instrument import observers

    build_in(tmp_path / "build-1", CONTRACT_IDENTITY)
    rendered = []
    real = observers.recorder_template
    monkeypatch.setattr(observers, "recorder_template", lambda: rendered.append(1) or real())
    build_in(tmp_path / "build-2", OTHER_IDENTITY)
    assert not rendered, "the same renderer rendered again"
    monkeypatch.setattr(observers, "_renderer_digest", lambda: "another bpf-sdt")
    build_in(tmp_path / "build-3", OTHER_IDENTITY)
    assert rendered, "a source of another renderer was served"

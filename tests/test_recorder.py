"""The recorder as other loaders see it (issues 17, 20, 21): its maps pin where
the loader says (`bpftool prog loadall OUT DIR pinmaps MAPDIR`), never in
/sys/fs/bpf by itself; it carries the instrumented object's identity, so
`trace --pinned` refuses another object's ring; it counts what it submitted,
so a second reader's share is reported; its functions are global (the
verifier walks them once per program).  All against the real kernel, with
bpftool as the loader and test runner."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import test_trace
from bpf_sdt.trace.recorder import Counters, map_identity
from bpf_sdt.trace.sites import recorder_identity
from test_trace import CLI, XDP_PACKETS, Tracer, _env, json_lines, observed, xdp_parser_model
from toolchain import REPO, clang, compile_bpf, run, tool

from bpf_sdt.btf import BtfKind
from bpf_sdt.elf import load_object
from bpf_sdt.format import RECORDER_COUNTS_MAP, RECORDER_IDENTITY_PREFIX, RECORDER_RINGBUF_MAP
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

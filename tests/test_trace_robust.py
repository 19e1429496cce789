"""`bpf-sdt trace` under load, signals and hostile input, against the real
kernel: a ring buffer read at 50,000 events/s by both readers, sustained
overload of a pinned ring (memory ceiling, exact lost count, prompt signals),
SIGINT/SIGTERM/SIGHUP in every phase (instrument, verification, test runs on
a 1 GiB capture, a blocked stdout), a slow stdout, captures streamed in
bounded memory, and every bad option refused up front in one line."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bpf_sdt.trace.pcap import MAX_PACKET, PCAP_HEADER, PCAP_MAGIC_US, write_pcap
from bpf_sdt.trace.ring import open_ring
from test_trace import CLI, ETH_P_IP, _env, bpffs, eth, ipv4, json_lines, udp
from toolchain import bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.cli import main as cli_main
from bpf_sdt.format import RECORDER_COUNTS_MAP, RECORDER_RINGBUF_MAP
from bpf_sdt.libbpf import LibbpfError, LoadedObject

__all__ = ["bpffs"]             # a fixture, used by name

SIGNAL_EXIT = 128
STOP_WITHIN_S = 1.0             # every phase ends this soon after a stop signal
RSS_CEILING_KB = 200 * 1024
READY_TIMEOUT_S = 60.0
PACKET = eth(ETH_P_IP, ipv4(udp(1000, 2000, b"robust")))
GIB = 1 << 30
PROC_STAT_STARTTIME = 19        # starttime's index in /proc/PID/stat after the ")" ending the name (field 22)

PROGS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE2(pkt, __u32, __u32);
SEC("xdp") int count_xdp(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	BPF_SDT_PROBE2(pkt, len, ctx->ingress_ifindex);
	return XDP_PASS;
}
SEC("tc") int unspec_tc(struct __sk_buff *skb)
{
	BPF_SDT_PROBE2(pkt, skb->len, skb->protocol);
	return -1;	/* TC_ACT_UNSPEC */
}
SEC("raw_tp/sys_enter") int on_context(__u64 *ctx)
{
	BPF_SDT_PROBE2(pkt, (__u32)ctx[0], 0);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""

# Thirty programs the verifier walks for 0.15 s (this machine) to a second each
# (a 60,000-step loop it cannot prune: each step's i is a different constant),
# and one with a probe.
SLOW_TO_VERIFY = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(tick, __u32);
SEC("xdp") int fast(struct xdp_md *ctx)
{
	BPF_SDT_PROBE1(tick, ctx->ingress_ifindex);
	return XDP_PASS;
}
#define SLOW(n) SEC("xdp") int slow##n(struct xdp_md *ctx) \
{ \
	__u32 acc = ctx->ingress_ifindex; \
	_Pragma("clang loop unroll(disable)") \
	for (__u32 i = 0; i < 60000; i++) { \
		acc = acc * 31 + (i ^ ctx->rx_queue_index); \
		if (acc == n) \
			break; \
	} \
	return acc & 1; \
}
SLOWEST
char LICENSE[] SEC("license") = "GPL";
""".replace("SLOWEST", " ".join(f"SLOW({n})" for n in range(1, 31)))


def _compile(src: str, out: Path) -> Path:
    out.with_suffix(".c").write_text(src)
    multiarch = run([tool("gcc"), "-print-multiarch"]).stdout.strip()
    compile_bpf(out.with_suffix(".c"), out, clang(19), extra=(f"-I/usr/include/{multiarch}",))
    return out


@pytest.fixture(scope="module")
def progs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(PROGS, tmp_path_factory.mktemp("robust") / "progs.bpf.o")


@pytest.fixture
def kernel() -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")


def instrumented(obj: Path, out: Path, *extra: str) -> Path:
    res = run([*CLI, "instrument", str(obj), "-o", str(out), *extra], env=_env())
    assert res.returncode == 0, res.stderr
    return out


class Trace:
    """A `bpf-sdt trace` subprocess with its own TMPDIR; stdout is read by a
    thread that counts lines (or not read at all: ``read_stdout=False``)."""

    def __init__(self, tmp: Path, *args: str, read_stdout: bool = True,
                 stdout: int | None = subprocess.PIPE, cache: str | None = None) -> None:
        self.tmpdir = tmp / f"tmpdir-{os.getpid()}-{time.monotonic_ns()}"
        self.tmpdir.mkdir()
        env = {**_env(), "TMPDIR": str(self.tmpdir)}
        if cache is not None:
            env["BPF_SDT_CACHE"] = cache        # "off": instrument runs, whatever an earlier trace cached
        self.proc = subprocess.Popen([*CLI, "trace", *args], stdout=stdout, stderr=subprocess.PIPE, env=env)
        self.head = bytearray()             # the first MiB of stdout
        self.out = bytearray()              # the last MiB or two
        self.err = bytearray()
        self.lines = 0
        self.max_rss_kb = 0
        self._threads = [threading.Thread(target=self._read_err, daemon=True),
                         threading.Thread(target=self._sample_rss, daemon=True)]
        if read_stdout and stdout == subprocess.PIPE:
            self._threads.append(threading.Thread(target=self._read_out, daemon=True))
        for t in self._threads:
            t.start()

    def _read_out(self, keep: int = 1 << 20) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 20):
            self.lines += chunk.count(b"\n")
            if len(self.head) < keep:
                self.head += chunk[: keep - len(self.head)]
            self.out += chunk
            if len(self.out) > 2 * keep:        # keep the tail only: the summary lines
                del self.out[:-keep]

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 1 << 16):
            self.err += chunk

    def _sample_rss(self) -> None:
        while self.proc.poll() is None:
            try:
                status = Path(f"/proc/{self.proc.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.max_rss_kb = max(self.max_rss_kb, int(line.split()[1]))
            time.sleep(0.05)

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"trace ended before {what}: {self.err.decode()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.err.decode()}"
            time.sleep(0.02)

    def ready(self) -> None:
        self.wait_for(lambda: b"Ctrl-C to stop" in self.err, "tracing to start")

    def stop(self, sig: int) -> tuple[int, float]:
        """Sends ``sig``; (exit code, seconds until the process ended)."""
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        took = time.monotonic() - start
        self.join()
        return code, took

    def join(self) -> None:
        self.proc.wait(timeout=120)
        for t in self._threads:
            t.join(timeout=10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def event_lines(self) -> int:
        """JSON lines with a probe: all lines but those before the first
        event and after the last (version, summary, lost...)."""
        head = self.head.split(b"\n")
        before = next((i for i, line in enumerate(head) if b'"probe"' in line), len(head))
        tail = self.out.rstrip(b"\n").split(b"\n")
        after = next((i for i, line in enumerate(reversed(tail)) if b'"probe"' in line), len(tail))
        return self.lines - before - after

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tmpdir.iterdir() if p.name.startswith("bpf-sdt"))


@pytest.fixture
def traces() -> Iterator[list[Trace]]:
    started: list[Trace] = []
    yield started
    for t in started:
        t.kill()


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid``."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        names[int(entry)] = name
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, names[child]))
            todo.append(child)
    return found


# --- 1. the ring at 50,000 events/s ---------------------------------------------------

RING_EVENTS = 300_000
RING_RATE = 50_000              # events per second
RING_BATCH = 2500               # runs (one event each) per BPF_PROG_TEST_RUN: one every 50 ms (a
                                # repeated XDP test run costs ~20 ms of set-up on this kernel)
RING_SIZE = 1 << 18             # 256 KiB: about 6,500 events, 130 ms at this rate


@pytest.mark.kernel
@pytest.mark.parametrize("reader", ["mmap", "libbpf"])
def test_ring_read_at_50k_events_per_second_loses_nothing(progs: Path, kernel: None, bpffs: Path,
                                                          tmp_path: Path, reader: str) -> None:
    """A producer thread test-runs the program 2,500 times every 50 ms; the
    reader drains concurrently.  Every event must arrive: a torn consumer
    position makes the kernel see a full ring and refuse reservations."""
    inst = instrumented(progs, tmp_path / "inst.o", "--ringbuf-size", str(RING_SIZE))
    read = 0

    def sink(_buf: object, _off: int, _size: int) -> None:
        nonlocal read
        read += 1

    with LoadedObject.open(inst, pin_root_path=bpffs) as bpf:
        bpf.load()
        prog = bpf.find_program("count_xdp")
        ring_map = bpf.find_map(RECORDER_RINGBUF_MAP)
        ring = open_ring(ring_map.fd, ring_map.max_entries, reader)
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                start = time.monotonic()
                for n in range(RING_EVENTS // RING_BATCH):
                    prog.test_run(PACKET, repeat=RING_BATCH)
                    ahead = start + (n + 1) * RING_BATCH / RING_RATE - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                failure.append(e)

        producer = threading.Thread(target=produce)
        started = time.monotonic()
        producer.start()
        try:
            while producer.is_alive() or ring.drain(sink):
                select.select([ring.fd], [], [], 0.01)
                ring.drain(sink)
        finally:
            producer.join()
            ring.drain(sink)
            ring.close()
        took = time.monotonic() - started
    assert not failure, failure
    assert read == RING_EVENTS, f"{RING_EVENTS - read} of {RING_EVENTS} events lost ({reader} reader)"
    assert took < RING_EVENTS / RING_RATE * 2, f"the producer could not keep the rate: {took:.1f} s"


# --- 2. overload of a pinned ring -----------------------------------------------------

OVERLOAD_S = 20.0             # what issue 17 asks the test to hold for
PRODUCER_REPEAT = 200_000       # runs per bpftool invocation: about 0.1 s of events at kernel speed


def _produce_for(pins: Path, packet: Path, seconds: float, stop: threading.Event) -> list[int]:
    """bpftool test-runs the pinned program in a loop: runs done, in a list
    (filled by the thread, final once it has ended)."""
    done = [0]

    def loop() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop.is_set():
            res = run([tool("bpftool"), "prog", "run", "pinned", str(pins / "progs" / "count_xdp"),
                       "data_in", str(packet), "repeat", str(PRODUCER_REPEAT)])
            assert res.returncode == 0, res.stderr
            done[0] += PRODUCER_REPEAT

    threading.Thread(target=loop, daemon=True, name="producer").start()
    return done


def _wait_thread(name: str) -> None:
    for t in threading.enumerate():
        if t.name == name:
            t.join(timeout=30)


@pytest.mark.kernel
def test_overload_keeps_printing_in_bounded_memory_with_an_exact_lost_count(
        progs: Path, kernel: None, bpffs: Path, traces: list[Trace], tmp_path: Path) -> None:
    """The kernel produces far faster than trace decodes, for several seconds:
    output keeps coming, memory stays under a fixed ceiling, "lost so far" is
    said at most once a second, and read + lost == produced."""
    inst = instrumented(progs, tmp_path / "inst.o")
    loadall_count_xdp(inst, bpffs)
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(inst), "--pinned", "--pin-dir", str(bpffs), "--json")
    traces.append(tracer)
    tracer.ready()
    stop = threading.Event()
    produced = _produce_for(bpffs, tmp_path / "p.bin", OVERLOAD_S, stop)
    time.sleep(OVERLOAD_S / 2)
    halfway = tracer.lines
    _wait_thread("producer")
    assert halfway > 0, "no output while overloaded"
    code, took = tracer.stop(signal.SIGINT)
    assert code == 0 and took < STOP_WITHIN_S, (code, took, tracer.err.decode())
    lines = json_lines(tracer.out[tracer.out.rfind(b"\n", 0, len(tracer.out) - 1) + 1:].decode())
    lost = lines[-1]["lost"]
    read = tracer.event_lines()
    err = tracer.err.decode()
    dropped = _said(r"(\d+) events not written", err)            # read from the ring, but stdout was behind
    unread = _said(r"(\d+) events left unread", err)              # still in the ring when reading stopped
    assert read + dropped + unread + lost == produced[0], (read, dropped, unread, lost, produced[0], err)
    assert lost > 0, "not an overload"
    assert tracer.max_rss_kb < RSS_CEILING_KB, f"RSS {tracer.max_rss_kb} kB"
    so_far = tracer.err.decode().count("lost so far")
    assert so_far <= OVERLOAD_S + 3, f"{so_far} 'lost so far' lines"


def _said(pattern: str, err: str) -> int:
    found = re.search(pattern, err)
    return int(found.group(1)) if found else 0


def loadall_count_xdp(inst: Path, pins: Path) -> None:
    res = run([tool("bpftool"), "prog", "loadall", str(inst), str(pins / "progs"), "pinmaps", str(pins)])
    assert res.returncode == 0, res.stderr


@pytest.mark.kernel
def test_signal_under_overload_ends_within_a_second(progs: Path, kernel: None, bpffs: Path,
                                                     traces: list[Trace], tmp_path: Path) -> None:
    inst = instrumented(progs, tmp_path / "inst.o")
    loadall_count_xdp(inst, bpffs)
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(inst), "--pinned", "--pin-dir", str(bpffs))
    traces.append(tracer)
    tracer.ready()
    stop = threading.Event()
    _produce_for(bpffs, tmp_path / "p.bin", 30, stop)
    try:
        time.sleep(3)
        code, took = tracer.stop(signal.SIGTERM)
    finally:
        stop.set()
        _wait_thread("producer")
    assert code == 0 and took < STOP_WITHIN_S, (code, took, tracer.err.decode())
    assert "lost: the ring buffer was full" in tracer.err.decode()
    assert tracer.lines > 0


# --- 3. a stop signal in every phase --------------------------------------------------


def _assert_stopped(tracer: Trace, sig: int) -> None:
    code, took = tracer.stop(sig)
    assert code == SIGNAL_EXIT + sig, (code, tracer.err.decode())
    assert took < STOP_WITHIN_S, f"{took:.2f} s to stop"
    assert "Traceback" not in tracer.err.decode(), tracer.err.decode()
    assert tracer.leftovers() == [], tracer.leftovers()
    assert descendants(tracer.proc.pid) == []


@pytest.mark.kernel
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_during_instrument_kills_its_compiler_and_removes_temporaries(
        progs: Path, kernel: None, traces: list[Trace], tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"), cache="off")
    traces.append(tracer)
    tracer.wait_for(lambda: any("clang" in name for _, name in descendants(tracer.proc.pid)),
                    "instrument to run clang")
    compilers = [(pid, _started(pid)) for pid, name in descendants(tracer.proc.pid) if "clang" in name]
    _assert_stopped(tracer, sig)
    for pid, started in compilers:
        # the same process (pids are reused fast on a busy machine: pid_max is 32768 here), dead or a zombie
        if started is not None and _started(pid) == started:
            assert "zombie" in Path(f"/proc/{pid}/status").read_text(), f"clang {pid} survived"


def _started(pid: int) -> int | None:
    """A process's start time (clock ticks after boot), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[PROC_STAT_STARTTIME])


@pytest.mark.kernel
def test_a_cached_trace_runs_no_compiler_and_prints_the_same(progs: Path, kernel: None, tmp_path: Path) -> None:
    """trace --run again on the same object and options takes the instrumented
    object, its sites and its site table from the cache (trace/instcache.py):
    no clang runs, and the events are the same."""
    (tmp_path / "p.bin").write_bytes(PACKET)
    log = tmp_path / "clang.log"
    wrapper = tmp_path / "clang-wrapper"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {clang(19)} \"$@\"\n")
    wrapper.chmod(0o755)
    env = {**_env(), "BPF_SDT_CACHE": str(tmp_path / "cache"), "BPF_SDT_CLANG": str(wrapper)}
    cmd = [*CLI, "trace", str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"), "--json"]

    def events() -> list[object]:
        res = run(cmd, env=env)
        assert res.returncode == 0, res.stderr
        return [(e["probe"], e["args"], e.get("site")) for e in json_lines(res.stdout) if "probe" in e]

    first = events()
    assert first and log.exists(), "the first trace builds the recorder with the wrapper"
    compiled = log.read_text()
    assert events() == first
    assert log.read_text() == compiled, "a cached trace ran clang"
    assert len([p for p in (tmp_path / "cache" / "instrumented").iterdir() if not p.name.startswith(".")]) == 1


# An XDP program the verifier refuses (a packet read without a bounds check), with a probe.
REFUSED_BY_VERIFIER = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(tick, __u32);
SEC("xdp") int unchecked(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	BPF_SDT_PROBE1(tick, ctx->ingress_ifindex);
	return data[20];
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_a_cached_site_table_that_does_not_decode_is_a_miss(progs: Path, kernel: None, tmp_path: Path) -> None:
    """A hit's site table is decoded while its copy loads (docs/trace.md,
    "Start-up"): one that does not decode then (a class no site table has)
    is still a miss: the copy loaded meanwhile is dropped unrun, instrument
    runs again (clang with it, the recorder cache being gone) and the events
    are the same, exit 0; the damaged entry is removed, and stored again sound."""
    (tmp_path / "p.bin").write_bytes(PACKET)
    log = tmp_path / "clang.log"
    wrapper = tmp_path / "clang-wrapper"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexec {clang(19)} \"$@\"\n")
    wrapper.chmod(0o755)
    cache = tmp_path / "cache"
    env = {**_env(), "BPF_SDT_CACHE": str(cache), "BPF_SDT_CLANG": str(wrapper)}
    cmd = [*CLI, "trace", str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"), "--json"]

    def events() -> list[object]:
        res = run(cmd, env=env)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
        return [(e["probe"], e["args"], e.get("site")) for e in json_lines(res.stdout) if "probe" in e]

    first = events()
    [entry] = [p for p in (cache / "instrumented").iterdir() if not p.name.startswith(".")]
    table = json.loads((entry / "sites.json").read_text())
    table["sites"][0]["class"] = "bpf_sdt.sites:NoSuchSite"
    (entry / "sites.json").write_text(json.dumps(table))
    shutil.rmtree(cache / "recorders")
    compiled = log.read_text()
    assert events() == first
    assert log.read_text() != compiled, "the damaged entry was taken: instrument did not run"
    # The damaged entry is gone (else every later trace would load it and instrument again)...
    assert not any("NoSuchSite" in p.read_text() for p in (cache / "instrumented").glob("*/sites.json"))
    # ...and the next trace stores a sound one, which the one after takes.
    assert events() == first
    [entry] = [p for p in (cache / "instrumented").iterdir() if not p.name.startswith(".")]
    assert "NoSuchSite" not in (entry / "sites.json").read_text()
    assert events() == first


@pytest.mark.kernel
def test_a_copy_the_verifier_refuses_is_one_line_with_its_reason(kernel: None, tmp_path: Path) -> None:
    """trace loads its copy quietly (libbpf's log would call into Python for
    every line, LoadedObject.load): a refusal is loaded again with the log,
    so the error still names the verifier's reason; the same from the cache."""
    obj = _compile(REFUSED_BY_VERIFIER, tmp_path / "refused.bpf.o")
    (tmp_path / "p.bin").write_bytes(PACKET)
    env = {**_env(), "BPF_SDT_CACHE": str(tmp_path / "cache")}
    for attempt in ("instrumented", "cached"):
        res = run([*CLI, "trace", str(obj), "--run", "unchecked", "--packet", str(tmp_path / "p.bin")], env=env)
        assert res.returncode == 2 and res.stdout == "", (attempt, res.stderr)
        assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, (attempt, res.stderr)
        assert "(verifier: prog 'unchecked': invalid access to packet" in res.stderr, (attempt, res.stderr)


def test_a_quiet_load_has_no_reason_and_printing_comes_back(kernel: None, tmp_path: Path) -> None:
    """LoadedObject.load(log=False) inside printing_off(): no reason, no log;
    after the block libbpf's printing is back (a logged load has both)."""
    from bpf_sdt.libbpf import LibbpfError, printing_off

    obj = _compile(REFUSED_BY_VERIFIER, tmp_path / "refused.bpf.o")
    bpf = LoadedObject.open(obj)
    with printing_off(), pytest.raises(LibbpfError) as quiet:
        bpf.load(log=False)
    assert "verifier:" not in str(quiet.value) and not quiet.value.log, str(quiet.value)
    bpf = LoadedObject.open(obj)
    with pytest.raises(LibbpfError) as logged:
        bpf.load()
    assert "(verifier: prog 'unchecked': invalid access to packet" in str(logged.value), str(logged.value)
    assert logged.value.log


# Modules a cached trace --run does without (docs/trace.md, "Start-up"): the
# instrument worker's pickle, socket, platform, OpenSSL (the cache key is
# BLAKE2b), dataclasses and inspect; and the site table's modules with the
# ELF, notes, instruction and model layers behind them (the entry's sites are
# decoded into their record alone, bpf_sdt.located_site).
NOT_ON_THE_CACHED_PATH = ("pickle", "socket", "platform", "_hashlib", "dataclasses", "inspect",
                          "bpf_sdt.sites", "bpf_sdt.elf", "bpf_sdt.notes", "bpf_sdt.insn", "bpf_sdt.bpf_helpers",
                          "bpf_sdt.format", "bpf_sdt.model", "bpf_sdt.btf", "bpf_sdt.btfext", "elftools")
# Imported beside the copy's load, so only after the runner's own imports.
BESIDE_THE_LOAD = ("bpf_sdt.located_site", "bpf_sdt.trace.output", "bpf_sdt.trace.ring",
                   "bpf_sdt.trace.recorder")
# The command as `python -m bpf_sdt.cli` runs it, saying at its exit what it
# imported: -X importtime does not log a module imported by importlib.import_module
# (the cache entry's classes, bpf_sdt.argtype among them), sys.modules has them all.
_MODULES_AT_EXIT = ("import atexit, os, runpy, sys\n"
                    "atexit.register(lambda: os.write(2, ('modules: ' + ' '.join(sys.modules) + '\\n').encode()))\n"
                    "sys.argv[0] = 'bpf-sdt'\n"
                    "runpy.run_module('bpf_sdt.cli', run_name='__main__', alter_sys=True)\n")


@pytest.mark.kernel
def test_a_cached_trace_imports_the_site_table_beside_the_load_and_no_more(progs: Path, kernel: None,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKET)
    env = {**_env(), "BPF_SDT_CACHE": str(tmp_path / "cache")}
    args = ["trace", str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"), "--json"]
    assert run([*CLI, *args], env=env).returncode == 0                 # fills the cache
    res = run([sys.executable, "-X", "importtime", "-c", _MODULES_AT_EXIT, *args], env=env)
    assert res.returncode == 0 and '"probe"' in res.stdout, res.stderr
    [modules] = [line.split()[1:] for line in res.stderr.splitlines() if line.startswith("modules: ")]
    assert "bpf_sdt.argtype" in modules, modules                        # the listing is the run's own
    assert not set(NOT_ON_THE_CACHED_PATH) & set(modules), set(NOT_ON_THE_CACHED_PATH) & set(modules)
    imported = [line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")]
    runner = imported.index("bpf_sdt.trace.runner")
    assert all(imported.index(m) > runner for m in BESIDE_THE_LOAD), imported


@pytest.mark.kernel
def test_signal_during_a_long_verification(kernel: None, traces: list[Trace], tmp_path: Path) -> None:
    slow = _compile(SLOW_TO_VERIFY, tmp_path / "slow.bpf.o")
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(slow), "--run", "fast", "--packet", str(tmp_path / "p.bin"))
    traces.append(tracer)

    def loading() -> bool:              # instrumented, clang gone: the kernel is verifying
        return any(tracer.tmpdir.glob("bpf-sdt-trace-*/pins")) and not descendants(tracer.proc.pid)

    tracer.wait_for(loading, "the load to start")
    time.sleep(1.0)                     # well inside 30 programs of 0.15 s (this machine) to 1 s each
    _assert_stopped(tracer, signal.SIGHUP)


def test_the_work_beside_the_load_starts_once_the_load_is_in_libbpf(monkeypatch: pytest.MonkeyPatch) -> None:
    """meanwhile() holds the GIL: started before the loading thread has made
    its call into libbpf (where ctypes lets the GIL go), it would hold the
    load back by a switch interval or more.  The thread is made slow on its
    way there (its signal mask), as a busy machine makes it."""
    from bpf_sdt.trace.runner import _load_interruptibly
    from bpf_sdt.trace.runtime import StopSignals

    mask = signal.pthread_sigmask

    def slow_mask(how: int, signals: object) -> object:
        time.sleep(0.05)
        return mask(how, signals)  # type: ignore[arg-type]

    monkeypatch.setattr(signal, "pthread_sigmask", slow_mask)

    class Loading:
        """Stands in for a LoadedObject whose load is under way in libbpf."""

        def __init__(self) -> None:
            self.calling, self.release = threading.Event(), threading.Event()

        def load(self, log: bool = True) -> None:
            self.calling.set()
            self.release.wait(READY_TIMEOUT_S)

    loading = Loading()
    seen: list[bool] = []

    def meanwhile() -> None:
        seen.append(loading.calling.is_set())
        loading.release.set()

    with StopSignals() as stop:
        assert _load_interruptibly(loading, stop, meanwhile, quiet=True)  # type: ignore[arg-type]
    assert seen == [True]


@pytest.mark.kernel
def test_a_failure_beside_the_load_abandons_the_verification(kernel: None, tmp_path: Path) -> None:
    """What runs beside the load (a cached site table that does not decode)
    fails: the load is interrupted, not waited for to the end of a long
    verification and then closed unused.  Interrupted, libbpf fails the load
    and the object is closed; a load run to the end would have left every
    program loaded."""
    from bpf_sdt.trace.runner import _load_interruptibly
    from bpf_sdt.trace.runtime import StopSignals

    from bpf_sdt.errors import InputError

    bpf = LoadedObject.open(_compile(SLOW_TO_VERIFY, tmp_path / "slow.bpf.o"))

    def meanwhile() -> None:
        raise InputError("not a site table")

    try:
        with StopSignals() as stop, pytest.raises(InputError, match="not a site table"):
            _load_interruptibly(bpf, stop, meanwhile, quiet=True)
        assert not stop.requested
        with pytest.raises(LibbpfError, match="closed"):
            bpf.programs[-1].fd      # noqa: B018 - the load failed: libbpf's object is gone
        assert not [t for t in threading.enumerate() if t.name == "bpf-sdt-load"]
    finally:
        bpf.close()


@pytest.mark.kernel
def test_signal_with_a_blocked_stdout(progs: Path, kernel: None, traces: list[Trace], tmp_path: Path) -> None:
    """Nobody reads stdout: trace still stops within a second and says how
    many events it could not write."""
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"),
                   "--repeat", str(10**9), "--json", read_stdout=False)
    traces.append(tracer)
    tracer.wait_for(lambda: _pipe_full(tracer), "stdout to fill")
    time.sleep(0.5)
    _assert_stopped(tracer, signal.SIGINT)
    assert "events not written: stdout too slow" in tracer.err.decode(), tracer.err.decode()


@pytest.mark.kernel
def test_signal_during_raw_tp_runs_one_call_each(progs: Path, kernel: None, traces: list[Trace],
                                                 tmp_path: Path) -> None:
    """A raw_tp test run is one call per run: batches are sized by their wall
    time, not by the kernel's much smaller figure, so a stop waits little."""
    tracer = Trace(tmp_path, str(progs), "--run", "on_context", "--repeat", str(10**9), "--json")
    traces.append(tracer)
    tracer.wait_for(lambda: tracer.lines > 1000, "runs to start")
    time.sleep(0.5)
    _assert_stopped(tracer, signal.SIGINT)
    run_line = json_lines(tracer.out[tracer.out.rfind(b"\n", 0, len(tracer.out) - 1) + 1:].decode())[-1]
    assert 0 < run_line["repeat"] < 10**9 and run_line["events"] == run_line["repeat"], run_line


def _pipe_full(tracer: Trace) -> bool:
    import fcntl
    import termios

    assert tracer.proc.stdout is not None
    buf = bytearray(4)
    fcntl.ioctl(tracer.proc.stdout.fileno(), termios.FIONREAD, buf)
    queued: int = struct.unpack("i", buf)[0]
    return queued >= 60_000                             # the default pipe holds 64 KiB


def sparse_capture(path: Path, size: int) -> Path:
    """A classic pcap of ``size`` bytes that costs no disk: a header, then a
    hole, which reads as zero-length packets."""
    path.write_bytes(struct.pack("<" + PCAP_HEADER, PCAP_MAGIC_US, 2, 4, 0, 0, MAX_PACKET, 1))
    os.truncate(path, size)
    return path


@pytest.mark.kernel
def test_signal_while_running_a_1_gib_capture_in_bounded_memory(progs: Path, kernel: None, traces: list[Trace],
                                                               tmp_path: Path) -> None:
    capture = sparse_capture(tmp_path / "huge.pcap", GIB)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--pcap", str(capture), "--json")
    traces.append(tracer)
    tracer.wait_for(lambda: tracer.lines > 10_000, "runs to start")
    time.sleep(1.5)
    _assert_stopped(tracer, signal.SIGHUP)
    assert tracer.max_rss_kb < RSS_CEILING_KB, f"RSS {tracer.max_rss_kb} kB"
    last = json_lines(tracer.out[tracer.out.rfind(b"\n", 0, len(tracer.out) - 1) + 1:].decode())[-1]
    assert last["error"] == "Invalid argument" and last["size"] == 0, last   # an empty packet, refused


@pytest.mark.kernel
def test_a_reader_that_leaves_ends_trace_quietly_with_141(progs: Path, kernel: None, traces: list[Trace],
                                                          tmp_path: Path) -> None:
    """`trace ... | head -1`: the runs stop, everything is released, no message,
    exit 128 + SIGPIPE as every command ends on a closed pipe (docs/cli.md)."""
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"),
                   "--repeat", str(10**9), "--json", read_stdout=False)
    traces.append(tracer)
    assert tracer.proc.stdout is not None
    assert os.read(tracer.proc.stdout.fileno(), 100)
    closed = time.monotonic()
    tracer.proc.stdout.close()
    tracer.join()
    assert time.monotonic() - closed < STOP_WITHIN_S
    assert tracer.proc.returncode == SIGNAL_EXIT + signal.SIGPIPE, tracer.err.decode()
    assert tracer.err == b"" and tracer.leftovers() == []


@pytest.mark.kernel
def test_a_full_disk_on_stdout_is_one_line_exit_2(progs: Path, kernel: None, tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKET)
    with open("/dev/full", "w") as full:
        res = subprocess.run([*CLI, "trace", str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"),
                              "--repeat", "1000", "--json"], stdout=full, stderr=subprocess.PIPE, text=True,
                             env=_env(), timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr == "bpf-sdt trace: cannot write to standard output: No space left on device\n", res.stderr


# --- 4. a slow stdout -------------------------------------------------------------------

SLOW_READER_BPS = 80_000
SLOW_DURATION_S = 3.0


@pytest.mark.kernel
def test_slow_stdout_does_not_stretch_the_duration(progs: Path, kernel: None, traces: list[Trace],
                                                   tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"),
                   "--repeat", str(10**9), "--json", "--duration", str(SLOW_DURATION_S), read_stdout=False)
    traces.append(tracer)
    assert tracer.proc.stdout is not None
    fd, start, got = tracer.proc.stdout.fileno(), time.monotonic(), 0
    ended: list[float] = []

    def note_end() -> None:
        tracer.proc.wait()
        ended.append(time.monotonic())

    threading.Thread(target=note_end, daemon=True).start()
    while not ended and (chunk := os.read(fd, 8000)):   # 8 KB every 0.1 s, until trace has ended
        got += len(chunk)
        time.sleep(len(chunk) / SLOW_READER_BPS)
    tracer.join()
    took = ended[0] - start
    assert took < SLOW_DURATION_S + READY_TIMEOUT_S / 10, f"--duration {SLOW_DURATION_S} took {took:.1f} s"
    err = tracer.err.decode()
    assert tracer.proc.returncode == 0, err
    assert "events not written: stdout too slow" in err and got > 0, err


@pytest.mark.kernel
def test_test_runs_without_a_duration_wait_for_a_slow_reader(progs: Path, kernel: None, traces: list[Trace],
                                                             tmp_path: Path) -> None:
    """No deadline, nothing lost by waiting (the runs are trace's own): a
    reader slower than trace gets every event, none is dropped."""
    runs = 30_000                                   # about 10 MB of JSON, read at about 4 MB/s
    (tmp_path / "p.bin").write_bytes(PACKET)
    tracer = Trace(tmp_path, str(progs), "--run", "count_xdp", "--packet", str(tmp_path / "p.bin"),
                   "--repeat", str(runs), "--json", read_stdout=False)
    traces.append(tracer)
    assert tracer.proc.stdout is not None
    lines = 0
    while chunk := os.read(tracer.proc.stdout.fileno(), 1 << 16):
        lines += chunk.count(b"\n")
        time.sleep(len(chunk) / 4e6)
    tracer.join()
    assert tracer.proc.returncode == 0, tracer.err.decode()
    assert b"not written" not in tracer.err, tracer.err.decode()
    assert lines >= runs + 1, lines                 # every event and the run line


# --- 5. captures ---------------------------------------------------------------------------


def test_a_million_empty_packets_stream_in_bounded_memory(tmp_path: Path) -> None:
    """The reader alone, in a process of its own: its peak RSS grows by less
    than a few MiB over a million records (a list of them was 468 MB)."""
    count = 1_000_000
    capture = sparse_capture(tmp_path / "empty.pcap", 24 + 16 * count)
    script = (
        "import resource, sys\n"
        "from bpf_sdt.trace.pcap import iter_packets\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "seen = sum(1 for p in iter_packets(sys.argv[1]) if p == b'')\n"
        "print(seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    res = subprocess.run([sys.executable, "-c", script, str(capture)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    seen, grew_kb = map(int, res.stdout.split())
    assert seen == count
    assert grew_kb < 8 * 1024, f"RSS grew by {grew_kb} kB"


@pytest.mark.kernel
def test_an_oversize_packet_is_refused_with_its_reason_and_the_rest_run(progs: Path, kernel: None,
                                                                        tmp_path: Path) -> None:
    write_pcap(tmp_path / "big.pcap", [PACKET + bytes(MAX_PACKET - len(PACKET)), PACKET])
    res = subprocess.run([*CLI, "trace", str(progs), "--run", "count_xdp", "--pcap", str(tmp_path / "big.pcap"),
                          "--json"], capture_output=True, text=True, env=_env(), timeout=120, check=False)
    assert res.returncode == 1 and "refused 1 of 2" in res.stderr, res.stderr
    first, *events, second = json_lines(res.stdout)
    assert first["run"] == 1 and first["size"] == MAX_PACKET and first["error"], first
    assert second["run"] == 2 and second["retval"] == 2 and [e["args"][0] for e in events] == [len(PACKET)]


@pytest.mark.kernel
def test_tc_return_values_are_signed(progs: Path, kernel: None, tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKET)
    for extra, expected in (((), "returned -1 (TC_ACT_UNSPEC)"), (("--json",), '"retval":-1')):
        res = subprocess.run([*CLI, "trace", str(progs), "--run", "unspec_tc", "--packet", str(tmp_path / "p.bin"),
                              *extra], capture_output=True, text=True, env=_env(), timeout=120, check=False)
        assert res.returncode == 0 and expected in res.stdout, res.stdout + res.stderr


@pytest.mark.kernel
def test_a_pinned_program_where_the_recorder_maps_should_be_is_called_a_program(
        progs: Path, kernel: None, bpffs: Path, tmp_path: Path) -> None:
    inst = instrumented(progs, tmp_path / "inst.o")
    res = run([tool("bpftool"), "prog", "loadall", str(progs), str(bpffs / "progs")])
    assert res.returncode == 0, res.stderr
    (bpffs / "fake").mkdir()
    for name in (RECORDER_COUNTS_MAP, RECORDER_RINGBUF_MAP):
        res = run([tool("bpftool"), "prog", "pin", "pinned", str(bpffs / "progs" / "count_xdp"),
                   str(bpffs / "fake" / name)])
        assert res.returncode == 0, res.stderr
    res = subprocess.run([*CLI, "trace", str(inst), "--pinned", "--pin-dir", str(bpffs / "fake")],
                         capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "a pinned program, not a map" in res.stderr and "percpu" not in res.stderr, res.stderr


# --- 7. options -------------------------------------------------------------------------------

BAD_OPTIONS = {
    "duration nan": (["--duration", "nan"], "--duration"),
    "duration inf": (["--duration", "inf"], "--duration"),
    "duration negative": (["--duration", "-1"], "--duration"),
    "duration zero": (["--duration", "0"], "--duration"),
    "duration too short": (["--duration", "1e-9"], "--duration"),
    "ringbuf not a power of two": (["--ringbuf-size", "12288"], "--ringbuf-size"),
    "ringbuf 2^64": (["--ringbuf-size", str(1 << 64)], "--ringbuf-size"),
    "ringbuf too small": (["--ringbuf-size", "1024"], "--ringbuf-size"),
    "ringbuf too large": (["--ringbuf-size", str(1 << 31)], "--ringbuf-size"),
    "ringbuf zero": (["--ringbuf-size", "0"], "--ringbuf-size"),
    "repeat zero": (["--run", "count_xdp", "--packet", "p.bin", "--repeat", "0"], "--repeat"),
    "repeat over u32": (["--run", "count_xdp", "--packet", "p.bin", "--repeat", str(1 << 32)], "--repeat"),
    "tc direction misspelt": (["--tc", "lo:egres"], "--tc"),
    "tc direction only": (["--tc", ":ingress"], "--tc"),
    "tc empty": (["--tc", ""], "--tc"),
    "xdp empty": (["--xdp", ""], "--xdp"),
    "run empty": (["--run", "", "--packet", "p.bin"], "--run"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_is_one_line_exit_2_before_anything_runs(progs: Path, tmp_path: Path, case: str,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI's own entry point, in-process (the checks come before
    anything is instrumented or loaded; one case runs as a real process)."""
    args, word = BAD_OPTIONS[case]
    (tmp_path / "p.bin").write_bytes(PACKET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code = cli_main(["trace", str(progs), *args])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("bpf-sdt trace: ") and word in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bpf-sdt")]


def test_bad_option_from_a_real_process(progs: Path, tmp_path: Path) -> None:
    res = subprocess.run([*CLI, "trace", str(progs), "--tc", "lo:egres"], capture_output=True, text=True,
                         env=_env(), timeout=60, check=False)
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr


# --- the instrument worker (trace/worker.py) ------------------------------------------------


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` has exited (and was reaped, or is a zombie) within the time."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.02)
    return False


def test_an_unused_instrument_worker_is_ended_by_close() -> None:
    """--live forks its worker before it knows whether the cache has the
    copy: closing it unused ends and reaps it, and a second close is a no-op."""
    from bpf_sdt.trace.worker import InstrumentWorker

    worker = InstrumentWorker()
    pid = worker.pid
    assert pid is not None and not _gone(pid, 0.0)
    worker.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)       # reaped by close: no child of that pid is left
    worker.close()


def test_the_worker_of_a_killed_trace_exits_by_itself() -> None:
    """SIGKILL of trace before it sent the job: the worker reads the end of its
    job pipe and exits, so nothing of a killed trace keeps running."""
    code = ("import os, sys\nfrom bpf_sdt.trace.worker import InstrumentWorker\n"
            "w = InstrumentWorker()\nprint(w.pid, flush=True)\nos.kill(os.getpid(), 9)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _gone(int(res.stdout)), "the worker outlived its killed parent"


@pytest.mark.parametrize("target", ["missing.o", "/dev/zero", "a-directory"])
def test_an_unreadable_object_is_one_line_with_the_cache_on(target: str, tmp_path: Path) -> None:
    """The cache's key reads OBJ before anything else does: a missing file
    was a FileNotFoundError traceback there, and /dev/zero a read without end."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "p.bin").write_bytes(PACKET)
    obj = target if target.startswith("/") else str(tmp_path / target)
    env = {**_env(), "BPF_SDT_CACHE": str(tmp_path / "cache")}
    res = run([*CLI, "trace", obj, "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin")], env=env, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.startswith(f"bpf-sdt trace: {obj}: "), res.stderr

"""`bpf-sdt trace` on the samples, against the real kernel: test runs on crafted
packets and captures (events, typed values and return values computed here
from the packets), XDP and tc attached to a veth in namespaces the test
creates, tp_btf auto-attach, the pinned ring buffer of an object bpftool
loaded, and the error paths.  Every kernel test checks that the programs,
maps and links the trace process held are gone once it has ended, also
after SIGINT/SIGTERM.  Unit tests cover the pcap reader and the decoder."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpf_sdt.trace.output import Decoder, slot_code
from bpf_sdt.trace.pcap import read_packets, write_pcap
from bpf_sdt.trace.sites import Site
from netns import VethPair
from toolchain import REPO, bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.argtype import ArgType
from bpf_sdt.errors import InputError
from bpf_sdt.libbpf import LoadedObject

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
SAMPLES = REPO / "samples"
UDP_PORT = 40124
XDP_DROP, XDP_PASS = 1, 2
DROP_SHORT_IP, DROP_BAD_IHL, DROP_TTL = 2, 3, 4
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_EXPERIMENTAL = 0x0800, 0x86DD, 0x0806, 0x88B5
IPPROTO_UDP = 17
TEST_RUN_IFINDEX = 1            # BPF_PROG_TEST_RUN without a context: loopback
CLASS_IP, CLASS_OTHER = 0x10001, 0x10002
KERNEL_POINTER_MIN = 0xFFFF800000000000
READY_TIMEOUT_S = 60.0          # instrumenting compiles the recorder with clang first
EVENT_TIMEOUT_S = 10.0
GONE_TIMEOUT_S = 3.0
LOOP_ITERATIONS = 16            # bpf_loop(16, ...) in loop_main.bpf.c
U64_MASK = (1 << 64) - 1            # the kernel frees objects after the last fd, via RCU


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def trace(*args: str, netns: str | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *CLI, "trace", *args], capture_output=True, text=True, env={**_env(), **kw},
                          timeout=120, check=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def by_run(lines: list[dict[str, Any]]) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """[(events of the run, the run line)] in order; nothing may follow the last run."""
    runs: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    events: list[dict[str, Any]] = []
    for line in lines:
        if "run" in line:
            runs.append((events, line))
            events = []
        elif "probe" in line:
            events.append(line)
    assert events == [], "events after the last run line"
    return runs


# --- packets ----------------------------------------------------------------------

MAC_DST, MAC_SRC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def eth(ethertype: int, payload: bytes) -> bytes:
    return MAC_DST + MAC_SRC + struct.pack(">H", ethertype) + payload


def ipv4(payload: bytes = b"", *, ttl: int = 64, proto: int = IPPROTO_UDP, ihl: int = 5, tos: int = 0,
         src: str = "127.77.0.1", dst: str = "127.77.0.2") -> bytes:
    total = 4 * max(ihl, 5) + len(payload)
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, tos, total, 0, 0, ttl, proto, 0,
                         bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return header + bytes(4 * max(ihl, 5) - len(header)) + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


# Every branch of xdp_parser.bpf.c that a test run can reach (the kernel
# refuses packets shorter than an Ethernet header).
XDP_PACKETS = [
    eth(ETH_P_IP, ipv4(udp(1000, 2000, b"hello"))),                 # ipv4, pass
    eth(ETH_P_IP, ipv4(udp(1, 2, b""), ttl=1, tos=0x10)),            # ipv4, then drop: TTL
    eth(ETH_P_IPV6, bytes(40)),                                      # non_ip
    eth(ETH_P_IP, bytes(7)),                                         # drop: short IP
    eth(ETH_P_IP, ipv4(b"x" * 30, ihl=3)),                           # drop: bad IHL
    eth(ETH_P_ARP, bytes(28)),                                       # non_ip
    eth(ETH_P_IP, ipv4(bytes(100), proto=6, ttl=255)),               # ipv4 (TCP), pass
]


def xdp_parser_model(pkt: bytes) -> tuple[int, list[tuple[str, list[int | None]]]]:
    """What xdp_parser does with a packet: its return value and probe events
    ((probe, args), the header pointer as None: a kernel address)."""
    (ethertype,) = struct.unpack_from(">H", pkt, 12)
    if ethertype != ETH_P_IP:
        return XDP_PASS, [("non_ip", [ethertype])]
    if len(pkt) < 14 + 20:
        return XDP_DROP, [("drop", [DROP_SHORT_IP, len(pkt)])]
    ihl, ttl, proto = pkt[14] & 0xF, pkt[14 + 8], pkt[14 + 9]
    if ihl < 5:
        return XDP_DROP, [("drop", [DROP_BAD_IHL, len(pkt)])]
    events: list[tuple[str, list[int | None]]] = [("ipv4", [None, proto, ttl, struct.unpack_from(">H", pkt, 16)[0]])]
    if ttl <= 1:
        return XDP_DROP, [*events, ("drop", [DROP_TTL, len(pkt)])]
    return XDP_PASS, events


def observed(events: list[dict[str, Any]]) -> list[tuple[str, list[int | None]]]:
    out = []
    for e in events:
        args = list(e["args"])
        if e["probe"] == "ipv4":
            assert int(args[0], 16) >= KERNEL_POINTER_MIN, f"header pointer {args[0]}"   # JSON: a hex string
            args[0] = None
        out.append((e["probe"], args))
    return out


def original_retvals(obj: Path, prog: str, packets: list[bytes]) -> list[int]:
    with LoadedObject.open(obj) as o:
        o.load()
        p = o.find_program(prog)
        return [p.test_run(pkt).retval for pkt in packets]


def write_pcapng(path: Path, packets: list[bytes], big_endian: bool = False) -> None:
    """pcapng written independently of the reader: SHB, IDB (Ethernet), then
    enhanced packet blocks, the last packet as a simple packet block."""
    o = ">" if big_endian else "<"

    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack(o + "II", btype, len(body) + 12) + body + struct.pack(o + "I", len(body) + 12)

    out = block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(o + "HHI", 1, 0, 65535))
    for pkt in packets[:-1]:
        out += block(6, struct.pack(o + "IIIII", 0, 0, 0, len(pkt), len(pkt)) + pkt)
    out += block(3, struct.pack(o + "I", len(packets[-1])) + packets[-1])
    path.write_bytes(out)


# --- the kernel: building, loading, and what trace left behind ----------------------------


@pytest.fixture(scope="module")
def built(samples_built: Path) -> Path:
    """The samples, built once per session (conftest.py) for every module that traces them."""
    return samples_built


@pytest.fixture
def kernel() -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")


def bpf_ids(kind: str) -> set[int]:
    res = run([tool("bpftool"), kind, "show", "--json"])
    assert res.returncode == 0, res.stderr
    return {int(x["id"]) for x in json.loads(res.stdout or "[]")}


def held_ids(pid: int) -> dict[str, set[int]]:
    """The BPF programs, maps and links a process holds fds of (/proc fdinfo)."""
    held: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        for kind in ("link", "prog", "map"):
            if f"{kind}_id" in fields:
                held[kind].add(int(fields[f"{kind}_id"]))
                break
    return held


def assert_gone(held: dict[str, set[int]]) -> None:
    """None of these programs, maps or links exist any more."""
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while True:
        left = {kind: ids & bpf_ids(kind) for kind, ids in held.items()}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not any(left.values()), f"still loaded after trace ended: {left}"


def host_mounts_of_trace() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "bpf-sdt-trace-" in line]


class Tracer:
    """A `bpf-sdt trace` process in the background, read as it runs."""

    def __init__(self, *args: str, netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen([*prefix, *CLI, "trace", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_env())
        self.out, self.err = b"", b""
        assert self.proc.stdout and self.proc.stderr
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        self.held: dict[str, set[int]] = {}

    def _pump(self, timeout: float) -> None:
        assert self.proc.stdout and self.proc.stderr
        ready, _, _ = select.select([self.proc.stdout, self.proc.stderr], [], [], timeout)
        for f in ready:
            chunk = f.read() or b""
            if f is self.proc.stdout:
                self.out += chunk
            else:
                self.err += chunk

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while b"Ctrl-C to stop" not in self.err:
            assert self.proc.poll() is None, f"trace ended early: {self.err.decode()}"
            assert time.monotonic() < deadline, f"trace not ready: {self.err.decode()}"
            self._pump(0.1)
        self.held = held_ids(self.proc.pid)
        assert self.held["map"], self.held          # the ring buffer, at least

    def wait_lines(self, predicate: Any, timeout: float = EVENT_TIMEOUT_S) -> list[dict[str, Any]]:
        """JSON lines so far, once predicate(lines) holds."""
        deadline = time.monotonic() + timeout
        while True:
            complete = self.out[: self.out.rfind(b"\n") + 1].decode()
            lines = json_lines(complete)
            if predicate(lines):
                return lines
            assert time.monotonic() < deadline, f"timed out; got {lines[-5:]}; stderr {self.err.decode()}"
            self._pump(0.1)

    def finish(self, sig: int | None = None, timeout: float = 30.0, *, owns: bool = True) -> int:
        """Ends (or waits for the end of) the trace; with `owns`, what it
        loaded must be gone (with --pinned, the maps are the other loader's)."""
        if sig is not None:
            self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "trace did not end"
            self._pump(0.1)
        self._pump(0)
        self._pump(0)
        if owns:
            assert_gone(self.held)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def tracers() -> Iterator[list[Tracer]]:
    started: list[Tracer] = []
    yield started
    for t in started:
        t.kill()


# --- --run -------------------------------------------------------------------------


@pytest.mark.kernel
def test_run_pcap_events_values_and_retvals_equal_the_packets(built: Path, kernel: None, tmp_path: Path) -> None:
    obj = built / "xdp_parser.bpf.o"
    write_pcap(tmp_path / "in.pcap", XDP_PACKETS)
    res = trace(str(obj), "--run", "xdp_parse", "--pcap", str(tmp_path / "in.pcap"), "--json")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    runs = by_run(json_lines(res.stdout))
    assert len(runs) == len(XDP_PACKETS)
    retvals = original_retvals(obj, "xdp_parse", XDP_PACKETS)
    listing = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    sites = {(p["name"], p["insn"]): p for p in listing}
    for number, (pkt, (events, line), retval) in enumerate(zip(XDP_PACKETS, runs, retvals, strict=True), 1):
        expect_ret, expect_events = xdp_parser_model(pkt)
        assert observed(events) == expect_events, f"packet {number}"
        assert line["retval"] == retval == expect_ret and line["events"] == len(events) and line["run"] == number
        for e in events:                    # each event names its site as `bpf-sdt list OBJ` does
            assert sites[(e["probe"], e["insn"])]["function"] == e["function"] == "xdp_parse"
            assert e["file"].endswith("xdp_parser.bpf.c") and e["line"] > 0 and e["cpu"] >= 0 and e["ts"] > 0
    ts = [e["ts"] for events, _ in runs for e in events]
    assert ts == sorted(ts), "events in the order they fired"


@pytest.mark.kernel
def test_run_one_packet_text_output_is_typed(built: Path, kernel: None, tmp_path: Path) -> None:
    pkt = tmp_path / "ttl1.bin"
    pkt.write_bytes(XDP_PACKETS[1])
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(pkt))
    assert res.returncode == 0, res.stderr
    ipv4_line, drop_line, run_line = res.stdout.splitlines()
    time_s, cpu, _, probe, function, insn, _, source = ipv4_line.split()[:8]
    assert float(time_s) > 0 and cpu == "cpu" and (probe, function, insn) == ("ipv4", "xdp_parse", "insn")
    assert source.startswith("xdp_parser.bpf.c:"), ipv4_line
    assert ipv4_line.endswith(f", 17, 1, {len(XDP_PACKETS[1]) - 14}"), ipv4_line
    assert " 0xffff" in ipv4_line                                   # the pointer, in hex
    assert drop_line.endswith(f"DROP_TTL, {len(XDP_PACKETS[1])}"), drop_line   # the enum, by name
    assert run_line == "run 1: xdp_parse returned 1 (XDP_DROP); 2 events"


@pytest.mark.kernel
def test_run_pcapng_and_the_libbpf_reader_give_the_same_events(built: Path, kernel: None, tmp_path: Path) -> None:
    obj = str(built / "xdp_parser.bpf.o")
    write_pcap(tmp_path / "in.pcap", XDP_PACKETS)
    write_pcapng(tmp_path / "in.pcapng", XDP_PACKETS, big_endian=True)
    results = [trace(obj, "--run", "xdp_parse", "--pcap", str(tmp_path / "in.pcap"), "--json"),
               trace(obj, "--run", "xdp_parse", "--pcap", str(tmp_path / "in.pcapng"), "--json"),
               trace(obj, "--run", "xdp_parse", "--pcap", str(tmp_path / "in.pcap"), "--json",
                     BPF_SDT_TRACE_READER="libbpf")]

    def comparable(res: subprocess.CompletedProcess[str]) -> list[object]:
        assert res.returncode == 0, res.stderr
        return [(observed(events), line["retval"]) for events, line in by_run(json_lines(res.stdout))]

    first = comparable(results[0])
    assert first == [(e, r) for r, e in map(xdp_parser_model, XDP_PACKETS)]
    assert all(comparable(r) == first for r in results[1:])


@pytest.mark.kernel
def test_run_tc_linked_with_repeat_follows_the_map_state(built: Path, kernel: None, tmp_path: Path) -> None:
    """tc.linked: `classify` in the program, `new_class`/`accounted` in a global
    subprogram of the other file, in program order, with the running byte total."""
    obj = built / "tc.linked.bpf.o"
    packets = [eth(ETH_P_IP, ipv4(udp(5, 6, b"a" * 10))), eth(ETH_P_ARP, bytes(28)), eth(ETH_P_IP, ipv4())]
    repeat = 3
    write_pcap(tmp_path / "in.pcap", packets)
    res = trace(str(obj), "--run", "tc_classify", "--pcap", str(tmp_path / "in.pcap"), "--repeat", str(repeat),
                "--json")
    assert res.returncode == 0, res.stderr
    totals: dict[int, int] = {}
    expected = []
    for pkt in packets:
        ethertype = struct.unpack_from(">H", pkt, 12)[0]
        classid = CLASS_IP if ethertype == ETH_P_IP else CLASS_OTHER
        run_events: list[tuple[str, list[int]]] = []
        for _ in range(repeat):
            run_events.append(("classify", [TEST_RUN_IFINDEX, ethertype, classid]))
            if classid not in totals:
                totals[classid] = len(pkt)
                run_events.append(("new_class", [classid]))
            else:
                totals[classid] += len(pkt)
                run_events.append(("accounted", [classid, len(pkt), totals[classid]]))
        expected.append(run_events)
    runs = by_run(json_lines(res.stdout))
    assert [[(e["probe"], e["args"]) for e in events] for events, _ in runs] == expected
    assert {e["function"] for events, _ in runs for e in events} == {"tc_classify", "account"}
    assert [line["retval"] for _, line in runs] == original_retvals(obj, "tc_classify", packets)
    assert all(line["repeat"] == repeat for _, line in runs)


@pytest.mark.kernel
def test_run_twelve_arguments(built: Path, kernel: None, tmp_path: Path) -> None:
    src, dst, sport, dport, ttl, tos = "127.77.1.9", "127.77.2.200", 40000, 53, 17, 0x28
    pkt = eth(ETH_P_IP, ipv4(udp(sport, dport, b"payload"), ttl=ttl, tos=tos, src=src, dst=dst))
    (tmp_path / "p.bin").write_bytes(pkt)
    res = trace(str(built / "wide_probe.bpf.o"), "--run", "xdp_flow", "--packet", str(tmp_path / "p.bin"), "--json")
    assert res.returncode == 0, res.stderr
    (event,), line = by_run(json_lines(res.stdout))[0]
    addr = [int.from_bytes(bytes(map(int, a.split("."))), "little") for a in (src, dst)]   # __be32 read as u32
    assert event["args"] == [*addr, sport, dport, IPPROTO_UDP, ttl, tos, len(pkt), TEST_RUN_IFINDEX, 0, XDP_PASS, 0]
    assert line["retval"] == XDP_PASS


@pytest.mark.kernel
def test_run_raw_tp_probes_in_subprograms_and_a_bpf_loop_callback(built: Path, kernel: None) -> None:
    """loop.linked (raw_tp, run on a context): `mixed` in a static subprogram,
    `step` in a bpf_loop callback, `scaling` in a global function of the other
    object, `done` in the program; each value follows from the one before."""
    res = trace(str(built / "loop.linked.bpf.o"), "--run", "sum_loop", "--repeat", "2", "--json")
    assert res.returncode == 0, res.stderr
    ((events, line),) = by_run(json_lines(res.stdout))          # one run line: repeat 2
    per_run = 2 * LOOP_ITERATIONS + 2
    assert line["retval"] == 0 and line["repeat"] == 2 and line["events"] == len(events) == 2 * per_run
    for rep in (events[:per_run], events[per_run:]):
        assert [e["probe"] for e in rep] == ["mixed", "step"] * LOOP_ITERATIONS + ["scaling", "done"]
        value = rep[0]["args"][0]
        assert value < 1 << 32                              # bpf_get_prandom_u32()
        for i in range(LOOP_ITERATIONS):
            after = (value * 31 + i) & U64_MASK
            assert rep[2 * i]["args"] == [value, after] and rep[2 * i + 1]["args"] == [i, after]
            value = after
        assert rep[-2]["args"] == [value, 3] and rep[-1]["args"] == [value >> 3]
        assert {e["probe"]: e["function"] for e in rep} == \
            {"mixed": "mix", "step": "loop_cb", "scaling": "scale", "done": "sum_loop"}


SOCKET_FILTER = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE3(seen, __u32, __u8, signed char);	/* skb->len, first byte, first byte as signed */
SEC("socket") int keep_half(struct __sk_buff *skb)
{
	__u8 b = 0;
	bpf_skb_load_bytes(skb, 0, &b, 1);
	BPF_SDT_PROBE3(seen, skb->len, b, (signed char)b);
	return skb->len / 2;
}
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_run_socket_filter_with_a_narrow_signed_argument(kernel: None, tmp_path: Path) -> None:
    (tmp_path / "sf.bpf.c").write_text(SOCKET_FILTER)
    multiarch = run([tool("gcc"), "-print-multiarch"]).stdout.strip()
    compile_bpf(tmp_path / "sf.bpf.c", tmp_path / "sf.bpf.o", clang(19), extra=(f"-I/usr/include/{multiarch}",))
    packets = [eth(ETH_P_IP, ipv4(udp(1, 2, b"x" * 7))), eth(ETH_P_EXPERIMENTAL, b"\xf0" + bytes(45)),
               eth(ETH_P_EXPERIMENTAL, b"\x80" + bytes(100))]
    write_pcap(tmp_path / "in.pcap", packets)
    res = trace(str(tmp_path / "sf.bpf.o"), "--run", "keep_half", "--pcap", str(tmp_path / "in.pcap"), "--json")
    assert res.returncode == 0, res.stderr
    runs = by_run(json_lines(res.stdout))
    for pkt, ((event,), line), retval in zip(packets, runs, original_retvals(tmp_path / "sf.bpf.o", "keep_half",
                                                                            packets), strict=True):
        length = len(pkt) - 14          # a socket filter's skb starts after the Ethernet header
        first = pkt[14]
        assert event["args"] == [length, first, first - 256 if first > 127 else first]   # 0xf0 -> -16
        assert line["retval"] == retval == length // 2


@pytest.mark.kernel
def test_run_interrupted_reports_what_ran_and_exits_130(built: Path, kernel: None, tracers: list[Tracer],
                                                        tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(XDP_PACKETS[0])
    tracer = Tracer(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                    "--repeat", str(10**9), "--json")
    tracers.append(tracer)
    tracer.wait_lines(lambda lines: len(lines) > 0, timeout=READY_TIMEOUT_S)   # batches are being read
    tracer.held = held_ids(tracer.proc.pid)
    assert tracer.finish(signal.SIGINT) == 128 + signal.SIGINT, tracer.err.decode()
    lines = json_lines(tracer.out.decode())
    run_line = lines[-1]
    assert 0 < run_line["repeat"] < 10**9 and run_line["events"] == run_line["repeat"] == len(lines) - 1


# --- live: XDP and tc on a veth in namespaces -----------------------------------------------


def xdp_attached(net: VethPair) -> list[object]:
    res = run(["ip", "netns", "exec", net.receiver.netns, tool("bpftool"), "net", "show", "--json"])
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)[0]
    return [*shown["xdp"], *shown["tc"]]


def ipv4_events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in lines if e.get("probe") == "ipv4"]


@pytest.mark.kernel
@pytest.mark.parametrize("ending", ["duration", "SIGINT", "SIGTERM"])
def test_live_xdp_on_a_veth(built: Path, kernel: None, tracers: list[Tracer], ending: str) -> None:
    for name in ("ip", "tc"):
        tool(name)
    count, payload = 6, b"ping"
    with VethPair() as net:
        timing = ["--duration", "2"] if ending == "duration" else []
        tracer = Tracer(str(built / "xdp_parser.bpf.o"), "--xdp", net.receiver.iface, "--json", *timing,
                        netns=net.receiver.netns)
        tracers.append(tracer)
        tracer.wait_ready()
        assert len(xdp_attached(net)) == 1
        assert not host_mounts_of_trace(), "the private bpffs leaked into the host's mounts"
        assert net.send_udp(count, UDP_PORT, payload) == count
        lines = tracer.wait_lines(lambda ls: len(ipv4_events(ls)) >= count)
        rc = tracer.finish(getattr(signal, ending) if ending != "duration" else None)
        assert rc == 0, tracer.err.decode()
        assert xdp_attached(net) == [], "still attached after trace ended"
        lines = json_lines(tracer.out.decode())
        udp_len = 20 + 8 + len(payload) + 1               # send_udp appends an index byte
        assert [e["args"][1:] for e in ipv4_events(lines)] == [[IPPROTO_UDP, 64, udp_len]] * count
        assert all(e["probe"] == "ipv4" for e in lines), "only the UDP datagrams crossed the pair"
        assert net.send_udp(2, UDP_PORT) == 2                     # traffic still flows, unobserved


@pytest.mark.kernel
def test_live_tc_ingress_on_a_veth(built: Path, kernel: None, tracers: list[Tracer]) -> None:
    for name in ("ip", "tc"):
        tool(name)
    count = 4
    with VethPair() as net:
        tracer = Tracer(str(built / "tc.linked.bpf.o"), "--tc", f"{net.receiver.iface}:ingress", "--json",
                        netns=net.receiver.netns)
        tracers.append(tracer)
        tracer.wait_ready()
        ifindex = json.loads(run(["ip", "-n", net.receiver.netns, "-j", "link", "show", net.receiver.iface])
                             .stdout)[0]["ifindex"]
        assert net.send_udp(count, UDP_PORT) == count
        tracer.wait_lines(lambda ls: sum(e.get("probe") == "classify" for e in ls) >= count)
        assert tracer.finish(signal.SIGINT) == 0, tracer.err.decode()
        assert xdp_attached(net) == []
        assert "clsact" not in run(["ip", "netns", "exec", net.receiver.netns, "tc", "qdisc", "show"]).stdout
        lines = json_lines(tracer.out.decode())
        assert [e["args"] for e in lines if e["probe"] == "classify"] == [[ifindex, ETH_P_IP, CLASS_IP]] * count
        frame = 14 + 20 + 8 + 1
        assert [e["args"] for e in lines if e["probe"] in ("new_class", "accounted")] == \
            [[CLASS_IP]] + [[CLASS_IP, frame, frame * (i + 1)] for i in range(1, count)]


# --- auto-attach -------------------------------------------------------------------------


@pytest.mark.kernel
def test_tp_btf_auto_attached_sees_the_execs_the_test_makes(built: Path, kernel: None,
                                                            tracers: list[Tracer]) -> None:
    tracer = Tracer(str(built / "trace_exec.bpf.o"), "--probe", "exec", "--json", "--duration", "30")
    tracers.append(tracer)
    tracer.wait_ready()
    assert "on_exec (tp_btf/sched_process_exec)" in tracer.err.decode()
    children = []
    for _ in range(3):
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        children.append(child.pid)

    def mine(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in lines if e.get("probe") == "exec" and e["args"][0] in children]

    found = mine(tracer.wait_lines(lambda ls: len(mine(ls)) == len(children)))
    assert tracer.finish(signal.SIGINT) == 0, tracer.err.decode()
    assert [e["args"][0] for e in found] == children
    assert all(e["args"][1] == e["args"][0] and int(e["args"][2], 16) >= KERNEL_POINTER_MIN for e in found)
    assert {e["function"] for e in found} == {"on_exec"}
    assert all(e["probe"] == "exec" for e in json_lines(tracer.out.decode())), "--probe exec selects"


# --- --pinned: an object bpftool loaded ---------------------------------------------------------


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    """A private bpffs for bpftool's pins: never /sys/fs/bpf."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    where = tmp_path / "bpffs"
    where.mkdir()
    assert run(["mount", "-t", "bpf", "bpf", str(where)]).returncode == 0
    try:
        yield where
    finally:
        run(["rm", "-rf", *map(str, where.iterdir())])
        run(["umount", str(where)])


def loadall(obj: Path, pins: Path) -> None:
    """`bpftool prog loadall OBJ DIR pinmaps MAPDIR`: the recorder's maps ask
    for no pin, so they land where bpftool is told (docs/instrument.md)."""
    res = run([tool("bpftool"), "prog", "loadall", str(obj), str(pins / "progs"), "pinmaps", str(pins)])
    assert res.returncode == 0, res.stderr
    assert (pins / "bpf_sdt_events").exists() and (pins / "progs" / "xdp_parse").exists()


@pytest.mark.kernel
def test_pinned_ring_buffer_of_an_object_bpftool_loaded(built: Path, bpffs: Path, tracers: list[Tracer],
                                                        tmp_path: Path) -> None:
    inst = tmp_path / "xdp_parser.inst.o"
    res = run([*CLI, "instrument", str(built / "xdp_parser.bpf.o"), "-o", str(inst)], env=_env())
    assert res.returncode == 0, res.stderr
    loadall(inst, bpffs)
    pkt, repeat = XDP_PACKETS[1], 3
    (tmp_path / "p.bin").write_bytes(pkt)
    tracer = Tracer(str(inst), "--pinned", "--pin-dir", str(bpffs), "--json")
    tracers.append(tracer)
    tracer.wait_ready()
    res = run([tool("bpftool"), "prog", "run", "pinned", str(bpffs / "progs" / "xdp_parse"),
               "data_in", str(tmp_path / "p.bin"), "repeat", str(repeat)])
    assert res.returncode == 0, res.stderr
    _, expected = xdp_parser_model(pkt)
    lines = tracer.wait_lines(lambda ls: len(ls) >= repeat * len(expected))
    assert tracer.finish(signal.SIGTERM, owns=False) == 0, tracer.err.decode()
    assert observed(json_lines(tracer.out.decode())) == expected * repeat
    assert {e["function"] for e in lines} == {"xdp_parse"}
    assert (bpffs / "bpf_sdt_events").exists(), "--pinned reads, it never unpins another loader's maps"


@pytest.mark.kernel
def test_pinned_overflow_reports_every_lost_event(built: Path, bpffs: Path, tracers: list[Tracer],
                                                  tmp_path: Path) -> None:
    """A one-page ring and 20,000 runs in one go: whatever trace could not read
    in time is counted as lost, so decoded + lost == runs exactly."""
    inst = tmp_path / "small.inst.o"
    res = run([*CLI, "instrument", str(built / "xdp_parser.bpf.o"), "-o", str(inst), "--ringbuf-size", "4096"],
              env=_env())
    assert res.returncode == 0, res.stderr
    loadall(inst, bpffs)
    runs = 20_000
    (tmp_path / "p.bin").write_bytes(XDP_PACKETS[2])                  # one non_ip event per run
    tracer = Tracer(str(inst), "--pinned", "--pin-dir", str(bpffs), "--json", "--count", "--duration", "1.5")
    tracers.append(tracer)
    tracer.wait_ready()
    res = run([tool("bpftool"), "prog", "run", "pinned", str(bpffs / "progs" / "xdp_parse"),
               "data_in", str(tmp_path / "p.bin"), "repeat", str(runs)])
    assert res.returncode == 0, res.stderr
    assert tracer.finish(owns=False) == 0, tracer.err.decode()
    lines = json_lines(tracer.out.decode())
    lost = next(x["lost"] for x in lines if "lost" in x)
    counts = next(x["counts"] for x in lines if "counts" in x)
    assert lost > 0 and counts["probes"]["non_ip"] + lost == runs
    assert f"{lost} events lost" in tracer.err.decode()


# --- errors: one line, exit 2, nothing left behind --------------------------------------------


def assert_one_line_error(res: subprocess.CompletedProcess[str], *words: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == "" and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith("bpf-sdt trace: ") and all(w in res.stderr for w in words), res.stderr


BROKEN_CAPTURES = {
    "empty": b"",
    "bad magic": b"\x00" * 64,
    "truncated header": struct.pack("<I", 0xA1B2C3D4) + bytes(6),
    "truncated packet": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    + struct.pack("<IIII", 0, 0, 60, 60) + bytes(20),
    "huge packet": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack("<IIII", 0, 0, 1 << 30, 1),
    "not ethernet": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101),
    "no packets": struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1),
    "pcapng bad block": struct.pack("<II", 0x0A0D0D0A, 1000) + struct.pack("<I", 0x1A2B3C4D) + bytes(20),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CAPTURES))
def test_broken_capture_is_exit_2_before_anything_loads(built: Path, tmp_path: Path, case: str) -> None:
    (tmp_path / "bad.pcap").write_bytes(BROKEN_CAPTURES[case])
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--pcap", str(tmp_path / "bad.pcap"))
    assert_one_line_error(res, "bad.pcap")


@pytest.mark.kernel
def test_missing_interface_program_and_pin(built: Path, kernel: None, tmp_path: Path) -> None:
    obj = str(built / "xdp_parser.bpf.o")
    (tmp_path / "p.bin").write_bytes(XDP_PACKETS[0])
    assert_one_line_error(trace(obj, "--xdp", "sdt-no-such0"), "interface sdt-no-such0")
    assert_one_line_error(trace(obj, "--tc", "sdt-no-such0:egress"), "interface sdt-no-such0")
    assert_one_line_error(trace(obj, "--run", "no_such_prog", "--packet", str(tmp_path / "p.bin")),
                          "no_such_prog", "xdp_parse")
    assert_one_line_error(trace(obj, "--xdp", "lo", "--prog", "nope"), "nope")
    assert_one_line_error(trace(obj, "--probe", "nothing*", "--run", "xdp_parse", "--packet",
                                str(tmp_path / "p.bin")), "nothing*", "drop")
    assert_one_line_error(trace(obj), "no program attaches")                 # XDP needs --xdp or --run
    assert_one_line_error(trace(obj, "--run", "xdp_parse"), "--packet")
    assert_one_line_error(trace(str(built / "loop.linked.bpf.o"), "--run", "sum_loop", "--packet",
                                str(tmp_path / "p.bin")), "without packets")
    assert_one_line_error(trace(obj, "--pinned", "--pin-dir", str(tmp_path)), "no recorder")
    assert_one_line_error(trace(str(built / "trace_exec.bpf.o"), "--run", "on_exec", "--packet",
                                str(tmp_path / "p.bin")), "on_exec", "tracing")
    assert not host_mounts_of_trace()


@pytest.mark.kernel
def test_a_refused_test_run_is_reported_and_the_rest_run(built: Path, kernel: None, tmp_path: Path) -> None:
    packets = [eth(ETH_P_IP, bytes(5)), eth(ETH_P_ARP, bytes(28))]     # tc wants a whole IPv4 header
    write_pcap(tmp_path / "in.pcap", packets)
    res = trace(str(built / "tc.linked.bpf.o"), "--run", "tc_classify", "--pcap", str(tmp_path / "in.pcap"), "--json")
    assert res.returncode == 1 and "refused 1 of 2" in res.stderr, res.stderr
    lines = json_lines(res.stdout)
    assert lines[0] == {"format_version": 2, "type": "refused", "run": 1, "prog": "tc_classify",
                        "error": "Invalid argument", "size": len(packets[0])}
    assert lines[-1]["run"] == 2 and lines[-1]["retval"] == 0 and lines[-1]["events"] == 2


# --- unit: pcap reader, struct codes, decoder ----------------------------------------------------


def test_pcap_reader_reads_both_byte_orders_and_pcapng(tmp_path: Path) -> None:
    packets = [eth(ETH_P_IP, ipv4(bytes(n))) for n in (0, 1, 3, 64)]
    write_pcap(tmp_path / "le.pcap", packets)
    assert read_packets(tmp_path / "le.pcap") == packets
    le = (tmp_path / "le.pcap").read_bytes()
    header = struct.unpack_from("<IHHiIII", le)
    records, pos, body = [], 24, b""
    while pos < len(le):
        rec = struct.unpack_from("<IIII", le, pos)
        records.append(struct.pack(">IIII", *rec) + le[pos + 16: pos + 16 + rec[2]])
        pos += 16 + rec[2]
    body = struct.pack(">IHHiIII", 0xA1B23C4D, *header[1:]) + b"".join(records)      # big endian, ns
    (tmp_path / "be.pcap").write_bytes(body)
    assert read_packets(tmp_path / "be.pcap") == packets
    for big in (False, True):
        write_pcapng(tmp_path / "x.pcapng", packets, big_endian=big)
        assert read_packets(tmp_path / "x.pcapng") == packets


@pytest.mark.parametrize("case", sorted(BROKEN_CAPTURES))
def test_pcap_reader_rejects_broken_files_in_one_line(tmp_path: Path, case: str) -> None:
    (tmp_path / "bad.pcap").write_bytes(BROKEN_CAPTURES[case])
    with pytest.raises(InputError) as e:
        read_packets(tmp_path / "bad.pcap")
    assert "\n" not in str(e.value) and "bad.pcap" in str(e.value)


def test_pcap_reader_survives_random_corruption(tmp_path: Path) -> None:
    import random

    rng = random.Random(12)
    write_pcapng(tmp_path / "ok.pcapng", XDP_PACKETS)
    good = (tmp_path / "ok.pcapng").read_bytes()
    for _ in range(500):
        data = bytearray(good[: rng.randrange(len(good) + 1)])
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        (tmp_path / "m.pcapng").write_bytes(bytes(data))
        try:
            read_packets(tmp_path / "m.pcapng")
        except InputError as e:
            assert "\n" not in str(e)


ARG_TYPES = [ArgType("__u8", "unsigned char", 1, False, "int"), ArgType("__s8", "signed char", 1, True, "int"),
             ArgType("short", "short", 2, True, "int"), ArgType("__u16", "unsigned short", 2, False, "int"),
             ArgType("int", "int", 4, True, "int"), ArgType("__u32", "unsigned int", 4, False, "int"),
             ArgType("long", "long", 8, True, "int"), ArgType("__u64", "unsigned long long", 8, False, "int"),
             ArgType("_Bool", "_Bool", 1, False, "bool"), ArgType("char", "char", 1, True, "char"),
             ArgType("void *", "void *", 8, False, "pointer"),
             ArgType("enum e", "enum e", 4, True, "enum", (("NEG", -1), ("ONE", 1))),
             ArgType("odd", "odd", 3, True, "int")]          # a width without a struct code: convert()
RAW = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
       0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0x1234_5678_9ABC_DEF0]


def event(site: int, args: list[int], ts: int = 1_000_000_000, cpu: int = 1) -> bytes:
    return struct.pack("<QII", ts, site, cpu) + b"".join(struct.pack("<Q", a) for a in args)


def flushed(dec: Decoder) -> list[str]:
    out = io.StringIO()
    dec.flush(out)
    return out.getvalue().splitlines()


def test_slot_codes_convert_exactly_as_argtype() -> None:
    for t in ARG_TYPES:
        code = slot_code(t)
        assert code is None or struct.calcsize("<" + code) == 8
        for raw in RAW:
            if code is not None:
                assert struct.unpack("<" + code, struct.pack("<Q", raw))[0] == t.convert(raw), (t, raw)


def test_decoder_json_and_text_use_the_declared_types() -> None:
    site = Site(0, "p", "fn", "xdp", 7, "/src/a.bpf.c", 12, tuple(ARG_TYPES))
    raw = [RAW[(i * 5 + 3) % len(RAW)] for i in range(len(ARG_TYPES))]
    dec = Decoder([site], as_json=True)
    data = event(0, raw)
    dec.sample(data, 0, len(data))
    line = json.loads(flushed(dec)[0])
    assert (line["format_version"], line["type"]) == (2, "event")
    values = [t.convert(r) for t, r in zip(ARG_TYPES, raw, strict=True)]
    assert line["args"] == [bool(v) if t.kind == "bool" else f"0x{v:x}" if t.kind == "pointer" else v
                            for t, v in zip(ARG_TYPES, values, strict=True)]
    assert isinstance(line["args"][ARG_TYPES.index(next(t for t in ARG_TYPES if t.kind == "bool"))], bool)
    assert line["enums"] == [t.format(v) if t.kind == "enum" and t.format(v) != str(v) else None
                             for t, v in zip(ARG_TYPES, values, strict=True)]
    assert (line["probe"], line["function"], line["insn"], line["file"], line["line"]) == ("p", "fn", 7, "/src/a.bpf.c", 12)
    text = Decoder([site], t0_ns=0)
    text.sample(data, 0, len(data))
    shown = flushed(text)[0].split("  ")[-1]
    assert shown == ", ".join(t.format(t.convert(r)) for t, r in zip(ARG_TYPES, raw, strict=True))


def test_decoder_escapes_names_and_counts_foreign_events() -> None:
    site = Site(0, "evil\x1b[2Jprobe", "fn\nline", "xdp", 1, "a\rb.c", 3, (ARG_TYPES[0],))
    err = io.StringIO()
    dec = Decoder([site], err=err)
    good, wrong_size, wrong_site = event(0, [5]), event(0, [5, 6]), event(9, [5])
    for data in (good, wrong_size, wrong_site):
        dec.sample(data, 0, len(data))
    (line,) = flushed(dec)
    assert "\x1b" not in line and "\r" not in line and "evil\\x1b[2Jprobe" in line and "fn\\nline" in line
    assert dec.foreign == 2 and dec.hits == [1]
    assert err.getvalue().count("\n") == 1, "one warning, not one per event"
    dec.counts()
    assert all("\x1b" not in line and "\r" not in line for line in flushed(dec))

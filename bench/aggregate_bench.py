"""Events per second: aggregated in the kernel (`trace --hist`) next to the
ring-buffer path (`trace --count`: every event copied to the ring and read by
trace), in one run, on BPF_PROG_TEST_RUN with repeat.

xdp_parser on a packet that fires one `ipv4` probe per run.  Each mode runs
at two repeat counts; the rate is the difference in events over the
difference in wall time, so instrumenting, compiling the recorder and loading
(the same for both counts) cancel out.  The runs of the two modes are
interleaved, so load on a shared machine falls on both alike; besides wall
time, each run's CPU time (user + system of the trace process, the kernel's
test runs included) gives the rate per CPU-second, which load disturbs less.
Lost events: the ring path's `lost` line, the kernel path's recorder counters
(lost and overflow); the target is 0 for both.

Usage: .venv/bin/python bench/aggregate_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from instrument_bench import build_samples  # noqa: E402
from run import installed_cli  # noqa: E402

ETH_P_IP, IPPROTO_UDP = 0x0800, 17
# repeat counts per mode: the kernel path is fast enough to need far more runs to measure
COUNTS = {"ring --json": (100_000, 1_100_000), "ring --count": (100_000, 1_100_000), "kernel": (1_000_000, 21_000_000)}
LABELS = {"ring --json": "ring buffer, each event printed (trace --json)",
          "ring --count": "ring buffer, events only counted (trace --count)",
          "kernel": "in the kernel (trace --hist)"}
TARGET_RATIO = 10


def packet() -> bytes:
    """Ethernet + IPv4 (TTL 64, UDP) + 8 bytes: xdp_parser fires `ipv4` once, then passes."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, IPPROTO_UDP, 0, bytes([127, 0, 0, 1]),
                     bytes([127, 0, 0, 2]))
    return bytes(6) + bytes(6) + struct.pack(">H", ETH_P_IP) + ip + bytes(8)


def command(sdt: str, obj: Path, pkt: Path, mode: str, repeat: int) -> list[str]:
    what = {"ring --json": [], "ring --count": ["--count"], "kernel": ["--hist", "ipv4:arg3"]}[mode]
    return [sdt, "trace", str(obj), "--run", "xdp_parse", "--packet", str(pkt), "--repeat", str(repeat), "--json",
            *what]


def losses(sdt: str, obj: Path, pkt: Path, mode: str, repeat: int) -> tuple[int, int]:
    """(events seen, events lost) of one run of `repeat`."""
    # stdout to a file: trace writes a file directly, where a pipe slower than the events would drop lines
    with tempfile.TemporaryFile("w+") as out:
        subprocess.run(command(sdt, obj, pkt, mode, repeat), stdout=out, stderr=subprocess.DEVNULL, check=True)
        out.seek(0)
        lines = [json.loads(line) for line in out]
    lost = sum(x["lost"] for x in lines if x.get("type") == "lost")
    if mode == "ring --json":
        return sum(1 for x in lines if x.get("type") == "event"), lost
    if mode == "ring --count":
        return next(x["counts"]["probes"]["ipv4"] for x in lines if x.get("type") == "counts"), lost
    hist = next(x for x in lines if x.get("type") == "hist")
    recorder = next(x for x in lines if x.get("type") == "recorder")
    return sum(e["count"] for e in hist["entries"]), recorder["lost"] + recorder["overflow"]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child: user + system, the kernel's test runs included)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rates(sdt: str, obj: Path, pkt: Path, runs: int) -> dict[str, tuple[float, float]]:
    """Per mode, (events/s wall, events/s per CPU-second): the fastest of
    ``runs`` interleaved rounds at each repeat count, differenced."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(runs):
        for mode, counts in COUNTS.items():
            for n in counts:
                wall, cpu = timed(command(sdt, obj, pkt, mode, n))
                old = best.get((mode, n), (float("inf"), float("inf")))
                best[(mode, n)] = (min(old[0], wall), min(old[1], cpu))
    out = {}
    for mode, (low, high) in COUNTS.items():
        (w0, c0), (w1, c1) = best[(mode, low)], best[(mode, high)]
        out[mode] = ((high - low) / (w1 - w0), (high - low) / (c1 - c0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds (the fastest counts)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-aggbench-") as t:
        tmp = Path(t)
        if not build_samples(tmp / "samples"):
            print("building the samples failed", file=sys.stderr)
            return 1
        sdt, obj, pkt = installed_cli(tmp), tmp / "samples" / "xdp_parser.bpf.o", tmp / "p.bin"
        pkt.write_bytes(packet())
        measured = rates(sdt, obj, pkt, args.runs)
        load = os.getloadavg()[0]
        print(f"xdp_parser, one ipv4 event per run, {os.cpu_count()} CPUs, load average {load:.1f}; "
              f"fastest of {args.runs} interleaved runs")
        print("| path | events | events/s wall | events/s per CPU-second | lost |")
        print("|---|---:|---:|---:|---:|")
        for mode, (_low, high) in COUNTS.items():
            seen, lost = losses(sdt, obj, pkt, mode, high)
            wall, cpu = measured[mode]
            print(f"| {LABELS[mode]} | {seen:,} | {wall:,.0f} | {cpu:,.0f} | {lost} |")
        print()
        for ring in ("ring --json", "ring --count"):
            ratio_wall = measured["kernel"][0] / measured[ring][0]
            ratio_cpu = measured["kernel"][1] / measured[ring][1]
            print(f"kernel / {ring}: {ratio_wall:.1f}x wall, {ratio_cpu:.1f}x per CPU-second "
                  f"(target {TARGET_RATIO}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

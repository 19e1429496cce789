"""In-kernel aggregations (`trace --count-by/--hist/--lhist/--sum/--min/--max/
--avg`) on test runs of xdp_parser over a capture whose values the test
knows: every bucket, key and total equals what the test computes from the
packets with xdp_parser's model; per-CPU maps merged right (runs pinned to
each CPU in turn); keys that do not fit counted, never dropped silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_trace
from bpf_sdt.instrument.commands import Request, instrument
from bpf_sdt.trace.aggregate import bucket_range, map_name, parse_specs, plan_recorder, read_map
from bpf_sdt.trace.pcap import write_pcap
from bpf_sdt.trace.sites import site_table
from test_trace import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, _env, eth, ipv4, json_lines, udp, xdp_parser_model

from bpf_sdt.cli import main
from bpf_sdt.elf import load_object
from bpf_sdt.libbpf import LoadedObject
from bpf_sdt.probes import probe_types

built, kernel = test_trace.built, test_trace.kernel      # test_trace's fixtures, by name
CLI = [sys.executable, "-m", "bpf_sdt.cli"]
REPEAT = 3
DROP_NAMES = {2: "DROP_SHORT_IP", 3: "DROP_BAD_IHL", 4: "DROP_TTL"}
# Lengths, TTLs and protocols spread over several log2 and linear buckets.
PACKETS = [
    eth(ETH_P_IP, ipv4(udp(1, 2, bytes(n)), ttl=ttl, proto=proto))
    for n, ttl, proto in ((0, 64, 17), (5, 1, 17), (40, 128, 6), (100, 255, 17), (300, 30, 6), (1200, 2, 17))
] + [eth(ETH_P_IP, bytes(7)), eth(ETH_P_IP, ipv4(b"x" * 30, ihl=3)), eth(ETH_P_IPV6, bytes(40)),
     eth(ETH_P_ARP, bytes(28)), eth(ETH_P_ARP, bytes(28))]
OPTIONS = ["--count-by", "drop:arg0", "--hist", "ipv4:arg3", "--lhist", "ipv4:arg2,0,256,64",
           "--sum", "ipv4:arg3 by arg1", "--min", "ipv4:arg2", "--max", "ipv4:arg2", "--avg", "ipv4:arg3",
           "--count-by", "non_ip:arg0"]


def model_events(probe: str) -> list[list[int | None]]:
    return [args for pkt in PACKETS for p, args in xdp_parser_model(pkt)[1] if p == probe] * REPEAT


def log2_bucket(x: int) -> tuple[int | None, int | None]:
    if x < 0:
        return None, 0
    if x == 0:
        return 0, 1
    low = 1 << (x.bit_length() - 1)
    return low, low * 2


def linear_bucket(x: int, low: int, high: int, step: int) -> tuple[int | None, int | None]:
    if x < low:
        return None, low
    if x >= high:
        return high, None
    start = low + (x - low) // step * step
    return start, min(start + step, high)


def counted(keys: list[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "trace", *args], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agg") / "in.pcap"
    write_pcap(path, PACKETS)
    return path


def by_name(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Aggregation objects by `PROBES:NAME` (the option as given)."""
    return {f"{x['probes']}:{x['name']}": x for x in lines
            if x.get("type") in ("count", "hist", "lhist", "sum", "min", "max", "avg")}


@pytest.mark.kernel
def test_every_aggregation_equals_the_model(built: Path, kernel: None, capture: Path) -> None:
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--pcap", str(capture), "--repeat",
                str(REPEAT), "--json", *OPTIONS)
    assert res.returncode == 0, res.stderr
    lines = json_lines(res.stdout)
    maps = by_name(lines)
    ipv4s, drops, non_ips = model_events("ipv4"), model_events("drop"), model_events("non_ip")
    assert not [x for x in lines if "probe" in x and "args" in x], "aggregating: no ring events"

    drop_counts = {(e["keys"][0]["name"]): e["count"] for e in maps["drop:@count[arg0]"]["entries"]}
    assert drop_counts == {DROP_NAMES[k]: n for (k,), n in counted([(a[0],) for a in drops]).items()}

    (hist,) = maps["ipv4:@hist(arg3)"]["entries"]
    assert hist["count"] == len(ipv4s)
    assert {(b["low"], b["high"]): b["count"] for b in hist["buckets"]} == counted([log2_bucket(a[3]) for a in ipv4s])
    (lhist,) = maps["ipv4:@lhist(arg2, 0, 256, 64)"]["entries"]
    assert {(b["low"], b["high"]): b["count"] for b in lhist["buckets"]} == \
        counted([linear_bucket(a[2], 0, 256, 64) for a in ipv4s])

    sums = {e["keys"][0]: e["sum"] for e in maps["ipv4:@sum(arg3)[arg1]"]["entries"]}
    assert sums == {proto: sum(a[3] for a in ipv4s if a[1] == proto) for proto in {a[1] for a in ipv4s}}
    ttls = [a[2] for a in ipv4s]
    assert maps["ipv4:@min(arg2)"]["entries"][0]["min"] == min(ttls)
    assert maps["ipv4:@max(arg2)"]["entries"][0]["max"] == max(ttls)
    (avg,) = maps["ipv4:@avg(arg3)"]["entries"]
    assert (avg["count"], avg["sum"]) == (len(ipv4s), sum(a[3] for a in ipv4s))

    ether = {e["keys"][0]: e["count"] for e in maps["non_ip:@count[arg0]"]["entries"]}
    assert ether == counted([a[0] for a in non_ips])
    recorder = next(x for x in lines if x.get("type") == "recorder")
    assert (recorder["submitted"], recorder["overflow"], recorder["lost"]) == (0, 0, 0)


@pytest.mark.kernel
def test_text_output_per_site_and_key_overflow(built: Path, kernel: None, capture: Path) -> None:
    """Text: bucket ranges and bars; --per-site: one entry per drop site; a map
    of 2 keys: the rest of the keys counted as overflow."""
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--pcap", str(capture), "--repeat",
                str(REPEAT), "--hist", "ipv4:arg3", "--per-site", "--count-by", "drop:arg0")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "@hist(arg3) (site 4 (xdp_parse insn" in text, text
    ipv4s = model_events("ipv4")
    top = max(counted([log2_bucket(a[3]) for a in ipv4s]).values())
    for (low, high), n in counted([log2_bucket(a[3]) for a in ipv4s]).items():
        bar = "@" * (n * 52 // top)
        label = f"[{low}]" if high == low + 1 else f"[{low}, {high})"
        assert any(line.startswith(label) and line.rstrip().endswith(f"{n} |{bar:<52}|") for line in text.splitlines()), \
            (label, text)
    per_site = [line for line in text.splitlines() if line.startswith("@count[")]
    assert len(per_site) == len(DROP_NAMES) and all("(site " in line for line in per_site), per_site

    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--pcap", str(capture), "--repeat",
                str(REPEAT), "--json", "--count-by", "ipv4:arg2", "--map-entries", "2")
    assert res.returncode == 0, res.stderr
    lines = json_lines(res.stdout)
    kept = next(x for x in lines if x.get("type") == "count")["entries"]
    recorder = next(x for x in lines if x.get("type") == "recorder")
    assert len(kept) == 2
    assert sum(e["count"] for e in kept) + recorder["overflow"] == len(ipv4s)
    assert recorder["overflow"] > 0 and f"{recorder['overflow']} aggregation updates found their map full" in res.stderr


@pytest.mark.kernel
def test_per_cpu_values_are_merged(built: Path, kernel: None, tmp_path: Path) -> None:
    """Runs pinned to CPU 0 and to CPU 1 land in different per-CPU slots; the
    reader's merge adds counts and sums and takes min/max over both."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "this test needs two CPUs"
    obj = built / "xdp_parser.bpf.o"
    types = probe_types(load_object(obj).btf)
    specs = parse_specs([], [("min", "ipv4:arg2"), ("max", "ipv4:arg2"), ("sum", "ipv4:arg3")])
    recorder, _ = plan_recorder(types, sorted(types), [], specs, 64, len(site_table(load_object(obj))))
    out = tmp_path / "agg.o"
    instrument(Request(obj, out, recorder=recorder))
    runs = [(cpus[0], eth(ETH_P_IP, ipv4(udp(1, 2, bytes(10)), ttl=9)), 5),
            (cpus[1], eth(ETH_P_IP, ipv4(udp(1, 2, bytes(90)), ttl=200)), 7)]
    saved = os.sched_getaffinity(0)
    with LoadedObject.open(out) as bpf:
        bpf.load()
        prog = bpf.find_program("xdp_parse")
        try:
            for cpu, pkt, n in runs:
                os.sched_setaffinity(0, {cpu})
                prog.test_run(pkt, repeat=n)
        finally:
            os.sched_setaffinity(0, saved)
        m = bpf.find_map(map_name(specs[0].index))
        (key,) = list(m.keys())
        raw = m.lookup(key)
        assert raw is not None
        per_cpu = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 32)]
        assert per_cpu[cpus[0]] == 5 and per_cpu[cpus[1]] == 7, per_cpu
        (low,) = read_map(m, 0).values()
        (high,) = read_map(bpf.find_map(map_name(specs[1].index)), 0).values()
        (total,) = read_map(bpf.find_map(map_name(specs[2].index)), 0).values()
    assert (low.count, low.min, high.max) == (12, 9, 200)
    assert total.sum == 5 * (20 + 8 + 10) + 7 * (20 + 8 + 90)


def test_bucket_ranges() -> None:
    (hist, lhist) = parse_specs([], [("hist", "arg0"), ("lhist", "arg0,10,100,25")])
    assert [bucket_range(hist, b) for b in range(5)] == [(None, 0), (0, 1), (1, 2), (2, 4), (4, 8)]
    assert [bucket_range(lhist, b) for b in range(6)] == [(None, 10), (10, 35), (35, 60), (60, 85), (85, 100),
                                                          (100, None)]
    assert json.loads(json.dumps(hist.name)) == "@hist(arg0)"


BAD_OPTIONS = {
    "--interval without an aggregation": (["--interval", "1"], "go with an aggregation"),
    "--interval nan": (["--count-by", "arg0", "--interval", "nan"], "--interval nan"),
    "--map-entries 0": (["--count-by", "drop:arg0", "--map-entries", "0"], "--map-entries 0"),
    "--prometheus port": (["--prometheus", "70000"], "out of range"),
    "--prometheus address": (["--prometheus", "localhost:9000"], "numeric address"),
    "--lhist shape": (["--lhist", "ipv4:arg2,10,5,1"], "MIN < MAX"),
    "--lhist parts": (["--lhist", "ipv4:arg2,10"], "EXPR,MIN,MAX,STEP"),
    "--count-by empty key": (["--count-by", "drop:arg0,"], "an empty key"),
    "--hist unknown name": (["--hist", "drop:arg7"], "unknown name arg7"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_aggregation_options_are_exit_2_before_loading(built: Path, tmp_path: Path, case: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the CLI's main): each is refused before anything is instrumented or loaded."""
    args, words = BAD_OPTIONS[case]
    (tmp_path / "p.bin").write_bytes(PACKETS[0])
    code = main(["trace", str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                 *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("bpf-sdt trace: ") and words in err, err


@pytest.mark.kernel
def test_interval_prints_the_maps_as_they_grow(built: Path, kernel: None, tmp_path: Path) -> None:
    """--interval: the histogram printed between test-run batches too, each
    print cumulative (never smaller), the last one complete."""
    (tmp_path / "p.bin").write_bytes(PACKETS[0])
    repeat = 2_000_000
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                "--repeat", str(repeat), "--json", "--hist", "ipv4:arg3", "--interval", "0.05")
    assert res.returncode == 0, res.stderr
    totals = [sum(e["count"] for e in x["entries"]) for x in json_lines(res.stdout) if x.get("type") == "hist"]
    assert len(totals) >= 2, totals
    assert totals == sorted(totals) and totals[-1] == repeat, totals


@pytest.mark.kernel
def test_instrumented_with_aggregations_read_back_pinned(built: Path, kernel: None, tmp_path: Path) -> None:
    """`instrument --hist/--count-by`, loaded by bpftool with its maps pinned
    where bpftool is told, run by bpftool: `trace --pinned --pin-dir` with the
    same options prints what the model says; with other options it refuses."""
    options = ["--hist", "ipv4:arg3", "--count-by", "drop:arg0"]
    inst = tmp_path / "agg.inst.o"
    res = trace_cli("instrument", str(built / "xdp_parser.bpf.o"), "-o", str(inst), *options)
    assert res.returncode == 0, res.stderr
    pins = tmp_path / "bpffs"
    pins.mkdir()
    assert subprocess.run(["mount", "-t", "bpf", "bpf", str(pins)], check=False).returncode == 0
    try:
        res = subprocess.run(["bpftool", "prog", "loadall", str(inst), str(pins / "progs"), "pinmaps",
                              str(pins / "maps")], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        for i, pkt in enumerate(PACKETS):
            (tmp_path / f"{i}.bin").write_bytes(pkt)
            res = subprocess.run(["bpftool", "prog", "run", "pinned", str(pins / "progs" / "xdp_parse"), "data_in",
                                  str(tmp_path / f"{i}.bin"), "repeat", str(REPEAT)], capture_output=True, text=True,
                                 check=False)
            assert res.returncode == 0, res.stderr
        res = trace(str(inst), "--pinned", "--pin-dir", str(pins / "maps"), "--duration", "0.2", "--json", *options)
        assert res.returncode == 0, res.stderr
        maps = by_name(json_lines(res.stdout))
        drops = {e["keys"][0]["name"]: e["count"] for e in maps["drop:@count[arg0]"]["entries"]}
        assert drops == {DROP_NAMES[k]: n for (k,), n in counted([(a[0],) for a in model_events("drop")]).items()}
        (hist,) = maps["ipv4:@hist(arg3)"]["entries"]
        assert {(b["low"], b["high"]): b["count"] for b in hist["buckets"]} == \
            counted([log2_bucket(a[3]) for a in model_events("ipv4")])
        res = trace(str(inst), "--pinned", "--pin-dir", str(pins / "maps"), "--duration", "0.2", "--hist", "ipv4:arg2")
        assert res.returncode == 2 and "other --filter/aggregation options" in res.stderr, res.stderr
    finally:
        subprocess.run(["rm", "-rf", str(pins / "progs"), str(pins / "maps")], check=False)
        subprocess.run(["umount", str(pins)], check=False)


def trace_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=120, check=False)

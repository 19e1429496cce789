"""`trace --prometheus`: the endpoint scraped over loopback while trace runs,
parsed with prometheus_client's own parser; every metric, label and bucket
equals what the test computes from the packets (xdp_parser's model): per-site
hits, the recorder's counters, count-by with enum keys by name, a histogram
as a Prometheus histogram.  Then once more without aggregations, during a
live XDP trace on a veth pair: hits counted from the ring's events."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import test_trace
from bpf_sdt.trace.pcap import write_pcap
from bpf_sdt.trace.sites import site_table
from netns import VethPair
from prometheus_client.parser import text_string_to_metric_families
from test_aggregate import PACKETS, REPEAT, log2_bucket, model_events
from test_trace import UDP_PORT, Tracer, xdp_parser_model
from toolchain import run

from bpf_sdt.elf import load_object

built, kernel, tracers = test_trace.built, test_trace.kernel, test_trace.tracers    # fixtures, by name
SCRAPE_TIMEOUT_S = 10.0
POLL_S = 0.1
DROP_NAMES = {2: "DROP_SHORT_IP", 3: "DROP_BAD_IHL", 4: "DROP_TTL"}
SERVING = re.compile(rb"serving Prometheus metrics at http://127\.0\.0\.1:(\d+)/metrics")


def scrape(tracer: Tracer) -> dict[str, list[Any]]:
    """Metric family name -> its samples, from the tracer's endpoint."""
    match = SERVING.search(tracer.err)
    assert match, tracer.err.decode()
    with urllib.request.urlopen(f"http://127.0.0.1:{int(match[1])}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
        text = r.read().decode()
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def hits_by_site(families: dict[str, list[Any]]) -> dict[int, float]:
    return {int(s.labels["site"]): s.value for s in families["bpf_sdt_site_hits"] if s.name.endswith("_total")}


@pytest.mark.kernel
def test_scrape_during_a_run_equals_the_model(built: Path, kernel: None, tracers: list[Tracer],
                                              tmp_path: Path) -> None:
    write_pcap(tmp_path / "in.pcap", PACKETS)
    obj = built / "xdp_parser.bpf.o"
    tracer = Tracer(str(obj), "--run", "xdp_parse", "--pcap", str(tmp_path / "in.pcap"), "--repeat", str(REPEAT),
                    "--count-by", "drop:arg0", "--hist", "ipv4:arg3", "--prometheus", "0", "--json")
    tracers.append(tracer)
    tracer.wait_ready()                 # the runs are done; trace serves until stopped
    families = scrape(tracer)
    sites = site_table(load_object(obj))

    expected_hits = {s.site_id: 0 for s in sites}
    for pkt in PACKETS:
        _, events = xdp_parser_model(pkt)
        for probe, args in events:
            site = _site_of(sites, probe, args)
            expected_hits[site] += REPEAT
    assert hits_by_site(families) == expected_hits
    labels = {int(s.labels["site"]): s.labels for s in families["bpf_sdt_site_hits"]}
    for s in sites:
        assert labels[s.site_id] == {"probe": s.probe, "site": str(s.site_id), "function": "xdp_parse",
                                     "insn": str(s.insn), "file_line": s.source}

    drops = {s.labels["key0"]: s.value for s in families["bpf_sdt_count_1"] if s.name.endswith("_total")}
    assert drops == {DROP_NAMES[k]: float(n) for k, n in _count(a[0] for a in model_events("drop")).items()}
    assert all(s.labels["probe"] == "drop" and s.labels["aggregation"] == "@count[arg0]"
               for s in families["bpf_sdt_count_1"])

    hist = families["bpf_sdt_hist_2"]
    ipv4s = model_events("ipv4")
    buckets = {_le(s.labels["le"]): s.value for s in hist if s.name.endswith("_bucket")}
    cumulative, expected = 0, {}
    for (_low, high), n in sorted(_count(log2_bucket(a[3]) for a in ipv4s).items(), key=lambda b: b[0][1]):
        cumulative += n
        expected[float(high - 1)] = float(cumulative)         # le: the bucket's largest integer
    expected[float("inf")] = float(len(ipv4s))
    assert buckets == expected
    assert all(s.labels["aggregation"] == "@hist(arg3)" and s.labels["probe"] == "ipv4" for s in hist)
    assert next(s.value for s in hist if s.name.endswith("_count")) == len(ipv4s)
    assert next(s.value for s in hist if s.name.endswith("_sum")) == sum(a[3] for a in ipv4s)
    counters = {n: families[f"bpf_sdt_recorder_{n}"][0].value for n in ("submitted", "lost", "filtered", "overflow")}
    assert counters == {"submitted": 0, "lost": 0, "filtered": 0, "overflow": 0}
    assert tracer.finish(signal.SIGTERM) == 0, tracer.err.decode()


@pytest.mark.kernel
def test_scrape_during_a_live_xdp_trace(built: Path, kernel: None, tracers: list[Tracer]) -> None:
    """No aggregation: the hits are the events trace read from the ring.  trace
    runs in the receiver's namespace, so its loopback is where it serves."""
    with VethPair() as net:
        run(["ip", "-n", net.receiver.netns, "link", "set", "lo", "up"])
        tracer = Tracer(str(built / "xdp_parser.bpf.o"), "--xdp", net.receiver.iface, "--prometheus", "0",
                        "--count", netns=net.receiver.netns)
        tracers.append(tracer)
        tracer.wait_ready()
        sent = net.send_udp(5, UDP_PORT, b"hello")
        assert sent == 5
        ipv4 = 0.0
        for _ in range(int(SCRAPE_TIMEOUT_S / POLL_S)):
            with net.receiver.entered():
                families = scrape(tracer)
            ipv4 = sum(v for site, v in hits_by_site(families).items() if _probe(families, site) == "ipv4")
            if ipv4 >= sent:
                break
            time.sleep(POLL_S)
        assert ipv4 == sent, tracer.err.decode()
        assert families["bpf_sdt_recorder_submitted"][0].value == sent
        assert families["bpf_sdt_recorder_lost"][0].value == 0
        assert tracer.finish(signal.SIGINT) == 0, tracer.err.decode()


def _probe(families: dict[str, list[Any]], site: int) -> str:
    return next(s.labels["probe"] for s in families["bpf_sdt_site_hits"] if int(s.labels["site"]) == site)


def _le(text: str) -> float:
    return float("inf") if text == "+Inf" else float(text)


def _count(items: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for k in items:
        out[k] = out.get(k, 0) + 1
    return out


def _site_of(sites: list[Any], probe: str, args: list[int | None]) -> int:
    """The site a model event fires at: drop's reason picks one of its four sites."""
    candidates = [s.site_id for s in sites if s.probe == probe]
    if probe != "drop":
        (only,) = candidates
        return only
    order = {1: 0, 2: 1, 3: 2, 4: 3}              # DROP_SHORT_ETH.. DROP_TTL, in source order
    return candidates[order[int(args[0] or 0)]]



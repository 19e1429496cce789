"""`trace --prometheus [ADDR:]PORT`: the recorder's numbers in the Prometheus
text format, served with prometheus_client (docs/aggregate.md, "Prometheus").

Each scrape reads the kernel's maps afresh (a custom collector): nothing is
cached between scrapes, so what is served is what the maps hold then.

- ``bpf_sdt_site_hits_total{probe, site, function, insn, file_line}``: firings
  per site (from the hits map when aggregating, else the events trace read);
- ``bpf_sdt_recorder_<counter>_total``: submitted, lost, filtered, overflow;
- per aggregation option N: ``bpf_sdt_count_N_total`` (count-by),
  ``bpf_sdt_hist_N`` / ``bpf_sdt_lhist_N`` as Prometheus histograms (``le`` is
  each bucket's largest integer: the values are integers, so the bucket
  [low, high) is exactly ``le = high - 1``), ``bpf_sdt_sum_N``, ``_min_N``,
  ``_max_N``, ``_avg_N`` as gauges; labels ``aggregation`` (the option),
  ``probe``, the site labels with --per-site, and ``key0``.. for the keys
  (enumerators by name).

The server listens on loopback unless the address says otherwise, in a
daemon thread of trace, and is shut down when trace ends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry

from bpf_sdt.errors import UsageError
from bpf_sdt.recorder_abi import RECORDER_COUNTER_MEANINGS

from .aggregate import Report, Row, bucket_range, group, read_map
from .recorder import CounterValues
from .sites import Site

DEFAULT_ADDRESS = "127.0.0.1"
PREFIX = "bpf_sdt"
PORT_MAX = 65535
SITE_LABELS = ("probe", "site", "function", "insn", "file_line")
GAUGE_KINDS = ("sum", "min", "max", "avg")


def parse_listen(spec: str) -> tuple[str, int]:
    """``[ADDR:]PORT`` -> (address, port); loopback when no address is given."""
    addr, sep, port_text = spec.rpartition(":")
    addr = addr.strip("[]") if sep else DEFAULT_ADDRESS
    try:
        port = int(port_text)
        ipaddress.ip_address(addr)
    except ValueError:
        raise UsageError(f"--prometheus {spec}: expected [ADDR:]PORT with a numeric address") from None
    if not 0 <= port <= PORT_MAX:          # 0: a free port the kernel picks (printed)
        raise UsageError(f"--prometheus {spec}: port {port} out of range")
    return addr, port


def site_labels(site: Site) -> list[str]:
    return [site.probe, str(site.site_id), site.function or "-", str(site.insn), site.source or "-"]


@dataclass
class Sources:
    """Where a scrape reads from: each a callable, so the values are current."""

    sites: Sequence[Site]
    shown: set[int]
    hits: Callable[[], dict[int, int]]          # site id -> firings
    counters: Callable[[], CounterValues]
    report: Report | None


class RecorderCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        hits = CounterMetricFamily(f"{PREFIX}_site_hits", "probe firings per site", labels=SITE_LABELS)
        counts = s.hits()
        for site in s.sites:
            if site.site_id in s.shown:
                hits.add_metric(site_labels(site), counts.get(site.site_id, 0))
        yield hits
        values = s.counters()
        for name, doc in RECORDER_COUNTER_MEANINGS.items():
            yield CounterMetricFamily(f"{PREFIX}_recorder_{name}", doc, value=getattr(values, name))
        if s.report is not None:
            yield from self._aggregations(s.report)

    def _aggregations(self, report: Report) -> Iterator[Metric]:
        for spec in report.layout.specs:
            data = read_map(report.maps[spec.index], len(spec.keys))
            rows = group(spec, report.layout, report.sites, data, report.per_site)
            names = ["aggregation", *self._where(report.per_site), *(f"key{i}" for i in range(len(spec.keys)))]
            metric_name = f"{PREFIX}_{spec.kind}_{spec.index}"
            doc = f"{spec.name} ({spec.probe_glob or 'every probe'})"
            if spec.kind == "count":
                family: Metric = CounterMetricFamily(metric_name, doc, labels=names)
            elif spec.kind in GAUGE_KINDS:
                family = GaugeMetricFamily(metric_name, doc, labels=names)
            else:
                family = HistogramMetricFamily(metric_name, doc, labels=names)
            for row in rows:
                labels = [spec.name, *self._row_where(row, report.per_site), *(str(k) for k in row.keys)]
                self._add(family, spec.kind, spec, row, labels)
            yield family

    @staticmethod
    def _where(per_site: bool) -> tuple[str, ...]:
        return SITE_LABELS if per_site else ("probe",)

    @staticmethod
    def _row_where(row: Row, per_site: bool) -> list[str]:
        if per_site and row.site is not None:
            return site_labels(row.site)
        return [row.probe]

    @staticmethod
    def _add(family: Metric, kind: str, spec: object, row: Row, labels: list[str]) -> None:
        m = row.merged
        if isinstance(family, CounterMetricFamily):
            family.add_metric(labels, m.count)
        elif isinstance(family, GaugeMetricFamily):
            value = {"sum": m.sum, "min": m.min or 0, "max": m.max or 0,
                     "avg": m.sum / m.count if m.count else 0.0}[kind]
            family.add_metric(labels, value)
        else:
            assert isinstance(family, HistogramMetricFamily)
            buckets, total = [], 0
            for b in sorted(row.buckets):
                total += row.buckets[b]
                high = bucket_range(spec, b)[1]       # type: ignore[arg-type]
                if high is not None:
                    buckets.append((str(high - 1), total))
            buckets.append(("+Inf", total))
            family.add_metric(labels, buckets, sum_value=m.sum)


class Exporter:
    """The HTTP server, from start to shutdown."""

    def __init__(self, listen: tuple[str, int], sources: Sources) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RecorderCollector(sources))
        try:
            self._server, self._thread = start_http_server(listen[1], listen[0], registry=registry)
        except OSError as e:
            raise UsageError(f"--prometheus {listen[0]}:{listen[1]}: {e.strerror or e}") from None
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_exporter(spec: str | None, sites: Sequence[Site], shown: set[int], ring_hits: Sequence[int],
                   counters: Callable[[], CounterValues], report: Report | None, err: TextIO) -> Exporter | None:
    """The exporter of ``--prometheus SPEC``, serving already, or None without it.
    Hits come from the hits map when aggregating, else from the events read."""
    if spec is None:
        return None
    hits = report.hits if report is not None else (lambda: dict(enumerate(ring_hits)))
    exporter = Exporter(parse_listen(spec), Sources(sites, shown, hits, counters, report))
    host = parse_listen(spec)[0]
    shown_host = f"[{host}]" if ":" in host else host
    err.write(f"bpf-sdt trace: serving Prometheus metrics at http://{shown_host}:{exporter.port}/metrics\n")
    err.flush()
    return exporter

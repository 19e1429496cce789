"""In-kernel aggregations for `bpf-sdt trace` (docs/aggregate.md): the
options, the recorder plan they compile to, reading and merging the per-CPU
maps, and printing them (bpftrace-style text, or one JSON object per map).

Each aggregation option is one map ``bpf_sdt_agg<N>``, a per-CPU hash keyed by
``{u32 site, u32 bucket, u64 keys[K]}`` with the value ``{u64 count, s64 sum,
s64 min, s64 max}`` (both laid out in :mod:`bpf_sdt.recorder_abi`, from which the
recorder's C is rendered).  Map 0 is
always the per-site hit count.  The kernel keys by site; the reader merges the
CPUs (count and sum add; min and max over the CPUs that saw the key) and,
unless ``--per-site``, the sites of each probe.  An update that finds its map
full is counted in the recorder's ``overflow`` counter and reported.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bpf_sdt.instrument.observers import AggregationCode, ProbePlan, RecorderOptions

from bpf_sdt.argtype import ArgType
from bpf_sdt.elf import BpfObject
from bpf_sdt.errors import UsageError
from bpf_sdt.libbpf import Map
from bpf_sdt.probes import probe_types
from bpf_sdt.recorder_abi import (
    AGGREGATION_MAP_PREFIX,
    AGGREGATION_VALUE,
    HITS_MAP,
    RECORDER_COUNTERS,
    aggregation_key,
    percpu_stride,
)

from .filters import Compiled, Scope, caret_message, compile_expression, probe_filters, split_probe
from .sites import Site, site_table

HITS_INDEX = HITS_MAP                   # map 0: hits per site, when aggregating and hits are wanted
BY = " by "                             # EXPR by KEY,KEY
MAX_KEYS = 8
BAR_WIDTH = 52                          # bpftrace's histogram bars
S64 = 1 << 64
LOG2_NEGATIVE, LOG2_ZERO, LOG2_FIRST = 0, 1, 2
VALUE_KINDS = ("hist", "lhist", "sum", "min", "max", "avg")


@dataclass(frozen=True)
class AggregationSpec:
    """One aggregation option as the user gave it."""

    index: int
    kind: str
    probe_glob: str | None
    value: str | None                   # the value expression (None for count-by)
    keys: tuple[str, ...]
    lmin: int = 0
    lmax: int = 0
    step: int = 1

    @property
    def function(self) -> str:
        """``@hist(arg1)``, ``@lhist(arg1, 0, 100, 10)``, ``@count``: what is aggregated."""
        if self.kind == "count":
            return "@count"
        args = self.value or ""
        if self.kind == "lhist":
            args += f", {self.lmin}, {self.lmax}, {self.step}"
        return f"@{self.kind}({args})"

    @property
    def name(self) -> str:
        """The function and its key expressions: ``@count[arg0, arg1]``."""
        return self.function + (f"[{', '.join(self.keys)}]" if self.keys else "")

    @property
    def last_bucket(self) -> int:
        return 1 + -(-(self.lmax - self.lmin) // self.step)


def _keys(text: str, option: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(","))
    if not all(keys):
        raise UsageError(f"{option} {text}: an empty key")
    if len(keys) > MAX_KEYS:
        raise UsageError(f"{option} {text}: at most {MAX_KEYS} keys")
    return keys


def _integer(text: str, option: str, spec: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise UsageError(f"{option} {spec}: {text.strip()!r} is not an integer") from None


def parse_specs(count_by: Sequence[str], values: Sequence[tuple[str, str]]) -> list[AggregationSpec]:
    """The aggregation options in order: --count-by KEYS, then (kind, text) of
    --hist/--lhist/--sum/--min/--max/--avg, each ``[PROBE:]EXPR[ by KEYS]``."""
    specs: list[AggregationSpec] = []
    for text in count_by:
        glob, rest = split_probe(text)
        specs.append(AggregationSpec(len(specs) + 1, "count", glob, None, _keys(rest, "--count-by")))
    for kind, text in values:
        option = f"--{kind}"
        glob, rest = split_probe(text)
        expr, _, by = rest.partition(BY)
        keys = _keys(by, option) if by.strip() else ()
        if kind != "lhist":
            specs.append(AggregationSpec(len(specs) + 1, kind, glob, expr, keys))
            continue
        parts = expr.rsplit(",", 3)
        if len(parts) != 4:
            raise UsageError(f"--lhist {text}: expected EXPR,MIN,MAX,STEP")
        lmin, lmax, step = (_integer(p, option, text) for p in parts[1:])
        if step <= 0 or lmax <= lmin:
            raise UsageError(f"--lhist {text}: needs MIN < MAX and STEP > 0")
        specs.append(AggregationSpec(len(specs) + 1, kind, glob, parts[0], keys, lmin, lmax, step))
    return specs


@dataclass
class Layout:
    """What the reader needs to decode the maps: per aggregation and probe, the
    argument each key is exactly (for printing by its type), or None."""

    specs: list[AggregationSpec]
    counts_hits: bool = False           # map 0 exists
    key_args: dict[tuple[int, str], tuple[int | None, ...]] = field(default_factory=dict)


def plan_recorder(types: Mapping[str, tuple[ArgType, ...]], selected: Sequence[str], filters: Sequence[str],
                  specs: Sequence[AggregationSpec], map_entries: int, sites: int, count_hits: bool = True,
                  pin_by_name: bool = False) -> tuple[RecorderOptions, Layout]:
    """The recorder's plan for the traced probes: their filters, and, when there
    are aggregations, the map updates instead of ring events (and, with
    ``count_hits``, the hits per site in map 0: one more update per firing)."""
    conditions = probe_filters(filters, types, selected)
    layout = Layout(list(specs), counts_hits=bool(specs) and count_hits)
    codes: dict[str, list[AggregationCode]] = {p: [] for p in selected}
    for spec in specs:
        probes = [p for p in selected if spec.probe_glob is None or fnmatch.fnmatchcase(p, spec.probe_glob)]
        if not probes:
            raise UsageError(f"{spec.name}: {spec.probe_glob} matches no traced probe; traced: {', '.join(selected)}")
        for p in probes:
            scope = Scope(p, types.get(p, ()))
            keys = [compile_expression(k, scope, f"{spec.name} key (probe {p})") for k in spec.keys]
            value: Compiled | None = None
            if spec.value is not None:
                value = compile_expression(spec.value, scope, f"{spec.name} (probe {p})")
            layout.key_args[(spec.index, p)] = tuple(k.arg for k in keys)
            codes[p].append(AggregationCode(spec.index, spec.kind, tuple(k.c for k in keys),
                                            value.c if value else None, spec.lmin, spec.lmax, spec.step))
    aggregating = bool(specs)
    plans = {}
    for p in selected:
        hits = [AggregationCode(HITS_INDEX, "count")] if layout.counts_hits else []
        plans[p] = ProbePlan(conditions.get(p), ring=not aggregating, aggregations=tuple(hits + codes[p]))
    return RecorderOptions(pin_by_name=pin_by_name, probes=plans, map_entries=map_entries,
                           hits_entries=max(sites, 1),
                           plan_id=plan_id(filters, specs, layout.counts_hits)), layout


def plan_id(filters: Sequence[str], specs: Sequence[AggregationSpec], counts_hits: bool) -> str:
    """The options a recorder was built with, canonically (their order numbers
    the maps), for its identity: a reader given other options is refused."""
    if not filters and not specs:
        return ""
    return json.dumps({"filters": list(filters), "hits": counts_hits,
                       "aggregations": [[s.kind, s.probe_glob, s.value, list(s.keys), s.lmin, s.lmax, s.step]
                                        for s in specs]}, separators=(",", ":"))


def recorder_for(obj: BpfObject, probe_globs: Sequence[str], filters: Sequence[str], count_by: Sequence[str],
                 values: Sequence[tuple[str, str]], map_entries: int, count_hits: bool,
                 pin_by_name: bool = False) -> tuple[RecorderOptions, Layout]:
    """The recorder plan of these options for OBJ's probes (``probe_globs``:
    --probe, default all): what instrument compiles and trace reads back."""
    types = probe_types(obj.btf)
    selected = [p for p in sorted(types) if not probe_globs or any(fnmatch.fnmatchcase(p, g) for g in probe_globs)]
    return plan_recorder(types, selected, filters, parse_specs(count_by, values), map_entries,
                         len(site_table(obj)), count_hits=count_hits, pin_by_name=pin_by_name)


# --- reading ------------------------------------------------------------------------


@dataclass
class Merged:
    count: int = 0
    sum: int = 0
    min: int | None = None
    max: int | None = None

    def add(self, count: int, total: int, low: int, high: int) -> None:
        if not count:
            return
        self.count += count
        self.sum += total
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)


Entry = tuple[int, int, tuple[int, ...]]      # site, bucket, keys (raw u64)


def read_map(m: Map, nkeys: int) -> dict[Entry, Merged]:
    """Every key of one aggregation map, its CPUs merged."""
    out: dict[Entry, Merged] = {}
    key_format = aggregation_key(nkeys)
    stride = percpu_stride(m.value_size)
    for key in list(m.keys()):
        raw = m.lookup(key)
        if raw is None:                 # deleted meanwhile: nothing deletes our keys, but never assume
            continue
        site, bucket, *keys = key_format.unpack(key)
        merged = out.setdefault((site, bucket, tuple(keys[:nkeys])), Merged())
        for cpu in range(0, len(raw), stride):
            merged.add(*AGGREGATION_VALUE.unpack_from(raw, cpu))
    return out


def map_name(index: int) -> str:
    return f"{AGGREGATION_MAP_PREFIX}{index}"


# --- grouping and printing ------------------------------------------------------------


@dataclass
class Row:
    """One printed line group: an aggregation at one probe (or site) and key tuple."""

    probe: str
    site: Site | None
    keys: tuple[object, ...]            # printable: ints, bools, names, hex strings
    buckets: dict[int, int] = field(default_factory=dict)
    merged: Merged = field(default_factory=Merged)


def _key_value(raw: int, t: ArgType | None, as_json: bool) -> object:
    if t is None:
        return raw - S64 if raw >= S64 // 2 else raw
    value = t.convert(raw)
    if t.kind == "bool":
        return bool(value)
    if t.kind == "pointer":
        return f"0x{value:x}"
    if t.kind == "enum":
        name = t.format(value)
        if not as_json:
            return name
        return {"name": name, "value": value} if name != str(value) else value
    return value


def group(spec: AggregationSpec, layout: Layout, sites: Sequence[Site], data: Mapping[Entry, Merged],
          per_site: bool, as_json: bool = False) -> list[Row]:
    rows: dict[tuple[object, ...], Row] = {}
    for (site_id, bucket, keys), merged in sorted(data.items()):
        if site_id >= len(sites):
            continue                    # not this object's site: the identity check makes this unreachable
        site = sites[site_id]
        args = layout.key_args.get((spec.index, site.probe), (None,) * len(keys))
        key_types = [site.types[a] if a is not None and a < len(site.types) else None for a in args]
        # Keys are compared as C values (two sites' raw slots may differ only above the type's width).
        values = tuple(t.convert(k) if t is not None else k for k, t in zip(keys, key_types, strict=False))
        ident = (site.probe, site_id if per_site else None, values)
        if ident not in rows:
            shown = tuple(_key_value(k, t, as_json) for k, t in zip(keys, key_types, strict=False))
            rows[ident] = Row(site.probe, site if per_site else None, shown)
        row = rows[ident]
        row.buckets[bucket] = row.buckets.get(bucket, 0) + merged.count
        if merged.count:
            row.merged.add(merged.count, merged.sum, merged.min or 0, merged.max or 0)
    return list(rows.values())


def bucket_range(spec: AggregationSpec, bucket: int) -> tuple[int | None, int | None]:
    """[low, high) of a bucket; None for an open end."""
    if spec.kind == "hist":
        if bucket == LOG2_NEGATIVE:
            return None, 0
        if bucket == LOG2_ZERO:
            return 0, 1
        low = 1 << (bucket - LOG2_FIRST)
        return low, low * 2
    if bucket == 0:
        return None, spec.lmin
    if bucket >= spec.last_bucket:
        return spec.lmax, None
    low = spec.lmin + (bucket - 1) * spec.step
    return low, min(low + spec.step, spec.lmax)


def _range_text(spec: AggregationSpec, bucket: int) -> str:
    low, high = bucket_range(spec, bucket)
    if low is None:
        return f"(..., {high})"
    if high is None:
        return f"[{low}, ...)"
    if spec.kind == "hist" and high == low + 1:
        return f"[{low}]"
    return f"[{low}, {high})"


def _label(spec: AggregationSpec, row: Row) -> str:
    where = f"probe {row.probe}"
    if row.site is not None:
        where = f"site {row.site.site_id} ({row.site.function or '-'} insn {row.site.insn}, {row.site.source or '-'})"
    keys = f"[{', '.join(str(k) for k in row.keys)}]" if row.keys else ""
    return f"{spec.function}{keys} ({where})"


def _histogram(spec: AggregationSpec, row: Row) -> list[str]:
    buckets = sorted(row.buckets)
    span = range(buckets[0], buckets[-1] + 1)      # empty buckets between shown, as bpftrace does
    top = max(row.buckets.values()) or 1
    width = max(len(_range_text(spec, b)) for b in span)
    lines = []
    for b in span:
        n = row.buckets.get(b, 0)
        bar = "@" * (n * BAR_WIDTH // top)
        lines.append(f"{_range_text(spec, b):<{width}} {n:>12} |{bar:<{BAR_WIDTH}}|")
    return lines


def text_lines(spec: AggregationSpec, rows: Iterable[Row]) -> list[str]:
    """bpftrace-style: histograms with bucket ranges and bars, scalars one per line."""
    out: list[str] = []
    for row in rows:
        m = row.merged
        if spec.kind in ("hist", "lhist"):
            out += [f"{_label(spec, row)}:", *_histogram(spec, row), ""]
            continue
        value = {"count": m.count, "sum": m.sum, "min": m.min, "max": m.max,
                 "avg": m.sum // m.count if m.count else 0}[spec.kind]
        out.append(f"{_label(spec, row)}: {value}")
    return out


def json_object(spec: AggregationSpec, rows: Iterable[Row]) -> str:
    """One JSON object for the whole map, with its ``type``."""
    entries = []
    for row in rows:
        m = row.merged
        entry: dict[str, object] = {"probe": row.probe, "keys": list(row.keys), "count": m.count, "sum": m.sum,
                                    "min": m.min, "max": m.max}
        if row.site is not None:
            s = row.site
            entry.update(site=s.site_id, function=s.function, insn=s.insn, file=s.file, line=s.line)
        if spec.kind in ("hist", "lhist"):
            entry["buckets"] = [{"low": bucket_range(spec, b)[0], "high": bucket_range(spec, b)[1], "count": n}
                                for b, n in sorted(row.buckets.items())]
        entries.append(entry)
    return json.dumps({"type": spec.kind, "name": spec.name, "probes": spec.probe_glob or "*",
                       "map": map_name(spec.index), "entries": entries}, separators=(",", ":"))


def check_spec_names(specs: Sequence[AggregationSpec]) -> None:
    """Options that produce no map are refused before anything loads."""
    for s in specs:
        if s.kind in VALUE_KINDS and not (s.value or "").strip():
            raise caret_message(f"--{s.kind}", s.value or "", 1, "an empty expression")


class Report:
    """The aggregation maps of one loaded recorder, printed at the end and
    every ``interval`` seconds (into the decoder's output lines)."""

    def __init__(self, maps: Mapping[int, Map], layout: Layout, sites: Sequence[Site], *, per_site: bool,
                 as_json: bool, interval: float | None, now: float) -> None:
        self.maps, self.layout, self.sites = maps, layout, sites
        self.per_site, self.as_json, self.interval = per_site, as_json, interval
        self.next_due = None if interval is None else now + interval

    def due(self, now: float) -> bool:
        if self.next_due is None or now < self.next_due:
            return False
        assert self.interval is not None
        self.next_due = now + self.interval
        return True

    def lines(self) -> list[str]:
        out: list[str] = []
        for spec in self.layout.specs:
            data = read_map(self.maps[spec.index], len(spec.keys))
            rows = group(spec, self.layout, self.sites, data, self.per_site, self.as_json)
            out += [json_object(spec, rows)] if self.as_json else text_lines(spec, rows)
        return out

    def hits(self) -> dict[int, int]:
        """Site id -> hits (map 0)."""
        out: dict[int, int] = {}
        for (site, _bucket, _keys), merged in read_map(self.maps[HITS_INDEX], 0).items():
            out[site] = out.get(site, 0) + merged.count
        return out


def open_report(find_map: Callable[[str], Map], layout: Layout, sites: Sequence[Site], *, per_site: bool,
                as_json: bool, interval: float | None, now: float) -> Report | None:
    """The report of a loaded recorder, or None when nothing is aggregated."""
    if not layout.specs:
        return None
    hits = [HITS_INDEX] if layout.counts_hits else []
    maps = {i: find_map(map_name(i)) for i in [*hits, *(s.index for s in layout.specs)]}
    return Report(maps, layout, sites, per_site=per_site, as_json=as_json, interval=interval, now=now)


def counters_line(counted: object, as_json: bool) -> str:
    """The recorder's own counts, for runs that filter or aggregate."""
    values = {k: getattr(counted, k) for k in RECORDER_COUNTERS}
    if as_json:
        return json.dumps({"type": "recorder", **values}, separators=(",", ":"))
    return "recorder: " + ", ".join(f"{v} {k}" for k, v in values.items())

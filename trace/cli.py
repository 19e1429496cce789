"""Arguments and entry point of `bpf-sdt trace` (the runner is bpf_sdt.trace.runner)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# From the recorder's contract itself, not bpf_sdt.format (which imports the
# instruction, ELF and BTF layers): a cached trace --run imports those beside
# its load (docs/trace.md, "Start-up").
from bpf_sdt.recorder_abi import RECORDER_DEFAULT_RINGBUF_SIZE as DEFAULT_RINGBUF_SIZE

if TYPE_CHECKING:
    from bpf_sdt.instrument.observers import RecorderOptions

    from .worker import InstrumentWorker

READER_ENV = "BPF_SDT_TRACE_READER"     # "mmap" or "libbpf": force a ring reader (tests, other architectures)


def add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("object", metavar="OBJ", help="object with probes (with --pinned: the instrumented object)")
    sp.add_argument("--probe", action="append", default=[], metavar="GLOB",
                    help="trace only the probes matching GLOB (repeatable; default: all)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.add_argument("--count", action="store_true",
                    help="print hit counts per probe and per site at the end instead of each event")
    sp.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    how = sp.add_argument_group("how to run it (default: attach every program by its section name)")
    how.add_argument("--run", metavar="PROG", help="BPF_PROG_TEST_RUN program PROG on packets (raw_tp: on a context)")
    how.add_argument("--packet", type=Path, metavar="FILE", help="with --run: one packet, raw bytes")
    how.add_argument("--pcap", type=Path, metavar="FILE", help="with --run: every packet of a pcap/pcapng file")
    how.add_argument("--repeat", type=int, default=1, metavar="N", help="with --run: run each packet N times")
    how.add_argument("--xdp", metavar="IFACE", help="attach the XDP program to IFACE")
    how.add_argument("--tc", metavar="IFACE[:DIR]", help="attach the tc program to IFACE, ingress (default) or egress")
    how.add_argument("--prog", metavar="NAME", help="with --xdp/--tc/--live: which program, if the object has several")
    how.add_argument("--live", metavar="WHERE", help="swap an instrumented copy in for the program running at "
                     "WHERE (xdp:IFACE, tc:IFACE[:DIR], id:N, pin:PATH), and the original back at the end "
                     "(docs/live.md)")
    how.add_argument("--pinned", action="store_true",
                     help="OBJ is instrumented and loaded by another loader: read its pinned ring buffer")
    how.add_argument("--pin-dir", type=Path, metavar="DIR", help="with --pinned: where the recorder's maps are "
                     "pinned (default: /sys/fs/bpf if they are pinned there, else found among the loaded maps "
                     "by name and the object's identity)")
    sp.add_argument("--ringbuf-size", type=int, default=DEFAULT_RINGBUF_SIZE, metavar="BYTES",
                    help="the recorder's ring buffer size (power of two, default 4 MiB)")
    _add_kernel_side(sp)


class _Aggregation(argparse.Action):
    """--hist/--lhist/--sum/--min/--max/--avg, kept in the order given (one map each)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        kind = (option_string or "").lstrip("-")
        namespace.aggregations = [*(namespace.aggregations or []), (kind, str(values))]


def _add_kernel_side(sp: argparse.ArgumentParser) -> None:
    """Filters and aggregations the recorder does in the kernel (docs/aggregate.md)."""
    k = add_recorder_arguments(sp)
    k.add_argument("--per-site", action="store_true", help="aggregations per site instead of per probe")
    k.add_argument("--interval", type=float, metavar="S", help="also print the aggregations every S seconds")
    k.add_argument("--prometheus", metavar="[ADDR:]PORT",
                   help="serve hit counts, the recorder's counters and the aggregations in the Prometheus text "
                   "format at http://ADDR:PORT/metrics (ADDR 127.0.0.1 by default; PORT 0: any free port) "
                   "until trace is stopped")


def add_recorder_arguments(sp: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The options compiled into the recorder, for trace and for instrument
    (whose output trace --pinned reads with the same options)."""
    k = sp.add_argument_group("in the kernel (docs/aggregate.md); EXPR is C over arg0..argN-1 and enumerators, "
                              "[PROBE:] limits an option to the probes matching PROBE")
    k.add_argument("--filter", action="append", default=[], metavar="[PROBE:]EXPR",
                   help="record only the firings where EXPR is true (repeatable: all must hold)")
    k.add_argument("--count-by", action="append", default=[], metavar="[PROBE:]KEYS",
                   help="count firings per tuple of key expressions (KEYS: EXPR,EXPR...)")
    for kind, what in (("hist", "power-of-two histogram of EXPR"),
                       ("lhist", "linear histogram: EXPR,MIN,MAX,STEP"),
                       ("sum", "sum of EXPR"), ("min", "minimum of EXPR"), ("max", "maximum of EXPR"),
                       ("avg", "average of EXPR")):
        k.add_argument(f"--{kind}", action=_Aggregation, dest="aggregations", metavar="[PROBE:]EXPR[ by KEYS]",
                       help=f"{what}, per probe (and per KEYS)")
    k.add_argument("--map-entries", type=int, default=None, metavar="N",
                   help="keys each aggregation map holds (default 10240); updates past it are counted")
    return k


def instrument_recorder(args: argparse.Namespace) -> RecorderOptions:
    """instrument's recorder options: its plan when filters or aggregations are given
    (the per-site hits counted too, for trace --pinned --count and --prometheus)."""
    from bpf_sdt.instrument.observers import DEFAULT_MAP_ENTRIES, MAX_MAP_ENTRIES, RecorderOptions

    if not (args.filter or args.count_by or args.aggregations):
        return RecorderOptions(pin_by_name=args.pin_by_name)
    # Only now: the expression parser and the aggregation planner cost an
    # instrument without them some 30 ms of imports.
    from bpf_sdt.elf import load_object
    from bpf_sdt.errors import UsageError

    from .aggregate import recorder_for
    entries = DEFAULT_MAP_ENTRIES if args.map_entries is None else args.map_entries
    if not 1 <= entries <= MAX_MAP_ENTRIES:
        raise UsageError(f"--map-entries {entries}: must be from 1 to {MAX_MAP_ENTRIES}")
    recorder, _ = recorder_for(load_object(args.input), args.probe, args.filter, args.count_by,
                               args.aggregations or (), entries, count_hits=True, pin_by_name=args.pin_by_name)
    return recorder


def _early_worker() -> InstrumentWorker | None:
    """The worker the command's entry point forked for a --live
    (worker.fork_early), if it did: it imported the worker module to, so a
    trace it did not fork for does not import the module (and pickle) here."""
    worker = sys.modules.get("bpf_sdt.trace.worker")
    return None if worker is None else worker.take_early()


def run_trace(args: argparse.Namespace) -> int:
    # --live instruments on the user's interactive path: its worker is forked
    # first (by the command's entry point, before the arguments were parsed,
    # if it saw --live), to import instrument while trace's modules are
    # imported here.
    worker = _early_worker()
    if worker is not None and not args.live:      # "--live" was not the option (an argument's value)
        worker.close()
        worker = None
    if args.live and worker is None:
        from .worker import InstrumentWorker

        worker = InstrumentWorker()
    try:
        from .runner import Options, trace
    except BaseException:
        if worker is not None:
            worker.close()
        raise
    return trace(Options(
        obj=Path(args.object), probes=tuple(args.probe), as_json=args.json, count=args.count,
        duration=args.duration, run=args.run, packet=args.packet, pcap=args.pcap, repeat=args.repeat,
        xdp=args.xdp, tc=args.tc, prog=args.prog, pinned=args.pinned, live=args.live,
        pin_dir=args.pin_dir, ringbuf_size=args.ringbuf_size,
        reader=os.environ.get(READER_ENV) or None, filters=tuple(args.filter), count_by=tuple(args.count_by),
        aggregations=tuple(args.aggregations or ()), per_site=args.per_site, interval=args.interval,
        prometheus=args.prometheus,
        map_entries=args.map_entries), worker=worker)

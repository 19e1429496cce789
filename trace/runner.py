"""`bpf-sdt trace`: instrument an object with the recorder, run it one of four
ways, and print its probes as they fire.

- test runs (``--run PROG``): BPF_PROG_TEST_RUN on each packet, in batches
  that fit the ring buffer, reading the ring after each batch;
- live (``--xdp IFACE`` / ``--tc IFACE[:ingress|egress]``): attach one program;
- auto-attach (no run option): every program libbpf attaches by section name;
- pinned (``--pinned``): an object someone else loaded; only its pinned ring
  buffer is read.

Everything trace attaches is detached, and everything it loads unloaded,
when it ends: normally, at ``--duration``, on SIGINT or SIGTERM, or on an
error (the libbpf layer's context managers).  Its pins live on a private
bpffs that vanishes with the process (:mod:`bpf_sdt.trace.runtime`).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import itertools
import math
import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from errno import EINTR, EINVAL, EOPNOTSUPP
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, InputError, UsageError, escape_text
from bpf_sdt.libbpf import LibbpfError, Link, LoadedObject, LoadedProgram, TcFilter, printing_off, strerror
from bpf_sdt.recorder_abi import RECORDER_COUNTS_MAP, RECORDER_DEFAULT_RINGBUF_SIZE, RECORDER_RINGBUF_MAP

# Imported where used, not here: the instrument stage (only a cache miss
# instruments, in a child), the recorder's planning (Jinja2 and the filter
# grammar: only with --filter or an aggregation), the Prometheus exporter,
# the kernel layer of leftovers and records (only when attaching) and
# pyelftools' ELF reader are a tenth of a second of imports that a cached
# trace --run does not need (docs/cli.md, start-up).  The site table's
# modules (the model, ELF, notes and BTF layers), the decoder's, the ring's
# and the counters' are needed, but not before the copy's load starts: they
# are imported beside the verifier (_session_modules), and the instrument
# worker (pickle) only on a miss.
from . import instcache
from .instcache import Instrumented, Job
from .pcap import MAX_PACKET, iter_packets
from .runtime import STOP_SIGNALS, InBackground, StopSignals, private_bpffs
from .testrun import RAW_TP_TYPE, run_raw_tp
from .writer import Writer

if TYPE_CHECKING:
    from bpf_sdt.instrument.observers import RecorderOptions

    from bpf_sdt.elf import BpfObject as ElfObject

    from .aggregate import Layout, Report
    from .leftovers import RecordedTcFilter
    from .output import Decoder
    from .prometheus import Exporter
    from .recorder import Counters, RecorderMaps
    from .ring import Ring
    from .sites import Site
    from .worker import InstrumentWorker

DEFAULT_PIN_DIR = Path("/sys/fs/bpf")
PROBE_CHECK_S = 1.0             # how often a live trace looks at the lost-event counter
RING_FILL = 0.5                 # a test-run batch may fill this share of the ring buffer
MAX_BATCH = 1 << 18             # repetitions per test run: keeps Ctrl-C prompt
PACKET_TYPES = ("xdp", "sched_cls", "sched_act", "socket_filter")      # test-run on packets
TEST_RUN_TYPES = (*PACKET_TYPES, RAW_TP_TYPE)                           # raw_tp: on a context
TC_TYPES = ("sched_cls", "sched_act")
TC_DIRECTIONS = ("ingress", "egress")
SIGNAL_EXIT = 128               # + the signal number: the shell's convention for a run a signal ended
CLOSED_PIPE_EXIT = SIGNAL_EXIT + signal.SIGPIPE     # stdout's reader left: as if SIGPIPE had ended trace
REFUSED = EINVAL              # the kernel's answer to a packet it will not test-run
# What the kernel answers for a packet it cannot test-run (bad headers; too big
# for a test-run buffer: a 256 KiB XDP frame is ENOMEM): the packet is refused,
# counted, and the others still run.
REFUSED_PACKET = frozenset({EINVAL, errno.ENOMEM, errno.E2BIG, errno.ENOSPC, errno.EMSGSIZE})
BATCH_S = 0.2                   # a test-run batch takes about this long at most: signals wait for it
LOST_REPORT_S = 1.0             # "lost so far" at most this often (and only when it changed)
FINISH_OUTPUT_S = 0.25          # after the end, a slow stdout gets this long for what is queued
FINISH_DRAIN_S = 0.25           # after a live trace ends, the ring is read this long at most
MIN_DURATION_S = 0.001          # shorter than the loop's own pass: not a duration
MAX_REPEAT = (1 << 32) - 1      # the kernel's repeat is a u32
RINGBUF_MIN = 4096              # a page: the kernel's smallest ring buffer
RINGBUF_MAX = 1 << 29           # the largest power of two under the kernel's record limit (UINT_MAX / 4)
INTERRUPT_EVERY_S = 0.005       # how often a verification being stopped is interrupted again
WAIT_POLL_S = 0.05              # how often the main thread looks at the stop flag while waiting
INTERRUPT_SIGNAL = signal.SIGURG    # sent to the loading thread to cut a verification short (ignored by default)


class Options(NamedTuple):
    obj: Path
    probes: tuple[str, ...] = ()
    as_json: bool = False
    count: bool = False  # type: ignore[assignment]  # --count, which shadows tuple.count
    duration: float | None = None
    run: str | None = None
    packet: Path | None = None
    pcap: Path | None = None
    repeat: int = 1
    xdp: str | None = None
    tc: str | None = None               # IFACE[:ingress|egress]
    prog: str | None = None             # which program --xdp/--tc attach
    pinned: bool = False
    live: str | None = None             # WHERE: xdp:IFACE, tc:IFACE[:DIR], id:N, pin:PATH (trace/live.py)
    pin_dir: Path | None = None         # None: DEFAULT_PIN_DIR if pinned there, else found among loaded maps
    ringbuf_size: int = RECORDER_DEFAULT_RINGBUF_SIZE
    reader: str | None = None           # ring reader, "mmap" or "libbpf" (default: per architecture)
    filters: tuple[str, ...] = ()       # --filter [PROBE:]EXPR (trace/filters.py)
    count_by: tuple[str, ...] = ()      # --count-by [PROBE:]KEYS (trace/aggregate.py)
    aggregations: tuple[tuple[str, str], ...] = ()   # (hist|lhist|sum|min|max|avg, [PROBE:]EXPR[ by KEYS])
    per_site: bool = False
    map_entries: int | None = None      # --map-entries; None: the recorder's default (DEFAULT_MAP_ENTRIES)
    interval: float | None = None       # print the aggregations every S seconds too
    prometheus: str | None = None       # --prometheus [ADDR:]PORT (trace/prometheus.py)


def trace(opts: Options, out: TextIO | None = None, err: TextIO | None = None,
          worker: InstrumentWorker | None = None) -> int:
    """Runs `bpf-sdt trace`; the exit code.  SIGINT/SIGTERM only set a flag
    from the start, so whenever one comes, everything set up so far is
    released on the way out.  ``worker``: an instrument worker forked
    early (trace/worker.py), closed here whatever happens."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        _check_options(opts)
    except BaseException:
        if worker is not None:
            worker.close()
        raise
    writer = Writer(out)
    signals: list[StopSignals] = []
    try:
        code = _run(opts, writer, out, err, signals, worker)
    finally:
        if worker is not None:
            worker.close()
        writer.close(time.monotonic() + FINISH_OUTPUT_S)
        if line := writer.not_written_line():
            err.write(line)
    # a reader that left ends trace as it ends every command (docs/cli.md): quietly, 128 + SIGPIPE
    code = CLOSED_PIPE_EXIT if writer.closed else code
    if signals and signals[0].signal is not None and signals[0].exit_at_once:
        _exit_now(code, out, err)
    return code


def _exit_now(code: int, out: TextIO, err: TextIO) -> None:
    """Ends the process: a stop signal asked for it, and everything trace held
    is released by now (programs detached, maps closed, temporaries gone).
    Python's own finalization, a quarter of a second of module teardown on a
    busy machine, would only delay the exit the signal asked for."""
    for stream in (out, err, sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _run(opts: Options, writer: Writer, out: TextIO, err: TextIO, signals: list[StopSignals],
         worker: InstrumentWorker | None = None) -> int:
    """trace() with its output writer; the StopSignals used is put in ``signals``."""
    with StopSignals() as stop:
        signals.append(stop)
        if opts.pinned:
            return _trace_pinned(opts, stop, writer, err)
        if opts.live:
            from .live import trace_live
            from .worker import InstrumentWorker

            live = trace_live(opts, stop, writer, err, worker or InstrumentWorker())
            return SIGNAL_EXIT + (stop.signal or 0) if live is None else live
        code = _trace_loaded(opts, stop, writer, err)
        if code is None:                    # a signal ended the work before it was done
            return SIGNAL_EXIT + (stop.signal or 0)
        return code


def _trace_loaded(opts: Options, stop: StopSignals, out: Writer, err: TextIO) -> int | None:
    """Instrument (or take the cached copy), load, run; None when a signal
    cut the work short."""
    packets = _packets(opts)
    iface, direction = _interface(opts)
    try:
        session = _load_and_run(opts, packets, iface, direction, stop, out, err)
    except _DamagedEntry:
        # The cached site table, decoded while the copy loaded, is not one the
        # cache wrote: a miss after all, instrumented as any miss is (the
        # copy loaded meanwhile never ran, and is closed).
        session = _load_and_run(opts, packets, iface, direction, stop, out, err, use_cache=False)
    if session is None:
        return None
    if opts.run and stop.requested and not session.runs_complete:      # test runs cut short: not a result
        return None
    if session.refused:
        err.write(f"bpf-sdt trace: the kernel refused {session.refused} of {session.packets} test runs\n")
        return EXIT_FINDINGS
    return EXIT_OK


class _DamagedEntry(Exception):
    """A cache entry whose site table does not decode, found once its copy
    is loading: trace instruments instead (never seen outside this module)."""


def _load_and_run(opts: Options, packets: Iterator[bytes | None], iface: str | None, direction: str,
                  stop: StopSignals, out: Writer, err: TextIO, use_cache: bool = True) -> _Session | None:
    """_trace_loaded's work, in a temporary directory of its own; the
    finished session, or None when a signal came first.  The site table
    (a cache hit's is decoded only then) and the session's modules come
    while the kernel verifies the copy."""
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-trace-") as tmp:
        inst = Path(tmp) / "instrumented.bpf.o"
        layout = _layout(opts)
        copy = instrumented_copy(opts, _traced_programs(opts), inst, stop, defer_sites=True, use_cache=use_cache)
        if copy is None or stop.requested:
            return None
        made: list[Instrumented] = []

        def meanwhile() -> None:
            made.append(copy.result())      # a miss: its site table read and its entry stored
            _import_session_modules()

        with private_bpffs(Path(tmp) / "pins") as pins:
            loaded = _load_copy(inst, pins, opts, stop, meanwhile, copy)
            if loaded is None:
                return None
            bpf, prog = loaded
            with bpf, _writing_core_btf(copy, stop):
                if stop.requested:
                    return None
                from .output import Decoder
                from .recorder import Counters
                from .ring import open_ring

                sites = made[0].sites
                shown = {site_id for site_id, _ in copy.shown}
                ring_map = bpf.find_map(RECORDER_RINGBUF_MAP)
                decoder = Decoder(sites, as_json=opts.as_json, count_only=opts.count, shown=shown,
                                  t0_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC), err=err)
                with _Session(open_ring(ring_map.fd, ring_map.max_entries, opts.reader), decoder,
                              Counters(bpf.find_map(RECORDER_COUNTS_MAP)), stop, out, err) as session:
                    open_outputs(session, bpf, layout, sites, shown, opts, err)
                    if opts.run:
                        assert prog is not None
                        session.test_runs(prog, packets, opts.repeat, opts.duration)
                        if session.exporter is not None and not stop.requested:    # runs done: serve until stopped
                            session.runs_complete = True
                            session.ready(sites, shown, f"the finished test runs of {prog.name}")
                            session.follow(opts.duration)
                    else:
                        links = _attach(bpf, prog, iface, direction, opts, err)
                        session.ready(sites, shown, ", ".join(what for what, _ in links))
                        session.follow(opts.duration)
                        for _, link in reversed(links):     # no new events from here on
                            link.destroy()
                    session.finish(opts.count)
    return session


@contextlib.contextmanager
def _writing_core_btf(copy: InstrumentedCopy, stop: StopSignals) -> Iterator[None]:
    """A cache entry without a cut-down kernel BTF for this kernel gets one
    written beside the session (bpftool on the other core), so that the
    next trace of it loads without reading the kernel's whole BTF; waited
    for once the session is over, ended at once if it does not end so."""
    writer = instcache.CoreBtfWriter.start(copy.entry_path) \
        if copy.entry_path is not None and not copy.core_btf_known else None
    try:
        yield
    except BaseException:
        if writer is not None:
            writer.cancel()
        raise
    if writer is not None:
        writer.finish(lambda: stop.requested)


def _import_session_modules() -> None:
    """What a session imports where it is used (the decoder, the ring
    reader, the counters and, through them, the site table's modules),
    imported while the kernel verifies the copy (docs/trace.md, "Start-up")."""
    from . import output, recorder, ring  # noqa: F401


def _load_copy(inst: Path, pins: Path, opts: Options, stop: StopSignals, meanwhile: Callable[[], None],
               copy: InstrumentedCopy | None = None) -> tuple[LoadedObject, LoadedProgram | None] | None:
    """The instrumented copy opened and loaded, and the program to run or
    attach; the caller closes it.  None when a stop signal came first
    (nothing is left open).  ``meanwhile`` runs beside the verification,
    which is therefore quiet (libbpf's messages would each wait for the GIL
    the work here holds); should that load fail, a fresh open is loaded
    again with its log, for the reason the error gives.  ``copy``'s
    cut-down kernel BTF (its cache entry's, bpf_sdt.core_btf), if it has
    one, is what its CO-RE relocations are resolved against, else the
    kernel's BTF; the load again is against the kernel's, and a cut-down BTF
    that failed where the kernel's loads (damaged since it was written) is
    removed, for the session to write anew (_writing_core_btf)."""
    core_btf = copy.core_btf if copy is not None else None
    bpf = LoadedObject.open(inst, pin_root_path=pins, core_btf=core_btf)
    try:
        prog = _choose_program(bpf, opts)
        try:
            loaded = _load_interruptibly(bpf, stop, meanwhile, quiet=True)
        except LibbpfError:
            if stop.requested:
                raise
            bpf.close()
            bpf = LoadedObject.open(inst, pin_root_path=pins)
            prog = _choose_program(bpf, opts)
            loaded = _load_interruptibly(bpf, stop)
            if loaded and copy is not None and core_btf is not None:
                instcache.forget_core_btf(core_btf)
                copy.core_btf, copy.core_btf_known = None, False
    except BaseException:
        bpf.close()
        raise
    if not loaded:
        bpf.close()
        return None
    return bpf, prog


def open_outputs(session: _Session, bpf: LoadedObject, layout: Layout | None, sites: list[Site], shown: set[int],
                 opts: Options, err: TextIO) -> None:
    """What a session shows besides events: the in-kernel aggregations'
    report, the recorder's counters and the Prometheus exporter (every way
    of running that loads a recorder: test runs, attach, --live).  No
    layout: nothing is aggregated (_layout)."""
    if layout is not None:
        from .aggregate import open_report

        session.report = open_report(bpf.find_map, layout, sites, per_site=opts.per_site,
                                     as_json=opts.as_json, interval=opts.interval, now=time.monotonic())
    session.summarise = bool(opts.filters) or session.report is not None
    if opts.prometheus is not None:
        from .prometheus import start_exporter

        session.exporter = start_exporter(opts.prometheus, sites, shown, session.decoder.hits,
                                          session.counters.read, session.report, err)


def _kernel_side(opts: Options) -> bool:
    """Does the recorder filter or aggregate (else it only writes events)?"""
    return bool(opts.filters or opts.count_by or opts.aggregations)


def _layout(opts: Options) -> Layout | None:
    """How to read the recorder's aggregation maps; None when nothing is
    filtered or aggregated (then there are none, and the recorder's plan,
    a parse of OBJ, is made only if instrument runs)."""
    return _recorder_plan(opts)[1] if _kernel_side(opts) else None


def cache_job(opts: Options, programs: tuple[str, ...]) -> Job:
    """The instrumented object these options ask for, as the cache keys it:
    the recorder's options as given (the plan is made from them and OBJ,
    both part of the key)."""
    recorder = (list(opts.filters), list(opts.count_by), [list(a) for a in opts.aggregations], opts.map_entries,
                _counts_hits(opts))
    return Job(opts.obj, opts.probes, programs, opts.ringbuf_size, recorder)


class InstrumentedCopy:
    """OBJ instrumented at its path, as instrument left it: the sites it
    instrumented (``shown``) and whether it came from the cache.  On a miss
    the site table still has to be read and the cache entry written (and a
    hit's deferred site table decoded): by :meth:`finish`, which may run in
    a thread beside the copy's load (the verifier holds no GIL), and
    :meth:`result` waits for it."""

    def __init__(self, shown: list[tuple[int, str]], cached: bool, made: Instrumented | None = None,
                 finish: Callable[[], Instrumented] | None = None, entry: instcache.Entry | None = None) -> None:
        self.shown = shown
        self.cached = cached
        # The cache entry (a miss's once finished) and the cut-down kernel BTF
        # to load the copy with (instcache.core_btf_of): none, or not yet written.
        self.entry_path = entry.path if entry is not None else None
        self.core_btf = entry.core_btf if entry is not None else None
        self.core_btf_known = entry.core_btf_known if entry is not None else True
        self._made = made
        self._finish = finish
        self._background: InBackground[Instrumented] | None = None

    def finish(self) -> None:
        if self._finish is not None and self._made is None:
            self._made = self._finish()

    def finish_in_background(self) -> None:
        if self._finish is not None and self._made is None and self._background is None:
            self._background = InBackground(self._finish)

    def wait(self) -> None:
        """For the work in the background to end (it reads the copy's file)."""
        if self._background is not None:
            self._background.wait()

    def result(self) -> Instrumented:
        """The sites and the site table; the site table's one-line error is raised here."""
        if self._background is not None:
            background, self._background = self._background, None
            self._made = background.result()
        self.finish()
        assert self._made is not None
        return self._made


def instrumented_copy(opts: Options, programs: tuple[str, ...], output: Path, stop: StopSignals,
                      meanwhile: Callable[[], None] | None = None, worker: InstrumentWorker | None = None,
                      reap_later: bool = False, beside_load: bool = False, defer_sites: bool = False,
                      use_cache: bool = True) -> InstrumentedCopy | None:
    """OBJ instrumented with the recorder at ``output`` (only ``programs``'
    sites, () all); None when a stop signal came first.  A miss instruments
    in a child process while a thread here reads OBJ's sites and lines (its
    site table's indexes).  ``meanwhile`` runs once the work is under way
    (the child started, or the entry found): --live's identity load then
    does not compete with the fork for the core, and no thread runs when
    the process forks.  ``worker``: one forked earlier (--live forks it
    first thing); else one is forked here.  The caller closes a worker it
    passed; ``reap_later``: it does so once the copy is loaded, and the
    worker writes the recorder cache's entries meanwhile (worker.run).
    ``beside_load``: the caller finishes the copy in the background while
    it loads it, and OBJ is read then too, not while the child works: the
    child's path is the one waited for, and clang shares the other core.
    ``defer_sites``: a hit's site table is decoded by :meth:`InstrumentedCopy.finish`
    (beside the load), which raises _DamagedEntry if it is not one; else
    now, and one that is not one is a miss.  ``use_cache`` false: not looked up."""
    job = cache_job(opts, programs)
    entry = instcache.fetch_entry(job, output) if use_cache else None
    cached = None if entry is None or defer_sites else entry.decode()
    if entry is not None and (defer_sites or cached is not None):
        if worker is not None:
            worker.close()          # not needed: its imports would compete with the identity proof and the load
        if meanwhile is not None:
            meanwhile()
        if cached is not None:
            return InstrumentedCopy(entry.shown, True, cached, entry=entry)
        return InstrumentedCopy(entry.shown, True, finish=lambda: _decoded_sites(entry), entry=entry)
    plan = _recorder_plan(opts)[0] if _kernel_side(opts) else None     # the child would make the same
    parsed: list[InBackground[ElfObject]] = []

    def start() -> None:
        if not beside_load:
            parsed.append(InBackground(_with_site_table, opts.obj))
        if meanwhile is not None:
            meanwhile()

    if worker is None:
        from .worker import InstrumentWorker

        worker, reap_later = InstrumentWorker(), False
    shown = worker.run(job, output, plan, stop, start, reap_later)
    if shown is None:
        return None

    def finish() -> Instrumented:
        from bpf_sdt.elf import load_object

        shown_obj = parsed[0].result() if parsed else _with_site_table(opts.obj)
        sites = _site_table(load_object(output), shown_obj)
        if any(site_id >= len(sites) or sites[site_id].probe != probe for site_id, probe in shown):
            raise InputError(f"{opts.obj}: instrument's site ids do not match the object's notes")
        made = Instrumented(shown, sites)
        copy.entry_path = instcache.store(job, output, made)
        copy.core_btf_known = copy.entry_path is None
        return made

    copy = InstrumentedCopy(shown, False, finish=finish)
    return copy


def _decoded_sites(entry: instcache.Entry) -> Instrumented:
    made = entry.decode()
    if made is None:
        raise _DamagedEntry(f"{entry.path}: not a site table")
    return made


def _with_site_table(path: Path) -> ElfObject:
    """OBJ parsed, its notes decoded and its function and line indexes
    built (kept on the object: the instrumented object's table takes its
    sites' functions and lines from it).  Not its DWARF: the chains come
    from the instrumented object (trace.sites.site_table)."""
    from bpf_sdt.elf import load_object
    from bpf_sdt.sites import site_table as table_of

    obj = load_object(path)
    table = table_of(obj)
    table.functions  # noqa: B018  built now, beside the worker
    if table.entries:
        table.location(table.entries[0])     # the .BTF.ext parse and its first section's index
    return obj


def _traced_programs(opts: Options) -> tuple[str, ...]:
    """The programs whose sites trace instruments: the one it runs or attaches
    when named, so that a site in an unrelated program, which instrument
    could not place, does not refuse the trace; () is every program."""
    named = opts.run or ((opts.xdp or opts.tc) and opts.prog)
    return (named,) if named else ()


def _recorder_plan(opts: Options, obj: ElfObject | None = None) -> tuple[RecorderOptions, Layout]:
    """Filters and aggregations of the traced probes, as the recorder's plan."""
    from bpf_sdt.instrument.observers import DEFAULT_MAP_ENTRIES

    from bpf_sdt.elf import load_object

    from .aggregate import recorder_for

    entries = DEFAULT_MAP_ENTRIES if opts.map_entries is None else opts.map_entries
    return recorder_for(obj or load_object(opts.obj), opts.probes, opts.filters, opts.count_by, opts.aggregations,
                        entries, count_hits=_counts_hits(opts))


def _counts_hits(opts: Options) -> bool:
    """Does the recorder count hits per site?  --pinned reads a recorder
    `instrument` built, which always does."""
    return opts.pinned or opts.count or opts.prometheus is not None


# --- options ---------------------------------------------------------------------


def _check_options(opts: Options) -> None:
    modes = [m for m, on in (("--run", opts.run), ("--xdp", opts.xdp), ("--tc", opts.tc), ("--live", opts.live),
                             ("--pinned", opts.pinned)) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)}: choose one way to run the object")
    if opts.packet is not None and opts.pcap is not None:
        raise UsageError("--packet and --pcap: choose one")
    _check_kernel_side(opts)
    if not opts.run and (opts.packet or opts.pcap or opts.repeat != 1):
        raise UsageError("--packet, --pcap and --repeat go with --run")
    if opts.prog and not (opts.xdp or opts.tc or opts.live):
        raise UsageError("--prog goes with --xdp, --tc or --live (--run names its program itself)")
    if not 1 <= opts.repeat <= MAX_REPEAT:
        raise UsageError(f"--repeat {opts.repeat}: must be between 1 and {MAX_REPEAT}")
    if opts.duration is not None and not (math.isfinite(opts.duration) and opts.duration >= MIN_DURATION_S):
        raise UsageError(f"--duration {opts.duration}: must be a number of seconds, at least {MIN_DURATION_S}")
    size = opts.ringbuf_size
    if size & (size - 1) or not RINGBUF_MIN <= size <= RINGBUF_MAX:
        raise UsageError(f"--ringbuf-size {size}: must be a power of two from {RINGBUF_MIN} to {RINGBUF_MAX}")
    for option, value in (("--xdp", opts.xdp), ("--tc", opts.tc), ("--run", opts.run), ("--prog", opts.prog)):
        if value is not None and not value.strip():
            raise UsageError(f"{option} {value!r}: names nothing")
    if opts.tc is not None and ":" in opts.tc:
        name, _, direction = opts.tc.rpartition(":")
        if direction not in TC_DIRECTIONS or not name:
            raise UsageError(f"--tc {escape_text(opts.tc)}: IFACE or IFACE:DIR, DIR exactly ingress or egress")
    if opts.reader not in (None, "mmap", "libbpf"):
        raise UsageError(f"ring reader {opts.reader!r}: mmap or libbpf")
    if opts.pin_dir is not None and not opts.pinned:
        raise UsageError("--pin-dir goes with --pinned")


def _check_kernel_side(opts: Options) -> None:
    """Filters, aggregations and the exporter: what goes with what (docs/aggregate.md)."""
    if (opts.per_site or opts.interval is not None) and not (opts.count_by or opts.aggregations):
        raise UsageError("--per-site and --interval go with an aggregation (--count-by, --hist, ...)")
    if opts.interval is not None and not (math.isfinite(opts.interval) and opts.interval >= MIN_DURATION_S):
        raise UsageError(f"--interval {opts.interval}: must be a number of seconds, at least {MIN_DURATION_S}")
    if opts.map_entries is not None:
        from bpf_sdt.instrument.observers import MAX_MAP_ENTRIES

        if not 1 <= opts.map_entries <= MAX_MAP_ENTRIES:
            raise UsageError(f"--map-entries {opts.map_entries}: must be from 1 to {MAX_MAP_ENTRIES}")
    if opts.prometheus is not None:
        from .prometheus import parse_listen

        parse_listen(opts.prometheus)


def _packets(opts: Options) -> Iterator[bytes | None]:
    """The packets of --packet/--pcap, or one packet-less run for raw_tp
    programs.  A capture is streamed: its header and first packet are read
    now, before anything loads; a record broken further on ends the runs
    there (with the runs before it printed)."""
    if opts.pcap is not None:
        packets = iter_packets(opts.pcap)
        first = next(packets, None)
        if first is None:
            raise InputError(f"{opts.pcap}: the capture holds no packets")
        return itertools.chain([first], packets)
    if opts.packet is None:
        return iter([None])
    from bpf_sdt.fsutil import read_regular

    data = read_regular(str(opts.packet), MAX_PACKET, "packet")
    if not data:
        raise InputError(f"{opts.packet}: empty packet")
    return iter([data])


def _interface(opts: Options) -> tuple[str | None, str]:
    """The interface and tc direction of --xdp/--tc; it must exist now."""
    spec, direction = opts.xdp or opts.tc, "ingress"
    if spec is None:
        return None, direction
    if opts.tc and ":" in spec:         # checked up front: IFACE:ingress or IFACE:egress exactly
        spec, _, direction = spec.rpartition(":")
    import socket  # only --xdp and --tc name an interface

    try:
        socket.if_nametoindex(spec)
    except OSError:
        raise UsageError(f"interface {escape_text(spec)}: no such device in this network namespace") from None
    return spec, direction


def _choose_program(bpf: LoadedObject, opts: Options) -> LoadedProgram | None:
    """The program --run, --xdp or --tc works on (checked before loading)."""
    if opts.run:
        prog = _program(bpf, opts.run, TEST_RUN_TYPES, opts.obj, "--run")
        wants_packets = prog.type in PACKET_TYPES
        if wants_packets != (opts.packet is not None or opts.pcap is not None):
            raise UsageError(f"--run {escape_text(prog.name)}: a {prog.type} program runs "
                             + ("on --packet FILE or --pcap FILE" if wants_packets else "without packets"))
        return prog
    if opts.xdp:
        return _program(bpf, opts.prog, ("xdp",), opts.obj, "--xdp")
    if opts.tc:
        return _program(bpf, opts.prog, TC_TYPES, opts.obj, "--tc")
    return None


def _program(bpf: LoadedObject, name: str | None, types: Sequence[str], obj: Path, option: str) -> LoadedProgram:
    have = ", ".join(f"{p.name} ({p.type})" for p in bpf.programs) or "none"
    if name is not None:
        prog = next((p for p in bpf.programs if p.name == name), None)
        if prog is None:
            raise UsageError(f"{obj}: no program {escape_text(name)!r} (programs: {escape_text(have)})")
        if prog.type not in types:
            raise UsageError(f"{option}: program {escape_text(name)!r} is {prog.type}, not {' or '.join(types)}")
        return prog
    fitting = [p for p in bpf.programs if p.type in types]
    if len(fitting) != 1:
        what = "no" if not fitting else "several"
        raise UsageError(f"{option}: {obj} has {what} {' or '.join(types)} programs (programs: {escape_text(have)}); "
                         "name one with --prog")
    return fitting[0]


def _attach(bpf: LoadedObject, prog: LoadedProgram | None, iface: str | None, direction: str,
            opts: Options, err: TextIO) -> list[tuple[str, Link | TcFilter | RecordedTcFilter]]:
    """Attach as asked; (description, attachment) of each.  A tc filter is
    recorded in bpffs first (trace/leftovers.py): a SIGKILL leaves it
    findable for `bpf-sdt restore`; links end with the process anyway."""
    from .leftovers import attach_tc, report_stale  # the kernel layer: only when attaching

    report_stale(err)
    if prog is not None and iface is not None:
        if opts.xdp:
            return [(f"{prog.name} on {iface} (XDP)", prog.attach_xdp(iface))]
        return [(f"{prog.name} on {iface} (tc {direction})", attach_tc(prog, iface, direction, err, bpf.path))]
    links: list[tuple[str, Link | TcFilter | RecordedTcFilter]] = []
    skipped = []
    for p in bpf.programs:
        try:
            links.append((f"{p.name} ({p.section})", p.attach()))
        except LibbpfError as e:
            if e.errno != EOPNOTSUPP:
                raise
            skipped.append(f"{p.name} ({p.section})")
    if not links:
        raise UsageError(f"{opts.obj}: no program attaches by its section name ({escape_text(', '.join(skipped))}); "
                         "use --run PROG, --xdp IFACE or --tc IFACE")
    return links


# --- the session: ring, decoder, output ---------------------------------------------


class _Session:
    """One ring buffer read into one decoder, until the work is done or stopped."""

    def __init__(self, ring: Ring, decoder: Decoder, counters: Counters, stop: StopSignals, out: Writer | TextIO,
                 err: TextIO) -> None:
        self.ring, self.decoder, self.counters, self.stop, self.out, self.err = ring, decoder, counters, stop, out, err
        self.refused = 0            # test runs the kernel refused (REFUSED_PACKET)
        self.report: Report | None = None       # in-kernel aggregations, when asked for
        self.summarise = False                  # print the recorder's counters at the end
        self.exporter: Exporter | None = None   # --prometheus
        self.runs_complete = False              # every test run done (then a signal ends the serving)
        self.packets = 0            # packets test-run (or refused)
        self._own_writer = not isinstance(out, Writer)      # a stream given: written through a Writer of ours
        self._drain_until: float | None = None              # set when a live trace ends: reading stops then
        self.unread = 0                                     # events skipped, undecoded, after that
        self._reader_wait: tuple[bool, float | None] = (False, None)  # test runs: wait for stdout, until
        self.writer = out if isinstance(out, Writer) else Writer(out)
        self.out = self.writer                              # every line goes through it, in order

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exporter is not None:
            self.exporter.close()
        self.ring.close()
        if self.unread:
            self.err.write(f"bpf-sdt trace: {self.unread} events left unread in the ring buffer (reading stops "
                           f"{FINISH_DRAIN_S} s after the end)\n")
        if self._own_writer:
            self.writer.close(time.monotonic() + FINISH_OUTPUT_S)
            if line := self.writer.not_written_line():
                self.err.write(line)

    def drain(self, until_empty: bool = True) -> int:
        """Reads the ring into the output: one budget of records (the live
        loop, which looks at signals and output between), or until the ring
        is empty, at most one ring's worth (a producer that keeps writing
        cannot hold it), and once a live trace has ended, for at most
        FINISH_DRAIN_S (what is still unread then is not waited for).  The
        lines of each budget are handed to the writer before the next is
        read, so memory does not grow with the rate."""
        total = 0
        while True:
            if self._drain_until is not None and time.monotonic() >= self._drain_until:
                self._skip_unread()
                return total
            used = self.ring.drain(self.decoder.sample)
            self.decoder.flush(self.writer)
            total += used
            if self._reader_wait[0]:
                self._wait_for_reader(self._reader_wait[1])
            if not until_empty or not used or total >= self.ring.size:
                return total

    def _wait_for_reader(self, deadline: float | None, most_pending: int | None = None) -> None:
        """Test runs wait for a slow stdout instead of dropping its lines:
        while more than ``most_pending`` bytes (default: half the output
        queue) are queued, until the reader takes them, a stop signal, or the
        --duration deadline (then what is left is dropped and counted, as in
        live modes, where the ring cannot wait)."""
        writer = self.writer
        most = writer.limit // 2 if most_pending is None else most_pending
        while writer.pending > most and not writer.closed and not self.stop.requested:
            timeout = WAIT_POLL_S if deadline is None else min(WAIT_POLL_S, deadline - time.monotonic())
            if timeout <= 0:
                return
            select.select([self.stop.fd], [writer.fd], [], timeout)
            writer.pump()

    def _skip_unread(self) -> None:
        """Counts (and consumes, undecoded) what the ring still holds once
        reading has stopped, so that read + not written + unread + lost still
        adds up to what was produced (said on stderr at the end)."""
        self.unread += self.ring.skip()

    def ready(self, sites: list[Site], shown: set[int], what: str) -> None:
        probes = {sites[i].probe for i in shown}
        self.err.write(f"bpf-sdt trace: tracing {len(shown)} site{'s' if len(shown) != 1 else ''} of "
                       f"{len(probes)} probe{'s' if len(probes) != 1 else ''} in {escape_text(what)}; "
                       "Ctrl-C to stop\n")
        self.err.flush()

    def follow(self, duration: float | None) -> None:
        """Reads events as they come until the duration ends or a signal asks to stop."""
        deadline = None if duration is None else time.monotonic() + duration
        next_lost_check = time.monotonic() + LOST_REPORT_S
        readable = [self.ring.fd, self.stop.fd]
        while not self.stop.requested and not self.writer.closed:
            now = time.monotonic()
            timeout = min(PROBE_CHECK_S, max(0.0, next_lost_check - now))
            if deadline is not None:
                if now >= deadline:
                    break
                timeout = min(timeout, deadline - now)
            writable = [self.writer.fd] if self.writer.pending and self.writer.fd >= 0 else []
            _, ready, _ = select.select(readable, writable, [], timeout)
            if ready:
                self.writer.pump()
            self.stop.drain()
            self.drain(until_empty=False)
            if time.monotonic() >= next_lost_check:
                self._lost_so_far()
                next_lost_check = time.monotonic() + LOST_REPORT_S
            if self.report is not None and self.report.due(time.monotonic()):
                self.print_aggregations()
        self._drain_until = time.monotonic() + FINISH_DRAIN_S

    def _lost_so_far(self) -> None:
        lost = self.counters.since_start().lost
        if lost > self.counters.reported_lost:
            self.err.write(f"bpf-sdt trace: {lost} events lost so far (ring buffer full)\n")
            self.counters.reported_lost = lost

    def test_runs(self, prog: LoadedProgram, packets: Iterator[bytes | None], repeat: int,
                  duration: float | None) -> None:
        """Each packet `repeat` times; its events, then one line with the result.
        The first run of a packet measures how much ring buffer one run fills
        and how long it takes; the rest go in batches that fill at most
        RING_FILL of the ring and take about BATCH_S (signals wait for a batch)."""
        deadline = None if duration is None else time.monotonic() + duration
        self._reader_wait = (True, deadline)     # nothing is lost by waiting: the runs are ours to pace
        for number, packet in enumerate(packets, 1):
            if self._stopping(deadline):
                break
            self.packets = number
            before = self.decoder.events
            done, retval, total_ns, batch = 0, 0, 0, 1
            while done < repeat and not self._stopping(deadline):
                n = min(batch, repeat - done)
                started = time.monotonic_ns()
                try:
                    with self.stop.deferred():
                        res = prog.test_run(packet, repeat=n) if packet is not None else run_raw_tp(prog, n)
                except LibbpfError as e:
                    if e.errno == EINTR and self.stop.requested:
                        break
                    if e.errno not in REFUSED_PACKET or done or packet is None:
                        raise
                    self.refused += 1
                    self.decoder.refused_line(number, prog.name, len(packet), strerror(e.errno))
                    break
                used = self.drain()
                done, retval, total_ns = done + n, res.retval, total_ns + res.duration_ns * n
                batch = self._batch(used / n, (time.monotonic_ns() - started) / n)
                if self.report is not None and self.report.due(time.monotonic()):
                    self.print_aggregations()           # --interval: between batches too
            if not done:                    # refused (its line is queued) or stopped before running
                self.decoder.flush(self.writer)
                continue
            self.decoder.run_line(number, prog.name, prog.type, retval, done, self.decoder.events - before,
                                  total_ns // done)
            self.decoder.flush(self.out)
        self._wait_for_reader(deadline, most_pending=0)        # all of it, while signals are still ours

    def _batch(self, ring_per_run: float, ns_per_run: float) -> int:
        """Runs in the next batch: at most RING_FILL of the ring, about BATCH_S
        of wall time (the kernel's own figure leaves out the per-call cost,
        which is most of a raw_tp run: one call per run)."""
        by_ring = MAX_BATCH if not ring_per_run else int(self.ring.size * RING_FILL / ring_per_run)
        by_time = MAX_BATCH if not ns_per_run else int(BATCH_S * 1e9 / ns_per_run)
        return max(1, min(MAX_BATCH, by_ring, by_time))

    def _stopping(self, deadline: float | None) -> bool:
        return (self.stop.requested or self.writer.closed
                or (deadline is not None and time.monotonic() >= deadline))

    def finish(self, count: bool) -> None:
        """After the last event: what is left in the ring, counts, losses."""
        self.drain()
        if count:
            if self.report is not None and self.report.layout.counts_hits:    # aggregating: no ring events
                for site, n in self.report.hits().items():
                    if site < len(self.decoder.hits):
                        self.decoder.hits[site] = n
            self.decoder.counts()
        counted = self.counters.since_start()
        self.drain()        # what was submitted before the counters were read is in the ring now
        if counted.lost:
            self.decoder.lost_line(counted.lost)
        taken = counted.submitted - self.decoder.events - self.decoder.foreign - self.unread
        if taken > 0:
            self.decoder.taken_line(taken)
        if self.decoder.foreign:
            self.err.write(f"bpf-sdt trace: {self.decoder.foreign} events did not match the object's sites\n")
        if self.report is not None:
            self.print_aggregations()
        if self.summarise:
            from .aggregate import counters_line

            self.decoder.note_line(counters_line(counted, self.decoder.as_json))
        if counted.overflow:
            self.err.write(f"bpf-sdt trace: {counted.overflow} aggregation updates found their map full "
                           "(raise --map-entries)\n")
        self.decoder.flush(self.out)

    def print_aggregations(self) -> None:
        assert self.report is not None
        for line in self.report.lines():
            self.decoder.note_line(line)
        self.decoder.flush(self.out)


# --- --pinned ----------------------------------------------------------------------------


def _trace_pinned(opts: Options, stop: StopSignals, out: Writer, err: TextIO) -> int:
    from bpf_sdt.elf import load_object
    from bpf_sdt.recorder_abi import RECORDER_PREFIX

    from .aggregate import open_report
    from .output import Decoder
    from .prometheus import start_exporter
    from .recorder import Counters
    from .ring import open_ring

    obj = load_object(opts.obj)
    if not any(s.name.startswith(RECORDER_PREFIX) for s in obj.symbols):
        raise UsageError(f"{opts.obj}: has no recorder; --pinned reads an object instrumented by "
                         "`bpf-sdt instrument` without --observer (or with --record)")
    sites = _site_table(obj)
    probes = sorted({s.probe for s in sites})
    for glob in opts.probes:
        if not any(fnmatch.fnmatchcase(p, glob) for p in probes):
            raise UsageError(f"--probe {glob}: matches no probe; the object has: {', '.join(probes)}")
    shown = {s.site_id for s in sites
             if not opts.probes or any(fnmatch.fnmatchcase(s.probe, g) for g in opts.probes)}
    _, layout = _recorder_plan(opts, obj)      # what `instrument` was given: checked through the identity
    maps = _recorder_maps(opts, obj)
    try:
        decoder = Decoder(sites, as_json=opts.as_json, count_only=opts.count, shown=shown,
                          t0_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC), err=err)
        counters = Counters(maps.counts)
        if counters.base.lost:
            err.write(f"bpf-sdt trace: {counters.base.lost} events were lost before trace started "
                      "(ring buffer full)\n")
        with _Session(open_ring(maps.ring.fd, maps.ring.max_entries, opts.reader), decoder, counters, stop,
                      out, err) as session:
            session.report = open_report(maps.find, layout, sites, per_site=opts.per_site, as_json=opts.as_json,
                                         interval=opts.interval, now=time.monotonic())
            session.summarise = bool(opts.filters) or session.report is not None
            session.exporter = start_exporter(opts.prometheus, sites, shown, decoder.hits, counters.read,
                                              session.report, err)
            session.ready(sites, shown, maps.where)
            session.follow(opts.duration)
            session.finish(opts.count)
    finally:
        maps.close()
    return EXIT_OK


def _recorder_maps(opts: Options, obj: ElfObject) -> RecorderMaps:
    """OBJ's recorder: pinned in --pin-dir; without it, pinned in /sys/fs/bpf or
    else found among the kernel's loaded maps.  Its identity must be OBJ's."""
    from .recorder import find_loaded, open_pinned
    from .sites import recorder_identity

    identity = recorder_identity(obj, _recorder_plan(opts, obj)[0].plan_id)
    if opts.pin_dir is not None:
        return open_pinned(opts.pin_dir, identity, opts.obj)
    if (DEFAULT_PIN_DIR / RECORDER_COUNTS_MAP).exists():
        return open_pinned(DEFAULT_PIN_DIR, identity, opts.obj)
    return find_loaded(identity, opts.obj)


# --- phases that must answer a signal within a second ------------------------------------


def _site_table(instrumented: ElfObject, shown: ElfObject | None = None) -> list[Site]:
    """trace.sites.site_table: the one place trace's runner imports it (the sites module may move)."""
    from .sites import site_table

    return site_table(instrumented, shown)


def _load_interruptibly(bpf: LoadedObject, stop: StopSignals, meanwhile: Callable[[], None] | None = None,
                        quiet: bool = False) -> bool:
    """bpf.load() in a worker thread, the main thread watching for a stop
    signal; False when one came.  The verifier looks for a pending signal
    between instructions and gives up (EAGAIN), but libbpf retries a load
    that failed so (and again with a log buffer), so the worker is sent
    INTERRUPT_SIGNAL every INTERRUPT_EVERY_S until libbpf gives up: a
    verification of minutes ends in milliseconds.  Process-directed signals
    are blocked in the worker, so they reach the main thread.  ``meanwhile``
    runs in the main thread once the worker is calling into libbpf, beside
    the verification; what it raises is raised once the load has ended, and
    the load is interrupted as for a stop signal (the caller would only close
    what it loaded).  ``quiet``: without libbpf's log (LoadedObject.load),
    for a load beside work that holds the GIL."""
    failure: list[BaseException] = []
    calling, done = threading.Event(), threading.Event()

    def load() -> None:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            calling.set()
            bpf.load(log=not quiet)
        except BaseException as e:      # noqa: BLE001 - handed to the main thread
            failure.append(e)
        finally:
            calling.set()
            done.set()

    previous = signal.signal(INTERRUPT_SIGNAL, lambda _sig, _frame: None)
    try:
        with printing_off() if quiet else contextlib.nullcontext():
            _load_in_thread(load, calling, done, stop, meanwhile)
    finally:
        signal.signal(INTERRUPT_SIGNAL, previous)
    if stop.requested:
        return False
    if failure:
        raise failure[0]
    return True


def _load_in_thread(load: Callable[[], None], calling: threading.Event, done: threading.Event, stop: StopSignals,
                    meanwhile: Callable[[], None] | None) -> None:
    """_load_interruptibly's thread: started, ``meanwhile`` run here, then
    waited for; interrupted while a stop signal is pending, or once
    ``meanwhile`` has failed (its load is abandoned: not waited for to the
    end of a verification that may take minutes)."""
    worker = threading.Thread(target=load, name="bpf-sdt-load", daemon=True)
    worker.start()
    abandoned = False
    try:
        if meanwhile is not None:
            # Not before the worker is calling libbpf (`calling`): ctypes lets
            # the GIL go there, and work started here sooner would hold the
            # load back by a switch interval (5 ms) or more.
            calling.wait()
            meanwhile()
    except BaseException:
        abandoned = True
        raise
    finally:
        while not done.wait(WAIT_POLL_S):
            if (stop.requested or abandoned) and worker.ident is not None:
                signal.pthread_kill(worker.ident, INTERRUPT_SIGNAL)
                done.wait(INTERRUPT_EVERY_S)
        worker.join()

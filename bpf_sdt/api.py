"""bpf-sdt's public Python API (docs/api.md): what the commands do, for tools.

Everything here is re-exported from :mod:`bpf_sdt`; import it from there.  It
is a thin layer over the functions the commands themselves call, so that a
tool sees exactly what the commands print:

- :func:`open_object` is `check` and `list`: the same analysis, its sites
  built from the same records `list --json` prints;
- :func:`instrument` is `instrument`: the same request, the same rewrite;
- :func:`trace_run` is `trace --run ... --json`, run as a child process and
  read through the JSON lines docs/trace.md specifies.  A child, because a
  trace changes the process that runs it (a private mount namespace for the
  recorder's pins, handlers for SIGINT/SIGTERM/SIGHUP); a tool embedding
  bpf-sdt keeps its own.

Errors are :class:`BpfSdtError` with a one-line message and the exit code
the command would have returned (2: unusable input, 1: findings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf_sdt.errors import EXIT_UNUSABLE, BpfSdtError, InputError

__all__ = [
    "Argument",
    "BpfSdtError",
    "Event",
    "Finding",
    "Instrumented",
    "InstrumentedSite",
    "Probe",
    "ProgramRun",
    "SdtObject",
    "Site",
    "TraceResult",
    "instrument_object",
    "open_object",
    "trace_run",
]

PathLike = str | os.PathLike[str]
# A test run that takes longer than this is stuck: the child is killed.
DEFAULT_RUN_TIMEOUT_S = 300.0
RUN_TYPES = ("run", "refused")   # trace --json lines about one test run


# --- objects: probes, sites, typed arguments (what `check` and `list` show) -----------


@dataclass(frozen=True)
class Argument:
    """One argument of a site: where it lives when the NOP executes, and the
    type the probe declares for it (None without BTF).  ``kind`` is "reg"
    (``reg``), "imm" (``value``, converted to the declared type), or "stack"
    (``offset`` from r10, ``size`` bytes)."""

    index: int
    kind: str
    type: str | None
    reg: int | None = None
    value: int | None = None
    offset: int | None = None
    size: int | None = None


@dataclass(frozen=True)
class Site:
    """One probe site (one notes entry), as `bpf-sdt list` shows it."""

    probe: str
    section: str
    offset: int                      # byte offset of the NOP in its section
    insn: int                        # the NOP's instruction index
    function: str                    # "" when no symbol contains it
    args: tuple[Argument, ...]
    file: str | None = None          # from .BTF.ext line info, when the object has it
    line: int | None = None
    column: int | None = None
    observers: tuple[str, ...] = ()  # what `instrument` made this site call


@dataclass(frozen=True)
class Probe:
    """A probe name with its declared argument types and its sites."""

    name: str
    types: tuple[str, ...]
    sites: tuple[Site, ...]


@dataclass(frozen=True)
class Finding:
    """One `check` diagnostic: ``where`` is a place in the object (``.text+0x18``)."""

    path: str
    where: str
    severity: str        # "error" or "warning"
    message: str
    rule: str            # SDT1xx, docs/check.md


@dataclass(frozen=True)
class SdtObject:
    """A compiled, linked or instrumented BPF object's probes."""

    path: Path
    sites: tuple[Site, ...]
    findings: tuple[Finding, ...]
    # Notes entries that did not decode (each also a finding), as `list` reports them.
    undecoded: tuple[str, ...] = ()
    probes: Mapping[str, Probe] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when `check` would pass (no finding of severity error)."""
        return not any(f.severity == "error" for f in self.findings)


def open_object(path: PathLike) -> SdtObject:
    """Reads an object's notes, BTF and line info: its sites in `list` order,
    its probes by name, and `check`'s findings.  Raises BpfSdtError for a
    file that is not a usable BPF object."""
    from bpf_sdt.elf import load_object
    from bpf_sdt.postlink.check import analyze
    from bpf_sdt.postlink.commands import broken_entries

    report = analyze(load_object(str(path)))
    sites = tuple(_site(s.to_json()) for s in report.iter_sites())
    declared = {name: tuple(d.types) for name, d in report.declarations.items()}
    return SdtObject(
        path=Path(path), sites=sites,
        findings=tuple(Finding(f.path, f.where, f.severity, f.message, f.rule) for f in report.findings),
        undecoded=tuple(broken_entries(report)), probes=_probes(sites, declared))


def _site(record: Mapping[str, Any]) -> Site:
    """A site from its `list --json` record (docs/format.md): the API and the
    command cannot differ."""
    types: list[str] = record["types"]
    args = tuple(_argument(k, a, types[k] if k < len(types) else None) for k, a in enumerate(record["args"]))
    return Site(record["name"], record["section"], record["offset"], record["insn"], record["function"], args,
                record["file"], record["line"], record["column"], tuple(record["observers"]))


def _argument(index: int, record: Mapping[str, Any], declared: str | None) -> Argument:
    return Argument(index, record["kind"], declared, reg=record.get("reg"), value=record.get("value"),
                    offset=record.get("offset"), size=record.get("size"))


def _probes(sites: Sequence[Site], declared: Mapping[str, tuple[str, ...]]) -> dict[str, Probe]:
    by_name: dict[str, list[Site]] = {name: [] for name in sorted(declared)}
    for s in sites:
        by_name.setdefault(s.probe, []).append(s)
    return {name: Probe(name, declared.get(name, ()), tuple(found)) for name, found in sorted(by_name.items())}


# --- instrument -------------------------------------------------------------------------


@dataclass(frozen=True)
class InstrumentedSite:
    """A site of the output that now calls observers (in call order)."""

    probe: str
    section: str
    offset: int
    function: str
    observers: tuple[str, ...]


@dataclass(frozen=True)
class Instrumented:
    output: Path
    sites: tuple[InstrumentedSite, ...]
    skipped: tuple[str, ...] = ()    # one warning per site left a NOP


def instrument_object(input: PathLike, output: PathLike, *, probes: Sequence[str] = (),
               observers: Sequence[PathLike] = (), attach: Sequence[str] = (), record: bool = False,
               ringbuf_size: int | None = None, bpftool: str | None = None) -> Instrumented:
    """`bpf-sdt instrument INPUT -o OUTPUT`: probe sites call observers from
    ``observers`` (objects with SEC("bpf_sdt/<probe>") programs), or the
    built-in recorder when there are none (or ``record``).  ``probes`` are
    globs selecting probes (default all); ``attach`` "OBSERVER=GLOB" pairs.
    OUTPUT is written atomically; raises BpfSdtError (exit_code 1 for sites
    that cannot be instrumented, 2 for unusable input)."""
    from bpf_sdt.instrument.commands import Request
    from bpf_sdt.instrument.commands import instrument as rewrite

    options: dict[str, Any] = {} if ringbuf_size is None else {"ringbuf_size": ringbuf_size}
    result = rewrite(Request(input=Path(input), output=Path(output), probes=tuple(probes),
                             observers=tuple(Path(o) for o in observers), attach=tuple(attach), record=record,
                             bpftool=bpftool, **options))
    return Instrumented(Path(output), tuple(InstrumentedSite(s.probe, s.section, s.offset, s.function,
                                                             tuple(s.observers)) for s in result.sites),
                        tuple(result.skipped))


# --- test runs and their events (what `trace --run --json` prints) ---------------------


@dataclass(frozen=True)
class Event:
    """One probe firing: ``args`` converted to the declared types (enums,
    bools and pointers as numbers)."""

    ts: int                  # ns, CLOCK_MONOTONIC
    site: int                # the site's index in `list` order
    cpu: int
    probe: str
    function: str
    insn: int
    file: str | None
    line: int | None
    args: tuple[int, ...]
    # Per argument, the enumerator naming its value (None for a non-enum
    # argument or a value no enumerator has); () when the probe has no enums.
    enums: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class ProgramRun:
    """One packet's BPF_PROG_TEST_RUN: the program's return value, or the
    kernel's refusal (``error``) of a packet of ``size`` bytes."""

    run: int                 # 1-based
    prog: str
    retval: int | None = None
    repeat: int | None = None
    events: int | None = None
    duration_ns: int | None = None
    error: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class TraceResult:
    events: tuple[Event, ...]
    runs: tuple[ProgramRun, ...]
    lost: int = 0            # events the ring buffer had no room for


def trace_run(obj: PathLike, program: str, packets: Iterable[bytes], *, probes: Sequence[str] = (),
             repeat: int = 1, timeout: float = DEFAULT_RUN_TIMEOUT_S) -> TraceResult:
    """`bpf-sdt trace OBJ --run PROGRAM --json` on ``packets`` (raw frames,
    Ethernet first): instruments OBJ with the recorder, loads it, runs
    PROGRAM once per packet (``repeat`` times each) and returns every event
    and every run.  Needs CAP_BPF.  Raises BpfSdtError with trace's message
    and exit code when trace fails."""
    from bpf_sdt.trace.pcap import write_pcap

    with tempfile.TemporaryDirectory(prefix="bpf-sdt-api-") as tmp:
        capture = Path(tmp) / "packets.pcap"
        write_pcap(capture, packets)
        cmd = [sys.executable, "-m", "bpf_sdt.cli", "trace", str(obj), "--run", program, "--pcap", str(capture),
               "--repeat", str(repeat), "--json", *(f"--probe={p}" for p in probes)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BpfSdtError(f"trace of {obj} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        raise _trace_error(done)
    return _trace_result(done.stdout.splitlines())


def _trace_error(done: subprocess.CompletedProcess[str]) -> BpfSdtError:
    lines = done.stderr.strip().splitlines()
    error = BpfSdtError(lines[-1] if lines else f"trace exited with {done.returncode}")
    error.exit_code = done.returncode if done.returncode in (1, EXIT_UNUSABLE) else EXIT_UNUSABLE
    return error


def _trace_result(lines: Iterable[str]) -> TraceResult:
    events: list[Event] = []
    runs: list[ProgramRun] = []
    lost = 0
    for record in _records(lines):
        kind = record.get("type")      # every line has one (docs/trace.md, JSON lines)
        if kind == "event":
            events.append(Event(record["ts"], record["site"], record["cpu"], record["probe"], record["function"],
                                record["insn"], record["file"], record["line"],
                                tuple(_number(a) for a in record["args"]), tuple(record.get("enums") or ())))
        elif kind in RUN_TYPES:
            runs.append(ProgramRun(**{k: record[k] for k in ProgramRun.__dataclass_fields__ if k in record}))
        elif kind == "lost":
            lost += int(record["lost"])
    return TraceResult(tuple(events), tuple(runs), lost)


def _number(arg: object) -> int:
    """An event argument as a number: trace's JSON prints pointers as hex
    strings and booleans as booleans (docs/trace.md, JSON lines)."""
    if isinstance(arg, str):
        return int(arg, 16)
    if isinstance(arg, bool | int):
        return int(arg)
    raise InputError(f"trace printed an argument that is not a number: {arg!r}")


def _records(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise InputError(f"trace printed a line that is not JSON: {line[:80]!r}") from None
        if isinstance(record, dict):
            yield record

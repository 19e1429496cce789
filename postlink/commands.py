"""`bpf-sdt check` and `bpf-sdt list`: presentation over :func:`analyze`.

Objects are handled one at a time and their output written before the next
is read, so memory holds one object's records, not all of them.  Text output
escapes control characters (names come from the object); JSON is exact.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, TextIO

from bpf_sdt.elf import Section, load_object
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, EXIT_UNUSABLE, InputError
from bpf_sdt.format import NOTES_SECTION
from bpf_sdt.insn import INSN_SIZE
from bpf_sdt.model import SiteRecord, encode_str, escape_text, inlined_json, json_str, place_json, site_json_template
from bpf_sdt.notes import NoteEntries, NoteProblem

from .check import ObjectReport, analyze

if TYPE_CHECKING:
    from bpf_sdt.inlined import Chain


def _reports(paths: list[str], command: str, unusable: list[str]) -> Iterator[ObjectReport]:
    """Analyze objects one by one; unusable ones become one-line errors on
    stderr (and in ``unusable``), not aborts."""
    for path in paths:
        try:
            report = analyze(load_object(path))
        except InputError as e:
            unusable.append(str(e))
            print(f"bpf-sdt {command}: {escape_text(str(e))}", file=sys.stderr)
            continue
        yield report


def _objects(paths: list[str], command: str, unusable: list[str], as_json: bool,
             out: TextIO) -> Iterator[tuple[int, ObjectReport]]:
    """(index, report) per usable object, after the JSON envelope's start."""
    if as_json:
        out.write('{"objects":[')
    return enumerate(_reports(paths, command, unusable))


def _exit_code(unusable: list[str], findings: bool) -> int:
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_FINDINGS if findings else EXIT_OK


def run_check(paths: list[str], as_json: bool = False) -> int:
    unusable: list[str] = []
    errors = False
    out = sys.stdout
    for n, r in _objects(paths, "check", unusable, as_json, out):
        errors = errors or r.errors > 0
        if as_json:
            out.write(("," if n else "") + json.dumps({"path": r.path, "sites": r.site_count,
                                                       "findings": [f.to_json() for f in r.findings]}))
        else:
            for f in r.findings:
                out.write(f.render() + "\n")
    if as_json:
        out.write(f'],"unusable":{json.dumps(unusable)}}}\n')
    return _exit_code(unusable, errors)


def run_list(paths: list[str], as_json: bool = False) -> int:
    """Every site that decodes is listed; every entry that does not is one line
    on stderr and makes the exit code 1."""
    unusable: list[str] = []
    broken = False
    out = sys.stdout
    with _collector_paused():
        for n, r in _objects(paths, "list", unusable, as_json, out):
            if as_json:
                _write_json(r, n, out)
            else:
                _write_table(r, out)
            for line in broken_entries(r):
                broken = True
                print(f"bpf-sdt list: {line}", file=sys.stderr)
    if as_json:
        out.write("]}\n")
    return _exit_code(unusable, broken)


def _write_json(report: ObjectReport, n: int, out: TextIO) -> None:
    """The ``n``-th object of the JSON envelope."""
    out.write(f'{"," if n else ""}{{"path":{json.dumps(report.path)},"probes":[')
    for i, chunk in enumerate(_json_chunks(report)):
        out.write(("," if i else "") + ",".join(chunk))
    out.write("]}")


# Sites encoded per write: few writes, and a bounded list of texts (a million
# sites' JSON is about 450 MB); small lists keep the peak low.
_CHUNK = 512


def _json_chunks(report: ObjectReport) -> Iterator[list[str]]:
    """The JSON text of every site, in site-id order and in lists of at most
    _CHUNK: what ``site.json_text()`` of each of ``report.iter_sites()`` is,
    without a SiteRecord (or a NoteEntry) per site: `list --json` of a large
    object spent most of its time building and encoding those.  A test keeps
    the two identical."""
    table = report.table
    chains = table.inlined_at
    templates: dict[tuple[int, int, int, tuple[str, ...]], str] = {}
    for sec, start, stop in table.entries.section_runs(_CHUNK):
        yield _json_run(report, sec, start, stop, chains[start:stop], templates)


def _json_run(report: ObjectReport, sec: Section, start: int, stop: int, chains: list[Chain],
              templates: dict[tuple[int, int, int, tuple[str, ...]], str]) -> list[str]:
    """The JSON texts of sites ``start:stop``, of one code section.  Sites of
    one probe with the same argument bytes (and observers) share a template,
    so per site only what is its own is formatted: offsets, function,
    symbol, place.  Neighbours mostly share a function and a line record, so
    those are encoded again only when they change (the lookups give the same
    object)."""
    table = report.table
    entries = table.entries
    offsets = entries.offsets[start:stop]
    functions = table.functions.names(sec, offsets)
    places = table.lines.places(sec.name, offsets)
    calls_at = _calls_at(report, sec.index, offsets)
    texts = []
    last_function, function_text = None, ""
    last_place, place_text = None, ""
    section_id = entries.section_ids[start]
    for offset, entry_offset, probe, body, symbol, function, place, calls, chain in zip(
            offsets, entries.entry_offsets[start:stop], entries.probe_ids[start:stop],
            entries.body_ids[start:stop], entries.symbols(start, stop), functions, places, calls_at, chains,
            strict=True):
        if function is not last_function:
            last_function, function_text = function, json_str(function)
        if place is not last_place:
            last_place, place_text = place, place_json(*place)
        key = (section_id, probe, body, calls)   # the bytes decide the arguments
        template = templates.get(key)
        if template is None:
            template = templates[key] = _template(report, entries, sec, probe, body, calls)
        texts.append(template % (offset, offset // INSN_SIZE, function_text, entry_offset,
                                 encode_str(symbol), place_text, inlined_json(chain) if chain else "[]"))
    return texts


def _calls_at(report: ObjectReport, sec_index: int, offsets: Sequence[int]) -> Iterable[tuple[str, ...]]:
    """The observers of each site at ``offsets`` (of one code section)."""
    observers = report.observers
    if not observers:       # not an instrumented object
        return repeat((), len(offsets))
    return [observers.get((sec_index, offset), ()) for offset in offsets]


def _template(report: ObjectReport, entries: NoteEntries, sec: Section, probe_id: int, body_id: int,
              calls: tuple[str, ...]) -> str:
    """What ObjectReport.iter_sites gives a site's record, as a template."""
    probe = entries.probes[probe_id]
    decl = report.declarations.get(probe)
    return site_json_template(probe, sec.name, entries.bodies[body_id].args, decl.types if decl else (), calls,
                              report.arg_types.get(probe, ()))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while objects are listed: their decoding
    is hundreds of thousands of small objects in no cycle (entries, line
    records, names), which the collector would traverse again and again,
    about a tenth of `list --json`'s time at 100k sites, to free nothing.
    Reference counting frees them as usual."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def broken_entries(report: ObjectReport) -> list[str]:
    """One escaped line per entry (or section-wide problem) that did not decode."""
    by_entry: dict[int, list[NoteProblem]] = {}
    lines = []
    for p in report.decoding.problems:
        if p.entry_offset < 0:
            lines.append(f"{report.path}: {p.where}: {p.message}")
        else:
            by_entry.setdefault(p.entry_offset, []).append(p)
    for entry_offset, problems in by_entry.items():
        lines.append(f"{report.path}: {NOTES_SECTION}+{entry_offset:#x}: entry not listed: "
                     + "; ".join(p.message for p in problems))
    return [escape_text(line) for line in lines]


_HEAD = ("PROBE", "SECTION", "FUNCTION", "INSN", "LOCATION", "ARGS", "TYPES")
# Only for an object `bpf-sdt instrument` wrote (any site calls an observer).
_OBSERVERS = "OBSERVERS"


def _cells(site: SiteRecord, observers: bool = False) -> tuple[str, ...]:
    cells: tuple[str, ...] = (site.name, site.section, site.function or "-", str(site.insn_index),
                              site.location or "-", ", ".join(site.describe_args()) or "-",
                              ", ".join(site.types) or "-")
    if observers:
        cells += (", ".join(site.observers) or "-",)
    return tuple(escape_text(c) for c in cells)


def _write_table(report: ObjectReport, out: TextIO) -> None:
    """Two passes over the sites (widths, then rows) instead of holding every
    row's strings: an object may have a million sites."""
    n = report.site_count
    out.write(f"{escape_text(report.path)}: {n} probe site{'s' if n != 1 else ''}\n")
    if not n:
        return
    observers = bool(report.observers)
    head = (*_HEAD, _OBSERVERS) if observers else _HEAD
    widths = [len(h) for h in head]
    for site in report.iter_sites():
        widths = [max(w, len(c)) for w, c in zip(widths, _cells(site, observers), strict=True)]
    out.write(_row(head, widths))
    for site in report.iter_sites():
        out.write(_row(_cells(site, observers), widths))


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

"""`bpf-sdt check` and `bpf-sdt list`: presentation over :func:`analyze`."""

from __future__ import annotations

import json
import sys

from bpf_sdt.postlink.check import ObjectReport, analyze

from bpf_sdt.elf import load_object
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, EXIT_UNUSABLE, InputError


def _reports(paths: list[str]) -> tuple[list[ObjectReport], list[str]]:
    """Analyze every object; unusable ones become one-line errors, not aborts."""
    reports, unusable = [], []
    for path in paths:
        try:
            reports.append(analyze(load_object(path)))
        except InputError as e:
            unusable.append(str(e))
    return reports, unusable


def run_check(paths: list[str], as_json: bool = False) -> int:
    reports, unusable = _reports(paths)
    findings = [f for r in reports for f in r.findings]
    if as_json:
        _write_json({"objects": [{"path": r.path, "sites": len(r.sites),
                                  "findings": [f.to_json() for f in r.findings]} for r in reports],
                     "unusable": unusable})
    else:
        for f in findings:
            print(f.render())
    for msg in unusable:
        print(f"bpf-sdt check: {msg}", file=sys.stderr)
    if unusable:
        return EXIT_UNUSABLE
    return EXIT_FINDINGS if any(r.errors for r in reports) else EXIT_OK


def run_list(paths: list[str], as_json: bool = False) -> int:
    reports, unusable = _reports(paths)
    if as_json:
        objects = ",".join(f'{{"path":{json.dumps(r.path)},"probes":[{",".join(s.json_text() for s in r.sites)}]}}'
                           for r in reports)
        sys.stdout.write(f'{{"objects":[{objects}]}}\n')
    else:
        for r in reports:
            print(_table(r))
    for msg in unusable:
        print(f"bpf-sdt list: {msg}", file=sys.stderr)
    return EXIT_UNUSABLE if unusable else EXIT_OK


def _write_json(doc: object) -> None:
    # json.dumps without indent runs json's C encoder in one call; json.dump to a
    # stream encodes chunk by chunk in Python (10,000 sites: 1.9 s against 0.1 s).
    sys.stdout.write(json.dumps(doc) + "\n")


def _table(report: ObjectReport) -> str:
    head = ("PROBE", "SECTION", "FUNCTION", "INSN", "ARGS", "TYPES")
    rows = [(s.name, s.section, s.function or "-", str(s.insn_index),
             ", ".join(a.describe() for a in s.args) or "-",
             ", ".join(s.types) or "-") for s in report.sites]
    lines = [f"{report.path}: {len(report.sites)} probe site{'s' if len(report.sites) != 1 else ''}"]
    if rows:
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)

"""`bpf-sdt extract` and `bpf-sdt lint`: the files' results (analysis.py)
printed as text, JSON or SARIF (sarif.py), and the exit code."""

from __future__ import annotations

import json
import sys

from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, EXIT_UNUSABLE
from bpf_sdt.model import escape_text

from .analysis import analyze_files
from .lint import cross_file
from .results import FileResult
from .sarif import line_col, sarif

__all__ = ["run_extract", "run_lint"]


def run_extract(files: list[str], build_dir: str | None, extra: list[str], as_json: bool = False) -> int:
    results = analyze_files(files, build_dir, extra, use_cache=False)
    usable = [r for r in results if r.facts is not None]
    decls, seen = [], set()
    for r in usable:
        assert r.facts is not None
        for d in r.facts.declarations:
            if (d.name, d.file, d.line) not in seen:
                seen.add((d.name, d.file, d.line))
                decls.append(d)
    sites = [s for r in usable if r.facts for s in r.facts.sites]
    if as_json:
        doc = {"declarations": [{"name": d.name, "types": list(d.types), "canonical": list(d.canonical),
                                 "sizes": list(d.sizes), "file": d.file, "line": d.line} for d in decls],
               "sites": [s.to_json() for s in sites]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for d in decls:
            print(escape_text(f"{d.file}:{d.line}: declare {d.name}({', '.join(d.types) or 'void'})"))
        for s in sites:
            args = ", ".join(s.args)
            via = f" via {' -> '.join(s.via)}" if s.via else ""
            print(escape_text(f"{s.file}:{s.line}:{s.column}: probe {s.name}({args}) in {s.function or '-'}{via}"))
    return _report_unusable(results, "extract") or EXIT_OK


def run_lint(files: list[str], build_dir: str | None, extra: list[str], fmt: str = "text",
             jobs: int = 0, use_cache: bool = True, ir: bool = True) -> int:
    notes: list[str] = []
    results = analyze_files(files, build_dir, extra, jobs=jobs, use_cache=use_cache, ir=ir, notes=notes)
    facts = [r.facts for r in results if r.facts is not None]
    # A header's probes are seen by every file including it: one finding each.
    findings = list(dict.fromkeys([f for r in results for f in r.findings] + cross_file(facts)))
    findings.sort(key=lambda f: (f.path, *line_col(f.where), f.rule))
    for note in notes:
        print(escape_text(f"bpf-sdt lint: {note}"), file=sys.stderr)
    for r in results:
        if r.ir_note:
            print(escape_text(f"bpf-sdt lint: {r.path}: {r.ir_note}"), file=sys.stderr)
    if fmt == "json":
        sys.stdout.write(json.dumps({"findings": [f.to_json() for f in findings],
                                     "unusable": [r.unusable for r in results if r.unusable]}, indent=2) + "\n")
    elif fmt == "sarif":
        sys.stdout.write(json.dumps(sarif(findings), indent=2) + "\n")
    else:
        for f in findings:
            print(f.render())   # escapes what the source's names hold
    unusable = _report_unusable(results, "lint")
    if unusable:
        return unusable
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else EXIT_OK


def _report_unusable(results: list[FileResult], command: str) -> int:
    bad = [r.unusable for r in results if r.unusable]
    for msg in bad:
        print(escape_text(f"bpf-sdt {command}: {msg}"), file=sys.stderr)
    return EXIT_UNUSABLE if bad else 0

"""`bpf-sdt extract` and `bpf-sdt lint`.

Each file is parsed in a worker process (worker.py) under a memory limit
and a deadline (sandbox.py), after a scan that refuses includes of FIFOs and
devices (includes.py).  Its facts and per-file findings are cached as JSON
(results.py) by cache.py; each file's flags and IR compile come from
plan.py; what files share (PCHs, shared IR clangs) is planned by
schedule.py.
"""

from __future__ import annotations

import json
import os
import sys

from bpf_sdt.clang_plugin.files import MAX_SOURCE_BYTES
from bpf_sdt.clang_plugin.lint import cross_file
from bpf_sdt.clang_plugin.parse import cindex, libclang_version
from bpf_sdt.clang_plugin.results import FileResult, decode

from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, EXIT_UNUSABLE
from bpf_sdt.fsutil import read_regular
from bpf_sdt.model import escape_text

from .cache import cache_store, load_cached
from .plan import plan_for
from .sarif import line_col, sarif
from .worker import ParseTask, analyze_encoded, batched_ir_findings, refusal

__all__ = ["FileResult", "analyze_files", "run_extract", "run_lint"]



def analyze_files(files: list[str], build_dir: str | None, extra: list[str], jobs: int = 0,
                  use_cache: bool = True, ir: bool = False, notes: list[str] | None = None) -> list[FileResult]:
    """Each file's result.  With `ir`, the IR rules too; why they could not
    run for any file is appended to `notes`."""
    # Every input is read once, here: a FIFO, a device or a directory is one
    # error line now, and the bytes read are the bytes hashed and parsed.
    sources = {f: read_regular(f, MAX_SOURCE_BYTES, "source file") for f in files}
    plan = plan_for(files, build_dir, extra, ir)
    flags = plan.flags
    if plan.ir_skipped and notes is not None:
        notes.append(plan.ir_skipped)
    results: dict[str, FileResult] = {}
    keys: dict[str, str] = {}
    if use_cache:
        results, keys = load_cached(files, flags, sources, libclang_version(), plan.ir)
    todo = list(dict.fromkeys(f for f in files if f not in results))
    if todo:
        # Only cold runs pay for these imports, and they happen here, once,
        # rather than in every child: a warm run never parses.
        import bpf_sdt.clang_plugin.extract
        import bpf_sdt.clang_plugin.includes  # noqa: F401
        from bpf_sdt.clang_plugin.sandbox import Limits, run_isolated

        from .schedule import add_includes, finish_precompiling, ir_batches, start_precompiling

        cindex()   # a broken libclang is one error here, not one per file; children inherit it loaded
        if any(plan.ir.get(f) for f in todo):
            import llvmlite.binding  # noqa: F401 - loaded once here, inherited by every worker
        limits = Limits.from_env()
        import tempfile

        jobs = jobs or os.cpu_count() or 1
        # Refused files (binary, an include of a FIFO or device) reach
        # neither a parse nor a compile.
        for f in todo:
            why = refusal(f, sources[f], flags[f])
            if why:
                results[f] = FileResult(f, unusable=why)
        usable = [f for f in todo if f not in results]
        with tempfile.TemporaryDirectory(prefix="bpf-sdt-pch-") as pch_dir:
            pchs = start_precompiling(usable, plan, sources, limits, pch_dir)
            batches = []
            try:
                batches = ir_batches(usable, plan, jobs, limits, pchs.ir)   # while clang writes its PCH
                finish_precompiling(pchs, jobs, limits)
                for b in batches:
                    if b.files[0] not in pchs.ir:     # its PCH was not written
                        b.drop_pch()
                batched = {f for b in batches for f in b.files}
                for b in batches:
                    b.start()
                tasks = [ParseTask(f, flags[f], sources[f], None if f in batched else plan.ir.get(f),
                                   f in batched, pchs.ast.get(f)) for f in usable]
                outcomes = run_isolated(tasks, analyze_encoded, jobs, limits)
                bitcode: dict[str, bytes | Exception] = {}
                for b in batches:
                    bitcode.update(b.collect())
            finally:
                for b in batches:
                    b.cancel()
        for f, outcome in zip(usable, outcomes, strict=True):
            r = decode(outcome.payload, path=f) if outcome.payload is not None else None
            if r is None:
                r = FileResult(f, unusable=f"{f}: {outcome.failure or 'the parse returned no usable result'}")
            if f in batched:
                batched_ir_findings(f, sources[f], r, bitcode.get(f))
            if f in pchs.closure and r.facts is not None:
                add_includes(r.facts, pchs.closure[f])
            results[f] = r
            if use_cache:
                cache_store(keys[f], r)
    return [results[f] for f in files]


# --- commands --------------------------------------------------------------------


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

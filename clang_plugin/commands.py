"""`bpf-sdt extract` and `bpf-sdt lint`.

Each file is parsed in a worker process (libclang releases no GIL worth
having), and its facts and per-file findings are cached under
$BPF_SDT_CACHE_DIR (default ~/.cache/bpf-sdt/lint), keyed by the file's
content, its flags, the libclang and bpf-sdt versions.  A hit is only used
if every file the parse included still has the size and mtime it had.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bpf_sdt.clang_plugin.extract import FileFacts, extract
from bpf_sdt.clang_plugin.lint import OWN_ERRORS, RULES, cross_file, per_file
from bpf_sdt.clang_plugin.parse import cindex, compdb_flags, default_flags, libclang_version

from bpf_sdt import __version__
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, EXIT_UNUSABLE, InputError
from bpf_sdt.model import Finding

CACHE_ENV = "BPF_SDT_CACHE_DIR"


@dataclass
class FileResult:
    path: str
    facts: FileFacts | None = None
    findings: list[Finding] = field(default_factory=list)
    unusable: str | None = None      # one line: why the file cannot be parsed at all


# --- one file ------------------------------------------------------------------


def analyze_file(path: str, flags: list[str]) -> FileResult:
    """Parse and lint one file; never raises for a bad file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return FileResult(path, unusable=f"{path}: {e.strerror or e}")
    if b"\0" in data[:65536]:
        return FileResult(path, unusable=f"{path}: binary file, not C source")
    ci = cindex()
    try:
        tu = ci.Index.create().parse(path, args=flags,
                                     options=ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD)
    except ci.TranslationUnitLoadError as e:
        return FileResult(path, unusable=f"{path}: libclang could not parse it ({e})")
    errors = []
    for d in tu.diagnostics:
        if d.severity < ci.Diagnostic.Error:
            continue
        loc = d.location
        where = f"{loc.file.name if loc.file else path}:{loc.line}:{loc.column}"
        if d.severity >= ci.Diagnostic.Fatal:
            hint = ""
            if "file not found" in d.spelling:
                hint = " (pass the project's flags: -p BUILD_DIR with compile_commands.json, or -I DIR after --)"
            return FileResult(path, unusable=f"{where}: fatal error: {d.spelling}{hint}")
        errors.append((loc.file.name if loc.file else path, loc.line, loc.column, d.spelling))
    facts = extract(tu, Path(path), data)
    # Errors at a BPF_SDT_* invocation itself come from inside the header's
    # expansion; the rules report those sites with a rule id.  Errors elsewhere
    # (including in an argument's own text) are the user's: SDT000.
    macro_at = {(m.file, m.line, m.column) for m in (*facts.site_macros, *facts.declaration_macros)}
    too_many_lines = {(path, line) for _, line, _ in facts.too_many}   # SDT008 says it
    facts.diagnostics = [
        Finding(f, f"{line}:{col}", "error", f"does not compile: {msg}", "SDT000")
        for f, line, col, msg in errors
        if (f, line, col) not in macro_at and (f, line) not in too_many_lines
        and not any(s in msg for s in OWN_ERRORS)][:5]
    return FileResult(path, facts, per_file(facts))


# --- cache ---------------------------------------------------------------------


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bpf-sdt" / "lint"


def cache_key(path: str, flags: list[str], data: bytes, version: str) -> str:
    h = hashlib.sha256()
    for part in (version, __version__, path, "\0".join(flags)):
        h.update(part.encode() + b"\0")
    h.update(data)
    return h.hexdigest()


def cache_load(key: str, directory: str) -> FileResult | None:
    try:
        with open(os.path.join(directory, key[:2], key), "rb") as f:
            result = pickle.loads(f.read())
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if not isinstance(result, FileResult) or result.facts is None:
        return None
    for inc, mtime, size in result.facts.includes:
        try:
            st = os.stat(inc)
        except OSError:
            return None
        if st.st_mtime_ns != mtime or st.st_size != size:
            return None
    return result


def cache_store(key: str, result: FileResult) -> None:
    if result.facts is None:   # unusable files are re-parsed: the cause may be elsewhere
        return
    from bpf_sdt.fsutil import write_atomic

    d = cache_dir() / key[:2]
    try:
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / key, pickle.dumps(result))
    except OSError:
        pass   # a cache that cannot be written is only slower


# --- many files ------------------------------------------------------------------


def _flags_for(files: list[str], build_dir: str | None, extra: list[str]) -> dict[str, list[str]]:
    out = {}
    for f in files:
        flags = None
        if build_dir:
            flags = compdb_flags(Path(build_dir), Path(f))
            if flags is None:
                raise InputError(f"{f}: not in {build_dir}/compile_commands.json")
        out[f] = default_flags([*(flags or []), *extra])
    return out


def _worker(item: tuple[str, list[str]]) -> FileResult:
    return analyze_file(*item)


def _load_cached(files: list[str], flags: dict[str, list[str]], version: str
                 ) -> tuple[dict[str, FileResult], dict[str, str]]:
    """Cache hits by file, and every file's cache key.  The cyclic collector is
    paused meanwhile: unpickling allocates tens of thousands of small objects,
    which set it off dozens of times (each pass also walking every imported
    module), though none of them can be garbage yet; a third of a warm run went
    there."""
    hits, keys = {}, {}
    directory = str(cache_dir())
    gc.disable()
    try:
        for f in files:
            try:
                with open(f, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = b""
            keys[f] = cache_key(os.path.realpath(f), flags[f], data, version)
            hit = cache_load(keys[f], directory)
            if hit is not None:
                hits[f] = hit
    finally:
        gc.enable()
    return hits, keys


def analyze_files(files: list[str], build_dir: str | None, extra: list[str], jobs: int = 0,
                  use_cache: bool = True) -> list[FileResult]:
    flags = _flags_for(files, build_dir, extra)
    results: dict[str, FileResult] = {}
    keys: dict[str, str] = {}
    if use_cache:
        results, keys = _load_cached(files, flags, libclang_version())
    todo = [f for f in files if f not in results]
    if todo:
        cindex()   # a broken libclang is one error here, not one per worker
    jobs = jobs or os.cpu_count() or 1
    if len(todo) > 1 and jobs > 1:
        from concurrent.futures import ProcessPoolExecutor  # only when there is work

        with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            done = list(pool.map(_worker, [(f, flags[f]) for f in todo],
                                 chunksize=max(1, len(todo) // (4 * jobs))))
    else:
        done = [analyze_file(f, flags[f]) for f in todo]
    for f, r in zip(todo, done, strict=True):
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
        doc = {"declarations": [{"name": d.name, "types": list(d.types), "sizes": list(d.sizes),
                                 "file": d.file, "line": d.line} for d in decls],
               "sites": [s.to_json() for s in sites]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        for d in decls:
            print(f"{d.file}:{d.line}: declare {d.name}({', '.join(d.types) or 'void'})")
        for s in sites:
            print(f"{s.file}:{s.line}:{s.column}: probe {s.name}({', '.join(s.args)}) in {s.function or '-'}")
    return _report_unusable(results, "extract") or EXIT_OK


def run_lint(files: list[str], build_dir: str | None, extra: list[str], fmt: str = "text",
             jobs: int = 0, use_cache: bool = True) -> int:
    results = analyze_files(files, build_dir, extra, jobs=jobs, use_cache=use_cache)
    facts = [r.facts for r in results if r.facts is not None]
    findings = [f for r in results for f in r.findings] + cross_file(facts)
    findings.sort(key=lambda f: (f.path, *_line_col(f.where), f.rule))
    if fmt == "json":
        sys.stdout.write(json.dumps({"findings": [f.to_json() for f in findings],
                                     "unusable": [r.unusable for r in results if r.unusable]}, indent=2) + "\n")
    elif fmt == "sarif":
        sys.stdout.write(json.dumps(sarif(findings), indent=2) + "\n")
    else:
        for f in findings:
            print(f.render())
    unusable = _report_unusable(results, "lint")
    if unusable:
        return unusable
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else EXIT_OK


def _report_unusable(results: list[FileResult], command: str) -> int:
    bad = [r.unusable for r in results if r.unusable]
    for msg in bad:
        print(f"bpf-sdt {command}: {msg}", file=sys.stderr)
    return EXIT_UNUSABLE if bad else 0


def _line_col(where: str) -> tuple[int, int]:
    parts = where.split(":")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def sarif(findings: list[Finding]) -> dict:  # type: ignore[type-arg]
    """SARIF 2.1.0 for GitHub code scanning."""
    rules = [{"id": rid, "shortDescription": {"text": text},
              "defaultConfiguration": {"level": sev},
              "helpUri": "docs/lint.md#" + rid.lower()} for rid, (sev, text) in RULES.items()]
    results = []
    for f in findings:
        line, col = _line_col(f.where)
        results.append({"ruleId": f.rule, "level": f.severity, "message": {"text": f.message},
                        "locations": [{"physicalLocation": {
                            "artifactLocation": {"uri": Path(f.path).as_posix()},
                            "region": {"startLine": max(line, 1), "startColumn": max(col, 1)}}}]})
    return {"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
            "runs": [{"tool": {"driver": {"name": "bpf-sdt", "version": __version__, "rules": rules}},
                      "results": results}]}

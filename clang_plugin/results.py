"""A file's analysis result as plain JSON data, for the cache and for the
pipe from a parse's child process.

Only what is used after the parse crosses: the per-file findings (the rules
run in the child), and the facts that cross-file rules and `extract` output
read (declarations, sites, the includes a cache hit is checked against).
The rest of FileFacts (macro invocations, argument facts...) stays behind.

The cache used to be pickle, and unpickling a planted entry runs code as the
user (a shared or CI-restored cache is enough).  JSON holds only data, and
`decode` rebuilds every object field by field with its type checked: an entry
of the wrong shape is `None` (a cache miss), never an exception and never an
object of the wrong type.  Records are positional lists, which keeps a warm
`lint` as fast as it was with pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bpf_sdt.model import Declaration, Finding, SourceSite

from .extract import FileFacts

# Part of every cache key and checked in every document: a change of layout
# makes old entries misses.
FORMAT = "bpf-sdt-lint-3"
SEVERITIES = ("error", "warning", "note")


@dataclass
class FileResult:
    path: str
    facts: FileFacts | None = None
    findings: list[Finding] = field(default_factory=list)
    unusable: str | None = None      # one line: why the file cannot be parsed at all
    ir_note: str | None = None       # one line: why the IR rules did not run on it
    compile_errors: bool = False     # libclang reported errors (not cached: the IR step reads it)
    # Per facts.sites: (emitted, expected) as the IR rules read them (irlint.SourceProbe).
    # Sent from a worker when the IR is compiled elsewhere (irbatch.py); never cached.
    site_states: list[tuple[bool, bool]] | None = None


class _Invalid(Exception):
    pass


# --- encode ----------------------------------------------------------------------


def encode(result: FileResult, key: str = "", for_ir: bool = False) -> bytes:
    """The document; `for_ir` adds what the IR rules read in the parent
    (compile errors, site states), which a cache entry never holds."""
    # ensure_ascii: lone surrogates (undecodable source bytes) become \\udcXX
    # escapes, which always encode and decode back to the same string.
    doc: dict[str, Any] = {
        "format": FORMAT, "key": key, "path": result.path, "unusable": result.unusable, "ir_note": result.ir_note,
        "facts": _facts(result.facts) if result.facts is not None else None,
        "findings": [_finding(f) for f in result.findings]}
    if for_ir:
        doc["compile_errors"] = result.compile_errors
        doc["site_states"] = [list(s) for s in result.site_states or ()]
    return json.dumps(doc, separators=(",", ":")).encode()


def _facts(f: FileFacts) -> dict[str, Any]:
    decls = {id(d): i for i, d in enumerate(f.declarations)}
    local = [decls.get(id(d)) for d in f.local_declarations]
    return {"file": f.file,
            "declarations": [_decl(d) for d in f.declarations],
            # indexes into declarations (the same objects), else records
            "local_declarations": [i if i is not None else _decl(d) for i, d in zip(local, f.local_declarations,
                                                                                      strict=True)],
            "sites": [[s.name, s.file, s.line, s.column, list(s.args), s.function, list(s.via)] for s in f.sites],
            "mentioned": sorted(f.mentioned),
            "includes": [list(i) for i in f.includes]}


def _decl(d: Declaration) -> list[Any]:
    return [d.name, list(d.types), list(d.sizes), d.file, d.line, list(d.canonical)]


def _finding(f: Finding) -> list[Any]:
    return [f.path, f.where, f.severity, f.message, f.rule]


# --- decode ----------------------------------------------------------------------


def decode(data: bytes, key: str = "", path: str | None = None) -> FileResult | None:
    """The result in `data`, or None if it is not exactly what `encode` writes
    (for `key` and `path`, when given)."""
    try:
        doc = json.loads(data)
        if type(doc) is not dict or doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        result = FileResult(_str(doc["path"]), unusable=_opt_str(doc["unusable"]), ir_note=_opt_str(doc["ir_note"]),
                            facts=None if doc["facts"] is None else _read_facts(doc["facts"]),
                            findings=[_read_finding(f) for f in _list(doc["findings"])])
        if "site_states" in doc:
            result.compile_errors = _bool(doc["compile_errors"])
            result.site_states = [(_bool(e), _bool(x)) for e, x in _list(doc["site_states"])]
    except (ValueError, TypeError, KeyError, RecursionError, _Invalid):
        return None
    if path is not None and result.path != path:
        return None
    return result


def _read_facts(d: Any) -> FileFacts:
    if type(d) is not dict:
        raise _Invalid
    decls = [_read_decl(x) for x in _list(d["declarations"])]
    local = [decls[x] if type(x) is int and 0 <= x < len(decls) else _read_decl(x)
             for x in _list(d["local_declarations"])]
    return FileFacts(
        _str(d["file"]), declarations=decls, local_declarations=local,
        sites=[_read_site(x) for x in _list(d["sites"])], mentioned=set(_strs(d["mentioned"])),
        includes=[(_str(p), _int(mtime), _int(size)) for p, mtime, size in _list(d["includes"])])


def _read_decl(x: Any) -> Declaration:
    name, types, sizes, file, line, canonical = _list(x)
    return Declaration(_str(name), _strs(types), _ints(sizes), _opt_str(file),
                       None if line is None else _int(line), _strs(canonical))


def _read_site(x: Any) -> SourceSite:
    name, file, line, column, args, function, via = _list(x)
    return SourceSite(_str(name), _str(file), _int(line), _int(column), _strs(args), _str(function), _strs(via))


def _read_finding(x: Any) -> Finding:
    path, where, severity, message, rule = _list(x)
    if severity not in SEVERITIES:
        raise _Invalid
    return Finding(_str(path), _str(where), severity, _str(message), _str(rule))


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise _Invalid
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise _Invalid
    return v


def _opt_str(v: Any) -> str | None:
    return None if v is None else _str(v)


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _Invalid
    return v


def _int(v: Any) -> int:
    if type(v) is not int:   # not bool, not float
        raise _Invalid
    return v


def _strs(v: Any) -> tuple[str, ...]:
    if type(v) is not list or not all(type(s) is str for s in v):
        raise _Invalid
    return tuple(v)


def _ints(v: Any) -> tuple[int, ...]:
    if type(v) is not list or not all(type(i) is int for i in v):
        raise _Invalid
    return tuple(v)

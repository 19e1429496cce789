"""One file's analysis, as a sandboxed worker (sandbox.py) runs it: the
libclang parse, the per-file rules and, when the file's IR is compiled
beside its parse, the IR rules.  Files whose IR a shared clang compiles
(irbatch.py) get the IR rules in the parent, from the site states their
worker sends (batched_ir_findings)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular
from bpf_sdt.model import Finding

from .diagnostics import MAX_COMPILER_ERRORS, FatalError, compile_errors, does_not_compile
from .files import MAX_SOURCE_BYTES
from .header import OWN_ERRORS
from .lint import invocation_errors, per_file
from .parse import cindex
from .plan import IrTask
from .results import FileResult, encode

if TYPE_CHECKING:   # a warm lint never parses: these load only in a cold run's workers
    from .irlint import IrSite, PendingIr, SourceProbe

# Seconds of a file's deadline kept back from its IR compile, so that the
# worker reports the other findings before its alarm ends it.
IR_DEADLINE_MARGIN_S = 1.0
# A NUL in the first 64 KiB: an object or other binary, not C.
BINARY_PROBE_BYTES = 65536


class ParseTask(NamedTuple):
    """What a worker is given for one file."""

    path: str
    flags: list[str]
    data: bytes                 # the bytes read once (and hashed for the cache)
    ir: IrTask | None = None    # compile its IR beside the parse
    ir_elsewhere: bool = False  # its IR is batch-compiled: send the site states instead
    pch: str | None = None      # libclang's PCH of its leading header (preamble.py)


def analyze_encoded(task: ParseTask) -> bytes:
    """The worker's entry: one file's result, encoded for the pipe."""
    return encode(analyze_file(*task), for_ir=task.ir_elsewhere)


def analyze_file(path: str, flags: list[str], data: bytes, ir: IrTask | None = None, ir_elsewhere: bool = False,
                 pch: str | None = None) -> FileResult:
    """Parse and lint one file whose bytes are `data`; never raises for a bad
    file.  Run it in a sandbox child (see analysis.analyze_files): libclang may not
    return from a hostile file.  With `ir`, clang compiles the file to
    bitcode meanwhile, for the IR rules (irlint.py).  With `ir_elsewhere`,
    its IR is compiled in a batch (irbatch.py) and the result carries what
    the IR rules need of the source (site_states).  With `pch`, libclang
    loads the file's leading header from it (preamble.py).  The caller has
    made sure `refusal` has nothing against the file."""
    from .irlint import IrUnavailable
    from .sandbox import Limits

    started = time.monotonic()
    pending, ir_note = _start_ir(path, ir)
    try:
        result = None
        if pch is not None:
            result = _analyze_parsed(path, [*flags, "-include-pch", pch], data)
            if result.unusable or result.compile_errors:
                result = None       # maybe the PCH's doing: the plain parse decides
        if result is None:
            result = _analyze_parsed(path, flags, data)
        if ir_elsewhere and result.facts is not None:
            result.site_states = [(p.emitted, p.expected) for p in _source_probes(result)]
        # A file that does not compile has its errors already (and no IR).
        if pending is not None and result.facts is not None and not result.compile_errors:
            # clang gets what is left of the file's deadline, less a margin:
            # a slow clang costs the IR rules, never the file's other findings
            left = Limits.from_env().timeout_s - (time.monotonic() - started) - IR_DEADLINE_MARGIN_S

            def bitcode() -> bytes:
                if left <= 0:
                    raise IrUnavailable("no time left before the file's deadline (BPF_SDT_PARSE_TIMEOUT)")
                return pending.result(left)

            result.findings += _ir_findings(path, data, result, bitcode)
        elif ir_note:
            result.ir_note = ir_note
    finally:
        if pending is not None:
            pending.cancel()
    return result


def refusal(path: str, data: bytes, flags: list[str], core: set[str] | None = None) -> str | None:
    """Why a file must not be parsed or compiled at all: binary, or an
    include of a FIFO or device (includes.py).  `path` is added to `core`
    when it or a file it includes names a CO-RE attribute or builtin."""
    from .includes import scan_includes

    if b"\0" in data[:BINARY_PROBE_BYTES]:
        return f"{path}: binary file, not C source"
    why, names_core = scan_includes(path, data, flags)
    if names_core and core is not None:
        core.add(path)
    return why


def _start_ir(path: str, ir: IrTask | None) -> tuple[PendingIr | None, str | None]:
    if ir is None:
        return None, None
    from .irlint import IrCompiler, IrUnavailable, start_ir

    try:
        return start_ir(IrCompiler(ir.compiler), path, ir.flags), None
    except IrUnavailable as e:
        return None, f"IR checks skipped: {e}"


def _source_probes(result: FileResult) -> list[SourceProbe]:
    """The source's sites as the IR rules compare them (irlint.SourceProbe):
    from the parse itself, or from the site states a worker sent."""
    from .irlint import SourceProbe

    facts = result.facts
    assert facts is not None
    if facts.site_facts:
        return [SourceProbe(s.site.name, s.site.file, s.site.line, s.site.column, s.site.args, s.emitted,
                            s.emitted and s.used and not s.unreachable, s.site.via) for s in facts.site_facts]
    states = result.site_states or []
    return [SourceProbe(s.name, s.file, s.line, s.column, s.args, emitted, expected, s.via)
            for s, (emitted, expected) in zip(facts.sites, states, strict=True)]


def _ir_findings(path: str, data: bytes, result: FileResult, bitcode: Callable[[], bytes],
                 again: Callable[[], bytes] | None = None) -> list[Finding]:
    """The IR rules' findings on the bitcode `bitcode()` returns (or raises
    IrUnavailable for); if LLVM cannot read it, on `again()`'s.  A reason in
    result.ir_note when there are none to have."""
    from .irlint import IrUnavailable, UnreadableBitcode, ir_findings

    try:
        try:
            sites = _read_sites(path, data, bitcode())
        except UnreadableBitcode:
            if again is None:
                raise
            sites = _read_sites(path, data, again())
    except (IrUnavailable, InputError) as e:
        result.ir_note = f"IR checks skipped: {e}"
        return []
    return ir_findings(_source_probes(result), sites, path)


def _read_sites(path: str, data: bytes, code: bytes) -> list[IrSite]:
    """The probe sites of `code`, the bitcode of `path` (whose bytes libclang read are `data`)."""
    from .irlint import MAX_BITCODE_BYTES, IrUnavailable, ir_sites, too_much_bitcode

    if len(code) > MAX_BITCODE_BYTES:
        raise IrUnavailable(too_much_bitcode())
    if read_regular(path, MAX_SOURCE_BYTES, "source file") != data:   # clang read the disk, libclang `data`
        raise IrUnavailable(f"{path} changed while it was being linted")
    return ir_sites(code)


def compiled_alone(path: str, task: IrTask) -> Callable[[], bytes]:
    """The file's bitcode from a clang of its own, as beside its parse (with
    the worker's deadline, less the margin): for a file whose shared clang's
    module cannot be trusted (irbatch.py)."""
    from .irlint import IrCompiler, start_ir
    from .sandbox import Limits

    def compile_it() -> bytes:
        return start_ir(IrCompiler(task.compiler), path, task.flags).result(
            Limits.from_env().timeout_s - IR_DEADLINE_MARGIN_S)

    return compile_it


def batched_ir_findings(path: str, data: bytes, result: FileResult, bitcode: bytes | Exception | None,
                        alone: Callable[[], bytes] | None = None) -> None:
    """The IR rules on a batch-compiled file, in this process; on `alone()`'s
    bitcode if LLVM cannot read the batch's."""
    facts = result.facts
    if facts is None or result.compile_errors:
        return     # unusable, or its errors already said (a file that does not compile has no IR)
    if bitcode is None or result.site_states is None or len(result.site_states) != len(facts.sites):
        result.ir_note = "IR checks skipped: the batch compile returned nothing for it"
        return
    if isinstance(bitcode, Exception):
        result.ir_note = f"IR checks skipped: {bitcode}"
        return
    result.findings += _ir_findings(path, data, result, lambda: bitcode, alone)


def _analyze_parsed(path: str, flags: list[str], data: bytes) -> FileResult:
    """The libclang half of analyze_file."""
    from .extract import extract
    from .sandbox import Limits, ran_out_of_memory

    ci = cindex()
    name = os.fsencode(path)
    try:
        # The bytes we read (and hashed for the cache) are the bytes parsed,
        # even if the file changes meanwhile.  excludeDecls: a walk of the
        # translation unit skips what a PCH holds (preamble.py: nothing the
        # rules read), which would otherwise cost a callback per declaration.
        index = ci.Index.create(excludeDecls=True)
        tu = index.parse(name, args=[os.fsencode(f) for f in flags], unsaved_files=[(name, data)],
                         options=ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD)
    except ci.TranslationUnitLoadError as e:
        if ran_out_of_memory():
            return FileResult(path, unusable=f"{path}: {Limits.from_env().memory_message()}")
        return FileResult(path, unusable=f"{path}: libclang could not parse it ({e})")
    try:
        errors = compile_errors(ci, tu, path)
    except FatalError as e:
        return FileResult(path, unusable=str(e))
    facts = extract(tu, Path(path), data)
    # Errors at a BPF_SDT_* invocation itself come from inside the header's
    # expansion; the rules report those sites with a rule id.  Errors elsewhere
    # (including in an argument's own text) are the user's: SDT000.
    macro_at = {(m.file, m.line, m.column) for m in (*(s.invocation for s in facts.site_facts),
                                                       *facts.declaration_macros)}
    too_many_lines = {(path, line) for _, line, _ in facts.too_many}   # SDT008 says it
    facts.diagnostics = [
        does_not_compile(e) for e in errors
        if (e.file, e.line, e.column) not in macro_at and (e.file, e.line) not in too_many_lines
        and not any(s in e.message for s in OWN_ERRORS)][:MAX_COMPILER_ERRORS]
    findings = per_file(facts)
    # Each failing site that no rule explains, with its own reason.
    facts.diagnostics += invocation_errors(facts, [e for e in errors if (e.file, e.line, e.column) in macro_at],
                                           findings)
    findings = per_file(facts)
    if errors and not any(f.severity == "error" for f in findings):
        # The compiler rejects the file, and no rule said why: a translation
        # unit that does not compile is never clean.
        facts.diagnostics.append(does_not_compile(errors[0]))
        findings = per_file(facts)
    return FileResult(path, facts, findings, compile_errors=bool(errors))

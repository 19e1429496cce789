"""Every file's result for `lint` and `extract`: from the cache (cache.py) or
from a parse in a sandboxed worker (worker.py, sandbox.py), after a scan that
refuses includes of FIFOs and devices (includes.py), with the PCHs and shared
IR clangs that files have in common (schedule.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from bpf_sdt.fsutil import read_regular

from .cache import cache_store, load_cached
from .files import MAX_SOURCE_BYTES
from .parse import cindex, libclang_version
from .plan import Plan, plan_for
from .results import FileResult, decode, encode
from .worker import ParseTask, analyze_encoded, batched_ir_findings, compiled_alone, refusal

if TYPE_CHECKING:   # loaded only by a cold run
    from .sandbox import Limits

IR_READ_FAILED = "IR checks skipped: llvmlite could not read the bitcode (its LLVM ended the worker reading it)"


def analyze_files(files: list[str], build_dir: str | None, extra: list[str], jobs: int = 0,
                  use_cache: bool = True, ir: bool = False, notes: list[str] | None = None) -> list[FileResult]:
    """Each file's result.  With `ir`, the IR rules too; why they could not
    run for any file is appended to `notes`."""
    # Every input is read once, here: a FIFO, a device or a directory is one
    # error line now, and the bytes read are the bytes hashed and parsed.
    sources = {f: read_regular(f, MAX_SOURCE_BYTES, "source file") for f in files}
    plan = plan_for(files, build_dir, extra, ir)
    if plan.ir_skipped and notes is not None:
        notes.append(plan.ir_skipped)
    results: dict[str, FileResult] = {}
    keys: dict[str, str] = {}
    if use_cache:
        results, keys = load_cached(files, plan.flags, sources, libclang_version(), plan.ir)
    todo = list(dict.fromkeys(f for f in files if f not in results))
    if todo:
        results.update(_analyze_cold(todo, plan, sources, jobs, keys if use_cache else None))
    return [results[f] for f in files]


def _analyze_cold(todo: list[str], plan: Plan, sources: dict[str, bytes], jobs: int,
                  keys: dict[str, str] | None) -> dict[str, FileResult]:
    """The files the cache did not have, parsed (results stored under `keys`)."""
    # Only cold runs pay for these imports, and they happen here, once,
    # rather than in every child: a warm run never parses.
    import tempfile

    from . import extract, includes  # noqa: F401
    from .sandbox import Limits, run_isolated
    from .schedule import add_includes, finish_precompiling, ir_batches, start_precompiling

    cindex()   # a broken libclang is one error here, not one per file; children inherit it loaded
    if any(plan.ir.get(f) for f in todo):
        import llvmlite.binding  # noqa: F401 - loaded once here, inherited by every worker
    limits = Limits.from_env()
    jobs = jobs or os.cpu_count() or 1
    # Refused files (binary, an include of a FIFO or device) reach
    # neither a parse nor a compile.
    results: dict[str, FileResult] = {}
    core: set[str] = set()      # the files that may have CO-RE relocations
    for f in todo:
        why = refusal(f, sources[f], plan.flags[f], core)
        if why:
            results[f] = FileResult(f, unusable=why)
    usable = [f for f in todo if f not in results]
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-pch-") as pch_dir:
        pchs = start_precompiling(usable, plan, sources, limits, pch_dir)
        batches = []
        try:
            batches = ir_batches(usable, plan, jobs, limits, pchs.ir, core)   # while clang writes its PCH
            finish_precompiling(pchs, jobs, limits)
            for b in batches:
                if b.files[0] not in pchs.ir:     # its PCH was not written
                    b.drop_pch()
            batched = {f for b in batches for f in b.files}
            for b in batches:
                b.start()
            tasks = [ParseTask(f, plan.flags[f], sources[f], None if f in batched else plan.ir.get(f),
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
        if f in pchs.closure and r.facts is not None:
            add_includes(r.facts, pchs.closure[f])
        results[f] = r
    _batched_ir(results, [f for f in usable if f in batched], sources, bitcode, plan, jobs, limits)
    if keys is not None:
        for f in usable:
            cache_store(keys[f], results[f])
    return results


def _batched_ir(results: dict[str, FileResult], files: list[str], sources: dict[str, bytes],
                bitcode: dict[str, bytes | Exception], plan: Plan, jobs: int, limits: Limits) -> None:
    """The IR rules on the batch-compiled `files`.  Their bitcode is read in
    sandboxed workers too: llvmlite's LLVM verifies a module with debug info
    as it reads it and aborts its whole process when the module is broken
    ("Broken module found"), which in this process would end the run with no
    output.  A module LLVM refuses, or that ends its worker, is a shared
    clang's that cannot be trusted (a later cc1 input inherits state from
    earlier ones, irbatch.py): the file is compiled alone and read again."""
    from .irlint import IrUnavailable

    to_read = [f for f in files if isinstance(bitcode.get(f), bytes)]
    for f in files:
        if f not in to_read:     # nothing to read: the reason, or the file's own errors
            batched_ir_findings(f, sources[f], results[f], bitcode.get(f))

    def alone(f: str) -> Callable[[], bytes]:
        task = plan.ir[f]
        assert task is not None     # batched because it has an IR compile
        return compiled_alone(f, task)

    def read(f: str) -> bytes:
        batched_ir_findings(f, sources[f], results[f], bitcode.get(f), alone(f))
        return encode(results[f], for_ir=True)

    def read_alone(f: str) -> bytes:
        code: bytes | Exception
        try:
            code = alone(f)()
        except IrUnavailable as e:
            code = e
        results[f].ir_note = None       # the note of the read that ended a worker, now replaced
        batched_ir_findings(f, sources[f], results[f], code)
        return encode(results[f], for_ir=True)

    ended = _read_isolated(results, to_read, read, jobs, limits)
    _read_isolated(results, ended, read_alone, jobs, limits)


def _read_isolated(results: dict[str, FileResult], files: list[str], read: Callable[[str], bytes], jobs: int,
                   limits: Limits) -> list[str]:
    """`read` of each file in a sandboxed worker, its IR findings and note
    taken back; the files whose worker ended (each noted IR_READ_FAILED)."""
    from .sandbox import run_isolated

    ended = []
    for f, outcome in zip(files, run_isolated(files, read, jobs, limits), strict=True):
        read_back = decode(outcome.payload, path=f) if outcome.payload is not None else None
        if read_back is None:
            results[f].ir_note = IR_READ_FAILED
            ended.append(f)
        else:
            results[f].findings, results[f].ir_note = read_back.findings, read_back.ir_note
    return ended

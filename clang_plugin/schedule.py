"""What the files of one cold run share: precompiled headers of a common
leading header (preamble.py), one per front end, and shared clangs for the
IR of files with one compiler and flags (irbatch.py).  Each plan is built
before anything runs, then started, awaited and trimmed to what worked."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .plan import Plan

if TYPE_CHECKING:   # loaded only by a cold run
    import subprocess

    from .extract import FileFacts
    from .irbatch import IrBatch
    from .sandbox import Limits

# Files with one compiler and flags that share one clang for their IR (irbatch.py).
MIN_BATCH_FILES = 2


class AstPchBuild(NamedTuple):
    """A libclang PCH to build: its header, the flags, the files that load it."""

    header: str
    flags: list[str]
    files: list[str]


class IrPchBuild(NamedTuple):
    """A clang writing the IR compiler's PCH, and the files that load it."""

    proc: subprocess.Popen[bytes]
    files: list[str]


class IrPchGroup(NamedTuple):
    """Files whose IR compile may share one PCH: same header, compiler and flags."""

    header: str
    compiler: str
    flags: tuple[str, ...]


class BatchGroup(NamedTuple):
    """Files whose IR one clang may compile: same compiler, flags and PCH."""

    compiler: str
    flags: tuple[str, ...]
    pch: str | None


@dataclass
class Precompiled:
    """PCHs of shared leading headers (preamble.py), by file: where each is
    (or will be) written, then only those that were."""

    ast: dict[str, str] = field(default_factory=dict)      # libclang's
    ir: dict[str, str] = field(default_factory=dict)       # the IR compiler's
    closure: dict[str, tuple[str, ...]] = field(default_factory=dict)   # the files each PCH holds
    ast_builds: dict[str, AstPchBuild] = field(default_factory=dict)    # by the PCH's path
    ir_builds: list[IrPchBuild] = field(default_factory=list)


def start_precompiling(usable: list[str], plan: Plan, sources: dict[str, bytes], limits: Limits,
                       directory: str) -> Precompiled:
    """Plan one PCH per front end for each leading header enough files
    share, and start the IR compiler's (libclang's are built by
    finish_precompiling, in the sandbox)."""
    from .irbatch import start_pch
    from .preamble import MIN_FILES, shared_preambles

    out = Precompiled()
    ir_groups: dict[IrPchGroup, list[str]] = {}
    ast_paths: dict[tuple[str, tuple[str, ...]], str] = {}
    for f, p in shared_preambles(usable, sources, plan.flags).items():
        out.closure[f] = p.closure
        key = (p.header, tuple(plan.flags[f]))
        path = ast_paths.setdefault(key, os.path.join(directory, f"ast{len(ast_paths)}.pch"))
        out.ast_builds.setdefault(path, AstPchBuild(p.header, plan.flags[f], [])).files.append(f)
        task = plan.ir.get(f)
        if task is not None:
            ir_groups.setdefault(IrPchGroup(p.header, task.compiler, tuple(task.flags)), []).append(f)
    for i, (group, files) in enumerate(ir_groups.items()):
        if len(files) >= MIN_FILES:
            path = os.path.join(directory, f"ir{i}.pch")
            with contextlib.suppress(OSError):
                proc = start_pch(group.compiler, list(group.flags), group.header, path, limits.memory_mib)
                out.ir_builds.append(IrPchBuild(proc, files))
                out.ir.update(dict.fromkeys(files, path))
    return out


def finish_precompiling(pchs: Precompiled, jobs: int, limits: Limits) -> None:
    """libclang's PCHs, built in the sandbox, and the IR compiler's awaited;
    a PCH that did not build is dropped (its files parse without one)."""
    import subprocess

    from .irlint import wait_for
    from .preamble import build_ast_pch
    from .sandbox import run_isolated

    try:
        tasks = [(build.header, build.flags, path) for path, build in pchs.ast_builds.items()]
        for (_header, _flags, path), outcome in zip(tasks, run_isolated(tasks, build_ast_pch, jobs, limits),
                                                     strict=True):
            if outcome.payload == b"":
                pchs.ast.update(dict.fromkeys(pchs.ast_builds[path].files, path))
        deadline = time.monotonic() + limits.timeout_s
        for build in pchs.ir_builds:
            code = None
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = wait_for(build.proc, max(0.0, deadline - time.monotonic()))
            if code != 0:
                for f in build.files:
                    pchs.ir.pop(f, None)
    finally:
        for build in pchs.ir_builds:
            if build.proc.poll() is None:
                build.proc.kill()
            build.proc.wait()


def add_includes(facts: FileFacts, closure: tuple[str, ...]) -> None:
    """A PCH's headers, which the parse that loaded it did not list, for the
    cache's staleness check."""
    known = {p for p, _mtime, _size in facts.includes}
    for header in closure:
        if header not in known:
            try:
                st = os.stat(header)
            except OSError:
                continue
            facts.includes.append((header, st.st_mtime_ns, st.st_size))


def ir_batches(usable: list[str], plan: Plan, jobs: int, limits: Limits, pchs: dict[str, str],
               core: set[str] | frozenset[str] = frozenset()) -> list[IrBatch]:
    """At most `jobs` batches (irbatch.py) for the files whose IR compile
    shares its compiler, flags (and PCH) with another's; the rest compile
    alone, beside their parse.  `usable`: the files no hazard refuses;
    `core`: those that may have CO-RE relocations (each a clang's last input)."""
    from .irbatch import IrBatch, cc1_command, with_pch

    groups: dict[BatchGroup, list[str]] = {}
    for f in usable:
        task = plan.ir.get(f)
        if task is not None:
            groups.setdefault(BatchGroup(task.compiler, tuple(task.flags), pchs.get(f)), []).append(f)
    shared = sorted((g for g in groups.items() if len(g[1]) >= MIN_BATCH_FILES), key=lambda g: -len(g[1]))
    batches = []
    budget = jobs
    for i, (group, files) in enumerate(shared):
        if budget == 0:
            break
        plain = cc1_command(group.compiler, list(group.flags), files[0])
        if plain is None:
            continue
        command, fallback = (with_pch(plain, group.pch), plain) if group.pch else (plain, None)
        # the batches left are shared out by size; every group gets one
        n = max(1, min(budget - (len(shared) - i - 1), round(jobs * len(files) / len(usable)),
                       len(files) // MIN_BATCH_FILES))
        budget -= n
        batches += [IrBatch(command, files[k::n], limits.timeout_s, limits.memory_mib, fallback,
                            last_inputs=frozenset(core)) for k in range(n)]
    return batches

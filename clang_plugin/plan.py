"""How each file given to `lint` or `extract` is compiled: libclang's flags,
and the IR compile's compiler and flags.

compile_commands.json (`-p`) is read once for all files; without it every
file gets the command line's flags.  The IR compile uses the entry's own
compiler when it names one (the build's clang optimizes as the build does),
else the newest clang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from bpf_sdt.errors import InputError

from .cache import NOT_INSTALLED, llvmlite_identity
from .parse import CompileDatabase, compile_flags, default_flags

# Only a translation unit has code to optimize: a header alone gets no IR compile.
SOURCE_SUFFIX = ".c"


class IrTask(NamedTuple):
    """The IR compile of one file (irlint.py, irbatch.py)."""

    compiler: str
    flags: list[str]


@dataclass
class Plan:
    """Per file: libclang's flags, and its IR compile (None: no IR rules)."""

    flags: dict[str, list[str]] = field(default_factory=dict)
    ir: dict[str, IrTask | None] = field(default_factory=dict)
    ir_skipped: str | None = None    # why no file gets the IR rules


def flags_for(files: list[str], build_dir: str | None, extra: list[str]) -> dict[str, list[str]]:
    """libclang's flags for each file."""
    return plan_for(files, build_dir, extra).flags


def plan_for(files: list[str], build_dir: str | None, extra: list[str], ir: bool = False) -> Plan:
    db = CompileDatabase(build_dir) if build_dir else None   # read once for all files
    plan = Plan()
    if ir and llvmlite_identity() == NOT_INSTALLED:
        plan.ir_skipped = "IR checks skipped: llvmlite is not installed (pip install llvmlite)"
        ir = False
    fallback: str | None = None
    for f in files:
        flags = None
        compiler = None
        if db is not None:
            flags = db.flags(f)
            if flags is None:
                raise InputError(f"{f}: not in {db.path}")
            compiler = db.compiler(f)
        plan.flags[f] = default_flags([*(flags or []), *extra])
        if not ir or not f.endswith(SOURCE_SUFFIX):
            continue
        if compiler is None:
            if fallback is None:
                fallback = _find_ir_clang(plan)
            compiler = fallback or None
        plan.ir[f] = IrTask(compiler, compile_flags([*(flags or []), *extra])) if compiler else None
    return plan


def _find_ir_clang(plan: Plan) -> str:
    """The newest clang (BPF_SDT_CLANG names one); "" and the reason in
    `plan` when there is none."""
    from bpf_sdt.errors import ToolError
    from bpf_sdt.toolchain import find_clang

    try:
        return find_clang()
    except ToolError as e:
        plan.ir_skipped = f"IR checks skipped: {e}"
        return ""

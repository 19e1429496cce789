"""Observers must only read what they are given (docs/instrument.md,
"Observers only read").

An observer's ``ctx`` points into the traced program's stack: the argument
array, and below it the site id and the caller's spilled registers.  A
store through it (or through anything derived from it) changes the traced
program, which fentry would never allow.  This is a forward taint analysis
over the observer's code and, with the tainted arguments, its callees:

- tainted at entry: r1 (ctx);
- taint follows register copies, pointer additions and subtractions, 8-byte
  spills and fills at fixed stack offsets, and 8-byte loads through a
  tainted pointer (an argument may itself be a pointer into the traced
  program's stack or packet);
- a store or atomic operation through a tainted register is refused;
- a tainted register passed to a helper is refused unless the helper is
  known to only read that argument (:data:`READ_ONLY_ARGS`); passed to a
  kfunc it is refused (its prototype is the kernel's); passed to a BPF
  subprogram the subprogram is analysed with those arguments tainted; passed
  to a helper that runs a callback, every callback the function names is
  analysed with all its arguments tainted.

Every walk is bounded: each (function, tainted arguments) pair is analysed
once, so recursion cannot loop (the call graph check reports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bpf_sdt.bpf_helpers import HELPER_IDS
from bpf_sdt.insn import (
    ALU64,
    ALU_ADD,
    ALU_MOV,
    ALU_SUB,
    ARG_REGS,
    CALLER_SAVED,
    HELPER_CALL,
    LD_IMM64,
    LDX,
    MODE_ATOMIC,
    MODE_MASK,
    MODE_MEM,
    OP_MASK,
    PSEUDO_CALL,
    R1,
    R10,
    SIZE_DW,
    SIZE_MASK,
    SRC_X,
    ST,
    STX,
    Insn,
    regs_defined,
)

from .dataflow import Worklist

# Helper id -> the (1-based) arguments it only reads.  Anything else a helper gets may be
# written (bpf_probe_read_kernel's destination, bpf_skb_store_bytes's skb...).
READ_ONLY_ARGS: dict[int, frozenset[int]] = {
    HELPER_IDS["bpf_map_lookup_elem"]: frozenset({2}),  # (map, key)
    HELPER_IDS["bpf_map_update_elem"]: frozenset({2, 3}),  # (map, key, value, flags)
    HELPER_IDS["bpf_map_delete_elem"]: frozenset({2}),  # (map, key)
    HELPER_IDS["bpf_probe_read"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_trace_printk"]: frozenset({1, 3, 4, 5}),  # (fmt, size, ...)
    HELPER_IDS["bpf_perf_event_output"]: frozenset({1, 4}),  # (ctx, map, flags, data, size)
    HELPER_IDS["bpf_skb_load_bytes"]: frozenset({1}),  # (skb, off, to, len)
    HELPER_IDS["bpf_csum_diff"]: frozenset({1, 3}),  # (from, from_size, to, to_size, seed)
    HELPER_IDS["bpf_probe_read_str"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_map_push_elem"]: frozenset({2}),  # (map, value, flags)
    HELPER_IDS["bpf_probe_read_user"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_probe_read_kernel"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_probe_read_user_str"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_probe_read_kernel_str"]: frozenset({3}),  # (dst, size, src)
    HELPER_IDS["bpf_ringbuf_output"]: frozenset({2}),  # (ringbuf, data, size, flags)
    HELPER_IDS["bpf_snprintf"]: frozenset({3, 4}),  # (str, size, fmt, data, data_len)
    HELPER_IDS["bpf_trace_vprintk"]: frozenset({1, 3}),  # (fmt, size, data, data_len)
    HELPER_IDS["bpf_xdp_load_bytes"]: frozenset({1}),  # (xdp_md, off, buf, len)
}
# Helpers that call a function the program names, handing it a pointer it was given.
CALLBACK_HELPERS = frozenset(HELPER_IDS[name] for name in (
    "bpf_for_each_map_elem", "bpf_timer_set_callback", "bpf_find_vma", "bpf_loop", "bpf_user_ringbuf_drain"))


@dataclass(frozen=True)
class CtxWrite:
    """Where an observer (or a function it calls) may write into the traced program."""

    function: str
    insn: int                    # index in the function
    why: str


@dataclass(frozen=True)
class Code:
    """What the analysis needs of one function."""

    name: str
    insns: list[Insn]
    succ: list[list[int]]


# A function's code, given its first instruction (None: not a known function).
Resolve = Callable[[Insn], Code | None]


def find_ctx_write(entry: Code, resolve: Resolve, callbacks: Callable[[Code], list[Code]]) -> CtxWrite | None:
    """The first write through ``ctx`` in ``entry`` or its callees, if any."""
    seen: set[tuple[str, int]] = set()
    todo: list[tuple[Code, int]] = [(entry, 1 << R1)]
    while todo:
        code, tainted = todo.pop()
        if (code.name, tainted) in seen:
            continue
        seen.add((code.name, tainted))
        found = _scan(code, tainted, resolve, callbacks, todo)
        if found is not None:
            return found
    return None


def _scan(code: Code, entry_taint: int, resolve: Resolve, callbacks: Callable[[Code], list[Code]],
          todo: list[tuple[Code, int]]) -> CtxWrite | None:
    n = len(code.insns)
    if not n:
        return None
    state: list[tuple[int, frozenset[int]] | None] = [None] * n    # tainted regs, tainted slots
    state[0] = (entry_taint, frozenset())
    work = Worklist(n, [0])
    while work:
        i = work.pop()
        st = state[i]
        assert st is not None
        insn = code.insns[i]
        regs, slots = st
        problem = _write_through(insn, regs)
        if problem:
            return CtxWrite(code.name, i, problem)
        if insn.is_call:
            problem = _call(code, insn, regs, resolve, callbacks, todo)
            if problem:
                return CtxWrite(code.name, i, problem)
        out = _transfer(insn, regs, slots)
        for s in code.succ[i]:
            old = state[s]
            new = out if old is None else (old[0] | out[0], old[1] | out[1])
            if new != old:
                state[s] = new
                work.push(s)
    return None


def _tainted(regs: int, r: int) -> bool:
    return bool(regs >> r & 1)


def _write_through(insn: Insn, regs: int) -> str | None:
    if insn.cls in (ST, STX) and _tainted(regs, insn.dst):
        what = "an atomic operation" if insn.op & MODE_MASK == MODE_ATOMIC else "a store"
        return f"{what} through r{insn.dst}, which points into the traced program (ctx or derived from it)"
    return None


def _call(code: Code, insn: Insn, regs: int, resolve: Resolve, callbacks: Callable[[Code], list[Code]],
          todo: list[tuple[Code, int]]) -> str | None:
    args = [r for r in ARG_REGS if _tainted(regs, r)]
    if not args:
        return None
    if insn.src == PSEUDO_CALL:
        callee = resolve(insn.target) if insn.target is not None else None
        if callee is None:
            return f"a call to an unknown function with r{args[0]} pointing into the traced program"
        todo.append((callee, sum(1 << r for r in args)))
        return None
    if insn.src != HELPER_CALL:
        return f"a kfunc call with r{args[0]} pointing into the traced program (it may write there)"
    if insn.imm in CALLBACK_HELPERS:
        for cb in callbacks(code):
            todo.append((cb, sum(1 << r for r in ARG_REGS)))
        return None
    readable = READ_ONLY_ARGS.get(insn.imm, frozenset())
    written = [r for r in args if r - R1 + 1 not in readable]
    if written:
        return (f"helper {insn.imm} gets r{written[0]}, which points into the traced program, as an argument "
                "it may write through")
    return None


def _transfer(insn: Insn, regs: int, slots: frozenset[int]) -> tuple[int, frozenset[int]]:
    c, op = insn.cls, insn.op
    if insn.is_call:
        return regs & ~sum(1 << r for r in CALLER_SAVED), slots
    if c == ALU64 and op & SRC_X and op & OP_MASK in (ALU_MOV, ALU_ADD, ALU_SUB) and insn.off == 0:
        src_t = _tainted(regs, insn.src)
        keep = _tainted(regs, insn.dst) and op & OP_MASK != ALU_MOV
        return _set(regs, insn.dst, src_t or keep), slots
    if c == ALU64 and not op & SRC_X and op & OP_MASK in (ALU_ADD, ALU_SUB):
        return regs, slots                  # a constant offset keeps the pointer
    if c == LDX:
        via = _tainted(regs, insn.src)
        wide = op & SIZE_MASK == SIZE_DW
        from_slot = insn.src == R10 and insn.off in slots
        return _set(regs, insn.dst, wide and (via or from_slot)), slots
    if c == STX and insn.dst == R10 and op & SIZE_MASK == SIZE_DW and op & MODE_MASK == MODE_MEM:
        return regs, (slots | {insn.off}) if _tainted(regs, insn.src) else slots - {insn.off}
    if op == LD_IMM64:
        return _set(regs, insn.dst, False), slots
    out = regs
    for r in regs_defined(insn):
        out = _set(out, r, False)
    return out, slots


def _set(regs: int, r: int, on: bool) -> int:
    return regs | (1 << r) if on else regs & ~(1 << r)

"""What the rewriter must know about the code around a probe site.

- **Functions**: every STT_FUNC symbol starts one; functions outside
  ``.text`` are programs (entered with only r1 = ctx and r10 set), those in
  ``.text`` are subprograms.
- **Liveness** (backward, may): which registers are read later.  A call reads
  as many argument registers as its callee takes: a helper's count comes from
  libbpf's helper table, a BPF-to-BPF callee's from its own liveness at entry
  (iterated to a fixed point; BPF has no recursion), anything unknown reads
  all five.  Every call clobbers r0..r5.
- **Definite initialisation** (forward, must): which registers hold a value on
  every path.  The verifier refuses to read (and so to spill) one that does
  not.
- **Stack frames** (:mod:`instrument.stackframe`): the lowest r10-relative
  byte a function may touch, however the address is computed (copies,
  constant and variable offsets, spills, pointers passed to calls, and what
  a BPF callee does below a pointer it gets), or "unbounded" with the reason.
- **Call graph**: BPF-to-BPF calls and callbacks (an ``ld_imm64`` of a
  function, handed to bpf_loop, bpf_for_each_map_elem, timers...: the
  verifier counts it as a call from the function that loads it), so that a
  grown frame can be checked against the verifier's 512-byte limit for a
  whole call chain (each frame rounded up to 32 bytes, as the verifier does).
  Recursion, which the verifier refuses, is found (an iterative walk) and
  reported instead of being followed.

Register sets are bit masks (bit n = rn).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from bpf_sdt.bpf_helpers import HELPER_ARGS, HELPER_IDS
from bpf_sdt.elf import STT_FUNC, TEXT_SECTION, Symbol
from bpf_sdt.errors import InputError
from bpf_sdt.insn import (
    ARG_REGS,
    CALLER_SAVED,
    CLASS_MASK,
    HELPER_CALL,
    HELPER_TAIL_CALL,
    JMP,
    JMP_CALL,
    LD,
    LD_IMM64,
    MAX_STACK,
    MOV64_X,
    OP_MASK,
    OPCODE_BYTE,
    PSEUDO_CALL,
    R0,
    R1,
    R10,
    REGISTER_COUNT,
    STX,
    CodeSection,
    Insn,
    reg_mask,
    regs_defined,
    regs_masks,
    regs_used,
)

from .dataflow import Worklist
from .stackframe import Reach, analyze_frame

T = TypeVar("T")

# Helpers that run a callback: the argument register holding the pointer they hand it, and
# the callback's argument register that receives it (bpf_helper_defs.h).
CALLBACK_CTX = {
    HELPER_IDS["bpf_loop"]: (3, 2),                 # bpf_loop(nr, cb, ctx, flags) -> cb(index, ctx)
    HELPER_IDS["bpf_for_each_map_elem"]: (3, 4),    # (map, cb, ctx, flags) -> cb(map, key, value, ctx)
    HELPER_IDS["bpf_find_vma"]: (4, 3),             # (task, addr, cb, ctx, flags) -> cb(task, vma, ctx)
    HELPER_IDS["bpf_user_ringbuf_drain"]: (3, 2),   # (map, cb, ctx, flags) -> cb(dynptr, ctx)
}
HELPER_TIMER_SET_CALLBACK = HELPER_IDS["bpf_timer_set_callback"]   # (timer, callback_fn)
TIMER_CALLBACK_ARG = 2
TAIL_CALL_STACK = 256        # a subprogram with a tail call: its callers' frames must stay below this
MAX_CALL_FRAMES = 8          # the verifier's limit on nested calls (callbacks included)
MIN_REACH = -MAX_STACK       # what an unknown callee may do below a stack pointer it gets
CYCLE_ROUNDS = 4             # frame passes over a call graph with a cycle (refused anyway)
FRAME_ROUND = 32             # the verifier rounds each frame up to this
ALL_ARGS = sum(1 << r for r in ARG_REGS)
CLOBBER = sum(1 << r for r in CALLER_SAVED)


def regs_of(m: int) -> list[int]:
    return [r for r in range(REGISTER_COUNT) if m >> r & 1]


def round_frame(depth: int) -> int:
    return -(-max(depth, 1) // FRAME_ROUND) * FRAME_ROUND


@dataclass(eq=False)
class Function:
    name: str
    section: CodeSection
    start: int                  # index of its first instruction in section.insns
    end: int                    # one past its last
    is_program: bool
    succ: list[list[int]] = field(default_factory=list)   # per insn, local indices
    live_in: list[int] = field(default_factory=list)
    init_in: list[int] = field(default_factory=list)
    entry_uses: int = 0         # argument registers it reads before writing them
    reach: Reach = field(default_factory=Reach)
    callees: list[Function] = field(default_factory=list)    # calls and callbacks, in code order
    has_tail_call: bool = False

    @property
    def frame(self) -> int:
        """Bytes of stack it may use below r10 (512 when it cannot be bounded)."""
        return self.reach.frame

    @property
    def insns(self) -> list[Insn]:
        return self.section.insns[self.start:self.end]


class Program:
    """The functions of an object's code and the facts above about them."""

    def __init__(self, code: dict[int, CodeSection], symbols: list[Symbol],
                 site_uses: dict[int, int] | None = None) -> None:
        """``site_uses``: id() of each probe NOP -> the registers its note
        says hold arguments.  A site reads them (its observers will), so
        they are live up to it, and a call at an earlier site keeps them."""
        self.site_uses = site_uses or {}
        self.functions: list[Function] = []
        self._by_first: dict[int, Function] = {}
        for sec in code.values():
            _check_registers(sec)
            self.functions += _split_functions(sec, symbols)
        for f in self.functions:
            self._by_first[id(f.section.insns[f.start])] = f
            f.succ = _successors(f)
        self._solve_liveness()
        for f in self.functions:
            f.init_in = _initialised(f)
            f.callees = self._callees(f)
            f.has_tail_call = any(x.is_helper_call and x.imm == HELPER_TAIL_CALL for x in f.insns)
        self.recursive = _cycles(self.functions)
        self._below_sets: dict[int, list[Function]] = {}
        self._above_sets: dict[int, list[Function]] = {}
        self._solve_frames()
        # Asked at every site's chain check: once here, not a walk of every function each time.
        self._any_unbounded = any(g.reach.unbounded for g in self.functions)
        self._any_tail_call = any(g.has_tail_call for g in self.functions)
        self._by_name = {}
        for f in reversed(self.functions):
            self._by_name[f.name] = f          # the first of a name wins
        self._above: dict[int, int] = {}
        self._below: dict[int, int] = {}
        self._frames_above: dict[int, int] = {}
        self._frames_below: dict[int, int] = {}
        self._starts: dict[int, tuple[list[int], list[Function]]] = {}   # per section, in order
        self._callers: dict[int, list[Function]] = {}
        for f in self.functions:
            starts, funcs = self._starts.setdefault(id(f.section), ([], []))
            starts.append(f.start)
            funcs.append(f)
            for g in f.callees:
                self._callers.setdefault(id(g), []).append(f)

    def function_of(self, sec: CodeSection, index: int) -> Function:
        """The function holding ``sec.insns[index]`` (a bisect over its section's)."""
        starts, funcs = self._starts[id(sec)]
        f = funcs[bisect.bisect_right(starts, index) - 1]
        if not f.start <= index < f.end:
            raise KeyError(index)
        return f

    def by_name(self, name: str) -> Function | None:
        return self._by_name.get(name)

    def callee(self, insn: Insn) -> Function | None:
        return self._by_first.get(id(insn.target)) if insn.target is not None else None

    # --- liveness ---------------------------------------------------------

    def _call_uses(self, insn: Insn) -> int:
        """Argument registers a call reads."""
        if insn.src == PSEUDO_CALL:
            f = self.callee(insn)
            return f.entry_uses if f is not None else ALL_ARGS
        if insn.src == HELPER_CALL:
            n = HELPER_ARGS.get(insn.imm, len(ARG_REGS))
            return reg_mask(ARG_REGS[:n])
        return ALL_ARGS          # kfuncs: their prototypes live in the kernel's BTF

    def _solve_liveness(self) -> None:
        """Callees' entry uses feed their callers': a function is solved again
        only when a callee's grew (a worklist; the masks only grow, so it ends,
        at the same fixed point as re-solving every function until none changes)."""
        callers: dict[int, list[Function]] = {}
        for f in self.functions:
            for x in f.insns:
                if x.is_pseudo_call and (g := self.callee(x)) is not None:
                    callers.setdefault(id(g), []).append(f)
        work = self.functions[::-1]          # pop() takes them in order
        queued = {id(f) for f in work}
        while work:
            f = work.pop()
            queued.discard(id(f))
            f.live_in = _liveness(f, self._call_uses, self.site_uses)
            uses = f.live_in[0] & ALL_ARGS if f.live_in else 0
            if uses != f.entry_uses:
                f.entry_uses = uses
                for c in callers.get(id(f), ()):
                    if id(c) not in queued:
                        queued.add(id(c))
                        work.append(c)

    # --- call graph -------------------------------------------------------

    def _callees(self, f: Function) -> list[Function]:
        out = []
        async_only = self._async_callbacks(f)
        for insn in f.insns:
            if (insn.is_pseudo_call or insn.op == LD_IMM64) and (g := self.callee(insn)) is not None \
                    and not (insn.op == LD_IMM64 and id(g) in async_only):
                out.append(g)       # ld_imm64 of a function: a callback (bpf_loop) runs on top
        return out

    def _async_callbacks(self, f: Function) -> set[int]:
        """id() of the functions ``f`` names only as a timer's callback: the
        verifier checks those as programs of their own, not on top of ``f``
        (a linear scan of which register holds which function)."""
        held: dict[int, Function] = {}
        async_uses: set[int] = set()
        other_uses: set[int] = set()
        for insn in f.insns:
            if not held and insn.op != LD_IMM64:
                continue              # no function in a register: nothing below can use one
            if insn.is_call:
                for r in ARG_REGS:
                    if r in held:
                        timer = (insn.is_helper_call and insn.imm == HELPER_TIMER_SET_CALLBACK
                                 and r == TIMER_CALLBACK_ARG)
                        (async_uses if timer else other_uses).add(id(held[r]))
                held = {r: g for r, g in held.items() if r not in CALLER_SAVED}
                continue
            if insn.op == LD_IMM64 and (g := self.callee(insn)) is not None:
                held[insn.dst] = g
                continue
            if insn.cls == STX and insn.src in held:     # stored somewhere: used who knows how
                other_uses.add(id(held[insn.src]))
            if insn.op == MOV64_X and insn.src in held:
                held[insn.dst] = held[insn.src]
                continue
            for r in regs_defined(insn):
                held.pop(r, None)
        return async_uses - other_uses

    def _solve_frames(self) -> None:
        """Each function's reach, callees first: a callee's reach below its
        pointer arguments feeds its callers'.  On a cycle (which the verifier
        refuses, and sites on it are refused) the order cannot be kept, so
        the pass repeats, a bounded number of times."""
        order = _callees_first(self.functions)
        for _ in range(CYCLE_ROUNDS if self.recursive else 1):
            changed = False
            for f in order:
                if f.is_program and not _names_frame_pointer(f.section.insns, f.start, f.end):
                    continue    # no value can point into the stack: its reach stays empty
                reach = analyze_frame(f.insns, f.succ, f.is_program, self._call_reach(f))
                if reach != f.reach:
                    f.reach, changed = reach, True
            if not changed:
                return

    def _call_reach(self, f: Function) -> Callable[[Insn, int], int]:
        callbacks = [g for x in f.insns if x.op == LD_IMM64 and (g := self.callee(x)) is not None]

        def reach(insn: Insn, reg: int) -> int:
            if insn.src == PSEUDO_CALL:
                g = self.callee(insn)
                return g.reach.arg_reach(reg) if g is not None else MIN_REACH
            handed = CALLBACK_CTX.get(insn.imm) if insn.src == HELPER_CALL else None
            if handed is not None and handed[0] == reg:
                # the helper hands this pointer to the callback: what the callbacks the function
                # names do below that argument counts here
                return min((g.reach.arg_reach(handed[1]) for g in callbacks), default=0)
            return 0
        return reach

    def function_at(self, first: Insn) -> Function | None:
        """The function whose first instruction is ``first``."""
        return self._by_first.get(id(first))

    def reachable(self, f: Function) -> list[Function]:
        """``f`` and every function it may call (calls and callbacks)."""
        return self._below_set(f)

    def unbounded_in_chain(self, f: Function, extra: Iterable[Function] = ()) -> Function | None:
        """A function on a call chain through ``f`` whose frame cannot be bounded."""
        if not self._any_unbounded:
            return None
        chain = [*self._above_set(f), *self._below_set(f), *(g for e in extra for g in self._below_set(e))]
        return next((g for g in chain if g.reach.unbounded is not None), None)

    def chain_through(self, f: Function) -> list[Function] | None:
        """A recursive cycle reachable from ``f`` or reaching it, if any."""
        if not self.recursive:
            return None
        for g in [*self._below_set(f), *self._above_set(f)]:
            if id(g) in self.recursive:
                return self.recursive[id(g)]
        return None

    def _below_set(self, f: Function) -> list[Function]:
        if id(f) not in self._below_sets:
            self._below_sets[id(f)] = _reachable(f, lambda g: g.callees)
        return self._below_sets[id(f)]

    def _above_set(self, f: Function) -> list[Function]:
        if id(f) not in self._above_sets:
            self._above_sets[id(f)] = _reachable(f, lambda g: self._callers.get(id(g), []))
        return self._above_sets[id(f)]

    def chain_below(self, f: Function, frame: int | None = None, extra: Iterable[Function] = ()) -> int:
        """Stack of ``f`` (with ``frame`` bytes instead of its own) and the
        deepest chain of callees below it (call graph without recursion:
        check :meth:`chain_through` first)."""
        deepest = max((self._depth_below(g) for g in [*f.callees, *extra]), default=0)
        return round_frame(f.frame if frame is None else frame) + deepest

    def _depth_below(self, f: Function) -> int:
        return _longest(f, lambda g: g.callees, self._below)

    def chain_above(self, f: Function) -> int:
        """The deepest stack of callers above ``f`` (0 for a program)."""
        return _longest(f, lambda g: self._callers.get(id(g), []), self._above) - round_frame(f.frame)

    def tail_call_depth(self, f: Function, frame: int, extra: Iterable[Function] = ()) -> tuple[Function, int] | None:
        """The subprogram with a tail call below ``f`` (``frame`` bytes, with
        ``extra`` as more callees) whose callers' frames add up deepest, and
        that sum: the verifier refuses :data:`TAIL_CALL_STACK` or more there."""
        if not self._any_tail_call:
            return None
        starts = [*f.callees, *extra]
        below = {id(g): g for c in starts for g in self._below_set(c)}
        worst: tuple[Function, int] | None = None
        for g in below.values():
            if g.is_program or not g.has_tail_call or g is f:
                continue
            between = max((d for c in starts if (d := _longest_to(c, g)) is not None), default=0)
            depth = self.chain_above(f) + round_frame(frame) + between
            if worst is None or depth > worst[1]:
                worst = (g, depth)
        return worst

    def frames_through(self, f: Function, extra: Iterable[Function] = ()) -> int:
        """Frames on the longest call chain through ``f`` with ``extra`` as
        more callees of ``f`` (the verifier allows :data:`MAX_CALL_FRAMES`)."""
        above = _longest(f, lambda g: self._callers.get(id(g), []), self._frames_above, _one_frame)
        below = max((_longest(g, lambda h: h.callees, self._frames_below, _one_frame)
                     for g in [*f.callees, *extra]), default=0)
        return above + below


def _reachable(f: Function, edges: Callable[[Function], list[Function]]) -> list[Function]:
    seen = {id(f)}
    out, todo = [f], [f]
    while todo:
        for g in edges(todo.pop()):
            if id(g) not in seen:
                seen.add(id(g))
                out.append(g)
                todo.append(g)
    return out


def _longest_to(start: Function, goal: Function) -> int | None:
    """Rounded frames on the deepest path from ``start`` to ``goal`` (``goal``
    excluded), or None if ``start`` does not reach it (iterative, memoised)."""
    def deepest(g: Function, below: list[int | None]) -> int | None:
        reached = [d for d in below if d is not None]
        return round_frame(g.frame) + max(reached) if reached else None

    memo: dict[int, int | None] = {id(goal): 0}
    return _fold_calls(start, lambda g: g.callees, memo, deepest)


def _one_frame(f: Function) -> int:
    return 1


def _longest(f: Function, edges: Callable[[Function], list[Function]], memo: dict[int, int],
             weight: Callable[[Function], int] | None = None) -> int:
    """The largest sum of ``weight`` (default: the rounded frame) along a
    path from ``f`` (``f`` included), on an acyclic graph, without recursion
    (a hostile object may chain thousands of functions); a cycle met anyway
    counts once."""
    weigh = weight or (lambda g: round_frame(g.frame))

    def heaviest(g: Function, below: list[int | None]) -> int:
        return weigh(g) + max((d for d in below if d is not None), default=0)

    return _fold_calls(f, edges, memo, heaviest)


def _fold_calls(start: Function, edges: Callable[[Function], list[Function]], memo: dict[int, T],
                combine: Callable[[Function, list[T | None]], T]) -> T:
    """``memo[id(g)] = combine(g, what its successors hold)`` for every
    function reachable from ``start`` along ``edges``, successors first (an
    iterative depth-first postorder).  A successor still on the path (a
    cycle, or ``g`` itself) holds None; what ``memo`` already holds is kept."""
    stack: list[tuple[Function, bool]] = [(start, False)]
    on_path: set[int] = set()
    while stack:
        g, done = stack.pop()
        if id(g) in memo:
            continue
        if done:
            on_path.discard(id(g))
            memo[id(g)] = combine(g, [memo.get(id(h)) for h in edges(g)])
            continue
        on_path.add(id(g))
        stack.append((g, True))
        stack += [(h, False) for h in edges(g) if id(h) not in memo and id(h) not in on_path]
    return memo[id(start)]


def _callees_first(functions: list[Function]) -> list[Function]:
    """Every function after the functions it calls (a postorder, iterative)."""
    out: list[Function] = []
    seen: set[int] = set()
    for root in functions:
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack: list[tuple[Function, int]] = [(root, 0)]
        while stack:
            g, k = stack.pop()
            if k < len(g.callees):
                stack.append((g, k + 1))
                h = g.callees[k]
                if id(h) not in seen:
                    seen.add(id(h))
                    stack.append((h, 0))
            else:
                out.append(g)
    return out


def _cycles(functions: list[Function]) -> dict[int, list[Function]]:
    """id() of every function on a call cycle -> that cycle (iterative DFS)."""
    out: dict[int, list[Function]] = {}
    state: dict[int, int] = {}            # 1: on the current path, 2: finished
    for root in functions:
        if id(root) in state:
            continue
        path: list[Function] = []
        stack: list[tuple[Function, int]] = [(root, 0)]
        while stack:
            g, k = stack.pop()
            if k == 0:
                state[id(g)] = 1
                path.append(g)
            if k < len(g.callees):
                stack.append((g, k + 1))
                h = g.callees[k]
                if state.get(id(h)) == 1:
                    cycle = path[[id(x) for x in path].index(id(h)):] + [h]
                    for x in cycle:
                        out.setdefault(id(x), cycle)
                elif id(h) not in state:
                    stack.append((h, 0))
            else:
                state[id(g)] = 2
                path.pop()
    return out


def _names_frame_pointer(insns: list[Insn], start: int, end: int) -> bool:
    """Whether an instruction of ``insns[start:end]`` names r10.  A program
    gets no other pointer into the stack (r1 is its context), so one whose
    code never names r10 touches no stack, directly or through a call: its
    frame analysis would find nothing (most sites' programs spill nothing)."""
    for k in range(start, end):
        insn = insns[k]
        if insn.dst == R10 or insn.src == R10:
            return True
    return False


def _check_registers(sec: CodeSection) -> None:
    """Every register an instruction names exists (the verifier refuses the
    program otherwise, and the analyses index by register)."""
    for i, insn in enumerate(sec.insns):
        if 0 <= insn.dst <= R10 and 0 <= insn.src <= R10:
            continue        # the registers it names are these two and fixed ones (r0, r1..r5, r6)
        bad = [r for r in (*regs_used(insn), *regs_defined(insn)) if not 0 <= r <= R10]
        if bad:
            raise InputError(f"{sec.name} insn {i}: r{bad[0]} is not a BPF register (the verifier refuses "
                             "the program)")


def _split_functions(sec: CodeSection, symbols: list[Symbol]) -> list[Function]:
    if not sec.insns:           # clang leaves an empty .text in most objects
        return []
    starts: dict[int, str] = {}
    for s in symbols:
        if s.shndx == sec.index and s.type == STT_FUNC:
            starts.setdefault(s.value, s.name)
    index_of = {insn.orig: i for i, insn in enumerate(sec.insns)}
    firsts = sorted((index_of[v], n) for v, n in starts.items() if v in index_of)
    if not firsts or firsts[0][0] != 0:
        firsts.insert(0, (0, sec.name))
    out = []
    for k, (i, name) in enumerate(firsts):
        end = firsts[k + 1][0] if k + 1 < len(firsts) else len(sec.insns)
        out.append(Function(name, sec, i, end, is_program=sec.name != TEXT_SECTION))
    return out


def _successors(f: Function) -> list[list[int]]:
    insns = f.insns
    pos = {id(x): i for i, x in enumerate(insns)}
    out: list[list[int]] = []
    for i, insn in enumerate(insns):
        nxt = [i + 1] if i + 1 < len(insns) else []
        if insn.is_exit:
            out.append([])
        elif insn.is_branch and not insn.is_nop:
            t = pos.get(id(insn.target)) if insn.target is not None else None
            targets = [t] if t is not None else []
            out.append(targets if insn.is_unconditional else sorted(set(nxt + targets)))
        else:
            out.append(nxt)
    return out


def _uses_defs(insn: Insn, call_uses: Callable[[Insn], int], site_uses: dict[int, int]) -> tuple[int, int]:
    if insn.is_call:
        return call_uses(insn), CLOBBER
    if insn.is_nop:
        return site_uses.get(id(insn), 0), 0
    return regs_masks(insn)


def _liveness(f: Function, call_uses: Callable[[Insn], int], site_uses: dict[int, int]) -> list[int]:
    insns = f.insns
    n = len(insns)
    ud = [_uses_defs(x, call_uses, site_uses) for x in insns]
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, ss in enumerate(f.succ):
        for s in ss:
            preds[s].append(i)
    live_in = [0] * n
    work = Worklist(n, range(n))
    while work:
        i = work.pop()
        out = 0
        for s in f.succ[i]:
            out |= live_in[s]
        uses, defs = ud[i]
        new = uses | (out & ~defs)
        if new != live_in[i]:
            live_in[i] = new
            work.push_all(preds[i])
    return live_in


def live_after(f: Function, local: int) -> int:
    """Registers live right after the instruction at ``local``."""
    out = 0
    for s in f.succ[local]:
        out |= f.live_in[s]
    return out


def _initialised(f: Function) -> list[int]:
    insns = f.insns
    n = len(insns)
    if not n:
        return []
    entry = reg_mask([R1, R10]) if f.is_program else (1 << R10) | f.entry_uses
    full = (1 << REGISTER_COUNT) - 1
    init_in = [full] * n
    init_in[0] = entry
    work = Worklist(n, range(n - 1, -1, -1))
    while work:
        i = work.pop()
        out = _init_transfer(insns[i], init_in[i])
        for s in f.succ[i]:
            new = init_in[s] & out       # must: meet is intersection
            if new != init_in[s]:
                init_in[s] = new
                work.push(s)
    return init_in


# By opcode byte: whether r0 is set and r1..r5 lost after it (a call, a legacy
# packet load); asked once per instruction and site by the initialisation pass.
_SETS_R0_ONLY = tuple((op & CLASS_MASK == JMP and op & OP_MASK == JMP_CALL)
                      or (op & CLASS_MASK == LD and op != LD_IMM64) for op in range(OPCODE_BYTE + 1))


def _init_transfer(insn: Insn, state: int) -> int:
    if _SETS_R0_ONLY[insn.op & OPCODE_BYTE]:
        return (state & ~CLOBBER) | (1 << R0)
    return state | regs_masks(insn)[1]


def initialised_after(f: Function, local: int) -> int:
    """Registers that hold a value on every path right after ``local`` (the
    NOP at a probe site, which changes nothing)."""
    return _init_transfer(f.section.insns[f.start + local], f.init_in[local])   # not f.insns: a copy per site



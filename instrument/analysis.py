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
- **Stack frames**: the lowest r10-relative byte a function touches, through
  r10 itself or a register copied from it, and the call graph, so that a
  grown frame can be checked against the verifier's 512-byte limit for a
  whole call chain (each frame rounded up to 32 bytes, as the verifier does).

Register sets are bit masks (bit n = rn).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bpf_sdt.elf import STT_FUNC, Symbol
from bpf_sdt.helpers import HELPER_ARGS
from bpf_sdt.insn import (
    ALU64,
    ALU_ADD,
    ALU_MOV,
    ALU_SUB,
    ARG_REGS,
    CALLER_SAVED,
    LD,
    LD_IMM64,
    LDX,
    MODE_MASK,
    MODE_MEM,
    MODE_MEMSX,
    OP_MASK,
    PSEUDO_CALL,
    R0,
    R1,
    R10,
    SIZE_BYTES,
    SIZE_MASK,
    SRC_X,
    ST,
    STX,
    CodeSection,
    Insn,
    regs_defined,
    regs_used,
)

MAX_STACK = 512              # MAX_BPF_STACK: one frame, and a whole call chain
FRAME_ROUND = 32             # the verifier rounds each frame up to this
TEXT_SECTION = ".text"
ALL_ARGS = sum(1 << r for r in ARG_REGS)
CLOBBER = sum(1 << r for r in CALLER_SAVED)


def mask(regs: Iterable[int]) -> int:
    m = 0
    for r in regs:
        m |= 1 << r
    return m


def regs_of(m: int) -> list[int]:
    return [r for r in range(11) if m >> r & 1]


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
    frame: int = 0              # bytes of stack it uses below r10
    callees: list[Function] = field(default_factory=list)

    @property
    def insns(self) -> list[Insn]:
        return self.section.insns[self.start:self.end]

    def local_index(self, insn: Insn) -> int:
        for i, x in enumerate(self.insns):
            if x is insn:
                return i
        raise KeyError(insn)


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
            self.functions += _split_functions(sec, symbols)
        for f in self.functions:
            self._by_first[id(f.section.insns[f.start])] = f
            f.succ = _successors(f)
        self._solve_liveness()
        for f in self.functions:
            f.init_in = _initialised(f)
            f.frame = _frame_depth(f)
            f.callees = self._callees(f)
        self._by_name = {}
        for f in reversed(self.functions):
            self._by_name[f.name] = f          # the first of a name wins
        self._above: dict[int, int] = {}
        self._below: dict[int, int] = {}
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
        if insn.src == 0:
            n = HELPER_ARGS.get(insn.imm, len(ARG_REGS))
            return mask(ARG_REGS[:n])
        return ALL_ARGS          # kfuncs: their prototypes live in the kernel's BTF

    def _solve_liveness(self) -> None:
        changed = True
        while changed:           # callees' entry uses feed their callers'
            changed = False
            for f in self.functions:
                f.live_in = _liveness(f, self._call_uses, self.site_uses)
                uses = f.live_in[0] & ALL_ARGS if f.live_in else 0
                if uses != f.entry_uses:
                    f.entry_uses, changed = uses, True

    # --- call graph -------------------------------------------------------

    def _callees(self, f: Function) -> list[Function]:
        out = []
        for insn in f.insns:
            if (insn.is_pseudo_call or insn.op == LD_IMM64) and (g := self.callee(insn)) is not None:
                out.append(g)       # ld_imm64 of a function: a callback (bpf_loop) runs on top
        return out

    def chain_below(self, f: Function, frame: int | None = None, extra: Iterable[Function] = ()) -> int:
        """Stack of ``f`` (with ``frame`` bytes instead of its own) and the
        deepest chain of callees below it."""
        if frame is None and not extra and id(f) in self._below:
            return self._below[id(f)]
        deepest = max((self.chain_below(g) for g in [*f.callees, *extra]), default=0)
        depth = round_frame(f.frame if frame is None else frame) + deepest
        if frame is None and not extra:
            self._below[id(f)] = depth
        return depth

    def chain_above(self, f: Function) -> int:
        """The deepest stack of callers above ``f`` (0 for a program)."""
        if id(f) not in self._above:
            self._above[id(f)] = max((self.chain_above(c) + round_frame(c.frame)
                                      for c in self._callers.get(id(f), [])), default=0)
        return self._above[id(f)]


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
    return mask(regs_used(insn)), mask(regs_defined(insn))


def _liveness(f: Function, call_uses: Callable[[Insn], int], site_uses: dict[int, int]) -> list[int]:
    insns = f.insns
    n = len(insns)
    ud = [_uses_defs(x, call_uses, site_uses) for x in insns]
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, ss in enumerate(f.succ):
        for s in ss:
            preds[s].append(i)
    live_in = [0] * n
    work = list(range(n))
    queued = [True] * n
    while work:
        i = work.pop()
        queued[i] = False
        out = 0
        for s in f.succ[i]:
            out |= live_in[s]
        uses, defs = ud[i]
        new = uses | (out & ~defs)
        if new != live_in[i]:
            live_in[i] = new
            for p in preds[i]:
                if not queued[p]:
                    queued[p] = True
                    work.append(p)
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
    entry = mask([R1, R10]) if f.is_program else (1 << R10) | f.entry_uses
    full = (1 << 11) - 1
    init_in = [full] * n
    init_in[0] = entry
    preds: list[list[int]] = [[] for _ in range(n)]
    for i, ss in enumerate(f.succ):
        for s in ss:
            preds[s].append(i)
    work = list(range(n - 1, -1, -1))
    queued = [True] * n
    while work:
        i = work.pop()
        queued[i] = False
        out = _init_transfer(insns[i], init_in[i])
        for s in f.succ[i]:
            new = init_in[s] & out       # must: meet is intersection
            if new != init_in[s]:
                init_in[s] = new
                if not queued[s]:
                    queued[s] = True
                    work.append(s)
    return init_in


def _init_transfer(insn: Insn, state: int) -> int:
    if insn.is_call or (insn.cls == LD and insn.op != LD_IMM64):
        return (state & ~CLOBBER) | (1 << R0)
    return state | mask(regs_defined(insn))


def initialised_after(f: Function, local: int) -> int:
    """Registers that hold a value on every path right after ``local`` (the
    NOP at a probe site, which changes nothing)."""
    return _init_transfer(f.insns[local], f.init_in[local])


def _frame_depth(f: Function) -> int:
    """Bytes below r10 the function touches.  A register copied from r10 and
    moved by constants is followed; objects on the stack are addressed from
    their lowest byte, so the lowest such address bounds the frame."""
    fp: dict[int, int] = {}          # register -> its offset from r10
    low = 0
    for insn in f.insns:
        c, op = insn.cls, insn.op
        mode = op & MODE_MASK
        if c in (LDX, ST, STX) and mode in (MODE_MEM, MODE_MEMSX, 0xC0):
            base = insn.src if c == LDX else insn.dst
            if base == R10 or base in fp:
                low = min(low, (0 if base == R10 else fp[base]) + insn.off)
        copies_fp = insn.src == R10 or insn.src in fp
        if c == ALU64 and op & OP_MASK == ALU_MOV and op & SRC_X and insn.off == 0 and copies_fp:
            fp[insn.dst] = 0 if insn.src == R10 else fp[insn.src]
            low = min(low, fp[insn.dst])
            continue
        if c == ALU64 and not op & SRC_X and op & OP_MASK in (ALU_ADD, ALU_SUB) and insn.dst in fp:
            fp[insn.dst] += insn.imm if op & OP_MASK == ALU_ADD else -insn.imm
            low = min(low, fp[insn.dst])
            continue
        for r in regs_defined(insn):
            fp.pop(r, None)
    return -low


def access_size(insn: Insn) -> int:
    return SIZE_BYTES[insn.op & SIZE_MASK]


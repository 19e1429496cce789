"""How deep into the stack a function reaches: a forward, flow-sensitive
analysis over its control-flow graph (docs/instrument.md, "Stack frames").

The inserted spills and argument array go just below the function's frame,
so the frame must include every byte the function can touch, however it
computes the address.  The analysis keeps, per register and per 8-byte
stack slot (the verifier keeps pointer types through exactly these spills):

- a **stack pointer**: its offset from a base, as an interval (the verifier's
  view of a variable offset is a range too).  The base is the function's own
  r10, or an argument register at entry (``r1``..``r5``, a pointer that may
  come from the caller's frame);
- a **scalar**: the interval of its 64-bit signed value and of its low 32
  bits as a signed value (so that ``w2 s>>= 26 ; r2 <<= 32 ; r2 s>>= 32``,
  the sign extension clang emits, keeps its range);
- or nothing known.

Joins take the interval hull; a value still changing after
:data:`WIDEN_AFTER` visits of an instruction is widened to unbounded, so
loops terminate.  Every memory access and every call argument that is a
stack pointer lowers its base's reach to the pointer's lowest offset plus
the access's (a helper or callee writes at and above the address it gets;
a BPF callee's own reach below its argument is added).  A stack pointer
that may go below -512, or that is stored where the verifier forgets its
type, makes the frame *unbounded*: the reason and instruction are kept, and
sites that depend on the frame are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bpf_sdt.insn import (
    ALU,
    ALU64,
    ALU_ADD,
    ALU_AND,
    ALU_ARSH,
    ALU_DIV,
    ALU_END,
    ALU_LSH,
    ALU_MOD,
    ALU_MOV,
    ALU_MUL,
    ALU_NEG,
    ALU_OR,
    ALU_RSH,
    ALU_SUB,
    ALU_XOR,
    ARG_REGS,
    CALLER_SAVED,
    JMP32,
    JMP_JEQ,
    JMP_JGE,
    JMP_JGT,
    JMP_JLE,
    JMP_JLT,
    JMP_JNE,
    JMP_JSGE,
    JMP_JSGT,
    JMP_JSLE,
    JMP_JSLT,
    LD,
    LD_IMM64,
    LD_IMM64_CONSTANT,
    LDX,
    MAX_STACK,
    MODE_ATOMIC,
    MODE_MASK,
    MODE_MEM,
    MODE_MEMSX,
    OP_MASK,
    R0,
    R10,
    REG_BITS,
    REGISTER_COUNT,
    S32_MAX,
    S32_MIN,
    S64_MAX,
    S64_MIN,
    SIZE_BYTES,
    SIZE_DW,
    SIZE_MASK,
    SRC_X,
    ST,
    STACK_SLOT,
    STX,
    U32_MAX,
    U64_MAX,
    WORD_BITS,
    Insn,
    regs_defined,
)

from .dataflow import Worklist

WIDEN_AFTER = 8              # visits of one instruction before a still-changing value is widened
FP = R10                     # the base "own frame"; argument bases are their register numbers
END_WIDTHS = (16, 32)        # byte swaps narrower than 64 bits zero-extend
MOVSX_WIDTHS = (8, 16, 32)


@dataclass(frozen=True, slots=True)
class Range:
    lo: int
    hi: int

    def join(self, other: Range) -> Range:
        # Most joins meet a range that already holds the other: keeping the object
        # spares an allocation and lets later joins and comparisons stop at identity.
        lo, hi = self.lo, self.hi
        if lo <= other.lo and other.hi <= hi:
            return self
        if other.lo <= lo and hi <= other.hi:
            return other
        return Range(min(lo, other.lo), max(hi, other.hi))

    @property
    def nonneg(self) -> bool:
        return self.lo >= 0


FULL64 = Range(S64_MIN, S64_MAX)
FULL32 = Range(S32_MIN, S32_MAX)
U32_RANGE = Range(0, U32_MAX)


def _fit64(lo: int, hi: int) -> Range:
    return Range(lo, hi) if S64_MIN <= lo <= hi <= S64_MAX else FULL64


def _fit32(lo: int, hi: int) -> Range:
    return Range(lo, hi) if S32_MIN <= lo <= hi <= S32_MAX else FULL32


def _low32(r: Range) -> Range:
    """The low 32 bits, read as signed, of a value in ``r``."""
    return r if r.lo >= S32_MIN and r.hi <= S32_MAX else FULL32


def _zero_extended(w: Range) -> Range:
    """The 64-bit value a 32-bit ALU result ``w`` (signed view) leaves."""
    return w if w.nonneg else U32_RANGE


@dataclass(frozen=True, slots=True)
class Scalar:
    r: Range                 # the 64-bit value, signed
    w: Range                 # its low 32 bits, signed

    @staticmethod
    def of(r: Range) -> Scalar:
        return Scalar(r, _low32(r))

    @staticmethod
    def of32(w: Range) -> Scalar:
        return Scalar(_zero_extended(w), w)

    def join(self, other: Scalar) -> Scalar:
        r, w = self.r.join(other.r), self.w.join(other.w)
        if r is self.r and w is self.w:
            return self
        if r is other.r and w is other.w:
            return other
        return Scalar(r, w)


@dataclass(frozen=True, slots=True)
class StackPtr:
    base: int                # FP, or the argument register it came in
    off: Range               # offset from the base

    def join(self, other: StackPtr) -> StackPtr:
        off = self.off.join(other.off)
        return self if off is self.off else other if off is other.off else StackPtr(self.base, off)


Value = Scalar | StackPtr | None
UNKNOWN = Scalar(FULL64, FULL32)


def _join_value(a: Value, b: Value) -> Value:
    if a is b:
        return a                 # one value reached both ways (the common case)
    if a is None or b is None:
        return None
    if isinstance(a, Scalar) and isinstance(b, Scalar):
        return a.join(b)
    if isinstance(a, StackPtr) and isinstance(b, StackPtr) and a.base == b.base:
        return a.join(b)
    if isinstance(a, StackPtr) and isinstance(b, StackPtr):
        return StackPtr(FP, Range(S64_MIN, S64_MAX))   # two bases in one register: no bound
    # a stack pointer on one path only: on the other it reaches no stack, so the pointer's
    # reach is the register's (the verifier checks each path on its own)
    return a if isinstance(a, StackPtr) else b if isinstance(b, StackPtr) else None


@dataclass(frozen=True, slots=True)
class State:
    regs: tuple[Value, ...]
    slots: tuple[tuple[int, Value], ...] = ()        # r10-relative slot offset -> what was spilled there

    def slot_map(self) -> dict[int, Value]:
        return dict(self.slots)


def _join_state(a: State, b: State) -> State:
    """The hull of two states; ``a`` itself when it already holds ``b`` (so
    that the caller's comparison with ``a`` stops at identity)."""
    regs = tuple([_join_value(x, y) for x, y in zip(a.regs, b.regs, strict=True)])
    same_regs = all(x is y for x, y in zip(regs, a.regs, strict=True))
    if (a.slots is b.slots or a.slots == b.slots) and all(v is not None for _, v in a.slots):
        # the same spills on both paths: each slot joins with itself, so it is kept (a slot
        # that holds nothing known is dropped, below)
        return a if same_regs else State(regs, a.slots)
    sa, sb = a.slot_map(), b.slot_map()
    slots = {}
    for off in sa.keys() | sb.keys():
        # a slot spilled on one path only may hold anything on the other: keep a pointer, as
        # a possible one (its reach counts), and forget a scalar
        x, y = sa.get(off), sb.get(off)
        v = _join_value(x, y) if off in sa and off in sb else (x if isinstance(x, StackPtr) else
                                                             y if isinstance(y, StackPtr) else None)
        if v is not None:
            slots[off] = v
    return State(regs, tuple(sorted(slots.items())))


@dataclass
class Reach:
    """What one function's analysis found."""

    lowest: dict[int, int] = field(default_factory=dict)   # base -> lowest offset touched (<= 0)
    unbounded: tuple[int, str] | None = None               # local insn index, why

    def touch(self, base: int, off: int, at: int, why: str) -> None:
        if off < -MAX_STACK:
            if self.unbounded is None and base == FP:
                self.unbounded = (at, why)
            off = -MAX_STACK
        self.lowest[base] = min(self.lowest.get(base, 0), off)

    @property
    def frame(self) -> int:
        """Bytes below r10 the function may touch (all 512 when unbounded)."""
        return MAX_STACK if self.unbounded else -self.lowest.get(FP, 0)

    def arg_reach(self, reg: int) -> int:
        """Lowest offset from argument ``reg`` the function may touch (<= 0)."""
        return self.lowest.get(reg, 0)


# What a call does with a stack pointer argument: the lowest offset it adds (0: helpers and
# kfuncs write at and above the address they get; a BPF callee reaches its own analysis's).
CallReach = Callable[[Insn, int], int]


def analyze_frame(insns: Sequence[Insn], succ: Sequence[Sequence[int]], is_program: bool,
                  call_reach: CallReach) -> Reach:
    """The function's reach (see the module docstring)."""
    reach = Reach()
    n = len(insns)
    if not n:
        return reach
    pos = {id(x): i for i, x in enumerate(insns)}
    thresholds = _thresholds(insns)
    entry_regs: list[Value] = [None] * REGISTER_COUNT
    entry_regs[FP] = StackPtr(FP, Range(0, 0))
    if not is_program:
        for r in ARG_REGS:
            entry_regs[r] = StackPtr(r, Range(0, 0))     # may point into the caller's frame
    states: list[State | None] = [None] * n
    states[0] = State(tuple(entry_regs))
    visits = [0] * n
    work = Worklist(n, [0])
    while work:
        i = work.pop()
        st = states[i]
        assert st is not None
        insn = insns[i]
        out = _transfer(insn, st, i, reach, call_reach)
        branch = insn.is_branch
        target = pos.get(id(insn.target)) if branch and insn.target is not None else None
        # only a branch's edges carry a condition (a conditional goto +0: one edge, none known)
        conditional = branch and target != i + 1
        for s in succ[i]:
            edge = _refine(insn, out, taken=s == target) if conditional else out
            if edge is None:
                continue                     # this edge cannot be taken with these ranges
            old = states[s]
            new = edge if old is None else _join_state(old, edge)
            if old is not None and visits[s] >= WIDEN_AFTER:
                new = _widen(old, new, thresholds)
            if new != old:
                states[s] = new
                visits[s] += 1
                work.push(s)
    return reach


# --- branches: each edge knows its condition ---------------------------------------

# Only these jump operations narrow a range: each with its negation, and the one
# it becomes when its operands swap sides.
_NEGATE = {JMP_JEQ: JMP_JNE, JMP_JNE: JMP_JEQ, JMP_JGT: JMP_JLE, JMP_JLE: JMP_JGT,
           JMP_JGE: JMP_JLT, JMP_JLT: JMP_JGE, JMP_JSGT: JMP_JSLE, JMP_JSLE: JMP_JSGT,
           JMP_JSGE: JMP_JSLT, JMP_JSLT: JMP_JSGE}
_SWAP = {JMP_JEQ: JMP_JEQ, JMP_JNE: JMP_JNE, JMP_JGT: JMP_JLT, JMP_JLT: JMP_JGT,   # k <op> x == x <swap> k
         JMP_JGE: JMP_JLE, JMP_JLE: JMP_JGE, JMP_JSGT: JMP_JSLT, JMP_JSLT: JMP_JSGT,
         JMP_JSGE: JMP_JSLE, JMP_JSLE: JMP_JSGE}


def _refine(insn: Insn, st: State, taken: bool) -> State | None:
    """The state on one edge of a conditional jump of a register against a
    constant (as the verifier narrows it); None if the edge is impossible."""
    op = insn.op & OP_MASK
    if not insn.is_branch or insn.is_unconditional or op not in _NEGATE:
        return st
    word = insn.cls == JMP32                # compares the low 32 bits
    cond = op if taken else _NEGATE[op]
    reg = insn.dst
    if insn.op & SRC_X:
        const_of = _constant(st.regs[insn.src], word)
        if const_of is None:                 # `if k > rX`: the constant on the left
            const_of, reg, cond = _constant(st.regs[insn.dst], word), insn.src, _SWAP[cond]
        if const_of is None:
            return st
        const = const_of
    else:
        const = insn.imm
    v = st.regs[reg]
    if not isinstance(v, Scalar):
        return st
    narrowed = _narrow(v.w if word else v.r, cond, const)
    if narrowed is None:
        return None
    if not word:
        value = Scalar.of(narrowed)
    elif U32_RANGE.lo <= v.r.lo and v.r.hi <= U32_RANGE.hi and narrowed.nonneg:
        value = Scalar.of32(narrowed)       # a zero-extended register: the word is the value
    else:
        value = Scalar(v.r, narrowed)
    regs = list(st.regs)
    regs[reg] = value
    return State(tuple(regs), st.slots)


def _constant(v: Value, word: bool) -> int | None:
    if not isinstance(v, Scalar):
        return None
    known = v.w if word else v.r
    return known.lo if known.lo == known.hi else None


def _narrow(r: Range, cond: int, k: int) -> Range | None:
    """``r`` where ``value <cond> k`` holds (unsigned conditions only for a
    non-negative range and constant, where they agree with the signed ones)."""
    unsigned = cond in (JMP_JGT, JMP_JGE, JMP_JLT, JMP_JLE)
    if unsigned and not (r.nonneg and k >= 0):
        if cond in (JMP_JLT, JMP_JLE) and k >= 0:       # unsigned < k: 0 <= value < k, whatever r says
            lo, hi = 0, k - 1 if cond == JMP_JLT else k
            return Range(lo, hi) if lo <= hi else None
        return r
    lo, hi = r.lo, r.hi
    if cond == JMP_JEQ:
        lo, hi = max(lo, k), min(hi, k)
    elif cond in (JMP_JGT, JMP_JSGT):
        lo = max(lo, k + 1)
    elif cond in (JMP_JGE, JMP_JSGE):
        lo = max(lo, k)
    elif cond in (JMP_JLT, JMP_JSLT):
        hi = min(hi, k - 1)
    elif cond in (JMP_JLE, JMP_JSLE):
        hi = min(hi, k)
    elif cond == JMP_JNE and lo == hi == k:
        return None
    return Range(lo, hi) if lo <= hi else None


# --- loops: widening to the function's own constants ----------------------------------


def _thresholds(insns: Sequence[Insn]) -> list[int]:
    """Bounds a widened range jumps to: the constants the code compares with
    (and their neighbours), the stack limit, and the integer type limits."""
    out = {S64_MIN, S64_MAX, S32_MIN, S32_MAX, U32_MAX, 0, -MAX_STACK, MAX_STACK}
    for x in insns:
        if x.is_branch or (x.cls in (ALU, ALU64) and not x.op & SRC_X):
            out |= {x.imm - 1, x.imm, x.imm + 1}
    return sorted(out)


def _widen_range(old: Range, new: Range, thresholds: list[int]) -> Range:
    lo = new.lo if new.lo >= old.lo else max((t for t in thresholds if t <= new.lo), default=S64_MIN)
    hi = new.hi if new.hi <= old.hi else min((t for t in thresholds if t >= new.hi), default=S64_MAX)
    return Range(lo, hi)


def _widen(old: State, new: State, thresholds: list[int]) -> State:
    def widen(a: Value, b: Value) -> Value:
        if isinstance(a, StackPtr) and isinstance(b, StackPtr) and a.base == b.base:
            return StackPtr(b.base, _widen_range(a.off, b.off, thresholds))
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return Scalar(_widen_range(a.r, b.r, thresholds), _widen_range(a.w, b.w, thresholds))
        return b
    om = old.slot_map()
    return State(tuple(widen(a, b) for a, b in zip(old.regs, new.regs, strict=True)),
                 tuple((k, widen(om.get(k), v)) for k, v in new.slots))


def _transfer(insn: Insn, st: State, at: int, reach: Reach, call_reach: CallReach) -> State:
    if insn.is_jmp_class and not insn.is_call:
        return st                        # jumps and exits change nothing (edges narrow: _refine)
    regs = list(st.regs)
    c, op = insn.cls, insn.op
    mode = op & MODE_MASK
    if c in (ALU, ALU64):                # the common case: registers only
        regs[insn.dst] = _alu(insn, regs, at, reach)
        return State(tuple(regs), st.slots)
    if c == LDX and mode in (MODE_MEM, MODE_MEMSX):     # a load changes no spilled slot
        regs[insn.dst] = _load(insn, regs, st, at, reach)
        return State(tuple(regs), st.slots)
    slots = st.slot_map()
    if insn.is_call:
        _call(insn, regs, slots, at, reach, call_reach)
    elif op == LD_IMM64:
        value = (insn.imm & U32_MAX) | (insn.imm_hi & U32_MAX) << WORD_BITS
        signed = value - (U64_MAX + 1) if value > S64_MAX else value
        regs[insn.dst] = Scalar.of(Range(signed, signed)) if insn.src == LD_IMM64_CONSTANT else None
    elif c in (ST, STX) and mode in (MODE_MEM, MODE_ATOMIC):
        _store(insn, regs, slots, at, reach)
        if c == STX and mode == MODE_ATOMIC:
            for r in regs_defined(insn):
                regs[r] = None
    elif c == LD:                        # legacy packet loads clobber like a call
        for r in CALLER_SAVED:
            regs[r] = None
        regs[R0] = UNKNOWN
    return State(tuple(regs), tuple(sorted(slots.items())))


def _call(insn: Insn, regs: list[Value], slots: dict[int, Value], at: int, reach: Reach,
          call_reach: CallReach) -> None:
    for r in ARG_REGS:
        p = regs[r]
        if isinstance(p, StackPtr):
            below = call_reach(insn, r)
            reach.touch(p.base, p.off.lo + below, at,
                        f"insn {at} passes r{r}, a stack pointer that may reach below -{MAX_STACK}, to a call")
            if p.base == FP:            # what the callee writes there is no spilled register any more
                for k in [k for k in slots if k + STACK_SLOT > p.off.lo + below]:
                    del slots[k]
    for r in CALLER_SAVED:
        regs[r] = None
    regs[R0] = UNKNOWN


def _access(base: Value, insn: Insn, at: int, reach: Reach, what: str) -> None:
    if isinstance(base, StackPtr):
        off = base.off.lo + insn.off
        # the reason is only kept for an offset below the stack: worded only then (every access
        # through a stack pointer comes here)
        why = (f"insn {at} {what} through a stack pointer whose offset may be below -{MAX_STACK} "
               "(a variable offset that is not known to be non-negative)") if off < -MAX_STACK else ""
        reach.touch(base.base, off, at, why)


def _exact_slot(p: Value, off: int) -> int | None:
    if isinstance(p, StackPtr) and p.base == FP and p.off.lo == p.off.hi and (p.off.lo + off) % STACK_SLOT == 0:
        return p.off.lo + off
    return None


def _load(insn: Insn, regs: list[Value], st: State, at: int, reach: Reach) -> Value:
    base = regs[insn.src]
    _access(base, insn, at, reach, "reads")
    size = SIZE_BYTES[insn.op & SIZE_MASK]
    if insn.op & SIZE_MASK == SIZE_DW:
        slot = _exact_slot(base, insn.off)
        if slot is not None:             # a fill: what was spilled there, if known
            slots = st.slot_map()
            if slot in slots:
                return slots[slot]
        return UNKNOWN
    return (_SIGN_EXTENDED_LOAD if insn.op & MODE_MASK == MODE_MEMSX else _ZERO_EXTENDED_LOAD)[size]


def _loaded(size: int, signed: bool) -> Scalar:
    """What a load of ``size`` bytes that is not a known fill leaves in its register."""
    bits = 8 * size
    if signed:
        return Scalar.of(Range(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))
    return Scalar.of(Range(0, (1 << bits) - 1))


# by load size (values are immutable, so every load of a size shares one)
_ZERO_EXTENDED_LOAD = {size: _loaded(size, signed=False) for size in SIZE_BYTES.values()}
_SIGN_EXTENDED_LOAD = {size: _loaded(size, signed=True) for size in SIZE_BYTES.values()}


def _store(insn: Insn, regs: list[Value], slots: dict[int, Value], at: int, reach: Reach) -> None:
    base = regs[insn.dst]
    _access(base, insn, at, reach, "writes")
    value = regs[insn.src] if insn.cls == STX else Scalar.of(Range(insn.imm, insn.imm))
    is_spill = insn.cls == STX and insn.op & MODE_MASK == MODE_MEM and insn.op & SIZE_MASK == SIZE_DW
    slot = _exact_slot(base, insn.off)
    if isinstance(base, StackPtr) and base.base == FP:
        size = SIZE_BYTES[insn.op & SIZE_MASK]
        lo = base.off.lo + insn.off
        hi = base.off.hi + insn.off + size if base.off.hi < S64_MAX - STACK_SLOT else S64_MAX
        for k in [k for k in slots if k < hi and k + STACK_SLOT > lo]:
            del slots[k]
        if slot is not None and (is_spill or insn.cls == ST) and insn.op & SIZE_MASK == SIZE_DW:
            slots[slot] = value
            return
    if isinstance(value, StackPtr) and insn.cls == STX:
        # stored where the verifier (and this analysis) forgets it is a pointer: what is done
        # through it later cannot be followed
        reach.touch(value.base, S64_MIN, at, f"insn {at} stores a stack pointer where its later "
                    "uses cannot be followed (not an 8-byte spill at a fixed stack offset)")


def _alu(insn: Insn, regs: list[Value], at: int, reach: Reach) -> Value:
    op = insn.op & OP_MASK
    is64 = insn.cls == ALU64
    dst = regs[insn.dst]
    if op == ALU_END:
        return Scalar.of(Range(0, (1 << insn.imm) - 1)) if insn.imm in END_WIDTHS else UNKNOWN
    src: Value = regs[insn.src] if insn.op & SRC_X else Scalar.of(Range(insn.imm, insn.imm))
    if op == ALU_MOV:
        return _mov(insn, src, is64)
    if is64 and isinstance(dst, StackPtr) and op in (ALU_ADD, ALU_SUB):
        return _pointer_arith(insn, op, dst, src, at, reach)
    if is64 and isinstance(src, StackPtr) and op == ALU_ADD:      # rX += r10: a pointer too
        return _pointer_arith(insn, op, src, dst, at, reach)
    # Any other operation on a pointer is one the verifier refuses, so where the program is
    # valid the register holds a scalar there (an argument, or a register that is a stack
    # pointer on another path only)
    if isinstance(dst, StackPtr):
        dst = UNKNOWN
    if isinstance(src, StackPtr):
        src = UNKNOWN
    if dst is None or src is None:
        return Scalar.of32(FULL32) if not is64 else UNKNOWN
    if is64 and op == ALU_LSH and src.r == Range(WORD_BITS, WORD_BITS):
        return Scalar.of(Range(dst.w.lo << WORD_BITS, dst.w.hi << WORD_BITS))   # exact: the low word moved up
    if is64:
        return Scalar.of(_arith(op, dst.r, src.r, insn.off, REG_BITS))
    return Scalar.of32(_arith(op, dst.w, src.w, insn.off, WORD_BITS))


def _mov(insn: Insn, src: Value, is64: bool) -> Value:
    if insn.off:                              # movsx from 8, 16 or 32 bits
        bits = insn.off
        if bits not in MOVSX_WIDTHS:
            return UNKNOWN if is64 else Scalar.of32(FULL32)
        lim = Range(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        v = src.r if isinstance(src, Scalar) else FULL64
        r = v if lim.lo <= v.lo and v.hi <= lim.hi else lim
        return Scalar.of(r) if is64 else Scalar.of32(_low32(r))
    if is64:
        return src
    if isinstance(src, Scalar):
        return Scalar.of32(src.w)
    return Scalar.of32(FULL32)


def _pointer_arith(insn: Insn, op: int, p: StackPtr, v: Value, at: int, reach: Reach) -> Value:
    if not isinstance(v, Scalar):
        reach.touch(p.base, S64_MIN, at, f"insn {at} computes a stack address the analysis cannot bound")
        return None
    d = v.r if op == ALU_ADD else Range(-v.r.hi, -v.r.lo) if v.r.lo > S64_MIN else FULL64
    lo = p.off.lo + d.lo if d.lo > S64_MIN and p.off.lo > S64_MIN else S64_MIN
    hi = p.off.hi + d.hi if d.hi < S64_MAX and p.off.hi < S64_MAX else S64_MAX
    if lo < -MAX_STACK:
        reach.touch(p.base, lo, at, f"insn {at} moves a stack pointer by a value that may be negative "
                    f"(or below -{MAX_STACK} in all), so the frame cannot be bounded")
    return StackPtr(p.base, Range(max(lo, S64_MIN), hi))


def _arith(op: int, a: Range, b: Range, off: int, bits: int) -> Range:
    """Interval of ``a <op> b`` in ``bits``-bit signed arithmetic (full on overflow)."""
    fit = _fit64 if bits == REG_BITS else _fit32
    full = FULL64 if bits == REG_BITS else FULL32
    umax = U64_MAX if bits == REG_BITS else U32_MAX
    if op == ALU_ADD:
        return fit(a.lo + b.lo, a.hi + b.hi)
    if op == ALU_SUB:
        return fit(a.lo - b.hi, a.hi - b.lo)
    if op == ALU_MUL and a.nonneg and b.nonneg:
        return fit(a.lo * b.lo, a.hi * b.hi)
    if op == ALU_AND:
        if a.nonneg or b.nonneg:
            return Range(0, min(x.hi for x in (a, b) if x.nonneg))
        return full
    if op == ALU_OR and b.lo == b.hi < 0:                 # the constant's high bits stay set
        return Range(b.lo, -1)
    if op == ALU_XOR and b.lo == b.hi < 0 and a.nonneg:   # ~(a ^ ~b): a negative value as wide as both
        return Range(-(1 << max(a.hi, ~b.lo).bit_length()), -1)
    if op in (ALU_OR, ALU_XOR) and a.nonneg and b.nonneg:
        return Range(0, (1 << max(a.hi, b.hi).bit_length()) - 1)
    if op in (ALU_LSH, ALU_RSH, ALU_ARSH) and b.lo == b.hi and 0 <= b.lo < bits:
        k = b.lo
        if op == ALU_LSH:
            return fit(a.lo << k, a.hi << k)
        if op == ALU_ARSH:
            return Range(a.lo >> k, a.hi >> k)
        if a.nonneg or not k:
            return Range(a.lo >> k, a.hi >> k)
        return Range(0, umax >> k)
    if op in (ALU_DIV, ALU_MOD) and not off and b.nonneg and b.lo > 0:
        if op == ALU_MOD:
            return Range(0, min(b.hi - 1, a.hi) if a.nonneg else b.hi - 1)
        return Range(a.lo // b.hi, a.hi // b.lo) if a.nonneg else Range(0, umax // b.lo)
    if op == ALU_NEG:
        return fit(-a.hi, -a.lo)
    return full

"""The instructions inserted at an enabled probe site (docs/instrument.md).

They go right after the site's ``goto +0``, which stays, so the note still
describes the NOP and the object can be checked and instrumented again.
Branches to the NOP run them; branches past it skip them.  With ``B`` the
bytes of stack the function already uses (rounded up to 8), ``S`` the
caller-saved registers live after the site, ``N`` the probe's arguments and
``A = B + 8*|S| + 8*N`` (so the argument array starts at ``r10 - A``):

    *(u64 *)(r10 - (B + 8k)) = rS_k        for each saved register (spill)
    *(u64 *)(r10 - A + 8j) = rK            argument j held whole in rK
    r0 = rK ; <convert> ; *(u64 *)(r10 - A + 8j) = r0     a narrower type
    *(u64 *)(r10 - A + 8j) = imm           an immediate, converted here
    r0 = *(uM *)(r10 + off) ; <convert> ; *(u64 *)(r10 - A + 8j) = r0   a stack slot
    *(u64 *)(r10 - A - 8) = site id        only for the recorder
    r1 = r10 ; r1 += -A ; call observer    once per observer, in order (the recorder:
                                           r1 += -A - 8, a struct {site id, args[N]})
    rS_k = *(u64 *)(r10 - (B + 8k))        fill what was spilled

``<convert>`` turns the raw 64-bit value into the declared type, as a
trampoline does: ``w0 = wK`` for a 32-bit unsigned type, ``r0 &= 2^n-1``
for an n-bit unsigned one narrower than 32 bits, ``r0 <<= 64-n ; r0 >>= 64-n``
for a wider one (a BTF integer may have any size), ``r0 <<= 64-n ; r0 s>>= 64-n``
for an n-bit signed one.  r0 is the only scratch register: it is spilled first when
it is live, and an argument held in r0 is converted before r0 is reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from bpf_sdt.argtype import ArgType
from bpf_sdt.elf import R_BPF_64_32
from bpf_sdt.insn import (
    ALU_ADD,
    ALU_AND,
    ALU_ARSH,
    ALU_LSH,
    ALU_RSH,
    INSN_SIZE,
    R0,
    R1,
    R10,
    REG_BITS,
    S32_MAX,
    S32_MIN,
    SIZE_DW,
    SIZE_OF_BYTES,
    STACK_SLOT,
    U32_MAX,
    Insn,
    InsnReloc,
    alu64_imm,
    ld_imm64,
    load,
    mov32_imm,
    mov32_reg,
    mov64_reg,
    pseudo_call,
    s32,
    store_imm,
    store_reg,
)
from bpf_sdt.model import ArgLocation
from bpf_sdt.recorder_abi import ARG_SLOT, args_struct, member_offset

MASK_IMM_BITS = 31            # widest mask an ALU immediate holds (it is sign-extended from 32 bits)


@dataclass(frozen=True)
class Observer:
    """A call target: the observer's first instruction and, for calls from
    another section, the symbol a relocation names (its code section's
    STT_SECTION symbol, with the callee in the immediate, as clang does)."""

    name: str
    entry: Insn
    symbol: int
    at_site_id: bool = False     # r1 points at the site id, the arguments after it (the global recorder)


# The recorder's argument block (recorder_abi.args_struct): the site id, then
# one ARG_SLOT per argument; observers get the arguments alone (BPF_PROG's
# u64 array), which is the same block from its "args" member on.
_ARGS_AFTER_SITE_ID = member_offset(args_struct(1), "args") - member_offset(args_struct(1), "site")


@dataclass(frozen=True)
class Frame:
    """Where a site's spills, argument array and site id live."""

    base: int                    # bytes the function already uses below r10
    saved: tuple[int, ...]       # caller-saved registers spilled around the call
    nargs: int

    def spill(self, k: int) -> int:
        return -(self.base + STACK_SLOT * (k + 1))

    # Kept once worked out: a site's sequence asks them several times, and
    # sites of one function share their frame (instrument keeps one per shape).
    @cached_property
    def args(self) -> int:
        """r10-relative offset of argument 0 (what r1 points to)."""
        return -(self.base + STACK_SLOT * len(self.saved) + ARG_SLOT * self.nargs)

    @cached_property
    def site_id(self) -> int:
        return self.args - _ARGS_AFTER_SITE_ID

    @property
    def depth(self) -> int:
        return -self.site_id


def needs_conversion(t: ArgType) -> bool:
    return t.bits < REG_BITS


def _convert_r0(t: ArgType, src: int) -> list[Insn]:
    """r0 = the value of ``src`` converted to ``t`` (src may be r0)."""
    bits = t.bits
    if not t.signed and bits == 32:
        return [mov32_reg(R0, src)]
    out = [] if src == R0 else [mov64_reg(R0, src)]
    if not t.signed and bits <= MASK_IMM_BITS:
        return out + [alu64_imm(ALU_AND, R0, (1 << bits) - 1)]
    shift = REG_BITS - bits         # the type's bits moved to the top and back, zero- or sign-filling
    return out + [alu64_imm(ALU_LSH, R0, shift), alu64_imm(ALU_ARSH if t.signed else ALU_RSH, R0, shift)]


def _store_constant(off: int, value: int) -> list[Insn]:
    """``*(u64 *)(r10 + off) = value`` for any 64-bit value."""
    if S32_MIN <= value <= S32_MAX:
        return [store_imm(SIZE_DW, R10, off, value)]
    if 0 <= value <= U32_MAX:     # w0 = imm zero-extends
        return [mov32_imm(R0, s32(value)), store_reg(SIZE_DW, R10, off, R0)]
    return [ld_imm64(R0, value), store_reg(SIZE_DW, R10, off, R0)]


def _load_stack_arg(loc: ArgLocation, t: ArgType, off: int) -> list[Insn]:
    size = loc.size or STACK_SLOT
    out = [load(SIZE_OF_BYTES[size], R0, R10, loc.offset or 0)]
    # A load zero-extends: an unsigned type at least as wide as the load is exact.
    if needs_conversion(t) and (t.signed or size > t.size):
        out += _convert_r0(t, R0)
    return out + [store_reg(SIZE_DW, R10, off, R0)]


def site_sequence(args: Sequence[ArgLocation], types: Sequence[ArgType], frame: Frame,
                  observers: Sequence[Observer], site_id: int | None, cross_section: bool) -> list[Insn]:
    """The instructions for one enabled site (see the module docstring);
    instrument derives sites of one shape from the first one's (SequenceShapes)."""
    return [*_stores(args, types, frame), *_site_id(frame, site_id),
            *_calls_and_fills(frame, observers, cross_section)]


def _stores(args: Sequence[ArgLocation], types: Sequence[ArgType], frame: Frame) -> list[Insn]:
    """The spills, then each argument stored into the array."""
    seq = [store_reg(SIZE_DW, R10, frame.spill(k), r) for k, r in enumerate(frame.saved)]
    first = frame.args
    narrow: list[tuple[int, int, ArgType]] = []
    for j, (loc, t) in enumerate(zip(args, types, strict=True)):
        if loc.kind == "reg" and loc.reg is not None:
            if needs_conversion(t):
                narrow.append((j, loc.reg, t))
            else:
                seq.append(store_reg(SIZE_DW, R10, first + ARG_SLOT * j, loc.reg))
    for j, reg, t in sorted(narrow, key=lambda n: n[1] != R0):   # r0's own value first
        seq += _convert_r0(t, reg) + [store_reg(SIZE_DW, R10, first + ARG_SLOT * j, R0)]
    for j, (loc, t) in enumerate(zip(args, types, strict=True)):
        off = first + ARG_SLOT * j
        if loc.kind == "imm":
            seq += _store_constant(off, t.convert(loc.value or 0))
        elif loc.kind == "stack":
            seq += _load_stack_arg(loc, t, off)
    return seq


def _site_id(frame: Frame, site_id: int | None) -> list[Insn]:
    return [] if site_id is None else _store_constant(frame.site_id, site_id)


# A call is three instructions, ``r1 = r10 ; r1 += off ; call``.
CALL_LENGTH = 3


def call_ends(frame: Frame, observers: int) -> range:
    """Bytes from each observer's ``r1 = r10`` to the end of its site's
    sequence, in call order: the calls and the fills after them are one
    slot each, so this holds whatever the stores before them are (an
    ``ld_imm64`` is two)."""
    last = INSN_SIZE * (len(frame.saved) + CALL_LENGTH)
    return range(last + INSN_SIZE * CALL_LENGTH * (observers - 1), last - 1, -INSN_SIZE * CALL_LENGTH)


def _calls_and_fills(frame: Frame, observers: Sequence[Observer], cross_section: bool) -> list[Insn]:
    return [*_calls(frame, observers, cross_section), *_fills(frame)]


def _calls(frame: Frame, observers: Sequence[Observer], cross_section: bool) -> list[Insn]:
    seq = []
    for obs in observers:
        seq += [mov64_reg(R1, R10), _call_argument(frame, obs), _call(obs, cross_section)]
    return seq


def _call_argument(frame: Frame, obs: Observer) -> Insn:
    """``r1 += off``: r1 = r10 made the pointer to what the observer reads."""
    return alu64_imm(ALU_ADD, R1, frame.site_id if obs.at_site_id else frame.args)


def _fills(frame: Frame) -> list[Insn]:
    return [load(SIZE_DW, r, R10, frame.spill(k)) for k, r in enumerate(frame.saved)]


def _call(obs: Observer, cross_section: bool) -> Insn:
    """A call from another section names its callee through a relocation; one
    in the callee's section is relative (no relocation)."""
    call = pseudo_call(obs.entry)
    call.reloc = InsnReloc(R_BPF_64_32, obs.symbol) if cross_section else None
    return call


class Shape(NamedTuple):
    """What the sites of one shape share: every instruction but the site-id
    store, the calls included (encoding derives a call's immediate where it
    packs it, and its relocation is a value)."""

    stores: tuple[Insn, ...]                # spills and argument stores, before the site id
    calls_and_fills: tuple[Insn, ...]       # after it

    def sequence(self, frame: Frame, site_id: int | None) -> list[Insn]:
        """A site's sequence: the shape's instructions around its own site-id store."""
        out: list[Insn] = []
        self.extend(out, frame, site_id)
        return out

    def extend(self, out: list[Insn], frame: Frame, site_id: int | None) -> None:
        """:meth:`sequence` appended to ``out``."""
        out += self.stores
        out += _site_id(frame, site_id)
        out += self.calls_and_fills


_ShapeKey = tuple[tuple[ArgLocation, ...], int, Frame, tuple[int, ...], bool]


class SequenceShapes:
    """The sequences of one instrument run by shape: sites with the same
    argument locations and types, frame, observers and section get the same
    instructions but for the site id, so the first such site's are kept and
    the others share them.  One object at every site of its shape spares
    most of a site's new instructions, their allocation and their memory:
    encoding reads an instruction's fields and derives a call's target
    from where it packs it, and positions are asked only of instructions
    that stand once (``.bpf_sdt_calls`` records where each call's ``r1 =
    r10`` is relative to the instruction after the site's sequence: see
    :func:`call_ends`).  Each site builds its own site-id store.  For one
    run: the observers' entries are that run's instructions.  At most
    :data:`MAX_SHAPES` are kept, so a program of all different sites costs
    no more than without."""

    MAX_SHAPES = 4096

    def __init__(self) -> None:
        self._shapes: dict[_ShapeKey, Shape] = {}
        self._tokens: dict[int, tuple[object, int]] = {}

    def _token(self, obj: object) -> int:
        """A number for one types tuple or observer of this run: the sites share
        these objects, whose own hashes (of frozen dataclasses) cost more to
        compute than everything else in the key.  The object is kept with
        its number, so its id() is not reused while the shapes live."""
        known = self._tokens.get(id(obj))
        if known is None:
            known = self._tokens[id(obj)] = (obj, len(self._tokens))
        return known[1]

    def shape(self, args: Sequence[ArgLocation], types: Sequence[ArgType], frame: Frame,
              observers: Sequence[Observer], cross_section: bool) -> Shape:
        """The shape of sites with these arguments, frame, observers and
        section (the one kept, when one is)."""
        key = (tuple(args), self._token(types), frame, tuple([self._token(o) for o in observers]), cross_section)
        shape = self._shapes.get(key)
        if shape is None:
            shape = Shape(tuple(_stores(args, types, frame)), tuple(_calls_and_fills(frame, observers, cross_section)))
            if len(self._shapes) < self.MAX_SHAPES:
                self._shapes[key] = shape
        return shape

"""BPF instructions as objects that carry their references.

A decoded code section is a list of :class:`Insn`.  Everything that names a
position in the code is turned into a reference to an instruction when the
section is decoded, and turned back into numbers when it is encoded:

- a branch (conditional jumps, ``goto``, ``gotol``, ``may_goto``) holds the
  instruction it jumps to;
- a BPF-to-BPF call holds the first instruction of the callee, in this
  section (relative ``imm``) or in another one (through a relocation whose
  symbol and ``imm`` together name the callee);
- an ``ld_imm64`` of a function's address (``bpf_loop`` callbacks) holds that
  function's first instruction;
- a relocation belongs to the instruction it patches.

So inserting instructions is one list operation: nothing else needs fixing
by hand, because every offset, ``imm``, relocation offset and symbol value
is derived again from the instructions' new positions when the section is
written (:func:`encode_sections`, which records each one's on the instruction).  Line and
function info (``.BTF.ext``) and notes follow through the old-offset to
new-offset map each layout produces.

Byte-for-byte round trip (decode then encode with no edit) is a tested
property on every sample and compile-matrix object.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Sequence
from typing import Generic, NamedTuple, TypeVar

from bpf_sdt.bpf_helpers import HELPER_IDS
from bpf_sdt.elf import SHN_LORESERVE, SHN_UNDEF, STT_SECTION, PackedRelocations, Relocation, Symbol, r_info
from bpf_sdt.errors import InputError

INSN_SIZE = 8
WIDE_SIZE = 2 * INSN_SIZE       # ld_imm64
INSN = struct.Struct("<BBhi")   # code, dst:4|src:4 (the register byte), off, imm
DST_MASK = 0x0F                 # the register byte: dst in the low nibble, src in the high one
SRC_SHIFT = 4
MAX_STACK = 512          # MAX_BPF_STACK: the verifier refuses any stack access below r10 - 512
STACK_SLOT = 8           # bytes of a stack slot (a register spill; the frame's alignment)

T = TypeVar("T")

# --- opcode fields (include/uapi/linux/bpf.h, bpf_common.h) ------------------
#
# An opcode byte is class | op | source for ALU and JMP classes, and
# class | size | mode for loads and stores: every opcode anywhere in the
# project is spelled from these names.

OPCODE_BYTE = 0xFF       # the opcode is one byte; ``op & OPCODE_BYTE`` indexes per-opcode tables
CLASS_MASK = 0x07
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)

SIZE_MASK = 0x18
SIZE_W, SIZE_H, SIZE_B, SIZE_DW = 0x00, 0x08, 0x10, 0x18
SIZE_BYTES = {SIZE_W: 4, SIZE_H: 2, SIZE_B: 1, SIZE_DW: 8}
SIZE_OF_BYTES = {n: size for size, n in SIZE_BYTES.items()}   # 1, 2, 4, 8 -> the size field
MODE_MASK = 0xE0
MODE_IMM, MODE_ABS, MODE_IND, MODE_MEM, MODE_MEMSX, MODE_ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0

SRC_K, SRC_X = 0x00, 0x08
OP_MASK = 0xF0
ALU_ADD, ALU_SUB, ALU_MUL, ALU_DIV, ALU_OR, ALU_AND, ALU_LSH, ALU_RSH = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70)
ALU_NEG, ALU_MOD, ALU_XOR, ALU_MOV, ALU_ARSH, ALU_END = 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0
JMP_JA, JMP_CALL, JMP_EXIT, JMP_JCOND = 0x00, 0x80, 0x90, 0xE0
JMP_JEQ, JMP_JGT, JMP_JGE, JMP_JSET, JMP_JNE, JMP_JSGT, JMP_JSGE = 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
JMP_JLT, JMP_JLE, JMP_JSLT, JMP_JSLE = 0xA0, 0xB0, 0xC0, 0xD0

HELPER_CALL = 0          # src_reg of a call: a helper, numbered by imm
PSEUDO_CALL = 1          # src_reg of a call: BPF-to-BPF
LD_IMM64_CONSTANT = 0    # src_reg of ld_imm64: a plain 64-bit constant (others name maps, functions...)
PSEUDO_MAP_FD = 1        # src_reg of ld_imm64: imm is a map's fd
PSEUDO_MAP_VALUE = 2     # src_reg of ld_imm64: a map's fd, and an offset into its value in the second imm
ATOMIC_FETCH = 0x01
ATOMIC_XCHG = 0xE0 | ATOMIC_FETCH
ATOMIC_CMPXCHG = 0xF0 | ATOMIC_FETCH

LD_IMM64 = LD | SIZE_DW | MODE_IMM      # 0x18: the only 16-byte instruction
MOV64_X = ALU64 | ALU_MOV | SRC_X       # rD = rS
MOV64_K = ALU64 | ALU_MOV | SRC_K       # rD = imm
HELPER_TAIL_CALL = HELPER_IDS["bpf_tail_call"]

# The value range of an instruction's 32-bit ``imm`` (sign-extended by 64-bit
# operations, zero-extended into a register by 32-bit ones) and of a register.
S32_MIN, S32_MAX = -(1 << 31), (1 << 31) - 1
U32_MAX = (1 << 32) - 1
S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1
U64_MAX = (1 << 64) - 1
REG_BITS = 64
WORD_BITS = 32           # what the 32-bit ALU and JMP32 classes operate on

R0, R1, R5, R6, R9, R10 = 0, 1, 5, 6, 9, 10
REGISTER_COUNT = R10 + 1                        # r0..r10
CALLER_SAVED = frozenset(range(R0, R5 + 1))     # clobbered by every call
ARG_REGS = tuple(range(R1, R5 + 1))

# What an opcode is, looked up by its low byte (class and operation live there, so
# ``op & OPCODE_BYTE`` answers the same as ``op`` for any int): the properties below
# are asked millions of times per instrument run.
_OPS = range(OPCODE_BYTE + 1)
_IS_JMP_CLASS = tuple(op & CLASS_MASK in (JMP, JMP32) for op in _OPS)
_IS_CALL = tuple(op & CLASS_MASK == JMP and op & OP_MASK == JMP_CALL for op in _OPS)
_IS_EXIT = tuple(op & CLASS_MASK == JMP and op & OP_MASK == JMP_EXIT for op in _OPS)
_IS_BRANCH = tuple(_IS_JMP_CLASS[op] and op & OP_MASK not in (JMP_CALL, JMP_EXIT) for op in _OPS)
_IS_UNCONDITIONAL = tuple(_IS_BRANCH[op] and op & OP_MASK == JMP_JA for op in _OPS)
_MAY_REFER = tuple(_IS_BRANCH[op] or _IS_CALL[op] for op in _OPS)   # may hold a relative target
_SLOTS = tuple(2 if op == LD_IMM64 else 1 for op in _OPS)
_IS_GOTOL = tuple(op & CLASS_MASK == JMP32 and op & OP_MASK == JMP_JA for op in _OPS)


class _ByOpcode(Generic[T]):
    """A read-only attribute of an instruction that depends on its opcode
    alone, answered from a table indexed by the opcode byte."""

    def __init__(self, table: tuple[T, ...], doc: str) -> None:
        self.table = table
        self.__doc__ = doc

    def __get__(self, insn: Insn, owner: object = None) -> T:
        return self.table[insn.op & OPCODE_BYTE]


class Insn:
    """One instruction.  ``imm_hi`` is the second half of an ``ld_imm64``.

    ``target`` is the instruction a branch, a call or a function address
    refers to (or a section's :attr:`CodeSection.end` for "just past the last
    instruction"); ``reloc`` the relocation applying to this instruction;
    ``orig`` its byte offset when decoded (-1 for inserted instructions).

    ``pos`` and ``placed`` are where the last :func:`encode_sections` put it
    (its byte offset, and that run's placement of its section): kept on the
    instruction so that encoding needs no map from instruction to position
    (about 170 bytes per instruction as two dicts keyed by id()).  An
    instruction that refers to nothing may stand at several places (the
    sites of one shape share their inserted code): its ``pos`` is then the
    last one's, so positions are asked only of instructions that stand once
    (targets, symbols' first instructions).  A call or branch may stand at
    several places too: encoding derives its field from the position it is
    packed at, not from ``pos`` (the calls of sites of one shape are one
    object)."""

    __slots__ = ("op", "dst", "src", "off", "imm", "imm_hi", "target", "reloc", "orig", "pos", "placed")

    def __init__(self, op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, imm_hi: int = 0,
                 target: Insn | None = None, reloc: InsnReloc | None = None, orig: int = -1) -> None:
        self.op = op
        self.dst = dst
        self.src = src
        self.off = off
        self.imm = imm
        self.imm_hi = imm_hi
        self.target = target
        self.reloc = reloc
        self.orig = orig
        self.pos = -1
        self.placed: Placement | None = None

    @property
    def cls(self) -> int:
        return self.op & CLASS_MASK

    slots = _ByOpcode(_SLOTS, "8-byte slots: 2 for ld_imm64, 1 for everything else.")

    is_jmp_class = _ByOpcode(_IS_JMP_CLASS, "JMP or JMP32.")
    is_call = _ByOpcode(_IS_CALL, "A call of any kind (helper, BPF-to-BPF, kfunc).")
    is_exit = _ByOpcode(_IS_EXIT, "``exit``.")
    is_branch = _ByOpcode(_IS_BRANCH, "A jump whose target is relative to it (everything in the "
                            "JMP classes but call and exit).")
    is_unconditional = _ByOpcode(_IS_UNCONDITIONAL, "``goto`` or ``gotol``.")
    is_gotol = _ByOpcode(_IS_GOTOL, "JMP32|JA keeps its (32-bit) offset in imm, not off.")

    @property
    def is_pseudo_call(self) -> bool:
        return _IS_CALL[self.op & OPCODE_BYTE] and self.src == PSEUDO_CALL

    @property
    def is_helper_call(self) -> bool:
        return _IS_CALL[self.op & OPCODE_BYTE] and self.src == HELPER_CALL

    @property
    def is_nop(self) -> bool:
        """``goto +0``: the probe site's NOP, which loaders delete."""
        return self.op == JMP | JMP_JA and self.off == 0 and self.imm == 0 and self.target is None

    def encode(self) -> bytes:
        regs = (self.src << SRC_SHIFT) | self.dst
        first = INSN.pack(self.op, regs, self.off, self.imm)
        if self.op == LD_IMM64:
            return first + INSN.pack(0, 0, 0, self.imm_hi)
        return first

    def __repr__(self) -> str:   # for test failures: opcode and fields, no references
        return (f"Insn(op={self.op:#04x}, dst=r{self.dst}, src={self.src}, off={self.off}, "
                f"imm={self.imm}{f', imm_hi={self.imm_hi}' if self.op == LD_IMM64 else ''}, "
                f"orig={self.orig})")


class Placement:
    """One section as one :func:`encode_sections` run laid it out.  A new one
    per run, so an instruction that a later run did not lay out (removed
    from its section meanwhile) shows a placement that is not current."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index       # the section's ELF index


class InsnReloc(NamedTuple):
    """A relocation in a code section, attached to the instruction it
    patches.  A value (immutable): the calls of sites of one shape share one."""

    type: int
    symbol: int                  # index into the object's symbol table
    addend: int | None = None    # RELA only (BPF objects use REL)


# --- small constructors, for the code the rewriter inserts -------------------


def mov64_reg(dst: int, src: int) -> Insn:
    return Insn(MOV64_X, dst, src)


def mov32_reg(dst: int, src: int) -> Insn:
    """``wD = wS``: zero-extends the low 32 bits into the 64-bit register."""
    return Insn(ALU | ALU_MOV | SRC_X, dst, src)


def mov32_imm(dst: int, imm: int) -> Insn:
    """``wD = imm``: zero-extends into the 64-bit register."""
    return Insn(ALU | ALU_MOV | SRC_K, dst, 0, 0, imm)


def alu64_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(ALU64 | op | SRC_K, dst, 0, 0, imm)


def store_reg(size: int, base: int, off: int, src: int) -> Insn:
    """``*(size *)(base + off) = src``."""
    return Insn(STX | MODE_MEM | size, base, src, off)


def store_imm(size: int, base: int, off: int, imm: int) -> Insn:
    """``*(size *)(base + off) = imm`` (imm sign-extended from 32 bits)."""
    return Insn(ST | MODE_MEM | size, base, 0, off, imm)


def load(size: int, dst: int, base: int, off: int) -> Insn:
    return Insn(LDX | MODE_MEM | size, dst, base, off)


def ld_imm64(dst: int, value: int) -> Insn:
    value &= U64_MAX
    lo, hi = value & U32_MAX, value >> WORD_BITS
    return Insn(LD_IMM64, dst, 0, 0, s32(lo), s32(hi))


def pseudo_call(target: Insn) -> Insn:
    return Insn(JMP | JMP_CALL, 0, PSEUDO_CALL, 0, -1, target=target)


def nop() -> Insn:
    """``goto +0``: the probe site's NOP, also what padding tests insert."""
    return Insn(JMP | JMP_JA, target=None)


def s32(v: int) -> int:
    """The low 32 bits of ``v`` as a signed ``imm``."""
    v &= U32_MAX
    return v - (U32_MAX + 1) if v > S32_MAX else v


# --- registers read and written ----------------------------------------------

# What an instruction reads and writes depends on its opcode and registers alone, but for
# an atomic (whose imm names the operation): the analyses ask it for every instruction
# several times, so the answers are kept by (op, dst, src).  Only for real registers, so
# hostile register numbers add no entries: at most 256 * 11 * 11 of them.
_Regs = tuple[frozenset[int], frozenset[int], int, int]   # used, defined, and each as a mask
_REGS_BY_FIELDS: dict[tuple[int, int, int], _Regs] = {}


def _regs(insn: Insn) -> _Regs:
    key = (insn.op, insn.dst, insn.src)
    known = _REGS_BY_FIELDS.get(key)
    if known is not None:
        return known
    used, defined = _regs_used(insn), _regs_defined(insn)
    regs = (used, defined, reg_mask(used), reg_mask(defined))
    cacheable = insn.op & CLASS_MASK != STX or insn.op & MODE_MASK != MODE_ATOMIC
    if cacheable and 0 <= insn.dst <= R10 and 0 <= insn.src <= R10:
        _REGS_BY_FIELDS[key] = regs
    return regs


def reg_mask(regs: Iterable[int]) -> int:
    """The registers as a bit set: bit r for register r."""
    m = 0
    for r in regs:
        m |= 1 << r
    return m


def regs_used(insn: Insn) -> frozenset[int]:
    """Registers an instruction reads, calls excepted (their argument count
    depends on the callee: see :func:`call_clobbers` and the liveness pass)."""
    return _regs(insn)[0]


def regs_defined(insn: Insn) -> frozenset[int]:
    """Registers an instruction writes (a call: r0, and it clobbers r1..r5)."""
    return _regs(insn)[1]


def regs_masks(insn: Insn) -> tuple[int, int]:
    """:func:`regs_used` and :func:`regs_defined` as bit masks (bit r: register r)."""
    regs = _regs(insn)
    return regs[2], regs[3]


def _regs_used(insn: Insn) -> frozenset[int]:
    c, op = insn.cls, insn.op
    if c in (ALU, ALU64):
        aop = op & OP_MASK
        src = {insn.src} if op & SRC_X and aop not in (ALU_END,) else set()
        dst = set() if aop == ALU_MOV else {insn.dst}
        return frozenset(src | dst)
    if c == LDX:
        return frozenset({insn.src})
    if c == ST:
        return frozenset({insn.dst})
    if c == STX:
        used = {insn.dst, insn.src}
        if op & MODE_MASK == MODE_ATOMIC and insn.imm == ATOMIC_CMPXCHG:
            used.add(R0)
        return frozenset(used)
    if c == LD:
        if op == LD_IMM64:
            return frozenset()
        used = {R6}                       # legacy packet access: implicit ctx in r6
        if op & MODE_MASK == MODE_IND:
            used.add(insn.src)
        return frozenset(used)
    if insn.is_exit:
        return frozenset({R0})
    if insn.is_branch and not insn.is_unconditional and (op & OP_MASK) != JMP_JCOND:
        return frozenset({insn.dst, insn.src} if op & SRC_X else {insn.dst})
    return frozenset()


def _regs_defined(insn: Insn) -> frozenset[int]:
    c, op = insn.cls, insn.op
    if c in (ALU, ALU64, LDX) or op == LD_IMM64:
        return frozenset({insn.dst})
    if c == LD:                           # legacy packet access behaves like a call
        return CALLER_SAVED
    if c == STX and op & MODE_MASK == MODE_ATOMIC and insn.imm & ATOMIC_FETCH:
        return frozenset({R0} if insn.imm == ATOMIC_CMPXCHG else {insn.src})
    if insn.is_call:
        return CALLER_SAVED
    return frozenset()


# --- code sections --------------------------------------------------------


class CodeSection:
    """The instructions of one executable section."""

    def __init__(self, index: int, name: str, insns: list[Insn] | None = None, orig_size: int = 0) -> None:
        self.index = index                      # ELF section index
        self.name = name
        self.insns: list[Insn] = [] if insns is None else insns
        self.end = Insn(0)                      # "past the last insn": a branch target
        self.orig_size = orig_size
        self.appended: Insn | None = None       # first instruction moved in from another section, if any

    def insert(self, index: int, new: Sequence[Insn]) -> None:
        """Insert before ``self.insns[index]``.  References to that instruction
        keep pointing at it, so branches to it skip the new code."""
        self.insns[index:index] = new


def decode_insn(raw: bytes) -> Insn:
    """One 8-byte instruction on its own (a note's argument insn): the fields
    as :func:`decode_section` reads them, with no references resolved."""
    op, regs, off, imm = INSN.unpack(raw)
    return Insn(op, regs & DST_MASK, regs >> SRC_SHIFT, off, imm)


def decode_section(index: int, name: str, data: bytes, relocs: Iterable[Relocation] = ()) -> CodeSection:
    """Instructions of one section, with its relocations attached and its
    relative branches and same-section calls resolved.  Cross-section code
    references are resolved by :func:`link_code_references`."""
    if len(data) % INSN_SIZE:
        raise InputError(f"{name}: {len(data)} bytes is not a whole number of instructions")
    sec = CodeSection(index, name, orig_size=len(data))
    raw = list(INSN.iter_unpack(data))
    # ld_imm64 is the one instruction of two slots; its second half is no instruction.
    # A second half has opcode 0, so every LD_IMM64 opcode byte starts one (else the
    # object is malformed, which the check of the half before it reports).
    wide = [s for s, rec in enumerate(raw) if rec[0] == LD_IMM64]
    for s in wide:
        if s + 1 >= len(raw):
            raise InputError(f"{name}+{s * INSN_SIZE:#x}: ld_imm64 cut off by the section end")
        second = raw[s + 1]
        if second[0] or second[1] or second[2]:
            raise InputError(f"{name}+{s * INSN_SIZE:#x}: malformed second half of ld_imm64")
    halves = {s + 1 for s in wide}
    sec.insns = [Insn(op, regs & DST_MASK, regs >> SRC_SHIFT, off, imm, orig=s * INSN_SIZE)
                 for s, (op, regs, off, imm) in enumerate(raw) if s not in halves]
    by_slot: dict[int, Insn] = {insn.orig // INSN_SIZE: insn for insn in sec.insns}
    for s in wide:
        by_slot[s].imm_hi = raw[s + 1][3]
    by_slot[len(raw)] = sec.end
    for r in relocs:
        patched = by_slot.get(r.offset // INSN_SIZE) if r.offset % INSN_SIZE == 0 else None
        if patched is None or patched is sec.end:
            raise InputError(f"{name}: relocation at {r.offset:#x} is not on an instruction")
        if patched.reloc is not None:
            raise InputError(f"{name}+{r.offset:#x}: two relocations on one instruction")
        patched.reloc = InsnReloc(r.type, r.symbol, r.addend)
    for insn in sec.insns:
        if not _MAY_REFER[insn.op & OPCODE_BYTE]:
            continue                  # the common case, told by the opcode alone
        s = insn.orig // INSN_SIZE
        rel_target = _relative_target(insn)
        if rel_target is None:
            continue
        t = by_slot.get(s + 1 + rel_target)
        if t is None:
            raise InputError(f"{name}+{s * INSN_SIZE:#x}: {'call' if insn.is_call else 'jump'} to "
                             f"{(s + 1 + rel_target) * INSN_SIZE:#x}, which is not an instruction of "
                             "the section")
        insn.target = t
    return sec


def _relative_target(insn: Insn) -> int | None:
    """The slot distance a branch or same-section call names, or None.

    ``goto +0`` (a probe site, or padding) names none: it is a NOP wherever
    it stands, and must stay one when instructions are inserted after it."""
    if insn.is_nop:
        return None
    if insn.is_branch:
        return insn.imm if insn.is_gotol else insn.off
    if insn.is_pseudo_call and insn.reloc is None:
        return insn.imm
    return None


def _symbol_section(sym: Symbol) -> int | None:
    return None if sym.shndx == SHN_UNDEF or sym.shndx >= SHN_LORESERVE else sym.shndx


def link_code_references(sections: dict[int, CodeSection], symbols: Sequence[Symbol]) -> None:
    """Resolve calls and function addresses that go through a relocation to a
    symbol in a code section (the callee may be in another section): libbpf's
    rule is callee slot = symbol value / 8 + imm + 1 for a call, and callee
    byte = symbol value + imm for an ld_imm64."""
    slot_maps: dict[int, dict[int, Insn]] = {}
    for sec in sections.values():
        for insn in sec.insns:
            r = insn.reloc
            if r is None or not (insn.is_pseudo_call or insn.op == LD_IMM64):
                continue
            if not 0 <= r.symbol < len(symbols):
                raise InputError(f"{sec.name}+{insn.orig:#x}: relocation names symbol {r.symbol}, "
                                 "which does not exist")
            sym = symbols[r.symbol]
            shndx = _symbol_section(sym)
            if shndx is None or shndx not in sections:
                continue              # an extern (resolved by a linker) or data
            target_sec = sections[shndx]
            if target_sec.index not in slot_maps:
                slot_maps[target_sec.index] = {i.orig: i for i in target_sec.insns}
                slot_maps[target_sec.index][target_sec.orig_size] = target_sec.end
            byte = (sym.value + INSN_SIZE * (insn.imm + 1)) if insn.is_pseudo_call else sym.value + insn.imm
            t = slot_maps[target_sec.index].get(byte)
            if t is None:
                raise InputError(f"{sec.name}+{insn.orig:#x}: refers to {target_sec.name}+{byte:#x}, "
                                 "which is not an instruction")
            insn.target = t


class EncodedSection(NamedTuple):
    data: bytes
    relocs: PackedRelocations    # in code order, symbols numbered as the object's (columns: one per call)
    offsets: dict[int, int]      # old byte offset -> new byte offset
    placement: Placement         # what the instructions laid out in this section carry

    def position(self, insn: Insn) -> int:
        """The new byte offset of an instruction of this section (inserted
        ones included, and the section's end)."""
        if insn.placed is not self.placement:
            raise KeyError(f"{insn!r} is not an instruction of this section")
        return insn.pos


def _place(sec: CodeSection, placement: Placement) -> None:
    """Record on every instruction (and on the end) its new byte offset."""
    pos = 0
    for insn in sec.insns:
        insn.pos = pos
        insn.placed = placement
        pos += WIDE_SIZE if insn.op == LD_IMM64 else INSN_SIZE     # a compare: cheaper than the slots table
    sec.end.pos, sec.end.placed = pos, placement


def _offset_map(sec: CodeSection) -> dict[int, int]:
    """Old byte offset -> new byte offset, for every decoded instruction and
    for the old end of the section (where its own code ends, before anything
    moved in), from the positions :func:`_place` recorded."""
    out = {insn.orig: insn.pos for insn in sec.insns if insn.orig >= 0}
    out[sec.orig_size] = (sec.appended if sec.appended is not None else sec.end).pos
    return out


def encode_sections(sections: dict[int, CodeSection], symbols: Sequence[Symbol],
                    moved_symbols: dict[int, Insn] | None = None,
                    ) -> tuple[dict[int, EncodedSection], dict[int, int]]:
    """Lay every section out and encode it, deriving branch offsets, call
    immediates and relocation offsets from where the instructions now are.

    Returns the encoded sections and the new value of every symbol defined in
    a code section (symbol index -> value): function symbols move with their
    first instruction, and a call through a function symbol is encoded
    against the symbol's new value.  ``moved_symbols`` names the first
    instruction of symbols whose section was merged into another one."""
    placements = {idx: Placement(idx) for idx in sections}
    for idx, sec in sections.items():
        _place(sec, placements[idx])
    offsets = {idx: _offset_map(sec) for idx, sec in sections.items()}
    values = {}
    for sym in symbols:
        shndx = _symbol_section(sym)
        if shndx in offsets and sym.type != STT_SECTION:
            new = offsets[shndx].get(sym.value)
            if new is None:
                raise InputError(f"symbol {sym.name} at {sections[shndx].name}+{sym.value:#x} is not "
                                 "on an instruction")
            values[sym.num] = new
    for num, insn in (moved_symbols or {}).items():
        if insn.placed is None or placements.get(insn.placed.index) is not insn.placed:
            raise KeyError(f"moved symbol {num}: {insn!r} is in no section being encoded")
        values[num] = insn.pos
    out = {}
    for idx, sec in sections.items():
        data, relocs = _encode(sec, idx, placements, symbols, values)
        out[idx] = EncodedSection(data, relocs, offsets[idx], placements[idx])
    return out, values


def _encode(sec: CodeSection, sec_idx: int, placements: dict[int, Placement], symbols: Sequence[Symbol],
            values: dict[int, int]) -> tuple[bytes, PackedRelocations]:
    """A placed section's bytes and relocations, in one pass: each
    instruction's reference sets its field, then the instruction is packed
    into one buffer of the section's size.  No bytes object per instruction
    (with the list to join them, that was a third of a rewrite's peak), and
    the relocations as columns (a call per site has one).  The
    offset is counted here, not read from ``pos``: an instruction shared by
    sites of one shape has the last one's there."""
    buf = bytearray(sec.end.pos)
    offsets, infos = array("Q"), array("Q")
    addends: array[int] | None = None        # RELA only: from the first relocation with an addend
    pack_into = INSN.pack_into
    pos = 0
    for insn in sec.insns:
        if insn.target is not None:
            _derive_reference(insn, pos, sec_idx, placements, symbols, values, sec)
        if insn.reloc is not None:
            r = insn.reloc
            if r.addend is not None and addends is None:
                addends = array("Q", bytes(8 * len(offsets)))     # what the ones before write: 0
            if addends is not None:
                addends.append((r.addend or 0) & U64_MAX)
            offsets.append(pos)
            infos.append(r_info(r.symbol, r.type))
        op = insn.op
        pack_into(buf, pos, op, (insn.src << SRC_SHIFT) | insn.dst, insn.off, insn.imm)
        if op == LD_IMM64:
            pack_into(buf, pos + INSN_SIZE, 0, 0, 0, insn.imm_hi)
            pos += WIDE_SIZE
        else:
            pos += INSN_SIZE
    return bytes(buf), PackedRelocations(offsets, infos, addends)


def _derive_reference(insn: Insn, here: int, sec_idx: int, placements: dict[int, Placement],
                      symbols: Sequence[Symbol], values: dict[int, int], sec: CodeSection) -> None:
    """Set the field of ``insn``, packed at byte ``here``, that names its target."""
    assert insn.target is not None
    target = insn.target
    placed = target.placed
    if placed is None or placements.get(placed.index) is not placed:
        raise InputError(f"{sec.name}+{here:#x}: refers to an instruction that was removed")
    t_sec, t_off = placed.index, target.pos
    if insn.reloc is None:
        if t_sec != sec_idx:
            raise InputError(f"{sec.name}+{here:#x}: a relative reference cannot leave its section")
        rel = (t_off - here) // INSN_SIZE - 1
        if insn.is_branch and not insn.is_gotol:
            if not -(1 << 15) <= rel < (1 << 15):
                raise InputError(f"{sec.name}+{here:#x}: jump of {rel} insns does not fit 16 bits "
                                 "after the rewrite")
            insn.off = rel
        else:
            insn.imm = rel
        return
    sym = symbols[insn.reloc.symbol]
    base = values.get(insn.reloc.symbol, sym.value) if sym.type != STT_SECTION else 0
    if insn.is_pseudo_call:
        insn.imm = (t_off - base) // INSN_SIZE - 1
    else:
        insn.imm = t_off - base

"""A minimal eBPF interpreter for tests, independent of bpf_sdt's own reader.

It runs one function of an object's code section on a context buffer until
the program counter reaches a given instruction (a probe's NOP), and returns
the registers and the stack there.  That is how the tests confirm that an
argument insn names the register, stack slot or constant that really holds
the argument's value, rather than trusting the decoder under test.

Covers what clang/gcc emit for straight-line and looping BPF code with
-mcpu v1..v4: ALU/ALU64 (incl. v4 movsx, sdiv/smod, bswap), LDX/STX/ST
(incl. v4 sign-extending loads), LD_IMM64, JMP/JMP32 (incl. gotol), EXIT.
Helper and BPF-to-BPF calls are not supported (the test programs have none).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CTX_BASE = 0x10_0000
STACK_TOP = 0x80_0000
STACK_SIZE = 512
MASK64 = (1 << 64) - 1


def sx(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class Fault(Exception):
    pass


@dataclass
class State:
    regs: list[int]
    stack: bytearray

    def read_stack(self, off: int, size: int) -> int:
        i = STACK_SIZE + off
        return int.from_bytes(self.stack[i:i + size], "little")


class Machine:
    def __init__(self, code: bytes, ctx: bytes) -> None:
        self.code = code
        self.ctx = bytearray(ctx)
        self.stack = bytearray(STACK_SIZE)

    def _region(self, addr: int, size: int) -> tuple[bytearray, int]:
        if addr >= CTX_BASE and addr + size <= CTX_BASE + len(self.ctx):
            return self.ctx, addr - CTX_BASE
        if addr >= STACK_TOP - STACK_SIZE and addr + size <= STACK_TOP:
            return self.stack, addr - (STACK_TOP - STACK_SIZE)
        raise Fault(f"access to {addr:#x}+{size} outside ctx and stack")

    def load(self, addr: int, size: int) -> int:
        mem, i = self._region(addr, size)
        return int.from_bytes(mem[i:i + size], "little")

    def store(self, addr: int, size: int, value: int) -> None:
        mem, i = self._region(addr, size)
        mem[i:i + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def run_until(self, start: int, stop: int, max_steps: int = 100_000,
                  hit: int = 1) -> State:
        """Run from insn index ``start`` until insn ``stop`` is reached ``hit`` times."""
        r = [0] * 11
        r[1], r[10] = CTX_BASE, STACK_TOP
        pc, seen = start, 0
        for _ in range(max_steps):
            if pc == stop:
                seen += 1
                if seen == hit:
                    return State(list(r), bytearray(self.stack))
            if not 0 <= pc < len(self.code) // 8:
                raise Fault(f"pc {pc} out of code")
            pc = self.step(r, pc)
        raise Fault("did not reach the stop insn")

    def step(self, r: list[int], pc: int) -> int:
        op, regs, off, imm = struct.unpack_from("<BBhi", self.code, pc * 8)
        dst, src = regs & 0xF, regs >> 4
        cls = op & 7
        if cls in (4, 7):
            self._alu(r, op, dst, src, off, imm, wide=cls == 7)
            return pc + 1
        if op == 0x18:
            hi = struct.unpack_from("<i", self.code, pc * 8 + 12)[0]
            r[dst] = ((hi & 0xFFFFFFFF) << 32 | (imm & 0xFFFFFFFF)) & MASK64
            return pc + 2
        size = {0x00: 4, 0x08: 2, 0x10: 1, 0x18: 8}[op & 0x18]
        if cls == 1:                                  # LDX
            v = self.load((r[src] + off) & MASK64, size)
            r[dst] = sx(v, 8 * size) & MASK64 if op & 0xE0 == 0x80 else v
            return pc + 1
        if cls == 3:                                  # STX
            if op & 0xE0 != 0x60:
                raise Fault(f"atomic op {op:#x} unsupported")
            self.store((r[dst] + off) & MASK64, size, r[src])
            return pc + 1
        if cls == 2:                                  # ST
            self.store((r[dst] + off) & MASK64, size, imm & MASK64)
            return pc + 1
        if cls in (5, 6):
            return self._jmp(r, pc, op, dst, src, off, imm, wide=cls == 5)
        raise Fault(f"opcode {op:#x} unsupported")

    @staticmethod
    def _alu(r: list[int], op: int, dst: int, src: int, off: int, imm: int, wide: bool) -> None:
        bits = 64 if wide else 32
        mask = (1 << bits) - 1
        code = op & 0xF0
        use_x = bool(op & 8)
        b = r[src] if use_x else imm & MASK64
        a = r[dst]
        if code == 0xD0:                              # END (bswap / to-le / to-be)
            width = imm
            v = a & ((1 << width) - 1)
            if wide or use_x:                         # bswap (v4) or to-be on LE
                v = int.from_bytes(v.to_bytes(width // 8, "little"), "big")
            r[dst] = v
            return
        a &= mask
        b &= mask
        if code == 0xB0:                              # MOV / MOVSX
            v = sx(b, off) & mask if use_x and off in (8, 16, 32) else b
        elif code == 0x00:
            v = a + b
        elif code == 0x10:
            v = a - b
        elif code == 0x20:
            v = a * b
        elif code in (0x30, 0x90):                    # DIV / MOD (off 1: signed)
            if b == 0:
                v = 0 if code == 0x30 else a
            elif off == 1:
                sa, sb = sx(a, bits), sx(b, bits)
                q = abs(sa) // abs(sb) * (1 if (sa < 0) == (sb < 0) else -1)
                v = q if code == 0x30 else sa - q * sb
            else:
                v = a // b if code == 0x30 else a % b
        elif code == 0x40:
            v = a | b
        elif code == 0x50:
            v = a & b
        elif code == 0x60:
            v = a << (b & (bits - 1))
        elif code == 0x70:
            v = a >> (b & (bits - 1))
        elif code == 0x80:
            v = -a
        elif code == 0xA0:
            v = a ^ b
        elif code == 0xC0:
            v = sx(a, bits) >> (b & (bits - 1))
        else:
            raise Fault(f"alu op {op:#x} unsupported")
        r[dst] = v & mask

    @staticmethod
    def _jmp(r: list[int], pc: int, op: int, dst: int, src: int, off: int, imm: int,
             wide: bool) -> int:
        code = op & 0xF0
        if code == 0x00:                              # JA / gotol
            return pc + 1 + (off if wide else imm)
        if code == 0x90:
            raise Fault("exit reached before the probe")
        if code == 0x80:
            raise Fault("calls are not supported")
        bits = 64 if wide else 32
        mask = (1 << bits) - 1
        a = r[dst] & mask
        b = (r[src] if op & 8 else imm & MASK64) & mask
        sa, sb = sx(a, bits), sx(b, bits)
        taken = {
            0x10: a == b, 0x20: a > b, 0x30: a >= b, 0x40: bool(a & b), 0x50: a != b,
            0x60: sa > sb, 0x70: sa >= sb, 0xA0: a < b, 0xB0: a <= b, 0xC0: sa < sb,
            0xD0: sa <= sb,
        }.get(code)
        if taken is None:
            raise Fault(f"jump op {op:#x} unsupported")
        return pc + 1 + off if taken else pc + 1

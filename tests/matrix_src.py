"""Generates the compile-matrix translation unit: one function per (arity,
rotation), each with one probe whose arguments cycle through every argument
kind, plus the value each argument must have at the NOP for a given ctx."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bpfemu import CTX_BASE

# struct mctx layout (natural alignment), mirrored by CTX_FIELDS below.
CTX_DECL = """
typedef unsigned char __u8; typedef unsigned short __u16;
typedef unsigned int __u32; typedef unsigned long long __u64;
enum color { RED, GREEN, BLUE, BLACK };
struct mctx {
	char c; signed char sc; __u8 u8; __u8 pad;
	short s; __u16 u16;
	int i; __u32 u32;
	long l; __u64 u64;
	void *ptr;
	/* bit-fields, each at bit 0 of a word of its own, the bits above it random */
	__u64 bu40:40; __u64 :0;
	int bs5:5; __u64 :0;
	_Bool bb:1;
};
__u32 mglob[4];
"""
# Where the emulator pretends the linker put each global (tests relocate
# R_BPF_64_64 LD_IMM64s against these before running the code).
GLOBAL_ADDRS = {"mglob": 0x7F00_1234_5000}
CTX_FIELDS = {  # name: (offset, size, signed)
    "c": (0, 1, True), "sc": (1, 1, True), "u8": (2, 1, False), "s": (4, 2, True),
    "u16": (6, 2, False), "i": (8, 4, True), "u32": (12, 4, False), "l": (16, 8, True),
    "u64": (24, 8, False), "ptr": (32, 8, False),
}
BITFIELDS = {"bu40": (40, 40, False), "bs5": (48, 5, True), "bb": (56, 1, False)}  # name: (byte offset, bits, signed)
CTX_SIZE = 64

Fields = dict[str, int]


@dataclass(frozen=True)
class Kind:
    name: str
    ctype: str                          # declared type
    expr: str                           # argument expression (ctx is `c`)
    value: Callable[[Fields], int]      # the converted value, as an unbounded int
    size: int                           # sizeof the declared type
    constant: bool = False              # must be encoded as an immediate


def _s(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


KINDS = [
    Kind("char", "char", "c->c", lambda f: f["c"], 1),
    Kind("short", "short", "c->s", lambda f: f["s"], 2),
    Kind("int", "int", "c->i", lambda f: f["i"], 4),
    Kind("long", "long", "c->l", lambda f: f["l"], 8),
    Kind("u8", "__u8", "c->u8", lambda f: f["u8"], 1),
    Kind("u16", "__u16", "c->u16", lambda f: f["u16"], 2),
    Kind("u32", "__u32", "c->u32", lambda f: f["u32"], 4),
    Kind("u64", "__u64", "c->u64", lambda f: f["u64"], 8),
    Kind("bool", "_Bool", "c->i > 3", lambda f: int(f["i"] > 3), 1),
    Kind("enum", "enum color", "(enum color)(c->u8 & 3)", lambda f: f["u8"] & 3, 4),
    Kind("ptr", "struct mctx *", "c", lambda f: CTX_BASE, 8),
    Kind("const_ptr", "const __u32 *", "&c->u32", lambda f: CTX_BASE + 12, 8),
    Kind("ctx_ptr_field", "const void *", "c->ptr", lambda f: f["ptr"], 8),
    Kind("const_int", "int", "42", lambda f: 42, 4, constant=True),
    Kind("const_neg", "long", "-7", lambda f: -7, 8, constant=True),
    Kind("const_wide", "__u64", "0x123456789ULL", lambda f: 0x123456789, 8),
    # imm -2147483648: exact once truncated to the 4-byte type, as consumers must
    Kind("const_u32_high", "__u32", "0x80000000U", lambda f: 0x80000000, 4, constant=True),
    Kind("widen", "long", "c->u8", lambda f: f["u8"], 8),
    Kind("narrow", "int", "c->l", lambda f: _s(f["l"], 32), 4),
    Kind("expr", "__u64", "c->u64 * 3 + 1", lambda f: (f["u64"] * 3 + 1) % (1 << 64), 8),
    # symbol addresses: a register (LD_IMM64 + relocation), never an immediate
    Kind("global_ptr", "__u32 *", "&mglob[1]", lambda f: GLOBAL_ADDRS["mglob"] + 4, 8),
    Kind("global_addr_int", "long", "(long)&mglob", lambda f: GLOBAL_ADDRS["mglob"], 8),
    # numeric pointer constants: an immediate when it fits, else a register
    Kind("null", "const void *", "(const void *)0", lambda f: 0, 8, constant=True),
    Kind("const_ptr_wide", "void *", "(void *)0x123456789ULL", lambda f: 0x123456789, 8),
    # bit-fields: a call's argument, so a probe's (the value is the field's, converted)
    Kind("bitfield_u40", "__u64", "c->bu40", lambda f: f["bu40"], 8),
    Kind("bitfield_s5", "long", "c->bs5", lambda f: f["bs5"], 8),
    Kind("bitfield_bool", "_Bool", "c->bb", lambda f: f["bb"], 1),
]


@dataclass(frozen=True)
class Probe:
    name: str
    function: str
    kinds: tuple[Kind, ...]


def probes(max_args: int = 12, kinds: Sequence[Kind] = KINDS) -> list[Probe]:
    """Arity 0 once; each arity 1..max_args once per rotation of ``kinds``."""
    out = []
    for n in range(max_args + 1):
        rotations = 1 if n == 0 else len(kinds)
        for r in range(rotations):
            args = tuple(kinds[(r + k) % len(kinds)] for k in range(n))
            out.append(Probe(f"p_{n}_{r}", f"m_{n}_{r}", args))
    return out


def source(plist: list[Probe]) -> str:
    lines = ['#include <bpf_sdt.h>', CTX_DECL]
    for p in plist:
        types = ", ".join(k.ctype for k in p.kinds)
        lines.append(f"BPF_SDT_DECLARE{len(p.kinds)}({p.name}{', ' if types else ''}{types});")
    for p in plist:
        args = ", ".join(k.expr for k in p.kinds)
        lines.append(f"__attribute__((noinline)) int {p.function}(struct mctx *c)\n{{\n"
                     f"\tBPF_SDT_PROBE{len(p.kinds)}({p.name}{', ' if args else ''}{args});\n"
                     f"\treturn c->i;\n}}")
    return "\n".join(lines) + "\n"


def random_ctx(seed: int) -> tuple[bytes, Fields]:
    rng = random.Random(seed)
    raw = bytearray(rng.randbytes(CTX_SIZE))
    fields = {}
    for name, (off, size, signed) in CTX_FIELDS.items():
        v = int.from_bytes(raw[off:off + size], "little")
        fields[name] = _s(v, 8 * size) if signed else v
    for name, (off, bits, signed) in BITFIELDS.items():
        v = int.from_bytes(raw[off:off + 8], "little") & ((1 << bits) - 1)
        fields[name] = _s(v, bits) if signed else v
    struct.pack_into("<B", raw, 3, 0)
    return bytes(raw), fields

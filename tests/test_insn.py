"""bpf_sdt.insn's named opcodes against an independent decoder: every
instruction clang emits for a program that uses each ALU and jump
operation (64- and 32-bit, register and immediate source), each load and
store size and mode, atomics, byte swaps, ld_imm64, calls and exit is
decoded by insn.py and disassembled by llvm-objdump; the opcode spelled
from insn.py's names for what llvm-objdump prints must be the decoded
opcode, and the decoded registers and offsets must be the ones it prints.
The format's argument opcodes (format.py) are checked against the names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from toolchain import clang, compile_bpf, objdump, run

from bpf_sdt import format as fmt
from bpf_sdt.elf import R_BPF_64_32, STB_LOCAL, STT_SECTION, Relocation, Symbol, load_object, r_info
from bpf_sdt.errors import InputError
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
    ATOMIC_CMPXCHG,
    ATOMIC_FETCH,
    ATOMIC_XCHG,
    CLASS_MASK,
    INSN_SIZE,
    JMP,
    JMP32,
    JMP_CALL,
    JMP_EXIT,
    JMP_JA,
    JMP_JEQ,
    JMP_JGE,
    JMP_JGT,
    JMP_JLE,
    JMP_JLT,
    JMP_JNE,
    JMP_JSET,
    JMP_JSGE,
    JMP_JSGT,
    JMP_JSLE,
    JMP_JSLT,
    LD_IMM64,
    LDX,
    MODE_ATOMIC,
    MODE_MEM,
    MODE_MEMSX,
    MOV64_K,
    MOV64_X,
    R0,
    R1,
    R10,
    SIZE_B,
    SIZE_DW,
    SIZE_H,
    SIZE_OF_BYTES,
    SIZE_W,
    SRC_K,
    SRC_X,
    ST,
    STX,
    U32_MAX,
    Insn,
    InsnReloc,
    decode_section,
    encode_sections,
    ld_imm64,
    pseudo_call,
    regs_defined,
    regs_masks,
    regs_used,
)

# Every operation the opcode names cover, in C that clang cannot fold away
# (each value comes from memory the program reads).
OPS_C = r"""
typedef unsigned long long u64; typedef long long s64; typedef unsigned int u32; typedef int s32;
typedef unsigned short u16; typedef unsigned char u8;
static long (*const helper)(void *, u32) = (void *)1;
u64 glob;
static __attribute__((noinline)) u64 sub(u64 a, u64 b) { return a * b + (a ^ b); }
__attribute__((section("xdp"), used)) int prog(u64 *p)
{
	u64 a = p[0], b = p[1]; u32 x = (u32)p[2], y = (u32)p[3]; s64 s = (s64)p[4]; s32 t = (s32)p[5];
	u16 h = *(u16 *)&p[6]; u8 c = *(u8 *)&p[7];
	a += b; a -= 3; a *= b; a /= (b | 1); a %= (b | 3); a |= 0x10; a &= b; a <<= (b & 7); a >>= 2; a ^= b;
	s >>= (b & 5); s = -s; x += y; x -= 7; x *= y; x /= (y | 1); x %= (y | 2); x |= y; x &= 0xff;
	x <<= (y & 3); x >>= 1; x ^= y; t >>= 3; t = -t;
	if (a == b) a++; if (a != 5) a--; if (a > b) a += 2; if (a >= 9) a += 4; if (a < b) a += 8;
	if (a <= 11) a += 16; if (s > (s64)b) s++; if (s >= -3) s--; if (s < (s64)a) s += 2; if (s <= 7) s += 3;
	if (a & 0x40) a += 32; if (x == y) x++; if (x > 3) x--; if (t < 5) t++; if (x & y) x += 5;
	if (x != y) x += 9; if (t <= (s32)y) t += 4; if (t >= 2) t--; if ((s32)x > t) x += 6;
	p[8] = a; *(u32 *)&p[9] = x; *(u16 *)&p[10] = h; *(u8 *)&p[11] = c; p[12] = 42;
	*(u32 *)&p[13] = 7; *(u16 *)&p[13] = 8; *(u8 *)&p[14] = 9;
	__sync_fetch_and_add(&p[15], a);
	__sync_fetch_and_add((u32 *)&p[16], x);
	__sync_fetch_and_or(&p[17], b);
	__sync_fetch_and_and(&p[17], a);
	__sync_fetch_and_xor(&p[17], s);
	a += __sync_fetch_and_add(&p[18], b);
	a += __sync_lock_test_and_set(&p[19], b);
	a += __sync_val_compare_and_swap(&p[20], a, b);
#ifdef V4
	s /= (s64)(b | 1); s %= (s64)(b | 3); s += (signed char)a; s += *(signed char *)&p[21];
	t /= (s32)(y | 1); t += (short)x;
#endif
	glob = sub(a, b) + __builtin_bswap64(b) + __builtin_bswap32(x) + __builtin_bswap16(h);
	p[22] = 0x123456789abcdefULL;
	return helper(p, x) + s + t + x;
}
"""

ALU_TEXT = {"+=": ALU_ADD, "-=": ALU_SUB, "*=": ALU_MUL, "/=": ALU_DIV, "s/=": ALU_DIV, "|=": ALU_OR,
            "&=": ALU_AND, "<<=": ALU_LSH, ">>=": ALU_RSH, "%=": ALU_MOD, "s%=": ALU_MOD, "^=": ALU_XOR,
            "s>>=": ALU_ARSH, "=": ALU_MOV}
JMP_TEXT = {"==": JMP_JEQ, "!=": JMP_JNE, ">": JMP_JGT, ">=": JMP_JGE, "<": JMP_JLT, "<=": JMP_JLE,
            "s>": JMP_JSGT, "s>=": JMP_JSGE, "s<": JMP_JSLT, "s<=": JMP_JSLE, "&": JMP_JSET}
ATOMIC_TEXT = {"+=": ALU_ADD, "|=": ALU_OR, "&=": ALU_AND, "^=": ALU_XOR}
FETCH_TEXT = {"add": ALU_ADD, "or": ALU_OR, "and": ALU_AND, "xor": ALU_XOR}
SIGNED_OFF = 1          # off of sdiv/smod (v4)
REG = r"([rw])(\d+)"
NUM = r"(-?(?:0x)?[0-9a-f]+)"     # llvm-objdump prints decimal or hex, by version
MEM = rf"\*\(([us])(\d+) \*\)\(r(\d+) ([+-]) {NUM}\)"


@dataclass
class Expected:
    """What llvm-objdump's text says an instruction is."""

    op: int
    dst: int | None = None
    src: int | None = None
    off: int | None = None
    imm: int | None = None


def _reg_class(width: str) -> int:
    return ALU64 if width == "r" else ALU


def _mem_off(sign: str, value: str) -> int:
    return int(value, 0) if sign == "+" else -int(value, 0)


def _s32_of(value: int) -> int:
    """An immediate as the instruction holds it (llvm-objdump may print it unsigned)."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _size(bits: str) -> int:
    return SIZE_OF_BYTES[int(bits) // 8]


def _alu(text: str) -> Expected | None:
    if m := re.fullmatch(rf"{REG} = -{REG}", text):
        return Expected(_reg_class(m[1]) | ALU_NEG | SRC_K, dst=int(m[2]))
    if m := re.fullmatch(rf"{REG} = (be|le|bswap)(\d+) {REG}", text):
        cls = ALU64 if m[3] == "bswap" else ALU       # be/le: ALU class, the source says which
        return Expected(cls | ALU_END | (SRC_X if m[3] == "be" else SRC_K), dst=int(m[2]), imm=int(m[4]))
    if m := re.fullmatch(rf"{REG} = \(s(\d+)\){REG}", text):
        return Expected(_reg_class(m[1]) | ALU_MOV | SRC_X, dst=int(m[2]), src=int(m[5]), off=int(m[3]))
    if m := re.fullmatch(rf"{REG} (s?[-+*/%|&^]=|<<=|s?>>=|=) {REG}", text):
        off = SIGNED_OFF if m[3] in ("s/=", "s%=") else 0
        return Expected(_reg_class(m[1]) | ALU_TEXT[m[3]] | SRC_X, dst=int(m[2]), src=int(m[5]), off=off)
    if m := re.fullmatch(rf"{REG} (s?[-+*/%|&^]=|<<=|s?>>=|=) {NUM}", text):
        return Expected(_reg_class(m[1]) | ALU_TEXT[m[3]] | SRC_K, dst=int(m[2]), imm=_s32_of(int(m[4], 0)))
    return None


def _memory(text: str) -> Expected | None:
    if m := re.fullmatch(rf"{REG} = {MEM}", text):
        mode = MODE_MEMSX if m[3] == "s" else MODE_MEM
        return Expected(LDX | mode | _size(m[4]), dst=int(m[2]), src=int(m[5]), off=_mem_off(m[6], m[7]))
    if m := re.fullmatch(rf"{MEM} = {REG}", text):
        return Expected(STX | MODE_MEM | _size(m[2]), dst=int(m[3]), src=int(m[7]), off=_mem_off(m[4], m[5]))
    if m := re.fullmatch(rf"{MEM} = {NUM}", text):
        return Expected(ST | MODE_MEM | _size(m[2]), dst=int(m[3]), off=_mem_off(m[4], m[5]), imm=int(m[6], 0))
    if m := re.fullmatch(rf"lock {MEM} ([-+|&^]=) {REG}", text):
        return Expected(STX | MODE_ATOMIC | _size(m[2]), dst=int(m[3]), src=int(m[8]), off=_mem_off(m[4], m[5]),
                        imm=ATOMIC_TEXT[m[6]])
    atomic = rf"\(u(\d+) \*\)\(r(\d+) ([+-]) {NUM}\)"
    if m := re.fullmatch(rf"{REG} = atomic_fetch_(\w+)\({atomic}, {REG}\)", text):
        return Expected(STX | MODE_ATOMIC | _size(m[4]), dst=int(m[5]), src=int(m[9]), off=_mem_off(m[6], m[7]),
                        imm=FETCH_TEXT[m[3]] | ATOMIC_FETCH)
    place = rf"r(\d+) ([+-]) {NUM}"
    if m := re.fullmatch(rf"{REG} = xchg(?:32)?_(64|32)\({place}, {REG}\)", text):
        return Expected(STX | MODE_ATOMIC | _size(m[3]), dst=int(m[4]), src=int(m[8]), off=_mem_off(m[5], m[6]),
                        imm=ATOMIC_XCHG)
    if m := re.fullmatch(rf"[rw]0 = cmpxchg(?:32)?_(64|32)\({place}, [rw]0, {REG}\)", text):
        return Expected(STX | MODE_ATOMIC | _size(m[1]), dst=int(m[2]), src=int(m[6]), off=_mem_off(m[3], m[4]),
                        imm=ATOMIC_CMPXCHG)
    return None


def _jump(text: str) -> Expected | None:
    if m := re.fullmatch(rf"if {REG} (\S+) {REG} goto [+-].*", text):
        cls = JMP if m[1] == "r" else JMP32
        return Expected(cls | JMP_TEXT[m[3]] | SRC_X, dst=int(m[2]), src=int(m[5]))
    if m := re.fullmatch(rf"if {REG} (\S+) {NUM} goto [+-].*", text):
        cls = JMP if m[1] == "r" else JMP32
        return Expected(cls | JMP_TEXT[m[3]] | SRC_K, dst=int(m[2]), imm=_s32_of(int(m[4], 0)))
    if re.fullmatch(r"goto [+-].*", text):
        return Expected(JMP | JMP_JA)
    if re.fullmatch(r"gotol [+-].*", text):
        return Expected(JMP32 | JMP_JA)
    if re.fullmatch(r"call .*", text):
        return Expected(JMP | JMP_CALL)
    if text == "exit":
        return Expected(JMP | JMP_EXIT)
    if m := re.fullmatch(rf"r(\d+) = {NUM} ll", text):
        return Expected(LD_IMM64, dst=int(m[1]))
    return None


def expected(text: str) -> Expected:
    found = _jump(text) or _memory(text) or _alu(text)
    assert found is not None, f"the test does not know llvm-objdump's {text!r}"
    return found


def objdump_text(path: Path) -> dict[str, dict[int, str]]:
    """Section name -> byte offset -> llvm-objdump's text of the insn there."""
    res = run([objdump(), "-d", "--no-show-raw-insn", str(path)])
    assert res.returncode == 0, res.stderr
    out: dict[str, dict[int, str]] = {}
    section = ""
    for line in res.stdout.splitlines():
        if m := re.match(r"Disassembly of section (\S+):", line):
            section = m[1]
            out[section] = {}
        elif m := re.match(r"\s*(\d+):\t(.+)$", line):
            out[section][int(m[1]) * INSN_SIZE] = m[2].strip()   # BPF: llvm-objdump counts slots
    return out


def _assert_matches(insn: Insn, text: str, where: str) -> None:
    want = expected(text)
    assert insn.op == want.op, f"{where}: {text!r} is opcode {want.op:#04x}, decoded {insn!r}"
    for name in ("dst", "src", "off", "imm"):
        value = getattr(want, name)
        if value is not None:
            assert getattr(insn, name) == value, f"{where}: {text!r}: {name} {value}, decoded {insn!r}"
    if want.op & CLASS_MASK in (JMP, JMP32):
        assert insn.is_jmp_class
        assert insn.is_call == (text.startswith("call"))
        assert insn.is_exit == (text == "exit")
        assert insn.is_branch == (text.startswith(("if ", "goto", "gotol")))
        assert insn.is_unconditional == (text.startswith("goto"))
        assert insn.is_gotol == text.startswith("gotol")
    else:
        assert not (insn.is_jmp_class or insn.is_call or insn.is_branch or insn.is_exit)


@pytest.mark.parametrize("compiler, mcpu", [(19, "v3"), (19, "v4"), (14, "v3"), (14, "v2")])
def test_named_opcodes_match_llvm_objdump(tmp_path: Path, compiler: int, mcpu: str) -> None:
    src = tmp_path / "ops.c"
    src.write_text(OPS_C)
    obj = tmp_path / "ops.o"
    v4 = ("V4",) if mcpu == "v4" else ()
    compile_bpf(src, obj, clang(compiler), mcpu=mcpu, defines=v4, extra=("-Wno-unused-parameter",))
    text = objdump_text(obj)
    bpf = load_object(obj)
    seen_ops: set[int] = set()
    for sec in bpf.sections:
        if not sec.executable:
            continue
        code = decode_section(sec.index, sec.name, bpf.section_data(sec), bpf.relocations(sec)[1])
        listed = text[sec.name]
        assert sorted(listed) == [insn.orig for insn in code.insns], sec.name
        for insn in code.insns:
            _assert_matches(insn, listed[insn.orig], f"{obj.name} {sec.name}+{insn.orig:#x}")
            seen_ops.add(insn.op)
    # the program really exercises what the names cover (not an empty comparison)
    must = {ALU64 | ALU_ADD | SRC_X, ALU64 | ALU_ARSH | SRC_X, ALU64 | ALU_NEG,
            LDX | MODE_MEM | SIZE_DW, LDX | MODE_MEM | SIZE_H, LDX | MODE_MEM | SIZE_B, STX | MODE_MEM | SIZE_W,
            JMP | JMP_JGT | SRC_X, JMP | JMP_JSGT | SRC_K, LD_IMM64, JMP | JMP_CALL, JMP | JMP_EXIT}
    if mcpu != "v2":     # v3: 32-bit ALU and JMP32, atomics
        must |= {STX | MODE_ATOMIC | SIZE_DW, STX | MODE_ATOMIC | SIZE_W, JMP32 | JMP_JEQ | SRC_X,
                 ALU | ALU_XOR | SRC_X}
    if mcpu == "v4":     # bswap instead of be/le, sign-extending loads and moves
        must |= {LDX | MODE_MEMSX | SIZE_B, ALU64 | ALU_END | SRC_K}
    else:
        must |= {ALU | ALU_END | SRC_X}
    assert must <= seen_ops, [f"{op:#04x}" for op in sorted(must - seen_ops)]


def test_format_argument_opcodes_are_the_named_ones() -> None:
    """The notes' argument forms (format.py spells them as numbers) are the
    instructions the names compose."""
    assert fmt.OP_MOV64_X == MOV64_X == ALU64 | ALU_MOV | SRC_X
    assert fmt.OP_MOV64_K == MOV64_K == ALU64 | ALU_MOV | SRC_K
    assert {LDX | MODE_MEM | size: n for n, size in SIZE_OF_BYTES.items()} == fmt.OP_LDX
    assert fmt.FRAME_REG == R10
    assert {SIZE_B, SIZE_H, SIZE_W, SIZE_DW} == set(SIZE_OF_BYTES.values())


def _code(*insns: Insn) -> bytes:
    return b"".join(i.encode() for i in insns)


def test_ld_imm64_halves_and_hostile_code_sections() -> None:
    """The 16-byte ld_imm64 decodes as one instruction wherever it stands; a
    cut-off or malformed one, or a jump into its second half, is an
    InputError naming the place."""
    wide = ld_imm64(R1, 0x1122334455667788)
    code = decode_section(1, "xdp", _code(wide, Insn(JMP | JMP_EXIT), wide, Insn(JMP | JMP_EXIT)))
    assert [(i.op, i.orig) for i in code.insns] == [(LD_IMM64, 0), (JMP | JMP_EXIT, 16), (LD_IMM64, 24),
                                                    (JMP | JMP_EXIT, 40)]
    assert [(i.imm & U32_MAX) | (i.imm_hi & U32_MAX) << 32 for i in code.insns if i.op == LD_IMM64] == \
        [0x1122334455667788] * 2
    encoded, _ = encode_sections({1: code}, [])
    assert encoded[1].position(code.end) == 48 and len(encoded[1].data) == 48
    with pytest.raises(InputError, match=r"xdp\+0x8: ld_imm64 cut off by the section end"):
        decode_section(1, "xdp", _code(Insn(JMP | JMP_EXIT)) + wide.encode()[:INSN_SIZE])
    with pytest.raises(InputError, match=r"xdp\+0x0: malformed second half of ld_imm64"):
        decode_section(1, "xdp", wide.encode()[:INSN_SIZE] + Insn(JMP | JMP_EXIT).encode())
    with pytest.raises(InputError, match=r"xdp\+0x0: malformed second half of ld_imm64"):
        decode_section(1, "xdp", wide.encode()[:INSN_SIZE] * 2 + bytes(INSN_SIZE))
    into_half = Insn(JMP | JMP_JA, off=1)          # goto +1: the second half of the ld_imm64 after it
    with pytest.raises(InputError, match=r"xdp\+0x0: jump to 0x10, which is not an instruction"):
        decode_section(1, "xdp", _code(into_half, wide, Insn(JMP | JMP_EXIT)))


def test_registers_of_atomics_follow_their_imm_and_a_stale_position_is_refused() -> None:
    """What an instruction reads and writes is kept per opcode and registers,
    but an atomic's depends on its imm (cmpxchg writes r0, a fetch its src);
    and an instruction a later encoding did not lay out (removed from its
    section meanwhile) is refused as a branch target, not read at its old place."""
    cmpxchg = Insn(STX | MODE_ATOMIC | SIZE_DW, R10, R1, -8, ATOMIC_CMPXCHG)
    fetch_add = Insn(STX | MODE_ATOMIC | SIZE_DW, R10, R1, -8, ALU_ADD | ATOMIC_FETCH)
    plain_add = Insn(STX | MODE_ATOMIC | SIZE_DW, R10, R1, -8, ALU_ADD)
    for _ in range(2):            # the second round asks again, where a cache would answer
        assert (regs_defined(cmpxchg), regs_defined(fetch_add), regs_defined(plain_add)) == \
            (frozenset({R0}), frozenset({R1}), frozenset())
        assert regs_used(cmpxchg) == frozenset({R10, R1, R0}) and regs_used(fetch_add) == frozenset({R10, R1})
        assert regs_masks(cmpxchg) == ((1 << R10) | (1 << R1) | (1 << R0), 1 << R0)
    skip = Insn(JMP | JMP_JA, off=1)                       # goto +1: over the mov, to the exit
    code = decode_section(1, "xdp", _code(skip, Insn(MOV64_K, R0, 0, 0, 7), Insn(JMP | JMP_EXIT)))
    encoded, _ = encode_sections({1: code}, [])
    assert encoded[1].data == _code(skip, Insn(MOV64_K, R0, 0, 0, 7), Insn(JMP | JMP_EXIT))
    assert encoded[1].position(code.insns[2]) == 2 * INSN_SIZE
    del code.insns[2]                                      # the branch's target, laid out before
    with pytest.raises(InputError, match=r"xdp\+0x0: refers to an instruction that was removed"):
        encode_sections({1: code}, [])


def test_a_reference_standing_at_several_places_is_encoded_where_it_stands() -> None:
    """One call object at several places (the sites of one shape share their
    calls) is encoded at each against its own position: relative calls in
    the callee's section, and calls through a relocation against the
    callee's section symbol from another section (one relocation at each)."""
    target_code = decode_section(2, ".text", _code(Insn(MOV64_K, R0, 0, 0, 1), Insn(JMP | JMP_EXIT)))
    callee = target_code.insns[1]                    # the second instruction of .text: a call's target
    local = pseudo_call(callee)
    target_code.insns[:0] = [local, Insn(MOV64_K, R1, 0, 0, 2), local]
    far = pseudo_call(callee)
    far.reloc = InsnReloc(R_BPF_64_32, 1)
    caller = decode_section(3, "xdp", _code(Insn(JMP | JMP_EXIT)))
    caller.insns[:0] = [far, Insn(MOV64_K, R1, 0, 0, 2), far]
    section_symbol = Symbol(1, "", 0, 0, STT_SECTION, STB_LOCAL, 2)
    encoded, _ = encode_sections({2: target_code, 3: caller}, [Symbol(0, "", 0, 0, 0, 0, 0), section_symbol])
    callee_at = encoded[2].position(callee)
    assert callee_at == 4 * INSN_SIZE
    text = decode_section(2, ".text", encoded[2].data)
    assert [x.target is text.insns[4] for x in text.insns[:3]] == [True, False, True]
    relocs = encoded[3].relocs
    assert list(relocs.offsets) == [0, 2 * INSN_SIZE] and set(relocs.infos) == {r_info(1, R_BPF_64_32)}
    at = [Relocation(offset, R_BPF_64_32, 1, None) for offset in relocs.offsets]
    far_imms = [x.imm for x in decode_section(3, "xdp", encoded[3].data, at).insns[:3:2]]
    assert far_imms == [callee_at // INSN_SIZE - 1] * 2     # libbpf: callee slot = symbol value / 8 + imm + 1

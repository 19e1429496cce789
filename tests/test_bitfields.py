"""Bit-field arguments: any expression a call takes is a probe argument.

`BPF_SDT_PROBE1(flag, tcp->syn)` failed with "invalid application of 'sizeof'
to bit-field" while `f(tcp->syn)` compiles.  The test generates a struct with
bit-fields of every width (1..63 on a 64-bit base, 1..31 on a 32-bit one,
char and short bases, enums of both signs, _Bool) and probes that pass them
to declared types of other widths and signs, plus comparisons passed as
_Bool.  Each compiler must compile it under -Werror, `bpf-sdt check` must be
clean, and the value at each NOP (in the emulator, which does not use
bpf_sdt) and each value the recorder prints from a kernel test run must be
the C conversion of the field, computed here from the bytes.

Every field starts a 64-bit word of its own (a zero-width bit-field after
it), so field j is the low bits of little-endian word j on every compiler.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import analyze
from bpfemu import Machine
from objview import symbols
from toolchain import bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.elf import load_object

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
COMPILERS = ["clang-14", "clang-19", "bpf-gcc"]
WORD_BYTES = 8
SEEDS = (1, 2, 3)            # packets / contexts: random words, plus all ones
ALL_ONES = 0xFF
XDP_PASS = 2
TRACE_TIMEOUT_S = 120
CLANG_ENUM_SIGN = 15         # the first clang whose BTF says an enum is signed (kind_flag)


@dataclass(frozen=True)
class Field:
    name: str
    base: str          # the bit-field's declared type in the struct
    width: int
    signed: bool


@dataclass(frozen=True)
class Decl:
    ctype: str
    size: int          # bytes; 0 for _Bool (converted by != 0)
    signed: bool


U8, S16, BOOL = Decl("unsigned char", 1, False), Decl("short", 2, True), Decl("_Bool", 0, False)
U32, S32 = Decl("unsigned int", 4, False), Decl("int", 4, True)
U64, S64 = Decl("unsigned long long", 8, False), Decl("long long", 8, True)
ENUM_U, ENUM_S = Decl("enum eu", 4, False), Decl("enum es", 4, True)


def _fields() -> list[Field]:
    out = []
    for k in range(1, 64):
        out += [Field(f"u{k}", "unsigned long long", k, False), Field(f"s{k}", "long long", k, True)]
    for k in range(1, 32):
        out += [Field(f"iu{k}", "unsigned int", k, False), Field(f"is{k}", "int", k, True)]
    out += [Field("cu", "unsigned char", 5, False), Field("cs", "signed char", 4, True),
            Field("hu", "unsigned short", 9, False), Field("hs", "short", 11, True),
            Field("eu", "enum eu", 3, False), Field("es", "enum es", 2, True), Field("b", "_Bool", 1, False)]
    return out


FIELDS = _fields()
INDEX = {f.name: i for i, f in enumerate(FIELDS)}


@dataclass(frozen=True)
class Arg:
    expr: str                                   # `f` is the struct pointer
    decl: Decl
    value: Callable[[dict[str, int]], int]      # the C value before conversion


def _field(name: str) -> Arg:
    return Arg(f"f->{name}", U64, lambda v: v[name])


@dataclass(frozen=True)
class Site:
    probe: str
    args: tuple[Arg, ...]


def _as(decl: Decl, arg: Arg) -> Arg:
    return Arg(arg.expr, decl, arg.value)


def _sites() -> list[Site]:
    """Every field once at its natural declared type, and again converted to
    narrower, wider, other-signed and _Bool declared types."""
    sites = []
    for k in range(1, 64):
        u, s = _field(f"u{k}"), _field(f"s{k}")
        sites.append(Site("w64", (_as(U64, u), _as(S64, s), _as(U8, s), _as(S16, u), _as(BOOL, u))))
    for k in range(1, 32):
        u, s = _field(f"iu{k}"), _field(f"is{k}")
        sites.append(Site("w32", (_as(U32, u), _as(S32, s), _as(S64, u), _as(U64, s))))
    small = [_field(n) for n in ("cu", "cs", "hu", "hs")]
    sites.append(Site("small", (_as(S32, small[0]), _as(S32, small[1]), _as(U64, small[2]), _as(U8, small[3]))))
    eu, es = _field("eu"), _field("es")
    sites.append(Site("enums", (_as(ENUM_U, eu), _as(ENUM_S, es), _as(S64, eu), _as(U32, es))))
    sites.append(Site("bools", (
        _as(BOOL, _field("b")),
        Arg("f->u3 == 5", BOOL, lambda v: int(v["u3"] == 5)),
        Arg("f->s5 < 0", BOOL, lambda v: int(v["s5"] < 0)),
        Arg("!f->u1", BOOL, lambda v: int(not v["u1"])),
        Arg("f->b && f->iu2 > 1", S32, lambda v: int(bool(v["b"]) and v["iu2"] > 1)))))
    return sites


SITES = _sites()
PROBES = {s.probe: tuple(a.decl.ctype for a in s.args) for s in SITES}


def source() -> str:
    """XDP program `prog` reading the struct from the packet; with -DEMU, a
    plain function taking the struct pointer (the emulator's r1)."""
    lines = ["#include <bpf_sdt.h>", "enum eu { EU_A, EU_B, EU_C = 5 };", "enum es { ES_NEG = -2, ES_POS = 1 };",
             "struct fields {"]
    lines += [f"\t{f.base} {f.name}:{f.width}; unsigned long long :0;" for f in FIELDS]
    lines.append("};")
    lines += [f"BPF_SDT_DECLARE{len(types)}({name}, {', '.join(types)});" for name, types in PROBES.items()]
    body = [f"\tBPF_SDT_PROBE{len(s.args)}({s.probe}, {', '.join(a.expr for a in s.args)});" for s in SITES]
    lines += ["#ifdef EMU", "__attribute__((noinline)) int sites(struct fields *f)", "{", *body, "\treturn 0;", "}",
              "#else", "struct xdp_md { unsigned int data, data_end; };",
              '__attribute__((section("xdp"), used)) int prog(struct xdp_md *ctx)', "{",
              "\tstruct fields *f = (void *)(long)ctx->data;",
              "\tif ((void *)(f + 1) > (void *)(long)ctx->data_end)", "\t\treturn 0;", *body,
              f"\treturn {XDP_PASS};", "}", "#endif",
              'char _license[] __attribute__((section("license"), used)) = "GPL";']
    return "\n".join(lines) + "\n"


def payload(seed: int) -> bytes:
    if seed == 0:
        return bytes([ALL_ONES]) * (WORD_BYTES * len(FIELDS))
    return random.Random(seed).randbytes(WORD_BYTES * len(FIELDS))


def field_values(data: bytes) -> dict[str, int]:
    """Each field from its word: the low `width` bits, sign-extended if signed."""
    out = {}
    for i, f in enumerate(FIELDS):
        raw = int.from_bytes(data[WORD_BYTES * i:WORD_BYTES * (i + 1)], "little") & ((1 << f.width) - 1)
        out[f.name] = raw - (1 << f.width) if f.signed and raw >> (f.width - 1) else raw
    return out


def converted(decl: Decl, value: int) -> int:
    """C's conversion of an integer value to the declared type."""
    if decl.size == 0:
        return int(value != 0)
    bits = 8 * decl.size
    value &= (1 << bits) - 1
    return value - (1 << bits) if decl.signed and value >> (bits - 1) else value


def expected(data: bytes, enum_sign: bool = True) -> list[list[int]]:
    """Each site's converted values.  Without ``enum_sign``, a signed enum
    reads as unsigned, as consumers read clang 14's BTF (bpf_sdt.argtype)."""
    values = field_values(data)
    return [[converted(a.decl if enum_sign or a.decl != ENUM_S else ENUM_U, a.value(values)) for a in s.args]
            for s in SITES]


def _compiler(name: str) -> str:
    return tool("bpf-gcc") if name == "bpf-gcc" else clang(int(name.split("-")[1]))


def _check_clean(obj: Path, gcc: bool) -> None:
    res = run([*CLI, "check", str(obj)])
    assert res.returncode == 0, res.stdout + res.stderr
    # bpf-gcc: SDT105 (old relocation number) and SDT114 (no btf_decl_tag) only
    allowed = ("SDT105", "SDT114") if gcc else ()
    for line in (res.stdout + res.stderr).splitlines():
        assert "warning" not in line or any(rule in line for rule in allowed), line


@pytest.mark.parametrize("compiler", COMPILERS)
def test_bitfields_compile_check_and_hold_their_values(compiler: str, tmp_path: Path) -> None:
    src = tmp_path / "bitfields.bpf.c"
    src.write_text(source())
    gcc = compiler == "bpf-gcc"
    for defines in ((), ("EMU",)):
        obj = tmp_path / f"bitfields{'-emu' if defines else ''}.o"
        compile_bpf(src, obj, _compiler(compiler), defines=defines)
        _check_clean(obj, gcc)
    elf = load_object(obj)
    report = analyze(elf)
    assert [s.name for s in report.sites] == [s.probe for s in SITES]
    start = next(v for v, flags, sec, _size, name in symbols(str(obj)) if name == "sites" and "F" in flags)
    code = elf.section_data(elf.section(".text"))  # type: ignore[arg-type]
    for seed in (0, *SEEDS):
        data = payload(seed)
        for site, got_site, want in zip(SITES, report.sites, expected(data), strict=True):
            state = Machine(code, data).run_until(start // WORD_BYTES, got_site.offset // WORD_BYTES)
            for k, (arg, loc, value) in enumerate(zip(site.args, got_site.args, want, strict=True), 1):
                if loc.kind == "reg" and loc.reg is not None:
                    got = state.regs[loc.reg]
                elif loc.kind == "imm" and loc.value is not None:
                    got = loc.value
                else:
                    assert loc.kind == "stack" and loc.offset is not None
                    got = state.read_stack(loc.offset, max(arg.decl.size, 1))
                # a register may hold more bits than the type: compare at its width
                bits = 8 * max(arg.decl.size, 1)
                assert converted(Decl("", max(arg.decl.size, 1), False), got) == value & ((1 << bits) - 1), \
                    (compiler, seed, site.probe, k, arg.expr, loc)


@pytest.mark.kernel
@pytest.mark.parametrize("version", [14, 19])
def test_bitfield_values_through_the_recorder_in_the_kernel(version: int, tmp_path: Path) -> None:
    """instrument + BPF_PROG_TEST_RUN: the recorder prints each site's values,
    typed by the probe's BTF prototype: the converted field values."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    tool("bpftool")
    src = tmp_path / "bitfields.bpf.c"
    src.write_text(source())
    obj = tmp_path / "bitfields.o"
    compile_bpf(src, obj, clang(version))
    eth = bytes(14)          # the struct starts at the packet's first byte
    for seed in (0, *SEEDS):
        data = payload(seed)
        pkt = tmp_path / f"p{seed}.bin"
        pkt.write_bytes(data if len(data) >= len(eth) else data + eth)
        res = subprocess.run([*CLI, "trace", str(obj), "--run", "prog", "--packet", str(pkt), "--json"],
                             capture_output=True, text=True, timeout=TRACE_TIMEOUT_S, check=False)
        assert res.returncode == 0, res.stderr
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        events = [e for e in lines if "probe" in e]
        (run_line,) = [e for e in lines if "run" in e]
        assert run_line["retval"] == XDP_PASS
        assert [e["probe"] for e in events] == [s.probe for s in SITES]
        got = [[int(a) for a in e["args"]] for e in events]
        assert got == expected(data, enum_sign=version >= CLANG_ENUM_SIGN), (version, seed)

"""The compile matrix: real compilers x -mcpu x -O level x arity 0..12 x every
argument kind, all under -Wall -Wextra -Werror.

Each object is confirmed three independent ways:
  1. llvm-objdump/readelf + capstone (tests/objview.py): every entry's
     relocation is R_BPF_64_ABS64 against the code section and lands on a
     `goto +0`; every arg insn has the form the spec says for its position.
  2. the kernel-independent emulator (tests/bpfemu.py) runs each function to
     its NOP: the register / stack slot / immediate the note names holds the
     argument's C value there.
  3. bpftool's BTF JSON: each probe's FUNC_PROTO spells the declared types.
and bpf-sdt's own `check` must be clean and its `list` must agree with (1).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import analyze
from bpfemu import Machine
from matrix_src import GLOBAL_ADDRS, KINDS, probes, random_ctx, source
from objview import (
    btf_json,
    btf_prototypes,
    disassemble,
    parse_arg,
    relocations,
    sites,
    stack_size,
    symbols,
    type_name,
)
from toolchain import REQUIRED_CLANGS, clang, clangs, compile_bpf, mcpus, tool

from bpf_sdt.elf import load_object

PROBES = probes()
BY_NAME = {p.name: p for p in PROBES}


def _configs() -> list[tuple[str, int, str, str]]:
    versions = sorted(set(clangs()) | set(REQUIRED_CLANGS))
    return [("clang", v, cpu, opt) for v in versions for cpu in mcpus(v) for opt in ("-O1", "-O2")]


@pytest.fixture(scope="module")
def matrix_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "matrix.bpf.c"
    path.write_text(source(PROBES))
    return path


def _linked_text(obj: Path, code: bytes) -> bytes:
    """.text as a linker would leave it with each global at GLOBAL_ADDRS, read
    from llvm-objdump's relocations (BPF uses REL: an LD_IMM64's own imm holds
    the addend)."""
    out = bytearray(code)
    for off, rtype, sym in relocations(str(obj), ".text"):
        assert rtype == "R_BPF_64_64" and sym in GLOBAL_ADDRS, f"{obj.name}: unexpected {rtype} {sym}"
        addr = GLOBAL_ADDRS[sym] + struct.unpack_from("<i", out, off + 4)[0]
        struct.pack_into("<II", out, off + 4, addr & 0xFFFFFFFF, 0)
        struct.pack_into("<I", out, off + 12, addr >> 32)
    return bytes(out)


def _check_object(obj: Path, *, gcc: bool = False) -> None:
    elf = load_object(obj)
    report = analyze(elf)
    errors = [f.render() for f in report.findings if f.severity == "error"]
    assert not errors, errors[:5]
    assert not gcc or report.findings, "gcc objects must warn about missing decl tags"
    view = sites(str(obj))
    assert len(view) == len(PROBES), "one entry per probe site"

    code = {i.index: i for i in disassemble(str(obj), ".text")}
    funcs = {name: value for value, flags, sec, _size, name in symbols(str(obj))
             if sec == ".text" and "F" in flags}
    code_bytes = _linked_text(obj, elf.section_data(elf.section(".text")))  # type: ignore[arg-type]
    ours = {(s.section, s.offset): s for s in report.sites}
    ctx, fields = random_ctx(len(view))

    for vs in view:
        probe = BY_NAME[vs.symbol.removeprefix("___sdt_jt_").split(".")[0]]
        where = f"{obj.name}: {probe.name}"
        # (1) relocation and NOP, read by llvm-objdump
        assert vs.reloc_type == ("R_BPF_64_NODYLD32" if gcc else "R_BPF_64_ABS64") or gcc, where
        assert vs.reloc_symbol == ".text", where
        nop = code[vs.offset // 8]
        assert nop.raw == b"\x05" + bytes(7) and "goto" in nop.text, where
        assert len(vs.args) == len(probe.kinds), where
        # bpf-sdt list agrees with the independent view
        mine = ours[(".text", vs.offset)]
        assert mine.name == probe.name and len(mine.args) == len(vs.args), where
        # (2) machine state at the NOP
        state = Machine(code_bytes, ctx).run_until(funcs[probe.function] // 8, vs.offset // 8)
        for k, (kind, txt, loc) in enumerate(zip(probe.kinds, vs.args, mine.args, strict=True), 1):
            form, dst, val = parse_arg(txt)
            assert dst == (k if k <= 5 else 0), f"{where} arg {k}: {txt}"
            assert form == loc.kind, f"{where} arg {k}: capstone {txt}, bpf-sdt {loc}"
            if kind.constant:
                assert form == "imm", f"{where} arg {k} ({kind.name}) should be an immediate: {txt}"
            elif kind.name.startswith("const_"):
                assert form != "imm", f"{where} arg {k} ({kind.name}) must not be truncated: {txt}"
            if form == "reg":   # bpf-gcc: 1..5; clang: 1..10, 11..12 while <= 10 are not immediates
                fits = k <= 10 or sum(a.kind != "imm" for a in mine.args[:k]) <= 10
                assert (k <= 5 if gcc else fits) and loc.reg == val, f"{where} arg {k}: {txt}"
                got = state.regs[val]
            elif form == "imm":
                assert loc.value == val, f"{where} arg {k}: {txt}"
                got = val
            else:
                assert k > (5 if gcc else 10) and loc.offset == val, f"{where} arg {k}: {txt}"
                assert stack_size(txt) == kind.size, f"{where} arg {k}: slot width"
                got = state.read_stack(val, kind.size)
            mask = (1 << (8 * kind.size)) - 1
            assert got & mask == kind.value(fields) & mask, \
                f"{where} arg {k} ({kind.name}) = {got & mask:#x}, want {kind.value(fields) & mask:#x} [{txt}]"
    # (3) BTF prototypes, read by bpftool
    if not gcc:
        protos = btf_prototypes(str(obj))
        types = {t["id"]: t for t in btf_json(str(obj))["types"]}
        for p in PROBES:
            spelled = [type_name(types, t) for t in protos[p.name]]
            assert spelled == [k.ctype for k in p.kinds], p.name


@pytest.mark.slow
@pytest.mark.parametrize("compiler,version,mcpu,opt", _configs(),
                         ids=lambda v: str(v).lstrip("-"))
def test_matrix_clang(compiler: str, version: int, mcpu: str, opt: str, matrix_c: Path,
                      tmp_path: Path) -> None:
    cc = clang(version)
    obj = tmp_path / f"matrix-{version}-{mcpu}{opt}.o"
    compile_bpf(matrix_c, obj, cc, mcpu=mcpu, opt=opt)
    _check_object(obj)


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["-O1", "-O2"])
def test_matrix_gcc(opt: str, matrix_c: Path, tmp_path: Path) -> None:
    gcc = tool("bpf-gcc")
    obj = tmp_path / f"matrix-gcc{opt}.o"
    compile_bpf(matrix_c, obj, gcc, opt=opt)
    _check_object(obj, gcc=True)


def test_every_kind_is_in_the_matrix() -> None:
    used = {k.name for p in PROBES for k in p.kinds}
    assert used == {k.name for k in KINDS}
    assert {len(p.kinds) for p in PROBES} == set(range(13))

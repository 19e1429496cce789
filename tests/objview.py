"""An independent view of a probe object, built only from the text output of
llvm-objdump / llvm-readelf and the JSON of `bpftool btf dump`, never from
bpf_sdt's own reader.  Tests compare the two views and the emulator's
machine state against each other."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from toolchain import objdump, run, tool

_DIS_LINE = re.compile(r"^\s*(\d+):\s+((?:[0-9a-f]{2} ){7}[0-9a-f]{2})(?: (?:[0-9a-f]{2} ){7}[0-9a-f]{2})?\s*(.*)$")
_SYM_LINE = re.compile(r"^([0-9a-f]{16}) (.{7}) (\S+)\s+([0-9a-f]{16}) (\S+)$")
_REL_LINE = re.compile(r"^([0-9a-f]{16}) (\S+)\s+(\S+)$")


@dataclass
class Insn:
    index: int
    raw: bytes
    text: str


@dataclass
class ViewSite:
    symbol: str
    entry_offset: int
    reloc_type: str
    reloc_symbol: str
    section: str
    offset: int
    args: list[str] = field(default_factory=list)   # llvm-objdump's text of each arg insn


def disassemble(path: str, section: str) -> list[Insn]:
    res = run([objdump(), "-d", "-j", section, path])
    assert res.returncode == 0, res.stderr
    out = []
    for line in res.stdout.splitlines():
        m = _DIS_LINE.match(line)
        if m:
            out.append(Insn(int(m.group(1)), bytes.fromhex(m.group(2).replace(" ", "")), m.group(3).strip()))
    return out


def symbols(path: str) -> list[tuple[int, str, str, int, str]]:
    """(value, flags, section, size, name) rows of llvm-objdump -t."""
    res = run([objdump(), "-t", path])
    rows = []
    for line in res.stdout.splitlines():
        m = _SYM_LINE.match(line.replace("\t", " "))
        if m:
            rows.append((int(m.group(1), 16), m.group(2), m.group(3), int(m.group(4), 16), m.group(5)))
    return rows


def relocations(path: str, section: str) -> list[tuple[int, str, str]]:
    res = run([objdump(), "-r", path])
    rows, current = [], None
    for line in res.stdout.splitlines():
        if line.startswith("RELOCATION RECORDS FOR ["):
            current = line[len("RELOCATION RECORDS FOR ["):].rstrip("]:")
        elif current == section and (m := _REL_LINE.match(line.strip())):
            rows.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return rows


def section_bytes(path: str, section: str) -> bytes:
    res = run([objdump(), "-s", "-j", section, path])
    data = bytearray()
    for line in res.stdout.splitlines():
        m = re.match(r"^ ([0-9a-f]{4,}) ((?:[0-9a-f]{2,8} ?){1,4})", line)
        if m:
            data += bytes.fromhex(m.group(2).replace(" ", ""))
    return bytes(data)


def sites(path: str) -> list[ViewSite]:
    notes = section_bytes(path, ".bpf_sdt_notes")
    entry_syms = sorted((v, n) for v, _f, sec, _s, n in symbols(path)
                        if sec == ".bpf_sdt_notes" and n.startswith("___sdt_jt_"))
    rels = {off: (typ, sym) for off, typ, sym in relocations(path, ".bpf_sdt_notes")}
    out = []
    for i, (start, name) in enumerate(entry_syms):
        end = entry_syms[i + 1][0] if i + 1 < len(entry_syms) else len(notes)
        typ, sym = rels[start]
        addend = int.from_bytes(notes[start:start + 8], "little")
        # capstone, one word at a time: llvm-objdump fuses an address word whose low
        # byte is 0x18 (lddw) with the arg insn after it.
        args = [capstone_text(notes[off:off + 8]) for off in range(start + 8, end, 8)]
        out.append(ViewSite(name, start, typ, sym, sym, addend, args))
    return out


def capstone_text(word: bytes) -> str:
    """capstone's eBPF text for one insn: `mov64 r1, r3`, `ldxdw r0, [r10+0xfff8]`."""
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_BPF, capstone.CS_MODE_BPF_EXTENDED)
    insns = list(md.disasm(word, 0))
    return f"{insns[0].mnemonic} {insns[0].op_str}" if insns else f"<undecodable {word.hex()}>"


_CS_REG = re.compile(r"^mov64 r(\d+), r(\d+)$")
_CS_IMM = re.compile(r"^mov64 r(\d+), (0x[0-9a-f]+|\d+)$")
_CS_LDX = re.compile(r"^ldx(b|h|w|dw) r(\d+), \[r10\+(0x[0-9a-f]+)\]$")


def parse_arg(text: str) -> tuple[str, int, int]:
    """capstone text -> (kind, dst, value): value is the src reg, the sign-extended
    imm, or (stack) the r10 offset * 16 + size encoded as (offset, size) in a tuple."""
    if m := _CS_REG.match(text):
        return "reg", int(m.group(1)), int(m.group(2))
    if m := _CS_IMM.match(text):
        v = int(m.group(2), 0)
        return "imm", int(m.group(1)), v - (1 << 32) if v >> 31 else v
    if m := _CS_LDX.match(text):
        off = int(m.group(3), 16)
        return "stack", int(m.group(2)), off - (1 << 16) if off >> 15 else off
    raise AssertionError(f"unexpected arg insn {text!r}")


LDX_SIZE = {"b": 1, "h": 2, "w": 4, "dw": 8}


def stack_size(text: str) -> int:
    m = _CS_LDX.match(text)
    assert m, text
    return LDX_SIZE[m.group(1)]


def btf_json(path: str) -> dict:  # type: ignore[type-arg]
    res = run([tool("bpftool"), "btf", "dump", "file", path, "-j"])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def btf_prototypes(path: str) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    """probe name -> the FUNC_PROTO params (bpftool JSON types, typedefs kept)."""
    types = {t["id"]: t for t in btf_json(path)["types"]}

    def skip_quals(tid: int) -> dict:  # type: ignore[type-arg]
        t = types[tid]
        while t["kind"] in ("CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            t = types[t["type_id"]]
        return t

    protos = {}
    for t in types.values():
        if t["kind"] == "DECL_TAG" and t["name"].startswith("bpf_sdt:"):
            _, name, n = t["name"].split(":")
            var = types[t["type_id"]]
            assert var["kind"] == "VAR"
            ptr = skip_quals(var["type_id"])
            assert ptr["kind"] == "PTR"
            proto = skip_quals(ptr["type_id"])
            assert proto["kind"] == "FUNC_PROTO"
            params = [types[p["type_id"]] if p["type_id"] else {"kind": "VOID"} for p in proto["params"]]
            assert len(params) == int(n)
            protos[name] = params
    return protos


def type_name(types: dict[int, dict], t: dict) -> str:  # type: ignore[type-arg]
    """A bpftool JSON type spelled roughly as C (enough for comparisons)."""
    k = t["kind"]
    if k in ("INT", "TYPEDEF", "FLOAT"):
        return str(t["name"])
    if k == "ENUM":
        return f"enum {t['name']}"
    if k in ("STRUCT", "UNION"):
        return f"{k.lower()} {t['name']}"
    if k == "PTR":
        return (type_name(types, types[t["type_id"]]) if t["type_id"] else "void") + " *"
    if k == "CONST":
        return "const " + (type_name(types, types[t["type_id"]]) if t["type_id"] else "void")
    return k

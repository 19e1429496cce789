"""The hand-written BTF reader against `bpftool btf dump -j`, on real objects
and on the running kernel's vmlinux BTF, plus forward-compatibility cases."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from toolchain import clang, compile_bpf, need, run, tool

from bpf_sdt.btf import Btf, parse_btf
from bpf_sdt.elf import load_object
from bpf_sdt.errors import InputError

KINDS = """#include <bpf_sdt.h>
typedef unsigned int u32;
enum small { A = -1, B = 7 };
enum big { HUGE = 0x1ffffffffLL };
struct s { int a; unsigned b : 3; char c[5]; union { long x; void *p; } u; };
struct fwd;
int __attribute__((btf_type_tag("user"))) *tagged;
volatile const u32 vc = 3;
float f;
struct fwd *fp;
int (*fnp)(int, const char *);
BPF_SDT_DECLARE3(k, struct s *, enum small, int (*)(int, const char *));
int use(struct s *p, enum big b) { BPF_SDT_PROBE3(k, p, A, fnp); return p->a + (int)b; }
"""


def _compare(btf: Btf, dump: dict) -> int:  # type: ignore[type-arg]
    """Every type: kind, name, referenced type / size, members, as bpftool says."""
    types = dump["types"]
    assert len(btf.types) - 1 == len(types)
    for ref in types:
        t = btf.types[ref["id"]]
        assert t.kind_name == ref["kind"], ref
        assert t.name == ref["name"].replace("(anon)", ""), ref
        if "type_id" in ref and ref["kind"] != "ARRAY":   # bpftool: ARRAY type_id = element
            assert t.type == ref["type_id"], ref
        if "size" in ref:
            assert t.size == ref["size"], ref
        if ref["kind"] in ("STRUCT", "UNION"):
            assert [(m.name, m.type, m.offset & 0xFFFFFF) for m in t.members] == \
                [(m["name"].replace("(anon)", ""), m["type_id"], m["bits_offset"]) for m in ref["members"]], ref
        if ref["kind"] == "FUNC_PROTO":
            assert [p.type for p in t.members] == [p["type_id"] for p in ref["params"]], ref
        if ref["kind"] in ("ENUM", "ENUM64"):
            # bpftool 7.1 prints an unsigned 32-bit enum value sign-extended to 64
            # bits (0xefffffff as 18446744073441116159): compare modulo the width.
            mod = 1 << (8 * t.size)
            assert [(m.name, m.value % mod) for m in t.members] == \
                [(v["name"], v["val"] % mod) for v in ref["values"]], ref
        if ref["kind"] == "INT":
            assert t.int_bits == ref["nr_bits"] and t.int_offset == ref["bits_offset"], ref
        if ref["kind"] == "ARRAY":
            assert (t.elem_type, t.index_type, t.nelems) == (ref["type_id"], ref["index_type_id"], ref["nr_elems"])
        if ref["kind"] == "DECL_TAG":
            assert t.component_idx == ref["component_idx"], ref
        if ref["kind"] == "DATASEC":
            assert [(v.type, v.offset, v.size) for v in t.members] == \
                [(v["type_id"], v["offset"], v["size"]) for v in ref["vars"]], ref
    return len(types)


def _bpftool_dump(path: Path) -> dict:  # type: ignore[type-arg]
    res = run([tool("bpftool"), "btf", "dump", "file", str(path), "-j"])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_every_kind_in_a_compiled_object_matches_bpftool(tmp_path: Path) -> None:
    src = tmp_path / "kinds.c"
    src.write_text(KINDS)
    obj = tmp_path / "kinds.o"
    compile_bpf(src, obj, clang(19), extra=("-Wno-ignored-attributes",))
    o = load_object(obj)
    btf = o.btf
    assert btf is not None
    n = _compare(btf, _bpftool_dump(obj))
    kinds = {t.kind_name for t in btf.types[1:]}
    assert {"INT", "PTR", "ARRAY", "STRUCT", "UNION", "ENUM", "ENUM64", "FWD", "TYPEDEF",
            "VOLATILE", "CONST", "FUNC", "FUNC_PROTO", "VAR", "DATASEC", "FLOAT", "DECL_TAG",
            "TYPE_TAG"} <= kinds, kinds
    assert n > 20
    protos = {t.name: t for t in btf.types if t.kind_name == "DECL_TAG"}
    assert "bpf_sdt:k:3" in protos


def test_vmlinux_btf_matches_bpftool() -> None:
    vmlinux = Path("/sys/kernel/btf/vmlinux")
    need(vmlinux.exists(), "no /sys/kernel/btf/vmlinux on this kernel")
    btf = parse_btf(vmlinux.read_bytes())
    assert _compare(btf, _bpftool_dump(vmlinux)) > 10_000
    task = next(t for t in btf.types if t.name == "task_struct" and t.kind_name == "STRUCT")
    assert btf.size_of(task.id) == task.size > 1000


def test_c_spellings(tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text(KINDS)
    obj = tmp_path / "k.o"
    compile_bpf(src, obj, clang(19), extra=("-Wno-ignored-attributes",))
    from bpf_sdt.postlink.check import analyze

    decl = analyze(load_object(obj)).declarations["k"]
    assert decl.types == ("struct s *", "enum small", "int (*)(int, const char *)")
    assert decl.sizes == (8, 4, 8)


# --- synthetic BTF: forward compatibility and robustness ---------------------

def _btf(types: bytes, strings: bytes = b"\0int\0", layout: bytes = b"") -> bytes:
    hdr_len = 32 if layout else 24
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(types), len(types), len(strings))
    if layout:
        hdr += struct.pack("<II", len(types) + len(strings), len(layout))
    return hdr + types + strings + layout


INT = struct.pack("<IIII", 1, 1 << 24, 4, 32)     # "int", 4 bytes, 32 bits


def test_unknown_kind_without_layout_names_kind_and_type_id() -> None:
    data = _btf(INT + struct.pack("<III", 0, 25 << 24, 0))
    with pytest.raises(InputError, match="type 2 has kind 25"):
        parse_btf(data)


def test_unknown_kind_is_skipped_through_the_kind_layout() -> None:
    # kind 25: 4 extra bytes plus 8 per vlen element; vlen 2 -> 20 bytes after the record
    unknown = struct.pack("<III", 0, (25 << 24) | 2, 0) + bytes(4 + 16)
    layout = b"".join(struct.pack("<BBH", 4 if k == 25 else 0, 8 if k == 25 else 0, 0) for k in range(26))
    btf = parse_btf(_btf(INT + unknown + INT, layout=layout))
    assert [t.kind for t in btf.types[1:]] == [1, 25, 1] and btf.types[2].unknown


def test_vlen_is_read_from_24_bits() -> None:
    # a FUNC_PROTO whose vlen needs bit 16: 65536 params of 8 bytes each
    proto = struct.pack("<III", 0, (13 << 24) | 0x10000, 0) + struct.pack("<II", 0, 1) * 0x10000
    btf = parse_btf(_btf(INT + proto))
    assert len(btf.types[2].members) == 0x10000


@pytest.mark.parametrize("data, message", [
    (b"\xeb\x9f" + bytes(30), "big-endian"),
    (b"\x00\x00" + bytes(30), "bad magic"),
    (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0xFFFFFFF0, 0, 0), "runs past"),
    (_btf(struct.pack("<III", 0, (4 << 24) | 0xFFFFFF, 8)), "runs past the type section"),
    (_btf(INT, strings=b"\0int"), "unterminated"),
    (_btf(struct.pack("<IIII", 99, 1 << 24, 4, 32)), "past the string section"),
    (bytes(10), "shorter than a BTF header"),
])
def test_malformed_btf_is_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_btf(data)


def test_type_loops_do_not_hang() -> None:
    loop = struct.pack("<III", 0, 8 << 24, 2) + struct.pack("<III", 0, 8 << 24, 1)  # typedef <-> typedef
    btf = parse_btf(_btf(loop))
    with pytest.raises(InputError):
        btf.resolve(1)
    const_loop = struct.pack("<III", 0, 10 << 24, 2) + struct.pack("<III", 0, 10 << 24, 1)
    with pytest.raises(InputError):
        parse_btf(_btf(const_loop)).c_spelling(1)

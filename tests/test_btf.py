"""The hand-written BTF reader against `bpftool btf dump -j`, on real objects
and on the running kernel's vmlinux BTF, plus forward-compatibility cases."""

from __future__ import annotations

import json
import re
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import clang, compile_bpf, need, run, tool

from bpf_sdt.btf import (
    MEMORY_FACTOR,
    U32_MAX,
    Btf,
    BtfKind,
    BtfLinkage,
    find_func,
    find_funcs,
    parse_btf,
    set_func_linkage,
)
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


# --- named kinds and the compact form ------------------------------------------

def test_kinds_are_named_and_still_compare_as_numbers(tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text(KINDS)
    obj = tmp_path / "k.o"
    compile_bpf(src, obj, clang(19), extra=("-Wno-ignored-attributes",))
    btf = load_object(obj).btf
    assert btf is not None
    tags = [t for t in btf.types if t.kind == 17]
    assert tags and all(t.kind is BtfKind.DECL_TAG for t in tags)
    assert btf.get(0).kind is BtfKind.UNKN and btf.kind_of(0) == 0
    # the raw accessors agree with the built objects for every type
    for t in btf.types[1:]:
        assert btf.kind_of(t.id) == t.kind and btf.name_of(t.id) == t.name
    assert list(btf.ids(BtfKind.DECL_TAG)) == [t.id for t in tags]
    assert btf.types[-1].id == len(btf.types) - 1
    assert btf.resolve(btf.find("vc", BtfKind.VAR)[0]).kind == BtfKind.VAR


# --- generated hostile BTF: loops, depth, bad ids, truncation ------------------

class Gen:
    """Builds a type section one record at a time; ids start at 1."""

    def __init__(self) -> None:
        self.recs: list[bytes] = []
        self.strings = bytearray(b"\0")

    def name(self, s: str) -> int:
        off = len(self.strings)
        self.strings += s.encode() + b"\0"
        return off

    def add(self, kind: int, ref: int = 0, vlen: int = 0, name: int = 0, tail: bytes = b"", flag: bool = False) -> int:
        self.recs.append(struct.pack("<III", name, (kind << 24) | (int(flag) << 31) | vlen, ref) + tail)
        return len(self.recs)

    def int_(self, size: int = 4, bits: int = 32, enc: int = 1) -> int:
        return self.add(BtfKind.INT, size, name=self.name(f"i{size}"), tail=struct.pack("<I", (enc << 24) | bits))

    def array(self, elem: int, n: int = 2, index: int = 1) -> int:
        return self.add(BtfKind.ARRAY, tail=struct.pack("<III", elem, index, n))

    def proto(self, ret: int, params: list[int]) -> int:
        return self.add(BtfKind.FUNC_PROTO, ret, len(params), tail=b"".join(struct.pack("<II", 0, p) for p in params))

    def set_ref(self, type_id: int, ref: int) -> None:
        rec = bytearray(self.recs[type_id - 1])
        struct.pack_into("<I", rec, 8, ref)
        self.recs[type_id - 1] = bytes(rec)

    def set_elem(self, type_id: int, elem: int) -> None:
        rec = bytearray(self.recs[type_id - 1])
        struct.pack_into("<I", rec, 12, elem)
        self.recs[type_id - 1] = bytes(rec)

    def data(self) -> bytes:
        return _btf(b"".join(self.recs), bytes(self.strings))


WALKS: dict[str, Callable[[Btf, int], object]] = {
    "resolve": lambda b, i: b.resolve(i),
    "size_of": lambda b, i: b.size_of(i),
    "is_aggregate": lambda b, i: b.is_aggregate(i),
    "c_spelling": lambda b, i: b.c_spelling(i),
    "canonical": lambda b, i: b.c_spelling(i, canonical=True),
    "members": lambda b, i: b.get(i).members,
}


def _every_walk(btf: Btf, type_id: int) -> dict[str, str]:
    """Run every walk from type_id: each returns or raises a one-line InputError."""
    outcome = {}
    for what, walk in WALKS.items():
        try:
            walk(btf, type_id)
            outcome[what] = "ok"
        except InputError as e:
            assert "\n" not in str(e) and str(e).startswith("BTF: ")
            outcome[what] = "error"
    return outcome


def _hostile(build: Callable[[Gen], int]) -> tuple[Btf, int]:
    g = Gen()
    g.int_()
    top = build(g)
    return parse_btf(g.data()), top


def _self_ptr(g: Gen) -> int:
    p = g.add(BtfKind.PTR)
    g.set_ref(p, p)
    return p


def _array_self(g: Gen) -> int:
    a = g.array(0)
    g.set_elem(a, a)
    return a


def _typedef_loop(g: Gen) -> int:
    a = g.add(BtfKind.TYPEDEF, name=g.name("a"))
    b = g.add(BtfKind.TYPEDEF, a, name=g.name("b"))
    g.set_ref(a, b)
    return a


def _mutual_ptr_const(g: Gen) -> int:
    p = g.add(BtfKind.PTR)
    c = g.add(BtfKind.CONST, p)
    g.set_ref(p, c)
    return c


def _array_typedef_array(g: Gen) -> int:
    a = g.array(0)
    t = g.add(BtfKind.TYPEDEF, a, name=g.name("t"))
    v = g.add(BtfKind.VOLATILE, t)
    g.set_elem(a, v)
    return v


def _proto_param_loop(g: Gen) -> int:
    p = g.add(BtfKind.PTR)
    f = g.proto(1, [1, p])
    g.set_ref(p, f)
    return p


def _type_tag_loop(g: Gen) -> int:
    t = g.add(BtfKind.TYPE_TAG, name=g.name("user"))
    g.set_ref(t, t)
    return t


LOOPS = {
    "self_ptr": _self_ptr, "array_self": _array_self, "typedef_loop": _typedef_loop,
    "ptr_const_mutual": _mutual_ptr_const, "array_typedef_array": _array_typedef_array,
    "proto_param_loop": _proto_param_loop, "type_tag_loop": _type_tag_loop,
}


@pytest.mark.parametrize("name", LOOPS)
def test_type_loops_are_one_line_errors(name: str) -> None:
    btf, top = _hostile(LOOPS[name])
    start = time.perf_counter()
    outcome = _every_walk(btf, top)
    assert time.perf_counter() - start < 1
    # a typedef's plain spelling is its name and needs no walk; canonical always walks
    assert outcome["canonical"] == "error", outcome
    with pytest.raises(InputError, match="loop"):
        btf.c_spelling(top, canonical=True)


@pytest.mark.parametrize("kind", ["array", "typedef", "const", "ptr"])
def test_ten_thousand_deep_chains_are_refused_quickly(kind: str) -> None:
    g = Gen()
    cur = g.int_()
    for _ in range(10_000):
        if kind == "array":
            cur = g.array(cur, n=1)
        elif kind == "typedef":
            cur = g.add(BtfKind.TYPEDEF, cur, name=g.name("t"))
        else:
            cur = g.add(BtfKind.CONST if kind == "const" else BtfKind.PTR, cur)
    btf = parse_btf(g.data())
    start = time.perf_counter()
    outcome = _every_walk(btf, cur)
    assert time.perf_counter() - start < 2
    assert outcome["canonical"] == "error"
    if kind != "ptr":       # a pointer's size is 8 without looking at the pointee
        assert outcome["size_of"] == "error"
    with pytest.raises(InputError, match="levels deep|too large"):
        btf.c_spelling(cur, canonical=True)


def test_chains_within_the_bound_still_work() -> None:
    g = Gen()
    cur = g.int_()
    for _ in range(100):
        cur = g.array(cur, n=1)
    cur = g.add(BtfKind.TYPEDEF, cur, name=g.name("deep"))
    btf = parse_btf(g.data())
    assert btf.size_of(cur) == 4
    assert btf.c_spelling(cur, canonical=True) == "i4 " + "[1]" * 100


def test_exponential_prototypes_hit_the_spelling_budget() -> None:
    g = Gen()
    cur = g.int_()
    for _ in range(30):     # each level: a pointer to a prototype taking 8 of the level below
        cur = g.add(BtfKind.PTR, g.proto(1, [cur] * 8))
    btf = parse_btf(g.data())
    start = time.perf_counter()
    with pytest.raises(InputError, match="too large|nests"):
        btf.c_spelling(cur)
    assert time.perf_counter() - start < 2


def test_array_size_overflow_is_an_error() -> None:
    g = Gen()
    cur = g.int_()
    for _ in range(3):
        cur = g.array(cur, n=0xFFFFFFFF)
    with pytest.raises(InputError, match="larger than 4 GiB"):
        parse_btf(g.data()).size_of(cur)


@pytest.mark.parametrize("build", [
    lambda g: g.add(BtfKind.PTR, 999),
    lambda g: g.add(BtfKind.TYPEDEF, 0xFFFFFFFF, name=g.name("t")),
    lambda g: g.array(1, index=1) and g.array(12345),
    lambda g: g.add(BtfKind.PTR, g.proto(1, [1, 4242])),
    lambda g: g.add(BtfKind.CONST, g.add(BtfKind.VOLATILE, 77)),
], ids=["ptr", "typedef", "array_elem", "proto_param", "qualifiers"])
def test_out_of_range_ids_are_errors(build: Callable[[Gen], int]) -> None:
    btf, top = _hostile(build)
    outcome = _every_walk(btf, top)
    assert outcome["canonical"] == "error", outcome
    with pytest.raises(InputError, match="out of range"):
        btf.c_spelling(top, canonical=True)
    with pytest.raises(InputError, match="out of range"):
        btf.get(len(btf.types))


def _sample_section() -> bytes:
    g = Gen()
    i = g.int_()
    g.add(BtfKind.STRUCT, 8, 2, g.name("s"), struct.pack("<III", g.name("a"), i, 0) + struct.pack("<III", g.name("b"), i, 32))
    g.add(BtfKind.ENUM, 4, 1, g.name("e"), struct.pack("<Ii", g.name("X"), -1), flag=True)
    g.proto(i, [i, i])
    return g.data()


def test_every_truncation_of_the_type_section_is_an_error() -> None:
    data = _sample_section()
    type_len = struct.unpack_from("<I", data, 12)[0]
    for cut in range(type_len):
        short = bytearray(data)
        struct.pack_into("<I", short, 12, cut)
        try:
            btf = parse_btf(bytes(short))
        except InputError as e:
            assert "\n" not in str(e)
            continue
        for t in btf.types:             # a cut at a record boundary is a shorter, valid section
            _every_walk(btf, t.id)
    with pytest.raises(InputError, match="truncated|runs past|multiple of 4"):
        struct.pack_into("<I", short := bytearray(data), 12, type_len - 4)
        parse_btf(bytes(short))


@pytest.mark.parametrize("kind", [BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64,
                                  BtfKind.FUNC_PROTO, BtfKind.DATASEC])
def test_huge_vlen_is_refused_before_any_allocation(kind: int) -> None:
    data = _btf(INT + struct.pack("<III", 0, (kind << 24) | 0xFFFFFF, 4) + bytes(24))
    start = time.perf_counter()
    with pytest.raises(InputError, match="runs past the type section"):
        parse_btf(data)
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("where", ["type", "member", "enumerator", "param"])
def test_string_offsets_past_the_end_are_errors(where: str) -> None:
    bad = 10_000
    if where == "type":
        rec = struct.pack("<III", bad, BtfKind.TYPEDEF << 24, 1)
    elif where == "member":
        rec = struct.pack("<III", 0, (BtfKind.STRUCT << 24) | 2, 8) + struct.pack("<III", 1, 1, 0) + struct.pack("<III", bad, 1, 32)
    elif where == "enumerator":
        rec = struct.pack("<III", 0, (BtfKind.ENUM << 24) | 1, 4) + struct.pack("<II", bad, 0)
    else:
        rec = struct.pack("<III", 0, (BtfKind.FUNC_PROTO << 24) | 1, 1) + struct.pack("<II", bad, 1)
    with pytest.raises(InputError, match="past the string section"):
        parse_btf(_btf(INT + rec))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(words=st.lists(st.integers(min_value=0, max_value=U32_MAX), max_size=64),
       kinds=st.lists(st.integers(min_value=0, max_value=31), max_size=16))
def test_random_type_sections_never_crash(words: list[int], kinds: list[int]) -> None:
    """Word soup with plausible kinds in the info words: every outcome is a
    parse error or a BTF whose every walk returns or raises InputError."""
    for i, k in enumerate(kinds):      # plant kinds (and small vlens) where info words would be
        if 3 * i + 1 < len(words):
            words[3 * i + 1] = (k << 24) | (words[3 * i + 1] & 0x3)
    try:
        btf = parse_btf(_btf(struct.pack(f"<{len(words)}I", *words), b"\0a\0bb\0"))
    except InputError:
        return
    for i in range(len(btf.types)):
        _every_walk(btf, i)


# --- memory: a documented bound, measured -------------------------------------

def _peak_parse(data: bytes) -> tuple[Btf, int]:
    tracemalloc.start()
    try:
        btf = parse_btf(data)
        return btf, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_bound_on_a_large_generated_btf() -> None:
    """200,000 types of every common shape: the reader's allocations stay
    within MEMORY_FACTOR times the input (the old reader took ~16x)."""
    g = Gen()
    i = g.int_()
    names = [g.name(f"n{k}") for k in range(1000)]
    for k in range(40_000):
        n = names[k % 1000]
        g.add(BtfKind.STRUCT, 16, 4, n, b"".join(struct.pack("<III", n, i, 32 * m) for m in range(4)))
        g.add(BtfKind.PTR, i)
        g.add(BtfKind.TYPEDEF, i, name=n)
        g.proto(i, [i, i, i])
        g.array(i, n=k)
    data = g.data()
    btf, peak = _peak_parse(data)
    assert len(btf.types) == 200_002
    assert peak <= MEMORY_FACTOR * len(data) + 64 * 1024, (peak, len(data))
    assert btf.get(200_001).nelems == 39_999 and len(btf.get(1 + 1).members) == 4


def test_memory_bound_on_vmlinux() -> None:
    vmlinux = Path("/sys/kernel/btf/vmlinux")
    need(vmlinux.exists(), "no /sys/kernel/btf/vmlinux on this kernel")
    data = vmlinux.read_bytes()
    btf, peak = _peak_parse(data)
    assert len(btf.types) > 10_000
    assert peak <= MEMORY_FACTOR * len(data) + 64 * 1024, (peak, len(data))


# --- BTF edits: FUNC linkage ---------------------------------------------------

LINKAGE_SRC = """
int twice(int x) { return 2 * x; }
static __attribute__((noinline)) int thrice(int x) { return 3 * x; }
__attribute__((section("xdp"), used)) int prog(void *ctx) { return twice((long)ctx) + thrice((long)ctx); }
"""


def test_set_func_linkage_global_to_static(tmp_path: Path) -> None:
    src = tmp_path / "l.c"
    src.write_text(LINKAGE_SRC)
    obj = tmp_path / "l.o"
    compile_bpf(src, obj, clang(19))
    o = load_object(obj)
    sec = o.section(".BTF")
    assert sec is not None
    raw = o.section_data(sec)
    btf = parse_btf(raw)
    twice = find_func(btf, "twice")
    assert btf.get(twice).linkage == BtfLinkage.GLOBAL
    assert btf.get(find_func(btf, "thrice")).linkage == BtfLinkage.STATIC
    edited = set_func_linkage(raw, twice, BtfLinkage.STATIC)
    assert len(edited) == len(raw) and sum(a != b for a, b in zip(edited, raw, strict=True)) == 1
    assert parse_btf(edited).get(twice).linkage == BtfLinkage.STATIC
    # bpftool reads the edited BTF, raw and put back into the object
    (tmp_path / "l.btf").write_bytes(edited)
    out = tmp_path / "l2.o"
    res = run([tool("llvm-objcopy-19"), f"--update-section=.BTF={tmp_path / 'l.btf'}", str(obj), str(out)])
    assert res.returncode == 0, res.stderr
    for path in (tmp_path / "l.btf", out):
        res = run([tool("bpftool"), "btf", "dump", "file", str(path)])
        assert res.returncode == 0, res.stderr
        assert re.search(r"FUNC 'twice' type_id=\d+ linkage=static", res.stdout), res.stdout
        assert re.search(r"FUNC 'prog' type_id=\d+ linkage=global", res.stdout), res.stdout
    assert set_func_linkage(edited, twice, BtfLinkage.GLOBAL) == raw


def test_linkage_edit_errors(tmp_path: Path) -> None:
    g = Gen()
    i = g.int_()
    f = g.add(BtfKind.FUNC, g.proto(i, []), 1, g.name("f"))
    g.add(BtfKind.FUNC, g.proto(i, []), 0, g.name("dup"))
    g.add(BtfKind.FUNC, g.proto(i, []), 0, g.name("dup"))
    data = g.data()
    btf = parse_btf(data)
    assert find_func(btf, "f") == f
    assert find_funcs(btf, "dup") == [5, 7]
    with pytest.raises(InputError, match="no function named"):
        find_func(btf, "nope")
    with pytest.raises(InputError, match="2 functions"):
        find_func(btf, "dup")
    with pytest.raises(InputError, match="not FUNC"):
        set_func_linkage(data, i, BtfLinkage.STATIC)
    with pytest.raises(InputError, match="out of range"):
        set_func_linkage(data, 99, BtfLinkage.STATIC)
    with pytest.raises(ValueError):
        set_func_linkage(data, f, 7)

"""ArgType from real clang objects: every field for each common argument
type, enum values against `bpftool btf dump -j`, and convert() against C's
own conversions (ctypes) on random 64-bit register values."""

from __future__ import annotations

import ctypes
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toolchain import clang, compile_bpf, run, tool

from bpf_sdt.argtype import ArgType, arg_type_from_btf, arg_types
from bpf_sdt.btf import Btf, BtfKind, parse_btf
from bpf_sdt.elf import load_object
from bpf_sdt.errors import InputError

SRC = """#include <bpf_sdt.h>
typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;
typedef __u32 my_u32;
typedef my_u32 my_u32_2;
enum neg { NEG = -5, POS = 3 };
enum pos { P0, P1, P2 };
enum big64 { BIG = 0xffffffffffffffffULL, SMALL = 1 };
enum sbig { SB = -0x100000000LL, SB2 = 2 };
enum __attribute__((packed)) tiny { T0, T1 = 200 };
char v_char; signed char v_schar; unsigned char v_uchar; __u8 v_u8; __s8 v_s8;
short v_short; __u16 v_u16; int v_int; __u32 v_u32; long v_long; unsigned long v_ulong;
__u64 v_u64; __s64 v_s64; _Bool v_bool;
enum neg v_neg; enum pos v_pos; enum big64 v_big; enum sbig v_sbig; enum tiny v_tiny;
const volatile my_u32_2 v_cv; void *v_ptr; const char *v_str; int *const v_cptr;
volatile __u64 *v_vptr; float v_float; double v_double;
struct s { int a; } v_struct; int v_arr[3];
BPF_SDT_DECLARE12(p12, signed char, __u8, short, __u16, int, __u32, long, __u64, _Bool,
                  volatile my_u32_2, const char *, enum neg);
int use(int x) { BPF_SDT_PROBE12(p12, (signed char)x, (__u8)x, (short)x, (__u16)x, x, (__u32)x, (long)x,
                                 (__u64)x, x > 1, (my_u32)x, "s", NEG); return x; }
"""

# variable -> (spelling, canonical, size, signed, kind)
EXPECTED = {
    "v_char": ("char", "char", 1, True, "char"),
    "v_schar": ("signed char", "signed char", 1, True, "int"),
    "v_uchar": ("unsigned char", "unsigned char", 1, False, "int"),
    "v_u8": ("__u8", "unsigned char", 1, False, "int"),
    "v_s8": ("__s8", "signed char", 1, True, "int"),
    "v_short": ("short", "short", 2, True, "int"),
    "v_u16": ("__u16", "unsigned short", 2, False, "int"),
    "v_int": ("int", "int", 4, True, "int"),
    "v_u32": ("__u32", "unsigned int", 4, False, "int"),
    "v_long": ("long", "long", 8, True, "int"),
    "v_ulong": ("unsigned long", "unsigned long", 8, False, "int"),
    "v_u64": ("__u64", "unsigned long long", 8, False, "int"),
    "v_s64": ("__s64", "long long", 8, True, "int"),
    "v_bool": ("_Bool", "_Bool", 1, False, "bool"),
    "v_neg": ("enum neg", "enum neg", 4, True, "enum"),
    "v_pos": ("enum pos", "enum pos", 4, False, "enum"),
    "v_big": ("enum big64", "enum big64", 8, False, "enum"),
    "v_sbig": ("enum sbig", "enum sbig", 8, True, "enum"),
    "v_tiny": ("enum tiny", "enum tiny", 1, False, "enum"),
    "v_cv": ("const volatile my_u32_2", "const volatile unsigned int", 4, False, "int"),
    "v_ptr": ("void *", "void *", 8, False, "pointer"),
    "v_str": ("const char *", "const char *", 8, False, "pointer"),
    "v_cptr": ("int *const", "int *const", 8, False, "pointer"),
    "v_vptr": ("volatile __u64 *", "volatile unsigned long long *", 8, False, "pointer"),
    "v_float": ("float", "float", 4, False, "float"),
    "v_double": ("double", "double", 8, False, "float"),
    "v_struct": ("struct s", "struct s", 4, False, "other"),
    "v_arr": ("int [3]", "int [3]", 12, False, "other"),
}


def _build(tmp: Path, version: int) -> Path:
    src = tmp / "args.c"
    src.write_text(SRC)
    obj = tmp / f"args{version}.o"
    compile_bpf(src, obj, clang(version), extra=("-Wno-unused-parameter",))
    return obj


@pytest.fixture(scope="module")
def obj19(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("argtype"), 19)


@pytest.fixture(scope="module")
def obj14(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("argtype"), 14)


def _btf(obj: Path) -> Btf:
    btf = load_object(obj).btf
    assert btf is not None
    return btf


def _var_types(btf: Btf) -> dict[str, ArgType]:
    return {btf.name_of(v): arg_type_from_btf(btf, btf.ref_of(v)) for v in btf.ids(BtfKind.VAR)
            if btf.name_of(v).startswith("v_")}


def _bpftool_enums(obj: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    res = run([tool("bpftool"), "btf", "dump", "file", str(obj), "-j"])
    assert res.returncode == 0, res.stderr
    return {t["name"]: t for t in json.loads(res.stdout)["types"] if t["kind"] in ("ENUM", "ENUM64")}


def test_every_field_of_common_types(obj19: Path) -> None:
    got = _var_types(_btf(obj19))
    assert set(got) == set(EXPECTED)
    for name, (spelling, canonical, size, signed, kind) in EXPECTED.items():
        at = got[name]
        assert (at.spelling, at.canonical, at.size, at.signed, at.kind) == (spelling, canonical, size, signed, kind), name
        assert bool(at.enumerators) == (kind == "enum"), name


@pytest.mark.parametrize("version", [19, 14])
def test_enumerators_equal_bpftool(version: int, obj19: Path, obj14: Path) -> None:
    obj = obj19 if version == 19 else obj14
    got = _var_types(_btf(obj))
    ref = _bpftool_enums(obj)
    for var, enum in (("v_neg", "neg"), ("v_pos", "pos"), ("v_big", "big64"), ("v_sbig", "sbig"), ("v_tiny", "tiny")):
        at = got[var]
        # bpftool 7.1 prints unsigned ENUM values sign-extended: compare at the record's
        # value width (32 bits in ENUM, even in clang-14's 8-byte ENUMs; 64 in ENUM64)
        mod = 1 << (32 if ref[enum]["kind"] == "ENUM" else 64)
        assert [(n, v % mod) for n, v in at.enumerators] == [(v["name"], v["val"] % mod) for v in ref[enum]["values"]]
        if "encoding" in ref[enum]:
            assert at.signed == (ref[enum]["encoding"] == "SIGNED"), enum
    if version == 19:
        assert got["v_neg"].enumerators == (("NEG", -5), ("POS", 3))
        assert got["v_big"].enumerators == (("BIG", (1 << 64) - 1), ("SMALL", 1))
        assert got["v_sbig"].enumerators == (("SB", -(1 << 32)), ("SB2", 2))
    # whatever signedness the compiler wrote, a register holding NEG prints as NEG
    neg = got["v_neg"]
    assert neg.format(neg.convert(-5)) == "NEG"
    assert neg.format(neg.convert(0xFFFFFFFF_FFFFFFFB)) == "NEG"


def test_probe_prototype_arguments(obj19: Path) -> None:
    """The path consumers take: DECL_TAG -> VAR -> CONST -> PTR -> FUNC_PROTO."""
    btf = _btf(obj19)
    tag = btf.find("bpf_sdt:p12:12", BtfKind.DECL_TAG)[0]
    ptr = btf.resolve(btf.get(tag).type)      # the VAR
    proto = btf.resolve(btf.resolve(ptr.type).type)
    assert proto.kind == BtfKind.FUNC_PROTO
    args = arg_types(btf, proto.id)
    assert [(a.spelling, a.size, a.signed, a.kind) for a in args] == [
        ("signed char", 1, True, "int"), ("__u8", 1, False, "int"), ("short", 2, True, "int"),
        ("__u16", 2, False, "int"), ("int", 4, True, "int"), ("__u32", 4, False, "int"),
        ("long", 8, True, "int"), ("__u64", 8, False, "int"), ("_Bool", 1, False, "bool"),
        ("volatile my_u32_2", 4, False, "int"), ("const char *", 8, False, "pointer"),
        ("enum neg", 4, True, "enum")]
    with pytest.raises(InputError, match="not FUNC_PROTO"):
        arg_types(btf, tag)


# --- convert(): C's conversions, checked against ctypes -----------------------

CTYPES = {
    "signed char": ctypes.c_byte, "unsigned char": ctypes.c_ubyte, "short": ctypes.c_short,
    "unsigned short": ctypes.c_ushort, "int": ctypes.c_int, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "unsigned long": ctypes.c_ulong, "long long": ctypes.c_longlong,
    "unsigned long long": ctypes.c_ulonglong, "char": ctypes.c_byte,   # BPF char is signed
}
RAW = st.one_of(st.integers(min_value=0, max_value=(1 << 64) - 1),
                st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                                 0xFFFFFFFF, 0x1_0000_0000, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]))


@pytest.fixture(scope="module")
def int_types(obj19: Path) -> list[ArgType]:
    got = _var_types(_btf(obj19))
    return [a for a in got.values() if a.kind in ("int", "char") and a.canonical.split()[-1] != "__int128"]


@settings(max_examples=300, deadline=None)
@given(raw=RAW)
def test_convert_equals_c_conversion(raw: int, int_types: list[ArgType]) -> None:
    for at in int_types:
        base = at.canonical.removeprefix("const ").removeprefix("volatile ")
        assert at.convert(raw) == CTYPES[base](raw).value, (at, raw)
        assert at.convert(raw - (1 << 64)) == at.convert(raw)      # a signed raw means the same bits


def test_convert_and_format_by_kind(obj19: Path) -> None:
    t = _var_types(_btf(obj19))
    assert t["v_schar"].convert(0x1FF) == -1 and t["v_schar"].format(-1) == "-1"
    assert t["v_u8"].convert(0x1FF) == 255 and t["v_u8"].format(255) == "255"
    assert t["v_short"].convert(0xFFFF8000) == -32768
    assert t["v_u32"].convert(-1) == 0xFFFFFFFF and t["v_u32"].format(0xFFFFFFFF) == "4294967295"
    assert t["v_long"].convert((1 << 64) - 1) == -1 and t["v_u64"].convert(-1) == (1 << 64) - 1
    assert t["v_char"].convert(0x41) == 65 and t["v_char"].format(65) == "65"
    assert t["v_bool"].convert(0x101) == 1 and t["v_bool"].format(1) == "true"
    assert t["v_bool"].convert(0x100) == 0 and t["v_bool"].format(0) == "false"
    assert t["v_ptr"].convert(-8) == (1 << 64) - 8 and t["v_ptr"].format((1 << 64) - 8) == "0xfffffffffffffff8"
    assert t["v_str"].format(0) == "0x0"
    assert t["v_pos"].format(t["v_pos"].convert(2)) == "P2" and t["v_pos"].format(7) == "7"
    assert t["v_neg"].format(t["v_neg"].convert(0xFFFFFFFA)) == "-6"
    assert t["v_big"].format(t["v_big"].convert(-1)) == "BIG"
    assert t["v_sbig"].format(t["v_sbig"].convert(-(1 << 32))) == "SB"
    assert t["v_tiny"].format(t["v_tiny"].convert(0xC8)) == "T1"
    assert t["v_cv"].convert(0x1_0000_0007) == 7
    f = t["v_float"]
    assert f.format(f.convert(struct.unpack("<I", struct.pack("<f", 1.5))[0] | 0xDEAD_0000_0000)) == "1.5"
    d = t["v_double"]
    assert d.format(d.convert(struct.unpack("<Q", struct.pack("<d", -2.25))[0])) == "-2.25"


def test_json_round_trip_and_fresh_dicts(obj19: Path) -> None:
    for at in _var_types(_btf(obj19)).values():
        j = at.to_json()
        assert ArgType.from_json(json.loads(json.dumps(j))) == at
        j["size"] = 99
        assert at.to_json()["size"] == at.size        # callers may change what they got
    assert _var_types(_btf(obj19))["v_neg"].to_json()["enumerators"] == [
        {"name": "NEG", "value": -5}, {"name": "POS", "value": 3}]


@pytest.mark.parametrize("bad", [{}, {"spelling": "x", "canonical": "x", "size": 1, "signed": False, "kind": "nope"},
                                 {"spelling": "x", "canonical": "x", "size": "big", "signed": 0, "kind": "int"},
                                 {"spelling": "x", "canonical": "x", "size": 1, "signed": 0, "kind": "enum",
                                  "enumerators": [{"name": "A"}]}])
def test_from_json_rejects_malformed_data(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match="malformed"):
        ArgType.from_json(bad)


def test_hostile_btf_is_an_input_error() -> None:
    # TYPEDEF 1 -> TYPEDEF 2 -> TYPEDEF 1: no type to describe
    types = struct.pack("<III", 1, 8 << 24, 2) + struct.pack("<III", 1, 8 << 24, 1)
    strings = b"\0t\0"
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    btf = parse_btf(hdr + types + strings)
    with pytest.raises(InputError, match="loop"):
        arg_type_from_btf(btf, 1)
    with pytest.raises(InputError, match="out of range"):
        arg_type_from_btf(btf, 3)


@pytest.mark.parametrize("fields", [
    {"kind": "bogus"},
    {"enumerators": (("a", 1, 2),)},
    {"enumerators": (("a", "1"),)},
    {"size": -1},
    {"signed": 1},
])
def test_a_cached_site_with_a_malformed_argument_type_is_refused(fields: dict[str, object]) -> None:
    """trace's cache makes its site table's ArgTypes with the constructor,
    which checks nothing: a malformed one in a stored entry must make the
    entry a miss (ValueError), not an error while events are decoded."""
    from bpf_sdt.trace import instcache

    from bpf_sdt.sites import LocatedSite

    good = ArgType("enum e", "enum e", 4, False, "enum", (("A", 1),))
    site = LocatedSite(0, "p", "f", ".text", 3, None, None, (good,))
    encoded = instcache._encoded(site)
    assert instcache._site(encoded) == site
    bad = site._replace(types=(good._replace(**fields),))
    with pytest.raises(ValueError):
        instcache._site(instcache._encoded(bad))

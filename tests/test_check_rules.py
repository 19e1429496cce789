"""`bpf-sdt check`: one broken object per rule, built the ways real objects get
broken (hand-written notes, other headers, ELF surgery, linkers), and the
exact rule it must report."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import analyze
from fuzz_target import TYPEDEFS, SyntheticEntry, synthetic_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import clang, compile_bpf, run

from bpf_sdt.elf import (
    RELA,
    SHF_ALLOC,
    SHF_WRITE,
    SHT_NOBITS,
    SHT_RELA,
    STB_GLOBAL,
    STT_OBJECT,
    BpfObject,
    ElfImage,
    Relocation,
    SecRec,
    SymRec,
    load_object,
)
from bpf_sdt.model import ArgLocation

CLI = [sys.executable, "-m", "bpf_sdt.cli"]


def note(body: str, label: str = "1") -> str:
    """An asm statement with a NOP (label 1) and a hand-written notes entry."""
    return ('asm volatile("1: goto +0\\n2: r0 = 0\\n.pushsection .bpf_sdt_notes,\\"\\",@progbits\\n'
            + body.replace("\n", "\\n") + '\\n.popsection" ::: "r0");')


def prog(*stmts: str, decls: str = "") -> str:
    return ("#include <bpf_sdt.h>\nint data_label_holder;\n" + decls +
            "\nint f(int *ctx) {\n" + "\n".join(stmts) + "\nreturn *ctx; }\n")


TAGGED = ('static void (*const __sdt_type_{n})({t}) __attribute__((section(".debug_bpf_sdt_types"), '
          'used, btf_decl_tag("bpf_sdt:{tag}"))) = 0;')

# case: (source, rule, severity)
CASES: dict[str, tuple[str, str, str]] = {
    "no_entry_symbol": (prog(note(".quad 1b")), "SDT102", "error"),
    "data_before_first_symbol": (prog(note(".quad 0\n___sdt_jt_p0:\n.quad 1b"), decls="BPF_SDT_DECLARE(p0);"),
                                 "SDT102", "error"),
    "entry_not_multiple_of_8": (prog(note("___sdt_jt_p0:\n.quad 1b\n.byte 1, 2, 3"),
                                     decls="BPF_SDT_DECLARE(p0);"), "SDT102", "error"),
    "arity_vs_btf": (prog(note("___sdt_jt_p2:\n.quad 1b\nr1 = r1"), decls="BPF_SDT_DECLARE2(p2, int, int);"),
                     "SDT103", "error"),
    "address_without_relocation": (prog(note("___sdt_jt_p0:\n.quad 1b\n___sdt_jt_p0.1:\n.quad 8"),
                                        decls="BPF_SDT_DECLARE(p0);"),
                                   "SDT104", "error"),
    "relocation_inside_entry": (prog(note("___sdt_jt_p1:\n.quad 1b\n.quad 1b"), decls="BPF_SDT_DECLARE1(p1, int);"),
                                "SDT104", "error"),
    "relocation_against_data": (prog(note("___sdt_jt_p0:\n.quad data_label_holder"), decls="BPF_SDT_DECLARE(p0);"),
                                "SDT106", "error"),
    "address_not_on_nop": (prog(note("___sdt_jt_p0:\n.quad 2b"), decls="BPF_SDT_DECLARE(p0);"),
                           "SDT107", "error"),
    "address_unaligned": (prog(note("___sdt_jt_p0:\n.quad 1b + 4"), decls="BPF_SDT_DECLARE(p0);"),
                          "SDT107", "error"),
    "address_outside_section": (prog(note("___sdt_jt_p0:\n.quad 1b + 4096"), decls="BPF_SDT_DECLARE(p0);"),
                                "SDT107", "error"),
    "arg_frame_pointer_register": (prog(note("___sdt_jt_p1:\n.quad 1b\nr1 = r10"), decls="BPF_SDT_DECLARE1(p1, long);"),
                                   "SDT108", "error"),
    "arg_wrong_dst": (prog(note("___sdt_jt_p1:\n.quad 1b\nr3 = r2"), decls="BPF_SDT_DECLARE1(p1, long);"),
                      "SDT108", "error"),
    "arg_load_not_stack": (prog(note("___sdt_jt_p6:\n.quad 1b\nr1=r1\nr2=r1\nr3=r1\nr4=r1\nr5=r1\n"
                                     "r0 = *(u64 *)(r1 - 8)"),
                                decls="BPF_SDT_DECLARE6(p6, long, long, long, long, long, long);"),
                           "SDT108", "error"),
    "arg_stack_for_reg_position": (prog(note("___sdt_jt_p1:\n.quad 1b\nr1 = *(u64 *)(r10 - 8)"),
                                        decls="BPF_SDT_DECLARE1(p1, long);"), "SDT108", "error"),
    "arg_other_opcode": (prog(note("___sdt_jt_p1:\n.quad 1b\nr1 += r2"), decls="BPF_SDT_DECLARE1(p1, long);"),
                         "SDT108", "error"),
    "two_entries_one_nop": (prog(note("___sdt_jt_p0:\n.quad 1b\n___sdt_jt_p0.1:\n.quad 1b"),
                                 decls="BPF_SDT_DECLARE(p0);"), "SDT109", "error"),
    "undeclared_probe": (prog(note("___sdt_jt_ghost:\n.quad 1b"), decls="BPF_SDT_DECLARE(p0);\n"),
                         "SDT110", "error"),
    "no_btf_at_all": (prog(note("___sdt_jt_ghost:\n.quad 1b")), "SDT110", "error"),
    "tag_count_mismatch": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\n"
                                + TAGGED.format(n="x", t="int", tag="x:2")), "SDT111", "error"),
    "struct_by_value_in_btf": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\nstruct big { long a, b; };\n"
                                    + TAGGED.format(n="x", t="struct big", tag="x:1")), "SDT112", "error"),
    "wide_type_in_btf": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\n"
                              + TAGGED.format(n="x", t="__int128", tag="x:1")), "SDT112", "error"),
    "declared_never_probed": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\nBPF_SDT_DECLARE1(unused, int);"),
                              "SDT113", "warning"),
    "malformed_tag": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\n"
                           + TAGGED.format(n="x", t="int", tag="bad name:1")), "SDT117", "error"),
    "tag_trailing_newline": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\n"
                                  + TAGGED.format(n="x", t="int", tag="x:1\\n")), "SDT117", "error"),
    "two_notes_sections": (prog("BPF_SDT_PROBE(p0);", note("___sdt_jt_p0.9:\n.quad 1b").replace(
        ".pushsection .bpf_sdt_notes,\\\"\\\",@progbits", ".pushsection .bpf_sdt_notes,\\\"\\\",@progbits,unique,1"),
        decls="BPF_SDT_DECLARE(p0);"), "SDT119", "error"),
    "tag_not_on_pointer": (prog("BPF_SDT_PROBE(p0);", decls="BPF_SDT_DECLARE(p0);\n"
                                'static const int y __attribute__((section(".debug_bpf_sdt_types"), used, '
                                'btf_decl_tag("bpf_sdt:y:0"))) = 0;'), "SDT117", "error"),
}


def _check(obj: Path) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    res = run([*CLI, "check", "--json", str(obj)])
    assert "Traceback" not in res.stderr, res.stderr
    findings = json.loads(res.stdout)["objects"][0]["findings"]
    return res.returncode, findings


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_fires(case: str, tmp_path: Path) -> None:
    source, rule, severity = CASES[case]
    src = tmp_path / f"{case}.c"
    src.write_text(source)
    obj = tmp_path / f"{case}.o"
    compile_bpf(src, obj, clang(19), extra=("-Wno-unused-variable",))
    rc, findings = _check(obj)
    hits = [f for f in findings if f["rule"] == rule]
    assert hits, f"{case}: expected {rule}, got {findings}"
    assert hits[0]["severity"] == severity
    assert rc == (1 if severity == "error" else 0)
    text = run([*CLI, "check", str(obj)]).stdout
    assert f"{obj}: " in text and f"{severity}: " in text and f"[{rule}]" in text


def test_documented_rules_match_the_code() -> None:
    """One registry (ids, severities, summaries), and docs/check.md's table
    says the same: every rule the code names is registered and documented,
    with the same severity; the two rules with a warning case say both."""
    import re

    from bpf_sdt.postlink.check import RULES, WARNING_CASES

    doc = (Path(__file__).parent.parent / "docs" / "check.md").read_text()
    code = (Path(__file__).parent.parent / "postlink" / "check.py").read_text()
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| (SDT1\d\d) \| ([^|]+) \|", doc, re.M)}
    assert set(re.findall(r'"(SDT1\d\d)"', code)) == set(RULES) == set(rows)
    for rule, (severity, summary) in RULES.items():
        documented = {s.strip() for s in rows[rule].split("/")}
        assert documented == ({severity, "warning"} if rule in WARNING_CASES else {severity}), rule
        assert summary and summary[0].islower() and not summary.endswith("."), rule
    assert set(WARNING_CASES) <= set(RULES)


def test_report_refuses_an_unregistered_rule_or_severity(tmp_path: Path) -> None:
    src = tmp_path / "g.c"
    src.write_text(prog("BPF_SDT_PROBE1(p1, *ctx);", decls="BPF_SDT_DECLARE1(p1, int);"))
    obj = tmp_path / "g.o"
    compile_bpf(src, obj, clang(19))
    report = analyze(load_object(obj))
    with pytest.raises(KeyError):
        report.add(".text+0x0", "error", "x", "SDT199")
    with pytest.raises(ValueError):
        report.add(".text+0x0", "warning", "x", "SDT101")     # an error, with no warning case
    report.add(NOTES_AT, "warning", "x", "SDT115")             # its documented warning case


NOTES_AT = ".bpf_sdt_notes+0x0"


# --- rules that need ELF surgery or other producers ---------------------------

GOOD = prog("BPF_SDT_PROBE2(p2, *ctx, 7);", decls="BPF_SDT_DECLARE2(p2, int, long);")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    src = tmp_path / "good.c"
    src.write_text(GOOD)
    obj = tmp_path / "good.o"
    compile_bpf(src, obj, clang(19))
    assert _check(obj) == (0, [])
    return obj


def _patch_reloc_type(obj: Path, new_type: int) -> Path:
    o = load_object(obj)
    rel = o.section(".rel.bpf_sdt_notes")
    assert rel is not None
    data = bytearray(o.data)
    struct.pack_into("<I", data, rel.offset + 8, new_type)
    out = obj.with_name(f"reloc{new_type}.o")
    out.write_bytes(bytes(data))
    return out


def test_wrong_relocation_type(good: Path) -> None:
    rc, findings = _check(_patch_reloc_type(good, 1))
    assert rc == 1 and [f["rule"] for f in findings] == ["SDT105"]


def test_old_binutils_relocation_is_named_not_garbage(good: Path) -> None:
    rc, findings = _check(_patch_reloc_type(good, 12))
    assert rc == 0 and findings[0]["rule"] == "SDT105" and findings[0]["severity"] == "warning"
    assert "binutils" in findings[0]["message"]


def test_notes_without_relocation_section(good: Path) -> None:
    img = ElfImage.from_object(load_object(good))
    img.remove_sections({".rel.bpf_sdt_notes"})
    out = good.with_name("norel.o")
    out.write_bytes(img.to_bytes())
    rc, findings = _check(out)
    assert rc == 1 and [f["rule"] for f in findings] == ["SDT101"]


def test_more_than_256_sites_in_one_program(tmp_path: Path) -> None:
    body = "\n".join(f"BPF_SDT_PROBE1(many, {i});" for i in range(300))
    src = tmp_path / "many.c"
    src.write_text(prog(body, decls="BPF_SDT_DECLARE1(many, int);"))
    obj = tmp_path / "many.o"
    compile_bpf(src, obj, clang(19))
    rc, findings = _check(obj)
    assert rc == 0 and [f["rule"] for f in findings] == ["SDT116"]


def test_gcc_object_without_decl_tags_warns(tmp_path: Path) -> None:
    from toolchain import tool

    src = tmp_path / "g.c"
    src.write_text(GOOD)
    obj = tmp_path / "g.o"
    compile_bpf(src, obj, tool("bpf-gcc"))
    rc, findings = _check(obj)
    assert rc == 0 and {f["rule"] for f in findings} == {"SDT105", "SDT114"}


def test_rfc_style_object_checks_clean(tmp_path: Path) -> None:
    """An object from the RFC's own encoding (single site per name, "r" only)
    is a valid format-1 object."""
    src = tmp_path / "rfc.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE2(my_trace, int, int);\n"
                   "int f(int *ctx) { int len = ctx[0], ret = ctx[1];\n"
                   '  asm volatile("0: goto +0\\n.pushsection .bpf_sdt_notes,\\"\\",@progbits\\n'
                   '___sdt_jt_my_trace:\\n.quad 0b\\nr1 = %[a1]\\nr2 = %[a2]\\n.popsection"'
                   ' :: [a1] "r"(len), [a2] "r"(ret));\n  return 0; }\n')
    obj = tmp_path / "rfc.o"
    compile_bpf(src, obj, clang(19))
    assert _check(obj) == (0, [])


def test_list_json_text_equals_the_model(tmp_path: Path) -> None:
    """`list --json` writes pre-encoded text; it must equal json.dumps(to_json())."""
    src = tmp_path / "m.c"
    src.write_text(prog('BPF_SDT_PROBE2(p2, *ctx, -7); BPF_SDT_PROBE2(p2, ctx[1], 1 << 20);',
                        decls="BPF_SDT_DECLARE2(p2, int, long);"))
    obj = tmp_path / "m.o"
    compile_bpf(src, obj, clang(19))
    from bpf_sdt.postlink.check import analyze

    for site in analyze(load_object(obj)).sites:
        assert json.loads(site.json_text()) == site.to_json()


# --- generated objects: each class of unusable object, many instances ---------------

ARGS2 = (ArgLocation("reg", reg=1), ArgLocation("imm", value=7))
PROTO = {"p": ("int", "long")}
FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def rules(data: bytes) -> set[str]:
    return {f.rule for f in analyze(BpfObject("gen.o", data)).findings if f.severity == "error"}


@FAST
@given(nobits=st.booleans(), sec_size=st.integers(0, 64), value=st.integers(0, 2**64 - 1) | st.integers(0, 80),
       size=st.integers(0, 2**64 - 1) | st.integers(0, 80))
def test_symbol_outside_its_section(nobits: bool, sec_size: int, value: int, size: int) -> None:
    bss = SecRec(".bss", SHT_NOBITS if nobits else 1, SHF_ALLOC | SHF_WRITE, b"" if nobits else bytes(sec_size),
                 addralign=4, nobits_size=sec_size if nobits else 0)
    sym = SymRec("g", value, size, (STB_GLOBAL << 4) | STT_OBJECT, 0, 7)    # section 7: .bss
    found = rules(synthetic_object([SyntheticEntry("p", 0, ARGS2)], PROTO, extra_sections=[bss],
                                   extra_symbols=[sym]))
    outside = value > sec_size or value + size > sec_size
    assert ("SDT118" in found) == outside


def test_symbol_in_a_missing_section() -> None:
    sym = SymRec("g", 0, 4, (STB_GLOBAL << 4) | STT_OBJECT, 0, 42)
    assert "SDT118" in rules(synthetic_object([SyntheticEntry("p", 0, ARGS2)], PROTO, extra_symbols=[sym]))


NOP, MOV = bytes([0x05, 0, 0, 0, 0, 0, 0, 0]), bytes([0xB7, 0, 0, 0, 0, 0, 0, 0])


def _with_addend(addend: int, code: bytes) -> bytes:
    """One entry whose address is a RELA addend against .text."""
    img = ElfImage.from_object(BpfObject("x", synthetic_object([SyntheticEntry("p", 0, ARGS2)], PROTO, code=code)))
    i = img.index_of(".rel.bpf_sdt_notes")
    assert i is not None and img.sections[i].relocs is not None
    rel = img.sections[i]
    rel.type, rel.entsize = SHT_RELA, RELA.size
    rel.relocs = [Relocation(r.offset, r.type, r.symbol, addend) for r in rel.relocs or []]
    return img.to_bytes()


@FAST
@given(addend=st.integers(-(2**63), 2**63 - 1) | st.integers(-64, 64),
       code=st.lists(st.sampled_from([NOP, MOV]), min_size=1, max_size=6))
def test_relocation_addend_must_name_a_nop_in_the_code(addend: int, code: list[bytes]) -> None:
    text = b"".join(code)
    report = analyze(BpfObject("gen.o", _with_addend(addend, text)))
    valid = 0 <= addend < len(text) and addend % 8 == 0 and code[addend // 8] == NOP
    assert (report.errors == 0) == valid, (addend, [f.render() for f in report.findings])
    assert all(s.offset >= 0 and s.offset + 8 <= len(text) for s in report.sites)


def test_negative_addend_through_the_cli(tmp_path: Path) -> None:
    obj = tmp_path / "neg.o"
    obj.write_bytes(_with_addend(-16, MOV + NOP + MOV))     # code[-16:-8] is a NOP
    res = run([*CLI, "check", str(obj)])
    assert res.returncode == 1 and "negative" in res.stdout and "[SDT107]" in res.stdout
    listing = run([*CLI, "list", "--json", str(obj)])
    assert listing.returncode == 1 and json.loads(listing.stdout)["objects"][0]["probes"] == []
    assert "entry not listed" in listing.stderr and "negative" in listing.stderr


@FAST
@given(suffix=st.text(min_size=1, max_size=8))
def test_anything_after_the_tag_is_malformed(suffix: str) -> None:
    import re

    found = rules(synthetic_object([SyntheticEntry("p", 0, ARGS2)], PROTO, tags={"p": f"bpf_sdt:p:2{suffix}"}))
    effective = suffix.split("\0")[0]          # BTF strings end at NUL
    if not effective:
        assert not found
    elif re.fullmatch(r"\d+", effective):      # bpf_sdt:p:20: well-formed, wrong count
        assert "SDT111" in found
    else:
        assert "SDT117" in found, (suffix, found)


TYPE_NAMES = ["int", "long", "char", "unsigned int", "unsigned long", "unsigned char", *TYPEDEFS,
              "const int", "const __u32", "const long"]


def _canonical(t: str) -> str:
    t = t.removeprefix("const ")
    return str(TYPEDEFS.get(t, t))


@FAST
@given(first=st.lists(st.sampled_from(TYPE_NAMES), min_size=0, max_size=3),
       second=st.lists(st.sampled_from(TYPE_NAMES), min_size=0, max_size=3))
def test_one_name_two_prototypes(first: list[str], second: list[str]) -> None:
    """A linked object holds each input's tag: they must declare one prototype
    (typedef names and top-level const do not make a different one)."""
    data = synthetic_object([], [("p", first), ("p", second)])
    found = rules(data)
    differ = [_canonical(t) for t in first] != [_canonical(t) for t in second]
    assert ("SDT111" in found) == differ, (first, second)


# --- list: what cannot be decoded is reported, the rest listed ------------------------


def _three_sites_one_broken(tmp: Path) -> Path:
    data = bytearray(synthetic_object([SyntheticEntry("p", 8 * i, ARGS2) for i in range(3)], PROTO))
    notes = BpfObject("x", bytes(data)).section(".bpf_sdt_notes")
    assert notes is not None
    data[notes.offset + 24 + 8] = 0x0F          # entry 2, argument 1: not an argument form
    out = tmp / "broken.o"
    out.write_bytes(bytes(data))
    return out


def test_list_reports_broken_entries_and_lists_the_rest(tmp_path: Path) -> None:
    obj = _three_sites_one_broken(tmp_path)
    for args in (["list"], ["list", "--json"]):
        res = run([*CLI, *args, str(obj)])
        assert res.returncode == 1 and "Traceback" not in res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(f"bpf-sdt list: {obj}: .bpf_sdt_notes+0x18: entry not listed: ")
        assert "opcode 0x0f" in line
    probes = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert [p["entry_offset"] for p in probes] == [0, 48]
    table = run([*CLI, "list", str(obj)]).stdout
    assert table.splitlines()[0].endswith("2 probe sites")


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(pokes=st.lists(st.tuples(st.integers(0, 71), st.integers(0, 255)), min_size=1, max_size=6))
def test_list_accounts_for_every_entry(pokes: list[tuple[int, int]]) -> None:
    """Hostile notes bytes: every entry is either listed or reported."""
    from bpf_sdt.postlink.commands import broken_entries

    data = bytearray(synthetic_object([SyntheticEntry("p", 8 * i, ARGS2) for i in range(3)], PROTO))
    notes = BpfObject("x", bytes(data)).section(".bpf_sdt_notes")
    assert notes is not None and notes.size == 72
    for where, value in pokes:
        data[notes.offset + where] = value
    report = analyze(BpfObject("gen.o", bytes(data)))
    listed = {s.entry_offset for s in report.iter_sites()}
    reported = broken_entries(report)
    assert len(listed) + len(reported) >= 3
    for start in (0, 24, 48):
        assert start in listed or any(f"+{start:#x}: " in line for line in reported)
    assert bool(reported) == bool(report.decoding.problems)


def _sites(n: int, arg: str = "x") -> str:
    return "\n".join(f"BPF_SDT_PROBE2(many, {i}, {arg});" for i in range(n))


def test_sites_are_counted_per_program_not_per_section(tmp_path: Path) -> None:
    """SDT116 counts a program's own sites and those of every function it
    may call, subprograms and callbacks, each once: 100 programs of 3 sites
    in one section are fine (they were warned as 300 in one); a program over
    the limit only through its static subprogram, or through its bpf_loop
    callback, is warned, and a program beside them that calls neither is not."""
    decls = ("BPF_SDT_DECLARE2(many, int, int);\n"
             "static long (*bpf_loop)(unsigned int nr, void *cb, void *ctx, unsigned long long flags) = (void *)181;\n")
    many = "\n".join(f'__attribute__((section("xdp"), used)) int p{i}(int *ctx) {{ int x = *ctx;\n{_sites(3)}\n'
                     "return x; }" for i in range(100))
    src = tmp_path / "programs.c"
    src.write_text("#include <bpf_sdt.h>\n" + decls + many + "\n" + f"""
__attribute__((noinline)) static int sub(int x) {{
{_sites(200)}
return x + 1; }}
static long cb(unsigned int i, void *ctx) {{ int x = *(int *)ctx + i;
{_sites(250)}
return 0; }}
__attribute__((section("tc/a"), used)) int a(int *ctx) {{ int x = *ctx;
{_sites(100)}
return sub(x); }}
__attribute__((section("tc/b"), used)) int b(int *ctx) {{ int x = *ctx;
{_sites(10)}
bpf_loop(4, cb, &x, 0);
return x; }}
__attribute__((section("tc/c"), used)) int c(int *ctx) {{ int x = *ctx;
{_sites(100)}
return x; }}
""")
    obj = tmp_path / "programs.o"
    compile_bpf(src, obj, clang(19))
    rc, findings = _check(obj)
    assert rc == 0, findings
    got = sorted((f["where"], f["message"]) for f in findings if f["rule"] == "SDT116")
    tail = "and the functions it calls: the RFC consumer maps at most 256 per program"
    assert got == [("tc/a+0x0", f"300 probe sites in program a {tail}"),
                   ("tc/b+0x0", f"260 probe sites in program b {tail}")], got
    assert [f["rule"] for f in findings] == ["SDT116", "SDT116"], findings


def test_a_call_recorded_in_data_is_sdt120(tmp_path: Path) -> None:
    """check refuses what link cannot place (a calls word relocated against
    LICENSE), with one finding naming the symbol's section, exit 1; the same
    object as instrument wrote it has none."""
    from test_link import call_recorded_in_data

    bad = call_recorded_in_data(tmp_path)
    res = run([*CLI, "check", str(bad)])
    assert res.returncode == 1, res.stderr
    [line] = [ln for ln in res.stdout.splitlines() + res.stderr.splitlines() if "SDT120" in ln]
    assert "license" in line and "1 recorded call relocated against symbol LICENSE" in line, line
    good = run([*CLI, "check", str(tmp_path / "inst.o")])
    assert good.returncode == 0 and "SDT120" not in good.stdout + good.stderr, good.stdout + good.stderr

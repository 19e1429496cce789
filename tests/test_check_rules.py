"""`bpf-sdt check`: one broken object per rule, built the ways real objects get
broken (hand-written notes, other headers, ELF surgery, linkers), and the
exact rule it must report."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from toolchain import clang, compile_bpf, run

from bpf_sdt.elf import ElfImage, load_object

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
    import re

    doc = (Path(__file__).parent.parent / "docs" / "check.md").read_text()
    code = (Path(__file__).parent.parent / "postlink" / "check.py").read_text()
    assert set(re.findall(r'"(SDT1\d\d)"', code)) == set(re.findall(r"^\| (SDT1\d\d) \|", doc, re.M))


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

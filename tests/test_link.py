"""`bpf-sdt link`: real objects linked with the installed bpftool; every
site's linked address is compared with its function symbol + offset in the
inputs; the results load into the kernel verifier."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import analyze
from test_samples import load
from toolchain import HEADER_DIR, clang, compile_bpf, need, run, tool

from bpf_sdt.elf import R_BPF_64_64, REL, BpfObject, load_object
from bpf_sdt.errors import InputError

CLI = [sys.executable, "-m", "bpf_sdt.cli"]

HEAD = '#include <bpf_sdt.h>\n#define SEC(n) __attribute__((section(n), used))\n'
A = HEAD + """BPF_SDT_DECLARE2(shared, int, int);
BPF_SDT_DECLARE1(only_a, int);
int global_b(int x);
static __attribute__((noinline)) int helper(int x) { BPF_SDT_PROBE2(shared, x, 10); return x * 3; }
SEC("xdp") int prog_a(void *ctx) { int v = ((unsigned int *)ctx)[3]; BPF_SDT_PROBE2(shared, v, 1);
  BPF_SDT_PROBE1(only_a, v); return helper(v) > 0 ? 2 : 1; }
char LICENSE[] SEC("license") = "GPL";
"""
B = HEAD + """BPF_SDT_DECLARE2(shared, int, int);
static __attribute__((noinline)) int helper(int x) { BPF_SDT_PROBE2(shared, x, 20); return x + 7; }
__attribute__((noinline)) int global_b(int x) { BPF_SDT_PROBE2(shared, x, 2); return x + 1; }
SEC("tc") int prog_b(void *ctx) { int v = *(int *)ctx; BPF_SDT_PROBE2(shared, v, 3);
  return helper(v) + global_b(v) > 0; }
SEC("xdp") int prog_b2(void *ctx) { int v = ((unsigned int *)ctx)[3]; BPF_SDT_PROBE2(shared, v, 4); return 2; }
"""
C = HEAD + """BPF_SDT_DECLARE3(third, long, long, long);
__attribute__((noinline)) int global_c(int x) { BPF_SDT_PROBE3(third, x, x * 2, 5); return x; }
SEC("xdp") int prog_c(void *ctx) { return global_c(((unsigned int *)ctx)[3]) ? 2 : 1; }
"""
NO_PROBES = HEAD + """__attribute__((noinline)) int plain(int x) { return x - 1; }
SEC("xdp") int prog_d(void *ctx) { return plain(((unsigned int *)ctx)[3]) ? 2 : 1; }
"""


def build(tmp: Path, name: str, src: str) -> Path:
    c = tmp / f"{name}.c"
    c.write_text(src)
    o = tmp / f"{name}.o"
    compile_bpf(c, o, clang(19))
    return o


def site_anchors(obj: Path) -> list[tuple[str, str, int, str, int]]:
    """Each site as (probe, section, function, offset from the function, arg count)."""
    o = load_object(obj)
    out = []
    for s in analyze(o).sites:
        sec = o.section(s.section)
        assert sec is not None
        # the symbol that contains the NOP (names alone are ambiguous: two inputs
        # may each have a static `helper`)
        (func,) = [f for f in o.symbols if f.type == 2 and f.shndx == sec.index
                   and f.value <= s.offset < f.value + f.size]
        assert func.name == s.function
        out.append((s.name, s.section, func.name, s.offset - func.value, len(s.args)))
    return sorted(out)


def link(out: Path, *inputs: Path) -> subprocess.CompletedProcess[str]:
    tool("bpftool")
    return run([*CLI, "link", "-o", str(out), *map(str, inputs)])


@pytest.mark.parametrize("names", [("a", "b"), ("a", "b", "c"), ("c", "d", "a", "b")])
def test_linked_sites_keep_their_function_and_offset(names: tuple[str, ...], tmp_path: Path) -> None:
    srcs = {"a": A, "b": B, "c": C, "d": NO_PROBES}
    inputs = [build(tmp_path, n, srcs[n]) for n in names]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs]
    out = tmp_path / "out.o"
    res = link(out, *inputs)
    assert res.returncode == 0, res.stderr
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs] == digests, "inputs modified"
    assert run([*CLI, "check", str(out)]).returncode == 0
    want = sorted(a for p in inputs for a in site_anchors(p))
    assert site_anchors(out) == want
    report = analyze(load_object(out))
    assert set(report.declarations) == {d for p in inputs for d in analyze(load_object(p)).declarations}
    # the same static name `helper` from two inputs: both sites, each in its own copy
    if {"a", "b"} <= set(names):
        helpers = [s for s in report.sites if s.function == "helper"]
        assert len(helpers) == 2 and helpers[0].offset != helpers[1].offset


@pytest.mark.kernel
def test_linked_objects_load_into_the_verifier(tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    assert link(out, build(tmp_path, "a", A), build(tmp_path, "b", B), build(tmp_path, "c", C)).returncode == 0
    assert set(load([out])) == {"out.o"}


def test_inputs_without_any_probes(tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    d = build(tmp_path, "d", NO_PROBES)
    assert link(out, d).returncode == 0
    o = load_object(out)
    assert o.section(".bpf_sdt_notes") is None and analyze(o).sites == []


def test_check_flags_the_executable_section_trick(tmp_path: Path) -> None:
    """Mark the notes "ax" and link with bpftool: it succeeds and corrupts them."""
    hdr = tmp_path / "ax"
    hdr.mkdir()
    text = (HEADER_DIR / "bpf_sdt.h").read_text()
    (hdr / "bpf_sdt.h").write_text(text.replace('.bpf_sdt_notes,\\"\\",@progbits', '.bpf_sdt_notes,\\"ax\\",@progbits'))
    objs = []
    for n, src in (("a", A), ("b", B), ("c", C)):
        c = tmp_path / f"{n}.c"
        c.write_text(src)
        o = tmp_path / f"{n}.o"
        compile_bpf(c, o, clang(19), header_dir=hdr)
        objs.append(o)
    out = tmp_path / "ax.o"
    res = run([tool("bpftool"), "gen", "object", str(out), *map(str, objs)])
    assert res.returncode == 0, res.stderr
    check = run([*CLI, "check", str(out)])
    assert check.returncode == 1
    assert "added into bytes 4..7" in check.stdout and "[SDT115]" in check.stdout


def test_rfc_notes_are_refused_by_this_linker(tmp_path: Path) -> None:
    """Why `link` exists: Debian 12's bpftool refuses the plain notes."""
    a, b = build(tmp_path, "a", A), build(tmp_path, "b", B)
    res = run([tool("bpftool"), "gen", "object", str(tmp_path / "x.o"), str(a), str(b)])
    # Debian 12's does refuse them; a libbpf that links them would leave link's
    # fallback path (strip, link, write back) unexercised by this test.
    need(res.returncode != 0, "this libbpf links the RFC form itself; link takes the direct path")
    assert "STT_SECTION in non-exec section" in res.stderr



@pytest.mark.parametrize("version", [14, 19])
def test_the_direct_link_is_tried_only_where_the_linker_can_take_it(tmp_path: Path, version: int) -> None:
    """link predicts libbpf's refusal of the notes as they are (a relocation
    against a section symbol outside code) instead of paying a linker run to
    learn it: for each clang's objects the prediction is what bpftool does."""
    from bpf_sdt.postlink.link import _linker_refuses_records

    objs = []
    for name, src in (("a", A), ("b", B)):
        (tmp_path / f"{name}.c").write_text(src)
        compile_bpf(tmp_path / f"{name}.c", tmp_path / f"{name}.o", clang(version))
        objs.append(tmp_path / f"{name}.o")
    res = run([tool("bpftool"), "gen", "object", str(tmp_path / "x.o"), *map(str, objs)])
    assert any(_linker_refuses_records(load_object(o)) for o in objs) == (res.returncode != 0), res.stderr
    assert link(tmp_path / "out.o", *objs).returncode == 0


# --- failures: nothing partial, inputs untouched, the input named ------------

def test_unusable_input_is_named_and_nothing_written(tmp_path: Path) -> None:
    a = build(tmp_path, "a", A)
    junk = tmp_path / "junk.o"
    junk.write_text("not an object")
    out = tmp_path / "out.o"
    res = link(out, a, junk)
    assert res.returncode == 2 and "junk.o" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_linker_failure_leaves_old_output_unchanged(tmp_path: Path) -> None:
    a = build(tmp_path, "a", A)
    dup = build(tmp_path, "a2", A.replace("only_a", "other"))   # prog_a defined twice
    out = tmp_path / "out.o"
    out.write_bytes(b"previous")
    res = link(out, a, dup)
    assert res.returncode == 2 and "bpftool gen object failed" in res.stderr
    assert "a2.o" in res.stderr or "a.o" in res.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_input_with_broken_notes_is_refused(tmp_path: Path) -> None:
    bad = build(tmp_path, "bad", HEAD + 'BPF_SDT_DECLARE(p);\nSEC("xdp") int f(void *c) {\n(void)c;\n'
                'asm volatile("1: r0 = 0\\n.pushsection .bpf_sdt_notes,\\"\\",@progbits\\n'
                '___sdt_jt_p:\\n.quad 1b\\n.popsection" ::: "r0");\nreturn 2; }\n')
    res = link(tmp_path / "out.o", bad)
    assert res.returncode == 2 and "bad.o" in res.stderr and "SDT107" in res.stderr
    assert not (tmp_path / "out.o").exists()
    junk = tmp_path / "junk.o"
    junk.write_text("not an object")
    res = link(tmp_path / "out.o", build(tmp_path, "a", A), bad, junk)   # read before bad is checked
    assert res.returncode == 2 and "bad.o" in res.stderr and "SDT107" in res.stderr, "the first input's error"
    assert not (tmp_path / "out.o").exists()


def test_the_linker_runs_while_the_inputs_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """clang 19's inputs are never linked directly, so bpftool starts on
    their stripped copies before the first is checked; a check that fails
    then ends it, and no output is written."""
    from bpf_sdt.postlink import link as link_module
    events: list[str] = []
    start, check = link_module._start_bpftool, link_module.checked_input
    started: list[subprocess.Popen[str]] = []

    def recorded_start(*args: object) -> subprocess.Popen[str]:
        events.append("linker")
        started.append(start(*args))  # type: ignore[arg-type]
        return started[-1]

    def recorded_check(obj: object) -> object:
        events.append("check")
        return check(obj)  # type: ignore[arg-type]

    monkeypatch.setattr(link_module, "_start_bpftool", recorded_start)
    monkeypatch.setattr(link_module, "checked_input", recorded_check)
    inputs = [build(tmp_path, "a", A), build(tmp_path, "b", B)]
    link_module.link(tmp_path / "out.o", inputs, tool("bpftool"))
    assert events == ["linker", "check", "check"]
    assert site_anchors(tmp_path / "out.o") == sorted(site_anchors(inputs[0]) + site_anchors(inputs[1]))
    events.clear()

    def failing_check(obj: object) -> object:
        raise InputError("refused")

    monkeypatch.setattr(link_module, "checked_input", failing_check)
    with pytest.raises(InputError):
        link_module.link(tmp_path / "again.o", inputs, tool("bpftool"))
    assert events == ["linker"] and started[-1].returncode is not None, "the linker was ended"
    assert not (tmp_path / "again.o").exists()


# --- global data: every section kept as the linker made it; load and run ---------

GLOB_A = HEAD + """BPF_SDT_DECLARE1(hit, int);
int counter_a;                      /* .bss */
int table_a[64];                    /* .bss: 256 bytes that exist only as a size */
int data_a = 5;                     /* .data */
const volatile int ro_a = 7;        /* .rodata */
SEC("xdp") int prog_a(void *ctx) {
  (void)ctx;
  counter_a++;
  table_a[counter_a & 63] += 2;
  BPF_SDT_PROBE1(hit, counter_a);
  return counter_a * 1000 + table_a[counter_a & 63] * 100 + data_a * 10 + ro_a;
}
char LICENSE[] SEC("license") = "GPL";
"""
GLOB_B = HEAD + """BPF_SDT_DECLARE1(hit_b, long);
long counter_b;                     /* .bss */
int data_b = 3;                     /* .data */
__attribute__((noinline)) int from_b(int x) { counter_b += x; BPF_SDT_PROBE1(hit_b, counter_b); return (int)counter_b; }
SEC("xdp") int prog_b(void *ctx) {
  (void)ctx;
  return from_b(data_b) * 10 + data_b;
}
"""
PLAIN = HEAD + """BPF_SDT_DECLARE1(plain_probe, int);
SEC("xdp") int prog_c(void *ctx) { int v = ((unsigned int *)ctx)[3]; BPF_SDT_PROBE1(plain_probe, v); return 2; }
"""
REPEAT = 3
# After REPEAT runs: counter_a = 3, table_a[3] = 2, data_a = 5, ro_a = 7;
# counter_b = 3 * data_b = 9.
EXPECTED = {"prog_a": REPEAT * 1000 + 2 * 100 + 5 * 10 + 7, "prog_b": 9 * 10 + 3, "prog_c": 2}


def _stripped_reference(tmp: Path, inputs: list[Path]) -> Path:
    """What `bpftool gen object` alone makes of the inputs without their notes."""
    from bpf_sdt.postlink.link import strip_notes

    stripped = []
    for i, p in enumerate(inputs):
        out = tmp / f"stripped{i}.o"
        out.write_bytes(strip_notes(load_object(p)))
        stripped.append(out)
    ref = tmp / "reference.o"
    res = run([tool("bpftool"), "gen", "object", str(ref), *map(str, stripped)])
    assert res.returncode == 0, res.stderr
    return ref


def _relocs_by_name(obj: object, sec: object) -> list[tuple[int, int, str]]:
    from bpf_sdt.elf import BpfObject, Section

    assert isinstance(obj, BpfObject) and isinstance(sec, Section)
    return [(r.offset, r.type, obj.symbols[r.symbol].name or f"sec{obj.symbols[r.symbol].shndx}")
            for r in obj.decode_relocations(sec)]


def assert_sections_as_the_linker_made_them(out: Path, ref: Path, sites: int) -> None:
    from bpf_sdt.elf import SHT_REL, SHT_SYMTAB

    o, r = load_object(out), load_object(ref)
    ours = {s.name: s for s in o.sections}
    # ours also has .shstrtab: the ELF writer keeps section names in their own
    # table, where libbpf's linker shares .strtab
    notes_only = {".bpf_sdt_notes", ".rel.bpf_sdt_notes", ".shstrtab"}
    assert set(ours) - notes_only == {s.name for s in r.sections}
    for want in r.sections:
        got = ours[want.name]
        assert (got.type, got.flags, got.addralign) == (want.type, want.flags, want.addralign), want.name
        if want.type == SHT_SYMTAB:
            assert got.size == want.size + sites * want.entsize      # plus one local per entry
        elif want.type == SHT_REL:
            assert _relocs_by_name(o, got) == _relocs_by_name(r, want), want.name
        elif want.name not in (".strtab", ".shstrtab"):
            assert got.size == want.size, want.name
            assert o.section_data(got) == r.section_data(want), want.name


def run_programs(obj: Path, names: list[str]) -> dict[str, int]:
    """Load every program of ``obj`` and BPF_PROG_TEST_RUN each named one
    REPEAT times on a 64-byte packet; name -> the last return value."""
    import os
    import re

    from toolchain import bpf_permitted

    need(bpf_permitted(), "bpf() not permitted (needs root)")
    bpftool = tool("bpftool")
    pin = Path(f"/sys/fs/bpf/bpf_sdt_link_{os.getpid()}_{obj.stem}")
    packet = obj.with_suffix(".pkt")
    packet.write_bytes(bytes(range(64)))
    res = run([bpftool, "prog", "loadall", str(obj), str(pin)])
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        out = {}
        for name in names:
            ran = run([bpftool, "prog", "run", "pinned", str(pin / name), "data_in", str(packet),
                       "repeat", str(REPEAT)])
            assert ran.returncode == 0, ran.stderr
            m = re.search(r"Return value: (\d+)", ran.stdout + ran.stderr)
            assert m, ran.stdout
            out[name] = int(m.group(1))
        return out
    finally:
        run(["rm", "-rf", str(pin)])


@pytest.mark.kernel
@pytest.mark.parametrize("case", ["bss in one input", "bss in several inputs", "reversed order"])
def test_global_data_survives_link_and_runs(case: str, tmp_path: Path) -> None:
    srcs = {"bss in one input": [("a", GLOB_A), ("c", PLAIN)],
            "bss in several inputs": [("a", GLOB_A), ("b", GLOB_B), ("c", PLAIN)],
            "reversed order": [("b", GLOB_B), ("a", GLOB_A)]}[case]
    inputs = [build(tmp_path, n, s) for n, s in srcs]
    out = tmp_path / "out.o"
    res = link(out, *inputs)
    assert res.returncode == 0, res.stderr
    assert run([*CLI, "check", str(out)]).returncode == 0
    sites = len(analyze(load_object(out)).sites)
    assert sites == sum(len(analyze(load_object(p)).sites) for p in inputs)
    assert_sections_as_the_linker_made_them(out, _stripped_reference(tmp_path, inputs), sites)
    bss = load_object(out).section(".bss")
    assert bss is not None and bss.size >= 4 + 256
    progs = [f"prog_{n}" for n, _ in srcs]
    assert run_programs(out, progs) == {p: EXPECTED[p] for p in progs}


def test_check_catches_a_lost_bss_size(tmp_path: Path) -> None:
    """The original bug: .bss written with size 0.  check must fail on it."""
    import struct

    out = tmp_path / "out.o"
    assert link(out, build(tmp_path, "a", GLOB_A)).returncode == 0
    o = load_object(out)
    bss = o.section(".bss")
    assert bss is not None
    data = bytearray(out.read_bytes())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<Q", data, shoff + 64 * bss.index + 32, 0)      # sh_size = 0
    lost = tmp_path / "lost.o"
    lost.write_bytes(bytes(data))
    res = run([*CLI, "check", str(lost)])
    assert res.returncode == 1 and "[SDT118]" in res.stdout and "SHT_NOBITS" in res.stdout
    assert "counter_a" in res.stdout and "table_a" in res.stdout


# --- one probe name, one prototype -------------------------------------------------

def _declaring(tmp: Path, name: str, decl: str, prog: str) -> Path:
    return build(tmp, name, HEAD + f"""typedef unsigned int my_u32;
BPF_SDT_DECLARE1(p, {decl});
SEC("xdp") int {prog}(void *ctx) {{ {decl} v = (({decl} *)ctx)[0]; BPF_SDT_PROBE1(p, v); return 2; }}
""")


def test_one_probe_two_prototypes_is_refused_naming_the_inputs(tmp_path: Path) -> None:
    a = _declaring(tmp_path, "a", "int", "prog_a")
    b = _declaring(tmp_path, "b", "long", "prog_b")
    out = tmp_path / "out.o"
    res = link(out, a, b)
    assert res.returncode == 2 and not out.exists()
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert f"(int) in {a}" in line and f"(long) in {b}" in line
    assert "bpf-sdt-link" not in line and "/tmp/tmp" not in line      # never a temporary


def test_check_finds_the_conflict_in_an_object_linked_elsewhere(tmp_path: Path) -> None:
    """bpftool links the stripped inputs; both tags survive into one BTF."""
    a = _declaring(tmp_path, "a", "int", "prog_a")
    b = _declaring(tmp_path, "b", "long", "prog_b")
    ref = _stripped_reference(tmp_path, [a, b])
    res = run([*CLI, "check", str(ref)])
    assert res.returncode == 1 and "[SDT111]" in res.stdout
    assert "(int) and (long)" in res.stdout


def test_same_prototype_spelled_differently_links(tmp_path: Path) -> None:
    a = _declaring(tmp_path, "a", "unsigned int", "prog_a")
    b = _declaring(tmp_path, "b", "my_u32", "prog_b")            # a typedef of the same type
    out = tmp_path / "out.o"
    assert link(out, a, b).returncode == 0
    assert run([*CLI, "check", str(out)]).returncode == 0


def test_link_finds_bpftool_like_instrument(tmp_path: Path) -> None:
    """link looks bpftool up as every command does (bpf_sdt/toolchain.py):
    $BPF_SDT_BPFTOOL names it, and --bpftool overrides that."""
    a = build(tmp_path, "a", A)
    env = dict(os.environ, BPF_SDT_BPFTOOL=str(tmp_path / "no-such-bpftool"))
    res = run([*CLI, "link", "-o", str(tmp_path / "out.o"), str(a)], env=env)
    assert res.returncode != 0 and "no-such-bpftool not found" in res.stderr, res.stderr
    assert not (tmp_path / "out.o").exists()
    res = run([*CLI, "link", "-o", str(tmp_path / "out.o"), str(a), "--bpftool", tool("bpftool")], env=env)
    assert res.returncode == 0, res.stderr


def call_recorded_in_data(tmp_path: Path) -> Path:
    """An instrumented object whose first recorded call names a word in a
    data section: its calls section's first relocation moved onto the
    LICENSE symbol."""
    return call_relocated(tmp_path, lambda obj, info: (_symbol_index(obj, "LICENSE"), info & 0xFFFFFFFF))


def call_relocated(tmp_path: Path, change: Callable[[BpfObject, int], tuple[int, int]]) -> Path:
    """An instrumented object whose calls section's first relocation has
    (symbol, type) = change(object, r_info)."""
    inst = tmp_path / "inst.o"
    res = run([*CLI, "instrument", str(build(tmp_path, "a", A)), "--record", "-o", str(inst),
               "--bpftool", tool("bpftool")])
    assert res.returncode == 0, res.stderr
    obj = load_object(inst)
    rel = obj.section(".rel.bpf_sdt_calls")
    assert rel is not None
    data = bytearray(obj.data)
    offset, info = REL.unpack_from(data, rel.offset)
    symbol, rtype = change(obj, info)
    REL.pack_into(data, rel.offset, offset, symbol << 32 | rtype)
    bad = tmp_path / "bad.o"
    bad.write_bytes(data)
    return bad


def _symbol_index(obj: BpfObject, name: str) -> int:
    (index,) = [i for i, sym in enumerate(obj.symbols) if sym.name == name]
    return index


def test_a_call_recorded_outside_code_is_refused(tmp_path: Path) -> None:
    """An instrumented input whose calls record names a word in a data
    section: link cannot move it with any code section, so it names the
    input in one line (check's SDT120), exit 2."""
    bad = call_recorded_in_data(tmp_path)
    out = tmp_path / "out.o"
    res = link(out, bad)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "bad.o" in res.stderr and "outside any code section" in res.stderr
    assert "SDT120" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("change", [
    lambda obj, info: (0, info & 0xFFFFFFFF),            # the null symbol (SHN_UNDEF): no section at all
    lambda obj, info: (info >> 32, R_BPF_64_64),         # not an address word's relocation type
], ids=["undefined-symbol", "not-abs64"])
def test_a_call_no_relocation_places_is_refused_not_dropped(change: Callable[[BpfObject, int], tuple[int, int]],
                                                            tmp_path: Path) -> None:
    """A recorded call whose word names no defined symbol by R_BPF_64_ABS64:
    list would show its site calling nothing and link would drop the call
    without a word (both read calls that way); check names it (SDT120,
    exit 1) and link refuses the input in one line, exit 2."""
    bad = call_relocated(tmp_path, change)
    res = run([*CLI, "check", str(bad)])
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = [ln for ln in res.stdout.splitlines() + res.stderr.splitlines() if "SDT120" in ln]
    assert "1 recorded call has no R_BPF_64_ABS64 relocation against a defined symbol" in line, line
    assert "___sdt_call_" in line, line
    out = tmp_path / "out.o"
    res = link(out, bad)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "SDT120" in res.stderr, res.stderr
    assert not out.exists()


@pytest.mark.parametrize("address", [2**64 - 8, 1 << 20, 4], ids=["negative", "past-the-section", "unaligned"])
def test_a_call_whose_address_is_no_instruction_is_refused(address: int, tmp_path: Path) -> None:
    """A recorded call whose word (REL: its implicit addend) points before,
    past or between its code section's instructions: check passed it, list
    pinned the observer on another site and link died of an OverflowError;
    now SDT120, exit 1, and link refuses it in one line, exit 2."""
    good = call_relocated(tmp_path, lambda obj, info: (info >> 32, info & 0xFFFFFFFF))
    obj = load_object(good)
    calls, rel = obj.section(".bpf_sdt_calls"), obj.section(".rel.bpf_sdt_calls")
    assert calls is not None and rel is not None
    offset, _info = REL.unpack_from(obj.data, rel.offset)
    data = bytearray(obj.data)
    data[calls.offset + offset: calls.offset + offset + 8] = address.to_bytes(8, "little")
    bad = tmp_path / "astray.o"
    bad.write_bytes(data)
    res = run([*CLI, "check", str(bad)])
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = [ln for ln in res.stdout.splitlines() + res.stderr.splitlines() if "SDT120" in ln]
    assert "an address outside its code section's instructions" in line, line
    out = tmp_path / "out.o"
    res = link(out, bad)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "SDT120" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not out.exists()

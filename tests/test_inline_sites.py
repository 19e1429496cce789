"""Inlined sites are located where the user called them (issue 21).

A probe in an always_inline helper is listed at the helper's line (clang
locates the asm there).  `list` also shows where each copy was inlined, from
the compiler's DWARF (DW_TAG_inlined_subroutine call_file/call_line), and
keeps showing it after `bpf-sdt link` and `bpf-sdt instrument`, which drop
DWARF, through the `.bpf_sdt_inline` section they write (docs/format.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from toolchain import bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.elf import load_object
from bpf_sdt.inlined import INLINE_SECTION

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
SOURCE = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE2(hit, int, int);
static __attribute__((always_inline)) inline void mark(int x, int tag)
{
	BPF_SDT_PROBE2(hit, x, tag);			/* @probe */
}
static __attribute__((always_inline)) inline void twice(int *c)
{
	mark(c[0], 1);					/* @twice1 */
	mark(c[1], 2);					/* @twice2 */
}
__attribute__((section("xdp"), used)) int PREFIX_xdp(int *c)
{
	mark(c[2], 3);					/* @direct */
	twice(c);					/* @outer */
	return 2;
}
__attribute__((section("tc"), used)) int PREFIX_tc(int *c)
{
	mark(c[3], 4);					/* @tc */
	return 0;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""
# the immediate `tag` of each site -> its chain of markers, innermost first
CHAINS = {1: ("@twice1", "@outer"), 2: ("@twice2", "@outer"), 3: ("@direct",), 4: ("@tc",)}


def line_of(marker: str) -> int:
    (n,) = [i for i, line in enumerate(SOURCE.splitlines(), 1) if marker in line]
    return n


def _build(tmp_path: Path, version: int, prefix: str) -> tuple[Path, Path]:
    src = tmp_path / f"{prefix}.bpf.c"
    src.write_text(SOURCE.replace("PREFIX", prefix))
    obj = tmp_path / f"{prefix}.o"
    compile_bpf(src, obj, clang(version))
    return src, obj


def _listing(obj: Path) -> list[dict[str, Any]]:
    res = run([*CLI, "list", "--json", str(obj)])
    assert res.returncode == 0, res.stderr
    probes: list[dict[str, Any]] = json.loads(res.stdout)["objects"][0]["probes"]
    return probes


def _assert_located(obj: Path, sources: dict[str, Path]) -> None:
    """Every site: at the probe's line in the helper, and inlined at the
    markers' lines of the file its program was compiled from."""
    probes = _listing(obj)
    assert len(probes) == len(CHAINS) * len(sources)
    for p in probes:
        src = str(sources[p["function"].split("_")[0]])
        tag = p["args"][1]["value"]
        assert (p["file"], p["line"]) == (src, line_of("@probe")), p
        want = [{"file": src, "line": line_of(m), "column": 2} for m in CHAINS[tag]]
        assert p["inlined_at"] == want, (obj.name, p)
    text = run([*CLI, "list", str(obj)]).stdout
    for src in sources.values():
        chain = ", at ".join(f"{src}:{line_of(m)}" for m in CHAINS[1])
        assert f"{src}:{line_of('@probe')}:2 (inlined at {chain})" in text, text


def _check_clean(obj: Path) -> None:
    res = run([*CLI, "check", str(obj)])
    assert res.returncode == 0 and "warning" not in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("version", [14, 19])
def test_inlined_sites_are_located_at_their_calls_through_link_and_instrument(version: int,
                                                                                tmp_path: Path) -> None:
    tool("bpftool")
    src_a, a = _build(tmp_path, version, "first")
    src_b, b = _build(tmp_path, version, "second")
    assert load_object(a).section(INLINE_SECTION) is None, "the compiler's object is read through its DWARF"
    _assert_located(a, {"first": src_a})

    linked = tmp_path / "linked.o"
    res = run([*CLI, "link", "-o", str(linked), str(a), str(b)])
    assert res.returncode == 0, res.stderr
    assert load_object(linked).section(".debug_info") is None, "the linker drops DWARF"
    _check_clean(linked)
    _assert_located(linked, {"first": src_a, "second": src_b})

    for given, sources in ((a, {"first": src_a}), (linked, {"first": src_a, "second": src_b})):
        out = tmp_path / f"{given.stem}.recorded.o"
        res = run([*CLI, "instrument", str(given), "-o", str(out)])
        assert res.returncode == 0, res.stderr
        _check_clean(out)
        _assert_located(out, sources)


def test_objects_without_inlined_sites_get_no_section(tmp_path: Path) -> None:
    """A probe in the program itself: no chain, no section written by link or
    instrument, and `inlined_at` is empty."""
    tool("bpftool")
    src = tmp_path / "plain.bpf.c"
    src.write_text('#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(p, int);\n'
                   '__attribute__((section("xdp"), used)) int plain(int *c) { BPF_SDT_PROBE1(p, c[0]); return 2; }\n'
                   'char _license[] __attribute__((section("license"), used)) = "GPL";\n')
    obj = tmp_path / "plain.o"
    compile_bpf(src, obj, clang(19))
    for cmd, out in ((["link", "-o"], tmp_path / "plain.linked.o"), (["instrument", str(obj), "-o"],
                                                                     tmp_path / "plain.recorded.o")):
        res = run([*CLI, *cmd, str(out), *([str(obj)] if cmd[0] == "link" else [])])
        assert res.returncode == 0, res.stderr
        assert load_object(out).section(INLINE_SECTION) is None
        assert [p["inlined_at"] for p in _listing(out)] == [[]]


@pytest.mark.kernel
def test_linked_object_with_the_section_loads(tmp_path: Path) -> None:
    """The section is not loaded: libbpf (bpftool prog loadall) takes a
    linked object carrying it as it takes one without it."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    bpftool = tool("bpftool")
    _, obj = _build(tmp_path, 19, "loaded")
    out = tmp_path / "loaded.linked.o"
    assert run([*CLI, "link", "-o", str(out), str(obj)]).returncode == 0
    assert load_object(out).section(INLINE_SECTION) is not None
    pins = Path("/sys/fs/bpf") / f"bpf-sdt-inline-{os.getpid()}"
    res = run([bpftool, "prog", "loadall", str(out), str(pins)])
    try:
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in pins.iterdir()) == ["loaded_tc", "loaded_xdp"]
    finally:
        for pin in pins.glob("*"):
            pin.unlink()
        if pins.exists():
            pins.rmdir()


@pytest.mark.kernel
def test_trace_shows_where_each_site_was_inlined(tmp_path: Path) -> None:
    """trace's events carry the same chains as `list`: JSON `inlined_at`, and
    the text's source column names the calls."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    tool("bpftool")
    src = tmp_path / "traced.bpf.c"        # every value ingress_ifindex: XDP's packet pointers are no ints
    src.write_text(SOURCE.replace("PREFIX", "traced").replace("c[0]", "c[3]").replace("c[1]", "c[3]")
                   .replace("c[2]", "c[3]"))
    obj = tmp_path / "traced.o"
    compile_bpf(src, obj, clang(19))
    packet = tmp_path / "p.bin"
    packet.write_bytes(bytes(64))
    res = run([*CLI, "trace", str(obj), "--run", "traced_xdp", "--packet", str(packet), "--json"])
    assert res.returncode == 0, res.stderr
    events = [e for e in map(json.loads, res.stdout.splitlines()) if e.get("type") == "event"]
    assert sorted(e["args"][1] for e in events) == [1, 2, 3], events
    for e in events:
        want = [{"file": str(src), "line": line_of(m), "column": 2} for m in CHAINS[e["args"][1]]]
        assert (e["line"], e["inlined_at"]) == (line_of("@probe"), want), e
    text = run([*CLI, "trace", str(obj), "--run", "traced_xdp", "--packet", str(packet)]).stdout
    chain = ", at ".join(f"{src.name}:{line_of(m)}" for m in CHAINS[1])
    assert f"{src.name}:{line_of('@probe')} (inlined at {chain})" in text, text

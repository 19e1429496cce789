"""Objects every loader accepts (docs/loaders.md): the calls `instrument`
inserts are relocated as clang relocates static calls, nothing in a code
section looks like a function, and `list` still names a site's observers,
also after `bpf-sdt link`."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import REPO, clang, run, tool

from bpf_sdt.elf import R_BPF_64_32, STT_FUNC, STT_NOTYPE, STT_SECTION, BpfObject, is_reserved_index, load_object

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
SAMPLES = REPO / "samples"
INSN_SIZE = 8
IMM = struct.Struct("<i")
IMM_OFFSET = 4                      # bytes 4..7 of an instruction
TEXT = ".text"

# A static call from SEC("xdp") into .text, to read clang's own encoding from.
STATIC_CALL_C = r"""
#define SEC(name) __attribute__((section(name), used))
struct xdp_md { unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index; };
static __attribute__((noinline)) int first(int x) { return x * 3 + 1; }
static __attribute__((noinline)) int second(int x) { return x * 5 + 2; }
SEC("xdp") int prog(struct xdp_md *ctx) { return first(ctx->ingress_ifindex) + second(ctx->rx_queue_index) ? 2 : 1; }
char LICENSE[] SEC("license") = "GPL";
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples, built by their Makefile with the make hook."""
    tool("bpftool")
    out = tmp_path_factory.mktemp("loader-samples")
    res = subprocess.run(["make", "-s", "-C", str(SAMPLES), f"BPF_CLANG={clang(19)}", f"BPF_SDT_OUTDIR={out}"],
                         capture_output=True, text=True, env=_env(), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def instrument(src: Path, out: Path, *extra: str) -> Path:
    res = run([*CLI, "instrument", str(src), "-o", str(out), *extra], env=_env())
    assert res.returncode == 0, res.stderr
    return out


def calls_across_sections(obj: BpfObject) -> list[tuple[str, int, int, int]]:
    """(caller section, relocation symbol index, symbol type, callee byte
    offset in .text as a loader computes it) for every relocated call."""
    out = []
    for sec in obj.sections:
        if not sec.executable:
            continue
        _, relocs = obj.relocations(sec)
        data = obj.section_data(sec)
        for r in relocs:
            if r.type != R_BPF_64_32:
                continue
            sym = obj.symbols[r.symbol]
            (imm,) = IMM.unpack_from(data, r.offset + IMM_OFFSET)
            out.append((sec.name, r.symbol, sym.type, sym.value + INSN_SIZE * (imm + 1)))
    return out


def functions_at(obj: BpfObject, section: str) -> dict[int, str]:
    return {s.value: s.name for s in obj.symbols
            if s.type == STT_FUNC and obj.sections[s.shndx].name == section}


def test_clang_relocates_a_static_call_against_the_section_symbol(tmp_path: Path) -> None:
    """The reference the next test holds instrument to: measured, not assumed."""
    src = tmp_path / "static_call.c"
    src.write_text(STATIC_CALL_C)
    res = run([clang(19), "-target", "bpf", "-O2", "-g", "-c", str(src), "-o", str(tmp_path / "s.o")])
    assert res.returncode == 0, res.stderr
    obj = load_object(tmp_path / "s.o")
    calls = calls_across_sections(obj)
    funcs = functions_at(obj, TEXT)
    assert len(calls) == 2
    assert {obj.sections[obj.symbols[sym].shndx].name for _, sym, _, _ in calls} == {TEXT}
    assert all(kind == STT_SECTION for _, _, kind, _ in calls)
    assert sorted(funcs[target] for _, _, _, target in calls) == ["first", "second"]


def test_inserted_calls_are_relocated_as_clang_does_and_code_has_no_labels(samples: Path, tmp_path: Path) -> None:
    out = instrument(samples / "xdp_parser.bpf.o", tmp_path / "x.o", "--observer", str(samples / "observer.bpf.o"),
                     "--record")
    obj = load_object(out)
    text = obj.section(TEXT)
    assert text is not None
    funcs = functions_at(obj, TEXT)
    calls = [c for c in calls_across_sections(obj) if c[0] != TEXT]
    assert len(calls) >= 4 + 6            # count_drop at the 4 drop sites, the recorder at all 6
    for section, sym, kind, target in calls:
        assert kind == STT_SECTION and obj.symbols[sym].shndx == text.index, (section, sym)
        assert target in funcs, f"{section}: a call lands on {target:#x}, no function starts there"
    assert {funcs[t] for *_, t in calls} >= {"count_drop"}
    in_code = [s.name for s in obj.symbols if s.type == STT_NOTYPE and s.name
               and not is_reserved_index(s.shndx) and obj.sections[s.shndx].executable]
    assert in_code == [], "symbols in code that a loader could take for functions"


def _observers(path: Path) -> list[tuple[str, int, list[str]]]:
    res = run([*CLI, "list", "--json", str(path)], env=_env())
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    return [(p["name"], p["insn"], p["observers"]) for o in doc["objects"] for p in o["probes"]]


def test_list_names_observers_from_the_calls_section_also_after_link(samples: Path, tmp_path: Path) -> None:
    out = instrument(samples / "xdp_parser.bpf.o", tmp_path / "x.o", "--observer", str(samples / "observer.bpf.o"))
    listed = _observers(out)
    assert [obs for name, _, obs in listed if name == "drop"] == [["count_drop"]] * 4
    assert [obs for name, _, obs in listed if name != "drop"] == [[], []]
    linked = tmp_path / "linked.o"
    res = run([*CLI, "link", "-o", str(linked), str(out)], env=_env())
    assert res.returncode == 0, res.stderr
    assert _observers(linked) == listed

"""`bpf-sdt instrument` against the real kernel: instrumented objects load
with libbpf, run under BPF_PROG_TEST_RUN with the same results as the
original, and their observers receive exactly the argument values the test
computes from each packet, in program order."""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from toolchain import REPO, bpf_permitted, clang, need, run, tool

from bpf_sdt.elf import STT_FUNC, BpfObject, SecRec, load_object, r_info
from bpf_sdt.insn import Insn, encode_sections, nop
from bpf_sdt.notes import decode_notes
from bpf_sdt.rewrite import decode_code, rewrite_object

PROGS = REPO / "tests" / "progs"
CLI = [sys.executable, "-m", "bpf_sdt.cli"]
U64 = (1 << 64) - 1
SEED = 7                     # `seed` in instr.bpf.c
XDP_DROP, XDP_PASS = 1, 2
EVENT_HEAD = struct.Struct("<QII")


def _s(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


# --- building -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vmlinux_h(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vmlinux")
    res = run([str(REPO / "samples" / "vmlinux.sh"), str(out / "vmlinux.h"),
               str(REPO / "samples" / "vmlinux" / "vmlinux-6.18.h.xz")])
    assert res.returncode == 0, res.stderr
    return out


def build(src: Path, out: Path, vmlinux: Path, cc: str | None = None, mcpu: str = "v3") -> Path:
    res = run([cc or clang(19), "-target", "bpf", "-O2", "-g", f"-mcpu={mcpu}", "-Wall", "-Werror",
               "-Wno-unused-parameter", f"-I{vmlinux}", f"-I{REPO / 'headers'}", "-c", str(src), "-o", str(out)])
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def objs(tmp_path_factory: pytest.TempPathFactory, vmlinux_h: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("instr")
    tool("bpftool")
    return {"instr": build(PROGS / "instr.bpf.c", d / "instr.o", vmlinux_h),
            "instr14": build(PROGS / "instr.bpf.c", d / "instr14.o", vmlinux_h, clang(14), "v2"),
            "observer": build(PROGS / "observer.bpf.c", d / "observer.o", vmlinux_h)}


def instrument(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([*CLI, "instrument", str(src), "-o", str(out), *extra])


def instrumented(src: Path, out: Path, *extra: str) -> Path:
    res = instrument(src, out, *extra)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    """A private bpffs for the recorder's pinned maps, so tests never meet
    each other's pins (or a user's) in /sys/fs/bpf."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    d = tmp_path / "bpffs"
    d.mkdir()
    res = run(["mount", "-t", "bpf", "bpf", str(d)])
    assert res.returncode == 0, res.stderr
    try:
        yield d
    finally:
        run(["umount", str(d)])


# --- what the program computes, from the packet -----------------------------------


def packet(seed: int) -> bytes:
    return random.Random(seed).randbytes(64)


def expected_xdp(p: bytes) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """instr.bpf.c's xdp_main on packet ``p``: return value and probe firings."""
    (u16,), (s16,) = struct.unpack_from("<H", p, 4), struct.unpack_from("<h", p, 4)
    (u32,), (s32,) = struct.unpack_from("<I", p, 8), struct.unpack_from("<i", p, 8)
    (u64,), (s64,) = struct.unpack_from("<Q", p, 8), struct.unpack_from("<q", p, 8)
    events: list[tuple[str, tuple[int, ...]]] = [
        ("pkt", (len(p), p[0], _s(p[1], 8))),
        ("ptrs", ()),                     # pointers: checked separately
        ("consts", (-5, 0x80000000, 1 << 40, -3)),
        ("wide", (p[2], _s(p[3], 8), u16, s16, u32, s32, u64, s64, -1, 123456789012,
                  (p[0] << 24) & 0xFFFFFFFF, len(p) * 1000)),
    ]
    acc = SEED
    for i in range(4):
        acc = (acc * 31 + p[12 + i]) & U64          # mix(acc, b[i]) probes (b[i], out)
        events += [("sub", (p[12 + i], acc)), ("cb", (i, acc))]
    events.append(("gsub", (p[0], (p[0] + p[1]) & 3)))
    return (XDP_PASS if p[0] & 1 else XDP_DROP), events


# --- running --------------------------------------------------------------------


def run_object(path: Path, pin_root: Path | None, packets: list[bytes],
               prog: str = "xdp_main") -> tuple[list[int], dict[str, bytes], list[bytes]]:
    """Load with libbpf, test-run ``prog`` on each packet; return values, the
    program's own map state, and the recorder's events (if any)."""
    from bpf_sdt.libbpf import LoadedObject, RingBuffer

    events: list[bytes] = []
    with LoadedObject.open(path, pin_root_path=pin_root) as obj:
        obj.load()
        p = obj.find_program(prog)
        rets = [p.test_run(pkt).retval for pkt in packets]
        # global data maps are named after the object: compare them by section
        state = {m.name[m.name.find("."):] if "." in m.name else m.name:
                 b"".join(m.lookup(k) or b"" for k in m)
                 for m in obj.maps if m.name == "counts" or m.name.endswith((".bss", ".data"))}
        names = {m.name for m in obj.maps}
        if "bpf_sdt_events" in names:
            with RingBuffer(obj.find_map("bpf_sdt_events"), events.append) as rb:
                rb.consume()
    return rets, state, events


def decode_events(obj_path: Path, raw: list[bytes]) -> list[tuple[str, tuple[int, ...]]]:
    """(probe, argument values) per recorder event, the values signed per type."""
    from bpf_sdt.sites import site_table

    table = site_table(load_object(obj_path))
    out = []
    for ev in raw:
        _ts, site, _cpu = EVENT_HEAD.unpack_from(ev)
        probe = table.entries[site].probe
        words = struct.unpack_from(f"<{(len(ev) - EVENT_HEAD.size) // 8}Q", ev, EVENT_HEAD.size)
        out.append((probe, tuple(t.convert(w) for t, w in zip(table.types[probe], words, strict=True))))
    return out


# --- the instruction model ------------------------------------------------------------


def sample_objects(tmp: Path) -> list[Path]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["make", "-s", "-C", str(REPO / "samples"), f"BPF_CLANG={clang(19)}",
                          f"BPF_SDT_OUTDIR={tmp}"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return sorted(tmp.glob("*.bpf.o"))


# What the samples build for loading; the other objects are inputs of `bpf-sdt link`.
LOADABLE_SAMPLES = {"xdp_parser.bpf.o", "trace_exec.bpf.o", "wide_probe.bpf.o", "tc.linked.bpf.o",
                    "loop.linked.bpf.o"}


@pytest.fixture(scope="module")
def all_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tool("bpftool")
    return sample_objects(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def samples(all_samples: list[Path]) -> list[Path]:
    found = [p for p in all_samples if p.name in LOADABLE_SAMPLES]
    assert {p.name for p in found} == LOADABLE_SAMPLES
    return found


def test_a_program_that_never_names_r10_has_the_frame_its_analysis_finds(all_samples: list[Path],
                                                                          objs: dict[str, Path]) -> None:
    """Programs whose code never names r10 skip the frame analysis (nothing
    can point into their stack): on every sample and compile-matrix object,
    each function's reach is what the analysis itself finds, and some
    programs of them do skip it."""
    from bpf_sdt.instrument.analysis import Program
    from bpf_sdt.instrument.stackframe import analyze_frame

    from bpf_sdt.insn import R10

    skipped = 0
    for path in [*all_samples, *objs.values()]:
        obj = load_object(path)
        program = Program(decode_code(obj), obj.symbols)
        for f in program.functions:
            analysed = analyze_frame(f.insns, f.succ, f.is_program, program._call_reach(f))
            assert f.reach == analysed, f"{path.name}: {f.name}"
            skipped += f.is_program and all(R10 not in (x.dst, x.src) for x in f.insns)
    assert skipped


def test_a_data_word_into_code_moves_with_its_instruction_or_is_refused(objs: dict[str, Path]) -> None:
    """A data word relocated against a code section (as the notes' address
    words are) holds a code offset in place: it follows its instruction when
    code is inserted before it; one pointing between instructions, or a
    relocation past its section, is refused with the place named."""
    from bpf_sdt.elf import R_BPF_64_ABS64, SHF_ALLOC, SHF_INFO_LINK, SHT_PROGBITS, SHT_REL, ElfImage, Relocation
    from bpf_sdt.errors import InputError
    from bpf_sdt.insn import INSN_SIZE

    base = load_object(objs["instr"])
    code_i = next(s.index for s in base.sections if s.executable and s.size >= 2 * INSN_SIZE)
    code_name = base.sections[code_i].name

    def with_word(word: int, at: int, size: int = 8) -> BpfObject:
        img = ElfImage.from_object(base)
        data_i = img.add_section(SecRec(".data.ptrs", SHT_PROGBITS, SHF_ALLOC, word.to_bytes(size, "little"),
                                        addralign=8))
        img.add_section(SecRec(".rel.data.ptrs", SHT_REL, SHF_INFO_LINK, b"", link=img.symtab_index, info=data_i,
                               addralign=8, entsize=16,
                               relocs=[Relocation(at, R_BPF_64_ABS64, img.section_symbol(code_i), None)]))
        return BpfObject("x.o", img.to_bytes())

    def rewritten(obj: BpfObject) -> bytes:
        code = decode_code(obj)
        code[code_i].insert(0, [nop()])            # every instruction of the section moves by one
        img = rewrite_object(obj, code)
        return img.sections[img.index_of(".data.ptrs") or 0].data

    assert rewritten(with_word(INSN_SIZE, 0)) == (2 * INSN_SIZE).to_bytes(8, "little")
    with pytest.raises(InputError, match=rf"\.data\.ptrs\+0x0 points at {re.escape(code_name)}\+0x4, which is "
                                         "not an instruction"):
        rewritten(with_word(4, 0))
    with pytest.raises(InputError, match=r"relocation at \.data\.ptrs\+0x4 runs past the section"):
        rewritten(with_word(INSN_SIZE, 4))


def test_decode_encode_is_byte_identical(all_samples: list[Path], objs: dict[str, Path]) -> None:
    for path in [*all_samples, *objs.values()]:
        obj = load_object(path)
        code = decode_code(obj)
        encoded, _ = encode_sections(code, obj.symbols)
        for idx, enc in encoded.items():
            sec = obj.sections[idx]
            assert enc.data == obj.section_data(sec), f"{path.name}: {sec.name}"
            relocs = enc.relocs
            written = zip(relocs.offsets, relocs.infos, relocs.addends or [None] * len(relocs), strict=True)
            assert sorted(written) == sorted((r.offset, r_info(r.symbol, r.type), r.addend)
                                             for r in obj.relocations(sec)[1]), f"{path.name}: {sec.name}"


def pad(path: Path, out: Path, seed: int) -> Path:
    """``path`` with a `goto +0` inserted before about a third of the
    instructions, chosen at random (not before a function's first: code
    inserted there would end the function before it)."""
    obj = load_object(path)
    code = decode_code(obj)
    rng = random.Random(seed)
    for sec in code.values():
        starts = {s.value for s in obj.symbols if s.shndx == sec.index and s.type == STT_FUNC}
        padded: list[Insn] = []
        for insn in sec.insns:
            # only where execution arrives by falling through: the verifier
            # refuses unreachable instructions
            falls_in = bool(padded) and not (padded[-1].is_exit or padded[-1].is_unconditional
                                             and not padded[-1].is_nop)
            if insn.orig not in starts and falls_in and rng.random() < 0.3:
                padded.append(nop())
            padded.append(insn)
        sec.insns = padded
    out.write_bytes(rewrite_object(obj, code).to_bytes())
    return out


def source_lines(path: Path) -> list[str]:
    """The source lines `bpftool prog dump xlated` shows for xdp_main."""
    res = run(["bpftool", "prog", "loadall", str(path), "/sys/fs/bpf/sdt_src_lines"])
    assert res.returncode == 0, res.stderr
    try:
        dump = run(["bpftool", "prog", "dump", "xlated", "pinned", "/sys/fs/bpf/sdt_src_lines/xdp_main"])
        return [line for line in dump.stdout.splitlines() if line.startswith("; ")]
    finally:
        run(["rm", "-rf", "/sys/fs/bpf/sdt_src_lines"])


def test_padding_anywhere_keeps_every_object_loadable_with_equal_results(
        samples: list[Path], objs: dict[str, Path], tmp_path: Path) -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    from bpf_sdt.libbpf import LoadedObject

    packets = [packet(s) for s in range(6)]
    base_rets, base_state, _ = run_object(objs["instr"], None, packets)
    for seed in range(3):
        padded = pad(objs["instr"], tmp_path / f"instr.pad{seed}.o", seed)
        assert run([*CLI, "check", str(padded)]).returncode == 0
        rets, state, _ = run_object(padded, None, packets)
        assert (rets, state) == (base_rets, base_state)
    for path in samples:
        padded = pad(path, tmp_path / f"{path.stem}.pad.o", 1)
        assert run([*CLI, "check", str(padded)]).returncode == 0, path.name
        with LoadedObject.open(padded) as obj:
            obj.load()            # every program of every sample passes the verifier
    # The kernel still maps instructions to source lines (func and line info moved too).
    xlated = tmp_path / "xlated"
    res = run(["bpftool", "prog", "loadall", str(tmp_path / "instr.pad1.o"), "/sys/fs/bpf/sdt_pad_test"])
    assert res.returncode == 0, res.stderr
    try:
        dump = run(["bpftool", "prog", "dump", "xlated", "pinned", "/sys/fs/bpf/sdt_pad_test/xdp_main"])
        xlated.write_text(dump.stdout)
        lines = [line for line in dump.stdout.splitlines() if line.startswith("; ")]
        assert "; BPF_SDT_PROBE12(wide" in "\n".join(lines)
        assert lines == source_lines(objs["instr"])
    finally:
        run(["rm", "-rf", "/sys/fs/bpf/sdt_pad_test"])


# --- the recorder ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["instr", "instr14"])
def test_recorder_sees_every_argument_in_program_order(objs: dict[str, Path], tmp_path: Path,
                                                       bpffs: Path, which: str) -> None:
    out = instrumented(objs[which], tmp_path / "rec.o")
    packets = [packet(s) for s in range(8)]
    base_rets, base_state, _ = run_object(objs[which], None, packets)
    rets, state, raw = run_object(out, bpffs, packets)
    assert rets == base_rets and state == base_state
    got = decode_events(out, raw)
    want = [ev for p in packets for ev in expected_xdp(p)[1]]
    assert [g[0] for g in got] == [w[0] for w in want]
    for (probe, values), (_, expect) in zip(got, want, strict=True):
        if probe == "ptrs":
            assert all(values), "packet and ctx pointers are nonzero"
        else:
            assert values == expect, probe
    assert rets == [expected_xdp(p)[0] for p in packets]


def test_instrumented_program_keeps_its_source_lines(objs: dict[str, Path], tmp_path: Path) -> None:
    """bpftool (from BTF line info) shows the original program's source lines,
    in order; the inserted code sits under its probe's line."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    out = instrumented(objs["instr"], tmp_path / "obs.o", "--observer", str(objs["observer"]),
                       "--attach", "on_any=wide")
    original = source_lines(objs["instr"])
    lines = iter(source_lines(out))
    assert all(line in lines for line in original), "original lines appear in order"


def test_tc_and_socket_filter_sites(objs: dict[str, Path], tmp_path: Path, bpffs: Path) -> None:
    out = instrumented(objs["instr"], tmp_path / "rec.o", "--probe", "skb", "--probe", "sock")
    pkt = packet(99)
    for prog, want in (("tc_main", ("skb", (len(pkt), 0))), ("sock_main", ("sock", (len(pkt) - 14,)))):
        base = run_object(objs["instr"], None, [pkt], prog)
        rets, state, raw = run_object(out, bpffs, [pkt], prog)
        assert (rets, state) == base[:2]
        assert decode_events(out, raw) == [want]


# --- user observers -------------------------------------------------------------------


def test_observers_get_typed_arguments_and_pointers(objs: dict[str, Path], tmp_path: Path) -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    from bpf_sdt.libbpf import LoadedObject

    out = instrumented(objs["instr"], tmp_path / "obs.o", "--observer", str(objs["observer"]),
                       "--attach", "on_any=w*", "--attach", "on_any=sub")
    pkt = packet(5)
    base_ret = run_object(objs["instr"], None, [pkt])[0]
    with LoadedObject.open(out) as obj:
        obj.load()
        assert obj.find_program("xdp_main").test_run(pkt).retval == base_ret[0]
        seen = obj.find_map("seen")
        val = [struct.unpack("<q", seen.lookup(struct.pack("<I", k)) or bytes(8))[0] for k in range(7)]
    _, events = expected_xdp(pkt)
    assert val[:3] == [len(pkt), pkt[0], _s(pkt[1], 8)]        # on_pkt: narrow signed arrives signed
    assert val[3] == 1 and val[4] == 1                          # on_ptrs: ctx readable, data == ctx->data
    assert val[5] == 1 + 4                                      # on_any: wide once, sub four times
    assert val[6] == pkt[15]                                    # ... in order: the last is sub(b[3], ...)
    listing = run([*CLI, "check", str(out)])
    assert listing.returncode == 0, listing.stdout + listing.stderr


def test_instrumented_object_can_be_instrumented_again(objs: dict[str, Path], tmp_path: Path,
                                                       bpffs: Path) -> None:
    from bpf_sdt.libbpf import LoadedObject, RingBuffer

    once = instrumented(objs["instr"], tmp_path / "once.o", "--observer", str(objs["observer"]),
                        "--attach", "on_any=pkt", "--probe", "pkt")
    notes = decode_notes(load_object(once))
    assert len(notes.entries) == 9 and not notes.problems
    # again, now with the recorder on another probe: both observers fire
    twice = tmp_path / "twice.o"
    res = instrument(once, twice, "--probe", "ptrs")
    assert res.returncode == 0, res.stderr
    with LoadedObject.open(twice, pin_root_path=bpffs) as obj:
        obj.load()
        assert obj.find_program("xdp_main").test_run(packet(1)).retval == expected_xdp(packet(1))[0]
        seen = obj.find_map("seen").lookup(struct.pack("<I", 0))
        assert seen is not None and struct.unpack("<Q", seen)[0] == len(packet(1))
        events: list[bytes] = []
        with RingBuffer(obj.find_map("bpf_sdt_events"), events.append) as rb:
            rb.consume()
    assert [p for p, _ in decode_events(twice, events)] == ["ptrs"]


# --- every sample ----------------------------------------------------------------------


def test_every_sample_instruments_and_loads(samples: list[Path], tmp_path: Path, bpffs: Path) -> None:
    from bpf_sdt.libbpf import LoadedObject

    for path in samples:
        out = instrumented(path, tmp_path / path.name)
        assert run([*CLI, "check", str(out)]).returncode == 0
        with LoadedObject.open(out, pin_root_path=bpffs) as obj:
            obj.load()
        for pin in bpffs.glob("bpf_sdt_*"):
            pin.unlink()


def udp_packet(saddr: bytes, daddr: bytes, sport: int, dport: int, ttl: int, tos: int,
               payload: bytes = b"x" * 8) -> bytes:
    eth = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 28 + len(payload), 1, 0, ttl, 17, 0, saddr, daddr)
    return eth + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def test_wide_probe_sample_delivers_twelve_values(samples: list[Path], tmp_path: Path, bpffs: Path) -> None:
    path = next(p for p in samples if p.name == "wide_probe.bpf.o")
    out = instrumented(path, tmp_path / "wide.o")
    pkt = udp_packet(bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]), 4242, 53, 61, 0x10)
    base = run_object(path, None, [pkt], "xdp_flow")
    rets, _, raw = run_object(out, bpffs, [pkt], "xdp_flow")
    assert rets == base[0] == [XDP_PASS]
    (probe, values), = decode_events(out, raw)
    saddr, daddr = struct.unpack_from("<II", pkt, 26)      # the program reads them in host order
    assert probe == "flow"
    assert values == (saddr, daddr, 4242, 53, 17, 61, 0x10, len(pkt), 1, 0, XDP_PASS, 0)


# --- errors ------------------------------------------------------------------------------


def test_unknown_probe_is_exit_2_listing_probes_and_writes_nothing(objs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out.o"
    res = instrument(objs["instr"], out, "--probe", "nosuch*")
    assert res.returncode == 2 and "gsub" in res.stderr and "wide" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_observer_globs_must_match_a_probe(objs: dict[str, Path], tmp_path: Path) -> None:
    # on_ptrs's probe is left out by --probe: it is not called, and that is no error
    res = instrument(objs["instr"], tmp_path / "o.o", "--observer", str(objs["observer"]),
                     "--attach", "on_any=sock", "--probe", "sock", "--probe", "pkt")
    assert res.returncode == 0, res.stderr
    res = instrument(objs["instr"], tmp_path / "o.o", "--observer", str(objs["observer"]),
                     "--attach", "on_any=nosuch")
    assert res.returncode == 2 and "on_any" in res.stderr and "nosuch" in res.stderr


def test_arity_error_names_observer_and_probe(objs: dict[str, Path], tmp_path: Path, vmlinux_h: Path) -> None:
    src = tmp_path / "big.bpf.c"
    src.write_text('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf/bpf_tracing.h>\n'
                   'SEC("bpf_sdt/sock") int BPF_PROG(greedy, __u32 a, __u32 b) { return a + b; }\n'
                   'char LICENSE[] SEC("license") = "GPL";\n')
    obs = build(src, tmp_path / "big.o", vmlinux_h)
    res = instrument(objs["instr"], tmp_path / "o.o", "--observer", str(obs))
    assert res.returncode == 2
    assert "greedy" in res.stderr and "sock" in res.stderr and "2 arguments" in res.stderr


def test_input_without_probes_and_unusable_inputs(objs: dict[str, Path], tmp_path: Path) -> None:
    res = instrument(objs["observer"], tmp_path / "o.o")
    assert res.returncode == 2 and "no probe sites" in res.stderr
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = instrument(fifo, tmp_path / "o.o")
    assert res.returncode == 2 and "a FIFO" in res.stderr and len(res.stderr.splitlines()) == 1
    res = instrument(objs["instr"], tmp_path / "o.o", "--attach", "nonsense")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_stack_limit_is_a_finding_naming_the_site(tmp_path: Path, vmlinux_h: Path) -> None:
    src = tmp_path / "deep.bpf.c"
    # 448 bytes of buffer fit the verifier's 512; 12 arguments more do not
    src.write_text('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf_sdt.h>\n'
                   "BPF_SDT_DECLARE12(deep, long, long, long, long, long, long, long, long, long, long, "
                   "long, long);\n"
                   'SEC("xdp") int big(struct xdp_md *ctx)\n{\n\tchar buf[448];\n'
                   "\tif (bpf_xdp_load_bytes(ctx, 0, buf, sizeof(buf)))\n\t\treturn 0;\n"
                   "\tBPF_SDT_PROBE12(deep, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], "
                   "buf[8], buf[9], buf[10], buf[447]);\n\treturn buf[0];\n}\n"
                   'char LICENSE[] SEC("license") = "GPL";\n')
    obj = build(src, tmp_path / "deep.o", vmlinux_h)
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1, res.stderr
    assert "deep in big" in res.stderr and "deep.bpf.c:" in res.stderr and "512" in res.stderr
    assert not out.exists()


def test_register_not_set_on_every_path_is_a_finding(tmp_path: Path, vmlinux_h: Path) -> None:
    """r3 is set on one path to the site and read after it on that path only:
    the verifier, path by path, accepts it; a call at the site cannot save r3
    (saving reads it), so the site is refused."""
    from bpf_sdt.insn import ALU64, ALU_MOV, JMP, JMP_EXIT, LDX, SRC_K, SRC_X

    src = tmp_path / "p.bpf.c"
    src.write_text('#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\n#include <bpf_sdt.h>\n'
                   "BPF_SDT_DECLARE0(here);\n"
                   'SEC("xdp") int f(struct xdp_md *ctx)\n{\n\tif (ctx->ingress_ifindex == 12345)\n'
                   "\t\treturn 1;\n\tBPF_SDT_PROBE0(here);\n\treturn 0;\n}\n"
                   'char LICENSE[] SEC("license") = "GPL";\n')
    base = build(src, tmp_path / "p.o", vmlinux_h)
    obj = load_object(base)
    code = decode_code(obj)
    sec = next(s for s in code.values() if s.name == "xdp")
    at = next(i for i, insn in enumerate(sec.insns) if insn.is_nop)
    site, after = sec.insns[at], sec.insns[at + 1]
    load = next(i for i in sec.insns if i.cls == LDX)     # ctx->ingress_ifindex
    ifindex = load.dst
    assert ifindex not in (0, 3) and sec.insns.index(load) < at
    jeq0 = JMP | 0x10 | SRC_K                      # if rX == 0 goto
    # before the site: if ifindex == 0 skip "r3 = 7"; after it: if ifindex == 0
    # take the original path, else return r3.
    sec.insns[at:at + 1] = [Insn(jeq0, ifindex, target=site), Insn(ALU64 | ALU_MOV | SRC_K, 3, imm=7), site,
                            Insn(jeq0, ifindex, target=after), Insn(ALU64 | ALU_MOV | SRC_X, 0, 3),
                            Insn(JMP | JMP_EXIT)]
    crafted = tmp_path / "crafted.o"
    crafted.write_bytes(rewrite_object(obj, code).to_bytes())
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    from bpf_sdt.libbpf import LoadedObject

    with LoadedObject.open(crafted) as o:
        o.load()                                # the verifier accepts the original
    res = instrument(crafted, tmp_path / "o.o")
    assert res.returncode == 1, res.stderr
    assert "r3 is live after the site but not set on every path" in res.stderr and "here in f" in res.stderr


def test_instrumented_object_loads_through_a_libbpf_skeleton(objs: dict[str, Path], tmp_path: Path) -> None:
    """`bpftool gen skeleton` on OUT, and a C loader built with gcc against
    libbpf: it opens, loads and test-runs OUT as any libbpf application would."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    gcc = tool("gcc")
    out = instrumented(objs["instr"], tmp_path / "instr_obs.o", "--observer", str(objs["observer"]),
                       "--attach", "on_any=w*")
    skel = run(["bpftool", "gen", "skeleton", str(out), "name", "instr"])
    assert skel.returncode == 0, skel.stderr
    (tmp_path / "instr.skel.h").write_text(skel.stdout)
    pkt = packet(11)
    (tmp_path / "loader.c").write_text(f"""
#include <stdio.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include "instr.skel.h"
int main(void)
{{
	unsigned char pkt[] = {{ {", ".join(str(b) for b in pkt)} }};
	struct instr *s = instr__open_and_load();
	if (!s)
		return 10;
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = pkt, .data_size_in = sizeof(pkt));
	int err = bpf_prog_test_run_opts(bpf_program__fd(s->progs.xdp_main), &o);
	__u32 key = 0; __u64 len = 0;
	bpf_map_lookup_elem(bpf_map__fd(s->maps.seen), &key, &len);
	printf("%d %u %llu\\n", err, o.retval, (unsigned long long)len);
	instr__destroy(s);
	return 0;
}}
""")
    exe = tmp_path / "loader"
    res = run([gcc, "-O1", "-o", str(exe), str(tmp_path / "loader.c"), f"-I{tmp_path}", "-lbpf"])
    assert res.returncode == 0, res.stderr
    res = run([str(exe)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["0", str(expected_xdp(pkt)[0]), str(len(pkt))]    # on_pkt saw the length


# --- the site table: one order for check, list, instrument, the recorder and trace ---------

# Probes in two code sections, xdp_main's written first, so that the notes hold
# the sites in another order than the site table (code section name, offset).
# The second argument of each site is a marker no other site has: the NOP that
# fired is known from the event itself, not from any table.
SITE_ORDER_C = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

BPF_SDT_DECLARE2(mark, __u32, __u32);
static __attribute__((noinline)) __u32 sub(__u32 x);

SEC("xdp") int xdp_main(struct xdp_md *ctx)
{
	__u32 v = ctx->data_end - ctx->data;
	BPF_SDT_PROBE2(mark, v, 20);
	v = sub(v);
	BPF_SDT_PROBE2(mark, v, 30);
	return XDP_PASS;
}

static __attribute__((noinline)) __u32 sub(__u32 x)
{
	BPF_SDT_PROBE2(mark, x, 10);
	return x + 1;
}

char LICENSE[] SEC("license") = "GPL";
"""
MARKER_ARG = 1      # the argument holding the marker


def _marker(entry_args: tuple[object, ...]) -> int:
    loc = entry_args[MARKER_ARG]
    value = getattr(loc, "value", None)
    assert getattr(loc, "kind", None) == "imm" and isinstance(value, int), loc
    return value


def test_site_ids_are_one_order_in_check_list_instrument_recorder_and_trace(
        tmp_path: Path, vmlinux_h: Path, bpffs: Path) -> None:
    import json

    from bpf_sdt.instrument.commands import Request
    from bpf_sdt.instrument.commands import instrument as instrument_api
    from bpf_sdt.postlink.check import analyze
    from bpf_sdt.trace.sites import site_table as trace_sites

    from bpf_sdt.sites import site_table

    src = tmp_path / "order.bpf.c"
    src.write_text(SITE_ORDER_C)
    obj_path = build(src, tmp_path / "order.o", vmlinux_h)
    obj = load_object(obj_path)
    notes_order = [_marker(e.args) for e in decode_notes(obj).entries]
    table = site_table(obj)
    assert [_marker(e.args) for e in table.entries] == [10, 20, 30], "by section name (.text < xdp), then offset"
    assert notes_order != [10, 20, 30], f"the compiler wrote the notes in site order ({notes_order}): no test"
    assert site_table(obj) is table, "one table per object"
    assert analyze(obj).entries == table.entries, "check judges the table's order"

    listed = run([*CLI, "list", "--json", str(obj_path)])
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)["objects"][0]["probes"]
    assert [r["args"][MARKER_ARG]["value"] for r in records] == [10, 20, 30]
    assert [r["function"] for r in records] == ["sub", "xdp_main", "xdp_main"]

    out = tmp_path / "order.instr.o"
    result = instrument_api(Request(input=obj_path, output=out))
    instr = load_object(out)
    out_table = site_table(instr)
    assert [(s.site_id, s.section, s.offset) for s in result.sites] == \
        [(i, e.section.name, e.offset) for i, e in enumerate(out_table.entries)], "instrument's ids are the table's"
    assert [_marker(e.args) for e in out_table.entries] == [10, 20, 30]

    decoded = trace_sites(instr, obj)
    assert [(s.site_id, s.probe, s.function, s.insn) for s in decoded] == \
        [(i, r["name"], r["function"], r["insn"]) for i, r in enumerate(records)], "trace shows what list shows"

    # The recorder writes the site id the inserted code passes: the event's
    # marker names the NOP that fired, and the table's entry at that id is it.
    pkt = packet(1)
    _rets, _state, events = run_object(out, bpffs, [pkt])
    fired = []
    for ev in events:
        _ts, site_id, _cpu = EVENT_HEAD.unpack_from(ev)
        args = struct.unpack_from("<2Q", ev, EVENT_HEAD.size)
        fired.append(args[MARKER_ARG])
        assert _marker(out_table.entries[site_id].args) == args[MARKER_ARG], (site_id, args)
        assert decoded[site_id].function == ("sub" if args[MARKER_ARG] == 10 else "xdp_main")
    assert fired == [20, 10, 30], "program order: xdp_main, its call to sub, xdp_main again"


def test_instrument_reads_each_object_once(tmp_path: Path, vmlinux_h: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """IN is decoded and checked once, the linked object is decoded once and
    not checked (what is written is), OUT is checked once before it is written."""
    from collections import Counter

    from bpf_sdt.instrument.commands import Request
    from bpf_sdt.instrument.commands import instrument as instrument_api
    from bpf_sdt.postlink import check, link

    from bpf_sdt import notes

    decodes: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    decode, analyze = notes._decode_notes, check.analyze

    def counted_decode(obj: BpfObject, keep_names: bool = False) -> notes.NotesDecoding:
        decodes[obj.path] += 1
        return decode(obj, keep_names)

    def counted_analyze(obj: BpfObject) -> check.ObjectReport:
        checks[obj.path] += 1
        return analyze(obj)

    monkeypatch.setattr(notes, "_decode_notes", counted_decode)
    monkeypatch.setattr(check, "analyze", counted_analyze)
    monkeypatch.setattr(link, "analyze", counted_analyze)     # link imported it by name
    src = tmp_path / "order.bpf.c"
    src.write_text(SITE_ORDER_C)
    obj_path = build(src, tmp_path / "order.o", vmlinux_h)
    out = tmp_path / "order.instr.o"
    instrument_api(Request(input=obj_path, output=out))
    linked = [p for p in decodes if p.endswith("/linked.o")]
    assert decodes[str(obj_path)] == 1 and decodes[str(out)] == 1 and len(linked) == 1, decodes
    assert decodes[linked[0]] == 1, decodes
    assert checks[str(obj_path)] == 1 and checks[str(out)] == 1 and linked[0] not in checks, checks


def test_trace_takes_the_site_order_from_the_core() -> None:
    """trace's site table does not import instrument's command (issue 18)."""
    res = run([sys.executable, "-c", "import sys, bpf_sdt.trace.sites; "
               "print(sorted(m for m in sys.modules if m.startswith('bpf_sdt.instrument')))"])
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_recording_an_object_without_dwarf_loads_no_dwarf_reader(objs: dict[str, Path], tmp_path: Path) -> None:
    """Where nothing can say a site was inlined (IN has no DWARF, as
    linked objects have none), instrument --record does not
    import pyelftools: the recorder it links has DWARF that declares inlined
    subroutines but no sites, so there is no chain to read (about 30 ms of
    a run at 10,000 sites, docs/instrument.md)."""
    stripped = tmp_path / "linked.o"      # bpf-sdt link's output keeps no DWARF (the linker drops it)
    res = run([*CLI, "link", "-o", str(stripped), str(objs["instr"])])
    assert res.returncode == 0, res.stderr
    assert load_object(stripped).section(".debug_info") is None
    out = tmp_path / "out.o"
    code = ("import sys; from bpf_sdt.cli import main; "
            f"rc = main(['instrument', {str(stripped)!r}, '-o', {str(out)!r}]); "
            "print(rc, 'elftools' in sys.modules)")
    res = run([sys.executable, "-c", code])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "False"], res.stdout + res.stderr
    assert decode_notes(load_object(out)).entries

"""Objects every loader accepts (docs/loaders.md).

The calls `instrument` inserts are relocated as clang relocates static calls,
nothing in a code section looks like a function, and `list` still names a
site's observers, also after `bpf-sdt link`.  Then the loaders BPF developers
use, built from their registries (tests/loaders/build.sh): cilium/ebpf (Go),
aya and libbpf-rs over the newest libbpf (Rust) load every sample's probe
object and its instrumented objects, test-run the XDP and tc programs on
packets, and return the recorder's ring buffer and an observer's map, whose
values must be what this file computes from the packets.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from toolchain import REPO, bpf_permitted, clang, need, run, tool

from bpf_sdt.elf import R_BPF_64_32, STT_FUNC, STT_NOTYPE, STT_SECTION, BpfObject, is_reserved_index, load_object
from bpf_sdt.format import RECORDER_COUNTS_MAP, RECORDER_RINGBUF_MAP

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
LOADERS_DIR = REPO / "tests" / "loaders"
BUILD_TIMEOUT_S = 1800              # a cold cargo build of aya + libbpf-sys on 2 cores takes minutes
RUN_TIMEOUT_S = 120
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
    # after another input's xdp code: every call word moves with its section
    behind = tmp_path / "behind.o"
    res = run([*CLI, "link", "-o", str(behind), str(samples / "wide_probe.bpf.o"), str(out)], env=_env())
    assert res.returncode == 0, res.stderr
    moved = [site for site in _observers(behind) if site[0] != "flow"]
    shift = moved[0][1] - listed[0][1]
    assert shift > 0
    assert moved == [(name, insn + shift, obs) for name, insn, obs in listed]


# --- the loaders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Loader:
    name: str
    toolchain: str                  # what build.sh builds it with
    binary: Path


LOADERS = [
    Loader("cilium/ebpf", "go", LOADERS_DIR / "go" / "target" / "sdt-go-loader"),
    Loader("aya", "cargo", LOADERS_DIR / "rust" / "target" / "release" / "sdt-aya-loader"),
    Loader("libbpf-rs", "cargo", LOADERS_DIR / "rust" / "target" / "release" / "sdt-libbpf-loader"),
]
BUILD_TARGET = {"go": "go", "cargo": "rust"}
_built: dict[str, bool] = {}
_pin_dirs = itertools.count()


def built(loader: Loader) -> Loader:
    """The loader, built (once per run) by build.sh from its registry."""
    need(shutil.which(loader.toolchain) is not None, f"{loader.toolchain} not installed (tests/loaders/build.sh)")
    if loader.toolchain not in _built:
        res = run([str(LOADERS_DIR / "build.sh"), BUILD_TARGET[loader.toolchain]], timeout=BUILD_TIMEOUT_S)
        _built[loader.toolchain] = res.returncode == 0
        assert res.returncode == 0, res.stderr
    assert _built[loader.toolchain], f"the {loader.toolchain} loaders did not build"
    return loader


@pytest.fixture(params=LOADERS, ids=[ld.name for ld in LOADERS])
def loader(request: pytest.FixtureRequest) -> Loader:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    return built(request.param)


@pytest.fixture
def bpffs(tmp_path: Path) -> Iterator[Path]:
    """A private bpffs: pins of these loads meet no other test's (or a user's)."""
    d = tmp_path / "bpffs"
    d.mkdir()
    res = run(["mount", "-t", "bpf", "bpf", str(d)])
    assert res.returncode == 0, res.stderr
    try:
        yield d
    finally:
        run(["umount", str(d)])


@dataclass
class Loaded:
    """What a loader printed (tests/loaders/README.md)."""

    programs: list[str]
    maps: list[str]
    retvals: dict[str, list[int]] = field(default_factory=dict)
    ring: list[bytes] = field(default_factory=list)
    entries: dict[str, dict[bytes, bytes]] = field(default_factory=dict)


def load(loader: Loader, obj: Path, bpffs: Path, packets: Sequence[bytes] = (),
         runs: tuple[str, ...] = (), ring: str | None = None, dumps: tuple[str, ...] = ()) -> Loaded:
    """Load ``obj`` with a fresh pin directory (so no map is reused from an
    earlier load), test-run ``runs`` on every packet, then read ``ring`` and
    ``dumps``."""
    pins = bpffs / f"load{next(_pin_dirs)}"
    pins.mkdir()
    cmd = [str(loader.binary), str(obj), "--pin-dir", str(pins)]
    cmd += [a for r in runs for a in ("--run", r)] + [a for d in dumps for a in ("--dump", d)]
    cmd += ["--ring", ring] if ring else []
    res = run(cmd, input="".join(p.hex() + "\n" for p in packets), timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, f"{loader.name} on {obj.name}: {res.stderr}"
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    head = lines[0]
    out = Loaded(head["programs"], head["maps"])
    for rec in lines[1:]:
        if "run" in rec:
            out.retvals.setdefault(rec["run"], []).append(rec["retval"])
        elif "ring" in rec:
            out.ring.append(bytes.fromhex(rec["data"]))
        elif "map" in rec:
            out.entries.setdefault(rec["map"], {})[bytes.fromhex(rec["key"])] = bytes.fromhex(rec["value"])
    return out


# --- what the samples compute, from the packets -------------------------------------------

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_OK = 0
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_HLEN = 14
IP_HLEN = 20
IPPROTO_UDP = 17
LOOPBACK_IFINDEX = 1                 # BPF_PROG_TEST_RUN's device without a context
DROP_SHORT_IP, DROP_BAD_IHL, DROP_TTL = 2, 3, 4     # enum drop_reason in xdp_parser.bpf.c
OBSERVER_MAP = "drops_by_reason"
OBSERVER_MAP_ENTRIES = 8
DROP_STATS = struct.Struct("<QQ")    # struct drop_stats: packets, bytes
CLASS_IP, CLASS_OTHER = 0x10001, 0x10002            # tc_main.bpf.c's classids
CLASS_MAP = "class_bytes"
RING = RECORDER_RINGBUF_MAP
EVENT_HEAD = struct.Struct("<QII")   # ktime, site id, cpu (docs/instrument.md)
U32, U64 = struct.Struct("<I"), struct.Struct("<Q")
Event = tuple[str, tuple[int, ...]]


def eth(proto: int) -> bytes:
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack("!H", proto)


def ipv4(ttl: int, ihl: int = 5, payload: bytes = b"x" * 8) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, IP_HLEN + len(payload), 1, 0, ttl, IPPROTO_UDP, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]))
    return eth(ETH_P_IP) + header + payload


XDP_PACKETS = [
    eth(ETH_P_IPV6) + bytes(40),                    # non_ip
    eth(ETH_P_IP) + bytes(10),                      # drop: short IP header
    ipv4(64, ihl=4),                                # drop: bad IHL
    ipv4(1),                                        # ipv4, then drop: TTL
    ipv4(64, payload=b"y" * 30),                    # ipv4 only
]


def expected_xdp(p: bytes) -> tuple[int, list[Event], int | None]:
    """xdp_parser's return value, its probe firings (the ipv4 header pointer
    left out) and the drop reason, for packet ``p``."""
    (proto,) = struct.unpack_from("!H", p, 12)
    if proto != ETH_P_IP:
        return XDP_PASS, [("non_ip", (proto,))], None
    if len(p) < ETH_HLEN + IP_HLEN:
        return XDP_DROP, [("drop", (DROP_SHORT_IP, len(p)))], DROP_SHORT_IP
    ihl, ttl, ip_proto = p[ETH_HLEN] & 0xF, p[ETH_HLEN + 8], p[ETH_HLEN + 9]
    if ihl < 5:
        return XDP_DROP, [("drop", (DROP_BAD_IHL, len(p)))], DROP_BAD_IHL
    (tot_len,) = struct.unpack_from("!H", p, ETH_HLEN + 2)
    events: list[Event] = [("ipv4", (ip_proto, ttl, tot_len))]
    if ttl <= 1:
        return XDP_DROP, [*events, ("drop", (DROP_TTL, len(p)))], DROP_TTL
    return XDP_PASS, events, None


def expected_drop_stats(packets: list[bytes]) -> dict[bytes, bytes]:
    stats = {reason: [0, 0] for reason in range(OBSERVER_MAP_ENTRIES)}
    for p in packets:
        reason = expected_xdp(p)[2]
        if reason is not None:
            stats[reason][0] += 1
            stats[reason][1] += len(p)
    return {U32.pack(r): DROP_STATS.pack(*v) for r, v in stats.items()}


TC_PACKETS = [ipv4(64), eth(ETH_P_IPV6) + bytes(40), ipv4(64, payload=b"z" * 100)]


def expected_tc(packets: list[bytes]) -> tuple[list[Event], dict[bytes, bytes]]:
    """tc_classify + account: probe firings and class_bytes (skb->len is the
    whole frame under BPF_PROG_TEST_RUN for tc)."""
    totals: dict[int, int] = {}
    events: list[Event] = []
    for p in packets:
        (proto,) = struct.unpack_from("!H", p, 12)
        classid = CLASS_IP if proto == ETH_P_IP else CLASS_OTHER
        events.append(("classify", (LOOPBACK_IFINDEX, proto, classid)))
        if classid not in totals:
            totals[classid] = len(p)
            events.append(("new_class", (classid,)))
        else:
            totals[classid] += len(p)
            events.append(("accounted", (classid, len(p), totals[classid])))
    return events, {U32.pack(c): U64.pack(t) for c, t in totals.items()}


def decode_events(obj_path: Path, raw: list[bytes]) -> list[tuple[str, tuple[int, ...]]]:
    """(probe, values) per recorder event, each value converted to its type."""
    from bpf_sdt.notes import decode_notes
    from bpf_sdt.probes import probe_types
    from bpf_sdt.sites import ordered_sites

    obj = load_object(obj_path)
    sites = ordered_sites(decode_notes(obj))
    types = probe_types(obj.btf)
    out = []
    for ev in raw:
        _ts, site, _cpu = EVENT_HEAD.unpack_from(ev)
        probe = sites[site].probe
        words = struct.unpack_from(f"<{len(types[probe])}Q", ev, EVENT_HEAD.size)
        out.append((probe, tuple(t.convert(w) for t, w in zip(types[probe], words, strict=True))))
    return out


def without_pointer(events: list[tuple[str, tuple[int, ...]]]) -> list[Event]:
    """The ipv4 probe's first argument is a kernel address: left out of the comparison."""
    return [(probe, values[1:] if probe == "ipv4" else values) for probe, values in events]


# --- every loader, every sample ------------------------------------------------------------

TC_SECTION, AYA_TC_SECTION = 'SEC("tc")', 'SEC("classifier")'


TC_LINKED = "tc.linked.bpf.o"


@pytest.fixture(scope="module")
def classifier_samples(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples with tc_main's program in SEC("classifier"), as aya users
    write it: aya 0.14 knows no SEC("tc") ("InvalidProgramSection"); libbpf
    takes both names.  Only the tc objects are built again."""
    src = tmp_path_factory.mktemp("classifier-src") / "samples"
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("build*"))
    tc_main = src / "tc_main.bpf.c"
    text = tc_main.read_text()
    assert text.count(TC_SECTION) == 1
    tc_main.write_text(text.replace(TC_SECTION, AYA_TC_SECTION))
    out = tmp_path_factory.mktemp("classifier-build")
    for obj in sample_objects(samples):
        if obj.name != TC_LINKED:
            os.symlink(obj, out / obj.name)
    res = subprocess.run(["make", "-s", "-C", str(src), f"BPF_CLANG={clang(19)}", f"BPF_SDT_OUTDIR={out}",
                          str(out / TC_LINKED)], capture_output=True, text=True, env=_env(), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture
def built_samples(loader: Loader, request: pytest.FixtureRequest) -> Path:
    """The samples as the loader's users write them (see classifier_samples)."""
    return Path(request.getfixturevalue("classifier_samples" if loader.name == "aya" else "samples"))


@pytest.fixture(scope="module")
def instrumented(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """instrument, once per input and arguments for all loaders."""
    out_dir = tmp_path_factory.mktemp("instrumented")
    made: dict[tuple[Path, tuple[str, ...]], Path] = {}

    def make(src: Path, *extra: str) -> Path:
        key = (src.resolve(), extra)
        if key not in made:
            made[key] = instrument(src, out_dir / f"{len(made)}-{src.name}", *extra)
        return made[key]
    return make


def sample_objects(samples: Path) -> list[Path]:
    res = subprocess.run(["make", "-s", "-C", str(SAMPLES), "objects", f"BPF_SDT_OUTDIR={samples}"],
                         capture_output=True, text=True, env=_env(), check=False)
    assert res.returncode == 0, res.stderr
    return [Path(p) for p in res.stdout.split()]


def test_every_sample_loads_unchanged_and_instrumented(loader: Loader, built_samples: Path,
                                                       instrumented: Callable[..., Path], bpffs: Path) -> None:
    objects = sample_objects(built_samples)     # the programs; observer.bpf.o is loaded linked into one
    assert len(objects) >= 5 and all(o.exists() for o in objects)
    for obj in objects:
        probe = load(loader, obj, bpffs)
        recorded = load(loader, instrumented(obj), bpffs)
        assert probe.programs and recorded.programs == probe.programs, obj.name
        assert RING in recorded.maps and set(probe.maps) <= set(recorded.maps), obj.name


def test_xdp_sample_runs_with_recorder_and_observer(loader: Loader, samples: Path,
                                                    instrumented: Callable[..., Path], bpffs: Path) -> None:
    src = samples / "xdp_parser.bpf.o"
    out = instrumented(src, "--observer", str(samples / "observer.bpf.o"), "--record")
    plain = load(loader, src, bpffs, XDP_PACKETS, runs=("xdp_parse",))
    got = load(loader, out, bpffs, XDP_PACKETS, runs=("xdp_parse",), ring=RING, dumps=(OBSERVER_MAP,))
    want = [expected_xdp(p) for p in XDP_PACKETS]
    assert got.retvals["xdp_parse"] == plain.retvals["xdp_parse"] == [ret for ret, _, _ in want]
    assert without_pointer(decode_events(out, got.ring)) == [e for _, events, _ in want for e in events]
    assert got.entries[OBSERVER_MAP] == expected_drop_stats(XDP_PACKETS)


def test_pin_by_name_recorder_pins_where_the_loader_says(loader: Loader, samples: Path,
                                                         instrumented: Callable[..., Path], bpffs: Path) -> None:
    """`instrument --pin-by-name`: each loader pins the recorder's maps in the
    directory it is given (PinPath, default_map_pin_directory, pin_root_path),
    and the events still arrive through the pinned ring."""
    out = instrumented(samples / "xdp_parser.bpf.o", "--pin-by-name")
    packets = XDP_PACKETS[-1:]
    got = load(loader, out, bpffs, packets, runs=("xdp_parse",), ring=RING)
    (pins,) = [d for d in bpffs.iterdir() if d.is_dir()]     # the root also lists maps.debug, progs.debug
    assert {p.name for p in pins.iterdir()} == {RING, RECORDER_COUNTS_MAP}
    assert without_pointer(decode_events(out, got.ring)) == expected_xdp(packets[0])[1]


def test_tc_sample_runs_with_recorder(loader: Loader, built_samples: Path, instrumented: Callable[..., Path],
                                      bpffs: Path) -> None:
    src = built_samples / TC_LINKED
    out = instrumented(src)
    plain = load(loader, src, bpffs, TC_PACKETS, runs=("tc_classify",), dumps=(CLASS_MAP,))
    got = load(loader, out, bpffs, TC_PACKETS, runs=("tc_classify",), ring=RING, dumps=(CLASS_MAP,))
    events, totals = expected_tc(TC_PACKETS)
    assert got.retvals["tc_classify"] == plain.retvals["tc_classify"] == [TC_ACT_OK] * len(TC_PACKETS)
    assert decode_events(out, got.ring) == events
    assert got.entries[CLASS_MAP] == plain.entries[CLASS_MAP] == totals


def test_wide_probe_sample_delivers_twelve_values(loader: Loader, samples: Path,
                                                  instrumented: Callable[..., Path], bpffs: Path) -> None:
    src = samples / "wide_probe.bpf.o"
    out = instrumented(src)
    pkt = ipv4(61)
    got = load(loader, out, bpffs, [pkt], runs=("xdp_flow",), ring=RING)
    saddr, daddr = struct.unpack_from("<II", pkt, ETH_HLEN + 12)      # read in host order
    sport, dport = struct.unpack_from("!HH", pkt, ETH_HLEN + IP_HLEN)
    assert got.retvals["xdp_flow"] == [XDP_PASS]
    assert decode_events(out, got.ring) == [("flow", (saddr, daddr, sport, dport, IPPROTO_UDP, 61, 0, len(pkt),
                                                       LOOPBACK_IFINDEX, 0, XDP_PASS, 0))]

"""Longer fuzz run than the test suite's: mutated real objects (clang, gcc,
linked) and synthetic ones through everything that reads objects: the reader,
check, list (sites, text, JSON) and link's per-input analysis (tests/fuzz_target.py).

Mutations are random bytes plus field-targeted ones: section header fields,
symbol values/sizes/section indices, string offsets, relocation offsets,
types, symbol indices and addends, notes entry bytes, BTF type ids, kinds,
vlen and names.  Every input either reads or is refused with InputError;
anything else (an exception, an input taking longer than --hang seconds) is a
crash: saved to bench/out/, reported once per distinct place, exit 1.

With ``--target instrument`` the inputs are linked objects (targets with
their observers, made from the test suite's generated sources by clang and
`bpf-sdt link`, or the objects named), mutated in their instructions as well,
and fed to instrument's analyses and rewriter in process
(``fuzz_target.instrument_input``): a rewritten object or a one-line finding
or refusal; the process runs under a memory limit (--max-memory).

With ``--target capture`` the inputs are pcap and pcapng files (both byte
orders, µs and ns, every packet block kind, several sections, options,
packets up to the snapshot length) mutated in their bytes and their length
fields, truncated and spliced, read by trace's capture reader
(``bpf_sdt.trace.pcap.iter_packets``) from a file: every packet, or one
InputError; the process runs under the same memory limit.

    .venv/bin/python bench/fuzz.py [--target read|instrument|capture] [--seconds S | --inputs N] [--seed K]
                                   [objects...]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fuzz_target import (  # noqa: E402
    SyntheticEntry,
    instrument_input,
    layout_of,
    many_sites_object,
    mutate,
    mutate_code,
    one_input,
    synthetic_object,
)

from bpf_sdt.model import ArgLocation  # noqa: E402

OUT = REPO / "bench" / "out"
MIB = 1 << 20
CODE_MUTATION_SHARE = 0.5        # instrument inputs: instructions vs. the object's structures


class Hang(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang("input took longer than the hang limit")


def synthetic_seeds() -> list[bytes]:
    """Objects the compilers do not make: many probes, every argument form,
    stack slots, several prototypes."""
    reg, imm = ArgLocation("reg", reg=3), ArgLocation("imm", value=-5)
    slot = ArgLocation("stack", offset=-16, size=8)
    twelve = (reg,) * 5 + (imm,) * 5 + (slot, ArgLocation("stack", offset=-4, size=4))
    entries = [SyntheticEntry("a", 0, (reg, imm)), SyntheticEntry("b", 16, twelve),
               SyntheticEntry("a", 8, (imm, reg)), SyntheticEntry("c", 24)]
    protos = {"a": ("int", "long"), "b": ("long",) * 10 + ("unsigned long", "__u32"), "c": ()}
    return [synthetic_object(entries, protos), many_sites_object(40)]


def instrument_seeds(work: Path) -> list[Path]:
    """Linked target+observer objects from the generated sources of
    tests/test_instrument_safety.py (stack through callees and variable
    offsets, signed indices, callback chains, timers, tail calls, nested
    calls, recursion; read-only and ctx-writing observers)."""
    import test_instrument_safety as t
    from bpf_sdt.postlink.link import link
    from toolchain import clang

    work.mkdir(parents=True, exist_ok=True)
    targets = {"reach": t.CALLEE_REACH, "pkt": t.TARGET, "chain": t.callback_chain(224, 280, t.TWO_PROGRAMS_EXTRA),
               "rec": t.RECURSIVE_TARGET, "loop": t.SELF_CALLBACK, "signed": t.SIGNED_INDEX, "timer": t.TIMER,
               "tail": t.tail_caller(20), "nested": t.nested_calls(6)}
    observers = {"ro": t.observer_source(""), **{f"w_{k}": t.observer_source(v) for k, v in t.OBSERVERS.items()}}
    out = []
    for name, text in [*targets.items(), *observers.items()]:
        src = work / f"{name}.bpf.c"
        src.write_text(text)
        cmd = [clang(19), "-target", "bpf", "-O2", "-g", "-mcpu=v3", f"-I{t._multiarch_include()}",
               f"-I{REPO / 'headers'}", "-c", str(src), "-o", str(work / f"{name}.o")]
        subprocess.run(cmd, check=True, capture_output=True)
    for target in targets:
        for obs in observers:
            linked = work / f"{target}+{obs}.o"
            link(linked, [work / f"{target}.o", work / f"{obs}.o"])
            out.append(linked)
    return out


def signature(exc: BaseException) -> str:
    """Where a crash happened: the innermost frame in the project's code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/bench/" not in f.filename]
    inner = frames[-1] if frames else None
    where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
    return f"{type(exc).__name__} at {where}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=None, help="run this long (default 60 without --inputs)")
    ap.add_argument("--inputs", type=int, default=None, help="run this many inputs")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hang", type=int, default=10, help="seconds after which one input counts as a hang")
    ap.add_argument("--target", choices=("read", "instrument", "capture"), default="read",
                    help="what the inputs go through: the readers (check, list, link) or instrument")
    ap.add_argument("--max-memory", type=int, default=3072, metavar="MIB",
                    help="address-space limit of this process (instrument target; MemoryError is a crash)")
    ap.add_argument("objects", nargs="*", type=Path)
    args = ap.parse_args()
    if args.target == "capture":
        return fuzz_captures(args)
    instrumenting = args.target == "instrument"
    if instrumenting:
        paths = args.objects or instrument_seeds(OUT / "instrument-seeds")
        seeds = [p.read_bytes() for p in paths]
        limit = args.max_memory * MIB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    else:
        paths = args.objects or sorted((REPO / "samples" / "build").glob("*.o"))
        seeds = [p.read_bytes() for p in paths] + synthetic_seeds()
    feed = instrument_input if instrumenting else one_input
    layouts = [layout_of(s) for s in seeds]
    limit_inputs = args.inputs if args.inputs is not None else (None if args.seconds else None)
    limit_seconds = args.seconds if args.seconds is not None else (None if args.inputs else 60.0)
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    crashes: dict[str, tuple[int, str]] = {}
    signal.signal(signal.SIGALRM, _on_alarm)
    slowest = (0.0, -1)
    t0 = time.monotonic()
    i = 0
    while (limit_inputs is None or i < limit_inputs) and \
            (limit_seconds is None or time.monotonic() - t0 < limit_seconds):
        k = rng.randrange(len(seeds))
        if instrumenting and rng.random() < CODE_MUTATION_SHARE:
            data = mutate_code(seeds[k], rng)
        else:
            data = mutate(seeds[k], rng, layouts[k])
        start = time.monotonic()
        signal.alarm(args.hang)
        try:
            outcomes[feed(data)] += 1
        except Exception as e:   # every other outcome is a crash to fix (MemoryError and Hang too)
            sig = signature(e)
            if sig not in crashes:
                OUT.mkdir(parents=True, exist_ok=True)
                path = OUT / f"crash-{len(crashes)}.o"
                path.write_bytes(data)
                crashes[sig] = (i, f"{path.relative_to(REPO)}\n{traceback.format_exc()}")
            outcomes["crash"] += 1
        finally:
            signal.alarm(0)
        took = time.monotonic() - start
        slowest = max(slowest, (took, i))
        i += 1
    dt = time.monotonic() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"fuzz: {i} inputs from {len(seeds)} seed objects ({len(paths)} files, "
          f"{len(seeds) - len(paths)} synthetic) in {dt:.0f}s ({i / dt:.0f}/s): {len(crashes)} distinct crashes "
          f"({outcomes['crash']} inputs); {outcomes['ok']} read with findings or clean, "
          f"{outcomes['rejected']} rejected with a one-line error; slowest input {slowest[0] * 1000:.0f} ms; "
          f"max RSS {rss} MB")
    for sig, (n, text) in crashes.items():
        print(f"\nCRASH {sig} (first at input {n}): {text}", file=sys.stderr)
    return 1 if crashes else 0


# --- --target capture: trace's pcap/pcapng reader --------------------------------------------


def capture_seeds() -> list[bytes]:
    """Valid captures, written here independently of the reader."""
    from bpf_sdt.trace.pcap import MAX_PACKET, write_pcap

    frames = [bytes(range(60)), b"\xff" * 14, bytes(1514), bytes(MAX_PACKET)]
    seeds = []
    work = OUT / "capture-seeds"
    work.mkdir(parents=True, exist_ok=True)
    write_pcap(work / "le.pcap", frames[:3])
    le = (work / "le.pcap").read_bytes()
    seeds += [le, _pcap_big_endian_ns(le), _pcap_with(frames[3:]), _pcap_with([b""] * 50)]
    for order in "<>":
        seeds.append(_pcapng(order, frames[:3], sections=1))
        seeds.append(_pcapng(order, frames[:2], sections=3))
    return seeds


def _pcap_with(packets: list[bytes]) -> bytes:
    from bpf_sdt.trace.pcap import MAX_PACKET, PCAP_HEADER, PCAP_MAGIC_US, PCAP_RECORD

    out = [struct.pack("<" + PCAP_HEADER, PCAP_MAGIC_US, 2, 4, 0, 0, MAX_PACKET, 1)]
    for pkt in packets:
        out += [struct.pack("<" + PCAP_RECORD, 0, 0, len(pkt), len(pkt)), pkt]
    return b"".join(out)


def _pcap_big_endian_ns(le: bytes) -> bytes:
    from bpf_sdt.trace.pcap import PCAP_HEADER, PCAP_MAGIC_NS, PCAP_RECORD

    header = struct.unpack_from("<" + PCAP_HEADER, le)
    out, pos = [struct.pack(">" + PCAP_HEADER, PCAP_MAGIC_NS, *header[1:])], struct.calcsize("<" + PCAP_HEADER)
    while pos < len(le):
        rec = struct.unpack_from("<" + PCAP_RECORD, le, pos)
        out += [struct.pack(">" + PCAP_RECORD, *rec), le[pos + 16: pos + 16 + rec[2]]]
        pos += 16 + rec[2]
    return b"".join(out)


def _pcapng(o: str, packets: list[bytes], sections: int) -> bytes:
    """SHB, IDB (with an option), then each packet as an EPB, an obsolete PB
    and an SPB in turn, an unknown block; ``sections`` times."""
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack(o + "II", btype, len(body) + 12) + body + struct.pack(o + "I", len(body) + 12)

    out = b""
    for _ in range(sections):
        out += block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        out += block(1, struct.pack(o + "HHI", 1, 0, 65535) + struct.pack(o + "HH", 2, 4) + b"eth0"
                     + struct.pack(o + "HH", 0, 0))
        for n, pkt in enumerate(packets):
            kind = n % 3
            if kind == 0:
                out += block(6, struct.pack(o + "IIIII", 0, 0, 0, len(pkt), len(pkt)) + pkt)
            elif kind == 1:
                out += block(2, struct.pack(o + "HHIIII", 0, 0, 0, 0, len(pkt), len(pkt)) + pkt)
            else:
                out += block(3, struct.pack(o + "I", len(pkt)) + pkt)
        out += block(0x0BADCAFE, b"unknown block")
    return out


CAPTURE_LENGTHS = (0, 1, 3, 4, 11, 12, 13, 28, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 18, (1 << 18) + 1, 1 << 30)


def mutate_capture(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, length fields set to edge values, truncation, splices."""
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        choice = rng.random()
        if not buf:
            break
        if choice < 0.35:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice < 0.65:                       # a 4-aligned u32: lengths, types, magics live there
            at = rng.randrange(max(1, len(buf) // 4)) * 4
            value = rng.choice(CAPTURE_LENGTHS) if rng.random() < 0.7 else rng.getrandbits(32)
            buf[at:at + 4] = struct.pack(rng.choice("<>") + "I", value)[: len(buf) - at]
        elif choice < 0.8:
            del buf[rng.randrange(len(buf)):]
        else:                                     # a slice copied somewhere else
            a, b = sorted(rng.randrange(len(buf) + 1) for _ in range(2))
            at = rng.randrange(len(buf) + 1)
            buf[at:at] = buf[a:b]
    return bytes(buf)


def capture_input(path: Path, data: bytes) -> str:
    """'ok' or 'rejected' for trace's reader on ``data``; raises on a crash."""
    from bpf_sdt.trace.pcap import MAX_PACKET, iter_packets

    from bpf_sdt.errors import InputError

    path.write_bytes(data)
    try:
        for packet in iter_packets(path):
            if len(packet) > MAX_PACKET:
                raise AssertionError(f"a packet of {len(packet)} bytes passed the reader")
        return "ok"
    except InputError as e:
        if "\n" in str(e):
            raise AssertionError(f"a multi-line error: {e!r}") from None
        return "rejected"


def fuzz_captures(args: argparse.Namespace) -> int:
    limit = args.max_memory * MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seeds = capture_seeds()
    path = OUT / f"capture-input-{os.getpid()}.pcap"
    limit_seconds = args.seconds if args.seconds is not None else (None if args.inputs else 60.0)
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    crashes: dict[str, tuple[int, str]] = {}
    signal.signal(signal.SIGALRM, _on_alarm)
    slowest, t0, i = (0.0, -1), time.monotonic(), 0
    try:
        while (args.inputs is None or i < args.inputs) and \
                (limit_seconds is None or time.monotonic() - t0 < limit_seconds):
            data = mutate_capture(seeds[rng.randrange(len(seeds))], rng)
            start = time.monotonic()
            signal.alarm(args.hang)
            try:
                outcomes[capture_input(path, data)] += 1
            except Exception as e:   # every other outcome is a crash to fix (MemoryError and Hang too)
                sig = signature(e)
                if sig not in crashes:
                    saved = OUT / f"crash-capture-{len(crashes)}.pcap"
                    saved.write_bytes(data)
                    crashes[sig] = (i, f"{saved.relative_to(REPO)}\n{traceback.format_exc()}")
                outcomes["crash"] += 1
            finally:
                signal.alarm(0)
            slowest = max(slowest, (time.monotonic() - start, i))
            i += 1
    finally:
        path.unlink(missing_ok=True)
    dt = time.monotonic() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"fuzz capture: {i} inputs from {len(seeds)} seed captures in {dt:.0f}s ({i / dt:.0f}/s): "
          f"{len(crashes)} distinct crashes ({outcomes['crash']} inputs); {outcomes['ok']} read whole, "
          f"{outcomes['rejected']} rejected with a one-line error; slowest input {slowest[0] * 1000:.0f} ms; "
          f"max RSS {rss} MB")
    for sig, (n, text) in crashes.items():
        print(f"\nCRASH {sig} (first at input {n}): {text}", file=sys.stderr)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())

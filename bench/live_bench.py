"""How long `bpf-sdt trace --live` takes to swap an instrumented copy in for a
large running program, next to `bpftool prog load` of the same instrumented
object, in one run; and that no packet goes unprocessed meanwhile.

The program is generated: an XDP filter with RULES rule checks on the
packet's first bytes, the first FORKS of which each add a bit to a verdict,
so the verifier walks the rest once per combination (about 650,000
processed instructions for the instrumented copy with the defaults: the
xdp-filter or katran class), a probe in every rule (RULES sites with 3
arguments), a hit counter per rule, a per-path packet count and a .bss
total.  iproute2 loads it and attaches
it to a veth in a namespace of the bench (`ip link set dev X xdp obj`).

Per trial, with UDP flowing the whole time:

- live: wall time from starting `bpf-sdt trace --live xdp:X` to its line
  saying the copy was swapped in (Python start, finding, identity proof,
  instrument, copy load, pins, the swap), and the preparation time trace
  reports itself;
- reference: `bpftool prog load` of the same instrumented object (what
  `bpf-sdt instrument` writes), wall time: the verifier's work on the copy.

The first --first-trials trials each start from an empty cache, so each
instruments and builds the recorder, as a user's first trace of a program
does on a machine new to bpf-sdt; --recorder-trials trials, interleaved with
those, start with only the recorder cache warm (instrument/recorder_cache.py:
the compiled recorder and its rendered source, copied from the untimed
warm-up trace's cache), so they instrument but neither render nor compile
the recorder, as a first trace of a program does where bpf-sdt has traced
before; the others load the instrumented object trace cached
(trace/instcache.py).  Each group is reported by its median and range, as
the ratio, as bpf-sdt's part (start to swap minus the reference load) and
as the start to swap less the copy's load as trace measured it (its 'load
and identity' figure, to 10 ms), which leaves the verifier's noise out,
and by the user CPU time of the trace and its children (the worker, clang:
what a second core's load competes with; the verifier's work is
system time).
--against REV runs the same trials with the code at REV too, each trial's
two trees one after the other (in alternating order), for an A/B under the
same load; --current REV measures a commit instead of the work tree (whose
uncommitted edits, anyone's, are otherwise part of the figures).  Then the original
must be back, and its count map and .bss must hold exactly the number of
packets sent.  bpf-sdt runs as an installed package starts (the scale
bench's tree: a venv without the dev venv's editable-install finder, whose
start-up import `pip install bpf-sdt` does not have), from the work tree.
Target: live <= 1.5x the reference, the first trial (a user's first trace
of the program) and the cached ones each reported against it.

    sudo .venv/bin/python bench/live_bench.py [--first-trials K] [--recorder-trials K] [--trials K]
        [--rules N] [--forks N] [--current REV] [--against REV]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from netns import Iproute2PinDirs, VethPair  # noqa: E402 - the tests' namespace helper, after the path
from scale_bench import WORKTREE, Tree, installed_python, prepare_tree  # noqa: E402 - an installed start-up
from test_live import Traffic, as_int  # noqa: E402 - traffic and bpftool's values, as the tests use them

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
SWAPPED = b"swapped to the instrumented copy"
TIMEOUT_S = 300.0
TARGET_RATIO = 1.5
NO_BYTECODE_ENV = "PYTHONDONTWRITEBYTECODE"
DEFAULT_RULES, DEFAULT_FORKS = 100, 7
ETH_LEN = 14
HEADER_BYTES = 64               # the rules look at the first bytes after the Ethernet header
PORT = 40199
MS = 1000
RECORDERS = "recorders"         # the recorder cache's directory in BPF_SDT_CACHE (recorder_cache.SUBDIR)
FIRST, RECORDER_BUILT, CACHED = ("first trace (instruments, empty cache)",
                                 "first trace of this program, recorder already built",
                                 "traced again (cached copy)")


def program(rules: int, forks: int) -> str:
    """The generated XDP filter's source."""
    lines = ["#include <linux/bpf.h>", "#include <bpf/bpf_helpers.h>", "#include <bpf_sdt.h>", "",
             "BPF_SDT_DECLARE3(rule, __u32, __u32, __u8);\t/* rule, packet length, the byte it matched */",
             f"struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, {rules}); __type(key, __u32);",
             "\t __type(value, __u64); } rule_hits SEC(\".maps\");",
             "struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32);",
             "\t __type(value, __u64); } path_counts SEC(\".maps\");",
             "__u64 total;",
             "static __always_inline void hit(__u32 r)",
             "{ __u64 *n = bpf_map_lookup_elem(&rule_hits, &r); if (n) __sync_fetch_and_add(n, 1); }",
             "SEC(\"xdp\") int big_filter(struct xdp_md *ctx)", "{",
             "\tunsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;",
             "\t__u32 len = end - data, verdict = 0, key = 0;", "\t__u64 *n;",
             f"\tif (data + {HEADER_BYTES} > end) goto out;"]
    for i in range(rules):
        offset = ETH_LEN + i % (HEADER_BYTES - ETH_LEN)
        # The first `forks` rules each add a bit of the verdict: the verifier
        # then walks the rest once per combination, as it does on real filters.
        verdict = f"verdict += {1 << i}; " if i < forks else ""
        lines.append(f"\tif (data[{offset}] == {i * 37 % 256}) {{ {verdict}hit({i}); "
                     f"BPF_SDT_PROBE3(rule, {i}, len, data[{offset}]); }}")
    lines += ["out:", "\tn = bpf_map_lookup_elem(&path_counts, &key);",
              "\tif (n) __sync_fetch_and_add(n, 1);", "\t__sync_fetch_and_add(&total, 1);",
              f"\treturn verdict == {(1 << forks) - 1} ? XDP_DROP : XDP_PASS;",
              "}", "char LICENSE[] SEC(\"license\") = \"GPL\";"]
    return "\n".join(lines) + "\n"


def sh(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=TIMEOUT_S)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def build(tmp: Path, rules: int, forks: int) -> tuple[Path, Path]:
    src, obj, inst = tmp / "big_filter.bpf.c", tmp / "big_filter.bpf.o", tmp / "big_filter.inst.o"
    src.write_text(program(rules, forks))
    multiarch = sh(["gcc", "-print-multiarch"]).strip()
    sh(["clang-19", "-target", "bpf", "-O2", "-g", "-mcpu=v3", f"-I{REPO / 'headers'}",
        f"-I/usr/include/{multiarch}", "-c", str(src), "-o", str(obj)])
    sh([*CLI, "instrument", str(obj), "-o", str(inst)])
    return obj, inst


def reference_load(inst: Path) -> float:
    pin = Path(f"/sys/fs/bpf/bpf_sdt_live_bench_{os.getpid()}")
    start = time.monotonic()
    sh(["bpftool", "prog", "load", str(inst), str(pin), "type", "xdp"])
    elapsed = time.monotonic() - start
    pin.unlink()
    return elapsed


def map_values(prog_id: int, name: str) -> list[int]:
    shown = json.loads(sh(["bpftool", "prog", "show", "id", str(prog_id), "-j"]))
    for map_id in shown["map_ids"]:
        if json.loads(sh(["bpftool", "map", "show", "id", str(map_id), "-j"]))["name"].endswith(name):
            dumped = json.loads(sh(["bpftool", "map", "dump", "id", str(map_id), "-j"]))
            return [as_int(e["value"]) for e in dumped]
    raise SystemExit(f"program {prog_id} has no map {name}")


def live_swap(net: VethPair, obj: Path, tree: Tree, cache: Path) -> tuple[float, float, float, float]:
    """(wall seconds from start to the swap, trace's own preparation figure,
    the first less the copy's load as trace measured it, the user CPU
    seconds of trace and its children: Python's work and clang's, not the
    verifier's, which is system time)."""
    ns = ["nsenter", f"--net=/run/netns/{net.receiver.netns}"]
    user_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    start = time.monotonic()
    proc = subprocess.Popen([*ns, *tree.cli("trace", str(obj), "--live", f"xdp:{net.receiver.iface}", "--count")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=tree.env(BPF_SDT_CACHE=str(cache)))
    assert proc.stderr is not None
    err = b""
    while SWAPPED not in err:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"trace ended before the swap: {err.decode()}")
        err += line
    swapped = time.monotonic() - start
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise SystemExit(f"trace exited {proc.returncode}: {(err + rest).decode()}")
    prepared = float(err.split(b"prepared in ", 1)[1].split(b" s", 1)[0])
    # "(finding and instrument: A s, load and identity B s; ...)"
    loaded = float(err.split(b"load and identity ", 1)[1].split(b" s", 1)[0])
    return swapped, prepared, swapped - loaded, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - user_before


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-trials", type=int, default=5, help="trials from an empty cache (>= 1)")
    ap.add_argument("--recorder-trials", type=int, default=5,
                    help="trials with only the recorder cache warm (in addition to --trials)")
    ap.add_argument("--trials", type=int, default=8,
                    help="empty-cache and cached-copy trials in all (more than --first-trials)")
    ap.add_argument("--rules", type=int, default=DEFAULT_RULES)
    ap.add_argument("--forks", type=int, default=DEFAULT_FORKS)
    ap.add_argument("--against", metavar="REV", help="also run every trial with the code at REV")
    ap.add_argument("--current", metavar="REV", default=WORKTREE, help="the code measured as now (%(default)s)")
    args = ap.parse_args()
    if not 1 <= args.first_trials < args.trials or args.recorder_trials < 0:
        ap.error("need 1 <= --first-trials < --trials and --recorder-trials >= 0")

    iproute2_dirs = Iproute2PinDirs()      # `ip link set ... xdp obj` makes them; they go again
    try:
        return _run(args)
    finally:
        iproute2_dirs.remove_new()


def report(what: str, trials: list[Trial]) -> None:
    ratios = [t.live / t.reference for t in trials]
    median = statistics.median(ratios)
    print(f"{what}, median of {len(ratios)}: {median:.2f}x ({min(ratios):.2f}x to {max(ratios):.2f}x), "
          f"target <= {TARGET_RATIO}x: {'met' if median <= TARGET_RATIO else 'NOT met'}; bpf-sdt's part "
          f"{_ms([t.live - t.reference for t in trials])}, start to swap less the load "
          f"{_ms([t.unloaded for t in trials])}, user CPU {_ms([t.user_cpu for t in trials])}")


def _ms(seconds: list[float]) -> str:
    """Median (range) in milliseconds."""
    ms = [x * MS for x in seconds]
    return f"{statistics.median(ms):.0f} ms ({min(ms):.0f} to {max(ms):.0f})"


class Trial(NamedTuple):
    """One timed trace: its kind (FIRST, RECORDER_BUILT, CACHED), its tree and the figures (seconds)."""

    kind: str
    label: str
    reference: float            # bpftool prog load, just before
    live: float                 # trace --live, start to swap
    prepared: float             # trace's own 'prepared in'
    unloaded: float             # start to swap less trace's own 'load and identity' (to 10 ms): no verifier noise
    user_cpu: float             # user CPU of the whole trace, children included (to its end, after the swap)


def schedule(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(kind, index) in the order run: the empty-cache and recorder-warm
    trials interleaved, then the cached-copy ones."""
    order = []
    for i in range(max(args.first_trials, args.recorder_trials)):
        order += [(FIRST, i)] * (i < args.first_trials) + [(RECORDER_BUILT, i)] * (i < args.recorder_trials)
    return order + [(CACHED, i) for i in range(args.trials - args.first_trials)]


def trial_cache(tmp: Path, tree: Tree, kind: str, index: int, first_trials: int) -> Path:
    """The BPF_SDT_CACHE of one trial: empty for a first trace; the warm-up
    trace's recorder cache alone for a recorder-warm one; the last first
    trace's for a cached copy."""
    if kind == CACHED:
        return tmp / f"cache-{tree.label}-first-{first_trials - 1}"
    cache = tmp / f"cache-{tree.label}-{'first' if kind == FIRST else 'recorder'}-{index}"
    if kind == RECORDER_BUILT:
        shutil.copytree(warm_up_cache(tmp, tree) / RECORDERS, cache / RECORDERS)   # modes kept: 0700, 0600
    return cache


def warm_up_cache(tmp: Path, tree: Tree) -> Path:
    return tmp / f"cache-{tree.label}-warm-up"


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-live-bench-") as tmp, VethPair() as net:
        # Python's bytecode cache, as an installed package has it (build's instrument
        # writes it): without it every trace compiles the modules it imports again
        os.environ.pop(NO_BYTECODE_ENV, None)
        obj, inst = build(Path(tmp), args.rules, args.forks)
        python = installed_python(Path(tmp))
        trees = [prepare_tree("now", args.current, Path(tmp), python)]
        if args.against:
            trees.append(prepare_tree("previous", args.against, Path(tmp), python))
        sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "link", "set", "dev", net.receiver.iface,
            "xdp", "obj", str(obj), "sec", "xdp"])
        link = json.loads(sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "-j", "link", "show",
                              net.receiver.iface]))[0]
        original = int(link["xdp"]["prog"]["id"])
        trials: list[Trial] = []
        with Traffic(net) as traffic:
            # Untimed: the tree's interpreter writes the bytecode of everything a trace
            # imports (the standard library's and the dependencies' too) under its own
            # pycache prefix on its first run, as an installed package has it already;
            # its recorder cache is the one the recorder-warm trials start from.
            for tree in trees:
                live_swap(net, obj, tree, warm_up_cache(Path(tmp), tree))
            for n, (kind, index) in enumerate(schedule(args)):
                for tree in trees[n % 2:] + trees[:n % 2]:     # alternating: neither tree always goes first
                    cache = trial_cache(Path(tmp), tree, kind, index, args.first_trials)
                    reference = reference_load(inst)
                    trials.append(Trial(kind, tree.label, reference, *live_swap(net, obj, tree, cache)))
            sent = traffic.stop()
        counted, total = map_values(original, "path_counts")[0], map_values(original, ".bss")[0]
        now = json.loads(sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "-j", "link", "show",
                             net.receiver.iface]))[0]["xdp"]["prog"]["id"]
    print(f"program: {args.rules} rules ({args.forks} of them forking the verifier's paths), "
          f"{args.rules} probe sites")
    for n, t in enumerate(trials, 1):
        print(f"trial {n} ({t.label}, {t.kind}): bpftool prog load {t.reference:5.2f} s | trace --live start to "
              f"swap {t.live:5.2f} s {t.live / t.reference:.2f}x | trace's own 'prepared in' {t.prepared:5.2f} s "
              f"{t.prepared / t.reference:.2f}x | start to swap less the load {t.unloaded:5.2f} s | "
              f"user CPU {t.user_cpu:5.3f} s")
    for tree in trees:
        for kind in (FIRST, RECORDER_BUILT, CACHED):
            chosen = [t for t in trials if t.kind == kind and t.label == tree.label]
            if chosen:
                report(f"{tree.label} ({tree.rev}): {kind}", chosen)
    print(f"packets sent {sent}, counted by the original's map {counted}, .bss {total}; "
          f"original back: {now == original}")
    ok = counted == total == sent and now == original
    print(f"zero packets missed: {'yes' if ok else 'NO'}; load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

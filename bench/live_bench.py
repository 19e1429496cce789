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
does; the others load the instrumented object trace cached
(trace/instcache.py).  Each group is reported by its median.  Then the original
must be back, and its count map and .bss must hold exactly the number of
packets sent.  bpf-sdt runs as an installed package starts (the scale
bench's tree: a venv without the dev venv's editable-install finder, whose
start-up import `pip install bpf-sdt` does not have), from the work tree.
Target: live <= 1.5x the reference, the first trial (a user's first trace
of the program) and the cached ones each reported against it.

    sudo .venv/bin/python bench/live_bench.py [--first-trials K] [--trials K] [--rules N] [--forks N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def live_swap(net: VethPair, obj: Path, tree: Tree, cache: Path) -> tuple[float, float]:
    """(wall seconds from start to the swap, trace's own preparation figure)."""
    ns = ["nsenter", f"--net=/run/netns/{net.receiver.netns}"]
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
    return swapped, prepared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-trials", type=int, default=5, help="trials from an empty cache (>= 1)")
    ap.add_argument("--trials", type=int, default=8, help="trials in all (more than --first-trials)")
    ap.add_argument("--rules", type=int, default=DEFAULT_RULES)
    ap.add_argument("--forks", type=int, default=DEFAULT_FORKS)
    args = ap.parse_args()
    if not 1 <= args.first_trials < args.trials:
        ap.error("need 1 <= --first-trials < --trials")

    iproute2_dirs = Iproute2PinDirs()      # `ip link set ... xdp obj` makes them; they go again
    try:
        return _run(args)
    finally:
        iproute2_dirs.remove_new()


def report(what: str, ratios: list[float]) -> None:
    median = statistics.median(ratios)
    print(f"{what}, median of {len(ratios)}: {median:.2f}x ({min(ratios):.2f}x to {max(ratios):.2f}x), "
          f"target <= {TARGET_RATIO}x: {'met' if median <= TARGET_RATIO else 'NOT met'}")


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-live-bench-") as tmp, VethPair() as net:
        # Python's bytecode cache, as an installed package has it (build's instrument
        # writes it): without it every trace compiles the modules it imports again
        os.environ.pop(NO_BYTECODE_ENV, None)
        obj, inst = build(Path(tmp), args.rules, args.forks)
        tree = prepare_tree("now", WORKTREE, Path(tmp), installed_python(Path(tmp)))
        sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "link", "set", "dev", net.receiver.iface,
            "xdp", "obj", str(obj), "sec", "xdp"])
        link = json.loads(sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "-j", "link", "show",
                              net.receiver.iface]))[0]
        original = int(link["xdp"]["prog"]["id"])
        lives, prepares, references = [], [], []
        with Traffic(net) as traffic:
            # Untimed: the tree's interpreter writes the bytecode of everything a trace
            # imports (the standard library's and the dependencies' too) under its own
            # pycache prefix on its first run, as an installed package has it already.
            live_swap(net, obj, tree, Path(tmp) / "cache-warm-up")
            for trial in range(args.trials):
                # An empty cache for each first trial; the last of them fills the one the others use.
                cache = Path(tmp) / f"cache-{min(trial, args.first_trials - 1)}"
                references.append(reference_load(inst))
                swapped, prepared = live_swap(net, obj, tree, cache)
                lives.append(swapped)
                prepares.append(prepared)
            sent = traffic.stop()
        counted, total = map_values(original, "path_counts")[0], map_values(original, ".bss")[0]
        now = json.loads(sh(["nsenter", f"--net=/run/netns/{net.receiver.netns}", "ip", "-j", "link", "show",
                             net.receiver.iface]))[0]["xdp"]["prog"]["id"]
    print(f"program: {args.rules} rules ({args.forks} of them forking the verifier's paths), "
          f"{args.rules} probe sites")
    for trial, (ref, live, prep) in enumerate(zip(references, lives, prepares, strict=True), 1):
        how = "instruments" if trial <= args.first_trials else "cached copy"
        print(f"trial {trial} ({how}): bpftool prog load {ref:5.2f} s | trace --live start to swap {live:5.2f} s "
              f"{live / ref:.2f}x | trace's own 'prepared in' {prep:5.2f} s {prep / ref:.2f}x")
    ratios = [live / ref for ref, live in zip(references, lives, strict=True)]
    report("first trace (instruments, empty cache)", ratios[:args.first_trials])
    report("traced again (cached copy)", ratios[args.first_trials:])
    print(f"packets sent {sent}, counted by the original's map {counted}, .bss {total}; "
          f"original back: {now == original}")
    ok = counted == total == sent and now == original
    print(f"zero packets missed: {'yes' if ok else 'NO'}; load average at the end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

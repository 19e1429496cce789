"""What the recorder build cache (instrument/recorder_cache.py, issue 22) saves.

Side by side, interleaved, medians of --trials, on the xdp_parser sample:

- ``instrument --record``: with an empty cache (clang compiles the recorder)
  and with the recorder cached (no clang);
- ``trace OBJ --run xdp_parse --packet F``, from the command's start to its
  first event line on stdout, with trace's cache of instrumented objects
  empty each time (so trace instruments), once with the recorder cache empty
  too and once with it warm: the case of an object rebuilt since trace last
  ran (its bytes changed, its probes' arities did not).

Each run gets a cache directory of its own (BPF_SDT_CACHE), empty or holding
only the warm recorder entry.  Outputs are checked: instrument's with and
without the cache are equal byte for byte (the build directory's random name
aside), and every trace run prints its event.

    sudo .venv/bin/python bench/recorder_cache_bench.py [--trials K]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from trace_bench import build, env, udp_frame  # noqa: E402

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
TEMP_NAME = re.compile(rb"(bpf-sdt-instrument-)[a-z0-9_]{8}/")
MS = 1000


def instrument(obj: Path, out: Path, cache: Path) -> float:
    start = time.perf_counter()
    res = subprocess.run([*CLI, "instrument", "--record", str(obj), "-o", str(out)], capture_output=True,
                         env=env(BPF_SDT_CACHE=str(cache)), check=False)
    took = time.perf_counter() - start
    if res.returncode:
        sys.exit(f"instrument failed: {res.stderr.decode()}")
    return took


def first_event(obj: Path, packet: Path, cache: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen([*CLI, "trace", str(obj), "--run", "xdp_parse", "--packet", str(packet)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(BPF_SDT_CACHE=str(cache)))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = time.perf_counter() - start
    rest, err = proc.communicate(timeout=120)
    if proc.returncode or b"ipv4" not in line:
        sys.exit(f"trace failed ({proc.returncode}): {line!r} {rest[:200]!r} {err.decode()}")
    return took


def fresh(base: Path, warm: Path | None) -> Path:
    """An empty cache directory, or one holding only the warm recorder entries."""
    where = Path(tempfile.mkdtemp(dir=base))
    if warm is not None:
        shutil.copytree(warm / "recorders", where / "recorders")
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-recbench-") as tmp:
        base = Path(tmp)
        obj = build(base / "samples")
        packet = base / "udp.bin"
        packet.write_bytes(udp_frame())
        warm = base / "warm"
        instrument(obj, base / "seed.o", warm)
        uncached_out, cached_out = base / "uncached.o", base / "cached.o"
        instrument(obj, uncached_out, fresh(base, None))
        instrument(obj, cached_out, fresh(base, warm))
        if TEMP_NAME.sub(rb"\1X/", uncached_out.read_bytes()) != TEMP_NAME.sub(rb"\1X/", cached_out.read_bytes()):
            sys.exit("instrument's output differs with the cache")
        variants: dict[str, Callable[[], float]] = {
            "instrument --record, recorder not cached": lambda: instrument(obj, uncached_out, fresh(base, None)),
            "instrument --record, recorder cached": lambda: instrument(obj, cached_out, fresh(base, warm)),
            "trace --run to first event, nothing cached": lambda: first_event(obj, packet, fresh(base, None)),
            "trace --run to first event, recorder cached": lambda: first_event(obj, packet, fresh(base, warm)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.trials):
            for name, run in variants.items():
                times[name].append(run())
    print(f"# recorder build cache, medians of {args.trials} interleaved trials, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':<48} {'median ms':>10} {'min ms':>8}")
    for name, samples in times.items():
        print(f"{name:<48} {statistics.median(samples) * MS:>10.0f} {min(samples) * MS:>8.0f}")
    names = list(times)
    for cold_name, hot_name in ((names[0], names[1]), (names[2], names[3])):
        cold, hot = statistics.median(times[cold_name]), statistics.median(times[hot_name])
        print(f"{hot_name} / {cold_name.rpartition(', ')[2]}: {hot / cold:.2f} ({(cold - hot) * MS:.0f} ms saved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

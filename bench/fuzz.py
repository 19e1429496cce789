"""Longer fuzz run than the test suite's: mutated real objects (clang, gcc,
linked) through the reader and checker.  Prints how many inputs ran, how many
were accepted / rejected with a one-line error, and any crash (exit 1).

    .venv/bin/python bench/fuzz.py [N] [objects...]
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fuzz_target import mutate, one_input  # noqa: E402


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    paths = [Path(p) for p in sys.argv[2:]] or sorted(Path("samples/build").glob("*.bpf.o"))
    seeds = [p.read_bytes() for p in paths]
    if not seeds:
        print("fuzz: no seed objects (run `make demo` first or name some)", file=sys.stderr)
        return 2
    rng = random.Random(1)
    outcomes: Counter[str] = Counter()
    t0 = time.monotonic()
    for i in range(n):
        data = mutate(rng.choice(seeds), rng)
        try:
            outcomes[one_input(data)] += 1
        except Exception:
            print(f"CRASH on input {i}:", file=sys.stderr)
            traceback.print_exc()
            Path("bench/out").mkdir(parents=True, exist_ok=True)
            Path(f"bench/out/crash-{i}.o").write_bytes(data)
            return 1
    dt = time.monotonic() - t0
    print(f"fuzz: {n} inputs from {len(seeds)} seed objects in {dt:.1f}s, 0 crashes "
          f"({outcomes['ok']} read with findings or clean, {outcomes['rejected']} rejected with a one-line error)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

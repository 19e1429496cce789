"""Fuzz target shared by the hypothesis test and bench/fuzz.py: feed any bytes
to the object reader and the checker.  The only acceptable outcomes are a
report or an InputError; anything else is a crash."""

from __future__ import annotations

import random

from bpf_sdt.postlink.check import analyze

from bpf_sdt.elf import BpfObject
from bpf_sdt.errors import InputError


def one_input(data: bytes) -> str:
    """Returns 'ok' or 'rejected'; raises on a crash."""
    try:
        obj = BpfObject("fuzz.o", data)
        report = analyze(obj)
        for s in report.sites:
            s.to_json()
        for f in report.findings:
            f.render()
        return "ok"
    except InputError:
        return "rejected"


def mutate(seed_data: bytes, rng: random.Random) -> bytes:
    """Structure-aware enough to get past the ELF magic most of the time."""
    data = bytearray(seed_data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        pos = rng.randrange(len(data)) if data else 0
        if choice < 0.5 and data:                      # flip a byte
            data[pos] = rng.randrange(256)
        elif choice < 0.7 and data:                    # smash a 32-bit field
            data[pos:pos + 4] = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32)]).to_bytes(4, "little")
        elif choice < 0.85:                            # truncate
            del data[rng.randrange(len(data) + 1):]
        else:                                          # insert junk
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)

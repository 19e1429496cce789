"""The include flags a BPF compile needs besides bpf_sdt.h's, found once here
so that `bpf-sdt cflags --system`, the make include and `bpf-sdt lint`
without a compile database agree.

`clang -target bpf` searches /usr/local/include and /usr/include but not the
host's multiarch directory, where Debian and Ubuntu keep `asm/types.h`: any
source including <linux/bpf.h> fails with "'asm/types.h' file not found".
libbpf-bootstrap adds the host compiler's system directories with
`-idirafter`; so do we, for the one directory that is missing.  `-idirafter`
puts it after every other directory, so it only supplies what nothing else
has (vmlinux.h projects are unaffected).
"""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

SYSTEM_INCLUDE = Path("/usr/include")
# A header only the multiarch directory holds: its presence identifies it.
MULTIARCH_MARKER = Path("asm") / "types.h"
IDIRAFTER = "-idirafter"


@cache
def multiarch_include_dir() -> Path | None:
    """/usr/include/<triplet> holding asm/types.h, or None (not a multiarch
    system, or no kernel headers installed).

    The triplet is the one this Python was built for (CPython's
    sys.implementation._multiarch, as sysconfig's MULTIARCH has it, but with
    no import: every lint run asks); a Python built without one falls back
    to the directory whose triplet starts with this machine's name."""
    triplet = getattr(sys.implementation, "_multiarch", None)
    if isinstance(triplet, str) and triplet and (SYSTEM_INCLUDE / triplet / MULTIARCH_MARKER).is_file():
        return SYSTEM_INCLUDE / triplet
    machine = os.uname().machine
    found = sorted(p.parent.parent for p in SYSTEM_INCLUDE.glob(f"{machine}-*/{MULTIARCH_MARKER}"))
    return found[0] if found else None


def system_include_flags() -> tuple[str, ...]:
    """Flags adding the system include directories `-target bpf` misses, each
    one word (`-idirafter/usr/include/...`, which clang accepts joined): a
    build tool that splits `bpf-sdt cflags --system` on spaces keeps them whole."""
    found = multiarch_include_dir()
    return (f"{IDIRAFTER}{found}",) if found else ()

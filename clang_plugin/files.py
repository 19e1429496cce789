"""Reading the files `extract`/`lint` are given or find: sources, headers,
compile_commands.json, cache entries.

Only regular files are read.  A FIFO blocks `open` until a writer appears,
`/dev/zero` never ends, a directory is not text: each of those as an input is
one clear error instead of a hang or a MemoryError: bpf_sdt.fsutil.read_regular,
the reader objects use too.
"""

from __future__ import annotations

import os
import stat
from functools import cache

# No BPF source or header comes near this; vmlinux.h is about 3 MB.
MAX_SOURCE_BYTES = 64 << 20
# Chromium-sized compile databases are a few hundred MB.
MAX_COMPDB_BYTES = 1 << 30

def is_hazard(st: os.stat_result) -> bool:
    """Something a reader would block on or never finish: not a regular
    file, not a directory (its read fails at once) and not /dev/null (which
    ends at once; `#include "/dev/null"` is an old idiom for nothing)."""
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return False
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == _null_device())


@cache
def _null_device() -> int | None:
    try:
        st = os.stat(os.devnull)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISCHR(st.st_mode) else None



"""The recorder's contract: what the generated recorder (instrument/templates/
recorder.bpf.c.j2) writes and what trace reads back (normative text:
docs/format.md, "The recorder").

Defined here once: the names of its maps and functions, and the byte layout of
every struct the two sides share (the ring's event, the per-CPU counters, the
aggregation keys and values, the argument block a site passes to a recorder
function).  The template's C definitions of these structs are rendered from
:class:`CStruct` (``c_definition``), and the readers' :class:`struct.Struct`
codecs are built from the same description (``CStruct.codec``), so the C and
the Python cannot drift apart; tests/test_recorder.py compiles the real
recorder and checks its BTF against these descriptions.

Map names are part of the on-disk contract: loaders pin the maps under them
(bpftool's pinmaps DIR, libbpf's pin root with --pin-by-name), and
``trace --pinned`` finds the maps by name among the kernel's.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

# --- names -----------------------------------------------------------------------------

RECORDER_RINGBUF_MAP = "bpf_sdt_events"
RECORDER_COUNTS_MAP = "bpf_sdt_counts"
RECORDER_DEFAULT_RINGBUF_SIZE = 1 << 22
# bpf_sdt_counts is a per-CPU array of one value whose BTF struct is named
# RECORDER_IDENTITY_PREFIX + the hex digest of the instrumented object's site
# table (trace.sites.recorder_identity): the kernel keeps a map's value type, so
# a reader proves from the loaded map alone which object's sites its events use.
RECORDER_IDENTITY_PREFIX = "bpf_sdt_id_"
RECORDER_IDENTITY_HEX = 32                     # 128 bits of SHA-256
# The counters, in the value's order (summed over CPUs by the reader), and what each counts.
RECORDER_COUNTER_MEANINGS = {
    "submitted": "events the recorder put on the ring buffer",
    "lost": "events the ring buffer had no room for",
    "filtered": "firings a --filter refused in the kernel",
    "overflow": "aggregation updates that found their map full",
}
RECORDER_COUNTERS = tuple(RECORDER_COUNTER_MEANINGS)

RECORDER_PREFIX = "bpf_sdt_record_"     # + arity, or + arity_probe for a probe with its own plan
RECORDER_EVENT = "bpf_sdt_event"
RECORDER_ARGS_STRUCT = "bpf_sdt_args"   # + _arity: what a recorder function's pointer argument points to
AGGREGATION_MAP_PREFIX = "bpf_sdt_agg"  # + index (map names are at most 15 characters)
AGGREGATION_KEY_STRUCT = "bpf_sdt_key"  # + _index: one key struct per aggregation map
AGGREGATION_VALUE_STRUCT = "bpf_sdt_agg_value"
HITS_MAP = 0                            # the aggregation map counting hits per site

# --- layouts ---------------------------------------------------------------------------

# The fixed-width C types the recorder uses, as little-endian struct codes.
C_TYPE_CODES = {"__u32": "I", "__u64": "Q", "__s64": "q"}
ARG_SLOT = struct.calcsize("<Q")        # bytes per argument: every argument travels as one __u64
# The kernel hands a per-CPU map's value to user space once per possible CPU,
# each copy rounded up to 8 bytes (round_up(value_size, 8) in kernel/bpf/syscall.c).
PERCPU_VALUE_ALIGN = 8
FLEXIBLE = -1                           # an array member's count: a C flexible array (`args[]`)


class CField(NamedTuple):
    name: str
    ctype: str                          # a key of C_TYPE_CODES
    length: int | None = None           # None: a scalar; FLEXIBLE or N: an array of N

    @property
    def code(self) -> str:
        """Its struct code; a flexible array adds nothing to the fixed part."""
        one = C_TYPE_CODES[self.ctype]
        if self.length is None:
            return one
        return "" if self.length == FLEXIBLE else f"{self.length}{one}"

    @property
    def declaration(self) -> str:
        if self.length is None:
            return f"{self.ctype} {self.name};"
        return f"{self.ctype} {self.name}[{'' if self.length == FLEXIBLE else self.length}];"


class CStruct(NamedTuple):
    """One struct both sides of the recorder agree on."""

    name: str
    fields: tuple[CField, ...]

    @property
    def format(self) -> str:
        """The struct module's format of its fixed part (no padding: every
        member here is naturally aligned, which ``members`` checks)."""
        return "<" + "".join(f.code for f in self.fields)

    def codec(self) -> struct.Struct:
        return struct.Struct(self.format)

    def c_definition(self) -> str:
        """Its C definition, as the template writes it (tab-indented, no trailing newline)."""
        body = "".join(f"\t{f.declaration}\n" for f in self.fields)
        return f"struct {self.name} {{\n{body}}};"

    def members(self) -> Iterator[tuple[str, int, int]]:
        """(name, byte offset, byte size) of each member, as a C compiler lays
        it out; a flexible array has size 0."""
        offset = 0
        for f in self.fields:
            one = struct.calcsize("<" + C_TYPE_CODES[f.ctype])
            if offset % one:
                raise ValueError(f"struct {self.name}: {f.name} would need padding; the codecs assume none")
            size = 0 if f.length == FLEXIBLE else one * (f.length or 1)
            yield f.name, offset, size
            offset += size


def event_struct() -> CStruct:
    """An event in the ring: the time (bpf_ktime_get_ns, CLOCK_MONOTONIC), the
    site id, the CPU, then one slot per argument, already converted to the
    probe's declared C type."""
    return CStruct(RECORDER_EVENT, (CField("ts", "__u64"), CField("site", "__u32"), CField("cpu", "__u32"),
                                    CField("args", "__u64", FLEXIBLE)))


def counters_struct(identity: str) -> CStruct:
    """bpf_sdt_counts' value, named after the object's identity (hex digest)."""
    return CStruct(RECORDER_IDENTITY_PREFIX + identity, tuple(CField(c, "__u64") for c in RECORDER_COUNTERS))


def aggregation_value_struct() -> CStruct:
    """Every aggregation map's per-CPU value."""
    return CStruct(AGGREGATION_VALUE_STRUCT, (CField("count", "__u64"), CField("sum", "__s64"),
                                              CField("min", "__s64"), CField("max", "__s64")))


def aggregation_key_struct(index: int, nkeys: int) -> CStruct:
    """Aggregation map ``index``'s key: the site, the bucket (0 unless a
    histogram), the key expressions' values (one slot even when there are none:
    C has no empty arrays)."""
    return CStruct(f"{AGGREGATION_KEY_STRUCT}_{index}", (CField("site", "__u32"), CField("bucket", "__u32"),
                                                          CField("keys", "__u64", max(nkeys, 1))))


def args_struct(nargs: int) -> CStruct:
    """What a site passes a recorder function of ``nargs`` arguments: its site
    id, then the converted arguments (instrument's site sequence fills it)."""
    fields = (CField("site", "__u64"),) + ((CField("args", "__u64", nargs),) if nargs else ())
    return CStruct(f"{RECORDER_ARGS_STRUCT}_{nargs}", fields)


def member_offset(s: CStruct, name: str) -> int:
    return next(off for member, off, _ in s.members() if member == name)


# The readers' codecs, built once from the descriptions above.
EVENT = event_struct()
EVENT_HEADER = EVENT.codec()                    # ts, site id, cpu
EVENT_HEADER_FIELDS = len(EVENT_HEADER.unpack(bytes(EVENT_HEADER.size)))
EVENT_SITE = struct.Struct(f"<{member_offset(EVENT, 'site')}x{C_TYPE_CODES['__u32']}")   # the site id alone
AGGREGATION_VALUE = aggregation_value_struct().codec()
COUNTERS = counters_struct("").codec()


def aggregation_key(nkeys: int) -> struct.Struct:
    """The codec of an aggregation key with ``nkeys`` key expressions."""
    return aggregation_key_struct(0, nkeys).codec()


def percpu_stride(value_size: int) -> int:
    """Bytes between two CPUs' copies of a per-CPU map value."""
    return -(-value_size // PERCPU_VALUE_ALIGN) * PERCPU_VALUE_ALIGN

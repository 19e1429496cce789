"""Decoding recorder events: bytes -> typed values, per site.

An event (:func:`bpf_sdt.recorder_abi.event_struct`, rendered into the
recorder's C) is, little endian::

    u64 ts (bpf_ktime_get_ns, CLOCK_MONOTONIC)   u32 site id   u32 cpu
    u64 arg[n]      already converted to the probe's declared C type

The recorder converts, but trace converts again with the shared
:class:`~bpf_sdt.argtype.ArgType` of each argument (what it converted to is
the BTF prototype, and a stale or foreign object must not print wrong
numbers).  Per site, the event is read by one precompiled
:class:`struct.Struct` whose argument codes are derived from each ArgType's
``bits`` and ``signed`` (reading the low ``bits/8`` bytes of a little-endian
slot, signed or not, is exactly ``ArgType.convert``); widths without a struct
code are read as u64 and go through ``convert`` (:attr:`SiteCodec.converts`).
This keeps decoding under a microsecond per event in CPython
(bench/trace_bench.py).  Formatting the values is :mod:`.report`'s job.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from bpf_sdt.argtype import ArgType
from bpf_sdt.recorder_abi import ARG_SLOT, EVENT_HEADER, EVENT_HEADER_FIELDS

from .sites import Site

EVENT_FIELDS = EVENT_HEADER_FIELDS          # ts, site id, cpu: an unpacked event's first values
_INT_CODES = {8: "b", 16: "h", 32: "i", 64: "q"}
_RAW_SLOT = "Q"                             # a slot read whole, for convert() to narrow

Unpack = Callable[[Any, int], tuple[int, ...]]      # (buffer, offset) -> (ts, site, cpu, *slot values)
Convert = Callable[[int], int]


def slot_code(t: ArgType) -> str | None:
    """The struct code that reads one argument slot the way ``t.convert``
    does, or None when no struct code has ``t``'s width."""
    code = _INT_CODES.get(t.bits)
    if code is None:
        return None
    if not t.signed:
        code = code.upper()
    pad = ARG_SLOT - t.bits // 8
    return code + (f"{pad}x" if pad else "")


class SiteCodec(NamedTuple):
    """How one site's events are read."""

    size: int                               # the event's bytes: a record of another size is foreign
    unpack: Unpack                          # header and argument slots, converted where a code could
    converts: tuple[Convert, ...] | None    # per argument, when some width has no struct code; else None


def site_codec(site: Site) -> SiteCodec:
    codes = [slot_code(t) for t in site.types]
    unpack = struct.Struct(EVENT_HEADER.format + "".join(c or _RAW_SLOT for c in codes)).unpack_from
    converts = None if all(codes) else tuple(t.convert for t in site.types)
    return SiteCodec(EVENT_HEADER.size + ARG_SLOT * len(site.types), unpack, converts)


def converted(converts: tuple[Convert, ...], event: tuple[int, ...]) -> tuple[int, ...]:
    """An unpacked event with every argument through its ArgType.convert."""
    args = tuple(f(v) for f, v in zip(converts, event[EVENT_FIELDS:], strict=True))
    return (*event[:EVENT_FIELDS], *args)

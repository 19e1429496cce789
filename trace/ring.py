"""Reading the recorder's BPF ring buffer.

libbpf's ``ring_buffer__poll`` hands each record to a callback; through
ctypes that callback alone costs about 0.8 µs per record, most of the time
budget (bench/trace_bench.py).  On x86-64 this module therefore consumes the
ring the way libbpf does, but from Python: it maps the map's consumer page
(read-write), producer page and data pages (read-only; the kernel maps the
data twice in a row, so a record that wraps is contiguous), walks the
records between the consumer and producer positions, and stores the new
consumer position.  Record header: u32 length (bit 31 busy, bit 30
discarded), u32 page offset; records are 8-aligned.

The kernel publishes a record by a release-store of its length; the reader
must load the length before the payload.  x86-64 never reorders loads with
other loads, so plain loads suffice there.  Other architectures may, and
Python cannot issue a barrier, so elsewhere :class:`LibbpfRing` (libbpf's
reader, with its barriers) is used.  Both have the same interface.
"""

from __future__ import annotations

import mmap
import platform
import struct
from typing import Protocol

from bpf_sdt.trace.output import Sink

from bpf_sdt.libbpf import RingBuffer

RINGBUF_HEADER = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LENGTH_MASK = DISCARD_BIT - 1
ALIGN = 8
ORDERED_LOADS = ("x86_64", "amd64")        # architectures whose loads are never reordered with loads
_POS = struct.Struct("<Q")
_HEADER = struct.Struct("<I")


class Ring(Protocol):
    fd: int                     # readable (poll) when records are waiting
    size: int                   # the data area's bytes

    def drain(self, sink: Sink) -> int:
        """Hands every committed record to ``sink(buffer, offset, size)``;
        returns the bytes consumed (headers and padding included)."""
        ...

    def close(self) -> None: ...


class MmapRing:
    """A ring buffer map consumed through its memory mapping (x86-64)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._cons = memoryview(self._consumer)
        self._prod = memoryview(self._producer)
        self._data = page                   # where the data pages start in the producer mapping

    def drain(self, sink: Sink) -> int:
        cons_view, prod_view = self._cons, self._prod
        start: int = _POS.unpack_from(cons_view)[0]
        cons = start
        mask, base, header = self.size - 1, self._data, _HEADER.unpack_from
        while True:
            prod: int = _POS.unpack_from(prod_view)[0]
            if cons >= prod:
                break
            while cons < prod:
                off = base + (cons & mask)
                (length,) = header(prod_view, off)
                if length & BUSY_BIT:       # reserved, not yet submitted: the rest waits
                    _POS.pack_into(cons_view, 0, cons)
                    return cons - start
                size = length & LENGTH_MASK
                cons += (size + RINGBUF_HEADER + ALIGN - 1) & ~(ALIGN - 1)
                if not length & DISCARD_BIT:
                    sink(prod_view, off + RINGBUF_HEADER, size)
            _POS.pack_into(cons_view, 0, cons)
        return cons - start

    def close(self) -> None:
        self._cons.release()
        self._prod.release()
        self._consumer.close()
        self._producer.close()


class LibbpfRing:
    """libbpf's ring buffer reader (ring_buffer__consume), for architectures
    where :class:`MmapRing` could see a record before its payload."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._sink: Sink | None = None
        self._bytes = 0
        self._rb = RingBuffer(fd, self._on_sample)

    def _on_sample(self, data: bytes) -> None:
        assert self._sink is not None
        self._bytes += (len(data) + RINGBUF_HEADER + ALIGN - 1) & ~(ALIGN - 1)
        self._sink(data, 0, len(data))

    def drain(self, sink: Sink) -> int:
        self._sink, self._bytes = sink, 0
        self._rb.consume()
        return self._bytes

    def close(self) -> None:
        self._rb.close()


def open_ring(fd: int, size: int, reader: str | None = None) -> Ring:
    """The fastest correct reader for this machine (``reader``: "mmap" or
    "libbpf" to choose)."""
    if reader is None:
        reader = "mmap" if platform.machine().lower() in ORDERED_LOADS else "libbpf"
    if reader == "mmap":
        return MmapRing(fd, size)
    return LibbpfRing(fd, size)

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

The consumer position is one aligned 8-byte store: the kernel reads it as a
single u64 (``smp_load_acquire``) when it reserves, and a value stored byte
by byte can be seen half-written, which looks like a full ring and refuses
reservations (``struct.pack_into("<Q")`` packs byte-wise: 56 to 226 events
of 300,000 lost at 50,000 events/s into a 256 KiB ring, docs/trace.md).  A native ``"Q"`` memoryview over the page
stores through one ``memcpy`` of 8 bytes, one ``mov`` on x86-64 (seen with a
gdb hardware watchpoint on the word: one change per position stored, where
``pack_into`` showed a torn value in between).  libbpf stores it with
``smp_store_release``; on x86-64 every store already has release order (no
store is reordered before an earlier load or store), so the plain store
publishes the position only after the records were read.  The producer
position is read the same way, whole (a byte-wise read could combine two
positions and walk past the last record).

Each drain reads at most ``budget`` records, so a producer that keeps up
can never hold the reader in one call (output, signals and the lost
counter are looked at between drains).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Callable
from typing import Any, Protocol

from bpf_sdt.libbpf import RingBuffer

# What a ring hands each record to: (buffer, offset, size) of one event in the
# ring's own memory, which the consumer must read before it returns (the space
# is given back to the producer after the drain).
Sink = Callable[[Any, int, int], None]

RINGBUF_HEADER = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LENGTH_MASK = DISCARD_BIT - 1
ALIGN = 8
ORDERED_LOADS = ("x86_64", "amd64")        # architectures whose loads are never reordered with loads
DRAIN_BUDGET = 4096                         # records per drain: bounds the time and memory of one call
MIN_RECORD = RINGBUF_HEADER + ALIGN         # the smallest record: a header and 8 bytes
_POS_BYTES = 8
_HEADER = struct.Struct("<I")


class Ring(Protocol):
    fd: int                     # readable (poll) when records are waiting
    size: int                   # the data area's bytes

    def drain(self, sink: Sink, budget: int = DRAIN_BUDGET) -> int:
        """Hands the committed records, at most ``budget`` of them, to
        ``sink(buffer, offset, size)``; returns the bytes consumed (headers
        and padding included)."""
        ...

    def skip(self) -> int:
        """Consumes the committed records without reading them; how many events."""
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
        self._cons = memoryview(self._consumer).cast("Q")  # native, aligned: one 8-byte store
        self._prod = memoryview(self._producer)
        self._prod_pos = self._prod[:_POS_BYTES].cast("Q")  # the kernel's 8-byte store, read whole
        self._data = page                   # where the data pages start in the producer mapping

    def drain(self, sink: Sink, budget: int = DRAIN_BUDGET) -> int:
        cons_pos, prod_pos, prod_view = self._cons, self._prod_pos, self._prod
        start: int = cons_pos[0]
        cons, left = start, budget
        mask, base, header = self.size - 1, self._data, _HEADER.unpack_from
        while left > 0:
            prod: int = prod_pos[0]
            if cons >= prod:
                break
            while cons < prod and left > 0:
                off = base + (cons & mask)
                (length,) = header(prod_view, off)
                if length & BUSY_BIT:       # reserved, not yet submitted: the rest waits
                    cons_pos[0] = cons
                    return cons - start
                size = length & LENGTH_MASK
                cons += (size + RINGBUF_HEADER + ALIGN - 1) & ~(ALIGN - 1)
                left -= 1
                if not length & DISCARD_BIT:
                    sink(prod_view, off + RINGBUF_HEADER, size)
            cons_pos[0] = cons
        return cons - start

    def skip(self) -> int:
        """Consumes, without reading them, the records committed so far (one
        pass up to the producer position seen now: a producer that keeps
        writing cannot hold it); returns how many events they were."""
        cons_pos, prod_view = self._cons, self._prod
        cons, prod, count = cons_pos[0], self._prod_pos[0], 0
        mask, base, header = self.size - 1, self._data, _HEADER.unpack_from
        while cons < prod:
            (length,) = header(prod_view, base + (cons & mask))
            if length & BUSY_BIT:
                break
            cons += ((length & LENGTH_MASK) + RINGBUF_HEADER + ALIGN - 1) & ~(ALIGN - 1)
            count += not length & DISCARD_BIT
        cons_pos[0] = cons
        return count

    def close(self) -> None:
        self._cons.release()
        self._prod_pos.release()
        self._prod.release()
        self._consumer.close()
        self._producer.close()


class _BudgetSpent(Exception):
    """Raised from libbpf's callback to end ring_buffer__consume after the
    budget: libbpf has already moved the consumer past that record."""


class LibbpfRing:
    """libbpf's ring buffer reader (ring_buffer__consume), for architectures
    where :class:`MmapRing` could see a record before its payload."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size
        self._sink: Sink | None = None
        self._bytes = self._left = 0
        self._rb = RingBuffer(fd, self._on_sample)

    def _on_sample(self, data: bytes) -> None:
        assert self._sink is not None
        self._bytes += (len(data) + RINGBUF_HEADER + ALIGN - 1) & ~(ALIGN - 1)
        self._sink(data, 0, len(data))
        self._left -= 1
        if self._left <= 0:
            raise _BudgetSpent

    def drain(self, sink: Sink, budget: int = DRAIN_BUDGET) -> int:
        self._sink, self._bytes, self._left = sink, 0, budget
        with contextlib.suppress(_BudgetSpent):
            self._rb.consume()
        return self._bytes

    def skip(self) -> int:
        """As MmapRing.skip, through libbpf's reader (which follows the
        producer, so it is bounded by the ring's capacity in records)."""
        skipped = 0

        def count(_buf: object, _off: int, _size: int) -> None:
            nonlocal skipped
            skipped += 1

        self.drain(count, budget=self.size // MIN_RECORD)
        return skipped

    def close(self) -> None:
        self._rb.close()


def open_ring(fd: int, size: int, reader: str | None = None) -> Ring:
    """The fastest correct reader for this machine (``reader``: "mmap" or
    "libbpf" to choose)."""
    if reader is None:
        reader = "mmap" if os.uname().machine.lower() in ORDERED_LOADS else "libbpf"     # platform.machine()
    if reader == "mmap":
        return MmapRing(fd, size)
    return LibbpfRing(fd, size)

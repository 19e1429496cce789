"""Packets for `bpf-sdt trace --run`: classic pcap and pcapng, read by hand.

Both formats are small and stable (classic pcap: libpcap's savefile format;
pcapng: draft-ietf-opsawg-pcapng), so no dependency is worth it.  What is
read: every packet's captured bytes, in file order.  Timestamps are not
needed.  Only Ethernet captures (link type 1) are accepted: XDP, tc and socket
filters all receive Ethernet frames, and a program run on a cooked or raw-IP
capture would parse garbage.

Captures are streamed: :func:`iter_packets` reads one record at a time
through a buffer of ``READ_CHUNK`` bytes and holds one packet (at most
``MAX_PACKET`` bytes), so memory does not grow with the file (a 1 GiB capture,
or millions of empty packets).  Blocks that carry no packet are skipped, not
read.

Files are untrusted: every length is checked against the data before use, and
anything wrong is an :class:`InputError` with one line saying where.
:func:`write_pcap` writes a classic pcap, for tests and the demo.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import open_regular

LINKTYPE_ETHERNET = 1
MAX_PACKET = 1 << 18            # 256 KiB: libpcap's largest snapshot length
READ_CHUNK = 1 << 20            # the read buffer: the only part of the file held at once

# Classic pcap: magic, version, thiszone, sigfigs, snaplen, linktype; records
# of ts_sec, ts_frac, incl_len, orig_len.  The magic's byte order is the file's.
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_HEADER = "IHHiIII"
PCAP_RECORD = "IIII"
PCAP_VERSION = (2, 4)
LINKTYPE_MASK = 0x0FFFFFFF      # the top bits may carry FCS information

# pcapng: blocks of (type, total length, body..., total length), 4-aligned.
PCAPNG_SHB = 0x0A0D0D0A         # section header block; also the file's magic
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001         # interface description: link type, snaplen
PCAPNG_PB = 0x00000002          # obsolete packet block
PCAPNG_SPB = 0x00000003         # simple packet block (interface 0)
PCAPNG_EPB = 0x00000006         # enhanced packet block
PCAPNG_BLOCK_MIN = 12
PCAPNG_SHB_MIN = 28
PCAPNG_FRAME = 8                # block type and total length, before the body
PCAPNG_TRAILER = 4              # the total length again, after it
EPB_FIXED = "IIIII"             # interface, timestamp high and low, captured, original length
PB_FIXED = "HHIIII"             # interface, drops, timestamp high and low, captured, original length
ALIGN = 4


class _Stream:
    """Bounds-checked sequential reads of a capture file, in one byte order;
    ``pos`` is the offset of the next byte, for error messages."""

    def __init__(self, path: str) -> None:
        self.path, self.order, self.pos = path, "<", 0
        fd, st = open_regular(path, "capture")
        self.size = st.st_size
        self._file = io.BufferedReader(io.FileIO(fd, "rb"), buffer_size=READ_CHUNK)  # noqa: SIM115 - closed by close()

    def close(self) -> None:
        self._file.close()

    @property
    def left(self) -> int:
        return self.size - self.pos

    def read(self, size: int, what: str) -> bytes:
        try:
            data = self._file.read(size)
        except OSError as e:
            raise InputError(f"{self.path}: {e.strerror or e}") from None
        if len(data) < size:
            raise self.error(self.pos, f"truncated {what} ({len(data)} of {size} bytes)")
        self.pos += size
        return data

    def read_some(self, size: int) -> bytes:
        """Up to ``size`` bytes, fewer at the end of the file; ``pos`` is not moved."""
        try:
            return self._file.read(size)
        except OSError as e:
            raise InputError(f"{self.path}: {e.strerror or e}") from None

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(self.order + fmt, self.read(struct.calcsize("<" + fmt), what))

    def skip(self, size: int, what: str) -> None:
        if size < 0:
            raise self.error(self.pos, f"{what} shorter than its fields")
        if size > self.left:
            raise self.error(self.pos, f"truncated {what} ({self.left} of {size} bytes)")
        self._file.seek(size, os.SEEK_CUR)
        self.pos += size

    def at_end(self) -> bool:
        return not self._file.peek(1)

    def error(self, offset: int, message: str) -> InputError:
        return InputError(f"{self.path}: broken capture at byte {offset}: {message}")


def read_packets(path: str | Path) -> list[bytes]:
    """Every packet of a classic pcap or pcapng file, in order (a small
    capture: tests, tools); trace itself streams with :func:`iter_packets`."""
    packets = list(iter_packets(path))
    if not packets:
        raise InputError(f"{path}: the capture holds no packets")
    return packets


def iter_packets(path: str | Path) -> Iterator[bytes]:
    """The packets of a classic pcap or pcapng file, in order, one at a time.
    The file header is checked when the first packet is asked for."""
    s = _Stream(str(path))
    try:
        if s.size < ALIGN:
            raise InputError(f"{path}: not a pcap or pcapng file ({s.size} bytes)")
        magic = s.read(ALIGN, "magic")
        le, be = struct.unpack("<I", magic)[0], struct.unpack(">I", magic)[0]
        if PCAP_MAGIC_US in (le, be) or PCAP_MAGIC_NS in (le, be):
            s.order = "<" if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
            yield from _classic(s)
        elif le == PCAPNG_SHB:
            yield from _pcapng(s)
        else:
            raise InputError(f"{path}: not a pcap or pcapng file (magic {le:#010x})")
    finally:
        s.close()


def _classic(s: _Stream) -> Iterator[bytes]:
    major, minor, _zone, _sigfigs, snaplen, linktype = s.unpack(PCAP_HEADER[1:], "file header")
    if (major, minor) != PCAP_VERSION:
        raise s.error(0, f"pcap version {major}.{minor}, expected 2.4")
    _ethernet_only(s, 0, linktype & LINKTYPE_MASK)
    limit = min(snaplen or MAX_PACKET, MAX_PACKET)
    record = struct.Struct(s.order + PCAP_RECORD)
    while head := s.read_some(record.size):         # the hot loop: one record per pass, nothing else
        pos = s.pos
        if len(head) < record.size:
            raise s.error(pos, f"truncated packet header ({len(head)} of {record.size} bytes)")
        incl = record.unpack(head)[2]
        if incl > limit:
            raise s.error(pos, f"packet of {incl} bytes exceeds the snapshot length {limit}")
        s.pos += record.size
        if incl > s.left:
            raise s.error(pos, f"truncated packet ({s.left} of {incl} bytes)")
        yield s.read(incl, "packet") if incl else b""


def _ethernet_only(s: _Stream, offset: int, linktype: int) -> None:
    if linktype != LINKTYPE_ETHERNET:
        raise s.error(offset, f"link type {linktype}, only Ethernet ({LINKTYPE_ETHERNET}) captures can be run")


def _pcapng(s: _Stream) -> Iterator[bytes]:
    """Blocks one at a time; ``s.pos`` is 4 after the first block's type."""
    btype: int | None = PCAPNG_SHB      # the magic already read
    interfaces = 0                      # described in the current section (all Ethernet)
    while True:
        pos = s.pos - ALIGN
        assert btype is not None
        if btype == PCAPNG_SHB:         # a palindrome: the same in either byte order
            total = _section_header(s, pos)
            interfaces = 0
            body_read = PCAPNG_FRAME + ALIGN       # type, length, byte-order magic
        else:
            (total,) = s.unpack("I", "block header")
            body_read = PCAPNG_FRAME
        if total < PCAPNG_BLOCK_MIN or total % ALIGN or total - (s.pos - pos) > s.left:
            raise s.error(pos, f"block of type {btype:#x} claims {total} bytes ({s.left + s.pos - pos} left)")
        body = total - body_read - PCAPNG_TRAILER
        if btype == PCAPNG_IDB:
            body = _interface(s, pos, body)
            interfaces += 1
        elif btype in (PCAPNG_EPB, PCAPNG_PB, PCAPNG_SPB):
            packet, body = _packet_block(s, btype, pos, body, interfaces)
            yield packet
        s.skip(body, "block")
        (trailer,) = s.unpack("I", "block trailer")
        if trailer != total:
            raise s.error(pos, f"block length {total} and trailing length {trailer} differ")
        if s.at_end():
            return
        (btype,) = s.unpack("I", "block type")


def _section_header(s: _Stream, pos: int) -> int:
    """Reads a section header's length and byte-order magic, setting the
    byte order of the section; returns the block's total length."""
    if s.left < PCAPNG_SHB_MIN - ALIGN:
        raise s.error(pos, "truncated section header")
    raw = s.read(PCAPNG_FRAME, "section header")
    for order in "<>":
        if struct.unpack(order + "I", raw[ALIGN:])[0] == PCAPNG_BYTE_ORDER_MAGIC:
            s.order = order
            total: int = struct.unpack(order + "I", raw[:ALIGN])[0]
            if total < PCAPNG_SHB_MIN:
                raise s.error(pos, f"section header of {total} bytes")
            return total
    raise s.error(pos, "bad byte-order magic in the section header")


def _interface(s: _Stream, pos: int, body: int) -> int:
    """An interface description: Ethernet only.  Returns the body bytes left."""
    if body < ALIGN:
        raise s.error(pos, "truncated interface description")
    (linktype, _reserved) = s.unpack("HH", "interface description")
    _ethernet_only(s, pos, linktype)
    return body - ALIGN


def _packet_block(s: _Stream, btype: int, pos: int, body: int, interfaces: int) -> tuple[bytes, int]:
    """A packet block's packet, and the body bytes after it (padding, options)."""
    layout = {PCAPNG_SPB: "I", PCAPNG_EPB: EPB_FIXED, PCAPNG_PB: PB_FIXED}[btype]
    fixed = struct.calcsize("<" + layout)
    if body < fixed:
        raise s.error(pos, "truncated packet block")
    fields = s.unpack(layout, "packet block")
    if btype == PCAPNG_SPB:             # interface 0; the packet fills the block (plus padding)
        iface, incl = 0, min(fields[0], body - fixed)
    else:
        iface, incl = fields[0], fields[-2]
    if iface >= interfaces:
        raise s.error(pos, f"packet on interface {iface}, but {interfaces} interface(s) are described")
    if incl > MAX_PACKET or incl > body - fixed:
        raise s.error(pos, f"packet of {incl} bytes does not fit its block")
    return s.read(incl, "packet"), body - fixed - incl


def write_pcap(path: str | Path, packets: Iterable[bytes]) -> None:
    """A classic little-endian microsecond pcap of Ethernet frames (timestamps 0)."""
    out = [struct.pack("<" + PCAP_HEADER, PCAP_MAGIC_US, *PCAP_VERSION, 0, 0, MAX_PACKET, LINKTYPE_ETHERNET)]
    for pkt in packets:
        out.append(struct.pack("<" + PCAP_RECORD, 0, 0, len(pkt), len(pkt)))
        out.append(bytes(pkt))
    Path(path).write_bytes(b"".join(out))

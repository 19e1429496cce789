"""Packets for `bpf-sdt trace --run`: classic pcap and pcapng, read by hand.

Both formats are small and stable (classic pcap: libpcap's savefile format;
pcapng: draft-ietf-opsawg-pcapng), so no dependency is worth it.  What is
read: every packet's captured bytes, in file order.  Timestamps are not
needed.  Only Ethernet captures (link type 1) are accepted: XDP, tc and socket
filters all receive Ethernet frames, and a program run on a cooked or raw-IP
capture would parse garbage.

Files are untrusted: every length is checked against the data before use, and
anything wrong is an :class:`InputError` with one line saying where.
:func:`write_pcap` writes a classic pcap, for tests and the demo.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular

LINKTYPE_ETHERNET = 1
MAX_PACKET = 1 << 18            # 256 KiB: libpcap's largest snapshot length
MAX_FILE = 1 << 30              # a capture bigger than this is not a unit test

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
ALIGN = 4


class _Reader:
    """Bounds-checked reads from the file's bytes, in one byte order."""

    def __init__(self, path: str, data: bytes, order: str) -> None:
        self.path, self.data, self.order = path, data, order

    def unpack(self, fmt: str, offset: int, what: str) -> tuple[int, ...]:
        size = struct.calcsize("<" + fmt)
        if offset + size > len(self.data):
            raise self.error(offset, f"truncated {what} ({len(self.data) - offset} of {size} bytes)")
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def error(self, offset: int, message: str) -> InputError:
        return InputError(f"{self.path}: broken capture at byte {offset}: {message}")


def read_packets(path: str | Path) -> list[bytes]:
    """Every packet of a classic pcap or pcapng file, in order."""
    name = str(path)
    data = read_regular(str(path), MAX_FILE, "capture")
    if len(data) < ALIGN:
        raise InputError(f"{name}: not a pcap or pcapng file ({len(data)} bytes)")
    le, be = struct.unpack_from("<I", data)[0], struct.unpack_from(">I", data)[0]
    if PCAP_MAGIC_US in (le, be) or PCAP_MAGIC_NS in (le, be):
        packets = list(_classic(_Reader(name, data, "<" if le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">")))
    elif le == PCAPNG_SHB:
        packets = list(_pcapng(name, data))
    else:
        raise InputError(f"{name}: not a pcap or pcapng file (magic {le:#010x})")
    if not packets:
        raise InputError(f"{name}: the capture holds no packets")
    return packets


def _classic(r: _Reader) -> Iterator[bytes]:
    _magic, major, minor, _zone, _sigfigs, snaplen, linktype = r.unpack(PCAP_HEADER, 0, "file header")
    if (major, minor) != PCAP_VERSION:
        raise r.error(0, f"pcap version {major}.{minor}, expected 2.4")
    _ethernet_only(r, 0, linktype & LINKTYPE_MASK)
    limit = min(snaplen or MAX_PACKET, MAX_PACKET)
    pos = struct.calcsize("<" + PCAP_HEADER)
    record = struct.calcsize("<" + PCAP_RECORD)
    while pos < len(r.data):
        _sec, _frac, incl, _orig = r.unpack(PCAP_RECORD, pos, "packet header")
        if incl > limit:
            raise r.error(pos, f"packet of {incl} bytes exceeds the snapshot length {limit}")
        start = pos + record
        if start + incl > len(r.data):
            raise r.error(pos, f"truncated packet ({len(r.data) - start} of {incl} bytes)")
        yield r.data[start:start + incl]
        pos = start + incl


def _ethernet_only(r: _Reader, offset: int, linktype: int) -> None:
    if linktype != LINKTYPE_ETHERNET:
        raise r.error(offset, f"link type {linktype}, only Ethernet ({LINKTYPE_ETHERNET}) captures can be run")


def _pcapng(path: str, data: bytes) -> Iterator[bytes]:
    r = _Reader(path, data, "<")
    pos = 0
    linktypes: list[int] = []           # per interface of the current section
    while pos < len(data):
        (btype,) = r.unpack("I", pos, "block type")
        if btype == PCAPNG_SHB:         # a palindrome: the same in either byte order
            r = _section_reader(path, data, pos)
            linktypes = []
        btype, total = r.unpack("II", pos, "block header")
        if total < PCAPNG_BLOCK_MIN or total % ALIGN or pos + total > len(data):
            raise r.error(pos, f"block of type {btype:#x} claims {total} bytes ({len(data) - pos} left)")
        (trailer,) = r.unpack("I", pos + total - 4, "block trailer")
        if trailer != total:
            raise r.error(pos, f"block length {total} and trailing length {trailer} differ")
        body, end = pos + 8, pos + total - 4
        if btype == PCAPNG_IDB:
            (linktype,) = r.unpack("H", body, "interface description")
            _ethernet_only(r, pos, linktype)
            linktypes.append(linktype)
        elif btype in (PCAPNG_EPB, PCAPNG_PB, PCAPNG_SPB):
            yield _packet_block(r, btype, pos, body, end, len(linktypes))
        pos += total


def _section_reader(path: str, data: bytes, pos: int) -> _Reader:
    if pos + PCAPNG_SHB_MIN > len(data):
        raise InputError(f"{path}: broken capture at byte {pos}: truncated section header")
    for order in "<>":
        if struct.unpack_from(order + "I", data, pos + 8)[0] == PCAPNG_BYTE_ORDER_MAGIC:
            return _Reader(path, data, order)
    raise InputError(f"{path}: broken capture at byte {pos}: bad byte-order magic in the section header")


def _packet_block(r: _Reader, btype: int, pos: int, body: int, end: int, interfaces: int) -> bytes:
    if btype == PCAPNG_SPB:
        iface, incl, start = 0, None, body + 4
    else:
        # EPB: interface u32, ts u32 x2, captured, original; PB: interface u16, drops u16, ts x2, ...
        fields = r.unpack("IIIII" if btype == PCAPNG_EPB else "HHIIII", body, "packet block")
        iface, incl = fields[0], fields[-2]
        start = body + struct.calcsize("<" + ("IIIII" if btype == PCAPNG_EPB else "HHIIII"))
    if iface >= interfaces:
        raise r.error(pos, f"packet on interface {iface}, but {interfaces} interface(s) are described")
    if incl is None:                    # SPB: the packet fills the block (plus padding)
        (orig,) = r.unpack("I", body, "simple packet block")
        incl = min(orig, end - start)
    if incl > MAX_PACKET or start + incl > end:
        raise r.error(pos, f"packet of {incl} bytes does not fit its block")
    return r.data[start:start + incl]


def write_pcap(path: str | Path, packets: Iterable[bytes]) -> None:
    """A classic little-endian microsecond pcap of Ethernet frames (timestamps 0)."""
    out = [struct.pack("<" + PCAP_HEADER, PCAP_MAGIC_US, *PCAP_VERSION, 0, 0, MAX_PACKET, LINKTYPE_ETHERNET)]
    for pkt in packets:
        out.append(struct.pack("<" + PCAP_RECORD, 0, 0, len(pkt), len(pkt)))
        out.append(bytes(pkt))
    Path(path).write_bytes(b"".join(out))

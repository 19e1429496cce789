"""Read and write ``.BTF.ext``: the func_info, line_info and CO-RE relocation
records that tie BPF instructions to BTF.  Written for the object rewriter,
which moves instructions and must move these records with them.

Layout (little-endian; the kernel's ``btf_ext_header`` and libbpf's reader)::

    header   u16 magic 0xeB9F, u8 version 1, u8 flags, u32 hdr_len,
             u32 func_info_off, func_info_len, line_info_off, line_info_len,
             [u32 core_relo_off, core_relo_len]        when hdr_len >= 32
    block    (offsets are from the end of the header)
             u32 rec_size, then per code section:
             u32 sec_name_off (into the BTF strings), u32 num_info,
             num_info records of rec_size bytes

Records: func_info ``{insn_off, type_id}``, line_info ``{insn_off,
file_name_off, line_off, line_col}`` (line = line_col >> 10, column = the low
10 bits), core_relo ``{insn_off, type_id, access_str_off, kind}``.  In a
relocatable object (``.o``, also after ``bpftool gen object``) ``insn_off`` is
a byte offset in the code section; the kernel gets instruction indexes.

Round trip: ``BtfExt.parse(x, s).encode() == x`` byte for byte.  A
``rec_size`` larger than today's record keeps each record's extra bytes (a
newer producer's fields), the header keeps bytes past the fields known here,
and bytes between or after the blocks are kept in place.  Every count and
offset is checked against the data before use; bad input raises
:class:`InputError` with one line.  Memory: one small object per record,
each record being at least 8 bytes of input (held once: no row beside it
at parse, no copy of it when remapped, no bytes of it at encode).
"""

from __future__ import annotations

import bisect
import os
import struct
from array import array
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from functools import cached_property
from operator import attrgetter, eq, itemgetter, le
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar, overload

from bpf_sdt.btf import BTF_MAGIC, BYTE_SWAPPED_MAGIC, PREAMBLE, PREAMBLE_FORMAT, U32_MAX, WORD, Btf
from bpf_sdt.errors import InputError

if TYPE_CHECKING:
    from bpf_sdt.elf import BpfObject
    from bpf_sdt.inlined import Chain
    from bpf_sdt.notes import FunctionIndex, NoteEntry

BTF_EXT_SECTION = ".BTF.ext"

BTF_EXT_MAGIC = BTF_MAGIC      # struct btf_ext_header starts as struct btf_header does
BTF_EXT_VERSION = 1
BASE_HEADER_LEN = 24            # through line_info_len
CORE_HEADER_LEN = 32            # through core_relo_len
REC_SIZE_LEN = 4                # the u32 that starts each block
SEC_HEADER_LEN = 8              # sec_name_off, num_info
LINE_SHIFT = 10                 # line_col: line << 10 | column
COL_MASK = (1 << LINE_SHIFT) - 1
MAX_LINE = (1 << (32 - LINE_SHIFT)) - 1

FUNC_INFO = "func_info"
LINE_INFO = "line_info"
CORE_RELO = "core_relo"
BLOCKS = (FUNC_INFO, LINE_INFO, CORE_RELO)       # header order


class CoreReloKind(IntEnum):
    """``enum bpf_core_relo_kind`` (kernel ``include/uapi/linux/bpf.h``)."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12


class FuncInfo(NamedTuple):
    insn_off: int
    type_id: int                # a FUNC
    extra: bytes = b""          # bytes past the 8 known here (larger rec_size)

    def moved_to(self, insn_off: int) -> FuncInfo:
        return FuncInfo(insn_off, self.type_id, self.extra)


class LineInfo(NamedTuple):
    insn_off: int
    file_name_off: int          # BTF string: the source file
    line_off: int               # BTF string: the source line's text
    line_col: int
    extra: bytes = b""

    def moved_to(self, insn_off: int) -> LineInfo:
        return LineInfo(insn_off, self.file_name_off, self.line_off, self.line_col, self.extra)

    @property
    def line(self) -> int:
        return self.line_col >> LINE_SHIFT

    @property
    def col(self) -> int:
        return self.line_col & COL_MASK

    @staticmethod
    def make(insn_off: int, file_name_off: int, line_off: int, line: int, col: int = 0) -> LineInfo:
        if not 0 <= line <= MAX_LINE or not 0 <= col <= COL_MASK:
            raise ValueError(f"line {line} column {col} do not fit line_col")
        return LineInfo(insn_off, file_name_off, line_off, (line << LINE_SHIFT) | col)


class CoreRelo(NamedTuple):
    insn_off: int
    type_id: int
    access_str_off: int         # BTF string: "0:1:2", the access spec
    kind: int                   # CoreReloKind, kept as read
    extra: bytes = b""

    def moved_to(self, insn_off: int) -> CoreRelo:
        return CoreRelo(insn_off, self.type_id, self.access_str_off, self.kind, self.extra)


Record = FuncInfo | LineInfo | CoreRelo
R = TypeVar("R", FuncInfo, LineInfo, CoreRelo)

# Per block: the record class, its struct format (what this reader knows)
_FORMATS: dict[str, tuple[type[FuncInfo] | type[LineInfo] | type[CoreRelo], struct.Struct]] = {
    FUNC_INFO: (FuncInfo, struct.Struct("<II")),
    LINE_INFO: (LineInfo, struct.Struct("<IIII")),
    CORE_RELO: (CoreRelo, struct.Struct("<IIII")),
}
_MAKE: dict[str, Callable[[tuple[int, ...], bytes], Record]] = {
    FUNC_INFO: lambda v, x: FuncInfo(v[0], v[1], x),
    LINE_INFO: lambda v, x: LineInfo(v[0], v[1], v[2], v[3], x),
    CORE_RELO: lambda v, x: CoreRelo(v[0], v[1], v[2], v[3], x),
}
# The known fields of a block's record, in file order (what encode packs).
_FIELDS_OF: dict[str, Callable[[Record], tuple[int, ...]]] = {
    FUNC_INFO: attrgetter("insn_off", "type_id"),
    LINE_INFO: attrgetter("insn_off", "file_name_off", "line_off", "line_col"),
    CORE_RELO: attrgetter("insn_off", "type_id", "access_str_off", "kind"),
}
# Fields that are offsets into the BTF strings, by block (checked at parse).
_STRING_FIELDS = {FUNC_INFO: (), LINE_INFO: (1, 2), CORE_RELO: (2,)}


LineRow = tuple[int, int, int, int]     # (insn_off, file_name_off, line_off, line_col): LineInfo's fields


class LineRows(Sequence[LineRow]):
    """One code section's line_info records (``parse(records=False)``) as u32
    columns over the section's bytes, in file order: a row made on access.
    A million probe sites have about a million records, which as tuples
    took 190 bytes each."""

    __slots__ = ("insn_offs", "file_name_offs", "line_offs", "line_cols")

    def __init__(self, raw: memoryview, rec_size: int) -> None:
        from bpf_sdt.elf import u32_words  # here, as section_view below: btfext's import stays light

        words = u32_words(raw)
        stride = rec_size // WORD       # rec_size is a multiple of 4 (checked at parse)
        self.insn_offs, self.file_name_offs, self.line_offs, self.line_cols = \
            (words[field::stride] for field in range(len(LineInfo._fields) - 1))   # not `extra`

    def __len__(self) -> int:
        return len(self.insn_offs)

    @property
    def columns(self) -> tuple[Sequence[int], ...]:
        """The four columns, in a row's order."""
        return (self.insn_offs, self.file_name_offs, self.line_offs, self.line_cols)

    @overload
    def __getitem__(self, index: int) -> LineRow: ...

    @overload
    def __getitem__(self, index: slice) -> list[LineRow]: ...

    def __getitem__(self, index: int | slice) -> LineRow | list[LineRow]:
        if isinstance(index, slice):
            return list(zip(self.insn_offs[index], self.file_name_offs[index], self.line_offs[index],
                            self.line_cols[index], strict=True))
        return (self.insn_offs[index], self.file_name_offs[index], self.line_offs[index], self.line_cols[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(map(eq, self, other))

    __hash__ = None     # type: ignore[assignment]  # compared by value, as a list is


class ExtSection:
    """The records of one code section, each list in file order.  The lists
    are plain lists: edit them directly or through :class:`BtfExt`'s methods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.func_info: list[FuncInfo] = []
        self.line_info: list[LineInfo] = []
        self.core_relo: list[CoreRelo] = []

    def __eq__(self, other: object) -> bool:    # the same records (what a round trip must keep)
        if not isinstance(other, ExtSection):
            return NotImplemented
        return (self.name, self.func_info, self.line_info, self.core_relo) == \
            (other.name, other.func_info, other.line_info, other.core_relo)

    __hash__ = None     # type: ignore[assignment]  # mutable: no hash, as a list has none

    def records(self, block: str) -> list[Record]:
        return getattr(self, block)  # type: ignore[no-any-return]


Indexed = TypeVar("Indexed")   # what an OffsetIndex holds: records


class OffsetIndex(Generic[Indexed]):
    """A sorted snapshot of records, by ``insn_off``, for many lookups by
    instruction offset; it does not follow later edits.  ``items`` and
    ``offsets`` are public for a caller's own loop over many offsets."""

    def __init__(self, items: Iterable[Indexed], insn_off: Callable[[Indexed], int]) -> None:
        self.items: list[Indexed] = sorted(items, key=insn_off)     # stable: equal offsets keep file order
        self.offsets: list[int] = [insn_off(r) for r in self.items]

    def at(self, insn_off: int) -> Indexed | None:
        """The last item at or before ``insn_off``."""
        i = bisect.bisect_right(self.offsets, insn_off)
        return self.items[i - 1] if i else None


def _last_at_or_before(records: Iterable[R], insn_off: int) -> R | None:
    best: R | None = None
    for r in records:
        if r.insn_off <= insn_off and (best is None or r.insn_off >= best.insn_off):
            best = r
    return best


class _Block:
    """How one info block was laid out, so that encode() can reproduce it."""

    def __init__(self, rec_size: int, present: bool, offset: int, gap_after: bytes = b"") -> None:
        self.rec_size = rec_size
        self.present = present                  # had a non-zero length
        self.offset = offset                    # as read, relative to the header end
        self.order: list[str] = []              # section names, file order
        self.name_offs: dict[str, int] = {}
        self.gap_after = gap_after              # bytes up to the next block or the end


class BtfExt:
    """A parsed ``.BTF.ext``: ``sections`` by name, in the order they first
    appear in the file."""

    def __init__(self, strings: bytes) -> None:
        self.strings = strings
        self.version = BTF_EXT_VERSION
        self.flags = 0
        self.hdr_len = CORE_HEADER_LEN
        self.header_tail = b""      # header bytes past the known fields
        self.lead = b""             # bytes between the header and the first block
        self.sections: dict[str, ExtSection] = {}
        self._blocks: dict[str, _Block] = {}
        self._empty_anchor: dict[str, str | None] = {}
        # parse(records=False): per code section, its line_info as
        # (insn_off, file_name_off, line_off, line_col) rows, in file order.
        self.line_rows: dict[str, LineRows] = {}

    # --- strings -----------------------------------------------------------

    def string(self, offset: int) -> str:
        if not 0 <= offset < len(self.strings):
            raise InputError(f".BTF.ext: string offset {offset} past the BTF strings ({len(self.strings)} bytes)")
        end = self.strings.find(b"\0", offset)
        if end < 0:
            raise InputError(f".BTF.ext: unterminated BTF string at offset {offset}")
        return self.strings[offset:end].decode("utf-8", errors="replace")

    def file_name(self, rec: LineInfo) -> str:
        return self.string(rec.file_name_off)

    def line_text(self, rec: LineInfo) -> str:
        return self.string(rec.line_off)

    def access_str(self, rec: CoreRelo) -> str:
        return self.string(rec.access_str_off)

    def string_offset(self, text: str) -> int:
        """Where ``text`` is in the BTF strings (to name a new section or file)."""
        if not text:
            return 0
        off = self.strings.find(b"\0" + text.encode() + b"\0")
        if off < 0:
            raise InputError(f".BTF.ext: {text!r} is not in the BTF strings")
        return off + 1

    # --- lookups -------------------------------------------------------------

    def section(self, name: str) -> ExtSection:
        sec = self.sections.get(name)
        if sec is None:
            raise InputError(f".BTF.ext: no records for section {name!r}")
        return sec

    def line_of(self, section: str, insn_off: int) -> LineInfo | None:
        """The line_info in force at ``insn_off``: the last one at or before
        it (a scan; use :meth:`line_index` for many lookups)."""
        sec = self.sections.get(section)
        return _last_at_or_before(sec.line_info, insn_off) if sec else None

    def func_of(self, section: str, insn_off: int) -> FuncInfo | None:
        """The func_info of the function holding ``insn_off``."""
        sec = self.sections.get(section)
        return _last_at_or_before(sec.func_info, insn_off) if sec else None

    def line_index(self, section: str) -> OffsetIndex[LineInfo]:
        sec = self.sections.get(section)
        return OffsetIndex(sec.line_info if sec else (), _insn_off)

    # --- edits ---------------------------------------------------------------

    def remap(self, section: str, mapping: Callable[[int], int]) -> None:
        """Rewrite every insn_off of ``section`` (all three kinds) through
        ``mapping``, in the section's lists (a ValueError leaves the records
        before the one it names moved)."""
        sec = self.section(section)

        def moved(rec: R) -> R:
            new = mapping(rec.insn_off)
            if not 0 <= new <= U32_MAX:
                raise ValueError(f"{section}: insn_off {rec.insn_off} maps to {new}, outside u32")
            # records are immutable: one that stays keeps its object; a moved one is
            # a copy by its own constructor (dataclasses.replace() was ten times slower)
            return rec if new == rec.insn_off else rec.moved_to(new)

        _replace_each(sec.func_info, moved)
        _replace_each(sec.line_info, moved)
        _replace_each(sec.core_relo, moved)

    def add_records(self, section: str, func_info: Iterable[FuncInfo] = (),
                    line_info: Iterable[LineInfo] = (), core_relo: Iterable[CoreRelo] = ()) -> None:
        """Add records to ``section`` (created if new; its name must be in the
        BTF strings), each kept in insn_off order after any equal ones, as the
        kernel wants them sorted.  A block with a larger rec_size pads the
        records' extra bytes with zeros."""
        sec = self.sections.get(section)
        if sec is None:
            sec = self.sections[section] = ExtSection(section)
        for block, new in ((FUNC_INFO, list(func_info)), (LINE_INFO, list(line_info)),
                           (CORE_RELO, list(core_relo))):
            if not new:
                continue
            info = self._block(block)
            if section not in info.name_offs:
                info.name_offs[section] = self.string_offset(section)
                info.order.append(section)
            base = _FORMATS[block][1].size
            recs = sec.records(block)
            for rec in new:
                if not isinstance(rec, _FORMATS[block][0]):
                    raise TypeError(f"{block} takes {_FORMATS[block][0].__name__}, not {type(rec).__name__}")
                if len(rec.extra) > info.rec_size - base:
                    raise ValueError(f"{block}: record has {len(rec.extra)} extra bytes, rec_size {info.rec_size} "
                                     f"leaves room for {info.rec_size - base}")
                rec = rec._replace(extra=rec.extra.ljust(info.rec_size - base, b"\0"))
                _check_u32(rec, block)
                recs.insert(bisect.bisect_right(recs, rec.insn_off, key=_insn_off), rec)

    def move_section(self, source: str, into: str, mapping: Callable[[int], int]) -> None:
        """Give ``into`` every record of ``source``, each insn_off through
        ``mapping`` (where the code now is in ``into``), and drop ``source``.
        For code moved from one section to another; ``into`` must be in the
        BTF strings."""
        if source not in self.sections:
            return
        self.remap(source, mapping)
        sec = self.sections.pop(source)
        for info in self._blocks.values():
            if source in info.name_offs:
                info.order.remove(source)
                del info.name_offs[source]
        self.add_records(into, sec.func_info, sec.line_info, sec.core_relo)

    def _block(self, block: str) -> _Block:
        info = self._blocks.get(block)
        if info is None:
            if block == CORE_RELO and self.hdr_len < CORE_HEADER_LEN:
                raise ValueError("a .BTF.ext header shorter than 32 bytes has no core_relo block")
            info = self._blocks[block] = _Block(_FORMATS[block][1].size, False, 0)
        return info

    # --- parse ---------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes | memoryview, btf_strings: bytes | Btf, *, records: bool = True) -> BtfExt:
        """Without ``records``: the same checks, the same errors, but no
        record objects; line_info is kept as rows in ``line_rows``, columns
        over ``data`` (what a reader of source lines needs, and one record
        per probe site is most of the parse of a large object).  ``data``
        may be a view of the file's bytes: nothing is copied from it then."""
        strings = btf_strings.strings if isinstance(btf_strings, Btf) else bytes(btf_strings)
        ext = cls(strings)
        hdr_len, spans = ext._parse_header(data)
        body = data[hdr_len:]
        ext._layout(body, spans)
        for block, (off, length) in spans.items():
            if length:
                ext._parse_block(block, body[off:off + length], records)
        return ext

    def _parse_header(self, data: bytes | memoryview) -> tuple[int, dict[str, tuple[int, int]]]:
        if len(data) < BASE_HEADER_LEN:
            raise InputError(f".BTF.ext: {len(data)} bytes is shorter than its header")
        magic, self.version, self.flags, hdr_len = PREAMBLE.unpack_from(data, 0)
        if magic != BTF_EXT_MAGIC:
            if magic == BYTE_SWAPPED_MAGIC:
                raise InputError(".BTF.ext: big-endian .BTF.ext is not supported")
            raise InputError(f".BTF.ext: bad magic 0x{magic:04x}")
        if self.version != BTF_EXT_VERSION:
            raise InputError(f".BTF.ext: unsupported version {self.version}")
        if not BASE_HEADER_LEN <= hdr_len <= len(data):
            raise InputError(f".BTF.ext: header length {hdr_len} does not fit {len(data)} bytes")
        self.hdr_len = hdr_len
        known = CORE_HEADER_LEN if hdr_len >= CORE_HEADER_LEN else BASE_HEADER_LEN
        self.header_tail = bytes(data[known:hdr_len])
        words = struct.unpack_from(f"<{(known - PREAMBLE.size) // WORD}I", data, PREAMBLE.size)
        spans = {block: (words[2 * i], words[2 * i + 1]) for i, block in enumerate(BLOCKS[:len(words) // 2])}
        body_len = len(data) - hdr_len
        for block, (off, length) in spans.items():
            if off + length > body_len:
                raise InputError(f".BTF.ext: {block} (offset {off}, {length} bytes) runs past the "
                                 f"section ({body_len} bytes after the header)")
        return hdr_len, spans

    def _layout(self, body: bytes | memoryview, spans: dict[str, tuple[int, int]]) -> None:
        """Note the order of the non-empty blocks and the bytes around them."""
        full = sorted((off, BLOCKS.index(b), b) for b, (off, length) in spans.items() if length)
        pos = 0
        for i, (off, _, block) in enumerate(full):
            if off < pos:
                raise InputError(f".BTF.ext: {block} overlaps the block before it")
            if i == 0:
                self.lead = bytes(body[:off])
            pos = off + spans[block][1]
            nxt = full[i + 1][0] if i + 1 < len(full) else len(body)
            self._blocks[block] = _Block(0, True, off, gap_after=bytes(body[pos:max(nxt, pos)]))
        if not full:
            self.lead = bytes(body)
        ends = {off + spans[b][1]: b for off, _, b in full}
        for block, (off, length) in spans.items():
            if not length:   # an empty block's offset is just a number: tie it to what it followed
                self._blocks[block] = _Block(_FORMATS[block][1].size, False, off)
                self._empty_anchor[block] = ends.get(off)

    def _parse_block(self, block: str, raw: bytes | memoryview, records: bool = True) -> None:
        info = self._blocks[block]
        if len(raw) < REC_SIZE_LEN:
            raise InputError(f".BTF.ext: {block} is {len(raw)} bytes, too short for its record size")
        rec_size = struct.unpack_from("<I", raw, 0)[0]
        fmt = _FORMATS[block][1]
        if rec_size < fmt.size or rec_size % 4:
            raise InputError(f".BTF.ext: {block} record size {rec_size} (want a multiple of 4, "
                             f"at least {fmt.size})")
        info.rec_size = rec_size
        pos = REC_SIZE_LEN
        while pos < len(raw):
            if pos + SEC_HEADER_LEN > len(raw):
                raise InputError(f".BTF.ext: {block} is truncated at byte {pos}")
            name_off, count = struct.unpack_from("<II", raw, pos)
            pos += SEC_HEADER_LEN
            if count * rec_size > len(raw) - pos:
                raise InputError(f".BTF.ext: {block}: {count} records of {rec_size} bytes run past the block")
            name = self.string(name_off)
            if name in info.name_offs:
                raise InputError(f".BTF.ext: {block} lists section {name!r} twice")
            info.order.append(name)
            info.name_offs[name] = name_off
            sec = self.sections.get(name)
            if sec is None:
                sec = self.sections[name] = ExtSection(name)
            if records:
                sec.records(block).extend(self._records(block, raw, pos, count, rec_size, fmt))
            elif block == LINE_INFO:
                self.line_rows[name] = self._line_rows(raw, pos, count, rec_size)
            else:
                self._rows(block, raw, pos, count, rec_size, fmt)     # for the checks
            pos += count * rec_size

    def _records(self, block: str, raw: bytes | memoryview, pos: int, count: int, rec_size: int,
                 fmt: struct.Struct) -> list[Record]:
        """The records of one section's block (one unpack for them all), each
        with the bytes past its known fields; their string offsets checked
        first, on the columns (:meth:`_check_strings`), so that no row is
        held beside its record."""
        self._check_strings(block, raw, pos, count, rec_size)
        make = _MAKE[block]
        rows = struct.Struct(fmt.format + f"{rec_size - fmt.size}x").iter_unpack(raw[pos:pos + count * rec_size])
        extra = rec_size - fmt.size
        if not extra:
            return [make(values, b"") for values in rows]
        starts = range(pos + fmt.size, pos + count * rec_size, rec_size)
        return [make(values, bytes(raw[start:start + extra])) for values, start in zip(rows, starts, strict=True)]

    def _check_strings(self, block: str, raw: bytes | memoryview, pos: int, count: int, rec_size: int) -> None:
        """:meth:`_rows`'s check of the string offsets, on u32 columns over ``raw``."""
        from bpf_sdt.elf import u32_words  # as LineRows: btfext's import stays light

        if not _STRING_FIELDS[block] or not count:
            return
        with memoryview(raw) as view:
            words = u32_words(view[pos:pos + count * rec_size])
            stride = rec_size // WORD
            if not self._strings_fit(block, lambda i: words[i::stride]):
                self._rows(block, raw, pos, count, rec_size, _FORMATS[block][1])     # names the record

    def _line_rows(self, raw: bytes | memoryview, pos: int, count: int, rec_size: int) -> LineRows:
        """One section's line_info as columns over ``raw``, checked as
        :meth:`_rows` checks its rows."""
        rows = LineRows(memoryview(raw)[pos:pos + count * rec_size], rec_size)
        if not self._strings_fit(LINE_INFO, rows.columns.__getitem__):
            self._refuse_bad_string(LINE_INFO, list(rows), pos, rec_size)
        return rows

    def _rows(self, block: str, raw: bytes | memoryview, pos: int, count: int, rec_size: int,
              fmt: struct.Struct) -> list[tuple[int, ...]]:
        """The known fields of each record (bytes past them skipped), their
        string offsets checked (:meth:`_refuse_bad_string` names the record)."""
        padded = struct.Struct(fmt.format + f"{rec_size - fmt.size}x")
        rows = list(padded.iter_unpack(raw[pos:pos + count * rec_size]))
        if not self._strings_fit(block, lambda i: map(itemgetter(i), rows)):
            self._refuse_bad_string(block, rows, pos, rec_size)
        return rows

    def _strings_fit(self, block: str, column: Callable[[int], Iterable[int]]) -> bool:
        """Whether every string offset of ``block``'s records lies inside the
        BTF strings, field i's offsets being ``column(i)``: one max per field,
        over whichever form the caller holds its records in (u32 columns, line
        rows, unpacked rows)."""
        limit = len(self.strings)
        return all(max(column(i), default=0) < limit for i in _STRING_FIELDS[block])

    def _refuse_bad_string(self, block: str, rows: list[tuple[int, ...]], pos: int, rec_size: int) -> None:
        """InputError for the first record whose string offset is past the BTF
        strings (0 always passes: the empty name)."""
        limit = len(self.strings)
        for k, values in enumerate(rows):
            for i in _STRING_FIELDS[block]:
                if values[i] >= limit and values[i]:
                    raise InputError(f".BTF.ext: {block} record at byte {pos + k * rec_size}: string offset "
                                     f"{values[i]} past the BTF strings ({limit} bytes)")

    # --- encode --------------------------------------------------------------

    def _encode_block(self, block: str, fields: list[tuple[int, str]] | None) -> bytes:
        """One block's bytes; notes where each record's insn_off lands (from
        the block's start) in ``fields``, unless None."""
        info = self._blocks[block]
        fmt = _FORMATS[block][1]
        size = REC_SIZE_LEN + sum(SEC_HEADER_LEN + info.rec_size * len(self.sections[name].records(block))
                                  for name in info.order)
        out = bytearray(size)       # packed into in place: no bytes object per record
        struct.pack_into("<I", out, 0, info.rec_size)
        pos = REC_SIZE_LEN
        values = _FIELDS_OF[block]
        for name in info.order:
            recs = self.sections[name].records(block)
            struct.pack_into("<II", out, pos, info.name_offs[name], len(recs))
            pos += SEC_HEADER_LEN
            for r in recs:
                fmt.pack_into(out, pos, *values(r))
                if r.extra:
                    out[pos + fmt.size:pos + fmt.size + len(r.extra)] = r.extra
                if fields is not None:
                    fields.append((pos, name))
                pos += info.rec_size
        return bytes(out)

    def _build(self, with_fields: bool) -> tuple[bytes, list[tuple[int, str]]]:
        """The section's bytes, and with ``with_fields`` :meth:`insn_off_fields`
        (else []: a tuple per record that encode() does not need)."""
        present = [b for b in BLOCKS if b in self._blocks and
                   (self._blocks[b].present or any(self.sections[n].records(b) for n in self._blocks[b].order))]
        # blocks that were in the file keep their order; new ones go after them
        present.sort(key=lambda b: (not self._blocks[b].present, self._blocks[b].offset, BLOCKS.index(b)))
        body = [self.lead]
        pos = len(self.lead)
        spans: dict[str, tuple[int, int]] = {}
        fields: list[tuple[int, str]] = []
        header_len = self.hdr_len
        for block in present:
            block_fields: list[tuple[int, str]] | None = [] if with_fields else None
            raw = self._encode_block(block, block_fields)
            fields += [(header_len + pos + off, name) for off, name in block_fields or ()]
            spans[block] = (pos, len(raw))
            body += [raw, self._blocks[block].gap_after]
            pos += len(raw) + len(self._blocks[block].gap_after)
        for block, info in self._blocks.items():
            if block not in spans:
                anchor = self._empty_anchor.get(block)
                spans[block] = (spans[anchor][0] + spans[anchor][1] if anchor in spans else info.offset, 0)
        nblocks = 3 if self.hdr_len >= CORE_HEADER_LEN else 2
        words: list[int] = []
        for block in BLOCKS[:nblocks]:
            words += spans.get(block, (0, 0))
        header = struct.pack(f"{PREAMBLE_FORMAT}{2 * nblocks}I", BTF_EXT_MAGIC, self.version, self.flags,
                             self.hdr_len, *words)
        return header + self.header_tail + b"".join(body), fields

    def encode(self) -> bytes:
        return self._build(with_fields=False)[0]

    def insn_off_fields(self) -> list[tuple[int, str]]:
        """``(byte offset in encode()'s output, code section)`` of every
        record's insn_off, in file order.  A relocatable object has one
        ``R_BPF_64_NODYLD32`` in ``.rel.BTF.ext`` per entry, against the code
        section's symbol: whoever rewrites .BTF.ext writes these too."""
        return self._build(with_fields=True)[1]


def _replace_each(records: list[R], change: Callable[[R], R]) -> None:
    """Each record through ``change``, in the list: every one replaced frees
    the old, so a section of a million line records is never held twice."""
    for k, rec in enumerate(records):
        records[k] = change(rec)


def _insn_off(r: Record) -> int:
    return r.insn_off


def _values(r: Record) -> tuple[int, ...]:
    if isinstance(r, FuncInfo):
        return (r.insn_off, r.type_id)
    if isinstance(r, LineInfo):
        return (r.insn_off, r.file_name_off, r.line_off, r.line_col)
    return (r.insn_off, r.type_id, r.access_str_off, r.kind)


def _check_u32(rec: Record, block: str) -> None:
    for v in _values(rec):
        if not 0 <= v <= U32_MAX:
            raise ValueError(f"{block}: field value {v} does not fit u32")


class _LineIndex:
    """One section's line rows by insn_off (stable: equal offsets keep file
    order), as the columns a place needs: the rows' own when they are in
    order already (what compilers write), else sorted copies."""

    __slots__ = ("offsets", "file_name_offs", "line_cols")

    def __init__(self, rows: LineRows | None) -> None:
        if rows is None:
            self.offsets: Sequence[int] = ()
            self.file_name_offs: Sequence[int] = ()
            self.line_cols: Sequence[int] = ()
            return
        offsets = rows.insn_offs
        if all(map(le, offsets, offsets[1:])):
            self.offsets, self.file_name_offs, self.line_cols = offsets, rows.file_name_offs, rows.line_cols
            return
        order = sorted(range(len(offsets)), key=offsets.__getitem__)
        self.offsets, self.file_name_offs, self.line_cols = (
            array("I", map(column.__getitem__, order)) for column in (offsets, rows.file_name_offs, rows.line_cols))

    def at(self, insn_off: int) -> int:
        """The index of the last row at or before ``insn_off``, -1 if none."""
        return bisect.bisect_right(self.offsets, insn_off) - 1


class SourceLines:
    """Source locations by (code section, offset) from `.BTF.ext` line_info:
    the record in force at an offset is the last one at or before it.  clang
    gives the probe's asm statement the location of the outermost macro
    invocation, so an unrolled or inlined copy carries the invocation's line.
    An object without .BTF.ext (or with a broken one) has no locations."""

    def __init__(self, obj: BpfObject) -> None:
        self._obj = obj
        # per code section: its line rows (BtfExt.line_rows) by insn_off
        self._index: dict[str, _LineIndex] = {}
        self._files: dict[int, str | None] = {}     # by string offset: a few files, many sites

    @cached_property
    def _ext(self) -> BtfExt | None:
        """Read on the first location asked for: where sites were inlined
        (link's question) needs none of it.  Its rows are columns over the
        file's bytes (no copy of the section)."""
        from bpf_sdt.elf import section_view

        sec = self._obj.section(BTF_EXT_SECTION)
        if sec is None:
            return None
        try:
            btf = self._obj.btf
            return BtfExt.parse(section_view(self._obj, sec), btf, records=False) if btf is not None else None
        except InputError:
            return None

    def at(self, section: str, offset: int) -> tuple[str | None, int | None, int | None]:
        if self._ext is None:
            return None, None, None
        index = self._section_index(section)
        return self._place(index, index.at(offset))

    def places(self, section: str, offsets: Sequence[int]) -> list[tuple[str | None, int | None, int | None]]:
        """:meth:`at` of many offsets in one section: a site's record is
        usually its neighbour's too, so each record's place is worked out
        once (`list` asks for every site)."""
        if self._ext is None:
            return [(None, None, None)] * len(offsets)
        index = self._section_index(section)
        offs = index.offsets        # _LineIndex.at, without a call per site
        find = bisect.bisect_right
        out = []
        last = -1
        place = self._place(index, -1)
        for offset in offsets:
            row = find(offs, offset) - 1
            if row != last:
                last, place = row, self._place(index, row)
            out.append(place)
        return out

    def _section_index(self, section: str) -> _LineIndex:
        index = self._index.get(section)
        if index is None:
            assert self._ext is not None
            index = self._index[section] = _LineIndex(self._ext.line_rows.get(section))
        return index

    def _place(self, index: _LineIndex, row: int) -> tuple[str | None, int | None, int | None]:
        """(file, line, column) of line row ``row`` of a section (LineInfo's
        fields), None for unknown (no row: -1)."""
        if row < 0 or self._ext is None:
            return None, None, None
        file_name_off, line_col = index.file_name_offs[row], index.line_cols[row]
        file = self._files.get(file_name_off, "")
        if file == "":
            try:
                # clang joins its directory and a relative name as given
                # (`build/../src/x.c` from meson): shown normalised.
                name = self._ext.string(file_name_off)
                file = self._files[file_name_off] = os.path.normpath(name) if name else name
            except InputError:
                file = self._files[file_name_off] = None
        if file is None:
            return None, None, None
        return file, line_col >> LINE_SHIFT or None, line_col & COL_MASK or None

    def inlined_at(self, entries: Sequence[NoteEntry], functions: FunctionIndex) -> list[Chain]:
        """For each of ``entries`` (every decoded entry of the object, in any
        order), where the inlined function holding its NOP was called,
        innermost first: from `.bpf_sdt_inline` (what link and instrument
        wrote), else from the compiler's DWARF (bpf_sdt.inlined)."""
        from bpf_sdt.inlined import SitePlace, has_inline_information, inline_chains

        if not entries:                      # nothing to place (instrument's recorder): no DWARF read
            return []
        if not has_inline_information(self._obj):
            return [()] * len(entries)       # nothing says where anything was inlined: no per-site records
        rank = {e.entry_offset: i for i, e in enumerate(sorted(entries, key=lambda e: e.entry_offset))}
        places = [SitePlace(e.section.name, e.offset, functions.at(e.section, e.offset)) for e in entries]
        return inline_chains(self._obj, places, [rank[e.entry_offset] for e in entries])

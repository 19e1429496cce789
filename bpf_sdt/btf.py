"""A small, complete reader for BTF (the ``.BTF`` section), written by hand
because no Python library reads it.  Tested against ``bpftool btf dump -j``.

Input is untrusted: every count and offset read from the file is checked
against the bytes that are really there before it is used, and every
problem raises :class:`bpf_sdt.errors.InputError` with one line of text.

Forward compatibility with what bpf-next is adding:

- ``vlen`` is read from bits 0-23 of ``info`` (bits 16-23 are planned as an
  extension for large sections).
- A header of 32 bytes or more may carry ``layout_off``/``layout_len``: one
  4-byte record per kind, ``{u8 info_sz; u8 elem_sz; u16 flags}``, describing
  how long each kind's records are.  A kind this reader does not know is
  skipped using that layout; without one it is an error naming the kind and
  the type id.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bpf_sdt.errors import InputError

BTF_MAGIC = 0xEB9F
BASE_HEADER_LEN = 24
LAYOUT_HEADER_LEN = 32
MAX_TYPES = 0x00FFFFFF      # a bound far above any real object, below memory trouble

KIND_NAMES = {
    1: "INT", 2: "PTR", 3: "ARRAY", 4: "STRUCT", 5: "UNION", 6: "ENUM", 7: "FWD",
    8: "TYPEDEF", 9: "VOLATILE", 10: "CONST", 11: "RESTRICT", 12: "FUNC",
    13: "FUNC_PROTO", 14: "VAR", 15: "DATASEC", 16: "FLOAT", 17: "DECL_TAG",
    18: "TYPE_TAG", 19: "ENUM64",
}
# Bytes after the 12-byte common record: (fixed extra, per-vlen element).
_RECORD_SHAPE = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}
# Kinds whose third word is a size rather than a type id.
_SIZED_KINDS = {1, 4, 5, 6, 15, 16, 19}
# Kinds that only qualify or rename another type.
_TRANSPARENT_KINDS = {8, 9, 10, 11, 18}


@dataclass
class Member:
    """A struct/union member, enum value, func-proto param or datasec entry."""

    name: str
    type: int = 0           # type id (members, params, datasec vars)
    offset: int = 0         # bit offset (members) or byte offset (datasec)
    value: int = 0          # enum value
    size: int = 0           # datasec entry size


@dataclass
class BtfType:
    id: int
    kind: int
    name: str
    info: int
    kind_flag: bool
    vlen: int
    size: int = 0           # for sized kinds
    type: int = 0           # for referring kinds
    members: list[Member] = field(default_factory=list)
    # INT
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    # ARRAY
    elem_type: int = 0
    index_type: int = 0
    nelems: int = 0
    # VAR / FUNC linkage, DECL_TAG component index
    linkage: int = 0
    component_idx: int = -1
    unknown: bool = False   # a kind skipped through the layout section

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"KIND_{self.kind}")


class Btf:
    """Parsed BTF: ``types[id]``, id 0 being ``void``."""

    def __init__(self, types: list[BtfType], strings: bytes) -> None:
        self.types = types
        self.strings = strings

    # --- lookups ---------------------------------------------------------

    def get(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise InputError(f"BTF: type id {type_id} out of range (have {len(self.types) - 1})")
        return self.types[type_id]

    def resolve(self, type_id: int) -> BtfType:
        """Skip typedefs, qualifiers and type tags."""
        seen = 0
        t = self.get(type_id)
        while t.kind in _TRANSPARENT_KINDS:
            seen += 1
            if seen > len(self.types):
                raise InputError(f"BTF: type {type_id} refers to itself in a loop")
            t = self.get(t.type)
        return t

    def size_of(self, type_id: int) -> int:
        t = self.resolve(type_id)
        if t.kind == 2:
            return 8
        if t.kind == 3:
            return t.nelems * self.size_of(t.elem_type)
        if t.kind in _SIZED_KINDS:
            return t.size
        return 0

    def is_aggregate(self, type_id: int) -> bool:
        return self.resolve(type_id).kind in (4, 5)

    # --- C spellings -----------------------------------------------------

    def c_spelling(self, type_id: int, canonical: bool = False) -> str:
        """A C type name: ``int``, ``const char *``, ``__u32``, ``void (*)(int)``.
        ``canonical`` resolves typedefs (``__u32`` -> ``unsigned int``), as
        clang's canonical types do."""
        return self._declarator(type_id, "", 0, canonical).strip()

    def _declarator(self, type_id: int, inner: str, depth: int, canonical: bool = False) -> str:
        if depth > 64:
            raise InputError(f"BTF: type {type_id} nests too deeply")
        if type_id == 0:
            return f"void {inner}".rstrip() if inner else "void"
        t = self.get(type_id)
        k = t.kind
        if k == 8 and canonical:
            return self._declarator(t.type, inner, depth + 1, canonical)
        if k in (1, 16, 8):                 # INT, FLOAT, TYPEDEF: a plain name
            return f"{t.name} {inner}".rstrip()
        if k in (4, 5, 6, 19, 7):           # struct/union/enum (FWD: kind_flag -> union)
            tag = {4: "struct", 5: "union", 6: "enum", 19: "enum"}.get(k)
            if k == 7:
                tag = "union" if t.kind_flag else "struct"
            return f"{tag} {t.name or '(anon)'} {inner}".rstrip()
        if k in (9, 10, 11):                # qualifiers
            qual = {9: "volatile", 10: "const", 11: "restrict"}[k]
            target = self.get(t.type) if t.type else None
            if target is not None and target.kind == 2:   # qualifier on a pointer
                return self._declarator(t.type, f"{qual} {inner}".rstrip(), depth + 1, canonical)
            return f"{qual} {self._declarator(t.type, inner, depth + 1, canonical)}"
        if k == 18:                         # TYPE_TAG: not part of C spelling
            return self._declarator(t.type, inner, depth + 1, canonical)
        if k == 2:
            target = self.get(t.type) if t.type else None
            star = f"*{inner}"
            if target is not None and target.kind in (13, 3):
                star = f"(*{inner})"
            return self._declarator(t.type, star, depth + 1, canonical)
        if k == 3:
            return self._declarator(t.elem_type, f"{inner}[{t.nelems}]", depth + 1, canonical)
        if k == 13:
            params = ", ".join(self.c_spelling(m.type, canonical) for m in t.members) or "void"
            return self._declarator(t.type, f"{inner}({params})", depth + 1, canonical)
        return f"{t.kind_name.lower()} {t.name} {inner}".rstrip()


# --- parsing ---------------------------------------------------------------


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _string(strings: bytes, off: int, where: str) -> str:
    if off >= len(strings) and off != 0:
        raise InputError(f"BTF: {where}: name offset {off} past the string section ({len(strings)} bytes)")
    end = strings.find(b"\0", off)
    if end < 0:
        raise InputError(f"BTF: {where}: unterminated string at offset {off}")
    return strings[off:end].decode("utf-8", errors="replace")


def _read_layout(data: bytes, hdr_len: int, body: int) -> dict[int, tuple[int, int]]:
    """The optional kind-layout table: kind -> (info_sz, elem_sz)."""
    if hdr_len < LAYOUT_HEADER_LEN:
        return {}
    layout_off, layout_len = struct.unpack_from("<II", data, BASE_HEADER_LEN)
    if layout_len == 0:
        return {}
    start = body + layout_off
    if layout_len % 4 or start + layout_len > len(data):
        raise InputError("BTF: kind layout section runs past the data")
    out = {}
    for kind in range(layout_len // 4):
        info_sz, elem_sz, _flags = struct.unpack_from("<BBH", data, start + 4 * kind)
        out[kind] = (info_sz, elem_sz)
    return out


def parse_btf(data: bytes) -> Btf:
    """Parse a little-endian ``.BTF`` section."""
    if len(data) < BASE_HEADER_LEN:
        raise InputError(f"BTF: {len(data)} bytes is shorter than a BTF header")
    magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        if magic == 0x9FEB:
            raise InputError("BTF: big-endian BTF is not supported")
        raise InputError(f"BTF: bad magic 0x{magic:04x}")
    if version != 1:
        raise InputError(f"BTF: unsupported version {version}")
    if hdr_len < BASE_HEADER_LEN or hdr_len > len(data):
        raise InputError(f"BTF: header length {hdr_len} does not fit {len(data)} bytes")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    body = hdr_len
    if body + type_off + type_len > len(data) or body + str_off + str_len > len(data):
        raise InputError("BTF: type or string section runs past the data")
    strings = data[body + str_off: body + str_off + str_len]
    layout = _read_layout(data, hdr_len, body)
    types = [BtfType(id=0, kind=0, name="void", info=0, kind_flag=False, vlen=0)]
    pos, end = body + type_off, body + type_off + type_len
    while pos < end:
        if len(types) > MAX_TYPES:
            raise InputError(f"BTF: more than {MAX_TYPES} types")
        t, pos = _parse_type(data, pos, end, len(types), strings, layout)
        types.append(t)
    return Btf(types, strings)


def _parse_type(data: bytes, pos: int, end: int, type_id: int, strings: bytes,
                layout: dict[int, tuple[int, int]]) -> tuple[BtfType, int]:
    if pos + 12 > end:
        raise InputError(f"BTF: type {type_id} is truncated")
    name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
    kind = (info >> 24) & 0x1F
    vlen = info & 0xFFFFFF
    t = BtfType(id=type_id, kind=kind, name=_string(strings, name_off, f"type {type_id}"),
                info=info, kind_flag=bool(info >> 31), vlen=vlen)
    if kind in _SIZED_KINDS:
        t.size = size_or_type
    else:
        t.type = size_or_type
    shape = _RECORD_SHAPE.get(kind)
    if shape is None:
        if kind not in layout:
            raise InputError(f"BTF: type {type_id} has kind {kind}, which this reader "
                             f"does not know (and the BTF has no kind layout to skip it)")
        shape, t.unknown = layout[kind], True
    extra, elem = shape
    rec_end = pos + 12 + extra + vlen * elem
    if rec_end > end:
        raise InputError(f"BTF: type {type_id} ({t.kind_name}, vlen {vlen}) runs past the type section")
    body = pos + 12
    if not t.unknown:
        _parse_kind_data(t, data, body, strings)
    return t, rec_end


def _parse_kind_data(t: BtfType, data: bytes, body: int, strings: bytes) -> None:
    k = t.kind
    where = f"type {t.id}"
    if k == 1:
        word = _u32(data, body)
        t.int_encoding, t.int_offset, t.int_bits = (word >> 24) & 0xF, (word >> 16) & 0xFF, word & 0xFF
    elif k == 3:
        t.elem_type, t.index_type, t.nelems = struct.unpack_from("<III", data, body)
    elif k in (4, 5):
        for i in range(t.vlen):
            n, ty, off = struct.unpack_from("<III", data, body + 12 * i)
            t.members.append(Member(_string(strings, n, where), type=ty, offset=off))
    elif k == 6:   # kind_flag set: signed values, clear: unsigned
        fmt = "<Ii" if t.kind_flag else "<II"
        for i in range(t.vlen):
            n, val = struct.unpack_from(fmt, data, body + 8 * i)
            t.members.append(Member(_string(strings, n, where), value=val))
    elif k == 19:
        for i in range(t.vlen):
            n, lo, hi = struct.unpack_from("<III", data, body + 12 * i)
            val = (hi << 32) | lo
            if t.kind_flag and val >> 63:   # kind_flag set: signed
                val -= 1 << 64
            t.members.append(Member(_string(strings, n, where), value=val))
    elif k == 13:
        for i in range(t.vlen):
            n, ty = struct.unpack_from("<II", data, body + 8 * i)
            t.members.append(Member(_string(strings, n, where), type=ty))
    elif k == 15:
        for i in range(t.vlen):
            ty, off, size = struct.unpack_from("<III", data, body + 12 * i)
            t.members.append(Member("", type=ty, offset=off, size=size))
    elif k == 14:
        t.linkage = _u32(data, body)
    elif k == 12:
        t.linkage = t.vlen
    elif k == 17:
        t.component_idx = struct.unpack_from("<i", data, body)[0]

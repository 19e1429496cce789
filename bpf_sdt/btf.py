"""A small, complete reader for BTF (the ``.BTF`` section), written by hand
because no Python library reads it.  Tested against ``bpftool btf dump -j``.

Input is untrusted: every count and offset read from the file is checked
against the bytes that are really there before it is used, and every
problem raises :class:`bpf_sdt.errors.InputError` with one line of text.
Every walk over type references is a loop with a depth bound and a cycle
check, never a recursion, so a self-referencing or absurdly deep chain is an
InputError and never a RecursionError.

Memory.  The parsed form keeps the type section as an ``array`` of u32
words, the string section as ``bytes`` and one u32 word index per type;
:class:`BtfType` objects are built when asked for and not kept.  Since a
type record takes at least 12 bytes, the reader's own allocations stay
within ``MEMORY_FACTOR`` times the input size (plus a small constant), which
``tests/test_btf.py`` measures with tracemalloc on generated BTF and on the
kernel's vmlinux BTF.  (The previous reader, with one dataclass per type and
per member, took about 16 times the input.)

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
import sys
from array import array
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import NamedTuple, overload

from bpf_sdt.errors import InputError

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BASE_HEADER_LEN = 24
LAYOUT_HEADER_LEN = 32
# How a .BTF and a .BTF.ext header both start: magic, version, flags, hdr_len.
PREAMBLE_FORMAT = "<HBBI"
PREAMBLE = struct.Struct(PREAMBLE_FORMAT)
# struct btf_header through str_len: the preamble, then the type and string
# sections' offsets and lengths (relative to the header's end)
HEADER = struct.Struct(PREAMBLE_FORMAT + "IIII")
BYTE_SWAPPED_MAGIC = 0x9FEB    # BTF_MAGIC as a big-endian file stores it
WORD = 4                       # BTF records are sequences of little-endian u32 words
RECORD_WORDS = 3               # name_off, info, size_or_type
MAX_TYPES = 0x00FFFFFF         # a bound far above any real object, below memory trouble
U32_MAX = 0xFFFFFFFF
# Longest chain of references (typedef -> const -> array -> ptr ...) any walk
# follows.  The kernel and libbpf resolve at most 32 levels (MAX_RESOLVE_DEPTH),
# so real BTF stays far below this; hostile BTF hits it in microseconds.
MAX_TYPE_DEPTH = 1024
# Function prototypes nested inside parameter lists (``void (*)(void (*)(int))``)
# and the total number of types one C spelling may visit: a prototype whose
# parameters point to prototypes would otherwise spell exponentially.
MAX_PROTO_NESTING = 32
MAX_SPELLING_STEPS = 1 << 16
# Upper bound of the reader's allocations relative to the input size, see the
# module docstring: one copy of the type and string sections, plus one 4-byte
# word per type of at least 12 bytes, plus array growth slack.
MEMORY_FACTOR = 1.5
_BIG_ENDIAN_HOST = sys.byteorder == "big"


class BtfKind(IntEnum):
    """BTF_KIND_* from the kernel's ``include/uapi/linux/btf.h``."""

    UNKN = 0        # type id 0: void
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class BtfLinkage(IntEnum):
    """FUNC linkage (in a FUNC's vlen bits) and VAR linkage (its extra word)."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


# INT encoding bits (the INT's extra word, bits 24-27).
INT_SIGNED = 1
INT_CHAR = 2
INT_BOOL = 4

K = BtfKind
_KIND_OF: dict[int, BtfKind] = {k.value: k for k in BtfKind}
# Words after the 3-word common record: (fixed extra, per-vlen element).
_RECORD_SHAPE: dict[int, tuple[int, int]] = {
    K.INT: (1, 0), K.PTR: (0, 0), K.ARRAY: (3, 0), K.STRUCT: (0, 3), K.UNION: (0, 3),
    K.ENUM: (0, 2), K.FWD: (0, 0), K.TYPEDEF: (0, 0), K.VOLATILE: (0, 0), K.CONST: (0, 0),
    K.RESTRICT: (0, 0), K.FUNC: (0, 0), K.FUNC_PROTO: (0, 2), K.VAR: (1, 0),
    K.DATASEC: (0, 3), K.FLOAT: (0, 0), K.DECL_TAG: (1, 0), K.TYPE_TAG: (0, 0),
    K.ENUM64: (0, 3),
}
# Kinds whose elements start with a name offset (DATASEC's start with a type id).
_NAMED_ELEMENTS = frozenset({K.STRUCT, K.UNION, K.ENUM, K.ENUM64, K.FUNC_PROTO})
# Kinds whose third word is a size rather than a type id.
_SIZED_KINDS = frozenset({K.INT, K.STRUCT, K.UNION, K.ENUM, K.DATASEC, K.FLOAT, K.ENUM64})
# Kinds that only qualify or rename another type.
_TRANSPARENT_KINDS = frozenset({K.TYPEDEF, K.VOLATILE, K.CONST, K.RESTRICT, K.TYPE_TAG})
_QUALIFIERS: dict[int, str] = {K.VOLATILE: "volatile", K.CONST: "const", K.RESTRICT: "restrict"}
_TAGS: dict[int, str] = {K.STRUCT: "struct", K.UNION: "union", K.ENUM: "enum", K.ENUM64: "enum"}


def kind_name(kind: int) -> str:
    k = _KIND_OF.get(kind)
    return k.name if k is not None else f"KIND_{kind}"


class Member(NamedTuple):
    """A struct/union member, enum value, func-proto param or datasec entry."""

    name: str
    type: int = 0           # type id (members, params, datasec vars)
    offset: int = 0         # bit offset (members) or byte offset (datasec)
    value: int = 0          # enum value
    size: int = 0           # datasec entry size


class BtfType:
    """One type, built on demand by :meth:`Btf.get` as a view of the parsed
    words: only id, kind and info are stored; the name, the kind-specific
    fields and ``members`` are read when asked for, so that scanning every
    type for its kind stays cheap."""

    __slots__ = ("id", "kind", "info", "_btf", "_pos", "_name", "_members")

    def __init__(self, btf: Btf | None, type_id: int, kind: int, info: int, pos: int) -> None:
        self.id = type_id
        self.kind = kind
        self.info = info
        self._btf = btf                 # None for void
        self._pos = pos                 # word index of the record
        self._name: str | None = None
        self._members: list[Member] | None = None

    def _word(self, i: int) -> int:
        """Word ``i`` of the record (0: name_off, 1: info, 2: size/type, 3...: kind data)."""
        return self._btf._words[self._pos + i] if self._btf is not None else 0

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = self._btf.string_at(self._word(0)) if self._btf is not None else "void"
        return self._name

    @property
    def size(self) -> int:
        """For sized kinds (INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT)."""
        return self._word(2) if self.kind in _SIZED_KINDS else 0

    @property
    def type(self) -> int:
        """For referring kinds (PTR, TYPEDEF, qualifiers, FUNC, FUNC_PROTO's return, VAR, tags)."""
        return 0 if self.kind in _SIZED_KINDS else self._word(2)

    @property
    def int_encoding(self) -> int:
        return (self._word(3) >> 24) & 0xF if self.kind == K.INT else 0

    @property
    def int_offset(self) -> int:
        return (self._word(3) >> 16) & 0xFF if self.kind == K.INT else 0

    @property
    def int_bits(self) -> int:
        return self._word(3) & 0xFF if self.kind == K.INT else 0

    @property
    def elem_type(self) -> int:
        return self._word(3) if self.kind == K.ARRAY else 0

    @property
    def index_type(self) -> int:
        return self._word(4) if self.kind == K.ARRAY else 0

    @property
    def nelems(self) -> int:
        return self._word(5) if self.kind == K.ARRAY else 0

    @property
    def linkage(self) -> int:
        """VAR: its extra word; FUNC: the vlen bits of info."""
        if self.kind == K.VAR:
            return self._word(3)
        return self.info & 0xFFFF if self.kind == K.FUNC else 0

    @property
    def component_idx(self) -> int:
        return _signed32(self._word(3)) if self.kind == K.DECL_TAG else -1

    @property
    def kind_flag(self) -> bool:
        return bool(self.info >> 31)

    @property
    def vlen(self) -> int:
        return self.info & 0xFFFFFF

    @property
    def unknown(self) -> bool:
        """A kind this reader does not know, skipped through the kind layout."""
        return self.kind not in _RECORD_SHAPE

    @property
    def kind_name(self) -> str:
        return kind_name(self.kind)

    @property
    def members(self) -> list[Member]:
        if self._members is None:
            self._members = self._btf._members(self) if self._btf is not None else []
        return self._members

    def __repr__(self) -> str:
        return f"BtfType(id={self.id}, kind={self.kind_name}, name={self.name!r})"


class _TypeTable(Sequence[BtfType]):
    """``btf.types``: a read-only list view that builds each type when indexed."""

    def __init__(self, btf: Btf) -> None:
        self._btf = btf

    def __len__(self) -> int:
        return len(self._btf._offsets)

    @overload
    def __getitem__(self, index: int) -> BtfType: ...
    @overload
    def __getitem__(self, index: slice) -> list[BtfType]: ...

    def __getitem__(self, index: int | slice) -> BtfType | list[BtfType]:
        if isinstance(index, slice):
            return [self._btf.get(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._btf.get(index)

    def __iter__(self) -> Iterator[BtfType]:
        get = self._btf.get
        return (get(i) for i in range(len(self)))


class _Walk:
    """Guards one walk along a chain of type references: a depth bound and a
    cycle check, so that no input makes a walk loop or run long."""

    __slots__ = ("start", "seen")

    def __init__(self, start: int) -> None:
        self.start = start
        self.seen: set[int] = set()

    def visit(self, type_id: int) -> None:
        if type_id in self.seen:
            raise InputError(f"BTF: type {self.start} refers to itself in a loop (through type {type_id})")
        if len(self.seen) >= MAX_TYPE_DEPTH:
            raise InputError(f"BTF: type {self.start} nests more than {MAX_TYPE_DEPTH} levels deep")
        self.seen.add(type_id)


class Btf:
    """Parsed BTF: ``types[id]``, id 0 being ``void``.

    ``words`` is the type section as u32 words, ``offsets[id]`` the word index
    of type ``id``'s record (0 for void, which has none), ``type_start`` the
    byte offset of the type section in the parsed data."""

    def __init__(self, words: array[int], offsets: array[int], strings: bytes, type_start: int) -> None:
        self._words = words
        self._offsets = offsets
        self.strings = strings
        self.type_start = type_start
        self.types: Sequence[BtfType] = _TypeTable(self)

    # --- raw accessors: no object per type -------------------------------

    def _check_id(self, type_id: int) -> None:
        if not 0 <= type_id < len(self._offsets):
            raise InputError(f"BTF: type id {type_id} out of range (have {len(self._offsets) - 1})")

    def kind_of(self, type_id: int) -> int:
        self._check_id(type_id)
        if type_id == 0:
            return K.UNKN
        return (self._words[self._offsets[type_id] + 1] >> 24) & 0x1F

    def ref_of(self, type_id: int) -> int:
        """The third word of a record: the referred type id or the size."""
        self._check_id(type_id)
        return self._words[self._offsets[type_id] + 2] if type_id else 0

    def name_of(self, type_id: int) -> str:
        self._check_id(type_id)
        return self.string_at(self._words[self._offsets[type_id]]) if type_id else "void"

    def string_at(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the string section."""
        if offset == 0 or not self.strings:
            return ""
        if not 0 <= offset < len(self.strings):
            raise InputError(f"BTF: string offset {offset} past the string section ({len(self.strings)} bytes)")
        return self.strings[offset:self.strings.index(b"\0", offset)].decode("utf-8", errors="replace")

    def record_offset(self, type_id: int) -> int:
        """Byte offset of type ``type_id``'s record in the data given to :func:`parse_btf`."""
        self._check_id(type_id)
        if type_id == 0:
            raise InputError("BTF: type 0 (void) has no record")
        return self.type_start + WORD * self._offsets[type_id]

    def ids(self, kind: int | None = None) -> Iterator[int]:
        """Type ids (from 1), optionally of one kind, without building objects."""
        words, offsets = self._words, self._offsets
        for i in range(1, len(offsets)):
            if kind is None or (words[offsets[i] + 1] >> 24) & 0x1F == kind:
                yield i

    def find(self, name: str, kind: int | None = None) -> list[int]:
        """Ids of the types called ``name`` (optionally of one kind)."""
        return [i for i in self.ids(kind) if self.name_of(i) == name]

    # --- lookups ---------------------------------------------------------

    def get(self, type_id: int) -> BtfType:
        self._check_id(type_id)
        if type_id == 0:
            return BtfType(None, 0, K.UNKN, 0, 0)
        pos = self._offsets[type_id]
        info = self._words[pos + 1]
        raw_kind = (info >> 24) & 0x1F
        return BtfType(self, type_id, _KIND_OF.get(raw_kind, raw_kind), info, pos)

    def _members(self, t: BtfType) -> list[Member]:
        """Decode the vlen elements after ``t``'s record (bounds were checked at parse)."""
        k = t.kind
        shape = _RECORD_SHAPE.get(k)
        if shape is None:
            return []
        w = self._words
        base = t._pos + RECORD_WORDS + shape[0]
        s = self.string_at
        n = t.vlen
        if k in (K.STRUCT, K.UNION):
            return [Member(s(w[j]), type=w[j + 1], offset=w[j + 2]) for j in range(base, base + 3 * n, 3)]
        if k == K.ENUM:     # kind_flag set: signed values, clear: unsigned
            signed = t.kind_flag
            return [Member(s(w[j]), value=_signed32(w[j + 1]) if signed else w[j + 1])
                    for j in range(base, base + 2 * n, 2)]
        if k == K.ENUM64:
            out = []
            for j in range(base, base + 3 * n, 3):
                val = (w[j + 2] << 32) | w[j + 1]
                if t.kind_flag and val >> 63:
                    val -= 1 << 64
                out.append(Member(s(w[j]), value=val))
            return out
        if k == K.FUNC_PROTO:
            return [Member(s(w[j]), type=w[j + 1]) for j in range(base, base + 2 * n, 2)]
        if k == K.DATASEC:
            return [Member("", type=w[j], offset=w[j + 1], size=w[j + 2]) for j in range(base, base + 3 * n, 3)]
        return []

    def resolve_id(self, type_id: int) -> int:
        """The id reached by skipping typedefs, qualifiers and type tags."""
        walk = _Walk(type_id)
        while self.kind_of(type_id) in _TRANSPARENT_KINDS:
            walk.visit(type_id)
            type_id = self.ref_of(type_id)
        return type_id

    def resolve(self, type_id: int) -> BtfType:
        """Skip typedefs, qualifiers and type tags."""
        return self.get(self.resolve_id(type_id))

    def size_of(self, type_id: int) -> int:
        """Size in bytes (0 for void, functions and unsized kinds).  Arrays
        multiply along the chain of element types, iteratively."""
        walk = _Walk(type_id)
        count = 1
        while True:
            k = self.kind_of(type_id)
            if k in _TRANSPARENT_KINDS:
                walk.visit(type_id)
                type_id = self.ref_of(type_id)
                continue
            if k == K.ARRAY:
                walk.visit(type_id)
                base = self._offsets[type_id] + RECORD_WORDS
                count *= self._words[base + 2]
                if count == 0:
                    return 0
                type_id = self._words[base]
                continue
            if k == K.PTR:
                size = 8
            elif k in _SIZED_KINDS:
                size = self.ref_of(type_id)
            else:
                return 0
            total = count * size
            if total > U32_MAX:
                raise InputError(f"BTF: type {walk.start} is larger than 4 GiB")
            return total

    def is_aggregate(self, type_id: int) -> bool:
        return self.kind_of(self.resolve_id(type_id)) in (K.STRUCT, K.UNION)

    # --- C spellings -----------------------------------------------------

    def c_spelling(self, type_id: int, canonical: bool = False) -> str:
        """A C type name: ``int``, ``const char *``, ``__u32``, ``void (*)(int)``.
        ``canonical`` resolves typedefs (``__u32`` -> ``unsigned int``), as
        clang's canonical types do."""
        return self._spell(type_id, canonical, [MAX_SPELLING_STEPS], set(), 0).strip()

    def _spell(self, type_id: int, canonical: bool, budget: list[int], path: set[int], nesting: int) -> str:
        """Build a declarator from the outside in: ``inner`` is what has been
        wrapped so far (``*``, ``[4]``, ``(int)``), ``prefix`` the qualifiers
        that go before the base type.  ``path`` holds the ids on the way here
        (outer prototypes included): meeting one again is a loop."""
        if nesting > MAX_PROTO_NESTING:
            raise InputError(f"BTF: type {type_id} nests prototypes more than {MAX_PROTO_NESTING} deep")
        added: list[int] = []
        try:
            return self._spell_chain(type_id, canonical, budget, path, nesting, added)
        finally:
            path.difference_update(added)

    def _spell_chain(self, type_id: int, canonical: bool, budget: list[int], path: set[int],
                     nesting: int, added: list[int]) -> str:
        start, inner, prefix = type_id, "", ""
        while True:
            budget[0] -= 1
            if budget[0] < 0 or len(added) >= MAX_TYPE_DEPTH:
                raise InputError(f"BTF: type {start} is too large to spell as C")
            if type_id == 0:
                return prefix + (f"void {inner}".rstrip() if inner else "void")
            if type_id in path:
                raise InputError(f"BTF: type {start} refers to itself in a loop (through type {type_id})")
            path.add(type_id)
            added.append(type_id)
            t = self.get(type_id)
            k = t.kind
            if (k == K.TYPEDEF and canonical) or k == K.TYPE_TAG:   # TYPE_TAG: not part of C spelling
                type_id = t.type
            elif k in (K.INT, K.FLOAT, K.TYPEDEF):                 # a plain name
                return prefix + f"{t.name} {inner}".rstrip()
            elif k in _TAGS or k == K.FWD:                         # FWD: kind_flag -> union
                tag = _TAGS.get(k) or ("union" if t.kind_flag else "struct")
                return prefix + f"{tag} {t.name or '(anon)'} {inner}".rstrip()
            elif k in _QUALIFIERS:
                qual = _QUALIFIERS[k]
                if t.type and self.kind_of(t.type) == K.PTR:       # qualifier on a pointer
                    inner = f"{qual} {inner}".rstrip()
                else:
                    prefix += f"{qual} "
                type_id = t.type
            elif k == K.PTR:
                wrap = t.type and self.kind_of(t.type) in (K.FUNC_PROTO, K.ARRAY)
                inner = f"(*{inner})" if wrap else f"*{inner}"
                type_id = t.type
            elif k == K.ARRAY:
                inner = f"{inner}[{t.nelems}]"
                type_id = t.elem_type
            elif k == K.FUNC_PROTO:
                params = ", ".join(self._spell(m.type, canonical, budget, path, nesting + 1).strip()
                                   for m in t.members) or "void"
                inner = f"{inner}({params})"
                type_id = t.type
            else:
                return prefix + f"{t.kind_name.lower()} {t.name} {inner}".rstrip()


def _signed32(v: int) -> int:
    return v - (1 << 32) if v >> 31 else v


# --- parsing ---------------------------------------------------------------


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _read_layout(data: bytes, hdr_len: int, body: int) -> dict[int, tuple[int, int]]:
    """The optional kind-layout table: kind -> (extra words, words per element)."""
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
        if info_sz % WORD or elem_sz % WORD:
            raise InputError(f"BTF: kind layout gives kind {kind} sizes {info_sz}/{elem_sz}, not multiples of 4")
        out[kind] = (info_sz // WORD, elem_sz // WORD)
    return out


class BtfHeader(NamedTuple):
    """The fixed part of ``struct btf_header``, in :data:`HEADER`'s order."""

    magic: int
    version: int
    flags: int
    hdr_len: int
    type_off: int
    type_len: int
    str_off: int
    str_len: int


def read_header(data: bytes) -> BtfHeader:
    """The header of a little-endian ``.BTF`` section, checked to fit ``data``."""
    if len(data) < BASE_HEADER_LEN:
        raise InputError(f"BTF: {len(data)} bytes is shorter than a BTF header")
    header = BtfHeader(*HEADER.unpack_from(data, 0))
    if header.magic != BTF_MAGIC:
        if header.magic == BYTE_SWAPPED_MAGIC:
            raise InputError("BTF: big-endian BTF is not supported")
        raise InputError(f"BTF: bad magic 0x{header.magic:04x}")
    if header.version != BTF_VERSION:
        raise InputError(f"BTF: unsupported version {header.version}")
    if header.hdr_len < BASE_HEADER_LEN or header.hdr_len > len(data):
        raise InputError(f"BTF: header length {header.hdr_len} does not fit {len(data)} bytes")
    return header


def parse_btf(data: bytes) -> Btf:
    """Parse a little-endian ``.BTF`` section."""
    header = read_header(data)
    hdr_len, type_off, type_len = header.hdr_len, header.type_off, header.type_len
    str_off, str_len = header.str_off, header.str_len
    body = hdr_len
    if body + type_off + type_len > len(data) or body + str_off + str_len > len(data):
        raise InputError("BTF: type or string section runs past the data")
    if type_len % WORD:
        raise InputError(f"BTF: type section length {type_len} is not a multiple of 4")
    strings = bytes(data[body + str_off: body + str_off + str_len])
    if strings and strings[-1] != 0:
        raise InputError("BTF: unterminated string at the end of the string section")
    if strings and strings[0] != 0:
        raise InputError("BTF: the string section does not start with an empty string")
    layout = _read_layout(data, hdr_len, body)
    words = array("I")
    if words.itemsize != WORD:      # pragma: no cover - every CPython platform has a 4-byte "I"
        raise InputError("BTF: this Python has no 4-byte unsigned array type")
    words.frombytes(memoryview(data)[body + type_off: body + type_off + type_len])
    if _BIG_ENDIAN_HOST:
        words.byteswap()
    return Btf(words, _index_types(words, len(strings), layout), strings, body + type_off)


def _index_types(words: array[int], str_len: int, layout: dict[int, tuple[int, int]]) -> array[int]:
    """Walk the records once: check each fits and that its names are inside
    the string section, and note where each starts.  Member names are checked
    a whole record at a time with a strided slice, in C."""
    offsets = array("I", [0])
    n = len(words)
    pos = 0
    while pos < n:
        type_id = len(offsets)
        if type_id > MAX_TYPES:
            raise InputError(f"BTF: more than {MAX_TYPES} types")
        if pos + RECORD_WORDS > n:
            raise InputError(f"BTF: type {type_id} is truncated")
        info = words[pos + 1]
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFFFF
        shape = _RECORD_SHAPE.get(kind)
        if shape is None:
            shape = layout.get(kind)
            if shape is None:
                raise InputError(f"BTF: type {type_id} has kind {kind}, which this reader "
                                 f"does not know (and the BTF has no kind layout to skip it)")
        extra, elem = shape
        rec_end = pos + RECORD_WORDS + extra + vlen * elem
        if rec_end > n:
            raise InputError(f"BTF: type {type_id} ({kind_name(kind)}, vlen {vlen}) runs past the type section")
        name_off = words[pos]
        if vlen and kind in _NAMED_ELEMENTS:
            first = pos + RECORD_WORDS + extra
            name_off = max(name_off, max(words[first:rec_end:elem]))
        if name_off and name_off >= str_len:
            raise InputError(f"BTF: type {type_id}: name offset {name_off} past the string section "
                             f"({str_len} bytes)")
        offsets.append(pos)
        pos = rec_end
    return offsets


# --- edits the object rewriter needs ------------------------------------------


def find_funcs(btf: Btf, name: str) -> list[int]:
    """Ids of every FUNC called ``name`` (a linked object may hold several statics)."""
    return btf.find(name, K.FUNC)


def find_func(btf: Btf, name: str) -> int:
    """The type id of the one FUNC called ``name``."""
    found = find_funcs(btf, name)
    if not found:
        raise InputError(f"BTF: no function named {name!r}")
    if len(found) > 1:
        raise InputError(f"BTF: {len(found)} functions are named {name!r} (type ids {found})")
    return found[0]


def set_func_linkage(btf_bytes: bytes, func_type_id: int, linkage: int) -> bytes:
    """A copy of ``btf_bytes`` in which FUNC ``func_type_id`` has ``linkage``
    (:class:`BtfLinkage`).  A FUNC keeps its linkage in the vlen bits of
    ``info``; nothing else in the section moves."""
    if linkage not in {int(v) for v in BtfLinkage}:
        raise ValueError(f"linkage {linkage} is not one of {[int(v) for v in BtfLinkage]}")
    btf = parse_btf(btf_bytes)
    if btf.kind_of(func_type_id) != K.FUNC:
        raise InputError(f"BTF: type {func_type_id} is {kind_name(btf.kind_of(func_type_id))}, not FUNC")
    info_at = btf.record_offset(func_type_id) + WORD
    info = _u32(btf_bytes, info_at)
    out = bytearray(btf_bytes)
    struct.pack_into("<I", out, info_at, (info & ~0xFFFF) | int(linkage))
    return bytes(out)


def append_string(btf_bytes: bytes, text: str) -> tuple[bytes, int]:
    """A copy of ``btf_bytes`` whose string section also holds ``text``, and
    the string's offset (an existing copy is reused).  Strings come last in
    what compilers and linkers write, so the new one is appended after them;
    BTF laid out otherwise is refused rather than reshuffled."""
    btf = parse_btf(btf_bytes)
    found = btf.strings.find(b"\0" + text.encode() + b"\0")
    if found >= 0:
        return btf_bytes, found + 1
    header = read_header(btf_bytes)
    if header.hdr_len + header.str_off + header.str_len != len(btf_bytes):
        raise InputError("BTF: the string section is not at the end, cannot add a string")
    added = text.encode() + b"\0"
    out = bytearray(btf_bytes)
    out += added
    HEADER.pack_into(out, 0, *header._replace(str_len=header.str_len + len(added)))
    return bytes(out), header.str_len

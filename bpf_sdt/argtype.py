"""The typed description of one probe argument, shared by every consumer
(instrument, trace, list, extract) so that all of them turn a raw register
value into the same C value and print it the same way.

A probe argument reaches a consumer as a 64-bit register, immediate or stack
slot that may hold more bits than its C type (a ``signed char`` loaded by a
zero-extending load, for example; see docs/format.md section 3.3).
:meth:`ArgType.convert` applies the C conversion the prototype promises:
keep the type's width, then sign-extend if the type is signed.

Kinds:

- ``"int"``: integer types, ``signed char`` and ``unsigned char`` included
  (``__s8``/``__u8`` are small integers, not text);
- ``"char"``: plain ``char`` (or an INT with BTF's CHAR encoding bit), the
  type C uses for text; still printed as a number, a consumer MAY add the
  character;
- ``"bool"``: ``_Bool`` (BTF's BOOL encoding), printed ``true``/``false``;
- ``"enum"``: ENUM and ENUM64, printed as the enumerator's name when the value
  has one.  Signedness is BTF's kind_flag; clang before 15 emits none, so its
  enums read as unsigned, and its enumerators likewise: the two agree;
- ``"pointer"``: 8 bytes, unsigned, printed in hex;
- ``"float"``: FLOAT, the value is the IEEE bit pattern;
- ``"other"``: anything a probe should not carry (struct, array, void...).
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast, get_args

from bpf_sdt.errors import InputError

if TYPE_CHECKING:
    from bpf_sdt.btf import Btf

TypeKind = Literal["int", "bool", "char", "enum", "pointer", "float", "other"]
TYPE_KINDS: tuple[str, ...] = get_args(TypeKind)
REGISTER_BYTES = 8                  # a BPF register, immediate or stack slot
U64_MASK = (1 << 64) - 1
POINTER_SIZE = 8
# struct formats for a FLOAT's bit pattern, by size in bytes
_FLOAT_FORMATS = {2: "<e", 4: "<f", 8: "<d"}


class ArgType(NamedTuple):
    """One argument's C type, reduced to what converting and printing need.
    Its kind is one of TYPE_KINDS (the type checker holds code to it;
    :meth:`from_json` checks what it reads)."""

    spelling: str                   # as declared: ``__u32``, ``const char *``
    canonical: str                  # typedefs resolved: ``unsigned int``
    size: int                       # bytes (1, 2, 4, 8; 0 for void)
    signed: bool                    # convert() sign-extends
    kind: TypeKind
    enumerators: tuple[tuple[str, int], ...] = ()

    def check_fields(self) -> None:
        """ValueError unless every field has its type and the kind is one of
        TYPE_KINDS: for one made from stored data (trace's cache), which the
        constructor takes as it is."""
        if not (isinstance(self.spelling, str) and isinstance(self.canonical, str)
                and type(self.size) is int and self.size >= 0 and isinstance(self.signed, bool)):
            raise ValueError(f"malformed argument type {self!r}")
        if self.kind not in TYPE_KINDS:
            raise ValueError(f"unknown argument kind {self.kind!r}")
        if not isinstance(self.enumerators, tuple) or not all(
                isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) and type(e[1]) is int
                for e in self.enumerators):
            raise ValueError(f"malformed enumerators of {self.spelling!r}")

    @property
    def bits(self) -> int:
        """How many bits of the 64-bit raw value the C value uses."""
        if self.kind == "pointer" or not 0 < self.size < REGISTER_BYTES:
            return 8 * REGISTER_BYTES
        return 8 * self.size

    def convert(self, raw: int) -> int:
        """The C value held in a raw 64-bit register value: truncated to the
        type's width, sign-extended if the type is signed.  ``raw`` may be
        given signed or unsigned; only its low 64 bits count."""
        bits = self.bits
        value = raw & ((1 << bits) - 1)
        if self.signed and value >> (bits - 1):
            value -= 1 << bits
        return value

    def format(self, value: int) -> str:
        """``value`` (a C value, as :meth:`convert` returns) as text."""
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "enum":
            name = _first_names(self.enumerators).get(value)
            return name if name is not None else str(value)
        if self.kind in ("int", "char"):
            return str(value)
        if self.kind == "float" and self.size in _FLOAT_FORMATS:
            raw = (value & ((1 << self.bits) - 1)).to_bytes(self.size, "little")
            return repr(struct.unpack(_FLOAT_FORMATS[self.size], raw)[0])
        return f"0x{value & U64_MASK:x}"        # pointers, and what has no better form

    def to_json(self) -> dict[str, Any]:
        """A fresh dict each call: callers may change it."""
        out: dict[str, Any] = {"spelling": self.spelling, "canonical": self.canonical,
                               "size": self.size, "signed": self.signed, "kind": self.kind}
        if self.kind == "enum":
            out["enumerators"] = [{"name": n, "value": v} for n, v in self.enumerators]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArgType:
        """The inverse of :meth:`to_json`; bad data is an InputError."""
        try:
            enumerators = tuple((str(e["name"]), int(e["value"])) for e in data.get("enumerators", ()))
            t = cls(str(data["spelling"]), str(data["canonical"]), int(data["size"]),
                    bool(data["signed"]), cast(TypeKind, data["kind"]), enumerators)
            t.check_fields()                # the kind among them
            return t
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"argument type: malformed JSON ({e})") from None


@functools.lru_cache(maxsize=256)
def _first_names(enumerators: tuple[tuple[str, int], ...]) -> dict[int, str]:
    """value -> the first enumerator with that value (C allows duplicates)."""
    names: dict[int, str] = {}
    for name, value in enumerators:
        names.setdefault(value, name)
    return names


def arg_type_from_btf(btf: Btf, type_id: int) -> ArgType:
    """The ArgType of BTF type ``type_id``, through typedefs and qualifiers
    (walked iteratively by :meth:`Btf.resolve_id`).  The BTF layer is
    imported here: a cached trace decodes its sites' ArgTypes without it."""
    from bpf_sdt.btf import INT_BOOL, INT_CHAR, INT_SIGNED, BtfKind

    spelling = btf.c_spelling(type_id)
    canonical = btf.c_spelling(type_id, canonical=True)
    t = btf.get(btf.resolve_id(type_id))
    if t.kind == BtfKind.INT:
        if t.int_encoding & INT_BOOL:
            return ArgType(spelling, canonical, t.size, False, "bool")
        kind: TypeKind = "char" if t.int_encoding & INT_CHAR or t.name == "char" else "int"
        return ArgType(spelling, canonical, t.size, bool(t.int_encoding & INT_SIGNED), kind)
    if t.kind in (BtfKind.ENUM, BtfKind.ENUM64):
        return ArgType(spelling, canonical, t.size, t.kind_flag, "enum",
                       tuple((m.name, m.value) for m in t.members))
    if t.kind == BtfKind.PTR:
        return ArgType(spelling, canonical, POINTER_SIZE, False, "pointer")
    if t.kind == BtfKind.FLOAT:
        return ArgType(spelling, canonical, t.size, False, "float")
    return ArgType(spelling, canonical, btf.size_of(type_id), False, "other")


def arg_types(btf: Btf, proto_id: int) -> tuple[ArgType, ...]:
    """The ArgTypes of a FUNC_PROTO's parameters, in order."""
    from bpf_sdt.btf import BtfKind

    proto = btf.get(proto_id)
    if proto.kind != BtfKind.FUNC_PROTO:
        raise InputError(f"BTF: type {proto_id} is {proto.kind_name}, not FUNC_PROTO")
    return tuple(arg_type_from_btf(btf, p.type) for p in proto.members)

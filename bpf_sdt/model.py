"""The one data model every stage shares: declarations, sites, argument
locations and findings.  Sources (libclang) and objects (ELF + BTF) both
produce these; check, list, lint and link consume them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

# Defined with the errors, whose messages it escapes: the trace and CLI paths
# import that module first thing, and the model only later (docs/trace.md,
# "Start-up").  Exported here too, for the stages that take it with the model.
from bpf_sdt.errors import escape_text as escape_text

if TYPE_CHECKING:   # only the type: importing argtype costs a warm `lint` BTF's parser
    from bpf_sdt.argtype import ArgType
    from bpf_sdt.inlined import CallSite

# A note informs (exit code 0 whatever the notes); gcc, SARIF and editors
# know all three.
Severity = Literal["error", "warning", "note"]

ArgKind = Literal["reg", "imm", "stack"]


class Declaration(NamedTuple):
    """A probe prototype: from BPF_SDT_DECLAREn in a source or its BTF in an object."""

    name: str
    types: tuple[str, ...]          # C spellings
    sizes: tuple[int, ...] = ()     # bytes, where known
    file: str | None = None
    line: int | None = None
    canonical: tuple[str, ...] = ()  # typedefs resolved, top-level qualifiers dropped (objects)

    def same_prototype(self, other: Declaration) -> bool:
        """Whether two declarations give an observer the same arguments: the
        canonical C types and sizes where both have them, else the spellings."""
        if self.canonical and other.canonical:
            return self.canonical == other.canonical and self.sizes == other.sizes
        return self.types == other.types

    def prototype(self) -> str:
        return f"({', '.join(self.canonical or self.types) or 'void'})"

    @property
    def arity(self) -> int:
        return len(self.types)


class ArgLocation(NamedTuple):
    """Where one argument lives when the NOP executes (one note insn).  A tuple:
    immutable, and hashed in C, since decoding memoizes on it."""

    kind: ArgKind
    reg: int | None = None       # kind "reg": r0..r9
    value: int | None = None     # kind "imm": the sign-extended s32
    offset: int | None = None    # kind "stack": from r10 (negative)
    size: int | None = None      # kind "stack": load width in bytes

    def describe(self) -> str:
        if self.kind == "reg":
            return f"r{self.reg}"
        if self.kind == "imm":
            return f"${self.value}"
        return f"*(u{8 * (self.size or 8)} *)(r10 {'-' if (self.offset or 0) < 0 else '+'} {abs(self.offset or 0)})"

    def to_json(self) -> dict[str, Any]:
        # A fresh dict each time: callers may change what they get.
        return self._json()

    def _json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "reg":
            out["reg"] = self.reg
        elif self.kind == "imm":
            out["value"] = self.value
        else:
            out["offset"] = self.offset
            out["size"] = self.size
        return out


@functools.lru_cache(maxsize=4096)
def _arg_json_text(loc: ArgLocation) -> str:
    return json.dumps(loc._json(), separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _imm_json_text(loc: ArgLocation, t: ArgType) -> str:
    return json.dumps(_typed_arg_json(loc, t), separators=(",", ":"))


def _typed_arg_json_text(loc: ArgLocation, t: ArgType | None) -> str:
    """Only an immediate depends on its type (and hashing a type costs)."""
    return _arg_json_text(loc) if t is None or loc.kind != "imm" else _imm_json_text(loc, t)


def _typed_arg_json(loc: ArgLocation, t: ArgType | None) -> dict[str, Any]:
    """An immediate's `value` at its declared type (`(__u8)255` is 255, not
    the -1 the s32 immediate holds); `raw`, the immediate, when they differ."""
    out = loc._json()
    if loc.kind == "imm" and t is not None and loc.value is not None:
        value = t.convert(loc.value)
        if value != loc.value:
            out["value"] = value
            out["raw"] = loc.value
    return out


def describe_arg(loc: ArgLocation, t: ArgType | None) -> str:
    """Where an argument lives, an immediate as its declared type prints it."""
    if loc.kind == "imm" and t is not None and loc.value is not None:
        return _describe_imm(loc.value, t)
    return _describe(loc)


@functools.lru_cache(maxsize=4096)
def _describe(loc: ArgLocation) -> str:
    return loc.describe()


@functools.lru_cache(maxsize=4096)
def _describe_imm(value: int, t: ArgType) -> str:
    return f"${t.format(t.convert(value))}"


@functools.lru_cache(maxsize=65536)
def json_str(s: str) -> str:
    return json.dumps(s)


_dumps = json.dumps
# json.dumps of one str is this C function behind three Python calls
# (dumps, JSONEncoder.encode, the isinstance test): the same bytes, faster.
encode_str = json.encoder.encode_basestring_ascii


def _percent_safe(text: str) -> str:
    """A constant part of a %-template: a name may hold a '%'."""
    return text.replace("%", "%%")


@functools.lru_cache(maxsize=4096)
def site_json_template(name: str, section: str, args: tuple[ArgLocation, ...], types: tuple[str, ...],
                       observers: tuple[str, ...], arg_types: tuple[ArgType, ...]) -> str:
    """A site's JSON text with what differs from site to site left as
    %-placeholders, in this order: offset (%d), insn (%d), the function's
    JSON string, entry_offset (%d), the symbol's JSON string, the
    file/line/column members (:func:`place_json`) and the inlined_at array
    (:func:`inlined_json`).  What the rest depends on (the probe, its
    section, arguments and types) is shared by many sites, so it is encoded
    once per shape."""
    q = json_str
    typed = [(loc, arg_types[k] if k < len(arg_types) else None) for k, loc in enumerate(args)]
    constant = _percent_safe
    return (f'{{"name":{constant(q(name))},"section":{constant(q(section))},"offset":%d,"insn":%d,'
            f'"function":%s,"args":[{",".join(_typed_arg_json_text(loc, t) for loc, t in typed)}],'
            f'"types":[{constant(",".join(map(q, types)))}],"entry_offset":%d,"symbol":%s,%s,'
            f'"inlined_at":%s,"observers":[{constant(",".join(map(q, observers)))}]}}')


def place_json(file: str | None, line: int | None, column: int | None) -> str:
    """The "file", "line" and "column" members of a site's JSON."""
    return (f'"file":{"null" if file is None else json_str(file)},'
            f'"line":{"null" if line is None else line},"column":{"null" if column is None else column}')


def inlined_json(chain: tuple[CallSite, ...]) -> str:
    return _dumps([c.as_json() for c in chain]) if chain else "[]"


class SiteRecord(NamedTuple):
    """One probe site in an object: one entry of the notes section."""

    name: str
    section: str                 # code section holding the NOP
    offset: int                  # byte offset of the NOP in that section
    function: str                # symbol containing the NOP ("" if none)
    args: tuple[ArgLocation, ...] = ()
    types: tuple[str, ...] = ()  # from BTF, if declared
    entry_offset: int = 0        # byte offset of the entry in the notes section
    symbol: str = ""             # the entry's boundary symbol
    # from .BTF.ext line_info, when the object has it: where the invocation is
    file: str | None = None
    line: int | None = None
    column: int | None = None
    observers: tuple[str, ...] = ()      # what `bpf-sdt instrument` made the site call, in order
    arg_types: tuple[ArgType, ...] = ()  # the declared types, to show immediates at
    # where the inlined function holding the site was called, innermost first (bpf_sdt.inlined)
    inlined_at: tuple[CallSite, ...] = ()

    @property
    def insn_index(self) -> int:
        return self.offset // 8

    @property
    def location(self) -> str:
        """`file:line:column` (or less, as known), or "" without line info."""
        if self.file is None:
            return ""
        here = ":".join(str(p) for p in (self.file, self.line, self.column) if p)
        if self.inlined_at:
            here += " (inlined at " + ", at ".join(map(str, self.inlined_at)) + ")"
        return here

    def typed_args(self) -> Iterator[tuple[ArgLocation, ArgType | None]]:
        types = self.arg_types
        for k, loc in enumerate(self.args):
            yield loc, types[k] if k < len(types) else None

    def describe_args(self) -> list[str]:
        return [describe_arg(loc, t) for loc, t in self.typed_args()]

    def json_text(self) -> str:
        """``json.dumps(self.to_json())``, built from cached pieces: `list --json`
        on 10,000 sites spends most of its time encoding otherwise.  A test
        keeps the two identical; `list` fills the same template without a
        record per site (:func:`site_json_template`)."""
        template = site_json_template(self.name, self.section, self.args, self.types, self.observers,
                                      self.arg_types)
        return template % (self.offset, self.insn_index, json_str(self.function), self.entry_offset,
                           encode_str(self.symbol), place_json(self.file, self.line, self.column),
                           inlined_json(self.inlined_at))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "section": self.section,
            "offset": self.offset,
            "insn": self.insn_index,
            "function": self.function,
            "args": [_typed_arg_json(loc, t) for loc, t in self.typed_args()],
            "types": list(self.types),
            "entry_offset": self.entry_offset,
            "symbol": self.symbol,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "inlined_at": [c.as_json() for c in self.inlined_at],
            "observers": list(self.observers),
        }


class SourceSite(NamedTuple):
    """A BPF_SDT_PROBEn invocation found in C source."""

    name: str
    file: str
    line: int
    column: int
    args: tuple[str, ...]         # argument source text
    function: str
    via: tuple[str, ...] = ()     # the user's macros the probe came through, outermost first

    def to_json(self) -> dict[str, Any]:
        d = self._asdict()
        d["args"] = list(self.args)
        d["via"] = list(self.via)
        return d


class Finding(NamedTuple):
    """One diagnostic.  ``where`` is the place inside ``path``: ``.text+0x18``
    for an object, ``12:5`` (line:column) for a source."""

    path: str
    where: str
    severity: Severity
    message: str
    rule: str

    def render(self) -> str:
        # Objects: "obj.o: .text+0x18: ..."; sources, gcc-style: "f.c:12:5: ...".
        # Paths, places and messages carry names from the input: escaped, so that
        # one finding is one line whatever those names hold.
        sep = ":" if self.where[:1].isdigit() else ": "
        location = f"{self.path}{sep}{self.where}" if self.where else self.path
        return escape_text(f"{location}: {self.severity}: {self.message} [{self.rule}]")

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

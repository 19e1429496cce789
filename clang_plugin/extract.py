"""Extract probe declarations and sites from one BPF C file with libclang.

Declarations come from the expanded AST, not from token text: the
`__sdt_type_<name>` variable's FUNCTIONPROTO (or, under BPF_SDT_DISABLE,
the per-argument typedefs `__bpf_sdt_<name>_argK_t`) gives canonical type
spellings and sizes.  Sites come from BPF_SDT_PROBEn macro instantiations
(PARSE_DETAILED_PROCESSING_RECORD), and each argument's own type from the
`__sdt_vK` variable the macro declares at that site.

The result is plain data (results.py turns it into JSON), so files can be
parsed in child processes and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf_sdt.model import Declaration, Finding, SourceSite

MACRO_RE = re.compile(r"^BPF_SDT_(PROBE|DECLARE)(\d*)$")
TOO_MANY_RE = re.compile(r"^BPF_SDT_(PROBE|DECLARE)(\d+)$")
TYPEDEF_RE = re.compile(r"^__bpf_sdt_(\w+)_arg(\d+)_t$")
NARGS_RE = re.compile(r"^__bpf_sdt_(\w+)_nargs$")
SITE_VAR_RE = re.compile(r"^__sdt_v(\d+)$")

# Argument classes, as the header's static asserts see them.
INT, POINTER, RECORD, OTHER = "int", "pointer", "record", "other"


@dataclass(frozen=True)
class ArgFact:
    """What the compiler knows about one probe argument at one site."""

    text: str
    type: str        # canonical spelling of the expression's own type
    size: int
    cls: str         # INT, POINTER, RECORD, OTHER


@dataclass
class Invocation:
    """A BPF_SDT_* macro use as written: name token, its kind, argument texts."""

    macro: str
    kind: str          # "PROBE" or "DECLARE"
    arity: int         # the n of BPF_SDT_PROBEn (0 for the bare form)
    name: str
    name_is_identifier: bool
    args: tuple[str, ...]
    file: str
    line: int
    column: int


@dataclass
class FileFacts:
    """Everything one parse tells us about one file."""

    file: str
    declarations: list[Declaration] = field(default_factory=list)   # visible in the TU
    local_declarations: list[Declaration] = field(default_factory=list)  # written in this file
    sites: list[SourceSite] = field(default_factory=list)
    site_macros: list[Invocation] = field(default_factory=list)
    site_args: list[list[ArgFact]] = field(default_factory=list)
    declaration_macros: list[Invocation] = field(default_factory=list)
    unreachable: list[tuple[int, int]] = field(default_factory=list)  # (line, column) of sites
    too_many: list[tuple[str, int, int]] = field(default_factory=list)  # (macro, line, column)
    diagnostics: list[Finding] = field(default_factory=list)        # compiler errors not ours
    includes: list[tuple[str, int, int]] = field(default_factory=list)  # (path, mtime_ns, size)
    # A name declared again in the same translation unit, which the compiler
    # rejects: (the later BPF_SDT_DECLARE, the first one).
    redeclared: list[tuple[Invocation, Invocation]] = field(default_factory=list)


def extract(tu, path: Path, source: bytes) -> FileFacts:  # type: ignore[no-untyped-def]
    """Walk a parsed translation unit."""
    from bpf_sdt.clang_plugin.parse import cindex

    ci = cindex()
    K = ci.CursorKind
    facts = FileFacts(str(path))
    main = str(path)
    invocations: list[Invocation] = []
    type_vars: dict[str, Any] = {}                  # name -> the __sdt_type_ VAR_DECL cursor
    typedefs: dict[tuple[str, int], Any] = {}       # (name, k) -> argument k's type
    nargs: dict[str, int] = {}
    functions: list[Any] = []
    for c in tu.cursor.get_children():
        kind = c.kind
        if kind == K.MACRO_INSTANTIATION:
            if MACRO_RE.match(c.spelling):
                invocations.append(_invocation(c, source if _in(c, main) else None))
        elif kind == K.VAR_DECL:
            if c.spelling.startswith("__sdt_type_"):
                type_vars.setdefault(c.spelling[len("__sdt_type_"):], c)   # the first, as decl_at
        elif kind == K.TYPEDEF_DECL:
            m = TYPEDEF_RE.match(c.spelling)
            if m:
                typedefs.setdefault((m.group(1), int(m.group(2))), c.underlying_typedef_type)
        elif kind == K.ENUM_DECL:
            for e in c.get_children():
                m = NARGS_RE.match(e.spelling)
                if m:
                    nargs[m.group(1)] = e.enum_value
        elif kind == K.FUNCTION_DECL and c.is_definition() and _in(c, main):
            functions.append(c)

    decl_at: dict[str, Invocation] = {}
    for inv in invocations:
        if inv.kind == "DECLARE":
            first = decl_at.setdefault(inv.name, inv)
            if first is not inv and (first.file, first.line, first.column) != (inv.file, inv.line, inv.column):
                facts.redeclared.append((inv, first))
            if inv.file == main:
                facts.declaration_macros.append(inv)
    for name, n in nargs.items():
        decl = _declaration(ci, name, n, type_vars.get(name), typedefs, decl_at.get(name))
        facts.declarations.append(decl)
        if decl.file == main:
            facts.local_declarations.append(decl)

    site_vars = _site_variables(ci, functions)
    for inv in invocations:
        if inv.kind != "PROBE" or inv.file != main:
            continue
        func = _enclosing(functions, inv.line, inv.column)
        facts.sites.append(SourceSite(inv.name, main, inv.line, inv.column, inv.args,
                                      func.spelling if func is not None else ""))
        facts.site_macros.append(inv)
        facts.site_args.append(site_vars.get((inv.line, inv.column), []))
    facts.unreachable = _unreachable_sites(ci, functions, {(s.line, s.column) for s in facts.sites})
    facts.too_many = _too_many(ci, tu, main)
    facts.includes = _includes(tu)
    return facts


def _in(c, main: str) -> bool:  # type: ignore[no-untyped-def]
    f = c.location.file
    return f is not None and f.name == main


def _invocation(c, source: bytes | None) -> Invocation:  # type: ignore[no-untyped-def]
    m = MACRO_RE.match(c.spelling)
    assert m
    tokens = list(c.get_tokens())
    # tokens: MACRO ( name , arg , arg ... )
    args: list[list] = [[]]  # type: ignore[type-arg]
    depth = 0
    for t in tokens[2:]:
        s = t.spelling
        if s in "([{" and len(s) == 1:
            depth += 1
        elif s in ")]}" and len(s) == 1:
            if depth == 0:
                break
            depth -= 1
        if s == "," and depth == 0:
            args.append([])
        else:
            args[-1].append(t)
    name_tokens = args[0]
    name = "".join(t.spelling for t in name_tokens)
    is_ident = len(name_tokens) == 1 and str(name_tokens[0].kind).endswith("IDENTIFIER")
    texts = tuple(_text(group, source) for group in args[1:])
    loc = c.location
    return Invocation(c.spelling, m.group(1), int(m.group(2) or 0), name, is_ident, texts,
                      loc.file.name if loc.file else "", loc.line, loc.column)


def _text(tokens: list, source: bytes | None) -> str:  # type: ignore[type-arg]
    if not tokens:
        return ""
    if source is not None:
        start, end = tokens[0].extent.start.offset, tokens[-1].extent.end.offset
        return source[start:end].decode("utf-8", errors="replace")
    return " ".join(t.spelling for t in tokens)


def _declaration(ci, name: str, n: int, var, typedefs: dict, inv: Invocation | None) -> Declaration:  # type: ignore[no-untyped-def, type-arg]
    types: list[str] = []
    sizes: list[int] = []
    proto = var.type.get_pointee() if var is not None else None
    if proto is not None and proto.kind == ci.TypeKind.FUNCTIONPROTO:
        params = list(proto.argument_types())
    else:  # BPF_SDT_DISABLE: no variable, but the typedefs are there
        params = [typedefs[(name, k)] for k in range(1, n + 1) if (name, k) in typedefs]
    for t in params:
        canon = t.get_canonical()
        types.append(canon.spelling)
        sizes.append(canon.get_size())
    return Declaration(name, tuple(types), tuple(sizes), inv.file if inv else None,
                       inv.line if inv else None)


def classify(ci, t) -> str:  # type: ignore[no-untyped-def]
    """The argument class of a type, after arrays and functions decay."""
    canon = t.get_canonical()
    k = canon.kind
    TK = ci.TypeKind
    if k in (TK.POINTER, TK.CONSTANTARRAY, TK.INCOMPLETEARRAY, TK.VARIABLEARRAY,
             TK.FUNCTIONPROTO, TK.FUNCTIONNOPROTO, TK.BLOCKPOINTER):
        return POINTER
    if k == TK.RECORD or k == TK.ELABORATED and canon.get_declaration().kind in (
            ci.CursorKind.STRUCT_DECL, ci.CursorKind.UNION_DECL):
        return RECORD
    if k in (TK.BOOL, TK.CHAR_U, TK.UCHAR, TK.CHAR16, TK.CHAR32, TK.USHORT, TK.UINT, TK.ULONG,
             TK.ULONGLONG, TK.UINT128, TK.CHAR_S, TK.SCHAR, TK.WCHAR, TK.SHORT, TK.INT, TK.LONG,
             TK.LONGLONG, TK.INT128, TK.ENUM):
        return INT
    return OTHER


def _site_variables(ci, functions: list) -> dict[tuple[int, int], list[ArgFact]]:  # type: ignore[no-untyped-def, type-arg]
    """(line, column) of a probe macro -> its arguments' own types."""
    out: dict[tuple[int, int], dict[int, ArgFact]] = {}
    K = ci.CursorKind

    def visit(node) -> None:  # type: ignore[no-untyped-def]
        for ch in node.get_children():
            if ch.kind == K.VAR_DECL:
                m = SITE_VAR_RE.match(ch.spelling)
                if m:
                    kids = list(ch.get_children())
                    e = kids[-1] if kids else None
                    # the implicit conversion to the declared type hides the argument's own type
                    while e is not None and e.kind == K.UNEXPOSED_EXPR:
                        inner = list(e.get_children())
                        if len(inner) != 1:
                            break
                        e = inner[0]
                    loc = ch.location
                    if e is not None:
                        t = e.type
                        out.setdefault((loc.line, loc.column), {})[int(m.group(1))] = ArgFact(
                            "", t.get_canonical().spelling, t.get_canonical().get_size(), classify(ci, t))
            visit(ch)

    for f in functions:
        visit(f)
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def _enclosing(functions: list, line: int, column: int):  # type: ignore[no-untyped-def, type-arg]
    for f in functions:
        s, e = f.extent.start, f.extent.end
        if (s.line, s.column) <= (line, column) <= (e.line, e.column):
            return f
    return None


def _unreachable_sites(ci, functions: list, sites: set[tuple[int, int]]) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def, type-arg]
    """Sites after a return/break/continue/goto in the same block, or under a
    literal `if (0)`: code the compiler drops, so the probe never exists."""
    K = ci.CursorKind
    jumps = (K.RETURN_STMT, K.BREAK_STMT, K.CONTINUE_STMT, K.GOTO_STMT)
    found: list[tuple[int, int]] = []

    def sites_in(node) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
        s, e = node.extent.start, node.extent.end
        return [p for p in sites if (s.line, s.column) <= p <= (e.line, e.column)]

    def visit(node) -> None:  # type: ignore[no-untyped-def]
        kids = list(node.get_children())
        if node.kind == K.COMPOUND_STMT:
            dead = False
            for ch in kids:
                if ch.kind in (K.LABEL_STMT, K.CASE_STMT, K.DEFAULT_STMT):
                    dead = False
                if dead:
                    found.extend(sites_in(ch))
                elif ch.kind in jumps:
                    dead = True
        if node.kind == K.IF_STMT and kids and _is_literal_zero(ci, kids[0]) and len(kids) > 1:
            found.extend(sites_in(kids[1]))
        for ch in kids:
            visit(ch)

    for f in functions:
        visit(f)
    return sorted(set(found))


def _is_literal_zero(ci, node) -> bool:  # type: ignore[no-untyped-def]
    K = ci.CursorKind
    while node.kind in (K.UNEXPOSED_EXPR, K.PAREN_EXPR):
        kids = list(node.get_children())
        if len(kids) != 1:
            return False
        node = kids[0]
    if node.kind != K.INTEGER_LITERAL:
        return False
    toks = [t.spelling for t in node.get_tokens()]
    return toks == ["0"]


def _too_many(ci, tu, main: str) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    """BPF_SDT_PROBE13 and beyond: not macros, so only the tokens show them."""
    out = []
    for t in tu.get_tokens(extent=tu.cursor.extent):
        if t.kind == ci.TokenKind.IDENTIFIER:
            m = TOO_MANY_RE.match(t.spelling)
            if m and int(m.group(2)) > 12:
                loc = t.location
                out.append((t.spelling, loc.line, loc.column))
    return out


def _includes(tu) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    out = []
    for inc in tu.get_includes():
        p = Path(inc.include.name)
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            continue
    return out

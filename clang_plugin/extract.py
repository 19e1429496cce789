"""Extract probe declarations and sites from one BPF C file with libclang.

Declarations come from the expanded AST, not from token text: the
`__sdt_type_<name>` variable's FUNCTIONPROTO (or, under BPF_SDT_DISABLE,
the per-argument typedefs `__bpf_sdt_<name>_argK_t`) gives each argument's
type as declared and its canonical form, as an ArgType.

Sites come from the AST too, wherever the invocation is written: in the file,
in a header it includes, inside the user's own macros (macros inside macros
as well).  Each BPF_SDT_PROBEn expansion is a `do { ... } while (0)` whose
first statements are `_Static_assert`s naming the probe; its `__sdt_vK`
variables give each argument's own type.  libclang reports every node of an
expansion at the outermost invocation, the line the user wrote, which is where
a site is located.  The macro invocations libclang records (the outermost
ones, PARSE_DETAILED_PROCESSING_RECORD) give the argument texts; a user macro
is expanded over its definitions' tokens (macros.py) to name the macros a
probe came through and its arguments as written.

The result is plain data (results.py turns it into JSON), so files can be
parsed in child processes and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpf_sdt.format import TYPE_VAR_PREFIX
from bpf_sdt.model import Declaration, Finding, SourceSite

from .header import (
    ARG_TYPEDEF_RE,
    ARITY_MACRO_RE,
    DECLARATION_ASSERT,
    MACRO_RE,
    NARGS_ASSERT_RE,
    NARGS_RE,
    SITE_ASSERT_RE,
    SITE_VAR_RE,
    UNDECLARED_RE,
)

if TYPE_CHECKING:   # a warm `lint` imports this module for its dataclasses only: no parsing machinery
    from bpf_sdt.argtype import ArgType, TypeKind

    from .macros import ExpandedProbe, MacroTable


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
    """A BPF_SDT_* macro use: name, its kind, argument texts, and where the
    user wrote it (the outermost macro invocation when it came through one)."""

    macro: str
    kind: str          # "PROBE" or "DECLARE"
    arity: int         # the n of BPF_SDT_PROBEn (0 for the bare form)
    name: str
    name_is_identifier: bool
    args: tuple[str, ...]
    file: str
    line: int
    column: int
    via: tuple[str, ...] = ()   # the user's macros it came through, outermost first


@dataclass
class SiteFacts:
    """One probe site in the source: everything the rules and the IR
    comparison need, one record per expansion."""

    site: SourceSite                 # what is cached and printed
    invocation: Invocation
    args: tuple[ArgFact, ...] = ()   # each argument's own type, in order
    emitted: bool = True             # the expansion holds the probe's asm (not BPF_SDT_DISABLE)
    used: bool = True                # its function is emitted: external, or referenced somewhere
    unreachable: bool = False        # after a jump in its block, or under `if (0)`


@dataclass
class FileFacts:
    """Everything one parse tells us about one file."""

    file: str
    declarations: list[Declaration] = field(default_factory=list)   # visible in the TU
    local_declarations: list[Declaration] = field(default_factory=list)  # written in this file
    sites: list[SourceSite] = field(default_factory=list)           # site_facts' sites, for the cache
    site_facts: list[SiteFacts] = field(default_factory=list)       # in the parsing process only
    declaration_macros: list[Invocation] = field(default_factory=list)
    # per declared probe, each argument's class (INT, POINTER, RECORD, OTHER)
    declared_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    too_many: list[tuple[str, int, int]] = field(default_factory=list)  # (macro, line, column)
    diagnostics: list[Finding] = field(default_factory=list)        # compiler errors not ours
    includes: list[tuple[str, int, int]] = field(default_factory=list)  # (path, mtime_ns, size)
    # A name declared again in the same translation unit, which the compiler
    # rejects: (the later BPF_SDT_DECLARE, the first one).
    redeclared: list[tuple[Invocation, Invocation]] = field(default_factory=list)
    # Probe names used where this parse does not compile them (a preprocessor
    # branch not taken, a macro never invoked): not "never probed".
    mentioned: set[str] = field(default_factory=set)


Where = tuple[str, int, int]   # (file, line, column) of an expansion


def extract(tu, path: Path, source: bytes) -> FileFacts:  # type: ignore[no-untyped-def]
    """Walk a parsed translation unit."""
    from .parse import cindex

    ci = cindex()
    K = ci.CursorKind
    facts = FileFacts(str(path))
    main = str(path)
    invocations: list[Invocation] = []
    type_vars: dict[str, Any] = {}                  # name -> the __sdt_type_ VAR_DECL cursor
    typedef_cursors: list[Any] = []                 # spelled only if a declaration needs them
    nargs: dict[str, int] = {}
    functions: list[Any] = []
    # every macro definition and outermost invocation, for user macros that
    # hold probes (indexed only if one does)
    definitions: list[tuple[int, Any]] = []
    instantiations: list[tuple[int, Any]] = []
    for order, c in _top_level(ci, tu):
        kind = c.kind
        if kind == K.MACRO_INSTANTIATION:
            instantiations.append((order, c))
            if MACRO_RE.match(c.spelling):
                invocations.append(_invocation(c, source if _in(c, main) else None))
        elif kind == K.MACRO_DEFINITION:
            definitions.append((order, c))
        elif kind == K.VAR_DECL:
            if c.spelling.startswith(TYPE_VAR_PREFIX):
                type_vars.setdefault(c.spelling[len(TYPE_VAR_PREFIX):], c)   # the first, as decl_at
        elif kind == K.TYPEDEF_DECL:
            typedef_cursors.append(c)   # vmlinux.h has tens of thousands: not spelled now
        elif kind == K.ENUM_DECL:
            # `enum { __bpf_sdt_<name>_nargs = N }` has one enumerator: look
            # at the first only (vmlinux.h's enums have tens of thousands)
            e = _first_child(ci, c)
            m = NARGS_RE.match(e.spelling) if e is not None else None
            if m:
                nargs[m.group(1)] = e.enum_value
        elif kind == K.FUNCTION_DECL and c.is_definition() and not c.location.is_in_system_header:
            functions.append(c)

    decl_at: dict[str, Invocation] = {}
    for inv in invocations:
        if inv.kind == "DECLARE":
            first = decl_at.setdefault(inv.name, inv)
            if first is not inv and (first.file, first.line, first.column) != (inv.file, inv.line, inv.column):
                facts.redeclared.append((inv, first))
            facts.declaration_macros.append(inv)
    typedefs = _probe_typedefs(typedef_cursors) if set(nargs) - set(type_vars) else {}
    for name, n in nargs.items():
        decl, classes = _declaration(ci, name, n, type_vars.get(name), typedefs, decl_at.get(name))
        facts.declarations.append(decl)
        facts.declared_classes[name] = classes
        if decl.file == main:
            facts.local_declarations.append(decl)

    walk = _walk_functions(ci, functions)
    direct = [inv for inv in invocations if inv.kind == "PROBE"]
    table = _LazyMacros(definitions, instantiations)
    facts.site_facts = _sites(walk, direct, table, _undeclared_at(tu))
    facts.sites = [s.site for s in facts.site_facts]
    facts.mentioned = _mentioned(tu, main, source)
    facts.too_many = _too_many(ci, tu, main)
    facts.includes = _includes(tu)
    return facts


def _top_level(ci, tu: Any) -> list[tuple[int, Any]]:  # type: ignore[no-untyped-def]
    """(order, cursor) of the translation unit's top-level cursors of the
    kinds extract reads.  A program including vmlinux.h has tens of thousands
    of others (structs, unions); get_children makes each a checked Python
    object, this visitor drops them on the kind field alone."""
    K = ci.CursorKind
    wanted = {k.value for k in (K.MACRO_INSTANTIATION, K.MACRO_DEFINITION, K.VAR_DECL, K.TYPEDEF_DECL,
                                K.ENUM_DECL, K.FUNCTION_DECL)}
    root = tu.cursor
    out: list[tuple[int, Any]] = []
    order = [0]

    def visitor(child: Any, _parent: Any, found: list[tuple[int, Any]]) -> int:
        order[0] += 1
        if child._kind_id in wanted:
            child._tu = root._tu        # keeps the translation unit alive, as get_children does
            found.append((order[0], child))
        return 1                        # CXChildVisit_Continue

    ci.conf.lib.clang_visitChildren(root, ci.callbacks["cursor_visit"](visitor), out)
    return out


def _first_child(ci, cursor: Any) -> Any:  # type: ignore[no-untyped-def]
    """A cursor's first child, without visiting the others (get_children
    collects them all)."""
    found: list[Any] = []

    def visitor(child: Any, _parent: Any, out: list[Any]) -> int:
        child._tu = cursor._tu          # keeps the translation unit alive, as get_children does
        out.append(child)
        return 0                        # CXChildVisit_Break

    ci.conf.lib.clang_visitChildren(cursor, ci.callbacks["cursor_visit"](visitor), found)
    return found[0] if found else None


def _probe_typedefs(cursors: list[Any]) -> dict[tuple[str, int], Any]:
    """(name, k) -> argument k's declared type, from the header's per-argument
    typedefs: under BPF_SDT_DISABLE the only record of the types."""
    out: dict[tuple[str, int], Any] = {}
    for c in cursors:
        m = ARG_TYPEDEF_RE.match(c.spelling)
        if m:
            out.setdefault((m.group(1), int(m.group(2))), c.underlying_typedef_type)
    return out


def _in(c, main: str) -> bool:  # type: ignore[no-untyped-def]
    f = c.location.file
    return f is not None and f.name == main


def _where(c) -> Where:  # type: ignore[no-untyped-def]
    loc = c.location
    return (loc.file.name if loc.file else "", loc.line, loc.column)


def _invocation(c, source: bytes | None) -> Invocation:  # type: ignore[no-untyped-def]
    from .macros import split_args

    m = MACRO_RE.match(c.spelling)
    assert m
    tokens = list(c.get_tokens())
    # tokens: MACRO ( name , arg , arg ... )
    groups, _ = split_args(tokens, 1)
    groups = groups or [[]]
    name_tokens = groups[0]
    name = "".join(t.spelling for t in name_tokens)
    is_ident = len(name_tokens) == 1 and str(name_tokens[0].kind).endswith("IDENTIFIER")
    texts = tuple(_text(group, source) for group in groups[1:])
    file, line, column = _where(c)
    return Invocation(c.spelling, m.group(1), int(m.group(2) or 0), name, is_ident, texts, file, line, column)


def _text(tokens: list, source: bytes | None) -> str:  # type: ignore[type-arg]
    if not tokens:
        return ""
    if source is not None:
        start, end = tokens[0].extent.start.offset, tokens[-1].extent.end.offset
        return source[start:end].decode("utf-8", errors="replace")
    from .macros import tokens_text

    return tokens_text([t.spelling for t in tokens])


# --- declarations ------------------------------------------------------------------


def _declaration(ci, name: str, n: int, var, typedefs: dict, inv: Invocation | None  # type: ignore[no-untyped-def, type-arg]
                 ) -> tuple[Declaration, tuple[str, ...]]:
    proto = var.type.get_pointee() if var is not None else None
    if proto is not None and proto.kind == ci.TypeKind.FUNCTIONPROTO:
        params = list(proto.argument_types())
    else:  # BPF_SDT_DISABLE: no variable, but the typedefs are there (as `typeof(T)`: canonical only)
        params = [typedefs[(name, k)].get_canonical() for k in range(1, n + 1) if (name, k) in typedefs]
    types = tuple(arg_type(ci, t) for t in params)
    decl = Declaration(name, tuple(t.spelling for t in types), tuple(t.size for t in types),
                       inv.file if inv else None, inv.line if inv else None,
                       canonical=tuple(t.canonical for t in types))
    return decl, tuple(classify(ci, t) for t in params)


_FLOAT_KINDS = ("FLOAT", "DOUBLE", "LONGDOUBLE", "HALF", "FLOAT16", "BFLOAT16", "FLOAT128", "IBM128")
_SIGNED_KINDS = ("CHAR_S", "SCHAR", "WCHAR", "SHORT", "INT", "LONG", "LONGLONG", "INT128")
_UNSIGNED_KINDS = ("CHAR_U", "UCHAR", "CHAR16", "CHAR32", "USHORT", "UINT", "ULONG", "ULONGLONG", "UINT128")


def _kinds(ci, names: tuple[str, ...]) -> set[Any]:  # type: ignore[no-untyped-def]
    return {getattr(ci.TypeKind, n) for n in names if hasattr(ci.TypeKind, n)}


def arg_type(ci, t) -> ArgType:  # type: ignore[no-untyped-def]
    """The shared typed description of a C type libclang resolved: what
    bpf_sdt.argtype builds from BTF for the same declaration."""
    from bpf_sdt.argtype import POINTER_SIZE, ArgType

    TK = ci.TypeKind
    canon = t.get_canonical()
    k = canon.kind
    size = max(canon.get_size(), 0)     # negative: incomplete or void
    kind: TypeKind = "other"
    signed = False
    enumerators: tuple[tuple[str, int], ...] = ()
    if k == TK.BOOL:
        kind = "bool"
    elif k in (TK.CHAR_S, TK.CHAR_U):
        kind, signed = "char", k == TK.CHAR_S
    elif k in _kinds(ci, _SIGNED_KINDS) or k in _kinds(ci, _UNSIGNED_KINDS):
        kind, signed = "int", k in _kinds(ci, _SIGNED_KINDS)
    elif k == TK.ENUM:
        decl = canon.get_declaration()
        kind = "enum"
        signed = decl.enum_type.get_canonical().kind in _kinds(ci, _SIGNED_KINDS)
        enumerators = tuple((e.spelling, e.enum_value) for e in decl.get_children()
                            if e.kind == ci.CursorKind.ENUM_CONSTANT_DECL)
    elif classify(ci, canon) == POINTER:
        kind, size = "pointer", POINTER_SIZE
    elif k in _kinds(ci, _FLOAT_KINDS):
        kind = "float"
    return ArgType(t.spelling, canon.spelling, size, signed, kind, enumerators)


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


# --- the function bodies -------------------------------------------------------------


class _AstSite:
    """One BPF_SDT_PROBEn expansion found in a function body.  (Plain
    classes, not dataclasses, here: a warm `lint` imports this module and
    pays for every dataclass it defines.)"""

    __slots__ = ("name", "arity", "where", "function", "args", "emitted", "unreachable", "exprs")

    def __init__(self, name: str, arity: int | None, where: Where, function: Any, unreachable: bool) -> None:
        self.name = name
        self.arity = arity                   # from the count assertion, when the name is declared
        self.where = where
        self.function = function             # the FUNCTION_DECL cursor
        self.args: dict[int, ArgFact] = {}
        self.emitted = False
        self.unreachable = unreachable
        self.exprs: list[Any] = []           # the argument expressions


class _Walk:
    __slots__ = ("sites", "referenced", "functions")

    def __init__(self, sites: list[_AstSite], referenced: set[str], functions: list[Any]) -> None:
        self.sites = sites
        self.referenced = referenced         # names of everything a function body refers to
        self.functions = functions


def _walk_functions(ci, functions: list[Any]) -> _Walk:  # type: ignore[no-untyped-def]
    """One pass over every function body outside system headers: the probe
    expansions, which of them cannot be reached, and what is referenced."""
    K = ci.CursorKind
    sites: list[_AstSite] = []
    referenced: set[str] = set()
    jumps = (K.RETURN_STMT, K.BREAK_STMT, K.CONTINUE_STMT, K.GOTO_STMT)
    restarts = (K.LABEL_STMT, K.CASE_STMT, K.DEFAULT_STMT)

    def visit(node: Any, func: Any, dead: bool) -> None:
        kind = node.kind
        if kind == K.DECL_REF_EXPR:
            referenced.add(node.spelling)
            return
        kids = list(node.get_children())
        if kind == K.DO_STMT:
            site = _site_of(ci, node, kids, func, dead)
            if site is not None:
                sites.append(site)
                for expr in site.exprs:   # the arguments as written: they may call functions, or hold probes
                    visit(expr, func, dead)
                return
        if kind == K.COMPOUND_STMT:
            after_jump = False
            for ch in kids:
                if ch.kind in restarts:
                    after_jump = False
                visit(ch, func, dead or after_jump)
                if ch.kind in jumps:
                    after_jump = True
            return
        if kind == K.IF_STMT and len(kids) > 1 and _is_literal_zero(ci, kids[0]):
            visit(kids[0], func, dead)
            visit(kids[1], func, True)
            for ch in kids[2:]:
                visit(ch, func, dead)
            return
        for ch in kids:
            visit(ch, func, dead)

    for f in functions:
        visit(f, f, False)
    return _Walk(sites, referenced, functions)


def _site_of(ci, node: Any, kids: list[Any], func: Any, dead: bool) -> _AstSite | None:  # type: ignore[no-untyped-def]
    """The probe a `do { } while (0)` expands, if it is one.  Only the
    expansion's statements are read, never its expressions: the header's
    expansion is large, and this runs for every site."""
    K = ci.CursorKind
    body = kids[0] if kids and kids[0].kind == K.COMPOUND_STMT else None
    if body is None:
        return None
    stmts = list(body.get_children())
    first = next(iter(stmts[0].get_children()), None) if stmts and stmts[0].kind == K.DECL_STMT else None
    if first is None or first.kind != K.STATIC_ASSERT:
        return None
    # The first assertion names the probe; it counts the arguments unless the
    # name is undeclared (the compiler dropped that one).
    message = next((c.spelling for c in first.get_children() if c.kind == K.STRING_LITERAL), "")
    m = SITE_ASSERT_RE.match(message)
    if m is None or DECLARATION_ASSERT in message:
        return None
    n = NARGS_ASSERT_RE.search(message)
    site = _AstSite(m.group(1), int(n.group(1)) if n else None, _where(node), func, dead)
    _collect_site(ci, stmts, site)
    return site


def _collect_site(ci, stmts: list[Any], site: _AstSite) -> None:  # type: ignore[no-untyped-def]
    """The expansion's `__sdt_vK` variables (each argument's own type and its
    expression) and whether it holds an asm statement (the probe itself,
    absent under BPF_SDT_DISABLE).  They sit in the body, or in the branches
    of its `if`s (BPF_SDT_DISABLE's `if (0)`, the split forms' placements)."""
    K = ci.CursorKind
    todo = list(stmts)
    while todo:
        stmt = todo.pop()
        kind = stmt.kind
        if kind == K.ASM_STMT:
            site.emitted = True
        elif kind == K.DECL_STMT:
            for var in stmt.get_children():
                m = SITE_VAR_RE.match(var.spelling) if var.kind == K.VAR_DECL else None
                if m:
                    found = _arg_fact(ci, var)
                    if found is not None:
                        site.args.setdefault(int(m.group(1)), found[0])
                        site.exprs.append(found[1])
        elif kind in (K.IF_STMT, K.COMPOUND_STMT):
            todo += [c for c in stmt.get_children() if c.kind in _STATEMENT_KINDS(ci)]


@cache
def _STATEMENT_KINDS(ci) -> frozenset[Any]:  # type: ignore[no-untyped-def]  # noqa: N802
    K = ci.CursorKind
    return frozenset((K.ASM_STMT, K.DECL_STMT, K.IF_STMT, K.COMPOUND_STMT))


def _arg_fact(ci, var: Any) -> tuple[ArgFact, Any] | None:  # type: ignore[no-untyped-def]
    """An argument's own type, and the expression as written."""
    K = ci.CursorKind
    kids = list(var.get_children())
    e = kids[-1] if kids else None
    # the implicit conversion to the declared type hides the argument's own type
    while e is not None and e.kind == K.UNEXPOSED_EXPR:
        inner = list(e.get_children())
        if len(inner) != 1:
            break
        e = inner[0]
    if e is None:
        return None
    t = e.type.get_canonical()
    return ArgFact("", t.spelling, t.get_size(), classify(ci, t)), e


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


# --- sites: the AST's expansions with the invocations' texts --------------------------


class _LazyMacros:
    """The macro table, indexed on first use only: a file whose probes are
    all written directly never pays for it."""

    def __init__(self, definitions: list[tuple[int, Any]], instantiations: list[tuple[int, Any]]) -> None:
        self._args = (definitions, instantiations)
        self._table: MacroTable | None = None

    @property
    def table(self) -> MacroTable:
        if self._table is None:
            from .macros import MacroTable

            self._table = MacroTable(*self._args)
        return self._table


def _undeclared_at(tu: Any) -> list[Where]:
    """Where the compiler met a probe name never declared: the expansion lost
    the assertion naming the probe, so only the error says a probe is there."""
    out = []
    for d in tu.diagnostics:
        if UNDECLARED_RE.search(d.spelling):
            loc = d.location
            out.append((loc.file.name if loc.file else "", loc.line, loc.column))
    return out


def _sites(walk: _Walk, direct: list[Invocation], macros: _LazyMacros, undeclared: list[Where]) -> list[SiteFacts]:
    """Every expansion the AST holds, paired with its invocation as written;
    plus invocations the AST lost (an undeclared name: the compiler dropped
    the assertion that names it)."""
    by_where: dict[Where, list[_AstSite]] = {}
    for s in walk.sites:
        by_where.setdefault(s.where, []).append(s)
    direct_at: dict[Where, list[Invocation]] = {}
    for inv in direct:
        direct_at.setdefault((inv.file, inv.line, inv.column), []).append(inv)
    names = _FunctionNames(walk.functions, macros)
    out: list[SiteFacts] = []
    for where in dict.fromkeys([*by_where, *direct_at, *undeclared]):   # source order of first appearance
        found = by_where.get(where, [])
        written = direct_at.get(where)
        if written is None:
            written = [_from_expansion(e, where) for e in macros.table.probes_at(where)]
        out += _pair(found, written, where, walk, names)
    out.sort(key=lambda s: (s.site.file, s.site.line, s.site.column))
    return out


def _from_expansion(e: ExpandedProbe, where: Where) -> Invocation:
    return Invocation(e.macro, "PROBE", e.arity, e.name, e.name_is_identifier, e.args, *where, via=e.via)


def _pair(found: list[_AstSite], written: list[Invocation], where: Where, walk: _Walk,
          names: _FunctionNames) -> list[SiteFacts]:
    """Match expansions with invocations by name, in order."""
    out: list[SiteFacts] = []
    pending = list(written)
    for ast in found:
        inv = next((i for i in pending if i.name == ast.name), None)
        if inv is None:   # the expansion is the truth; its texts could not be recovered
            arity = ast.arity if ast.arity is not None else len(ast.args)
            inv = Invocation(f"BPF_SDT_PROBE{arity}", "PROBE", arity, ast.name, True,
                             tuple("" for _ in range(arity)), *where)
        else:
            pending.remove(inv)
        args = tuple(ArgFact(inv.args[k - 1] if k - 1 < len(inv.args) else "", f.type, f.size, f.cls)
                     for k, f in sorted(ast.args.items()))
        function = names.user_name(ast.function)
        out.append(SiteFacts(_source_site(inv, function), inv, args, ast.emitted,
                             _used(ast.function, walk.referenced), ast.unreachable))
    for inv in pending:   # no expansion: the name is undeclared, or the site did not compile
        function = names.enclosing(inv)
        out.append(SiteFacts(_source_site(inv, function), inv, (), False, True, False))
    return out


def _source_site(inv: Invocation, function: str) -> SourceSite:
    return SourceSite(inv.name, inv.file, inv.line, inv.column, inv.args, function, inv.via)


def _used(func: Any, referenced: set[str]) -> bool:
    """Whether the compiler emits the function's code: external functions
    always, static ones when something refers to them (an unused static
    inline helper in a header has no code, and its probes no sites)."""
    return str(func.linkage).endswith("EXTERNAL") or func.spelling in referenced


class _FunctionNames:
    """The name the user gave a function.  A macro such as libbpf's
    BPF_PROG(name, ...) defines `name` and an inner `____name` that holds the
    body, both at the macro's invocation; the object keeps only `name` (the
    inner one is always inlined), so that is the name to report."""

    def __init__(self, functions: list[Any], macros: _LazyMacros) -> None:
        self._functions = functions
        self._macros = macros
        self._at: dict[Where, list[str]] = {}
        for f in functions:
            self._at.setdefault(_where(f), []).append(f.spelling)

    def user_name(self, func: Any) -> str:
        name: str = func.spelling
        siblings = self._at.get(_where(func), [])
        if len(siblings) < 2:
            return name
        written = self._macros.table.identifiers_at(_where(func))
        if name in written:
            return name
        return next((s for s in siblings if s in written), name)

    def enclosing(self, inv: Invocation) -> str:
        pos = (inv.line, inv.column)
        for f in self._functions:
            s, e = f.extent.start, f.extent.end
            if (s.file.name if s.file else "") == inv.file and (s.line, s.column) <= pos <= (e.line, e.column):
                return self.user_name(f)
        return ""


_PROBE_USE_RE = re.compile(rb"\bBPF_SDT_PROBE\d*\s*\(\s*([A-Za-z_]\w*)")
_DEFINE_RE = re.compile(rb"^[ \t]*#[ \t]*define\b(?:[^\n]*\\\r?\n)*[^\n]*", re.M)


def _mentioned(tu: Any, main: str, source: bytes) -> set[str]:
    """Probe names the file uses where this parse does not compile them:
    preprocessor branches not taken (libclang's skipped ranges) and macro
    definitions (a wrapper whose invocations are all in such branches)."""
    from .parse import skipped_ranges

    spans = [source[start:end] for start, end in skipped_ranges(tu, main)]
    spans += [m.group(0) for m in _DEFINE_RE.finditer(source)] if b"define" in source else []
    return {m.group(1).decode("utf-8", "surrogateescape") for span in spans for m in _PROBE_USE_RE.finditer(span)}


def _too_many(ci, tu, main: str) -> list[tuple[str, int, int]]:  # type: ignore[no-untyped-def]
    """BPF_SDT_PROBE13 and beyond: not macros, so only the tokens show them."""
    out = []
    for t in tu.get_tokens(extent=tu.cursor.extent):
        if t.kind == ci.TokenKind.IDENTIFIER:
            m = ARITY_MACRO_RE.match(t.spelling)
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

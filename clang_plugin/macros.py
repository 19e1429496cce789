"""The probe invocations behind a user's own macro, as written.

libclang's detailed preprocessing record holds the outermost macro
invocations only: `LB_DROP(x)` where the user wrote it, never the
`BPF_SDT_PROBE4(lb_drop, __LINE__, p, 1, 2)` inside LB_DROP's definition.
The AST has the expansion (name, argument types, location) but not the
argument texts or the macros it came through.  This module recovers those by
expanding the outermost invocation over the definitions' tokens: parameters
are replaced by the invocation's arguments, `#` and `##` are applied, and
every macro met is expanded in turn (never one already being expanded, as in
C), until BPF_SDT_PROBEn invocations appear.

It is an approximation of the preprocessor that only has to name probes and
show texts: the AST stays the truth about which sites exist (extract.py pairs
the two by name and falls back to the AST's facts when this finds nothing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .header import PROBE_MACRO_RE

# Deeper macro nesting than this is not followed (C has no limit, real code
# stays far below; a bound keeps a hostile file from recursing forever).
MAX_DEPTH = 32
VA_ARGS = "__VA_ARGS__"
# No space is put after these, or before the closing ones, when tokens are joined.
_OPENERS = {"(", "[", "{", ".", "->", "!", "~", "#"}
_CLOSERS = {")", "]", "}", ",", ";", ".", "->", "++", "--"}
_UNARY = {"&", "*", "-", "+"}

Where = tuple[str, int, int]


class Tok(NamedTuple):
    spelling: str
    ident: bool       # an identifier or keyword: a candidate macro name or parameter


@dataclass(frozen=True)
class ExpandedProbe:
    macro: str                   # BPF_SDT_PROBEn as it appears in the expansion
    arity: int
    name: str
    name_is_identifier: bool
    args: tuple[str, ...]        # argument texts, parameters replaced
    via: tuple[str, ...]         # the user's macros it came through, outermost first


@dataclass(frozen=True)
class Definition:
    params: tuple[str, ...] | None   # None: object-like
    variadic: bool                   # the last parameter takes the rest
    body: tuple[Tok, ...]


def split_args(tokens: Sequence[Any], open_at: int) -> tuple[list[list[Any]] | None, int]:
    """The arguments of a macro call whose `(` is at `open_at`, split at the
    commas outside parentheses (C's rule: brackets and braces do not
    protect a comma), and the index after the closing `)`.  None when
    `open_at` is not a `(`.  An unclosed call takes the rest."""
    if open_at >= len(tokens) or tokens[open_at].spelling != "(":
        return None, open_at
    groups: list[list[Any]] = [[]]
    depth = 0
    for i in range(open_at + 1, len(tokens)):
        s = tokens[i].spelling
        if s == "(":
            depth += 1
        elif s == ")":
            if depth == 0:
                return groups, i + 1
            depth -= 1
        elif s == "," and depth == 0:
            groups.append([])
            continue
        groups[-1].append(tokens[i])
    return groups, len(tokens)


def tokens_text(spellings: Sequence[str]) -> str:
    """Tokens joined the way C is usually written: `c[0] + 1`, `f(a, b)`, `&(x)`."""
    out: list[str] = []
    prev = ""
    operand_start = True        # where an operand begins, `&`, `*`, `-`, `+` are unary
    prev_unary = False
    for s in spellings:
        if out and prev not in _OPENERS and s not in _CLOSERS and s != "[" and not prev_unary \
                and not (s == "(" and (_word(prev) or prev == ")")):
            out.append(" ")
        out.append(s)
        prev_unary = s in _UNARY and operand_start
        operand_start = prev_unary or not (_word(s) or s in (")", "]"))
        prev = s
    return "".join(out)


def _word(s: str) -> bool:
    return bool(s) and (s[0].isalnum() or s[0] == "_")


class MacroTable:
    """The translation unit's macro definitions and outermost invocations,
    indexed on first use."""

    def __init__(self, definitions: list[tuple[int, Any]], instantiations: list[tuple[int, Any]]) -> None:
        # (order among the top-level cursors, cursor): a definition applies
        # to the invocations after it, until the next definition of the name.
        self._raw_definitions = definitions
        self._definitions: dict[str, list[tuple[int, Any]]] | None = None
        self._parsed: dict[int, Definition | None] = {}
        self._instantiations: dict[Where, list[tuple[int, Any]]] = {}
        for order, c in instantiations:
            loc = c.location
            self._instantiations.setdefault((loc.file.name if loc.file else "", loc.line, loc.column), []).append(
                (order, c))

    def identifiers_at(self, where: Where) -> set[str]:
        """The identifiers of the outermost invocations at `where`."""
        return {t.spelling for _, c in self._instantiations.get(where, []) for t in _tokens(c) if t.ident}

    def probes_at(self, where: Where) -> list[ExpandedProbe]:
        """The BPF_SDT_PROBEn invocations the outermost invocations at
        `where` expand to, in order."""
        out: list[ExpandedProbe] = []
        for order, c in self._instantiations.get(where, []):
            out += self._iter(_tokens(c), order, (), 0)
        return out

    def _iter(self, tokens: Sequence[Tok], order: int, via: tuple[str, ...], depth: int) -> Iterator[ExpandedProbe]:
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if not t.ident:
                i += 1
                continue
            m = PROBE_MACRO_RE.match(t.spelling)
            if m:
                groups, end = split_args(tokens, i + 1)
                if groups is None:
                    i += 1
                    continue
                name = groups[0]
                yield ExpandedProbe(t.spelling, int(m.group(1) or 0), "".join(x.spelling for x in name),
                                    len(name) == 1 and name[0].ident,
                                    tuple(tokens_text([x.spelling for x in g]) for g in groups[1:]), via)
                i = end
                continue
            d = self._definition(t.spelling, order) if depth < MAX_DEPTH and t.spelling not in via else None
            if d is None:
                i += 1
                continue
            if d.params is None:
                body: Sequence[Tok] = d.body
                i += 1
            else:
                groups, end = split_args(tokens, i + 1)
                if groups is None:      # a function-like macro's name alone is not an invocation
                    i += 1
                    continue
                body = _substitute(d, groups)
                i = end
            yield from self._iter(body, order, (*via, t.spelling), depth + 1)

    def _definition(self, name: str, order: int) -> Definition | None:
        if self._definitions is None:
            self._definitions = {}
            for o, c in self._raw_definitions:
                self._definitions.setdefault(c.spelling, []).append((o, c))
        best = None
        for o, c in self._definitions.get(name, ()):
            if o < order:
                best = (o, c)
        if best is None:
            return None
        if best[0] not in self._parsed:
            self._parsed[best[0]] = _parse_definition(best[1])
        return self._parsed[best[0]]


def _tokens(cursor: Any) -> list[Tok]:
    return [Tok(t.spelling, _is_ident(t)) for t in cursor.get_tokens()]


def _is_ident(t: Any) -> bool:
    kind = str(t.kind)
    return kind.endswith("IDENTIFIER") or kind.endswith("KEYWORD")


def _parse_definition(cursor: Any) -> Definition | None:
    raw = list(cursor.get_tokens())
    if not raw:
        return None
    toks = [Tok(t.spelling, _is_ident(t)) for t in raw]
    # Function-like only when `(` touches the name: `#define F (x)` is object-like.
    if len(raw) > 1 and toks[1].spelling == "(" and raw[1].extent.start.offset == raw[0].extent.end.offset:
        params: list[str] = []
        variadic = False
        i = 2
        while i < len(toks) and toks[i].spelling != ")":
            s = toks[i].spelling
            if s == "...":
                variadic = True
                if not params or toks[i - 1].spelling == ",":
                    params.append(VA_ARGS)          # `...`; GNU `args...` names it
            elif s != ",":
                params.append(s)
            i += 1
        return Definition(tuple(params), variadic, tuple(toks[i + 1:]))
    return Definition(None, False, tuple(toks[1:]))


def _substitute(d: Definition, groups: list[list[Tok]]) -> list[Tok]:
    """The body with parameters replaced by the arguments; `#p` stringified,
    `a ## b` pasted (GNU: `, ## args` drops the comma when args is empty)."""
    assert d.params is not None
    args: dict[str, list[Tok]] = {}
    for k, p in enumerate(d.params):
        if d.variadic and k == len(d.params) - 1:
            rest = groups[k:]
            joined: list[Tok] = []
            for j, g in enumerate(rest):
                if j:
                    joined.append(Tok(",", False))
                joined += g
            args[p] = joined
        else:
            args[p] = groups[k] if k < len(groups) else []
    out: list[Tok] = []
    body = d.body
    i = 0
    while i < len(body):
        t = body[i]
        if t.spelling == "#" and i + 1 < len(body) and body[i + 1].spelling in args:
            text = tokens_text([x.spelling for x in args[body[i + 1].spelling]]).replace("\\", "\\\\")
            out.append(Tok('"' + text.replace('"', '\\"') + '"', False))
            i += 2
            continue
        if t.spelling == "##" and out and i + 1 < len(body):
            rhs_tok = body[i + 1]
            rhs = args.get(rhs_tok.spelling, [rhs_tok]) if rhs_tok.ident else [rhs_tok]
            if not rhs:
                if out[-1].spelling == "," and rhs_tok.spelling in args:
                    out.pop()
            else:
                lhs = out.pop()
                pasted = lhs.spelling + rhs[0].spelling
                out.append(Tok(pasted, _word(pasted)))
                out += rhs[1:]
            i += 2
            continue
        if t.ident and t.spelling in args:
            out += args[t.spelling]
        else:
            out.append(t)
        i += 1
    return out

"""`trace --filter`: C-like conditions over a probe's arguments, compiled
into the generated recorder (docs/aggregate.md, "Filters").

An expression is parsed with Lark (an LALR grammar with C's precedence and
associativity), its names resolved against the probe (``arg0`` .. ``argN-1``
and the enumerators of its enum-typed arguments), and printed back as C,
fully parenthesised, over the recorder's typed locals: each ``argK`` is a
local of the argument's C type (width and sign from the BTF prototype, see
:func:`bpf_sdt.instrument.observers.c_type`), so comparisons and arithmetic
follow C's conversions for those types.  Enumerators become their values.

The same parser serves the aggregation options (:mod:`trace.aggregate`),
whose keys and values are expressions too.

A bad expression is a :class:`UsageError` (exit 2) whose message shows the
expression with a caret under the error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import lark

from bpf_sdt.argtype import ArgType
from bpf_sdt.errors import UsageError

GRAMMAR = r"""
?start: or_
?or_: and_ | or_ "||" and_ -> logor
?and_: bor | and_ "&&" bor -> logand
?bor: bxor | bor "|" bxor -> bitor
?bxor: band | bxor "^" band -> bitxor
?band: eq | band "&" eq -> bitand
?eq: rel | eq EQOP rel -> binary
?rel: shift | rel RELOP shift -> binary
?shift: add | shift SHIFTOP add -> binary
?add: mul | add ADDOP mul -> binary
?mul: unary | mul MULOP unary -> binary
?unary: atom | UNOP unary -> unary
?atom: NAME -> name | NUMBER -> number | "(" or_ ")"
EQOP.2: "==" | "!="
RELOP: "<=" | ">=" | "<" | ">"
SHIFTOP.2: "<<" | ">>"
ADDOP: "+" | "-"
MULOP: "*" | "/" | "%"
UNOP: "!" | "-" | "~"
NAME: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+/
%ignore /[ \t]+/
"""
Node = lark.Tree[lark.Token] | lark.Token
_C_OPERATOR = {"logor": "||", "logand": "&&", "bitor": "|", "bitxor": "^", "bitand": "&"}
U64_MAX = (1 << 64) - 1
S64_MAX = (1 << 63) - 1
S32_MAX = (1 << 31) - 1
SHIFT_LIMIT = 64                # shifting a 64-bit value this far or more is undefined in C
ARG_PREFIX = "arg"
MAX_EXPRESSION = 4096           # characters: an expression is a line typed by a person


@cache
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


class ExpressionError(UsageError):
    """A bad expression: one line saying what, then (``extra_lines``, printed
    by the CLI under it) the expression and a caret under the error."""

    def __init__(self, message: str, text: str, column: int) -> None:
        super().__init__(message)
        self.extra_lines = (text, " " * max(column - 1, 0) + "^")


def caret_message(what: str, text: str, column: int, problem: str) -> ExpressionError:
    """``what: problem``, with the expression and a caret under column (1-based)."""
    return ExpressionError(f"{what}: {problem}", text, column)


@dataclass(frozen=True)
class Scope:
    """What an expression at one probe may name."""

    probe: str
    types: tuple[ArgType, ...]

    def enumerators(self) -> dict[str, int]:
        """Enumerator -> value over the probe's enum arguments; a name two enums
        give different values is left out (it would be ambiguous)."""
        seen: dict[str, set[int]] = {}
        for t in self.types:
            if t.kind == "enum":
                for name, value in t.enumerators:
                    seen.setdefault(name, set()).add(value)
        return {n: next(iter(v)) for n, v in seen.items() if len(v) == 1}

    def describe(self) -> str:
        args = ", ".join(f"{ARG_PREFIX}{i} ({t.spelling})" for i, t in enumerate(self.types)) or "no arguments"
        enums = sorted(self.enumerators())
        return f"probe {self.probe} has {args}" + (f"; enumerators: {', '.join(enums)}" if enums else "")


@dataclass(frozen=True)
class Compiled:
    """An expression as C over the recorder's locals, and what it is when it
    is exactly one argument (for printing keys by the argument's type)."""

    c: str
    arg: int | None = None


class _ToC:
    """Parse tree -> C text, checking names and constants on the way."""

    def __init__(self, what: str, text: str, scope: Scope) -> None:
        self.what, self.text, self.scope = what, text, scope
        self.enums = scope.enumerators()

    def fail(self, node: Node, problem: str) -> ExpressionError:
        column = node.column if isinstance(node, lark.Token) else node.meta.column
        return caret_message(self.what, self.text, column or 1, problem)

    def emit(self, node: Node) -> str:
        if isinstance(node, lark.Token):
            raise self.fail(node, f"unexpected {node!s}")
        kind = node.data
        if kind == "name":
            return self.name(_token(node))
        if kind == "number":
            return self.number(_token(node))
        if kind == "unary":
            op, operand = node.children
            return f"({op}{self.emit(operand)})"
        if kind in _C_OPERATOR:
            left, right = node.children
            return f"({self.emit(left)} {_C_OPERATOR[kind]} {self.emit(right)})"
        left, op, right = node.children
        self.check_constant_operand(str(op), right)
        return f"({self.emit(left)} {op} {self.emit(right)})"

    def name(self, token: lark.Token) -> str:
        name = str(token)
        if name.startswith(ARG_PREFIX) and name[len(ARG_PREFIX):].isdigit():
            index = int(name[len(ARG_PREFIX):])
            if index < len(self.scope.types) and name == f"{ARG_PREFIX}{index}":
                return name
        if name in self.enums:
            return _literal(self.enums[name])
        raise self.fail(token, f"unknown name {name}; {self.scope.describe()}")

    def number(self, token: lark.Token) -> str:
        value = int(str(token), 0)
        if value > U64_MAX:
            raise self.fail(token, f"{token} does not fit in 64 bits")
        return _literal(value)

    def check_constant_operand(self, op: str, right: Node) -> None:
        """Division by a constant 0 and over-long constant shifts are undefined in
        C (and clang's -Werror refuses them): say so here, with the caret."""
        if not (isinstance(right, lark.Tree) and right.data == "number"):
            return
        value = int(str(_token(right)), 0)
        if op in ("/", "%") and value == 0:
            raise self.fail(right, "division by zero")
        if op in ("<<", ">>") and value >= SHIFT_LIMIT:
            raise self.fail(right, f"shift by {value} (at most {SHIFT_LIMIT - 1})")


def _token(node: lark.Tree[lark.Token]) -> lark.Token:
    """The one token of a name or number node."""
    (token,) = node.children
    assert isinstance(token, lark.Token)
    return token


def _literal(value: int) -> str:
    """A C literal of ``value`` (a value above S64_MAX is unsigned long long)."""
    if -S32_MAX - 1 <= value <= S32_MAX:
        return str(value) if value >= 0 else f"({value})"
    return f"{value}ULL" if value > S64_MAX else f"({value}LL)"


def compile_expression(text: str, scope: Scope, what: str = "--filter") -> Compiled:
    """``text`` as C over the recorder's argument locals, or a UsageError with a caret."""
    if len(text) > MAX_EXPRESSION:
        raise UsageError(f"{what}: an expression of {len(text)} characters (at most {MAX_EXPRESSION})")
    if not text.strip():
        raise UsageError(f"{what}: an empty expression")
    try:
        tree = _parser().parse(text)
    except lark.UnexpectedCharacters as e:
        at = e.pos_in_stream or 0
        raise caret_message(what, text, e.column, f"unexpected character {text[at:at + 1]!r}") from None
    except lark.UnexpectedEOF:
        raise caret_message(what, text, len(text) + 1, "the expression ends too early") from None
    except lark.UnexpectedToken as e:
        at_end = e.token.type == "$END"
        column = len(text) + 1 if at_end or not isinstance(e.column, int) or e.column < 1 else e.column
        problem = "the expression ends too early" if at_end else f"unexpected {str(e.token)!r}"
        raise caret_message(what, text, column, problem) from None
    compiler = _ToC(what, text, scope)
    c = compiler.emit(tree) if isinstance(tree, lark.Tree) else compiler.name(tree)
    arg = None
    if isinstance(tree, lark.Tree) and tree.data == "name" and c.startswith(ARG_PREFIX):
        arg = int(c[len(ARG_PREFIX):])
    return Compiled(c, arg)


def split_probe(spec: str) -> tuple[str | None, str]:
    """``PROBE:EXPR`` -> (PROBE glob, EXPR); an expression alone -> (None, it).
    The grammar has no ':' of its own, so the first one separates."""
    head, sep, rest = spec.partition(":")
    if sep and head.strip() and all(c.isalnum() or c in "_*?[]" for c in head.strip()):
        return head.strip(), rest
    return None, spec


def probe_filters(specs: Sequence[str], types: Mapping[str, tuple[ArgType, ...]],
                  selected: Sequence[str]) -> dict[str, str]:
    """Probe -> the C condition of its --filter options (several are ANDed)."""
    conditions: dict[str, list[str]] = {}
    for spec in specs:
        glob, text = split_probe(spec)
        probes = [p for p in selected if glob is None or fnmatch.fnmatchcase(p, glob)]
        if not probes:
            raise UsageError(f"--filter {spec}: {glob} matches no traced probe; traced: {', '.join(selected)}")
        for p in probes:
            compiled = compile_expression(text, Scope(p, types.get(p, ())), f"--filter (probe {p})")
            conditions.setdefault(p, []).append(compiled.c)
    return {p: " && ".join(c) for p, c in conditions.items()}

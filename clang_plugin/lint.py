"""Lint rules over extracted facts (docs/lint.md).

Per-file rules run where the file was parsed (and are cached with it);
cross-file rules (the same name declared differently, a declaration never
probed) run over every file given together.  Findings use the shared model
and print gcc-style: `file:line:col: error: message [SDTnnn]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bpf_sdt.format import MAX_ARGS
from bpf_sdt.model import Declaration, Finding
from bpf_sdt.rules import Rule, RuleTable, rule_finding

from .extract import INT, POINTER, RECORD, ArgFact, FileFacts, Invocation, SiteFacts
from .header import ASSERT_REASON_RE

C_KEYWORDS = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
    "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
    "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
    "volatile", "while", "_Bool", "_Complex", "_Imaginary", "_Alignas", "_Alignof", "_Atomic",
    "_Generic", "_Noreturn", "_Static_assert", "_Thread_local",
}
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

RULES: RuleTable = {
    "SDT000": Rule("error", "the file does not compile"),
    "SDT001": Rule("error", "probe used but not declared"),
    "SDT002": Rule("error", "argument count differs from the declaration"),
    "SDT003": Rule("error", "argument type not convertible to the declared type"),
    "SDT004": Rule("error", "argument or declared type is a struct/union by value or wider than 8 bytes"),
    "SDT005": Rule("error", "the same name declared with different prototypes, or twice in one translation unit"),
    "SDT006": Rule("warning", "declared but never probed"),
    "SDT007": Rule("error", "probe name is not a valid identifier, or is reserved"),
    "SDT008": Rule("error", "more than 12 arguments"),
    "SDT009": Rule("warning", "probe in code the compiler cannot reach"),
    # From the optimized LLVM IR (irlint.py); `lint --no-ir` skips them.
    "SDT010": Rule("error", "an argument is undef or poison in the optimized code"),
    "SDT011": Rule("warning", "a probe invocation has no site left after optimization"),
    "SDT012": Rule("note", "a probe invocation is compiled into several sites (loop unrolling, inlining)"),
    "SDT013": Rule("error", "a probe site or declaration does not compile, for a reason no other rule names"),
}
IR_RULES = ("SDT010", "SDT011", "SDT012")


@dataclass(frozen=True)
class CompileError:
    """One error the compiler reported, where it reported it.  ``argument``:
    the argument position whose part of the header's expansion it came from,
    when the expansion tells (see diagnostics.argument_of)."""

    file: str
    line: int
    column: int
    message: str
    argument: int | None = None


def _finding(file: str, line: int, col: int, rule: str, message: str) -> Finding:
    return rule_finding(RULES, rule, file, f"{line}:{col}", message)


def per_file(facts: FileFacts) -> list[Finding]:
    out: list[Finding] = list(facts.diagnostics)
    decls = {d.name: d for d in facts.declarations}
    for inv in facts.declaration_macros:
        out += _name_rules(inv)
        out += _declared_type_rules(inv, decls.get(inv.name), facts.declared_classes.get(inv.name, ()))
    for sf in facts.site_facts:
        site = _site_rules(sf, decls.get(sf.invocation.name), facts.declared_classes.get(sf.invocation.name, ()))
        via = _via(sf.invocation)
        out += [f._replace(message=f.message + via) for f in site] if via else site
    out += [_redeclared(later, first) for later, first in facts.redeclared]
    for macro, line, col in facts.too_many:
        out.append(_finding(facts.file, line, col, "SDT008",
                            f"{macro}: probes take at most {MAX_ARGS} arguments (the trampoline limit)"))
    return out


def _site_rules(sf: SiteFacts, decl: Declaration | None, classes: tuple[str, ...]) -> list[Finding]:
    inv = sf.invocation
    out = _name_rules(inv)
    if decl is None:
        if inv.name_is_identifier:
            out.append(_finding(inv.file, inv.line, inv.column, "SDT001",
                                f"probe '{inv.name}' is used but never declared (BPF_SDT_DECLARE{inv.arity})"))
        return out
    out += _arity_rules(inv, decl)
    out += _argument_rules(inv, decl, sf.args, classes)
    if sf.unreachable:
        out.append(_finding(inv.file, inv.line, inv.column, "SDT009",
                            f"probe '{inv.name}' is in code the compiler cannot reach; it will not exist"))
    return out


def _via(inv: Invocation) -> str:
    """Where a probe came from when the line shows a macro of the user's."""
    return f" (through {' -> '.join(inv.via)})" if inv.via else ""


def _redeclared(later: Invocation, first: Invocation) -> Finding:
    """A second BPF_SDT_DECLARE of one name in one translation unit: the
    compiler rejects it (redefined enumerator and variable), whatever the types."""
    at = f"{first.file}:{first.line}"
    if later.args != first.args:
        what = f"probe '{later.name}' declared as ({', '.join(later.args)}), but as ({', '.join(first.args)}) at {at}"
    else:
        what = f"probe '{later.name}' declared twice (also at {at})"
    return _finding(later.file, later.line, later.column, "SDT005",
                    what + "; one translation unit may declare a probe only once")


def _name_rules(inv: Invocation) -> list[Finding]:
    name = inv.name
    if not inv.name_is_identifier or not IDENT_RE.match(name):
        why = "is not a C identifier"
    elif name in C_KEYWORDS:
        why = "is a C keyword"
    elif name.startswith("__") or re.match(r"^_[A-Z]", name):
        why = "is reserved (leading __ or _ and a capital)"
    else:
        return []
    return [_finding(inv.file, inv.line, inv.column, "SDT007", f"probe name '{name}' {why}")]


def _declared_type_rules(inv: Invocation, decl: Declaration | None, classes: tuple[str, ...]) -> list[Finding]:
    """Classes come from the types libclang resolved (typedefs, qualifiers
    and all), never from how a type is spelled."""
    out: list[Finding] = []
    if inv.arity > MAX_ARGS:
        return out
    if decl is None:
        return out
    for k, (t, size, cls) in enumerate(zip(decl.types, decl.sizes, classes, strict=False), 1):
        if cls == RECORD:
            out.append(_finding(inv.file, inv.line, inv.column, "SDT004",
                                f"probe '{inv.name}' argument {k}: declared type '{t}' is a struct/union by value"))
        elif size > 8:
            out.append(_finding(inv.file, inv.line, inv.column, "SDT004",
                                f"probe '{inv.name}' argument {k}: declared type '{t}' is {size} bytes, wider than 8"))
    return out


def _arity_rules(inv: Invocation, decl: Declaration) -> list[Finding]:
    out = []
    if len(inv.args) != inv.arity:
        out.append(_finding(inv.file, inv.line, inv.column, "SDT002",
                            f"{inv.macro} takes {inv.arity} argument{'s' if inv.arity != 1 else ''} after the "
                            f"name, {len(inv.args)} given"))
    elif inv.arity != decl.arity:
        out.append(_finding(inv.file, inv.line, inv.column, "SDT002",
                            f"probe '{inv.name}' is declared with {decl.arity} argument"
                            f"{'s' if decl.arity != 1 else ''}{_at(decl)}, {inv.macro} passes {inv.arity}"))
    return out


def _argument_rules(inv: Invocation, decl: Declaration, args: tuple[ArgFact, ...],
                    classes: tuple[str, ...]) -> list[Finding]:
    out = []
    for k, (fact, declared, want) in enumerate(zip(args, decl.types, classes, strict=False), 1):
        where = (inv.file, inv.line, inv.column)
        text = inv.args[k - 1] if k - 1 < len(inv.args) else "?"
        if fact.cls == RECORD:
            out.append(_finding(*where, "SDT004", f"probe '{inv.name}' argument {k} ('{text}'): "
                                f"'{fact.type}' is a struct/union passed by value"))
        elif fact.cls == INT and fact.size > 8:
            out.append(_finding(*where, "SDT004", f"probe '{inv.name}' argument {k} ('{text}'): "
                                f"'{fact.type}' is {fact.size} bytes, wider than 8"))
        elif fact.cls in (INT, POINTER):
            if want in (INT, POINTER) and fact.cls != want:
                out.append(_finding(*where, "SDT003", f"probe '{inv.name}' argument {k} ('{text}'): "
                                    f"'{fact.type}' does not convert to '{declared}' (pointer/integer mismatch)"))
        else:
            out.append(_finding(*where, "SDT003", f"probe '{inv.name}' argument {k} ('{text}'): "
                                f"'{fact.type}' does not convert to '{declared}'"))
    return out


def _at(decl: Declaration) -> str:
    return f" (at {decl.file}:{decl.line})" if decl.file else ""


def cross_file(all_facts: list[FileFacts]) -> list[Finding]:
    """Rules over every file given together."""
    out = []
    first: dict[str, Declaration] = {}
    seen_decls: set[tuple[str, str | None, int | None]] = set()
    for facts in all_facts:
        for d in facts.declarations:
            key = (d.name, d.file, d.line)
            if key in seen_decls:
                continue
            seen_decls.add(key)
            prev = first.setdefault(d.name, d)
            # the same canonical types and sizes: `__u32` in one file and
            # `unsigned int` in another give an observer the same arguments
            if prev is not d and not prev.same_prototype(d) and d.file:
                out.append(Finding(d.file, f"{d.line}:1", "error",
                                   f"probe '{d.name}' declared as ({', '.join(d.types) or 'void'}), but as "
                                   f"({', '.join(prev.types) or 'void'}){_at(prev)}", "SDT005"))
    # a probe written in a branch this build does not compile, or in a macro
    # whose invocations are all there, is still probed
    probed = {s.name for f in all_facts for s in f.sites} | {n for f in all_facts for n in f.mentioned}
    reported: set[tuple[str, str | None]] = set()
    for facts in all_facts:
        for d in facts.local_declarations:
            if d.name not in probed and (d.name, d.file) not in reported and d.file:
                reported.add((d.name, d.file))
                out.append(Finding(d.file, f"{d.line}:1", "warning",
                                   f"probe '{d.name}' is declared but never probed in the files given", "SDT006"))
    return out


def invocation_errors(facts: FileFacts, errors: list[CompileError], findings: list[Finding]) -> list[Finding]:
    """SDT013 for each compiler error at a probe site or declaration that no
    error finding at that place explains: every failing site named with its
    probe, argument and the compiler's reason, not only the file's first
    error.  One finding per distinct (argument, message) at a place: a
    reason common to several arguments is said once per argument."""
    explained = {(f.path, f.where) for f in findings if f.severity == "error"}
    by_place: dict[tuple[str, int, int], list[CompileError]] = {}
    for e in errors:
        by_place.setdefault((e.file, e.line, e.column), []).append(e)
    out: list[Finding] = []
    places = [(inv, "PROBE") for inv in (sf.invocation for sf in facts.site_facts)]
    places += [(inv, "DECLARE") for inv in facts.declaration_macros]
    seen: set[tuple[str, int, int]] = set()
    for inv, kind in places:
        place = (inv.file, inv.line, inv.column)
        if place in seen or (inv.file, f"{inv.line}:{inv.column}") in explained:
            continue
        seen.add(place)
        said: set[tuple[int | None, str]] = set()
        for e in by_place.get(place, ()):
            if (e.argument, e.message) in said:
                continue
            said.add((e.argument, e.message))
            out.append(_finding(inv.file, inv.line, inv.column, "SDT013",
                                _invocation_error_text(inv, kind, e) + _via(inv)))
    return out


def _invocation_error_text(inv: Invocation, kind: str, e: CompileError) -> str:
    what = f"probe '{inv.name}'" if kind == "PROBE" else f"declaration of probe '{inv.name}'"
    if e.argument is not None and 0 < e.argument <= len(inv.args):
        what += f" argument {e.argument} ('{inv.args[e.argument - 1]}')"
    return f"{what} does not compile: {_own_reason(e.message)}"


# The header's own _Static_assert text, after the probe and argument it names
# (which the finding names already), and without clang's "static assertion
# failed due to requirement '<the macro's expression>'" before it.
def _own_reason(message: str) -> str:
    m = ASSERT_REASON_RE.search(message)
    return m.group(1) if m else message

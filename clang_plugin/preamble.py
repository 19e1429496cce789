"""One parse of a big shared header for many files: a precompiled preamble.

With the IR rules, every file is parsed twice, by libclang and by clang, and
a program including vmlinux.h spends most of each parse there (150 ms of a
200 ms compile).  When several files start with the same big header, it is
parsed once per front end into a precompiled header (PCH), and every file's
parse loads that instead (lazily: what the file uses).  Each front end
builds its own, because a PCH is read only by the clang version that wrote
it: libclang saves the header's parse (clang_saveTranslationUnit of a header
parsed as incomplete, which the API documents as usable as a PCH), clang
writes one with `-x c-header`.

`-include-pch H.pch` puts H before the file's first line, where the file
itself includes it later.  That is the same program only when nothing before
that `#include` can change what H means, and when the later `#include` then
adds nothing.  So H is used only when:

- the file reaches it through a chain of first `#include`s, each preceded by
  nothing but comments and an include guard's opening (`#ifndef X` /
  `#define X`, or `#pragma once`), and with no `-include`/`-imacros` flags;
- H is itself guarded that way, so the later `#include` of it is empty;
- nothing H includes mentions those guard macros, nor this project's
  macros (a probe or declaration in it is for the rules to see, not hide);
- H and what it includes are big enough to be worth it (MIN_HEADER_BYTES),
  and enough files share it (MIN_FILES): building a PCH costs about two
  parses of the header (the parse, then 13-16 MB written).

Any failure (a PCH that does not build, a parse with one that reports an
error) falls back to the plain parse, so a PCH can change only speed.  The
cache's include list, which a PCH hides, gets H's files back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular

from .files import MAX_SOURCE_BYTES
from .includes import SearchPath, include_closure, resolve, search_path

MIN_HEADER_BYTES = 512 << 10
MIN_FILES = 3
# How deep the chain of first includes is followed, and how many files a
# header's closure may hold before it is not considered.
MAX_CHAIN = 8
MAX_CLOSURE_FILES = 256
# Text that makes a header ours to see: the probe macros and their header.
OWN_MARKERS = (b"BPF_SDT", b"bpf_sdt")

# A file's leading comments, guard and first #include are looked for in
# this much of it; longer lines are not directives we read.  Both bound the
# work on a hostile file (no regex here backtracks over a whole line).
HEAD_BYTES = 64 << 10
MAX_LINE = 4096
_DIRECTIVE_LINE_RE = re.compile(rb"^[ \t]*#[ \t]*(\w+)(.*)$")
_GUARD_IF_RE = re.compile(rb"^(?:ifndef[ \t]+(\w+)|if[ \t]+!\s*defined[ \t]*\(?[ \t]*(\w+)[ \t]*\)?)$")
_INCLUDE_RE = re.compile(rb'^include[ \t]*([<"])([^>"]+)[>"]$')


@dataclass(frozen=True)
class Preamble:
    header: str                    # the header to precompile, absolute
    closure: tuple[str, ...]       # it and every file it includes


# The answer of _chain for a header, for the files of one run: (header, its
# size and mtime, the guards before it, the search path, the depth left) -> answer.
_Memo = dict[tuple[object, ...], "Preamble | None"]


def leading_header(path: str, source: bytes, flags: list[str], memo: _Memo | None = None) -> Preamble | None:
    """The header a PCH may stand in for in `path` (see the module's comment), or None."""
    sp = search_path(flags)
    if sp.forced:
        return None
    guards: list[bytes] = []
    first = _first_include(source, guards)
    here = os.path.dirname(os.path.abspath(path))
    return _chain(first, here, sp, guards, MAX_CHAIN, {} if memo is None else memo)


def _chain(first: tuple[bool, bytes] | None, here: str, sp: SearchPath, guards: list[bytes], depth: int,
           memo: _Memo) -> Preamble | None:
    """Follow a first #include: the header it names if it can be
    precompiled, else the same question one file further."""
    if first is None or depth == 0:
        return None
    found = resolve(sp, os.fsdecode(first[1]), first[0], here)
    if found is None:
        return None
    header, st = os.path.abspath(found[0]), found[1]
    key = (header, st.st_size, st.st_mtime_ns, tuple(guards), tuple(sp.quote), tuple(sp.angled), depth)
    if key not in memo:
        memo[key] = None
        try:
            text = read_regular(header, MAX_SOURCE_BYTES, "header")
        except InputError:
            return None
        chosen = _precompilable(header, text, sp, guards)
        if chosen is None and _guard(text) is not None:   # only a guarded file may be passed through
            chosen = _chain(_first_include(text, guards), os.path.dirname(header), sp, guards, depth - 1, memo)
        memo[key] = chosen
    return memo[key]


def _strip_comments(text: bytes) -> bytes:
    """`text` with each comment a space, in one pass (a regex would rescan
    to the end from every unterminated `/*`)."""
    out, i = [], 0
    while (j := text.find(b"/", i)) >= 0 and j + 1 < len(text):
        kind = text[j + 1:j + 2]
        if kind not in (b"*", b"/"):
            out.append(text[i:j + 1])
            i = j + 1
            continue
        out.append(text[i:j] + b" ")
        end = text.find(b"*/", j + 2) if kind == b"*" else text.find(b"\n", j + 2)
        if end < 0:
            return b"".join(out)
        i = end + 2 if kind == b"*" else end
    out.append(text[i:])
    return b"".join(out)


def _directive(line: bytes) -> tuple[bytes, bytes] | None:
    """(name, the rest, stripped) of a directive line, else None."""
    m = _DIRECTIVE_LINE_RE.match(line) if len(line) <= MAX_LINE else None
    return (m.group(1), m.group(2).strip()) if m else None


def _lines(text: bytes) -> list[bytes]:
    """The non-blank lines of the head of `text`, comments removed; none
    when it continues lines with backslashes (not worth reading further)."""
    head = text[:HEAD_BYTES]
    if b"\\\n" in head:
        return []
    return [ln for ln in _strip_comments(head).split(b"\n") if ln.strip()]


def _first_include(text: bytes, guards: list[bytes]) -> tuple[bool, bytes] | None:
    """(quoted, name) of the first #include, when only a guard's opening
    precedes it (its macro is added to `guards`)."""
    opened: bytes | None = None
    for ln in _lines(text):
        d = _directive(ln)
        if d is None:
            return None
        name, rest = d
        body = name + (b" " + rest if rest else b"")
        inc = _INCLUDE_RE.match(name + rest) if name == b"include" else None
        if inc is not None:
            return inc.group(1) == b'"', inc.group(2)
        guard = _GUARD_IF_RE.match(body)
        if guard is not None and opened is None:
            opened = guard.group(1) or guard.group(2)
        elif name == b"define" and opened is not None and rest.split()[:1] == [opened]:
            guards.append(opened)
        elif not (name == b"pragma" and rest == b"once"):
            return None
    return None


_CONDITIONAL_RE = re.compile(rb"^[ \t]*#[ \t]*(if|ifdef|ifndef|endif)\b", re.M)


def _guard(text: bytes) -> bytes | None:
    """The macro guarding the whole file (b"once" for #pragma once), or None."""
    if b"\\\n" in text:
        return None
    code = _strip_comments(text)
    head = [ln for ln in code[:HEAD_BYTES].split(b"\n") if ln.strip()][:2]
    first = _directive(head[0]) if head else None
    if first == (b"pragma", b"once"):
        return b"once"
    second = _directive(head[1]) if len(head) > 1 else None
    if first is None or second is None:
        return None
    guard = _GUARD_IF_RE.match(first[0] + b" " + first[1])
    name = guard and (guard.group(1) or guard.group(2))
    if not name or second[0] != b"define" or second[1].split()[:1] != [name]:
        return None
    depth = 0
    conditionals = list(_CONDITIONAL_RE.finditer(code))
    for i, m in enumerate(conditionals):
        depth += -1 if m.group(1) == b"endif" else 1
        if depth == 0 and i != len(conditionals) - 1:
            return None      # the guard closes before the end: something is outside it
    last = conditionals[-1] if conditionals else None
    if depth != 0 or last is None or code[last.end():].split(b"\n", 1)[-1].strip():
        return None          # code after the guard's #endif
    return name


def _precompilable(header: str, text: bytes, sp: SearchPath, guards: list[bytes]) -> Preamble | None:
    if any(m in text for m in OWN_MARKERS) or _guard(text) is None:   # the header's own text first: cheap
        return None
    closure = include_closure(header, text, sp)
    if closure is None or len(closure) > MAX_CLOSURE_FILES:
        return None
    size = 0
    for data in closure.values():
        if any(m in data for m in (*OWN_MARKERS, *guards)):    # as substrings: a false alarm only costs speed
            return None
        size += len(data)
    return Preamble(header, tuple(closure)) if size >= MIN_HEADER_BYTES else None


def shared_preambles(files: list[str], sources: dict[str, bytes], flags: dict[str, list[str]]) -> dict[str, Preamble]:
    """The files that a PCH may serve, and their header: only headers that
    at least MIN_FILES files with the same flags start with."""
    found: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    preambles: dict[str, Preamble] = {}
    memo: _Memo = {}
    for f in files:
        p = leading_header(f, sources[f], flags[f], memo)
        if p is not None:
            preambles[f] = p
            found.setdefault((p.header, tuple(flags[f])), []).append(f)
    return {f: preambles[f] for group in found.values() if len(group) >= MIN_FILES for f in group}


def build_ast_pch(task: tuple[str, list[str], str]) -> bytes:
    """In a sandbox worker: libclang's PCH of `header` with `flags`, saved to
    `out`.  Empty on success, else why not."""
    from .parse import cindex

    header, flags, out = task
    ci = cindex()
    options = ci.TranslationUnit.PARSE_INCOMPLETE | ci.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD
    try:
        tu = ci.Index.create().parse(os.fsencode(header), args=[os.fsencode(f) for f in (*flags, "-x", "c-header")],
                                     options=options)
        if any(d.severity >= ci.Diagnostic.Error for d in tu.diagnostics):
            return b"the header does not parse alone"
        tu.save(out)
    except (ci.TranslationUnitLoadError, ci.TranslationUnitSaveError) as e:
        return str(e).encode(errors="replace") or b"libclang failed"
    return b""

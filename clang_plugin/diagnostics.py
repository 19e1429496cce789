"""libclang's error diagnostics as lint sees them: compile errors with the
probe argument they came through, SDT000 findings, and the one-line reason
a file cannot be parsed at all."""

from __future__ import annotations

import re
from typing import Any

from bpf_sdt.errors import InputError
from bpf_sdt.fsutil import read_regular
from bpf_sdt.model import Finding

from .files import MAX_SOURCE_BYTES
from .header import EXPANDED_FROM_MACRO_RE
from .lint import CompileError

# Compiler errors shown per file as SDT000.
MAX_COMPILER_ERRORS = 5
# The line of a BPF_SDT_PROBEn/DECLAREn definition that an error came through
# names the argument it handles: `__BPF_SDT_CHECK_ARG(name, 2, a2);`.
_MACRO_ARGUMENT = re.compile(r"\b[at](\d+)\b")
_MISSING_HEADER_HINT = " (pass the project's flags: -p BUILD_DIR with compile_commands.json, or -I DIR after --)"


class FatalError(Exception):
    """A diagnostic that ends the parse: the file is unusable, for this reason."""


def compile_errors(ci: Any, tu: Any, path: str) -> list[CompileError]:
    """The translation unit's errors, each with the probe argument it came
    through when the header's expansion tells; FatalError for one that
    ended the parse (a missing header, with a hint at the flags)."""
    errors: list[CompileError] = []
    header_lines = _HeaderLines()
    for d in tu.diagnostics:
        if d.severity < ci.Diagnostic.Error:
            continue
        loc = d.location
        file = loc.file.name if loc.file else path
        if d.severity >= ci.Diagnostic.Fatal:
            hint = _MISSING_HEADER_HINT if "file not found" in d.spelling else ""
            raise FatalError(f"{file}:{loc.line}:{loc.column}: fatal error: {d.spelling}{hint}")
        errors.append(CompileError(file, loc.line, loc.column, d.spelling, argument_of(d, header_lines)))
    return errors


def does_not_compile(e: CompileError) -> Finding:
    return Finding(e.file, f"{e.line}:{e.column}", "error", f"does not compile: {e.message}", "SDT000")


class _HeaderLines:
    """Lines of the headers that errors were expanded through, read once each."""

    def __init__(self) -> None:
        self._files: dict[str, list[str]] = {}

    def line(self, file: str, number: int) -> str:
        if file not in self._files:
            try:
                text = read_regular(file, MAX_SOURCE_BYTES, "header").decode("utf-8", "replace")
            except InputError:
                text = ""
            self._files[file] = text.splitlines()
        lines = self._files[file]
        return lines[number - 1] if 0 < number <= len(lines) else ""


def argument_of(diagnostic: Any, header_lines: _HeaderLines) -> int | None:
    """The argument position an error at a probe macro came from: the macro's
    definition has one line per argument, and clang's "expanded from macro
    'BPF_SDT_PROBEn'" note points at the line the error came through (the
    diagnostic itself is at the invocation, the same for every argument).
    None when the note is missing or the line handles no single argument."""
    for note in diagnostic.children:
        if not EXPANDED_FROM_MACRO_RE.search(note.spelling) or note.location.file is None:
            continue
        text = header_lines.line(note.location.file.name, note.location.line)
        numbers = set(_MACRO_ARGUMENT.findall(text.split("(", 1)[1] if "(" in text else ""))
        return int(numbers.pop()) if len(numbers) == 1 else None
    return None

"""What only the optimized code shows: lint rules over LLVM IR.

libclang sees the source; whether a probe survives optimization, how many
copies of it the optimizer made and whether its arguments still hold defined
values is only known after `clang -O2`.  So each translation unit is also
compiled to LLVM bitcode with its own flags (plus -g, for locations), and the
bitcode is read with llvmlite, in process, to find every probe site:

- a site is a call to inline asm whose text pushes `.bpf_sdt_notes` (the
  header's encoding, codegen/templates/bpf_sdt.h.j2); the probe's name is the
  entry label `___sdt_jt_<name>` in that text;
- its operands, read through the asm's constraints, are the arguments:
  `rn`/`r` one operand per argument, a stack slot three (`m`, the immediate,
  the slot's width, 0 for an immediate);
- its `!dbg` location is where clang put the asm statement: the outermost
  macro invocation, the line the user wrote, and `inlinedAt` says where an
  inlined copy went.

llvmlite is used only to parse and inspect: its LLVM has no BPF asm parser and
aborts the whole process on inline asm in code generation.

The rules (ids in lint.RULES):
  SDT010  an argument is `undef` or `poison` (an uninitialized struct field
          passes every clang warning);
  SDT011  a probe invocation with no site left (dead only after inlining or
          constant propagation; SDT009 already reports the plainly unreachable);
  SDT012  a note: one invocation compiled into N sites (unrolled, inlined).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf_sdt.format import ENTRY_SYMBOL_PREFIX, NOTES_SECTION
from bpf_sdt.model import Finding
from bpf_sdt.rules import rule_finding

NOTES_PUSH = f".pushsection {NOTES_SECTION}"
ENTRY_LABEL_RE = re.compile(re.escape(ENTRY_SYMBOL_PREFIX) + r"([A-Za-z_][A-Za-z0-9_]*):")
# `ptr asm [sideeffect] [alignstack] [inteldialect] [unwind] "<text>", "<constraints>"`:
# IR escapes `"` inside both strings as \22, so neither holds a bare quote.
ASM_RE = re.compile(r'\basm\b[^"]*"(?P<text>[^"]*)",\s*"(?P<constraints>[^"]*)"')
DBG_RE = re.compile(r"!dbg !(\d+)")
FIELD_RE = re.compile(r'(\w+): (?:"((?:[^"\\]|\\.)*)"|(![0-9]+|[-\w|]+))')
HEX_ESCAPE_RE = re.compile(rb"\\([0-9A-Fa-f]{2})")
OPT_RE = re.compile(r"^-O([0-9sgz]|fast)?$")
DEFAULT_OPT = "-O2"
# Flags for the IR compile, after the translation unit's own: locations with
# columns, no warnings (the user's -Werror must not stop a lint).
IR_FLAGS = ("-g", "-gcolumn-info", "-w", "-Wno-error", "-c", "-emit-llvm")
UNDEFINED_KINDS = {"undef_value": "undef", "poison_value": "poison"}
# Constraint letters of a stack-slot argument: the slot, its immediate and its width.
SLOT_OPERANDS = 3


# The bitcode of one file the IR rules read at most (a BPF program's is KBs).
MAX_BITCODE_BYTES = 64 << 20


def too_much_bitcode() -> str:
    return f"its bitcode is past the {MAX_BITCODE_BYTES >> 20} MiB the IR rules read"


class IrUnavailable(Exception):
    """The IR of a translation unit cannot be had; the message says why."""


class UnreadableBitcode(IrUnavailable):
    """llvmlite's LLVM refused a module (the message says what it said)."""


# --- compiling ----------------------------------------------------------------------


@dataclass(frozen=True)
class IrCompiler:
    path: str


def ir_flags(flags: list[str]) -> list[str]:
    """The translation unit's flags for the IR compile: its optimization
    level when it has one (-O2 otherwise), then ours."""
    opt = [] if any(OPT_RE.match(f) for f in flags) else [DEFAULT_OPT]
    return [*flags, *opt, *IR_FLAGS]


@dataclass
class PendingIr:
    """A clang compiling one file to bitcode in the background, while
    libclang parses the same file in this process."""

    proc: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    output: Path
    errors: Path
    source: str
    cmd: list[str] = field(default_factory=list)

    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.workdir.cleanup()

    def result(self, timeout: float) -> bytes:
        """The bitcode, or IrUnavailable with clang's first error line."""
        try:
            try:
                code = wait_for(self.proc, timeout)
            except subprocess.TimeoutExpired:
                raise IrUnavailable(f"clang took longer than the {timeout:.1f} s the file's deadline left it "
                                    "(BPF_SDT_PARSE_TIMEOUT)") from None
            if code != 0:
                raise IrUnavailable(first_error(self.errors.read_bytes(), code))
            if self.output.stat().st_size > MAX_BITCODE_BYTES:
                raise IrUnavailable(too_much_bitcode())
            return self.output.read_bytes()
        finally:
            self.cancel()


def wait_for(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Popen.wait(timeout) polls with sleeps of up to 50 ms, a good part of a
    small file's compile; a pidfd wakes up when clang exits."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):    # not Linux >= 5.3
        return proc.wait(timeout)
    try:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0))
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def start_ir(compiler: IrCompiler, path: str, flags: list[str]) -> PendingIr:
    workdir = tempfile.TemporaryDirectory(prefix="bpf-sdt-ir-")
    out, err = Path(workdir.name) / "tu.bc", Path(workdir.name) / "stderr"
    cmd = [compiler.path, *ir_flags(flags), "-o", str(out), "--", path]
    with open(err, "wb") as errors:
        try:
            # No preexec_fn: it forces a fork of this (large) process where
            # vfork is otherwise used.  The lint worker's process group
            # (sandbox.py) is killed with the worker, clang included.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors)
        except OSError as e:
            workdir.cleanup()
            raise IrUnavailable(f"cannot run {compiler.path}: {e.strerror or e}") from None
    return PendingIr(proc, workdir, out, err, path, cmd)


def first_error(stderr: bytes, code: int) -> str:
    text = stderr.decode("utf-8", "replace")
    for line in text.splitlines():
        if "error:" in line:
            return "clang: " + line.strip()
    if code < 0:
        return f"clang was killed by signal {-code}"
    last = text.strip().splitlines()[-1:] or [f"exit code {code}"]
    return "clang: " + last[0].strip()


# --- reading the bitcode -------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    column: int


@dataclass(frozen=True)
class IrSite:
    """One probe site in the optimized IR."""

    name: str
    function: str                       # the IR function holding it (where it was inlined to)
    at: Location                        # the asm statement's own location
    inlined_at: tuple[Location, ...]    # call sites it was inlined through, innermost first
    undefined: tuple[tuple[int, str], ...]   # (argument number, "undef" | "poison")


def ir_sites(bitcode: bytes) -> list[IrSite]:
    """Every probe site in a module, in function and block order."""
    try:
        import llvmlite.binding as llvm
    except ImportError as e:
        raise IrUnavailable(f"llvmlite is missing ({e}): pip install llvmlite") from None
    try:
        module = llvm.parse_bitcode(bitcode)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:1] or ["unreadable"]
        raise UnreadableBitcode(f"llvmlite (LLVM {'.'.join(map(str, llvm.llvm_version_info))}) cannot read the "
                            f"bitcode: {first[0]}") from None
    found: list[tuple[str, str, tuple[tuple[int, str], ...]]] = []
    for fn in module.functions:
        if fn.is_declaration:
            continue
        for block in fn.blocks:
            for insn in block.instructions:
                if insn.opcode != "call":
                    continue
                ops = list(insn.operands)
                callee = ops[-1] if ops else None
                if callee is None or callee.value_kind.name != "inline_asm":
                    continue
                asm = ASM_RE.search(str(callee))
                if asm is None or NOTES_PUSH not in asm.group("text"):
                    continue
                label = ENTRY_LABEL_RE.search(asm.group("text"))
                if label is None:
                    continue
                found.append((label.group(1), fn.name, _undefined_args(asm.group("constraints"), ops[:-1])))
    if not found:
        return []
    text = str(module)
    meta = _Metadata(text)
    # Metadata numbers are those of the module's printing: an instruction
    # printed alone is numbered differently.  The module prints the calls in
    # the order walked above, so the i-th notes call line is found[i].
    dbgs = _notes_call_locations(text[:meta.start])
    if len(dbgs) != len(found):
        dbgs = [None] * len(found)
    out = []
    for (name, function, undefined), dbg in zip(found, dbgs, strict=True):
        at, chain = meta.location(dbg)
        out.append(IrSite(name, function, at, chain, undefined))
    return out


NOTES_CALL_RE = re.compile(r"^[^\n]*\bcall\b[^\n]*" + re.escape(NOTES_PUSH) + r"[^\n]*$", re.M)


def _notes_call_locations(code: str) -> list[int | None]:
    """The `!dbg` number of each notes asm call in printed IR, in order."""
    out: list[int | None] = []
    for m in NOTES_CALL_RE.finditer(code):
        dbg = DBG_RE.search(m.group(0))
        out.append(int(dbg.group(1)) if dbg else None)
    return out


def _undefined_args(constraints: str, operands: list[Any]) -> tuple[tuple[int, str], ...]:
    """(argument number, undef/poison) for each argument whose value the
    optimizer found undefined.  A stack-slot argument is judged by its
    immediate only: an undefined value stored to the slot leaves no trace."""
    out = []
    cons = [c for c in constraints.split(",") if c and not c.startswith(("~", "="))]
    arg, i = 0, 0
    while i < len(cons) and i < len(operands):
        arg += 1
        op = operands[i]
        if "m" in cons[i]:
            width = operands[i + 2] if i + 2 < len(operands) else None
            is_imm = width is not None and width.value_kind.name == "constant_int" and width.get_constant_value() == 0
            op = operands[i + 1] if is_imm and i + 1 < len(operands) else None
            i += SLOT_OPERANDS
        else:
            i += 1
        kind = UNDEFINED_KINDS.get(op.value_kind.name) if op is not None else None
        if kind is not None:
            out.append((arg, kind))
    return tuple(out)


class _Metadata:
    """Numbered metadata of the printed module, looked up by number: the
    printer writes `!N = ...` lines in order, one per node, after the code."""

    def __init__(self, text: str) -> None:
        start = text.find("\n!0 = ")
        self.start = start if start >= 0 else len(text)
        self._lines = text[start + 1:].split("\n") if start >= 0 else []
        self._by_number: dict[int, str] | None = None
        self._files: dict[int, str] = {}

    def node(self, n: int) -> dict[str, str]:
        line = self._lines[n] if n < len(self._lines) else ""
        prefix = f"!{n} = "
        if not line.startswith(prefix):
            if self._by_number is None:   # not one line per node in order: index them all
                self._by_number = {}
                for ln in self._lines:
                    m = re.match(r"!(\d+) = ", ln)
                    if m:
                        self._by_number[int(m.group(1))] = ln
            line = self._by_number.get(n, "")
            if not line:
                return {}
        kind = re.match(r"!\d+ = (?:distinct )?!(\w+)\(", line)
        fields = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in FIELD_RE.finditer(line)}
        fields["kind"] = kind.group(1) if kind else ""
        return fields

    def location(self, n: int | None) -> tuple[Location, tuple[Location, ...]]:
        """A DILocation and the chain of call sites it is inlined through."""
        chain: list[Location] = []
        at = Location("", 0, 0)
        seen = 0
        while n is not None and seen < 64:     # inlining depth is small; a loop in metadata is not
            seen += 1
            fields = self.node(n)
            if fields.get("kind") != "DILocation":
                break
            loc = Location(self._file_of(fields.get("scope")), int(fields.get("line", "0")),
                           int(fields.get("column", "0")))
            if seen == 1:
                at = loc
            else:
                chain.append(loc)
            nxt = fields.get("inlinedAt")
            n = int(nxt[1:]) if nxt and nxt.startswith("!") else None
        return at, tuple(chain)

    def _file_of(self, scope: str | None) -> str:
        """The file of a scope (DISubprogram, DILexicalBlock...): its `file:`."""
        if not scope or not scope.startswith("!"):
            return ""
        n = int(scope[1:])
        if n in self._files:
            return self._files[n]
        fields = self.node(n)
        file_ref = fields.get("file")
        path = ""
        if file_ref and file_ref.startswith("!"):
            f = self.node(int(file_ref[1:]))
            name, directory = _unescape(f.get("filename", "")), _unescape(f.get("directory", ""))
            path = os.path.normpath(os.path.join(directory, name)) if name else ""
        self._files[n] = path
        return path


def _unescape(s: str) -> str:
    """IR string escapes (`\\22`, `\\5C`) back to the file name's bytes."""
    raw = HEX_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), s.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


# --- comparing with the source -------------------------------------------------------


@dataclass(frozen=True)
class SourceProbe:
    """What the IR rules need of a source site (extract.SiteFacts)."""

    name: str
    file: str
    line: int
    column: int
    args: tuple[str, ...]
    emitted: bool            # an expansion holding the asm (not BPF_SDT_DISABLE)
    expected: bool           # SDT011 applies: in a function the compiler emits, and reachable
    via: tuple[str, ...] = ()


Key = tuple[str, int, int, str]


class _Paths:
    """realpath, once per distinct name: libclang and the debug info may
    spell one file differently (`./x.h`, `dir/../x.h`, a symlink)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, p: str) -> str:
        r = self._cache.get(p)
        if r is None:
            r = self._cache[p] = os.path.realpath(p) if p else ""
        return r


def ir_findings(probes: Iterable[SourceProbe], sites: list[IrSite], unit: str = "") -> list[Finding]:
    """SDT010, SDT011 and SDT012 at the user's lines.  A probe in a header is
    compiled once per file including it, maybe differently: its findings
    name the file `unit` whose compile they are about."""
    from .lint import RULES

    real = _Paths()
    # Debug info without columns (-gno-column-info) locates by line only.
    columns = all(s.at.column for s in sites)

    def key(file: str, line: int, column: int, name: str) -> Key:
        return (real(file), line, column if columns else 0, name)

    by_key: dict[Key, list[IrSite]] = {}
    for s in sites:
        by_key.setdefault(key(s.at.file, s.at.line, s.at.column, s.name), []).append(s)
    out: list[Finding] = []
    reported: set[Key] = set()

    def finding(p: SourceProbe, rule: str, message: str) -> None:
        compiled = f" (compiling {unit})" if unit and real(p.file) != real(unit) else ""
        out.append(rule_finding(RULES, rule, p.file, f"{p.line}:{p.column}", message + _via(p) + compiled))

    for p in probes:
        k = key(p.file, p.line, p.column, p.name)
        if k in reported or not p.emitted:
            continue
        reported.add(k)
        copies = by_key.get(k, [])
        if not copies:
            if p.expected:
                finding(p, "SDT011", f"probe '{p.name}' has no site left after optimization: the compiler "
                        "removed the code around it (a condition that is always false once inlined, a path "
                        "no caller takes), so no observer will ever see it")
            continue
        for arg, what in sorted({u for c in copies for u in c.undefined}):
            text = p.args[arg - 1] if arg - 1 < len(p.args) else "?"
            n = sum(1 for c in copies if (arg, what) in c.undefined)
            share = "" if n == len(copies) else f" in {n} of its {len(copies)} copies"
            finding(p, "SDT010", f"probe '{p.name}' argument {arg} ('{text}') is {what} in the optimized "
                    f"code{share}: it reads a value never set (an uninitialized variable or struct field?), "
                    "so the probe reports garbage")
        if len(copies) > 1:
            finding(p, "SDT012", f"probe '{p.name}' is compiled into {len(copies)} sites: {_copies(copies)}; "
                    "`bpf-sdt list` shows each")
    return out


def _via(p: SourceProbe) -> str:
    return f" (through {' -> '.join(p.via)})" if p.via else ""


def _copies(copies: list[IrSite]) -> str:
    """`4 in f (unrolled or duplicated)`, `1 in f inlined at t.c:9, 1 in g inlined at t.c:20`."""
    # Grouped by what is printed (the function and the outermost place it was
    # inlined at): copies whose chains differ further in (a helper calling the
    # probe's helper twice) made one place appear several times.
    groups: dict[tuple[str, str], int] = {}
    for c in copies:
        chain = c.inlined_at
        where = f" inlined at {Path(chain[-1].file).name}:{chain[-1].line}" if chain else ""
        groups[(c.function, where)] = groups.get((c.function, where), 0) + 1
    parts = []
    for (function, where), n in groups.items():
        again = " (unrolled or duplicated)" if n > 1 else ""
        parts.append(f"{n} in {function}{where}{again}")
    return ", ".join(parts)

"""The IR compile of many files in one clang.

Each `clang -c` is a new process, and clang's start-up (loading and
relocating libLLVM and libclang-cpp) is about 13 ms here: two thirds of a
small BPF file's whole compile.  The driver cannot share it: given several
inputs it runs one cc1 process per input.  The front end itself can: `clang
-cc1` compiles every input it is given, one after another, in one process.
So files whose IR compile has the same compiler and flags share one cc1:

- its command is the one the driver would run (`clang -###`, once per
  group), less what names one input or output (`-main-file-name`, `-o`,
  `-disable-free`, which with many inputs would keep every AST in memory);
- its output is `-o -`: cc1 writes each input's bitcode module to stdout when
  that input is done, so the stream is the modules in input order; they are
  told apart by walking the bitcode's top-level blocks, whose lengths are
  in their headers (split_bitcode);
- a module with CO-RE relocations ends the batch there too: the files after
  it go to a new clang (see CORE_RELOCATION_NAME).  A file the include scan
  guesses has them (it or a header names the attribute or a CO-RE builtin)
  is given as its clang's last input, so no compile after it is thrown away;
- a file that does not compile ends the batch at its module, and the files
  from it on go to a new clang, where it is first.  Only there is its error
  its own: cc1 applies the command line's warning options (`-w`,
  `-Wno-error`) to its first input only and resets them to the defaults
  after it (clang 19, seen here), so a later input can stop at a warning
  that is an error by default (-Wint-conversion) and that the IR compile of
  the file alone ignores.  Killed (a deadline, a crash), the file in
  progress gets the reason at once.

The deadline is per file, as for one file alone (BPF_SDT_PARSE_TIMEOUT): it
starts again each time a module is complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .irlint import (
    MAX_BITCODE_BYTES,
    IrUnavailable,
    first_error,
    ir_flags,
    too_much_bitcode,
    wait_for,
)

# Raw bitcode starts with this; clang writes no wrapper for BPF.
BITCODE_MAGIC = b"BC\xc0\xde"
# At the top level of a bitcode file, abbreviation ids are 2 bits wide and
# every entry is a block: ENTER_SUBBLOCK (id 1), then the block id (VBR-8),
# the block's abbreviation width (VBR-4), alignment to 32 bits and the
# block's length in 32-bit words.
TOP_ABBREV_BITS = 2
ENTER_SUBBLOCK = 1
BLOCK_ID_VBR, ABBREV_WIDTH_VBR = 8, 4
WORD = 4
# The name of a CO-RE relocation's global, `llvm.<type>:<kind>:<patch>$<access>`
# (LLVM's BPF member-access pass, clang 14 and 19).  The pass keeps these
# globals in one map per process, by name, and never empties it: a later cc1
# input with an access an earlier one had gets the earlier module's global
# instead of its own.  While that module lives (the one before), the new
# module refers into it and its bitcode cannot be read ("Never resolved
# value"); once it is freed, the pointer dangles: clang 19 writes a module
# that reads fine and computes garbage, clang 14 crashes.  Only modules with
# such a global fill the map, so the files after one go to a new clang.  The
# names are in the module's string table, a blob of raw bytes; a string
# elsewhere that looks like one costs only a restart.
CORE_RELOCATION_NAME = re.compile(rb"llvm\.[^:$\0]{0,1024}:[0-9]+:[0-9]+\$")
# cc1 arguments that name a file per input: such a command cannot be shared.
PER_INPUT_OUTPUTS = ("-dependency-file", "-split-dwarf-file", "-split-dwarf-output", "-ftime-trace",
                     "-header-include-file", "-stack-usage-file", "-opt-record-file", "-coverage-data-file",
                     "-coverage-notes-file")
# How often a waiting batch looks at its output, and how long `clang -###` may take.
POLL_S = 0.05
DRIVER_TIMEOUT_S = 10.0


# --- the shared command -------------------------------------------------------------


def cc1_command(compiler: str, flags: list[str], sample: str) -> list[str] | None:
    """The cc1 command that compiles files with `flags` to bitcode on stdout,
    inputs to be appended; None when the driver would not run exactly one cc1
    job for `sample` (then each file is compiled alone)."""
    placeholder = "bpf-sdt-batch.bc"
    try:
        shown = subprocess.run([compiler, "-###", *ir_flags(flags), "-o", placeholder, "--", sample],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=DRIVER_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    jobs = [line for line in shown.stderr.decode("utf-8", "surrogateescape").splitlines() if line.startswith(' "')]
    if len(jobs) != 1:
        return None
    try:
        argv = shlex.split(jobs[0])
    except ValueError:
        return None
    if len(argv) < 3 or argv[1] != "-cc1" or argv[-1] != sample:
        return None
    return _shared(argv[:-1], placeholder)


def _shared(argv: list[str], placeholder: str) -> list[str] | None:
    """One input's cc1 arguments made input-neutral: stdout for the output."""
    out: list[str] = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a.startswith(PER_INPUT_OUTPUTS):
            return None
        elif a == "-disable-free":
            continue
        elif a in ("-main-file-name", "-o"):
            if a == "-o" and argv[i + 1:i + 2] != [placeholder]:
                return None
            skip = True
            if a == "-o":
                out += ["-o", "-"]
        else:
            out.append(a)
    return out if "-" in out else None


def with_pch(command: list[str], pch: str) -> list[str]:
    """The shared command, loading `pch` before each input (-x, the input
    language, is the last option)."""
    i = len(command) - 1 - command[::-1].index("-x") if "-x" in command else len(command)
    return [*command[:i], "-include-pch", pch, *command[i:]]


def start_pch(compiler: str, flags: list[str], header: str, out: str, memory_mib: int) -> subprocess.Popen[bytes]:
    """clang writing its PCH of `header` for IR compiles with `flags`
    (preamble.py); OSError if it cannot start."""
    pch_flags = [f for f in ir_flags(flags) if f not in ("-c", "-emit-llvm")]
    proc = subprocess.Popen([compiler, *pch_flags, "-x", "c-header", header, "-o", out], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    limit_memory(proc, memory_mib)
    return proc


def limit_memory(proc: subprocess.Popen[bytes], memory_mib: int) -> None:
    """RLIMIT_AS for a clang just started (a preexec_fn would make Python
    fork instead of vfork); it has not read a file yet."""
    if not memory_mib:
        return
    with contextlib.suppress(OSError):
        _soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_AS)
        limit = memory_mib << 20 if hard == resource.RLIM_INFINITY else min(memory_mib << 20, hard)
        resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, hard))


def input_name(path: str) -> str:
    """A path cc1 cannot take for an option."""
    return path if not path.startswith("-") else os.path.join(".", path)


# --- the output stream --------------------------------------------------------------


class _Bits:
    """Little-endian bit reader over a bytes object (bitcode's bit order)."""

    def __init__(self, data: bytes, byte_offset: int) -> None:
        self.data, self.pos = data, byte_offset * 8

    def read(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise EOFError
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def vbr(self, n: int) -> int:
        value, shift, more = 0, 0, 1 << (n - 1)
        while True:
            chunk = self.read(n)
            value |= (chunk & (more - 1)) << shift
            if not chunk & more:
                return value
            shift += n - 1
            if shift > 64:
                raise EOFError

    def align32(self) -> None:
        self.pos = (self.pos + 31) & ~31


def split_bitcode(stream: bytes) -> list[bytes]:
    """The complete modules of raw bitcode files written one after another
    (a module cut short, as by a kill, is left out)."""
    modules: list[bytes] = []
    pos = 0
    while stream.startswith(BITCODE_MAGIC, pos):
        start, pos = pos, pos + len(BITCODE_MAGIC)
        while pos < len(stream) and not stream.startswith(BITCODE_MAGIC, pos):
            end = _block_end(stream, pos)
            if end is None:
                return modules
            pos = end
        modules.append(stream[start:pos])
    return modules


def _block_end(stream: bytes, pos: int) -> int | None:
    """Where the top-level block at `pos` ends; None if it is cut short or not a block."""
    bits = _Bits(stream, pos)
    try:
        if bits.read(TOP_ABBREV_BITS) != ENTER_SUBBLOCK:
            return None
        bits.vbr(BLOCK_ID_VBR)
        bits.vbr(ABBREV_WIDTH_VBR)
        bits.align32()
        words = bits.read(32)
    except EOFError:
        return None
    end = bits.pos // 8 + words * WORD
    return end if words and end <= len(stream) else None


def has_core_relocations(module: bytes) -> bool:
    """Whether a module names a CO-RE relocation's global (CORE_RELOCATION_NAME)."""
    return CORE_RELOCATION_NAME.search(module) is not None


# --- running a batch ----------------------------------------------------------------


class _Stream:
    """clang's stdout file, read as it grows: complete modules once each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.consumed = 0      # bytes of complete modules already taken
        self.pending = 0       # bytes written past them

    def modules(self) -> list[bytes]:
        with open(self.path, "rb") as f:
            f.seek(self.consumed)
            data = f.read(MAX_BITCODE_BYTES + 1)
        found = split_bitcode(data)
        self.consumed += sum(map(len, found))
        self.pending = len(data) - sum(map(len, found))
        return found


@dataclass
class IrBatch:
    """Files compiled to bitcode by one cc1 (see the module's comment)."""

    command: list[str]
    files: list[str]
    timeout_s: float
    memory_mib: int = 0             # the address-space limit of each parse, applied to the clang too
    fallback: list[str] | None = None   # the command without a PCH (preamble.py), if `command` has one
    # Files that may have CO-RE relocations: each is the last input of its
    # clang, so that none waits for one to be killed after it.
    last_inputs: frozenset[str] = frozenset()
    results: dict[str, bytes | IrUnavailable] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _todo: list[str] = field(default_factory=list)
    _first: str = ""                # the first input of the running clang
    _after_core: bool = False       # it wrote a module with CO-RE relocations: the rest need a new one
    _unfinished: int = 0            # its inputs whose module has not come yet
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    def drop_pch(self) -> None:
        """Before start: compile without the PCH (it was not written)."""
        if self.fallback is not None:
            self.command, self.fallback = self.fallback, None

    def start(self) -> None:
        """Starts the compile; `collect` waits for it."""
        self._workdir = tempfile.TemporaryDirectory(prefix="bpf-sdt-irbatch-")
        self._launch(list(self.files))

    def _launch(self, todo: list[str]) -> None:
        assert self._workdir is not None
        self._todo, self._first = todo, todo[0]
        inputs = next((todo[:i + 1] for i, f in enumerate(todo) if f in self.last_inputs), todo)
        self._unfinished = len(inputs)
        out, err = (Path(self._workdir.name) / n for n in ("stdout", "stderr"))
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            try:
                self._proc = subprocess.Popen([*self.command, *map(input_name, inputs)], stdin=subprocess.DEVNULL,
                                              stdout=stdout, stderr=stderr)
            except OSError as e:
                self._proc = None
                for f in todo:
                    self.results[f] = IrUnavailable(f"cannot run {self.command[0]}: {e.strerror or e}")
                return
        limit_memory(self._proc, self.memory_mib)

    def collect(self) -> dict[str, bytes | IrUnavailable]:
        """Every file's bitcode, or why it has none."""
        try:
            while self._proc is not None:
                self._finish_attempt()
        finally:
            self.cancel()
        return self.results

    def _finish_attempt(self) -> None:
        """Wait for the running clang, taking each module as it completes;
        then blame the file it stopped at, and start one for the rest."""
        assert self._proc is not None and self._workdir is not None
        stream = _Stream(Path(self._workdir.name) / "stdout")
        deadline = time.monotonic() + self.timeout_s
        why: str | None = None
        while True:
            try:
                code = wait_for(self._proc, POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._take(stream.modules()):      # a file finished: the next one's deadline starts
                deadline = time.monotonic() + self.timeout_s
            if self._after_core:
                self._proc.kill()
                code = self._proc.wait()
                break
            if stream.pending > MAX_BITCODE_BYTES:
                why = too_much_bitcode()
            elif time.monotonic() > deadline:
                why = f"clang took longer than {self.timeout_s:.0f} s (BPF_SDT_PARSE_TIMEOUT)"
            if why:
                self._proc.kill()
                code = self._proc.wait()
                break
        self._proc = None
        while self._take(stream.modules()):
            pass
        if self._after_core:        # not a verdict on the file in progress: it starts again, first
            self._after_core = False
            self._launch(self._todo)
            return
        if not self._todo:
            return
        if why is None and stream.pending > MAX_BITCODE_BYTES:
            why = too_much_bitcode()
        if code == 0 and why is None and not self._unfinished:   # its inputs are done: a clang for the rest
            self._launch(self._todo)
            return
        if code == 0 and why is None:   # every input compiled, yet a module is missing: a stream we do not know
            for f in self._todo:
                self.results[f] = IrUnavailable("clang's output held fewer modules than inputs")
            return
        failed_compiling = why is None
        if failed_compiling and self._todo[0] != self._first:
            self._launch(self._todo)      # not yet a verdict: see the module's comment on diagnostics
            return
        if failed_compiling and self.fallback is not None:   # maybe the PCH's doing: again without it
            self.command, self.fallback = self.fallback, None
            self._launch(self._todo)
            return
        culprit, rest = self._todo[0], self._todo[1:]
        if why is None:
            why = first_error((Path(self._workdir.name) / "stderr").read_bytes(), code)
        self.results[culprit] = IrUnavailable(why)
        if rest:
            self._launch(rest)

    def _take(self, modules: list[bytes]) -> bool:
        """Give the first files their modules, up to one with CO-RE
        relocations if files remain; whether there were any."""
        for module in modules:
            if not self._todo or self._after_core:
                break
            self.results[self._todo.pop(0)] = module
            self._unfinished -= 1
            self._after_core = self._unfinished > 0 and has_core_relocations(module)
        return bool(modules)

    def cancel(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

"""Observers: the functions an enabled site calls.

A user writes them as the RFC does, ``SEC("bpf_sdt/<probe or glob>") int
BPF_PROG(name, <args>)``, or ``SEC("bpf_sdt")`` and names the probes with
``--attach name=GLOB``.  Without observers, instrument generates the
recorder from a Jinja2 template and builds it with clang.

An observer's argument count is what its ``BPF_PROG`` declared: the macro
wraps the user's body in an inlined ``____<name>(ctx, args...)``, which DWARF
describes (BTF only has the outer ``<name>(u64 *ctx)``).  pyelftools reads it.
"""

from __future__ import annotations

import fnmatch
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from bpf_sdt.elf import STB_LOCAL, STT_FUNC, BpfObject
from bpf_sdt.errors import InputError, ToolError
from bpf_sdt.format import MAX_ARGS, RECORDER_LOST_MAP, RECORDER_RINGBUF_MAP
from bpf_sdt.toolchain import find_clang

OBSERVER_SECTION = "bpf_sdt"            # SEC("bpf_sdt") or SEC("bpf_sdt/<glob>")
BPF_PROG_INNER = "____"                 # libbpf's BPF_PROG names the inlined body ____<name>
RECORDER_PREFIX = "bpf_sdt_record_"     # + arity
RECORDER_EVENT = "bpf_sdt_event"
PAGE_SIZE = 4096
RECORDER_CFLAGS = ("-target", "bpf", "-O2", "-g", "-mcpu=v2", "-Wall", "-Werror")
TEMPLATES = Path(__file__).with_name("templates")


@dataclass(frozen=True)
class ObserverDecl:
    name: str
    path: str
    section: str
    glob: str | None            # from the section suffix; None for SEC("bpf_sdt")
    arity: int | None           # from DWARF; None when the object has none

    def matches(self, probe: str, attach: list[str]) -> bool:
        globs = ([self.glob] if self.glob else []) + attach
        return any(fnmatch.fnmatchcase(probe, g) for g in globs)


def is_observer_section(name: str) -> bool:
    return name == OBSERVER_SECTION or name.startswith(OBSERVER_SECTION + "/")


def find_observers(obj: BpfObject) -> list[ObserverDecl]:
    """Every function in a ``bpf_sdt`` or ``bpf_sdt/<glob>`` section."""
    arities = dwarf_arities(obj.data)
    out = []
    for sym in obj.symbols:
        sec = obj.section_at(sym.shndx)
        if sym.type != STT_FUNC or sym.bind == STB_LOCAL or sec is None or not is_observer_section(sec.name):
            continue
        glob = sec.name[len(OBSERVER_SECTION) + 1:] or None
        out.append(ObserverDecl(sym.name, obj.path, sec.name, glob, arities.get(sym.name)))
    return out


def dwarf_arities(data: bytes) -> dict[str, int]:
    """Observer name -> the argument count its BPF_PROG declared, from DWARF.
    An object without (readable) DWARF gives nothing: arity then goes unchecked."""
    try:
        from elftools.elf.elffile import ELFFile

        elf = ELFFile(io.BytesIO(data))
        if not elf.has_dwarf_info():
            return {}
        out = {}
        for cu in elf.get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                    continue
                name = die.attributes["DW_AT_name"].value.decode("utf-8", "replace")
                if name.startswith(BPF_PROG_INNER):
                    params = sum(1 for c in die.iter_children() if c.tag == "DW_TAG_formal_parameter")
                    out[name[len(BPF_PROG_INNER):]] = max(params - 1, 0)   # minus ctx
        return out
    except Exception:   # noqa: BLE001 - hostile DWARF must not stop instrumenting; arity is a check
        return {}


def render_recorder(arities: list[int], ringbuf_size: int) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template("recorder.bpf.c.j2").render(
        arities=sorted(set(arities)), ringbuf_size=ringbuf_size, ringbuf=RECORDER_RINGBUF_MAP, lost=RECORDER_LOST_MAP,
        event=RECORDER_EVENT, prefix=RECORDER_PREFIX)


def check_ringbuf_size(size: int) -> None:
    if size < PAGE_SIZE or size & (size - 1):
        raise InputError(f"ring buffer size {size}: must be a power of two and at least {PAGE_SIZE}")


def build_recorder(arities: list[int], ringbuf_size: int, workdir: Path) -> Path:
    """Render and compile the recorder for these probe arities."""
    if any(not 0 <= n <= MAX_ARGS for n in arities):
        raise InputError(f"probe arities {arities}: at most {MAX_ARGS} arguments")
    src = workdir / "bpf_sdt_recorder.bpf.c"
    out = workdir / "bpf_sdt_recorder.bpf.o"
    src.write_text(render_recorder(arities, ringbuf_size))
    res = subprocess.run([find_clang(), *RECORDER_CFLAGS, "-c", str(src), "-o", str(out)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ToolError(f"building the recorder failed: {last}")
    return out

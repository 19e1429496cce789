"""Observers: the functions an enabled site calls.

A user writes them as the RFC does, ``SEC("bpf_sdt/<probe or glob>") int
BPF_PROG(name, <args>)``, or ``SEC("bpf_sdt")`` and names the probes with
``--attach name=GLOB``.  Without observers, instrument generates the
recorder from a Jinja2 template and builds it with clang (both cached:
recorder_cache.py; Jinja2 is imported only to render).

An observer's argument count is what its ``BPF_PROG`` declared: the macro
wraps the user's body in an inlined ``____<name>(ctx, args...)``, which DWARF
describes (BTF only has the outer ``<name>(u64 *ctx)``).  pyelftools reads it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import importlib.machinery
import io
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bpf_sdt import argtype, recorder_abi
from bpf_sdt.argtype import ArgType
from bpf_sdt.elf import STB_LOCAL, STT_FUNC, BpfObject
from bpf_sdt.errors import InputError, ToolError
from bpf_sdt.format import MAX_ARGS
from bpf_sdt.recorder_abi import (
    AGGREGATION_KEY_STRUCT,
    AGGREGATION_VALUE_STRUCT,
    ARG_SLOT,
    RECORDER_ARGS_STRUCT,
    RECORDER_COUNTS_MAP,
    RECORDER_EVENT,
    RECORDER_RINGBUF_MAP,
    aggregation_key_struct,
    aggregation_value_struct,
    args_struct,
    counters_struct,
    event_struct,
)

# Re-exported: the stages that plan or call recorders import these names from here.
from bpf_sdt.recorder_abi import AGGREGATION_MAP_PREFIX as AGGREGATION_MAP_PREFIX
from bpf_sdt.recorder_abi import HITS_MAP as HITS_MAP
from bpf_sdt.recorder_abi import RECORDER_PREFIX as RECORDER_PREFIX
from bpf_sdt.toolchain import find_clang

from . import recorder_cache

if TYPE_CHECKING:
    import jinja2

OBSERVER_SECTION = "bpf_sdt"            # SEC("bpf_sdt") or SEC("bpf_sdt/<glob>")
BPF_PROG_INNER = "____"                 # libbpf's BPF_PROG names the inlined body ____<name>
DEFAULT_MAP_ENTRIES = 10240             # keys per aggregation map (x site), unless --map-entries says
MAX_MAP_ENTRIES = 1 << 20               # per-CPU values: each key costs 32 bytes on every CPU
AGGREGATION_KINDS = ("count", "hist", "lhist", "sum", "min", "max", "avg")
PAGE_SIZE = 4096
RECORDER_CFLAGS = ("-target", "bpf", "-O2", "-g", "-mcpu=v2", "-Wall", "-Werror")
RECORDER_SOURCE = "bpf_sdt_recorder.bpf.c"      # in the build directory: its path is in the object's BTF
RECORDER_OBJECT = "bpf_sdt_recorder.bpf.o"
TEMPLATES = Path(__file__).with_name("templates")
RECORDER_TEMPLATE = "recorder.bpf.c.j2"
# The Jinja2 environment's options besides its loader (undefined is StrictUndefined): the source cache's key has them.
KEEP_TRAILING_NEWLINE = True
AUTOESCAPE = False                      # C, not HTML
TEMPLATE_OPTIONS = {"undefined": "strict", "keep_trailing_newline": KEEP_TRAILING_NEWLINE, "autoescape": AUTOESCAPE}


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


@dataclass(frozen=True)
class AggregationCode:
    """One aggregation at one probe, in C: ``keys`` and ``value`` are
    expressions over the recorder function's typed locals arg0..argN-1."""

    index: int                          # its map: AGGREGATION_MAP_PREFIX + index
    kind: str                           # one of AGGREGATION_KINDS
    keys: tuple[str, ...] = ()
    value: str | None = None            # None for count
    lmin: int = 0                       # lhist only
    lmax: int = 0
    step: int = 1

    @property
    def last(self) -> int:
        """lhist's bucket for values >= lmax (after the underflow bucket 0)."""
        return 1 + -(-(self.lmax - self.lmin) // self.step)


@dataclass(frozen=True)
class ProbePlan:
    """What the recorder does when one probe fires: filter, aggregate, record."""

    filter: str | None = None           # a C condition over arg0..argN-1
    ring: bool = True                   # write the event to the ring buffer
    aggregations: tuple[AggregationCode, ...] = ()

    @property
    def is_default(self) -> bool:
        return self.filter is None and self.ring and not self.aggregations


@dataclass(frozen=True)
class RecorderOptions:
    pin_by_name: bool = False           # LIBBPF_PIN_BY_NAME on every map (the old default)
    probes: Mapping[str, ProbePlan] = field(default_factory=dict)
    map_entries: int = DEFAULT_MAP_ENTRIES
    hits_entries: int = DEFAULT_MAP_ENTRIES     # map 0 (hits per site): one key per site of the object
    plan_id: str = ""           # the filter/aggregation options, canonically: part of the recorder's identity

    def plan(self, probe: str) -> ProbePlan:
        return self.probes.get(probe, DEFAULT_PLAN)


DEFAULT_PLAN = ProbePlan()


def recorder_function(probe: str, nargs: int, options: RecorderOptions) -> str:
    """The recorder function a probe's sites call: one per arity for probes
    that only record, one of its own for a probe that filters or aggregates."""
    if options.plan(probe).is_default:
        return f"{RECORDER_PREFIX}{nargs}"
    return f"{RECORDER_PREFIX}{nargs}_{probe}"


def c_type(t: ArgType) -> str:
    """The C type a recorder local holds an argument in: its width and sign
    (enums by their underlying integer; pointers as an address; _Bool as is)."""
    if t.kind == "bool":
        return "_Bool"
    bits = t.bits
    return f"__{'s' if t.signed else 'u'}{bits if bits in (8, 16, 32) else 64}"


def render_recorder(probes: Mapping[str, Sequence[ArgType]], ringbuf_size: int, identity: str,
                    options: RecorderOptions | None = None) -> str:
    """The recorder's C source for these probes (probe -> argument types)."""
    return recorder_template().render(recorder_context(probes, ringbuf_size, identity, options))


def recorder_context(probes: Mapping[str, Sequence[ArgType]], ringbuf_size: int, identity: str,
                     options: RecorderOptions | None = None) -> dict[str, object]:
    """The template's variables: everything the source depends on besides the
    template itself, worked out without Jinja2."""
    options = options or RecorderOptions()
    functions: dict[str, dict[str, object]] = {}
    for probe, types in sorted(probes.items()):
        name = recorder_function(probe, len(types), options)
        plan = options.plan(probe)
        functions.setdefault(name, {"name": name, "nargs": len(types), "ctypes": [c_type(t) for t in types],
                                    "filter": plan.filter, "ring": plan.ring, "aggregations": plan.aggregations})
    maps = {g.index: len(g.keys) for p in options.probes.values() for g in p.aggregations}
    counters = counters_struct(identity)
    return dict(
        functions=list(functions.values()), ringbuf_size=ringbuf_size, ringbuf=RECORDER_RINGBUF_MAP,
        counts=RECORDER_COUNTS_MAP, identity=counters.name, counters_struct=counters.c_definition(),
        event=RECORDER_EVENT, event_struct=event_struct().c_definition(), slot=ARG_SLOT,
        args_struct=RECORDER_ARGS_STRUCT,
        args_structs=[args_struct(n).c_definition() for n in sorted({len(t) for t in probes.values()})],
        pin_by_name=options.pin_by_name, agg_prefix=AGGREGATION_MAP_PREFIX, key_prefix=AGGREGATION_KEY_STRUCT,
        value_name=AGGREGATION_VALUE_STRUCT, value_struct=aggregation_value_struct().c_definition(),
        aggregations=[{"index": i, "key_struct": aggregation_key_struct(i, n).c_definition(),
                       "entries": options.hits_entries if i == HITS_MAP else options.map_entries}
                      for i, n in sorted(maps.items())])


@functools.cache
def recorder_template() -> jinja2.Template:
    """The recorder's template, compiled once per process (Jinja2 compiles
    it to Python: a few hundredths of a second).  Jinja2 is imported here,
    not with this module: a recorder whose source is cached needs none of
    its some 30 ms."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=KEEP_TRAILING_NEWLINE, autoescape=AUTOESCAPE)
    return env.get_template(RECORDER_TEMPLATE)


def prepare_recorder() -> None:
    """What trace's instrument worker does for the recorder before its job
    is known: compile the template, if a render is likely (the recorder
    cache is off or holds no source yet); else nothing, since the source
    will most likely be a cache hit that needs no Jinja2."""
    if not recorder_cache.has_sources():
        recorder_template()


def recorder_source(probes: Mapping[str, Sequence[ArgType]], ringbuf_size: int, identity: str,
                    options: RecorderOptions) -> str:
    """:func:`render_recorder`'s source, from the recorder cache when these
    parameters were rendered before (no Jinja2), else rendered and kept."""
    context = recorder_context(probes, ringbuf_size, identity, options)
    inputs = render_inputs(context)
    cached = recorder_cache.fetch_source(inputs, identity)
    if cached is not None:
        return cached
    source = recorder_template().render(context)
    recorder_cache.store_source(inputs, identity, source,
                                lambda other: render_recorder(probes, ringbuf_size, other, options))
    return source


def render_inputs(context: Mapping[str, object]) -> str:
    """Everything a render depends on, as canonical text: the templates'
    bytes (hashed), the Jinja2 that renders them, the environment's options
    and the variables.  Read and hashed, never rendered: no Jinja2."""
    return json.dumps({"templates": _templates_digest(), "renderer": _renderer_digest(),
                       "jinja2": _jinja2_identity(), "options": TEMPLATE_OPTIONS,
                       "context": context}, sort_keys=True, default=_plain)


def _templates_digest() -> str:
    """A SHA-256 over every file of the templates' directory, by name and
    bytes: the recorder's template and whatever it may come to include."""
    digest = hashlib.sha256()
    for path in sorted(TEMPLATES.iterdir()):
        if path.is_file():
            digest.update(json.dumps([path.name, path.stat().st_size]).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


# The modules whose classes the template's variables are (their methods and
# properties run while it renders: AggregationCode.last, ArgType's, the
# structs' C definitions), so their code decides the source as the template does.
_RENDERER_MODULES = (__file__, argtype.__file__, recorder_abi.__file__)


@functools.lru_cache(maxsize=1)
def _renderer_digest() -> str:
    """A SHA-256 over the Python the render runs besides Jinja2 and the template."""
    digest = hashlib.sha256()
    for path in _RENDERER_MODULES:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _jinja2_identity() -> list[object]:
    """Jinja2's package by path, size and modification time, found without
    importing it (another version may render the same template otherwise)."""
    # The path finder, not importlib.util (some 6 ms to import): Jinja2 is an ordinary package on sys.path.
    spec = importlib.machinery.PathFinder.find_spec("jinja2")
    origin = spec.origin if spec is not None else None
    if origin is None:
        return [None]
    st = os.stat(origin)
    return [origin, st.st_size, st.st_mtime_ns]


def _plain(value: object) -> object:
    """JSON for the variables' dataclasses (the aggregations'), by type and fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__, dataclasses.asdict(value)]
    raise TypeError(f"{type(value).__name__} in the recorder's template variables")


def check_ringbuf_size(size: int) -> None:
    if size < PAGE_SIZE or size & (size - 1):
        raise InputError(f"ring buffer size {size}: must be a power of two and at least {PAGE_SIZE}")


def build_recorder(probes: Mapping[str, Sequence[ArgType]], ringbuf_size: int, identity: str, workdir: Path,
                   options: RecorderOptions | None = None) -> Path:
    """Render and compile the recorder for these probes."""
    with start_recorder(probes, ringbuf_size, identity, workdir, options) as pending:
        return pending.result()


def start_recorder(probes: Mapping[str, Sequence[ArgType]], ringbuf_size: int, identity: str, workdir: Path,
                   options: RecorderOptions | None = None) -> PendingRecorder:
    """Render the recorder and start clang on it (unless the cache has the
    object), returning at once: instrument reads its input meanwhile, on the
    other core.  Use it as a context manager: a build nobody waited for is
    stopped on the way out."""
    if any(len(t) > MAX_ARGS for t in probes.values()):
        raise InputError(f"probes with more than {MAX_ARGS} arguments cannot be recorded")
    options = options or RecorderOptions()
    if not 1 <= options.map_entries <= MAX_MAP_ENTRIES:
        raise InputError(f"map entries {options.map_entries}: must be between 1 and {MAX_MAP_ENTRIES}")
    out = workdir / RECORDER_OBJECT
    source = recorder_source(probes, ringbuf_size, identity, options)
    build = recorder_cache.Build(source, identity, workdir, find_clang(), RECORDER_CFLAGS)
    version = recorder_cache.ClangVersion(build.clang)
    if version.known:                   # else no entry can be this clang's: a build, its version asked beside
        cached = recorder_cache.fetch(build, _recorder_symbols(probes, options))
        if cached is not None:
            out.write_bytes(cached)
            return PendingRecorder(out, build, version, None)
    (workdir / RECORDER_SOURCE).write_text(source)
    # clang runs in the build directory, so that the only path the object holds
    # is that directory's (the cache puts the next build's in its place).
    clang = subprocess.Popen([build.clang, *RECORDER_CFLAGS, "-c", str(workdir / RECORDER_SOURCE), "-o", str(out)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=workdir)
    return PendingRecorder(out, build, version, clang)


class PendingRecorder:
    """A recorder object being made: :meth:`result` waits for clang (or has
    the cached object) and keeps a new build in the cache."""

    def __init__(self, out: Path, build: recorder_cache.Build, version: recorder_cache.ClangVersion,
                 clang: subprocess.Popen[str] | None) -> None:
        self._out, self._build, self._version, self._clang = out, build, version, clang

    def result(self) -> Path:
        if self._clang is None:
            return self._out
        clang = self._clang
        _, stderr = clang.communicate()     # a signal here: __exit__ still has clang to end
        self._clang = None
        if clang.returncode != 0:
            errors = [line for line in stderr.splitlines() if "error:" in line]
            last = (errors or stderr.strip().splitlines() or ["(no output)"])[0]
            raise ToolError(f"building the recorder failed: {last}")
        self._version.result()          # remembered, so that the entry below is keyed by it
        recorder_cache.store(self._build, self._out.read_bytes())
        return self._out

    def __enter__(self) -> PendingRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._clang is not None:     # the caller failed before it needed the recorder
            self._clang.kill()
            self._clang.communicate()
            self._clang = None
        self._version.close()


def _recorder_symbols(probes: Mapping[str, Sequence[ArgType]], options: RecorderOptions) -> set[str]:
    """The symbols every build of this recorder defines: its functions and maps."""
    functions = {recorder_function(p, len(t), options) for p, t in probes.items()}
    aggregations = {f"{AGGREGATION_MAP_PREFIX}{g.index}" for plan in options.probes.values() for g in plan.aggregations}
    return functions | aggregations | {RECORDER_RINGBUF_MAP, RECORDER_COUNTS_MAP}

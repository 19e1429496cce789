"""`bpf-sdt instrument IN.o -o OUT.o`: make probe sites call observers.

1. Decode IN's notes; pick the sites (``--probe`` globs, default all) and
   the observers of each (``--observer`` objects, ``--attach``; without them
   the generated recorder).  Names that match nothing are usage errors.
2. Link IN, the observer objects and the recorder with the libbpf linker
   (``bpf-sdt link``, which keeps the notes).  IN comes first, so its code
   keeps its offsets; the observers' maps, globals and BTF join the output.
3. Decode the linked code, move the observers into ``.text`` (libbpf calls
   into ``.text`` only) and make them static (so the verifier checks them in
   the caller's context, where the argument array lives), and after every
   selected NOP insert the sequence of :mod:`instrument.sequence`.
4. Write the result atomically once it passes `check`.

Sites that cannot take a call (a register live after the site that is not
set on every path; a frame that cannot be bounded; a call chain whose stack
would pass 512 bytes) are findings: exit 1, nothing written; with
``skip_unplaceable`` (``--skip-unplaceable``) each is a warning, the other
sites are instrumented and exit 1 means that none could be.  An observer
that writes through ``ctx`` and a call graph with recursion are refused
(exit 2).  OUT may not be IN (by any path) unless ``in_place`` is set.
"""

from __future__ import annotations

import bisect
import contextlib
import fnmatch
import functools
import gc
import operator
import os
import sys
import tempfile
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bpf_sdt.argtype import ArgType
from bpf_sdt.elf import STT_FUNC, STT_SECTION, TEXT_SECTION, BpfObject, ElfImage, is_reserved_index, load_object
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, BpfSdtError, InputError, UsageError
from bpf_sdt.format import CALL_LABEL_PREFIX, RECORDER_DEFAULT_RINGBUF_SIZE
from bpf_sdt.fsutil import resolve_output
from bpf_sdt.insn import INSN_SIZE, LD_IMM64, MAX_STACK, STACK_SLOT, CodeSection, Insn, reg_mask
from bpf_sdt.model import ArgLocation, escape_text
from bpf_sdt.notes import NoteEntries, NoteEntry, forget
from bpf_sdt.rewrite import CodeEdits, decode_code, move_code, rewrite_object
from bpf_sdt.sites import SiteTable, recorder_identity, site_table

if TYPE_CHECKING:   # postlink is imported when the run needs it
    from bpf_sdt.postlink.check import ObjectReport

from .analysis import (
    CLOBBER,
    MAX_CALL_FRAMES,
    TAIL_CALL_STACK,
    Function,
    Program,
    initialised_after,
    live_after,
    regs_of,
)
from .ctxwrite import Code, find_ctx_write
from .observers import (
    RECORDER_PREFIX,
    ObserverDecl,
    PendingRecorder,
    RecorderOptions,
    check_ringbuf_size,
    find_observers,
    is_observer_section,
    recorder_function,
    start_recorder,
)
from .sequence import Frame, Observer, SequenceShapes, Shape, call_ends

# Distinct site frames kept (functions x live caller-saved registers x arities).
FRAME_SHAPES = 4096


class SiteError(BpfSdtError):
    """Sites where a call cannot be placed: findings, exit 1."""

    exit_code = EXIT_FINDINGS


@dataclass(frozen=True)
class Request:
    input: Path
    output: Path
    probes: tuple[str, ...] = ()
    observers: tuple[Path, ...] = ()
    attach: tuple[str, ...] = ()            # "observer=GLOB"
    record: bool = False
    ringbuf_size: int = RECORDER_DEFAULT_RINGBUF_SIZE
    bpftool: str | None = None               # None: toolchain.find_bpftool's lookup
    recorder: RecorderOptions = field(default_factory=RecorderOptions)   # filters, aggregations, pins
    # Sites that cannot be placed are skipped (a warning each) instead of refusing the object.
    skip_unplaceable: bool = False
    # Only sites in functions reachable from these programs (function names); () is every program.
    programs: tuple[str, ...] = ()
    in_place: bool = False                   # OUT may be IN itself
    # OUT is on disk when instrument returns (fsyncs); trace's copy in its
    # temporary directory, loaded at once and removed, needs no such thing.
    durable: bool = True


@dataclass(slots=True)     # one per instrumented site
class InstrumentedSite:
    site_id: int
    probe: str
    section: str
    offset: int                 # the NOP's byte offset in OUT
    function: str
    observers: list[str] = field(default_factory=list)


@dataclass
class Result:
    sites: list[InstrumentedSite]
    observers: dict[str, list[str]]      # probe -> observer names, in call order
    skipped: list[str] = field(default_factory=list)   # one finding per site not placed


def run_instrument(req: Request) -> int:
    result = instrument(req)
    for line in result.skipped:
        print(f"bpf-sdt instrument: warning: skipped {escape_text(line)}", file=sys.stderr)
    return EXIT_OK


def instrument(req: Request) -> Result:
    """Without the cyclic garbage collector: a run makes objects for every
    instruction and drops few before it ends, so the collector would walk
    them again and again (a fifth of the time on 10,000 sites) for cycles
    this code does not make.  The one collection of the run (IN, once
    linked) walks only what the run made: what existed before is frozen."""
    was_enabled = gc.isenabled()
    gc.disable()
    freezing = gc.get_freeze_count() == 0        # a caller's own frozen objects stay frozen
    if freezing:
        gc.freeze()
    try:
        return _instrument(req)
    finally:
        if freezing:
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _instrument(req: Request) -> Result:
    check_ringbuf_size(req.ringbuf_size)
    _check_output(req)
    obj = load_object(req.input)            # IN is read and decoded once: every stage takes this object
    # postlink loads check's dependencies: only when needed
    from bpf_sdt.postlink.check import write_checked
    from bpf_sdt.postlink.link import checked_input, link_objects, refuse_undecodable_names

    refuse_undecodable_names(obj)
    table = _usable_sites(obj)
    types = table.types
    probes = table.probes()
    selected = _select_probes(probes, req.probes)
    observer_objects = [load_object(path) for path in req.observers]
    decls = [d for o in observer_objects for d in _observers_of(o)]
    plan = _plan_observers(decls, probes, selected, req, types)
    recorded = _recorded_probes(plan)
    identity = recorder_identity(obj, req.recorder.plan_id) if recorded else ""
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-instrument-") as tmp, \
            _recorder_for(recorded, types, identity, Path(tmp), req) as recorder:
        # clang builds the recorder meanwhile: reading the inputs, down to where
        # their sites were inlined (link's question, the DWARF), is the other core's work
        checked = [checked_input(obj), *(checked_input(o) for o in observer_objects)]
        _read_inline_chains(checked)
        if recorder is not None:
            checked.append(checked_input(load_object(recorder.result())))
        # Not checked here: what is written is, once rewritten (write_checked below).
        linked = link_objects(checked, str(Path(tmp) / "linked.o"), req.bpftool)
        # The inputs are linked: IN, its check and its DWARF chains go before the rewrite, the
        # run's peak.  Their caches refer back to their objects, so only the collector frees
        # them (off for the run): one pass here, about 1 ms per 1,000 sites.
        del checked, table, obj, observer_objects, decls
        gc.collect()
        img, placed, problems = _rewrite(linked.obj, plan, req)
        # The linked object goes before its image is serialised, the run's peak: its notes'
        # kept decoding, and (its caches refer back to it) the collector's one pass for it.
        forget(linked.obj)
        del linked
        gc.collect()
        data = img.to_bytes()
        del img
    _check_output(req)                       # again: the paths may have changed meanwhile
    written = write_checked(req.output, data, "the instrumented object", req.durable)
    del data
    # code was inserted before some NOPs: their offsets are OUT's
    return Result(placed.sites(lambda site_id: written.entries[site_id].offset, plan), plan, problems)


class _PlacedSites:
    """The sites instrumented, as columns until OUT is written: their
    :class:`InstrumentedSite` objects (and the offsets they report, OUT's)
    are made after the rewrite, the run's peak, not alive during it."""

    def __init__(self) -> None:
        self.site_ids = array("q")
        self.probes: list[str] = []          # the entries' own strings: no copy per site
        self.sections: list[str] = []
        self.functions: list[str] = []

    def __len__(self) -> int:
        return len(self.site_ids)

    def add(self, site_id: int, probe: str, section: str, function: str) -> None:
        self.site_ids.append(site_id)
        self.probes.append(probe)
        self.sections.append(section)
        self.functions.append(function)

    def sites(self, offset_of: Callable[[int], int], plan: dict[str, list[str]]) -> list[InstrumentedSite]:
        """One object per site, its NOP at ``offset_of(site id)`` and its
        probe's observers (a list of its own)."""
        return [InstrumentedSite(site_id, probe, section, offset_of(site_id), function, list(plan[probe]))
                for site_id, probe, section, function in zip(self.site_ids, self.probes, self.sections,
                                                             self.functions, strict=True)]


def _read_inline_chains(reports: list[ObjectReport]) -> None:
    """Where each input's sites were inlined (link's question, from their
    DWARF), read now and kept on their site tables for link.  A function of
    its own: a loop variable in _instrument would keep the last input alive
    past the point where it is dropped."""
    for report in reports:
        report.table.inlined_at  # noqa: B018  read for its cached value


def _recorded_probes(plan: dict[str, list[str]]) -> list[str]:
    """The probes the plan records, sorted."""
    return sorted({p for p, obs in plan.items() for o in obs if o.startswith(RECORDER_PREFIX)})


@contextlib.contextmanager
def _recorder_for(recorded: list[str], types: dict[str, tuple[ArgType, ...]], identity: str, tmp: Path,
                  req: Request) -> Iterator[PendingRecorder | None]:
    """The recorder of the ``recorded`` probes (IN's recorder identity
    ``identity``), its build started (None when there are none).  It takes
    no object: IN is dropped before the rewrite, while this lives on."""
    if not recorded:
        yield None
        return
    with start_recorder({p: types.get(p, ()) for p in recorded}, req.ringbuf_size, identity, tmp,
                        req.recorder) as pending:
        yield pending


def _check_output(req: Request) -> None:
    """OUT must be a place a regular file can be written, and not IN (through
    a symlink or a hard link too) unless the user said so."""
    try:
        target = resolve_output(req.output)
    except OSError as e:
        raise InputError(f"cannot write {req.output}: {e.strerror or e}") from None
    except ValueError as e:                  # an embedded NUL
        raise UsageError(f"cannot write {req.output!r}: {e}") from None
    if req.in_place:
        return
    try:
        same = target.exists() and os.path.samefile(target, req.input)
    except (OSError, ValueError):
        same = False
    if same:
        raise UsageError(f"-o {req.output} is the input {req.input}: pass --in-place to replace it")


# --- choosing sites and observers --------------------------------------------


def _usable_sites(obj: BpfObject) -> SiteTable:
    table = site_table(obj)
    if table.decoding.problems:
        p = table.decoding.problems[0]
        raise InputError(f"{obj.path}: its probe notes are broken ({p.where}: {p.message}); "
                         f"run `bpf-sdt check {obj.path}`")
    if not table.entries:
        raise InputError(f"{obj.path}: has no probe sites to instrument")
    return table


def _select_probes(probes: list[str], globs: Sequence[str]) -> list[str]:
    if not globs:
        return probes
    for g in globs:
        if not any(fnmatch.fnmatchcase(p, g) for p in probes):
            raise UsageError(f"--probe {g}: matches no probe; the object has: {', '.join(probes)}")
    return [p for p in probes if any(fnmatch.fnmatchcase(p, g) for g in globs)]


def _observers_of(obj: BpfObject) -> list[ObserverDecl]:
    found = find_observers(obj)
    if not found:
        raise InputError(f"{obj.path}: has no observer (a function in SEC(\"bpf_sdt\") or "
                         "SEC(\"bpf_sdt/<probe>\"))")
    return found


def _plan_observers(decls: list[ObserverDecl], probes: list[str], selected: list[str], req: Request,
                    types: dict[str, tuple[ArgType, ...]]) -> dict[str, list[str]]:
    """Probe -> the observers its sites call, in order.  An observer whose
    probes exist but are not selected is simply not called."""
    attach: dict[str, list[str]] = {}
    names = {d.name for d in decls}
    for spec in req.attach:
        name, sep, glob = spec.partition("=")
        if not sep or not name or not glob:
            raise UsageError(f"--attach {spec}: expected OBSERVER=GLOB")
        if name not in names:
            raise UsageError(f"--attach {spec}: no observer named {name} in "
                             f"{', '.join(map(str, req.observers)) or 'the --observer objects'}")
        attach.setdefault(name, []).append(glob)
    plan: dict[str, list[str]] = {p: [] for p in selected}
    for d in decls:
        if d.glob is None and d.name not in attach:
            raise UsageError(f"observer {d.name} ({d.path}) is in SEC(\"bpf_sdt\"): name its probes "
                             f"with --attach {d.name}=GLOB")
        globs = ([d.glob] if d.glob else []) + attach.get(d.name, [])
        for g in globs:
            if not any(fnmatch.fnmatchcase(p, g) for p in probes):
                raise UsageError(f"observer {d.name} ({d.path}): {g} matches no probe; the object has: "
                                 f"{', '.join(probes)}")
        served = [p for p in selected if d.matches(p, attach.get(d.name, []))]
        for p in served:
            nargs = len(types.get(p, ()))
            if d.arity is not None and d.arity > nargs:
                raise UsageError(f"observer {d.name} ({d.path}) takes {d.arity} arguments, probe {p} "
                                 f"has {nargs}")
            plan[p].append(d.name)
    if not decls or req.record:
        for p in selected:
            plan[p].append(recorder_function(p, len(types.get(p, ())), req.recorder))
    return {p: obs for p, obs in plan.items() if obs}


# --- rewriting the linked object --------------------------------------------------------


def _rewrite(obj: BpfObject, plan: dict[str, list[str]], req: Request) -> tuple[ElfImage, _PlacedSites, list[str]]:
    _check_symbol_sections(obj)
    code = decode_code(obj)
    edits = CodeEdits()
    sites, problems = _place_calls(obj, code, edits, plan, req)
    # The recorder stays global: verified once per program, not at every site.
    edits.make_static |= {name for names in plan.values() for name in names if not name.startswith(RECORDER_PREFIX)}
    return rewrite_object(obj, code, edits, consume=True), sites, problems     # the instructions go once encoded


def _place_calls(obj: BpfObject, code: dict[int, CodeSection], edits: CodeEdits, plan: dict[str, list[str]],
                 req: Request) -> tuple[_PlacedSites, list[str]]:
    """Insert each selected site's sequence into ``code`` (observers moved
    into .text, their calls labelled in ``edits``): the sites instrumented
    and one finding per site that could not be.  The analysis goes with this
    function's frame, before the rewrite, whose encoding is the run's peak."""
    table = site_table(obj)
    types = table.types
    # (section, decoded offset) -> index in its section: taken once, before code moves
    index_of = _InsnIndex(code)
    program = Program(code, obj.symbols, _site_uses(code, table.entries, index_of))
    observers = _observer_entries(obj, code, plan, index_of)
    _refuse_ctx_writers(program, [n for n in observers if not n.startswith(RECORDER_PREFIX)])
    reachable = _reachable_from(program, req.programs)
    text = _gather_text(obj, code, edits)
    observers = _called_through_section_symbol(obj, observers, text)
    callees = {probe: [observers[n] for n in names] for probe, names in plan.items()}   # per probe, not per site
    label_names = {n: CALL_LABEL_PREFIX + n for n in observers}                         # one string per observer
    inserts: dict[int, dict[int, tuple[_SitePlan, int | None]]] = {}    # section -> NOP index -> plan, site id
    sites, problems = _PlacedSites(), []
    plans = _SitePlans()                       # sites of one plan share its frame and instructions
    # The entries' columns, not a NoteEntry per site (whose symbol name is read for it):
    # one is made for a site that cannot be placed, to name it.
    entries = table.entries
    entry_probes, entry_sections, bodies = entries.probes, entries.sections, entries.bodies
    for site_id, (probe_id, section_id, offset, body_id) in enumerate(zip(
            entries.probe_ids, entries.section_ids, entries.offsets, entries.body_ids, strict=True)):
        probe = entry_probes[probe_id]
        names = plan.get(probe)
        if not names:
            continue
        sec = code[entry_sections[section_id].index]
        idx = index_of.at(sec.index, offset)
        f = program.function_of(sec, idx)
        if reachable is not None and id(f) not in reachable:
            continue
        try:
            site = _site_code(program, f, idx, probe, bodies[body_id].args, types.get(probe, ()), callees[probe],
                              sec.index != text, plans)
        except SiteError as e:
            problems.append(f"{_where(entries[site_id], f, table)}: {e}")
            continue
        inserts.setdefault(sec.index, {})[idx] = (site, site_id if site.stores_site_id else None)
        after = sec.insns[idx + 1] if idx + 1 < len(sec.insns) else sec.end    # the sequence goes before it
        for name, end in site.calls:
            edits.labels.add(label_names[name], sec.index, after, -end)
        sites.add(site_id, probe, sec.name, f.name)
    if problems and (not req.skip_unplaceable or not sites):
        raise SiteError("; ".join(problems) if len(problems) <= 3 else
                        f"{'; '.join(problems[:3])}; and {len(problems) - 3} more sites")
    for idx, at in inserts.items():
        _insert_after(code[idx], at)
    return sites, problems


class _InsnIndex:
    """(section, decoded byte offset) -> index in the section's list, taken
    before any code moves: per section, the decoded offsets as one column
    (they ascend), searched by bisection.  A dict keyed by (section, offset)
    pairs held a tuple per instruction, the largest thing a run made before
    its rewrite."""

    def __init__(self, code: dict[int, CodeSection]) -> None:
        self._offsets = {idx: array("q", map(_ORIG, sec.insns)) for idx, sec in code.items()}

    def get(self, section: int, offset: int) -> int | None:
        offsets = self._offsets.get(section)
        if offsets is None:
            return None
        i = bisect.bisect_left(offsets, offset)
        return i if i < len(offsets) and offsets[i] == offset else None

    def at(self, section: int, offset: int) -> int:
        i = self.get(section, offset)
        if i is None:
            raise KeyError((section, offset))
        return i


_ORIG = operator.attrgetter("orig")


def _check_symbol_sections(obj: BpfObject) -> None:
    """Every symbol is in a section the object has (rewriting moves them all)."""
    for sym in obj.symbols:
        if not is_reserved_index(sym.shndx) and sym.shndx >= len(obj.sections):
            raise InputError(f"{obj.path}: symbol {sym.name} is in section {sym.shndx}, which does not exist")


def _refuse_ctx_writers(program: Program, names: list[str]) -> None:
    """Exit 2 for an observer that may write into the traced program."""
    def code(f: Function) -> Code:
        return Code(f.name, f.insns, f.succ)

    def resolve(insn: Insn) -> Code | None:
        g = program.function_at(insn)
        return code(g) if g is not None else None

    def callbacks(c: Code) -> list[Code]:
        return [code(g) for x in c.insns if x.op == LD_IMM64 and x.target is not None
                and (g := program.function_at(x.target)) is not None]

    for name in names:
        f = program.by_name(name)
        if f is None:
            continue
        cycle = program.chain_through(f)
        if cycle is not None:
            raise InputError(f"observer {name}: the verifier refuses recursion: "
                             f"{' -> '.join(g.name for g in cycle)}")
        found = find_ctx_write(code(f), resolve, callbacks)
        if found is not None:
            raise InputError(f"observer {name} may write into the traced program: {found.function} insn "
                             f"{found.insn}: {found.why}; observers must only read their arguments")


def _reachable_from(program: Program, names: tuple[str, ...]) -> set[int] | None:
    """id() of the functions the named programs may run (None: no restriction)."""
    if not names:
        return None
    programs = {f.name: f for f in program.functions if f.is_program}
    unknown = [n for n in names if n not in programs]
    if unknown:
        raise UsageError(f"program {unknown[0]} is not in the object; it has: {', '.join(sorted(programs))}")
    return {id(g) for n in names for g in program.reachable(programs[n])}


def _site_uses(code: dict[int, CodeSection], entries: NoteEntries, index_of: _InsnIndex) -> dict[int, int]:
    """id() of every probe NOP -> the registers its arguments are in (read
    from the entries' columns: no NoteEntry per site)."""
    out = {}
    masks: dict[int, int] = {}      # by body: the decoder keeps one per distinct argument bytes
    sections = [sec.index for sec in entries.sections]
    for section_id, offset, body_id in zip(entries.section_ids, entries.offsets, entries.body_ids, strict=True):
        section = sections[section_id]
        i = index_of.get(section, offset)
        if i is not None:
            mask = masks.get(body_id)
            if mask is None:
                args = entries.bodies[body_id].args
                mask = masks[body_id] = reg_mask(a.reg for a in args if a.kind == "reg" and a.reg is not None)
            out[id(code[section].insns[i])] = mask
    return out


def _gather_text(obj: BpfObject, code: dict[int, CodeSection], edits: CodeEdits) -> int:
    """Move every observer section into .text; the section index of .text."""
    text = next((idx for idx, sec in code.items() if sec.name == TEXT_SECTION), None)
    moving = [idx for idx, sec in code.items() if is_observer_section(sec.name)]
    if text is None:
        if not moving:
            raise InputError(f"{obj.path}: no .text to hold the observers")
        text, moving = moving[0], moving[1:]
        edits.renamed[text] = TEXT_SECTION
    for idx in moving:
        move_code(code, idx, text, edits)
    return text


def _observer_entries(obj: BpfObject, code: dict[int, CodeSection], plan: dict[str, list[str]],
                      index_of: _InsnIndex) -> dict[str, Observer]:
    """Observer name -> its first instruction (found before any section moves)."""
    wanted = {n for names in plan.values() for n in names}
    out = {}
    for sym in obj.symbols:
        if sym.name in wanted and sym.name not in out and sym.type == STT_FUNC \
                and (i := index_of.get(sym.shndx, sym.value)) is not None:
            out[sym.name] = Observer(sym.name, code[sym.shndx].insns[i], sym.num,
                                     at_site_id=sym.name.startswith(RECORDER_PREFIX))
    missing = wanted - set(out)
    if missing:
        raise InputError(f"observer {', '.join(sorted(missing))} not found in the linked object")
    return out


def _called_through_section_symbol(obj: BpfObject, observers: dict[str, Observer],
                                   text: int) -> dict[str, Observer]:
    """Observers as calls from another section name them: through the section
    symbol of the code section they now live in, with the callee in the
    immediate, as clang writes a static call.  A relocation against the
    observer's own (local) symbol is refused by cilium/ebpf."""
    section_symbol = next((s.num for s in obj.symbols if s.type == STT_SECTION and s.shndx == text), None)
    if section_symbol is None:
        raise InputError(f"{obj.path}: section {obj.sections[text].name} has no section symbol to call "
                         "its observers through")
    return {name: replace(o, symbol=section_symbol) for name, o in observers.items()}


class _SitePlan(NamedTuple):
    """What the sites with the same frame below them, live registers,
    arguments, types, observers and section get alike, in any function."""

    frame: Frame
    grown: int                       # the function's frame with the site's
    observer_names: tuple[str, ...]
    shape: Shape
    stores_site_id: bool
    calls: list[tuple[str, int]]     # per observer: bytes from its call's r1 = r10 to the sequence's end


_PlanKey = tuple[int, int, int, int, int, bool]


class _SitePlans:
    """One run's plans, call-chain verdicts and sequence shapes.  A plan is
    keyed by the frame its function uses, the live registers and id() of
    what its sites share and the run keeps alive (the decoder's shared
    argument tuple, the probe's types and observer list): a site's key is a
    few ints, not a hash of its arguments' dataclasses.  ``chains`` keeps
    :func:`_check_call_chain`'s verdict (None: passed; else the finding) by
    function, grown frame and observers: it depends on nothing else."""

    def __init__(self) -> None:
        self.plans: dict[_PlanKey, _SitePlan] = {}
        self.chains: dict[tuple[int, int, tuple[str, ...]], str | None] = {}
        self.shapes = SequenceShapes()


def _site_code(program: Program, f: Function, idx: int, probe: str, args: tuple[ArgLocation, ...],
               types: tuple[ArgType, ...],
               observers: list[Observer], cross_section: bool, plans: _SitePlans) -> _SitePlan:
    """The plan of the site at ``idx`` in ``f``'s section: its sequence is
    the plan's shape around its own site-id store (made when inserted)."""
    local = idx - f.start
    live = live_after(f, local) & CLOBBER
    unset = live & ~initialised_after(f, local)
    if unset:
        regs = ", ".join(f"r{r}" for r in regs_of(unset))
        raise SiteError(f"{regs} {'is' if len(regs_of(unset)) == 1 else 'are'} live after the site but not "
                        "set on every path to it, so the call cannot save and restore it")
    if len(types) != len(args):
        raise SiteError(f"probe {probe}: the note has {len(args)} arguments, its BTF "
                        f"prototype {len(types)}")
    used = f.frame
    key = (used, live, id(args), id(types), id(observers), cross_section)
    plan = plans.plans.get(key)
    if plan is None:
        plan = plans.plans[key] = _site_plan(used, live, args, types, observers, cross_section, plans.shapes)
    chain = (id(f), plan.grown, plan.observer_names)
    verdict = plans.chains.get(chain, False)
    if verdict is False:
        try:
            callees = [g for o in observers if (g := program.by_name(o.name)) is not None]
            _check_call_chain(program, f, plan.grown, callees)
            verdict = None
        except SiteError as e:
            verdict = str(e)
        plans.chains[chain] = verdict
    if verdict is not None:
        raise SiteError(verdict)
    return plan


def _site_plan(used: int, live: int, args: tuple[ArgLocation, ...], types: tuple[ArgType, ...],
               observers: list[Observer],
               cross_section: bool, shapes: SequenceShapes) -> _SitePlan:
    """The frame and shape of a site in a function using ``used`` bytes of stack."""
    frame = _frame(-(-used // STACK_SLOT) * STACK_SLOT, live, len(args))
    calls = list(zip([obs.name for obs in observers], call_ends(frame, len(observers)), strict=True))
    return _SitePlan(frame, max(used, frame.depth), tuple([o.name for o in observers]),
                     shapes.shape(args, types, frame, observers, cross_section),
                     any([o.at_site_id for o in observers]), calls)


@functools.lru_cache(maxsize=FRAME_SHAPES)
def _frame(base: int, live: int, nargs: int) -> Frame:
    """The frame of a site: one object per distinct frame, which the sites of
    a function mostly share (Frame keeps what it works out)."""
    return Frame(base=base, saved=tuple(regs_of(live)), nargs=nargs)


def _check_call_chain(program: Program, f: Function, grown: int, observers: list[Function]) -> None:
    """The verifier's limits on every call chain through a site in ``f``,
    with ``grown`` bytes of frame and the observers as more callees: no
    recursion (exit 2), no unbounded frame, at most 8 frames, less than 256
    bytes above a tail call, at most 512 bytes (findings)."""
    for g in [f, *observers]:
        cycle = program.chain_through(g)
        if cycle is not None:
            who = f"observer {g.name}" if g is not f else g.name
            raise InputError(f"{who}: the verifier refuses recursion: {' -> '.join(h.name for h in cycle)}")
    if f.reach.unbounded is not None:
        raise SiteError(f"the stack frame of {f.name} cannot be bounded ({f.reach.unbounded[1]}), so the "
                        "call's spills and arguments could overwrite live stack")
    unbounded = program.unbounded_in_chain(f, observers)
    if unbounded is not None and unbounded.reach.unbounded is not None:
        raise SiteError(f"the stack frame of {unbounded.name}, on a call chain through this site, cannot be "
                        f"bounded ({unbounded.reach.unbounded[1]})")
    frames = program.frames_through(f, observers)
    if frames > MAX_CALL_FRAMES:
        raise SiteError(f"the call chain through this site would be {frames} calls deep (the verifier allows "
                        f"{MAX_CALL_FRAMES})")
    tail = program.tail_call_depth(f, grown, observers)
    if tail is not None and tail[1] >= TAIL_CALL_STACK:
        raise SiteError(f"{tail[0].name}, below this site, makes a tail call, and the frames above it would use "
                        f"{tail[1]} bytes (the verifier allows less than {TAIL_CALL_STACK} there)")
    depth = program.chain_above(f) + program.chain_below(f, frame=grown, extra=observers)
    if depth > MAX_STACK:
        raise SiteError(f"the call chain through this site would use {depth} bytes of stack "
                        f"(the verifier allows {MAX_STACK}); {f.name} already uses {f.frame}")


def _insert_after(sec: CodeSection, at: dict[int, tuple[_SitePlan, int | None]]) -> None:
    """One pass: each selected NOP followed by its sequence (its plan's
    shape around its site-id store, made here: no list per site before)."""
    out: list[Insn] = []
    for i, insn in enumerate(sec.insns):
        out.append(insn)
        placed = at.get(i)
        if placed is not None:
            plan, site_id = placed
            plan.shape.extend(out, plan.frame, site_id)
    sec.insns = out


def _where(entry: NoteEntry, f: Function, table: SiteTable) -> str:
    file, line, _ = table.location(entry)
    src = f" ({file}:{line})" if file else ""
    return f"{entry.probe} in {f.name}, {entry.section.name} insn {entry.offset // INSN_SIZE}{src}"

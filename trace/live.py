"""`bpf-sdt trace OBJ --live WHERE`: trace a program someone else loaded, by
swapping an instrumented copy in and the original back (a compare-and-swap
by the kernel for XDP and links; check-then-replace for cls_bpf filters and
prog_array slots).

1. Find the running program (WHERE: ``xdp:IFACE``, ``tc:IFACE[:DIR]``,
   ``id:N``, ``pin:PATH``) and how it is attached (kernel.*_hooks).
2. Take the attach point: a record in bpf-sdt's bpffs directory
   (bpf_sdt.records; a live or stale record refuses).
3. Prove identity: OBJ's program, relocated by libbpf against the running
   program's maps, must have the running program's name, type and tag (the
   kernel's hash of those instructions; an unattached load of it where the
   hash does not match).
4. Instrument OBJ with the recorder and load the copy with every map of the
   running program reused: only the recorder's maps are new.
5. Pin the original and the copy in the record, then swap (kernel.Hook.swap),
   trace, and swap back expecting the copy; if something else runs there by
   then, it stays, and trace exits 1.

docs/live.md says what is swapped, how, and what a SIGKILL leaves.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from bpf_sdt import kernel, records
from bpf_sdt.errors import EXIT_FINDINGS, EXIT_OK, InputError, UsageError, escape_text
from bpf_sdt.format import RECORDER_COUNTS_MAP, RECORDER_RINGBUF_MAP
from bpf_sdt.kernel import Hook, MapInfo, ProgInfo, Replaced
from bpf_sdt.libbpf import LibbpfError, LoadedObject, LoadedProgram, ifindex, obj_get, relocated_program

from . import instcache
from .leftovers import report_stale
from .output import Decoder
from .recorder import Counters
from .ring import open_ring
from .runtime import InBackground, StopSignals, private_bpffs

if TYPE_CHECKING:
    from .output import Writer
    from .runner import Options, _Session
    from .worker import InstrumentWorker

WHERE_KINDS = ("xdp", "tc", "id", "pin")
TC_DIRECTIONS = ("ingress", "egress")
MAPS_SECTION = ".maps"
PROG_ID_MAX = 0xFFFFFFFF               # program ids are u32: a larger N would be truncated by the kernel call
TC_PROTOCOL_ALL = "all"             # how iproute2 names ETH_P_ALL, the protocol libbpf's filters have
INSTEAD = "trace it with --run on packets, or deploy the instrumented object (`bpf-sdt instrument`) and use --pinned"


@dataclass(frozen=True)
class Where:
    kind: str
    target: str                 # interface, id or path
    direction: str = "ingress"  # tc only


def parse_where(spec: str, option: str = "--live") -> Where:
    """WHERE of --live (or of `restore`), checked before anything is touched."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in WHERE_KINDS or not rest:
        raise UsageError(f"{option} {escape_text(spec)}: expected xdp:IFACE, tc:IFACE[:ingress|egress], id:N "
                         "or pin:PATH")
    if kind == "tc":
        iface, sep, direction = rest.partition(":")
        if sep and direction not in TC_DIRECTIONS:
            raise UsageError(f"{option} {escape_text(spec)}: tc direction is ingress or egress")
        return Where(kind, iface, direction or "ingress")
    if kind == "id" and not (rest.isascii() and rest.isdigit() and 0 < int(rest) <= PROG_ID_MAX):
        raise UsageError(f"{option} {escape_text(spec)}: a program id is a number from 1 to {PROG_ID_MAX} "
                         "(32 bits)")
    return Where(kind, rest)


# --- finding the running program ----------------------------------------------------


def find(where: Where, prog_name: str | None) -> tuple[Hook, int]:
    """The attach point and the running program's id; exits 2 (InputError)
    when nothing there can be swapped."""
    if where.kind in ("xdp", "tc"):
        _check_interface(where.target)
        if where.kind == "xdp":
            found = kernel.xdp_hooks(where.target)
        else:
            found = kernel.tc_hooks(where.target, where.direction)
        what = f"{where.kind} {where.direction} of {where.target}" if where.kind == "tc" else f"XDP of {where.target}"
        if not found:
            raise InputError(f"--live: no BPF program runs at the {what}")
        return _one(found, prog_name, what)
    if where.kind == "pin":
        return _pinned(Path(where.target), prog_name)
    return _by_id(int(where.target), prog_name)


def _check_interface(iface: str) -> None:
    try:
        ifindex(iface)
    except LibbpfError:
        raise UsageError(f"interface {escape_text(iface)}: no such device in this network namespace") from None


def _one(found: list[tuple[Hook, int]], prog_name: str | None, what: str) -> tuple[Hook, int]:
    """The hook whose program is --prog (or the only one)."""
    if prog_name is not None and len(found) > 1:
        named = [(h, i) for h, i in found if _prog_name(i) == prog_name[: kernel.NAME_MAX_CHARS]]
        if len(named) == 1:
            for hook, _ in found:
                if hook is not named[0][0]:
                    hook.close()
            found = named
    if len(found) != 1:
        listed = ", ".join(f"{_prog_name(i)} (id {i}) in {h.describe()}" for h, i in found)
        for hook, _ in found:
            hook.close()
        raise InputError(f"--live: {len(found)} programs run at the {what} ({listed}); name one with --prog "
                         "or use id:N")
    return found[0]


def _prog_name(prog_id: int) -> str:
    try:
        fd = kernel.prog_fd_by_id(prog_id)
    except LibbpfError:
        return "?"
    try:
        return kernel.prog_info(fd).name
    finally:
        os.close(fd)


def _by_id(prog_id: int, prog_name: str | None) -> tuple[Hook, int]:
    try:
        fd = kernel.prog_fd_by_id(prog_id)
    except LibbpfError:
        raise InputError(f"--live id:{prog_id}: no such program") from None
    try:
        _swappable(kernel.prog_info(fd))
    finally:
        os.close(fd)
    found = kernel.hooks_of_prog(prog_id)
    if not found:
        raise InputError(f"--live id:{prog_id}: the program is not attached anywhere trace can swap it (no link, "
                         "XDP or tc hook of this network namespace, or prog_array slot holds it)")
    # Prefer where packets reach it directly; a slot when tail calls are the only way in.
    found.sort(key=lambda hi: isinstance(hi[0], kernel.ProgArraySlot))
    for hook, _ in found[1:]:
        hook.close()
    return found[0]


def _pinned(path: Path, prog_name: str | None) -> tuple[Hook, int]:
    try:
        fd = obj_get(path)
    except LibbpfError as e:
        raise InputError(f"--live pin:{escape_text(str(path))}: {e}") from None
    try:
        kind = _fd_kind(fd)
        if kind == "link":
            link = kernel.link_info(fd)
            if link.type not in ("xdp", "tcx", "cgroup", "netkit"):
                raise InputError(f"--live pin:{escape_text(str(path))}: a {link.type} link cannot be updated "
                                 f"in place; {INSTEAD}")
            return kernel.LinkHook(link.id, link.type, link.ifindex), link.prog_id
        if kind != "prog":
            raise InputError(f"--live pin:{escape_text(str(path))}: a pinned {kind}, not a program or link")
        prog_id = kernel.prog_info(fd).id
    finally:
        os.close(fd)
    return _by_id(prog_id, prog_name)


def _check_replaceable(hook: Hook) -> None:
    """A cls_bpf filter is replaced the way libbpf makes filters: direct
    action, every protocol.  Another kind would change what the hook does."""
    if not isinstance(hook, kernel.ClsBpf):
        return
    if hook.chain:
        raise InputError(f"--live: {escape_text(hook.describe())} is in tc chain {hook.chain}; chains other than 0 "
                         f"are not supported (trace replaces filters in chain 0 only); {INSTEAD}")
    with kernel.entered_netns(hook.netns):
        filters = kernel.cls_bpf_filters(hook.iface, hook.direction)
    mine = next((f for f in filters if (f.handle, f.priority, f.chain) == (hook.handle, hook.priority, 0)), None)
    if mine is None:
        return                          # gone meanwhile: the swap's own check says so
    if not mine.direct_action or mine.protocol != TC_PROTOCOL_ALL:
        raise InputError(f"--live: {escape_text(hook.describe())} is a {'' if mine.direct_action else 'non-'}"
                         f"direct-action filter for protocol {escape_text(mine.protocol)}; trace can replace only "
                         f"direct-action filters for every protocol (tc ... protocol all bpf da); {INSTEAD}")


def _fd_kind(fd: int) -> str:
    """"prog", "map" or "link", from the fd's fdinfo."""
    info = Path(f"/proc/self/fdinfo/{fd}").read_text()
    for kind in ("link", "prog", "map"):
        if f"\n{kind}_type:" in info or info.startswith(f"{kind}_type:"):
            return kind
    return "object"


def _swappable(info: ProgInfo) -> None:
    reason = kernel.UNSWAPPABLE_TYPES.get(info.type)
    if reason:
        raise InputError(f"--live: program {escape_text(info.name)} (id {info.id}) is {info.type}: {reason}; "
                         f"{INSTEAD}")


# --- loading OBJ with the running program's maps -----------------------------------------


class RunningMaps:
    """fds of every map the running program uses, open while the copies load."""

    def __init__(self, running: ProgInfo) -> None:
        self.fds: dict[int, int] = {}
        self.infos: list[MapInfo] = []
        try:
            for map_id in running.map_ids:
                fd = kernel.map_fd_by_id(map_id)
                self.fds[map_id] = fd
                self.infos.append(kernel.map_info(fd))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def match(self, name: str, type_id: int, key_size: int, value_size: int, max_entries: int) -> MapInfo | None:
        """The running program's map an object map stands for: same name (as
        the kernel truncates it; internal maps like `<obj>.bss` by their
        section suffix, since the object-name prefix depends on the loader)
        and the same type and sizes."""
        def same_name(kname: str) -> bool:
            if name[: kernel.NAME_MAX_CHARS] == kname:
                return True
            if "." not in name or "." not in kname:
                return False
            section, ksection = name[name.index("."):], kname[kname.index("."):]
            return section.startswith(ksection) and len(ksection) > 1
        fitting = [m for m in self.infos if same_name(m.name) and m.type_id == type_id]
        if len(fitting) > 1:
            fitting = [m for m in fitting if m.name == name[: kernel.NAME_MAX_CHARS]]
        if len(fitting) != 1:
            return None
        found = fitting[0]
        if (found.key_size, found.value_size, found.max_entries) != (key_size, value_size, max_entries):
            raise InputError(f"map {escape_text(name)}: the running program's map {escape_text(found.name)} "
                             f"(id {found.id}) has key {found.key_size}, value {found.value_size}, "
                             f"{found.max_entries} entries; OBJ's has {key_size}, {value_size}, {max_entries}")
        return found


def load_sharing(path: Path, prog_name: str, maps: RunningMaps, obj_name: str | None,
                 pin_root: Path | None = None,
                 load: Callable[[LoadedObject], bool] | None = None
                 ) -> tuple[LoadedObject, LoadedProgram, set[int]] | None:
    """Opens and loads `path` with only `prog_name` loaded and every map the
    running program uses reused; (object, program, ids of the maps reused).
    `load` loads the object instead of BpfObject.load (False: a stop signal
    ended it, and None is returned).  Without `pin_root` nothing is pinned
    (the identity load runs outside trace's private bpffs)."""
    bpf = LoadedObject.open(path, pin_root_path=pin_root, object_name=obj_name)
    try:
        prog = next((p for p in bpf.programs if p.name == prog_name), None)
        if prog is None:
            raise InputError(f"{path}: no program {escape_text(prog_name)}")
        for other in bpf.programs:
            if other is not prog:
                other.set_autoload(False)
        reused = share_maps(bpf, maps, pinning=pin_root is not None)
        if load is None:
            bpf.load()
        elif not load(bpf):
            bpf.close()
            return None
    except BaseException:
        bpf.close()
        raise
    return bpf, prog, reused


def share_maps(bpf: LoadedObject, maps: RunningMaps, pinning: bool) -> set[int]:
    """Before load: each of the object's maps the running program has is
    reused; the ids of those.  Without `pinning`, no map is pinned by name
    (that would pin the running program's map on the host's bpffs)."""
    reused = set()
    for m in bpf.maps:
        if not pinning:
            m.no_pin()
        found = maps.match(m.name, m.type_id, m.key_size, m.value_size, m.max_entries)
        if found is not None:
            m.reuse_fd(maps.fds[found.id])
            reused.add(found.id)
    return reused


def choose_program(obj: Path, running: ProgInfo, prog_name: str | None) -> tuple[str, str]:
    """(OBJ's program that should be the running one, the object's libbpf name)."""
    with LoadedObject.open(obj) as bpf:
        names = [p.name for p in bpf.programs]
        if prog_name is not None:
            if prog_name not in names:
                raise UsageError(f"{obj}: no program {escape_text(prog_name)!r} (programs: "
                                 f"{escape_text(', '.join(names))})")
            return prog_name, bpf.name
        same = [n for n in names if n[: kernel.NAME_MAX_CHARS] == running.name]
        if len(same) == 1:
            return same[0], bpf.name
        raise InputError(f"--live: the running program is {escape_text(running.name)} (id {running.id}); {obj} has "
                         f"{'no program of that name' if not same else 'several'} (programs: "
                         f"{escape_text(', '.join(names))}); name OBJ's with --prog")


def _fills_prog_arrays(obj: Path) -> bool:
    """Does OBJ fill a prog_array itself (a BTF-defined map's `values = {
    [0] = &prog }`: relocations from .maps against code)?  libbpf writes
    those slots at every load, into a reused map too."""
    from bpf_sdt.elf import load_object  # pyelftools: read here only, not at import

    elf = load_object(obj)
    maps = elf.section(MAPS_SECTION)
    if maps is None:
        return False
    _, relocations = elf.relocations(maps)
    by_number = {sym.num: sym for sym in elf.symbols}
    for rel in relocations:
        sym = by_number.get(rel.symbol)
        target = elf.section_at(sym.shndx) if sym is not None else None
        if target is not None and target.executable:
            return True
    return False


IDENTITY_COMPUTED = "identity by the tag of OBJ's relocated instructions"
IDENTITY_LEARNED = "identity by the tag a load of OBJ gave before"
IDENTITY_LOADED = "identity by a load of OBJ"


def prove_identity(obj: Path, prog_name: str, obj_name: str, running: ProgInfo, maps: RunningMaps) -> str:
    """OBJ's program, loaded as the running one was, must get its kernel tag;
    how that was shown (IDENTITY_*).  The tag is computed from the
    instructions libbpf would load, relocated against the running program's
    maps, without a load: the kernel tags the bytes it is given, so a match
    proves them.  Where the computed tag does not match (a kernel hashing
    another way, a loader relocating another way), the tag of a real load is
    the proof: one learned on this kernel and libbpf from these very bytes,
    else a new identity load, whose mismatch refuses."""
    wanted = (running.name, running.type, running.tag)
    if computed_identity(obj, prog_name, obj_name, running, maps):
        return IDENTITY_COMPUTED
    if instcache.known_tag(obj, prog_name) == wanted:
        return IDENTITY_LEARNED
    loaded = load_sharing(obj, prog_name, maps, obj_name)
    assert loaded is not None           # loaded without a stop callback
    bpf, prog, _ = loaded
    with bpf:
        mine = kernel.prog_info(prog.fd)
    instcache.remember_tag(obj, prog_name, (mine.name, mine.type, mine.tag))
    if (mine.name, mine.type, mine.tag) != wanted:
        raise InputError(f"--live: the running program {escape_text(running.name)} (id {running.id}, "
                         f"{running.type}, tag {running.tag}) is not {obj}'s {escape_text(mine.name)} "
                         f"({mine.type}, tag {mine.tag}); nothing was swapped")
    return IDENTITY_LOADED


def computed_identity(obj: Path, prog_name: str, obj_name: str, running: ProgInfo, maps: RunningMaps) -> bool:
    """Is the running program OBJ's, by the tag its relocated instructions
    get (libbpf.relocated_program: no verifier run)?  False also when
    libbpf could not relocate them (the identity load then says why)."""
    try:
        mine = relocated_program(obj, prog_name, obj_name, lambda b: share_maps(b, maps, pinning=False))
    except LibbpfError:
        return False
    return ((mine.name[: kernel.NAME_MAX_CHARS], mine.type) == (running.name, running.type)
            and running.tag in kernel.program_tags(mine.instructions))


# --- the trace ---------------------------------------------------------------------------------


def _refuse_taken(key: str, where: str, busy: records.RecordBusy) -> InputError:
    rec = busy.record
    if rec is not None and rec.alive():
        return InputError(f"--live {escape_text(where)}: already being traced (bpf-sdt pid {rec.pid}, "
                          f"{escape_text(rec.where)}); one trace per attach point")
    if rec is None and records.starting(key):
        return InputError(f"--live {escape_text(where)}: another bpf-sdt trace is taking it right now; one trace "
                          "per attach point")
    return InputError(f"--live {escape_text(where)}: a trace that was killed left it changed "
                      f"({records.root() / key}); run `bpf-sdt restore` first")


@contextlib.contextmanager
def _sighup_stops(stop: StopSignals) -> Iterator[None]:
    """SIGHUP (a closed terminal) ends a live trace like SIGTERM: the original
    must go back."""
    previous = signal.signal(signal.SIGHUP, lambda signum, _frame: stop._on_signal(signum, _frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


def trace_live(opts: Options, stop: StopSignals, out: Writer | TextIO, err: TextIO,
               worker: InstrumentWorker) -> int | None:
    """The --live flow; None when a signal ended it before the swap.
    ``worker`` instruments OBJ unless the cache has the copy (the caller
    closes it)."""
    assert opts.live is not None
    where = parse_where(opts.live)
    started = time.monotonic()
    err = cast(TextIO, _Stderr(err))     # every writer of the live path writes through it
    report_stale(err)
    hook, running_id = find(where, opts.prog)
    try:
        _check_replaceable(hook)
        with _sighup_stops(stop):
            return _with_hook(opts, hook, running_id, started, stop, out, err, worker)
    finally:
        hook.close()


def _with_hook(opts: Options, hook: Hook, running_id: int, started: float, stop: StopSignals, out: Writer | TextIO,
               err: TextIO, worker: InstrumentWorker) -> int | None:
    assert opts.live is not None
    original_fd = kernel.prog_fd_by_id(running_id)     # holds the original for as long as trace runs
    try:
        running = kernel.prog_info(original_fd)
        _swappable(running)
        key = records.record_key(*hook.key())
        try:
            held = records.create(records.Record(key=key, kind="live", where=opts.live, hook=hook.to_dict(),
                                                 extra={"original_id": running.id}))
        except records.RecordBusy as busy:
            raise _refuse_taken(key, opts.live, busy) from None
        try:
            held.pin(records.ORIGINAL_PIN, original_fd)
            return _prepare_and_swap(opts, hook, running, original_fd, held, started, stop, out, err, worker)
        finally:
            if held.record.state == "swapped":
                # The swap back failed (an error, not another loader): the
                # record stays, stale once we exit, for `bpf-sdt restore`.
                err.write(f"bpf-sdt trace: {escape_text(hook.describe())} still runs the instrumented copy; "
                          "run `bpf-sdt restore`\n")
            else:
                held.remove()
    finally:
        os.close(original_fd)


def _prepare_and_swap(opts: Options, hook: Hook, running: ProgInfo, original_fd: int, held: records.Held,
                      started: float, stop: StopSignals, out: Writer | TextIO, err: TextIO,
                      worker: InstrumentWorker) -> int | None:
    """The exit code; the record's state is "swapped" while the copy runs."""
    from .runner import _layout, _load_interruptibly, instrumented_copy, open_outputs

    if _fills_prog_arrays(opts.obj):
        raise InputError(f"--live: {opts.obj} fills a prog_array itself (`values = {{ ... }}` in .maps); libbpf "
                         "would write its own programs into the running program's tail-call slots when loading a "
                         "copy; nothing was swapped")
    maps = RunningMaps(running)
    identity: list[InBackground[str]] = []           # the identity proof, made while the copy loads
    try:
        prog_name, obj_name = choose_program(opts.obj, running, opts.prog)

        def prove_meanwhile() -> None:
            # The identity proof runs while the copy loads: the verifier leaves
            # the other core free (while instrument works in its child, clang
            # shares that core with it).  Where the proof comes to a load of
            # its own, the two verifications run on the two cores.
            identity.append(InBackground(prove_identity, opts.obj, prog_name, obj_name, running, maps))

        def proved() -> str:
            """Waits for the identity proof (how it was made); a mismatch raises here."""
            return "; ".join(proof.result() for proof in identity)

        with tempfile.TemporaryDirectory(prefix="bpf-sdt-trace-") as tmp:
            inst = Path(tmp) / opts.obj.name
            layout = _layout(opts)                  # filters and aggregations compiled into the copy
            # Only the swapped program's sites: a site elsewhere in OBJ cannot refuse the trace.
            copy = instrumented_copy(opts, (prog_name,), inst, stop, None, worker, reap_later=True, beside_load=True)
            if copy is None or stop.requested:
                proved()
                return None
            shown = {site_id for site_id, _ in copy.shown}
            instrumented_at = time.monotonic()
            with private_bpffs(Path(tmp) / "pins") as pins:
                # The copy's verification, in a thread a stop signal can cut short.
                def load(bpf: LoadedObject) -> bool:
                    # The identity proof, the site table and the cache entry are
                    # made meanwhile, and the worker writes the recorder's: the
                    # verifier holds no GIL.
                    prove_meanwhile()
                    copy.finish_in_background()
                    return _load_interruptibly(bpf, stop)

                try:
                    loaded = load_sharing(inst, prog_name, maps, obj_name, pins, load)
                finally:
                    copy.wait()                 # it copies the copy, which goes with the directory
                    worker.close(kill=stop.requested, wait=False)     # reaped if its cache writes are done
                if loaded is None:
                    proved()
                    return None
                bpf, prog, reused = loaded
                with bpf:
                    sites = copy.result().sites     # a site table that does not match stops here too
                    how = proved()                  # a mismatch stops here, before anything is pinned or swapped
                    maps.close()
                    missing = set(running.map_ids) - reused
                    if missing:
                        raise InputError(f"--live: the instrumented copy does not use the running program's map(s) "
                                         f"{', '.join(map(str, sorted(missing)))}; its state could not continue")
                    loaded_at = time.monotonic()
                    held.pin(records.INSTRUMENTED_PIN, prog.fd)
                    held.write(state="swapping", instrumented_id=kernel.prog_info(prog.fd).id, tmp=tmp)
                    if stop.requested:
                        return None
                    decoder = Decoder(sites, as_json=opts.as_json, count_only=opts.count, shown=shown,
                                      t0_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC), err=err)
                    with _session(bpf, decoder, opts, stop, out, err) as session:
                        open_outputs(session, bpf, layout, sites, shown, opts, err)
                        try:
                            hook.swap(prog.fd, original_fd)
                        except Replaced as e:
                            raise InputError(f"--live: {e} instead of {running.name} (id {running.id}), changed "
                                             "while trace prepared; nothing was swapped") from None
                        # From here on the copy runs: whatever fails (the record
                        # update, a closed stderr or stdout), the swap back runs.
                        try:
                            held.write(state="swapped")
                            instrumenting = "instrumented object from the cache" if copy.cached else "instrument"
                            err.write(f"bpf-sdt trace: prepared in {loaded_at - started:.2f} s (finding "
                                      f"and {instrumenting}: {instrumented_at - started:.2f} s, load and identity "
                                      f"{loaded_at - instrumented_at:.2f} s; {how}); "
                                      f"{escape_text(hook.describe())}: swapped to the instrumented copy "
                                      f"({hook.atomic}; {len(reused)} map(s) shared)\n")
                            session.ready(sites, shown, f"{running.name} (id {running.id}) at {hook.describe()}")
                            session.follow(opts.duration)
                        finally:
                            code, said = _swap_back(hook, prog.fd, original_fd, running)
                            held.record.state = "restored"      # before anything is written
                            err.write(said)
                        session.finish(opts.count)
                    return code
    finally:
        for proof in identity:
            proof.wait()                    # it uses the maps' fds
        maps.close()


def _session(bpf: LoadedObject, decoder: Decoder, opts: Options, stop: StopSignals, out: Writer | TextIO,
             err: TextIO) -> _Session:
    """trace's own ring session over the copy's recorder maps (the same
    reading, decoding and summary as every other mode)."""
    from .runner import _Session

    ring_map = bpf.find_map(RECORDER_RINGBUF_MAP)
    return _Session(open_ring(ring_map.fd, ring_map.max_entries, opts.reader), decoder,
                    Counters(bpf.find_map(RECORDER_COUNTS_MAP)), stop, out, err)


def _swap_back(hook: Hook, instrumented_fd: int, original_fd: int, running: ProgInfo) -> tuple[int, str]:
    """Puts the original back, expecting the copy; (the exit code, the line
    to say), written by the caller once the record says so."""
    try:
        hook.swap(original_fd, instrumented_fd)
    except Replaced as e:
        return EXIT_FINDINGS, (f"bpf-sdt trace: {escape_text(hook.describe())}: {e}, not the instrumented copy: "
                               f"another loader replaced it while trace ran; left in place ({running.name}, id "
                               f"{running.id}, not put back)\n")
    return EXIT_OK, f"bpf-sdt trace: {escape_text(hook.describe())}: {running.name} (id {running.id}) is back\n"


class _Stderr:
    """trace's stderr on the live path: a write that fails (a closed pipe, a
    full disk) is dropped, so it can never skip the swap back or the record
    update; the kernel state matters more than the message."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            return self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

"""Issue 22's figures in one run: bpf-sdt next to the C tools and next to its
own previous revision, at 1k, 10k, 100k and 1M sites, with growth exponents.

Method
------
Trees.  "now" is the code at --current (default HEAD; `worktree` for the
work tree as it is) and "previous" the code at --previous (default f90471f,
the state at the start of the session that filed the scale targets).  Each
revision is extracted with `git archive REV | tar -x` and run as
`python -m bpf_sdt.cli` with PYTHONPATH on a directory of symlinks that
rebuilds the package mapping of that revision's pyproject.toml
([tool.setuptools] package-dir: bpf_sdt.instrument -> instrument/, ...), so
both trees are imported the same way (each tree's module __file__ is checked
before any figure is taken).  The interpreter is a venv of the bench's own
that sees the dev venv's site-packages as a plain path, so its start-up is
an installed package's: the dev venv's editable-install finder, which `pip
install bpf-sdt` does not have, is not imported (installed_python).
Bytecode is compiled once per tree beforehand (PYTHONPYCACHEPREFIX per
tree), as an installed package has it.

Objects.  A count of N sites is UNITS translation units of N/UNITS sites,
each a set of XDP programs of SITES_PER_PROGRAM sites (2- and 3-argument
probes on context fields and constants, one after the other: about 1 insn
per site built, 17 once instrumented), compiled with clang-19 -O2 -g and the
*previous* tree's header (so the same bytes serve both trees and the object
cache survives header edits during a session).  The units are what `link`
links; their link (by the previous tree, else now's) is the N-site object
every other row reads.  Objects are cached in --object-cache (`--only
objects` just builds them), keyed by source, header and compiler; the 1M
units and their link cost about 12 CPU minutes once (22 minutes of wall time
the first time here, on a shared and busy machine), so build them with
`--only objects` before a timed run.  Straight-line sites keep
that affordable (a site under its own condition compiles 2.7x slower) but
are cheap for the verifier too: the kernel-load reference is smaller here
than on branchy programs, so instrument's ratio to it is the harder one.

Rows (all commands are printed with the table):
  instrument  `bpf-sdt instrument OBJ -o OUT` against `bpftool gen object`
              on OBJ with the notes removed (llvm-objcopy; bpftool refuses
              them) and the kernel's load of now's OUT (`bpftool prog
              loadall`, pins in a directory of this process's own, removed
              after).  Targets: <= 0.25x the load, <= 0.5 s at 10k, peak RSS
              <= 2 KB per site, per-site time growing <= 10% between
              consecutive counts from 1k to 100k.  Up to --max-sites
              (default 100k: instrument's 1M output is 10,000 programs).
  link        `bpf-sdt link -o OUT UNITS...` against `bpftool gen object`
              on the stripped units.  Target at 1M: <= 10x and <= 500 MB.
  check, list `bpf-sdt check OBJ`, `bpf-sdt list --json OBJ` against
              `llvm-readelf -r -s OBJ` (all output to /dev/null).  Targets:
              <= 1.5x (check) and 2x (list) the time, <= 2x the peak RSS.
  compile     bench/compile_bench.py's source() and measure() (median CPU
              seconds of clang -O2 -g): probes against -DBPF_SDT_DISABLE,
              the RFC's encoding (-DBPF_SDT_STRICT, 5-argument sites), the
              floor (bench/run.py's empty-asm header) and the previous
              tree's header.  Targets: <= 2x disabled, <= strict.
  trace       start-up: command start to the first event line of `trace
              xdp_parser.bpf.o --run xdp_parse --packet P --repeat 1 --json`
              with the instrumented-object cache warm (one untimed run
              first) and off, against bpftrace from its start to the first
              event of a tracepoint one-liner (sys_enter_getppid, a thread
              of this process calling getppid).  Target: <= bpftrace.

Each figure is the median of --runs interleaved rounds (--big-runs at 1M):
every round runs previous, now and the references once each, so load on the
shared machine falls on all alike.  Time is wall time; memory is the child's
ru_maxrss from os.wait4 (the largest of the process and the children it
waited for: clang and bpftool for instrument, bpftool for link).  Every
child runs in its own session under --timeout and RLIMIT_AS --memory-limit;
the whole bench stops starting children after --budget seconds; what
exceeded a limit or was skipped is reported as such.  Growth exponent
between consecutive counts n1 < n2: log(t2/t1) / log(n2/n1) (1.0 is
linear).

    .venv/bin/python bench/scale_bench.py [--max-sites 10000] [--previous REV | --no-previous]
        [--current REV|worktree] [--only instrument,link,check,compile,trace] [--report FILE]

Exit status: 0 every figure measured, 1 some measurement failed, timed out or
was skipped, 2 unusable arguments or a missing tool.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_bench  # noqa: E402  (its generator and measurement, reused)
from run import floor_header  # noqa: E402  (the floor compile_bench measures against)

PYTHON = sys.executable
DEFAULT_PREVIOUS = "f90471f"
WORKTREE = "worktree"
COUNTS = (1_000, 10_000, 100_000, 1_000_000)
DEFAULT_MAX_INSTRUMENT = 100_000
BIG = 1_000_000                 # counts from here on run --big-runs rounds
UNITS = 10                      # translation units per count (link's inputs)
SITES_PER_PROGRAM = 100
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DEFAULT_TIMEOUT = 600.0
DEFAULT_MEMORY = 8 * GIB
DEFAULT_BUDGET = 1500.0         # 25 minutes
DEFAULT_RUNS = 3
DEFAULT_BIG_RUNS = 1
TRACE_RUNS = 5
COMPILE_COUNTS = (1_000, 4_000)
COMPILE_RUNS = 3
CLANG = "clang-19"
BPFFS = Path("/sys/fs/bpf")
DEFAULT_CACHE = Path("/var/tmp/bpf-sdt-scale-bench")
SECTIONS_BPFTOOL_REFUSES = (".bpf_sdt_notes", ".rel.bpf_sdt_notes")
CHECK_FINDINGS = 1              # check's exit status when it reports findings (a complete run)

# Targets of issue 22.
INSTRUMENT_LOAD_RATIO = 0.25
INSTRUMENT_10K_SECONDS = 0.5
INSTRUMENT_BYTES_PER_SITE = 2 * KIB
LINEAR_SLACK = 1.10
LINK_RATIO = 10.0
LINK_RSS = 500 * MIB
CHECK_RATIO = 1.5
LIST_RATIO = 2.0
READELF_RSS_RATIO = 2.0
COMPILE_DISABLED_RATIO = 2.0
ISSUE_BPFTRACE_MS = 65          # the issue's measurement, shown beside this run's


class Unusable(Exception):
    """Arguments or an environment the bench cannot measure with (exit 2)."""


# --- bounded children -------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    timeout: float
    memory: int
    deadline: float             # time.monotonic() after which no child starts

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Run:
    """One child: wall seconds, peak RSS in bytes, or why there is none."""
    wall: float = math.nan
    rss: int = 0
    failure: str | None = None
    first_event: float = math.nan       # trace start-up: seconds to the first event line


def _limit_memory(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def run_bounded(cmd: Sequence[str], limits: Limits, env: dict[str, str] | None = None,
                ok: Sequence[int] = (0,), first_line: bytes | None = None) -> Run:
    """Run ``cmd`` in its own session under the limits; with ``first_line``,
    also time the first stdout line containing it (stdout is read, else
    discarded)."""
    timeout = min(limits.timeout, limits.remaining())
    if timeout <= 0:
        return Run(failure="skipped: over --budget")
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE if first_line else subprocess.DEVNULL,
                                    stderr=err, env=env, preexec_fn=_limit_memory(limits.memory),
                                    start_new_session=True)
        except OSError as e:
            return Run(failure=f"cannot run {cmd[0]}: {e.strerror}")
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        first = math.nan
        try:
            if first_line and proc.stdout:
                for line in proc.stdout:            # read to the end: a full pipe would stall trace
                    if math.isnan(first) and first_line in line:
                        first = time.perf_counter() - start
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            # Interrupted: the child is in a session of its own, so no ^C reached it.
            os.killpg(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if killed.is_set():
            return Run(failure=f"timed out after {timeout:.0f} s")
        if proc.returncode not in ok:
            err.seek(0)
            text = err.read().decode(errors="replace")
            why = "over the memory limit" if "MemoryError" in text or "Cannot allocate" in text else \
                f"exit {proc.returncode} (RLIMIT_AS {limits.memory // MIB} MB): {_last_line(text)}"
            return Run(failure=why)
        return Run(wall, usage.ru_maxrss * KIB, first_event=first)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else "(no stderr)"


@dataclass
class Cell:
    """The runs of one command at one count; figures are medians."""
    command: str
    runs: list[Run] = field(default_factory=list)

    def good(self) -> list[Run]:
        return [r for r in self.runs if r.failure is None]

    @property
    def failure(self) -> str | None:
        if self.good():
            return None
        return next((r.failure for r in self.runs if r.failure), "not run")

    @property
    def wall(self) -> float:
        good = self.good()
        return statistics.median(r.wall for r in good) if good else math.nan

    @property
    def rss(self) -> float:
        good = self.good()
        return statistics.median(r.rss for r in good) if good else math.nan

    @property
    def first_event(self) -> float:
        good = [r.first_event for r in self.good() if not math.isnan(r.first_event)]
        return statistics.median(good) if good else math.nan


# --- trees -------------------------------------------------------------------

@dataclass(frozen=True)
class Tree:
    label: str
    rev: str
    root: Path
    pkg: Path           # PYTHONPATH: the package mapping as symlinks
    pycache: Path
    python: str         # the interpreter of an installed package (installed_python)

    def env(self, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # PYTHONSAFEPATH: `-m` would put the working directory (maybe a tree) first on sys.path
        e.update(PYTHONPATH=str(self.pkg), PYTHONPYCACHEPREFIX=str(self.pycache), PYTHONSAFEPATH="1", **extra)
        return e

    def cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "bpf_sdt.cli", *args]


def installed_python(tmp: Path) -> str:
    """An interpreter that runs bpf-sdt as an installed package runs: a venv
    whose only addition is this venv's site-packages, as a plain path.  The
    dev venv's editable install puts an import finder in every start-up
    (its .pth imports pathlib and importlib.util, 5-10 ms of a 10k-site
    check) that `pip install bpf-sdt` does not; a path line in a .pth runs
    no code, and the trees come first on PYTHONPATH anyway."""
    venv = tmp / "installed-venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "bpf_sdt_bench_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)


def extract(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` (a commit) or the work tree itself."""
    if rev == WORKTREE:
        return REPO
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def package_mapping(root: Path, pkg: Path) -> None:
    """Rebuild pyproject.toml's package-dir under ``pkg`` with symlinks: a
    package whose subpackages live elsewhere becomes a directory of links to
    its own files plus one link per mapped subpackage."""
    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name in sorted(dirs, key=lambda n: n.count(".")):
        target, source = pkg.joinpath(*name.split(".")), root / dirs[name]
        if any(other.startswith(name + ".") for other in dirs):
            target.mkdir(parents=True)
            for entry in source.iterdir():
                if entry.name != "__pycache__":
                    (target / entry.name).symlink_to(entry)
        else:
            target.symlink_to(source, target_is_directory=True)


def prepare_tree(label: str, rev: str, tmp: Path, python: str) -> Tree:
    resolved = rev if rev == WORKTREE else subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", "--short", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False).stdout.strip()
    if not resolved:
        raise Unusable(f"--{'current' if label == 'now' else 'previous'} {rev}: no such commit")
    root = extract(resolved, tmp / f"src-{label}")
    tree = Tree(label, resolved, root, tmp / f"pkg-{label}", tmp / f"pycache-{label}", python)
    package_mapping(root, tree.pkg)
    subprocess.run([python, "-m", "compileall", "-q", str(tree.pkg)], env=tree.env(), check=False,
                   stdout=subprocess.DEVNULL)
    probe = subprocess.run([python, "-c", "import bpf_sdt.cli, bpf_sdt.instrument, bpf_sdt.postlink;"
                            "print(bpf_sdt.cli.__file__); print(bpf_sdt.instrument.__file__)"],
                           env=tree.env(), capture_output=True, text=True, check=False)
    files = probe.stdout.split()
    if probe.returncode or len(files) != 2 or not all(f.startswith(str(tree.pkg)) for f in files):
        raise Unusable(f"the {label} tree ({resolved}) does not import as itself: "
                         f"{_last_line(probe.stderr) if probe.returncode else files}")
    return tree


# --- objects -------------------------------------------------------------------

PRELUDE = """typedef unsigned int __u32;
#include <bpf_sdt.h>
#define SEC(n) __attribute__((section(n), used))
struct xdp_md { __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
BPF_SDT_DECLARE2(hot, __u32, long);
BPF_SDT_DECLARE3(warm, __u32, __u32, long);
BPF_SDT_DECLARE7(wide, __u32, __u32, __u32, __u32, __u32, int, long);
char LICENSE[] SEC("license") = "GPL";
"""
SITE_ARGS = ("len", "q", "ifi", "len + q")


def unit_source(unit: int, sites: int) -> str:
    """XDP programs of SITES_PER_PROGRAM sites each, alternating a 2- and a
    3-argument probe on context values and the site's number."""
    lines = [PRELUDE]
    for p in range(math.ceil(sites / SITES_PER_PROGRAM)):
        lines.append(f'SEC("xdp") int u{unit}_p{p}(struct xdp_md *x)\n{{\n'
                     "\t__u32 len = x->data_end - x->data, q = x->rx_queue_index, ifi = x->ingress_ifindex;")
        for s in range(min(SITES_PER_PROGRAM, sites - p * SITES_PER_PROGRAM)):
            lines.append(f"\t{_site(s)}")
        lines.append("\treturn 2;\n}")
    return "\n".join(lines) + "\n"


def _site(s: int) -> str:
    """Site s: a 2-, 3- or 7-argument probe on context values and constants."""
    a = [SITE_ARGS[(s + k) % len(SITE_ARGS)] for k in range(len(SITE_ARGS))]
    return (f"BPF_SDT_PROBE2(hot, {a[0]}, {s});", f"BPF_SDT_PROBE3(warm, {a[0]}, {a[1]}, {s});",
            f"BPF_SDT_PROBE3(warm, {a[2]}, {a[3]}, -{s});")[s % 3]


@dataclass(frozen=True)
class Objects:
    sites: int
    units: list[Path]
    stripped_units: list[Path]
    linked: Path
    stripped: Path


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:20]


def _atomic(build: Callable[[Path], None], dest: Path) -> Path:
    if dest.exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    build(tmp)
    tmp.replace(dest)
    return dest


def _checked(run: Run, what: str) -> None:
    if run.failure:
        raise RuntimeError(f"{what}: {run.failure}")


def strip_notes(obj: Path, dest: Path, limits: Limits) -> Path:
    def build(tmp: Path) -> None:
        cmd = ["llvm-objcopy-19" if shutil.which("llvm-objcopy-19") else "llvm-objcopy"]
        for s in SECTIONS_BPFTOOL_REFUSES:
            cmd += ["--remove-section", s]
        _checked(run_bounded([*cmd, str(obj), str(tmp)], limits), f"stripping {obj.name}")
    return _atomic(build, dest)


def build_objects(n: int, header: Path, linker: Tree, cache: Path, limits: Limits, scratch: Path | None) -> Objects:
    """The N-site units (compiled in parallel, cached) and their link (into
    ``scratch`` when the linker is the work tree, whose code has no name)."""
    clang_id = subprocess.run([CLANG, "--version"], capture_output=True, check=True).stdout
    header_bytes = (header / "bpf_sdt.h").read_bytes()
    cache.mkdir(parents=True, exist_ok=True)
    per_unit = n // UNITS

    def unit(u: int) -> tuple[Path, Path]:
        text = unit_source(u, per_unit)
        src = cache / f"u{u}-{per_unit}-{_digest(text.encode(), header_bytes, clang_id)}.bpf.c"

        def compile_unit(tmp: Path) -> None:
            src.write_text(text)
            _checked(run_bounded([CLANG, "-target", "bpf", "-O2", "-g", f"-I{header}", "-c", str(src), "-o",
                                  str(tmp)], limits), f"compiling {src.name}")
        obj = _atomic(compile_unit, src.with_suffix(".o"))
        return obj, strip_notes(obj, obj.with_suffix(".stripped.o"), limits)

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        built = list(pool.map(unit, range(UNITS)))
    units = [u for u, _ in built]
    key = _digest(*(u.name.encode() for u in units), linker.rev.encode())
    linked_dest = scratch / f"linked-{n}.o" if scratch else cache / f"linked-{n}-{key}.o"

    def link(tmp: Path) -> None:
        _checked(run_bounded(linker.cli("link", "-o", str(tmp), *map(str, units)), limits, env=linker.env()),
                 f"linking the {n}-site object ({linker.label})")
    linked = _atomic(link, linked_dest)
    return Objects(n, units, [s for _, s in built], linked, strip_notes(linked, linked.with_suffix(".stripped.o"),
                                                                         limits))


# --- rows --------------------------------------------------------------------

@dataclass
class Row:
    work: str
    sites: int
    now: Cell
    previous: Cell | None
    references: list[Cell]
    targets: list[tuple[str, bool | None]] = field(default_factory=list)   # (text, met; None: not measured)


def interleave(cells: Sequence[tuple[Cell, Callable[[], Run]]], rounds: int) -> None:
    for _ in range(rounds):
        for cell, job in cells:
            cell.runs.append(job())


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, now: Tree, previous: Tree | None) -> None:
        self.args, self.tmp, self.now, self.previous = args, tmp, now, previous
        self.limits = Limits(args.timeout, args.memory_limit, time.monotonic() + args.budget)
        self.bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
        self.readelf = shutil.which("llvm-readelf-19") or shutil.which("llvm-readelf") or "llvm-readelf"
        self.rows: list[Row] = []
        self.commands: dict[str, str] = {}
        self.aliases: dict[str, str] = {str(tmp): "$TMP"}     # how paths are shown in the commands
        self.failed = False

    def trees(self) -> list[Tree]:
        return [t for t in (self.previous, self.now) if t is not None]

    def rounds(self, n: int) -> int:
        rounds: int = self.args.big_runs if n >= BIG else self.args.runs
        return rounds

    def job(self, name: str, cmd: list[str], env: dict[str, str] | None = None, ok: Sequence[int] = (0,),
            first_line: bytes | None = None) -> tuple[Cell, Callable[[], Run]]:
        self.commands.setdefault(name, self.shown(cmd, env))
        return Cell(name), lambda: run_bounded(cmd, self.limits, env=env, ok=ok, first_line=first_line)

    def shown(self, cmd: list[str], env: dict[str, str] | None) -> str:
        text = " ".join(cmd)
        for var in ("BPF_SDT_CACHE", "PYTHONPATH"):         # what tells the trees and the trace rows apart
            if env and var in env:
                text = f"{var}={env[var]} {text}"
        for path, alias in sorted(self.aliases.items(), key=lambda a: -len(a[0])):
            text = text.replace(path, alias)
        return text

    def name_objects(self, o: Objects) -> None:
        """Show o's paths as OBJ and UNITS in the commands."""
        self.aliases.update({" ".join(map(str, o.units)): "UNITS...",
                             " ".join(map(str, o.stripped_units)): "UNITS.stripped...",
                             str(o.linked): "OBJ", str(o.stripped): "OBJ.stripped",
                             str(self.tmp / f"instr{o.sites}"): "$TMP/instrN",
                             str(self.tmp / f"link{o.sites}"): "$TMP/linkN"})

    def sdt(self, name: str, tree: Tree | None, *args: str, ok: Sequence[int] = (0,)
            ) -> tuple[Cell, Callable[[], Run]] | None:
        if tree is None:
            return None
        return self.job(f"{name} ({tree.label})", tree.cli(*args), env=tree.env(
            BPF_SDT_CACHE=str(self.tmp / f"cache-{tree.label}")), ok=ok)

    def pair(self, name: str, *args: str, ok: Sequence[int] = (0,), out: str = ""
             ) -> tuple[tuple[Cell, Callable[[], Run]], tuple[Cell, Callable[[], Run]] | None]:
        """now's and previous's job for one command; ``out`` names an output
        argument that each tree writes to a file of its own."""
        def for_tree(tree: Tree) -> list[str]:
            return [a.replace("{out}", str(self.tmp / f"{out}.{tree.label}.o")) for a in args]
        now = self.sdt(name, self.now, *for_tree(self.now), ok=ok)
        assert now is not None
        prev = self.sdt(name, self.previous, *for_tree(self.previous), ok=ok) if self.previous else None
        return now, prev

    def add(self, row: Row) -> None:
        self.rows.append(row)
        cells = [row.now, *([row.previous] if row.previous else []), *row.references]
        if any(c.failure for c in cells):
            self.failed = True
        print(f"  {row.work} {row.sites:>9,}: now {fmt(row.now)}"
              + (f", previous {fmt(row.previous)}" if row.previous else "")
              + "".join(f", {c.command.split(' ')[0]} {fmt(c)}" for c in row.references), flush=True)

    # instrument ---------------------------------------------------------------

    def instrument(self, o: Objects) -> None:
        now, prev = self.pair("instrument", "instrument", str(o.linked), "-o", "{out}", out=f"instr{o.sites}")
        gen = self.job("bpftool gen object", [self.bpftool, "gen", "object", str(self.tmp / "gen.o"),
                                              str(o.stripped)])
        load_cell = Cell("kernel load")
        pins = pin_directory()
        loaded = self.tmp / f"instr{o.sites}.now.o"
        load_cmd = [self.bpftool, "prog", "loadall", str(loaded), str(pins)]
        self.commands.setdefault("kernel load", self.shown(load_cmd[:-1], None) + " /sys/fs/bpf/sdt_scale_<pid>")

        def load() -> Run:
            try:
                return run_bounded(load_cmd, self.limits)
            finally:
                shutil.rmtree(pins, ignore_errors=True)      # our own pins only

        interleave([*([prev] if prev else []), now, gen, (load_cell, load)], self.rounds(o.sites))
        row = Row("instrument", o.sites, now[0], prev[0] if prev else None, [gen[0], load_cell])
        n, t = o.sites, now[0]
        row.targets.append((f"<= {INSTRUMENT_LOAD_RATIO}x load", _le(t.wall, INSTRUMENT_LOAD_RATIO * load_cell.wall)))
        if n == 10_000:
            row.targets.append((f"<= {INSTRUMENT_10K_SECONDS} s", _le(t.wall, INSTRUMENT_10K_SECONDS)))
        row.targets.append((f"<= {INSTRUMENT_BYTES_PER_SITE // KIB} KB/site", _le(t.rss / n,
                                                                               INSTRUMENT_BYTES_PER_SITE)))
        self.add(row)

    # link -----------------------------------------------------------------------

    def link(self, o: Objects) -> None:
        units = list(map(str, o.units))
        now, prev = self.pair("link", "link", "-o", "{out}", *units, out=f"link{o.sites}")
        gen = self.job("bpftool gen object (units)", [self.bpftool, "gen", "object", str(self.tmp / "genl.o"),
                                                      *map(str, o.stripped_units)])
        interleave([*([prev] if prev else []), now, gen], self.rounds(o.sites))
        row = Row("link", o.sites, now[0], prev[0] if prev else None, [gen[0]])
        if o.sites >= BIG:
            row.targets += [(f"<= {LINK_RATIO:.0f}x bpftool", _le(now[0].wall, LINK_RATIO * gen[0].wall)),
                            (f"<= {LINK_RSS // MIB} MB", _le(now[0].rss, LINK_RSS))]
        self.add(row)
        for tree in self.trees():
            (self.tmp / f"link{o.sites}.{tree.label}.o").unlink(missing_ok=True)

    # check and list -----------------------------------------------------------

    def check_and_list(self, o: Objects) -> None:
        readelf = self.job("llvm-readelf -r -s", [self.readelf, "-r", "-s", str(o.linked)])
        check = self.pair("check", "check", str(o.linked), ok=(0, CHECK_FINDINGS))
        listing = self.pair("list", "list", "--json", str(o.linked))
        jobs = [readelf, *(j for pair in (check, listing) for j in pair if j is not None)]
        interleave(jobs, self.rounds(o.sites))
        for work, (now, prev), ratio in (("check", check, CHECK_RATIO), ("list --json", listing, LIST_RATIO)):
            row = Row(work, o.sites, now[0], prev[0] if prev else None, [readelf[0]])
            row.targets += [(f"<= {ratio}x readelf", _le(now[0].wall, ratio * readelf[0].wall)),
                            (f"RSS <= {READELF_RSS_RATIO:.0f}x", _le(now[0].rss, READELF_RSS_RATIO * readelf[0].rss))]
            self.add(row)

    # compile --------------------------------------------------------------------

    def compile(self) -> list[str]:
        clang = shutil.which(CLANG)
        assert clang
        counts = sorted(self.args.compile_counts)
        header = self.now.root / "headers"
        reference = self.previous.root / "headers" if self.previous else None
        floor = floor_header(self.tmp / "compile-floor")
        lines = [f"compile: bench/compile_bench.py's source(n, arity) and measure(), {CLANG} -O2 -g, median CPU s "
                 f"of {COMPILE_RUNS} interleaved runs"
                 + (f"; previous = probes with {self.previous.rev}'s header" if self.previous else "")]
        for nargs, family in compile_bench.FAMILIES.items():
            modes = family + ((compile_bench.REFERENCE,) if reference else ())
            names = [self.compile_mode(m) for m in modes]
            lines += ["", f"| {nargs} args: sites | " + " | ".join(names) + " | "
                      + " | ".join(f"probes/{m}" for m in names[1:]) + " | targets |",
                      "|---" * (2 * len(modes) + 1) + "|"]
            series: dict[str, list[float]] = {m: [] for m in modes}
            for n in counts:
                if self.limits.remaining() <= 0:
                    lines.append(f"| {n:,} | skipped: over --budget |")
                    self.failed = True
                    continue
                src = self.tmp / f"compile-{n}-{nargs}.bpf.c"
                src.write_text(compile_bench.source(n, nargs))
                t = compile_bench.measure(clang, src, modes, COMPILE_RUNS, header, reference, floor)
                for m in modes:
                    series[m].append(t[m])
                met = [f"<= {COMPILE_DISABLED_RATIO:.0f}x disabled: "
                       f"{_mark(_le(t['probes'], COMPILE_DISABLED_RATIO * t['disabled']))}"]
                if "strict" in t:
                    met.append(f"<= strict: {_mark(_le(t['probes'], t['strict']))}")
                lines.append(f"| {n:,} | " + " | ".join(_s(t[m]) for m in modes) + " | "
                             + " | ".join(_x(t["probes"], t[m]) for m in modes[1:]) + f" | {'; '.join(met)} |")
            if len(counts) > 1 and all(len(v) == len(counts) for v in series.values()):
                lines.append(f"growth exponent {counts[0]:,} -> {counts[-1]:,}, {nargs} args: "
                             + ", ".join(f"{self.compile_mode(m)} {compile_bench.exponent(counts, v):.2f}"
                                         for m, v in series.items()))
        self.commands["compile"] = (f"{CLANG} -target bpf -O2 -g -Wall -Wextra -Werror -I<tree>/headers "
                                    "[-DBPF_SDT_DISABLE | -DBPF_SDT_STRICT | -I<floor header>] -c SRC -o /dev/null")
        return lines

    @staticmethod
    def compile_mode(mode: str) -> str:
        return {compile_bench.REFERENCE: "previous", "strict": "strict (RFC)"}.get(mode, mode)

    # trace start-up -----------------------------------------------------------

    def trace(self) -> list[str]:
        obj = self.build_sample()
        packet = self.tmp / "udp.pkt"
        packet.write_bytes(udp_frame())
        lines = [f"trace start-up: command start to the first event line, median of {TRACE_RUNS} interleaved runs"]
        cells: list[tuple[Cell, Callable[[], Run]]] = []
        for tree in self.trees():
            for cache in ("warm", "off"):
                where = str(self.tmp / f"trace-cache-{tree.label}") if cache == "warm" else "off"
                cmd = tree.cli("trace", str(obj), "--run", "xdp_parse", "--packet", str(packet), "--repeat", "1",
                               "--json")
                job = self.job(f"trace, cache {cache} ({tree.label})", cmd, env=tree.env(BPF_SDT_CACHE=where),
                               first_line=b'"probe"')
                if cache == "warm":
                    job[1]()            # fills the cache: the warm figure is a second start
                cells.append(job)
        bpftrace = shutil.which("bpftrace")
        if bpftrace:
            cells.append(self.bpftrace_job(bpftrace))
        interleave(cells, TRACE_RUNS)
        reference = cells[-1][0].first_event if bpftrace else ISSUE_BPFTRACE_MS / 1e3
        lines += ["| command | first event | wall to exit | peak RSS | ratio to bpftrace | target |",
                  "|---|---|---|---|---|---|"]
        for cell, _ in cells:
            if cell.failure:
                self.failed = True
                lines.append(f"| {cell.command} | {cell.failure} | | | | |")
                continue
            target = "" if cell.command.startswith("bpftrace") else \
                f"<= bpftrace: {_mark(_le(cell.first_event, reference))}"
            lines.append(f"| {cell.command} | {_ms(cell.first_event)} | {_ms(cell.wall)} | {_mb(cell.rss)} | "
                         f"{_x(cell.first_event, reference)} | {target} |")
        lines.append(f"(the issue measured bpftrace's start-up at about {ISSUE_BPFTRACE_MS} ms on this machine)")
        return lines

    def bpftrace_job(self, bpftrace: str) -> tuple[Cell, Callable[[], Run]]:
        cmd = [bpftrace, "-e", 'tracepoint:syscalls:sys_enter_getppid { printf("event\\n"); exit(); }']
        cell, run = self.job("bpftrace one-liner", cmd, first_line=b"event")

        def with_trigger() -> Run:
            stop = threading.Event()

            def trigger() -> None:
                while not stop.wait(0.001):
                    os.getppid()
            thread = threading.Thread(target=trigger, daemon=True)
            thread.start()
            try:
                return run()
            finally:
                stop.set()
                thread.join()
        return cell, with_trigger

    def build_sample(self) -> Path:
        """xdp_parser.bpf.o built by the samples' Makefile with now's tree."""
        wrapper = self.tmp / "bpf-sdt"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={self.now.pkg} exec {self.now.python} -m bpf_sdt.cli \"$@\"\n")
        wrapper.chmod(0o755)
        out = self.tmp / "samples"
        env = dict(os.environ, PATH=f"{self.tmp}:{os.environ['PATH']}")
        subprocess.run(["make", "-s", "-C", str(self.now.root / "samples"), f"BPF_SDT={wrapper}",
                        f"BPF_CLANG={CLANG}", f"BPF_SDT_OUTDIR={out}", str(out / "xdp_parser.bpf.o")],
                       env=env, check=True, capture_output=True)
        return out / "xdp_parser.bpf.o"


def pin_directory() -> Path:
    """Where the kernel-load reference pins its programs: this process's own."""
    return BPFFS / f"sdt_scale_{os.getpid()}"


def udp_frame() -> bytes:
    """The IPv4/UDP frame (127.77.0.1 -> 127.77.0.2) that fires xdp_parser's probes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from trace_bench import udp_frame as frame
    return frame()


# --- formatting ----------------------------------------------------------------

def _le(a: float, b: float) -> bool | None:
    return None if math.isnan(a) or math.isnan(b) else a <= b


def _mark(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def _s(t: float) -> str:
    return "n/a" if math.isnan(t) else f"{t:.2f} s"


def _ms(t: float) -> str:
    return "n/a" if math.isnan(t) else f"{t * 1e3:.0f} ms"


def _mb(b: float) -> str:
    return "n/a" if math.isnan(b) else f"{b / MIB:.0f} MB" if b >= 10 * MIB else f"{b / MIB:.1f} MB"


def _x(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def _time(t: float) -> str:
    return "n/a" if math.isnan(t) else f"{t:.3f} s" if t < 10 else f"{t:.1f} s"


def fmt(c: Cell) -> str:
    return c.failure if c.failure else f"{_time(c.wall)}, {_mb(c.rss)}"


def table(rows: list[Row]) -> list[str]:
    out = ["| work | sites | bpf-sdt (now) | previous | reference | now / ref: time, RSS | previous / ref | "
           "targets |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        refs = "; ".join(f"{c.command}: {fmt(c)}" for c in r.references)
        ratios = "; ".join(f"{_x(r.now.wall, c.wall)}, {_x(r.now.rss, c.rss)}" for c in r.references)
        prev = "; ".join(_x(r.previous.wall, c.wall) for c in r.references) if r.previous else "n/a"
        targets = "; ".join(f"{t}: {_mark(m)}" for t, m in r.targets) or "-"
        out.append(f"| {r.work} | {r.sites:,} | {fmt(r.now)} | {fmt(r.previous) if r.previous else 'n/a'} | "
                   f"{refs} | {ratios} | {prev} | {targets} |")
    return out


def series_of(rows: list[Row]) -> list[tuple[str, list[tuple[int, Cell]]]]:
    """(name, [(sites, cell)]) per command of each kind of row: now,
    previous and each reference."""
    out: list[tuple[str, list[tuple[int, Cell]]]] = []
    for work in dict.fromkeys(r.work for r in rows):
        same = [r for r in rows if r.work == work]
        out.append((f"{work}, now", [(r.sites, r.now) for r in same]))
        out.append((f"{work}, previous", [(r.sites, r.previous) for r in same if r.previous]))
        for i, ref in enumerate(same[0].references):
            out.append((f"{work}, {ref.command}", [(r.sites, r.references[i]) for r in same]))
    return out


def exponent(a: tuple[int, Cell], b: tuple[int, Cell]) -> str:
    (n1, c1), (n2, c2) = a, b
    e = math.log(c2.wall / c1.wall) / math.log(n2 / n1)
    return f"{n1:,}->{n2:,} {e:.2f} (per site x{(c2.wall / n2) / (c1.wall / n1):.2f})"


def growth(rows: list[Row]) -> list[str]:
    """Exponents between consecutive counts per command, with the per-site
    time ratio that the linearity target reads."""
    out = []
    for name, series in series_of(rows):
        good = [(n, c) for n, c in series if not c.failure]
        if len(good) > 1:
            out.append(f"  {name}: " + ", ".join(exponent(a, b) for a, b in zip(good, good[1:], strict=False)))
    linear = [r for r in rows if r.work == "instrument" and r.sites <= DEFAULT_MAX_INSTRUMENT and not r.now.failure]
    if len(linear) > 1:
        ok = all((b.now.wall / b.sites) <= LINEAR_SLACK * (a.now.wall / a.sites)
                 for a, b in zip(linear, linear[1:], strict=False))
        out.append(f"  target: instrument's time per site grows <= {LINEAR_SLACK - 1:.0%} between consecutive "
                   f"counts up to {DEFAULT_MAX_INSTRUMENT:,}: {_mark(ok)}")
    return out


# --- main ------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--max-sites", type=int, default=BIG, help="largest count measured (default %(default)s)")
    ap.add_argument("--instrument-max-sites", type=int, default=DEFAULT_MAX_INSTRUMENT,
                    help="largest count instrument runs at (default %(default)s)")
    ap.add_argument("--previous", default=DEFAULT_PREVIOUS, help="revision for the previous values (%(default)s)")
    ap.add_argument("--no-previous", action="store_true", help="measure no previous values")
    ap.add_argument("--current", default="HEAD", help=f"revision measured as now, or {WORKTREE} (%(default)s)")
    ap.add_argument("--only", default="instrument,link,check,compile,trace",
                    help="rows to measure, comma-separated (default %(default)s); `objects` only builds the "
                         "objects into --object-cache")
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--big-runs", type=int, default=DEFAULT_BIG_RUNS,
                    help=f"rounds at {BIG:,} sites and more (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per child (%(default)s)")
    ap.add_argument("--memory-limit", type=int, default=DEFAULT_MEMORY, help="RLIMIT_AS bytes per child")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                    help="seconds after which no child starts (default %(default)s)")
    ap.add_argument("--compile-counts", type=lambda v: [int(c) for c in v.split(",")],
                    default=list(COMPILE_COUNTS), help="sites per file for the compile rows (default 1000,4000)")
    ap.add_argument("--object-cache", type=Path, default=DEFAULT_CACHE, help="generated objects (%(default)s)")
    ap.add_argument("--report", type=Path, help="also write the report to this file")
    args = ap.parse_args(argv)
    args.only = set(args.only.split(","))
    unknown = args.only - {"instrument", "link", "check", "compile", "trace", "objects"}
    if unknown or args.runs < 1 or args.big_runs < 1:
        ap.error(f"unknown --only {', '.join(sorted(unknown))}" if unknown else "--runs and --big-runs >= 1")
    return args


def missing_tools() -> list[str]:
    need = [CLANG, "bpftool", "llvm-readelf-19|llvm-readelf", "llvm-objcopy-19|llvm-objcopy", "git", "make"]
    return [t for t in need if not any(shutil.which(a) or Path("/usr/sbin", a).exists() for a in t.split("|"))]


def run(args: argparse.Namespace, tmp: Path) -> int:
    started = time.monotonic()
    python = installed_python(tmp)
    now = prepare_tree("now", args.current, tmp, python)
    previous = None if args.no_previous else prepare_tree("previous", args.previous, tmp, python)
    bench = Bench(args, tmp, now, previous)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()
    header = (previous or now).root / "headers"
    report = [f"# scale bench: now {now.rev} (HEAD {head}), previous {previous.rev if previous else 'none'}",
              f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
              f"rounds: {args.runs} (at >= {BIG:,} sites: {args.big_runs}); objects: {UNITS} units of XDP "
              f"programs with {SITES_PER_PROGRAM} sites each, built with {(previous or now).rev}'s header", ""]
    counts = [n for n in COUNTS if n <= args.max_sites]
    site_rows = args.only & {"instrument", "link", "check", "objects"}
    for n in counts if site_rows else []:
        t0 = time.monotonic()
        try:
            objs = build_objects(n, header, previous or now, args.object_cache, bench.limits,
                                 scratch=tmp if (previous or now).rev == WORKTREE else None)
        except RuntimeError as e:
            print(f"scale_bench: {e}", file=sys.stderr)
            bench.failed = True
            break
        bench.name_objects(objs)
        print(f"{n:,} sites: objects ready in {time.monotonic() - t0:.0f} s ({_mb(objs.linked.stat().st_size)} "
              "linked)", flush=True)
        if "instrument" in args.only and n <= args.instrument_max_sites:
            bench.instrument(objs)
        if "link" in args.only:
            bench.link(objs)
        if "check" in args.only:
            bench.check_and_list(objs)
    if bench.rows:
        report += table(bench.rows) + ["", "growth exponents (1.0 is linear):", *growth(bench.rows), ""]
    if "compile" in args.only:
        report += bench.compile() + [""]
    if "trace" in args.only:
        report += bench.trace() + [""]
    report += ["commands (OBJ: the N-site object, UNITS: its units, .stripped: notes removed; $TMP: the bench's "
               "temporary directory):", *(f"  {name}: {cmd}" for name, cmd in bench.commands.items()),
               f"bench time {time.monotonic() - started:.0f} s; load average at the end "
               f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    text = "\n".join(report)
    print("\n" + text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if bench.failed else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)     # SIGTERM too ends the children and removes the pins
    missing = missing_tools()
    if missing:
        print(f"scale_bench: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-scale-") as t:
        try:
            return run(args, Path(t))
        except Unusable as e:
            print(f"scale_bench: {e}", file=sys.stderr)
            return 2
        except subprocess.CalledProcessError as e:
            print(f"scale_bench: {' '.join(map(str, e.cmd))[:200]} failed (exit {e.returncode})", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("scale_bench: interrupted", file=sys.stderr)
            return 1
        finally:
            shutil.rmtree(pin_directory(), ignore_errors=True)     # a load interrupted before its own cleanup


if __name__ == "__main__":
    sys.exit(main())

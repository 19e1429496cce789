"""The `bpf-sdt` command: one entry point, one subcommand per stage.

Every subcommand returns an exit code (0 ok, 1 findings, 2 unusable input or
usage); :class:`bpf_sdt.errors.BpfSdtError` becomes a one-line message on
stderr and exit 2, never a traceback; a closed stdout pipe ends it quietly
with 141.  docs/cli.md gives the conventions every command follows.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from bpf_sdt import __version__
from bpf_sdt.errors import EXIT_OK, EXIT_UNUSABLE, BpfSdtError, UsageError, escape_text
from bpf_sdt.fsutil import unwinding_on_termination

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_UNUSABLE, f"{self.prog}: error: {escape_text(message)}\n")


def _cmd_header(args: argparse.Namespace) -> int:
    from bpf_sdt.codegen.generate import render_header
    from bpf_sdt.fsutil import write_atomic

    text = render_header(args.max_args)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            write_atomic(args.output, text)
        except OSError as e:
            raise BpfSdtError(f"cannot write {args.output}: {e.strerror}") from e
    return EXIT_OK


def _cmd_cflags(args: argparse.Namespace) -> int:
    from bpf_sdt.headers import header_dir

    flags = [f"-I{header_dir()}"]
    if args.system:
        from bpf_sdt.sysinclude import system_include_flags

        flags += system_include_flags()
    print(" ".join(flags))
    return EXIT_OK


def _cmd_clang(args: argparse.Namespace) -> int:
    from bpf_sdt.toolchain import find_clang

    print(find_clang())
    return EXIT_OK


def _cmd_meson(args: argparse.Namespace) -> int:
    from bpf_sdt.hooks import run_meson_path

    return run_meson_path()


def _cmd_makefile(args: argparse.Namespace) -> int:
    from bpf_sdt.hooks import hook_path

    print(hook_path("bpf_sdt.mk"))
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from bpf_sdt.postlink.commands import run_check

    return run_check(args.objects, as_json=args.json)


def _cmd_list(args: argparse.Namespace) -> int:
    from bpf_sdt.postlink.commands import run_list

    return run_list(args.objects, as_json=args.json)


def _cmd_link(args: argparse.Namespace) -> int:
    from bpf_sdt.postlink.link import run_link

    return run_link(args.output, args.inputs, bpftool=args.bpftool)


def _cmd_instrument(args: argparse.Namespace) -> int:
    from bpf_sdt.instrument.commands import Request, run_instrument
    from bpf_sdt.trace.cli import instrument_recorder

    return run_instrument(Request(
        Path(args.input), Path(args.output), tuple(args.probe), tuple(map(Path, args.observer)),
        tuple(args.attach), args.record, args.ringbuf_size, args.bpftool,
        recorder=instrument_recorder(args),
        skip_unplaceable=args.skip_unplaceable, programs=tuple(args.program), in_place=args.in_place))


def _cmd_trace(args: argparse.Namespace) -> int:
    from bpf_sdt.trace.cli import run_trace

    return run_trace(args)


# Metavars of file and directory arguments: what shell completion completes as paths.
FILE_METAVARS = frozenset({"OBJ", "IN", "OUT", "OBS.o", "FILE", "OUTPUT"})
DIR_METAVARS = frozenset({"BUILD_DIR", "DIR"})
COMPLETION_SHELLS = ("bash", "zsh", "tcsh")   # what shtab generates


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    parser = build_parser()
    for action in _all_actions(parser):
        if action.metavar in FILE_METAVARS:
            action.complete = shtab.FILE        # type: ignore[attr-defined]
        elif action.metavar in DIR_METAVARS:
            action.complete = shtab.DIRECTORY   # type: ignore[attr-defined]
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


def _cmd_man(args: argparse.Namespace) -> int:
    from argparse_manpage.manpage import Manpage

    parser = build_parser()
    if args.page is not None:
        commands = _subcommands(parser)
        if args.page not in commands:
            raise UsageError(f"no command {args.page!r}: one of {', '.join(commands)}")
        parser = commands[args.page]
    page = Manpage(parser)
    page.prog = parser.prog.replace(" ", "-")   # `bpf-sdt list` is the page bpf-sdt-list(1)
    page.source = f"bpf-sdt {__version__}"
    page.manual = "bpf-sdt manual"
    sys.stdout.write(str(page))
    return EXIT_OK


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option and positional of the parser and its subcommands."""
    found = list(parser._actions)
    for sub in _subcommands(parser).values():
        found += _all_actions(sub)
    return found


def _cmd_restore(args: argparse.Namespace) -> int:
    from bpf_sdt.trace.restore import restore

    return restore(args.where)


def _clang_args(args: argparse.Namespace) -> list[str]:
    """-I and -D given as options, then what followed `--`."""
    return [*(f"-I{d}" for d in args.include_dirs), *(f"-D{d}" for d in args.defines), *args.clang_args]


def _cmd_extract(args: argparse.Namespace) -> int:
    from bpf_sdt.clang_plugin.commands import run_extract

    return run_extract(args.files, args.build_dir, _clang_args(args), as_json=args.json)


def _cmd_lint(args: argparse.Namespace) -> int:
    from bpf_sdt.clang_plugin.commands import run_lint

    return run_lint(args.files, args.build_dir, _clang_args(args), fmt=args.format,
                    jobs=args.jobs, use_cache=not args.no_cache, ir=not args.no_ir)


def _header_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-o", "--output", help="write here (atomically) instead of stdout")
    sp.add_argument("--max-args", type=int, default=12, metavar="N",
                    help="largest arity to generate, 0..12 (default 12)")


def _cflags_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--system", action="store_true",
                    help="also the system include directories `clang -target bpf` misses "
                         "(the multiarch directory holding asm/types.h)")


def _no_arguments(sp: argparse.ArgumentParser) -> None:
    pass


def _meson_arguments(sp: argparse.ArgumentParser) -> None:
    from bpf_sdt.hooks import meson_recipe

    sp.description = meson_recipe()   # the recipe, as the installed helper documents it
    sp.formatter_class = argparse.RawDescriptionHelpFormatter


def _objects_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("objects", nargs="+", metavar="OBJ", help="BPF object files (compiled, linked or instrumented)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def _link_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-o", "--output", required=True, metavar="OUT", help="the linked object to write (atomically)")
    sp.add_argument("inputs", nargs="+", metavar="IN", help="BPF objects to link, in link order")
    sp.add_argument("--bpftool",
                    help="bpftool to link with (default: $BPF_SDT_BPFTOOL, else bpftool on PATH or in /usr/sbin)")


def _instrument_arguments(sp: argparse.ArgumentParser) -> None:
    from bpf_sdt.format import RECORDER_DEFAULT_RINGBUF_SIZE
    from bpf_sdt.trace.cli import add_recorder_arguments  # the same options trace compiles

    sp.add_argument("input", metavar="IN", help="BPF object with probes (compiled or linked)")
    sp.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="the instrumented object to write (atomically)")
    sp.add_argument("--probe", action="append", default=[], metavar="GLOB",
                    help="instrument only the probes matching GLOB (repeatable; default: all)")
    sp.add_argument("--observer", action="append", default=[], metavar="OBS.o",
                    help="object with SEC(\"bpf_sdt/<probe>\") observers (repeatable)")
    sp.add_argument("--attach", action="append", default=[], metavar="OBSERVER=GLOB",
                    help="attach a SEC(\"bpf_sdt\") observer to the probes matching GLOB")
    sp.add_argument("--record", action="store_true",
                    help="also call the built-in recorder (the default without --observer)")
    sp.add_argument("--ringbuf-size", type=int, default=RECORDER_DEFAULT_RINGBUF_SIZE, metavar="BYTES",
                    help="the recorder's ring buffer size (power of two, default 4 MiB)")
    sp.add_argument("--skip-unplaceable", action="store_true",
                    help="skip the sites where a call cannot be placed (a warning each) and instrument the "
                         "rest; exit 1 only if none could be placed")
    sp.add_argument("--program", action="append", default=[], metavar="PROG",
                    help="instrument only the sites PROG can reach (repeatable; default: every program)")
    sp.add_argument("--in-place", action="store_true", help="allow OUT to be IN itself (replaced atomically)")
    sp.add_argument("--pin-by-name", action="store_true",
                    help="mark the recorder's maps LIBBPF_PIN_BY_NAME (pinned under libbpf's pin root); "
                    "by default they ask for no pin, so each loader's own choice applies")
    sp.add_argument("--bpftool",
                    help="bpftool to link with (default: $BPF_SDT_BPFTOOL, else bpftool on PATH or in /usr/sbin)")
    add_recorder_arguments(sp)


def _trace_arguments(sp: argparse.ArgumentParser) -> None:
    try:
        from bpf_sdt.trace.cli import add_arguments
    except ImportError:  # pragma: no cover - the trace package is part of every install
        pass
    else:
        add_arguments(sp)


def _restore_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("where", nargs="?", metavar="WHERE",
                    help="only this attach point (as given to trace --live); default: every record")


def _source_arguments(sp: argparse.ArgumentParser) -> None:
    """extract's and lint's: BPF C files and how clang reads them."""
    sp.add_argument("-p", dest="build_dir", metavar="BUILD_DIR",
                    help="directory holding compile_commands.json")
    sp.add_argument("files", nargs="+", metavar="FILE", help="BPF C sources or headers")
    # -I/-D as options (not only after `--`): pre-commit appends the
    # staged files after a hook's args, so args must not end the options.
    sp.add_argument("-I", dest="include_dirs", action="append", default=[], metavar="DIR",
                    help="add DIR to clang's include path (repeatable; as `-- -IDIR`)")
    sp.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME[=VALUE]",
                    help="define a macro for clang (repeatable; as `-- -DNAME`)")


def _extract_arguments(sp: argparse.ArgumentParser) -> None:
    _source_arguments(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def _lint_arguments(sp: argparse.ArgumentParser) -> None:
    _source_arguments(sp)
    sp.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                    help="output format: text (one finding a line), json, sarif (code scanning)")
    sp.add_argument("--json", dest="format", action="store_const", const="json",
                    help="machine-readable output (the same as --format json)")
    sp.add_argument("-j", "--jobs", type=int, default=0, help="parallel parses (0: all cores)")
    sp.add_argument("--no-cache", action="store_true", help="ignore the result cache")
    sp.add_argument("--no-ir", action="store_true",
                    help="skip the rules on the optimized LLVM IR (SDT010-SDT012), which compile each file")


def _completion_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete for")


def _man_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("page", nargs="?", metavar="COMMAND",
                    help="the page of one command (bpf-sdt-COMMAND(1)); default: bpf-sdt(1), every command")


# Every subcommand, in --help's order: (name, handler, help, its arguments).
COMMANDS: tuple[tuple[str, Handler, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("header", _cmd_header, "render bpf_sdt.h from the templates", _header_arguments),
    ("cflags", _cmd_cflags, "print the -I flag for the installed bpf_sdt.h", _cflags_arguments),
    ("clang", _cmd_clang, "print the clang bpf-sdt compiles with: $BPF_SDT_CLANG, $BPF_CLANG, "
                          "clang, else the newest clang-N on PATH", _no_arguments),
    ("makefile", _cmd_makefile, "print the path of bpf_sdt.mk, for `include` in a Makefile", _no_arguments),
    ("meson", _cmd_meson, "print the path of the meson helper, for find_program() in meson.build",
     _meson_arguments),
    ("check", _cmd_check, "validate the probes in BPF objects", _objects_arguments),
    ("list", _cmd_list, "list the probes in BPF objects", _objects_arguments),
    ("link", _cmd_link, "statically link BPF objects, keeping their probe notes", _link_arguments),
    ("instrument", _cmd_instrument, "make probe sites call observers (or the built-in recorder)",
     _instrument_arguments),
    ("trace", _cmd_trace, "run or attach a program and print its probes as they fire", _trace_arguments),
    ("restore", _cmd_restore, "put back what killed traces left in the kernel (docs/live.md)",
     _restore_arguments),
    ("extract", _cmd_extract, "extract probe declarations and sites from BPF C", _extract_arguments),
    ("lint", _cmd_lint, "lint the probes in BPF C sources", _lint_arguments),
    ("completion", _cmd_completion, "print a shell completion script: "
     "eval \"$(bpf-sdt completion bash)\", or save it where the shell loads completions",
     _completion_arguments),
    ("man", _cmd_man, "print the manual page, generated from these commands' help: "
     "bpf-sdt man | man -l -", _man_arguments),
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or only what parsing subcommand ``only``
    needs: the top level and that one subcommand.  Once the first argument
    names a subcommand, nothing else can be asked of the top level (its help
    and its errors need the others: a bare `bpf-sdt`, an unknown command),
    and building every subcommand's parser and options (and importing what
    instrument's and trace's need) was a fifth of a small check's run."""
    p = _Parser(prog="bpf-sdt", description="Statically defined tracing probes for BPF programs.")
    p.add_argument("--version", action="version", version=f"bpf-sdt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, handler, help_text, arguments in COMMANDS:
        if only is None or name == only:
            sp = sub.add_parser(name, help=help_text, description=help_text)
            sp.set_defaults(handler=handler)
            arguments(sp)
    return p


_COMMAND_NAMES = frozenset(name for name, *_ in COMMANDS)


# Only these pass what follows `--` to clang; everywhere else `--` ends the
# options as usual (`bpf-sdt check -- -odd-name.o`).
CLANG_ARG_COMMANDS = ("extract", "lint")


def split_clang_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(bpf-sdt arguments, clang arguments)."""
    if argv and argv[0] in CLANG_ARG_COMMANDS and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


# A closed pipe (`bpf-sdt list x.o | head -1`) ends the command quietly with
# the status of a process killed by SIGPIPE, as `cat` or `grep` would end:
# never 0, so a pipeline under `set -o pipefail` does not mistake cut-short
# output (or findings) for success.  Other write errors (a full disk) are one
# line on stderr and exit 2.  docs/cli.md says so.
EXIT_CLOSED_PIPE = 128 + signal.SIGPIPE


class OutputError(BpfSdtError):
    """Standard output cannot be written (closed pipe, full disk)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(f"cannot write to standard output: {error.strerror or error}")
        self.closed_pipe = error.errno == errno.EPIPE


class _GuardedStdout:
    """sys.stdout whose write errors become one OutputError, wherever the
    write happens: main() ends the command on it (quietly for a closed pipe,
    with one line for a full disk), never with a success code."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream       # None: the command was started with fd 1 closed (`>&-`)

    def _open(self) -> TextIO:
        if self._stream is None:
            raise OutputError(OSError(errno.EBADF, "it is closed"))
        return self._stream

    def write(self, text: str) -> int:
        try:
            return self._open().write(text)
        except OSError as e:
            raise OutputError(e) from None

    def flush(self) -> None:
        if self._stream is None:    # nothing was written, so nothing was lost
            return
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputError(e) from None

    def __getattr__(self, name: str) -> object:
        return getattr(self._open(), name)


def _silence_stdout() -> None:
    """After a failed write, point fd 1 at /dev/null: the interpreter's own
    flush at exit then succeeds instead of printing "Exception ignored ...
    BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _complain(command: str, message: str) -> None:
    with contextlib.suppress(OSError):   # stderr gone too: the exit code is all that is left
        print(f"bpf-sdt{' ' if command else ''}{command}: {escape_text(message)}", file=sys.stderr)


# Commands whose work leaves temporaries (link's directory for bpftool,
# instrument's for the recorder's compile) and children (bpftool, clang): a
# termination signal unwinds them (fsutil.unwinding_on_termination).  trace
# and restore handle their signals themselves (kernel state is restored in an
# order of their own, not wherever the signal lands).
_CLEANS_UP_ON_TERMINATION = frozenset({"link", "instrument"})


def main(argv: Sequence[str] | None = None) -> int:
    argv, clang_args = split_clang_args(list(sys.argv[1:] if argv is None else argv))
    real_stdout = sys.stdout
    sys.stdout = _GuardedStdout(real_stdout)   # --help and --version write too
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    try:
        try:
            parser = build_parser(command if command in _COMMAND_NAMES else None)
            if not argv:          # bare `bpf-sdt`: what it can do, as a usage error
                sys.stderr.write(parser.format_help())
                return EXIT_UNUSABLE
            args = parser.parse_args(argv)
            args.clang_args = clang_args
            with unwinding_on_termination() if command in _CLEANS_UP_ON_TERMINATION else contextlib.nullcontext():
                code: int = args.handler(args)
        except SystemExit as e:   # argparse: usage errors, --help, --version
            code = e.code if isinstance(e.code, int) else EXIT_UNUSABLE
        sys.stdout.flush()        # buffered output fails here at the latest
        return code
    except (OutputError, BrokenPipeError) as e:   # BrokenPipeError: sys.stdout.buffer writes
        _silence_stdout()
        if isinstance(e, BrokenPipeError) or e.closed_pipe:
            return EXIT_CLOSED_PIPE
        _complain(command, str(e))
        return EXIT_UNUSABLE
    except BpfSdtError as e:
        _complain(command, str(e))
        for line in getattr(e, "extra_lines", ()):      # e.g. an expression and a caret under its error
            with contextlib.suppress(OSError):
                print(f"    {escape_text(line)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        sys.stdout = real_stdout


# Commands that leave nothing to flush, join or remove once main() returns
# (one thread, no temporaries, output flushed): their process may end without
# the interpreter's teardown, which frees every object they decoded one by one
# (0.04-0.05 s of a check at 100,000 sites, a tenth of the run).
_ENDS_WITHOUT_TEARDOWN = frozenset({"check", "list"})


def _forks_live_worker(argv: list[str]) -> bool:
    """`trace ... --live WHERE`: its instrument worker is forked before the
    arguments are parsed (trace/worker.py, fork_early), to start its imports
    on the other core meanwhile."""
    if not argv or argv[0] != "trace" or not any(a == "--live" or a.startswith("--live=") for a in argv):
        return False
    try:
        from bpf_sdt.trace.worker import fork_early

        fork_early()
    except (OSError, ImportError):  # no fork now (EAGAIN, EMFILE): trace forks its worker later, or says why
        return False
    return True


def entry() -> NoReturn:
    """The `bpf-sdt` command (console script, `python -m bpf_sdt.cli`): main(),
    then the exit.  In-process callers use main(), which always returns."""
    argv = sys.argv[1:]
    early = _forks_live_worker(argv)
    try:
        code = main(argv)
    finally:
        if early:
            from bpf_sdt.trace.worker import discard_early

            discard_early()     # not taken: the arguments said otherwise, or were refused
    if argv and argv[0] in _ENDS_WITHOUT_TEARDOWN:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:      # None: started with it closed (`>&-`)
                # a pipe closed meanwhile: main() has said all it could
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

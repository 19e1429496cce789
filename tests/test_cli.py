"""The command line as a user meets it: output that cannot be written (full
disk, closed pipe), `-o` onto things that are not regular files and kills
during the write, names from hostile objects in text output, `--`."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fuzz_target import SyntheticEntry, many_sites_object, synthetic_object
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toolchain import need, run

from bpf_sdt.cli import EXIT_CLOSED_PIPE, main, split_clang_args
from bpf_sdt.elf import BpfObject, ElfImage
from bpf_sdt.fsutil import NotRegularFileError, write_atomic
from bpf_sdt.model import ArgLocation, SiteRecord, escape_text

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
ARGS = (ArgLocation("reg", reg=1), ArgLocation("imm", value=7))


def good_object(path: Path, sites: int = 3) -> Path:
    path.write_bytes(synthetic_object([SyntheticEntry("p", 8 * i, ARGS) for i in range(sites)],
                                      {"p": ("int", "long")}))
    return path


def broken_object(path: Path) -> Path:
    """Three sites; the second entry's address word points past the code."""
    data = bytearray(synthetic_object([SyntheticEntry("p", 8 * i, ARGS) for i in range(3)], {"p": ("int", "long")}))
    notes = BpfObject("x", bytes(data)).section(".bpf_sdt_notes")
    assert notes is not None
    data[notes.offset + 24: notes.offset + 32] = (4096).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


def assert_one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- standard output that cannot be written ------------------------------------------


@pytest.mark.parametrize("command", [["check"], ["check", "--json"], ["list"], ["list", "--json"]])
def test_full_disk_is_one_line_and_exit_2(command: list[str], tmp_path: Path) -> None:
    need(Path("/dev/full").exists(), "/dev/full")
    obj = broken_object(tmp_path / "b.o")
    with open("/dev/full", "w") as full:
        res = subprocess.run([*CLI, *command, str(obj)], stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert res.returncode == 2
    assert "No space left on device" in assert_one_clean_line(res.stderr)


def _closed_pipe(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose read end is already closed."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(w)


@pytest.mark.parametrize("command", [["check"], ["list"], ["list", "--json"], ["check", "--json"]])
def test_closed_pipe_never_turns_findings_into_success(command: list[str], tmp_path: Path) -> None:
    obj = broken_object(tmp_path / "b.o")
    assert run([*CLI, *command, str(obj)]).returncode == 1          # findings / a broken entry
    res = _closed_pipe([*CLI, *command, str(obj)])
    assert res.returncode == EXIT_CLOSED_PIPE, res    # as if killed by SIGPIPE: quiet, never 0
    assert res.stderr == ""


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["list", "--help"], ["cflags"]])
def test_even_help_fails_cleanly(args: list[str]) -> None:
    res = _closed_pipe([*CLI, *args])
    assert res.returncode == EXIT_CLOSED_PIPE and res.stderr == ""
    assert run([*CLI, *args]).returncode == 0


def test_reader_that_stops_early(tmp_path: Path) -> None:
    """`bpf-sdt list --json big.o | head -c 100`: the reader leaves mid-stream."""
    big = tmp_path / "big.o"
    big.write_bytes(many_sites_object(20_000))
    proc = subprocess.Popen([*CLI, "list", "--json", str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == EXIT_CLOSED_PIPE and head.startswith(b'{"objects":[')
    assert err == "", "a reader that leaves is no error to report"


# --- `--` ------------------------------------------------------------------------------


def test_double_dash_ends_options_for_object_commands(tmp_path: Path) -> None:
    odd = good_object(tmp_path / "-odd-name.o")
    for command in (["check"], ["list"], ["check", "--json"]):
        res = run([*CLI, *command, "--", odd.name], cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    listing = json.loads(run([*CLI, "list", "--json", "--", odd.name], cwd=tmp_path).stdout)
    assert listing["objects"][0]["path"] == "-odd-name.o"
    # without `--` it is an option, as everywhere
    assert run([*CLI, "check", odd.name], cwd=tmp_path).returncode == 2


def test_only_extract_and_lint_pass_arguments_to_clang() -> None:
    assert split_clang_args(["lint", "a.c", "--", "-DX"]) == (["lint", "a.c"], ["-DX"])
    assert split_clang_args(["extract", "--", "-I."]) == (["extract"], ["-I."])
    assert split_clang_args(["check", "--", "-x.o"]) == (["check", "--", "-x.o"], [])
    assert split_clang_args(["link", "-o", "o", "--", "-a.o"]) == (["link", "-o", "o", "--", "-a.o"], [])


def test_extract_still_takes_clang_arguments(tmp_path: Path) -> None:
    src = tmp_path / "a.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(NAME, int);\n")
    res = run([*CLI, "extract", "--json", str(src), "--", "-DNAME=renamed"])
    assert res.returncode == 0, res.stderr
    assert [d["name"] for d in json.loads(res.stdout)["declarations"]] == ["renamed"]


# --- model: what callers get is theirs ---------------------------------------------------


def test_json_dicts_are_not_shared_between_callers() -> None:
    loc = ArgLocation("reg", reg=1)
    a = SiteRecord("p", ".text", 0, "f", (loc,))
    b = SiteRecord("q", ".text", 8, "f", (loc,))
    first = a.to_json()
    first["args"][0]["reg"] = 99
    first["args"][0]["extra"] = True
    assert b.to_json()["args"] == [{"kind": "reg", "reg": 1}]
    assert loc.to_json() == {"kind": "reg", "reg": 1} and loc.to_json() is not loc.to_json()
    assert json.loads(b.json_text()) == b.to_json()


# --- control characters in names ------------------------------------------------------


def _renamed(tmp: Path, probe: str, section: str, function: str) -> Path:
    """A good object whose probe, code section and function carry ``*`` names."""
    img = ElfImage.from_object(BpfObject("x", synthetic_object(
        [SyntheticEntry("p", 0, ARGS, symbol=f"___sdt_jt_{probe}"), SyntheticEntry("p", 8, ARGS)],
        {"p": ("int", "long")})))
    img.sections[1].name = section
    for s in img.symbols:
        if s.name == "f":
            s.name = function
    out = tmp / "evil.o"
    out.write_bytes(img.to_bytes())
    return out


EVIL = "x\nfake.o: 0 probe sites\x1b[2J\r\u202e\x07end"


def test_names_cannot_forge_output_lines(tmp_path: Path) -> None:
    obj = _renamed(tmp_path, EVIL, f".text{EVIL}", f"f{EVIL}")
    listing = run([*CLI, "list", str(obj)])
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert len(lines) == 4                           # title, header, two sites
    assert all(c.isprintable() for line in lines for c in line)
    assert escape_text(EVIL) in lines[2]
    # JSON keeps the names exactly
    probes = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert {p["name"] for p in probes} == {EVIL.split(".")[0], "p"}
    assert {p["section"] for p in probes} == {f".text{EVIL}"} and probes[0]["function"] == f"f{EVIL}"
    # check: the evil probe has no prototype -> one finding, one line
    check = run([*CLI, "check", str(obj)])
    assert check.returncode == 1
    assert len(check.stdout.splitlines()) == 1 and all(c.isprintable() for c in check.stdout.strip())


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    bad = tmp_path / "bad\nname\x1b[31m.o"
    bad.write_bytes(b"not an object")
    for command in ("check", "list"):
        res = run([*CLI, command, str(bad)])
        line = assert_one_clean_line(res.stderr)
        assert res.returncode == 2 and "\\n" in line and "\x1b" not in line


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00."), min_size=1, max_size=20))
def test_generated_names_stay_on_their_line(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("names")
    obj = _renamed(tmp, name, name, name)
    listing = run([*CLI, "list", str(obj)])
    assert listing.returncode == 0 and len(listing.stdout.splitlines()) == 4
    assert all(c.isprintable() for c in listing.stdout.replace("\n", ""))
    probes = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert probes[0]["name"] == name or probes[1]["name"] == name


# --- -o PATH ----------------------------------------------------------------------------


def _header(out: Path | str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([*CLI, "header", "-o", str(out)], cwd=cwd)


def _not_regular(tmp: Path) -> dict[str, Path]:
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    (tmp / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "sock"))
    sock.close()
    out = {"fifo": fifo, "directory": tmp / "dir", "socket": tmp / "sock"}
    if os.geteuid() == 0:        # a device node of our own, never the machine's /dev/full
        os.mknod(tmp / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))
        out["device"] = tmp / "full"
    for kind, target in list(out.items()):
        link = tmp / f"link-to-{kind}"
        link.symlink_to(target)
        out[f"symlink to {kind}"] = link
    (tmp / "loop1").symlink_to(tmp / "loop2")
    (tmp / "loop2").symlink_to(tmp / "loop1")
    out["symlink loop"] = tmp / "loop1"
    return out


def test_output_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "a device node needs root")
    for kind, path in _not_regular(tmp_path).items():
        before = os.lstat(path)
        res = _header(path, tmp_path)
        assert res.returncode == 2, kind
        assert "not a regular file" in assert_one_clean_line(res.stderr), kind
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev), kind
    assert not [p for p in tmp_path.rglob(".*tmp")], "temporary left behind"


def test_output_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real.h"
    real.write_text("old")
    real.chmod(0o600)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "link.h"
    link.symlink_to("../real.h")
    assert _header(link, tmp_path).returncode == 0
    assert link.is_symlink() and "BPF_SDT" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o600, "an existing file keeps its mode"
    dangling = tmp_path / "dangling.h"
    dangling.symlink_to("created.h")
    assert _header(dangling, tmp_path).returncode == 0
    assert dangling.is_symlink() and (tmp_path / "created.h").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["created.h", "dangling.h", "real.h", "sub"]


def test_write_atomic_raises_an_oserror_callers_already_handle(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    with pytest.raises(NotRegularFileError) as e:
        write_atomic(tmp_path / "f", b"x")
    assert isinstance(e.value, OSError) and "FIFO" in str(e.value.strerror)


@pytest.mark.parametrize("command", [["list", "--json"], ["list"], ["check", "--json"], ["check"]])
def test_the_command_ends_without_teardown_with_all_its_output(command: list[str], samples_built: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """list and check end their process without the interpreter's teardown
    (cli.entry): through a pipe, the console script and `python -m` still
    deliver every byte and the exit code main() gives in-process."""
    objects = [str(o) for o in sorted(samples_built.glob("*.o"))]
    assert objects
    code = main([*command, *objects])
    expected = capsys.readouterr()
    script = Path(sys.executable).with_name("bpf-sdt")
    for argv in ([str(script)], CLI):
        res = subprocess.run([*argv, *command, *objects], capture_output=True, text=True, check=False)
        assert (res.returncode, res.stdout, res.stderr) == (code, expected.out, expected.err), argv


def test_write_atomic_syncs_only_what_must_survive_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """durable (the default): the data and the rename are fsynced; not durable
    (a cache entry checked on read, trace's temporary copy): neither is, and
    the write is atomic all the same."""
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    out = tmp_path / "out.o"
    write_atomic(out, b"cache entry", durable=False)
    assert synced == [] and out.read_bytes() == b"cache entry"
    write_atomic(out, b"output")
    assert len(synced) == 2 and out.read_bytes() == b"output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.o"]


_SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    def slow_fsync(fd):            # the write is under way: say so, then hang
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = slow_fsync
    from bpf_sdt.cli import main
    sys.exit(main(["header", "-o", sys.argv[1]]))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("existing", [False, True])
def test_killed_during_the_write_leaves_nothing_behind(sig: signal.Signals, existing: bool, tmp_path: Path) -> None:
    out = tmp_path / "out.h"
    if existing:
        out.write_text("previous")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "writing\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "the temporary exists mid-write"
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    assert code == (130 if sig == signal.SIGINT else -sig), (code, proc.stderr.read() if proc.stderr else "")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out.h"] if existing else [])
    if existing:
        assert out.read_text() == "previous"


def test_link_output_is_refused_before_linking(tmp_path: Path) -> None:
    obj = good_object(tmp_path / "a.o")
    os.mkfifo(tmp_path / "out.o")
    res = run([*CLI, "link", "-o", str(tmp_path / "out.o"), str(obj), "--bpftool", "/nonexistent"])
    assert res.returncode == 2 and "not a regular file" in assert_one_clean_line(res.stderr)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.o").st_mode)


@pytest.mark.parametrize("modules", [
    ("bpf_sdt.cli", "bpf_sdt.postlink.commands", "bpf_sdt.btfext", "bpf_sdt.inlined"),     # check, list
    ("bpf_sdt.cli", "bpf_sdt.trace.cli", "bpf_sdt.trace.runner"),                        # trace, cached
], ids=["check-list", "trace"])
def test_start_up_imports_no_dataclasses(modules: tuple[str, ...]) -> None:
    """What check, list and a cached trace import defines its records
    without dataclasses (docs/cli.md, "Start-up"): decorating one compiles
    its generated methods at import, and the module imports inspect.  A
    subprocess, so that what this test process imported does not count."""
    code = (f"import sys; import {', '.join(modules)}; "
            "print(' '.join(m for m in ('dataclasses', 'inspect') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "", f"{' and '.join(modules)} imported {res.stdout.strip()}"


# What a cached trace imports only once its copy's load has started (beside the
# verifier) or not at all (docs/trace.md, "Start-up"); the kernel-side test of
# the whole run is tests/test_trace_robust.py.
AFTER_THE_LOAD_STARTS = ("bpf_sdt.model", "bpf_sdt.format", "bpf_sdt.insn", "bpf_sdt.elf", "bpf_sdt.btf",
                         "bpf_sdt.notes", "bpf_sdt.sites", "bpf_sdt.argtype", "bpf_sdt.trace.output",
                         "bpf_sdt.trace.ring", "bpf_sdt.trace.recorder", "bpf_sdt.trace.worker",
                         "pickle", "socket", "platform", "_hashlib")


def test_trace_runner_imports_nothing_the_load_can_wait_for() -> None:
    code = ("import sys; import bpf_sdt.cli, bpf_sdt.trace.cli, bpf_sdt.trace.runner; "
            f"print(' '.join(m for m in {AFTER_THE_LOAD_STARTS!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "", f"imported before the load: {res.stdout.strip()}"


# A stand-in for the tool a command runs in its temporary directory: it says
# it started (its pid, in MARK) and then takes long enough for a signal to
# land while the directory exists; --version and version still answer as the
# real tool does (the recorder cache and link ask them first).
_SLOW_TOOL = """#!/bin/sh
case "$1" in --version|version|-V) exec {real} "$@";; esac
echo $$ > {mark}
exec sleep 60
"""


def _slow_tool(tmp: Path, real: str) -> tuple[Path, Path]:
    mark, tool = tmp / "started", tmp / "slow-tool"
    tool.write_text(_SLOW_TOOL.format(real=real, mark=mark))
    tool.chmod(0o755)
    return tool, mark


def _signalled_while_the_tool_runs(cmd: list[str], env: dict[str, str], mark: Path,
                                   sig: signal.Signals) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = 300
    while not (mark.exists() and mark.read_text().strip()) and proc.poll() is None and deadline:
        deadline -= 1
        subprocess.run(["sleep", "0.1"], check=False)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(sig)
    code = proc.wait(timeout=30)
    tool_pid = int(mark.read_text())
    assert not Path(f"/proc/{tool_pid}").exists() or \
        Path(f"/proc/{tool_pid}/stat").read_text().split()[2] == "Z", "the tool was left running"
    return code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_link_killed_while_bpftool_runs_leaves_no_temporary(sig: signal.Signals, tmp_path: Path) -> None:
    """Its temporary directory goes and bpftool ends: a SIGTERM used to end
    the process where it stood, leaving /tmp/bpf-sdt-link-* (and bpftool)."""
    from toolchain import tool

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    slow, mark = _slow_tool(tmp_path, tool("bpftool"))
    inputs = [str(good_object(tmp_path / f"{n}.o")) for n in "ab"]
    code = _signalled_while_the_tool_runs([*CLI, "link", "--bpftool", str(slow), "-o", str(tmp_path / "out.o"),
                                           *inputs], dict(os.environ, TMPDIR=str(scratch)), mark, sig)
    assert code == (130 if sig == signal.SIGINT else -sig)
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out.o").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_instrument_killed_while_clang_runs_leaves_no_temporary(sig: signal.Signals, samples_built: Path,
                                                                tmp_path: Path) -> None:
    from toolchain import clang

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    slow, mark = _slow_tool(tmp_path, clang(19))
    env = dict(os.environ, TMPDIR=str(scratch), BPF_SDT_CLANG=str(slow), BPF_SDT_CACHE="off")
    code = _signalled_while_the_tool_runs([*CLI, "instrument", str(samples_built / "xdp_parser.bpf.o"),
                                           "-o", str(tmp_path / "out.o")], env, mark, sig)
    assert code == -sig
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out.o").exists()

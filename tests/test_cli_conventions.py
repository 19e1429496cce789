"""The conventions every `bpf-sdt` command follows (docs/cli.md): help text
for every argument, bare `bpf-sdt` as a usage error, `--json` wherever there
is machine output, a quiet end on a closed pipe in a real shell pipeline,
shell completion that a real bash completes with, and manual pages that
groff renders, generated from the same parser."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_target import many_sites_object
from toolchain import bpf_permitted, clang, need, run, tool

from bpf_sdt.cli import EXIT_CLOSED_PIPE, build_parser

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
# Commands whose output is data a program reads: each takes --json.
MACHINE_OUTPUT = ("check", "list", "extract", "lint", "trace")
BIG_OBJECT_SITES = 20_000      # far more output than a pipe buffer holds
MANY_RUNS = 20_000             # test runs of one packet: far more events than a pipe holds
ETHERNET_FRAME = 64            # bytes
TRACED = """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(hit, __u32);
SEC("xdp") int prog(struct xdp_md *ctx)
{
	BPF_SDT_PROBE1(hit, ctx->data_end - ctx->data);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction):
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    for name, sub in _commands(parser).items():
        missing += _undocumented(sub, f"{path} {name}")
    return missing


def test_every_argument_of_every_command_has_help() -> None:
    parser = build_parser()
    assert _undocumented(parser, "bpf-sdt") == []
    for name, sub in _commands(parser).items():
        assert sub.description, f"bpf-sdt {name} has no description"


def test_bare_command_prints_usage_and_exits_2() -> None:
    res = run(CLI)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("usage: bpf-sdt") and "Traceback" not in res.stderr
    for name in _commands(build_parser()):
        assert name in res.stderr, f"the usage lists {name}"


def test_every_command_with_machine_output_takes_json() -> None:
    for name in MACHINE_OUTPUT:
        options = {o for a in _commands(build_parser())[name]._actions for o in a.option_strings}
        assert "--json" in options, f"bpf-sdt {name} has machine output but no --json"


def test_lint_json_is_format_json(tmp_path: Path) -> None:
    src = tmp_path / "p.bpf.c"
    src.write_text("#include <bpf_sdt.h>\nBPF_SDT_DECLARE1(p, int);\nint f(int *c) { BPF_SDT_PROBE2(p, *c, 1); "
                   "return 0; }\n")
    as_json = run([*CLI, "lint", "--no-cache", "--no-ir", "--json", str(src)])
    as_format = run([*CLI, "lint", "--no-cache", "--no-ir", "--format", "json", str(src)])
    assert as_json.returncode == as_format.returncode == 1
    assert as_json.stdout == as_format.stdout and '"SDT002"' in as_json.stdout


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["check", "--json"]])
def test_closed_pipe_in_a_shell_pipeline_is_quiet(command: list[str], tmp_path: Path) -> None:
    """`bpf-sdt list big.o | head -1` under pipefail: no traceback, no message,
    and the SIGPIPE status (141) rather than success."""
    big = tmp_path / "big.o"
    big.write_bytes(many_sites_object(BIG_OBJECT_SITES))
    pipeline = " ".join([*CLI, *command, str(big)]) + " | head -c 10 >/dev/null"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.stderr == "", res.stderr
    assert res.returncode == EXIT_CLOSED_PIPE


@pytest.mark.kernel
def test_trace_ends_on_a_closed_pipe_like_every_command(tmp_path: Path) -> None:
    """`bpf-sdt trace ... --json | head -c 10`: the reader leaves after the
    first bytes of many runs' events; trace stops, quietly, with 141."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    src, obj = tmp_path / "p.bpf.c", tmp_path / "p.bpf.o"
    src.write_text(TRACED)
    flags = run([*CLI, "cflags", "--system"]).stdout.split()
    assert run([clang(19), "-target", "bpf", "-O2", "-g", *flags, "-c", str(src), "-o", str(obj)]).returncode == 0
    packet = tmp_path / "frame.bin"
    packet.write_bytes(bytes(ETHERNET_FRAME))
    pipeline = " ".join([*CLI, "trace", str(obj), "--run", "prog", "--packet", str(packet), "--repeat",
                         str(MANY_RUNS), "--json"]) + " | head -c 10 >/dev/null"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.stderr == "", res.stderr
    assert res.returncode == EXIT_CLOSED_PIPE


def _bash_completions(words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers after `words` with the generated completion loaded."""
    need(shutil.which("bash") is not None, "bash")
    script = run([*CLI, "completion", "bash"])
    assert script.returncode == 0, script.stderr
    # The words as bash splits them; a trailing space starts a new, empty word.
    extra_word = 'COMP_WORDS+=("")' if words.endswith(" ") else ":"
    driver = "\n".join([
        "source /dev/stdin",
        f"COMP_LINE={shlex.quote(words)}; COMP_POINT=${{#COMP_LINE}}",
        f"read -ra COMP_WORDS <<< {shlex.quote(words)}",
        extra_word,
        "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))",
        "_shtab_bpf_sdt",
        "printf '%s\\n' \"${COMPREPLY[@]}\"",
    ])
    res = subprocess.run(["bash", "-c", driver], input=script.stdout, capture_output=True, text=True, timeout=60,
                         cwd=cwd, check=False)
    assert res.returncode == 0, res.stderr
    return sorted(filter(None, res.stdout.splitlines()))


def test_bash_completion_completes_commands_and_options() -> None:
    assert _bash_completions("bpf-sdt li") == ["link", "lint", "list"]
    assert "--json" in _bash_completions("bpf-sdt list --j")
    assert _bash_completions("bpf-sdt completion ") == ["bash", "tcsh", "zsh"]


def test_bash_completion_completes_objects_as_files(tmp_path: Path) -> None:
    (tmp_path / "prog.bpf.o").write_bytes(b"")
    (tmp_path / "prog.bpf.c").write_text("")
    assert _bash_completions("bpf-sdt list prog.bpf.", cwd=tmp_path) == ["prog.bpf.c", "prog.bpf.o"]
    assert "prog.bpf.c" in _bash_completions("bpf-sdt lint prog", cwd=tmp_path)


def test_zsh_completion_is_generated_for_every_command() -> None:
    script = run([*CLI, "completion", "zsh"])
    assert script.returncode == 0 and script.stdout.startswith("#compdef bpf-sdt")
    for name in _commands(build_parser()):
        assert re.search(rf"^\s+{re.escape(name)}:'", script.stdout, re.M), name
    zsh = tool("zsh")               # setup.sh installs it: in CI a missing zsh fails, never skips
    assert subprocess.run([zsh, "-n"], input=script.stdout, text=True, check=False).returncode == 0


def _rendered(page: str) -> str:
    """The page as text.  Always from the roff itself (the escapes undone);
    also through groff (setup.sh installs groff-base), which must render it
    without error."""
    text = re.sub(r"\\f[BIRP]|\\[,/]", "", page).replace("\\-", "-")
    groff = tool("groff")
    res = subprocess.run([groff, "-man", "-Tutf8"], input=page, capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    # Plain text: bold and underline are overstrikes (c BS c), hyphens typographic.
    plain = re.sub(".\b", "", res.stdout).replace("\u2010", "-").replace("\u2212", "-")
    assert "bpf-sdt" in plain and "OPTIONS" in plain
    return text


def test_man_page_covers_every_command_and_option() -> None:
    res = run([*CLI, "man"])
    assert res.returncode == 0 and res.stdout.startswith(".TH BPF\\-SDT ")
    text = _rendered(res.stdout)
    for name, sub in _commands(build_parser()).items():
        assert f"bpf-sdt {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, f"bpf-sdt {name} {option}"


def test_man_page_of_one_command(tmp_path: Path) -> None:
    res = run([*CLI, "man", "instrument"])
    assert res.returncode == 0 and res.stdout.startswith(".TH BPF\\-SDT\\-INSTRUMENT ")
    assert "--observer" in _rendered(res.stdout)
    unknown = run([*CLI, "man", "no-such-command"])
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert len(unknown.stderr.strip().splitlines()) == 1 and "no-such-command" in unknown.stderr


@pytest.mark.parametrize("command", [["list"], ["list", "--json"]])
def test_closed_stdout_is_one_line_and_exit_2(command: list[str], tmp_path: Path) -> None:
    """Started with fd 1 closed (`>&-`): Python has no sys.stdout at all; the
    command says so in one line instead of a traceback."""
    big = tmp_path / "big.o"
    big.write_bytes(many_sites_object(10))
    res = subprocess.run(["bash", "-c", " ".join([*CLI, *command, str(big)]) + " >&-"], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["bpf-sdt list: cannot write to standard output: it is closed"], res.stderr

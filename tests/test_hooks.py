"""The build-system pieces the package ships, used the way a project uses
them: the make include (clean trees, directories with spaces and quotes) and
the meson helper (a project whose C compiler is gcc), each feeding `bpf-sdt
lint -p`; and the typecheck script `make lint` runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bpf_sdt.hooks import MESON_HELPER, hook_path, run_meson_path
from test_samples import SAMPLES, make
from toolchain import REPO, clang, run, tool

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
# A directory name a careless rule would split or unquote.
AWKWARD = "my 'bpf' \"probes\" dir"
TIMEOUT_S = 300


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.pop("CC", None)
    return env


# --- make ----------------------------------------------------------------------------


def _copy_samples(dest: Path) -> Path:
    shutil.copytree(SAMPLES, dest, ignore=shutil.ignore_patterns("build*", "compile_commands.json"))
    return dest


@pytest.mark.parametrize("outdir", ["build", "out/deeper/still"])
def test_make_compile_commands_on_a_clean_tree_with_spaces_and_quotes(outdir: str, tmp_path: Path) -> None:
    src = _copy_samples(tmp_path / AWKWARD)
    db = src / outdir / "compile_commands.json"
    res = make(f"BPF_SDT_OUTDIR={outdir}", f"{outdir}/compile_commands.json", cwd=src)   # first and only target
    assert res.returncode == 0, res.stdout + res.stderr
    entries = json.loads(db.read_text())
    sources = sorted(src.glob("*.bpf.c"))
    assert sorted(e["file"] for e in entries) == [str(s) for s in sources]
    for e in entries:
        assert e["directory"] == str(src)
        argv = shlex.split(e["command"])
        assert argv[-2:] == ["-c", e["file"]], "the path is one shell word, spaces and quotes included"
    built = make(f"BPF_SDT_OUTDIR={outdir}", cwd=src)
    assert built.returncode == 0, built.stdout + built.stderr
    lint = run([*CLI, "lint", "--no-cache", "-p", str(src / outdir), *map(str, sources)])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "[SDT0" not in lint.stdout.replace("[SDT006]", "")


def test_make_compile_commands_follow_the_sources(tmp_path: Path) -> None:
    src = _copy_samples(tmp_path / "s")
    assert make("BPF_SDT_OUTDIR=build", "build/compile_commands.json", cwd=src).returncode == 0
    (src / "extra.bpf.c").write_text("int x;\n")
    assert make("BPF_SDT_OUTDIR=build", "build/compile_commands.json", cwd=src).returncode == 0
    files = {Path(e["file"]).name for e in json.loads((src / "build" / "compile_commands.json").read_text())}
    assert "extra.bpf.c" in files, "a new source is listed without a clean"


# --- make: a new project, as the README sets one up -----------------------------------

# The README's program and observer styles: libbpf's headers, the kernel's
# UAPI (which needs the multiarch asm/ directory), an enum-typed BPF_PROG.
README_PROGRAM = """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

enum drop_reason { DROP_SHORT = 1, DROP_TTL };
BPF_SDT_DECLARE2(drop, enum drop_reason, __u32);

SEC("xdp") int prog(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;

	if (len < 64) {
		BPF_SDT_PROBE2(drop, DROP_SHORT, len);
		return XDP_DROP;
	}
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""
README_OBSERVER = """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

enum drop_reason { DROP_SHORT = 1, DROP_TTL };
__u64 dropped_bytes;

SEC("bpf_sdt/drop") int BPF_PROG(count_drop, enum drop_reason why, __u32 len)
{
	if (why == DROP_SHORT)
		__sync_fetch_and_add(&dropped_bytes, len);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""
NEW_PROJECT_MAKEFILE = """BPF_SDT_OUTDIR := build
BPF_SDT_SOURCES := $(wildcard *.bpf.c)
include $(or $(shell bpf-sdt makefile),$(error bpf-sdt not found on PATH))
all: build/prog.bpf.o build/observer.bpf.o build/compile_commands.json
"""
# What the recipes run besides the compilers (make itself runs /bin/sh).
RECIPE_TOOLS = ("mkdir", "mv", "rm", "grep")


def _bin_dir(root: Path, *programs: str) -> Path:
    """A PATH directory holding exactly these programs (symlinks)."""
    bindir = root / "bin"
    bindir.mkdir(parents=True)
    for prog in (*RECIPE_TOOLS, *programs):
        found = shutil.which(prog) or prog
        (bindir / Path(prog).name).symlink_to(found)
    return bindir


def _new_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "Makefile").write_text(NEW_PROJECT_MAKEFILE)
    (root / "prog.bpf.c").write_text(README_PROGRAM)
    (root / "observer.bpf.c").write_text(README_OBSERVER)
    return root


def _make_with_path(root: Path, bindir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("make"), "-C", str(root), *args], capture_output=True, text=True,
                          env={"PATH": str(bindir), "HOME": str(root)}, timeout=TIMEOUT_S, check=False)


def test_new_project_builds_with_clang_n_only(tmp_path: Path) -> None:
    """Debian's clang-19 and bpf-sdt on PATH, no `clang`: the include finds
    clang-19 as `instrument` does, adds the multiarch directory, and builds
    the observer under its own warning flags; -Wall -Wextra -Werror hold."""
    bindir = _bin_dir(tmp_path, clang(19), str(Path(sys.executable).parent / "bpf-sdt"))
    assert not (bindir / "clang").exists()
    root = _new_project(tmp_path / "proj")
    res = _make_with_path(root, bindir)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "clang-19 -target bpf" in res.stdout and "-Werror" in res.stdout
    sites = json.loads(run([*CLI, "list", "--json", str(root / "build" / "prog.bpf.o")]).stdout)
    (site,) = sites["objects"][0]["probes"]
    assert site["name"] == "drop" and site["args"][0] == {"kind": "imm", "value": 1}
    inst = run([*CLI, "instrument", str(root / "build" / "prog.bpf.o"), "-o", str(tmp_path / "inst.o"),
                "--observer", str(root / "build" / "observer.bpf.o"), "--bpftool", tool("bpftool")])
    assert inst.returncode == 0, inst.stderr
    assert _make_with_path(root, bindir, "-q").returncode == 0, "a second make would rebuild something"


def test_new_project_rebuilds_on_a_flag_change_only(tmp_path: Path) -> None:
    bindir = _bin_dir(tmp_path, clang(19), str(Path(sys.executable).parent / "bpf-sdt"))
    root = _new_project(tmp_path / "proj")
    assert _make_with_path(root, bindir).returncode == 0
    changed = _make_with_path(root, bindir, "BPF_EXTRA_CFLAGS=-DEXTRA")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.count("-DEXTRA -MMD") == 2, changed.stdout
    assert "-DEXTRA" in (root / "build" / "compile_commands.json").read_text()
    assert _make_with_path(root, bindir, "-q", "BPF_EXTRA_CFLAGS=-DEXTRA").returncode == 0
    assert _make_with_path(root, bindir, "-q").returncode == 1, "back to the old flags: out of date again"


def test_new_project_sources_in_a_subdirectory_follow_their_headers(tmp_path: Path) -> None:
    bindir = _bin_dir(tmp_path, clang(19), str(Path(sys.executable).parent / "bpf-sdt"))
    root = _new_project(tmp_path / "proj")
    (root / "src").mkdir()
    (root / "src" / "limit.h").write_text("#define LIMIT 64\n")
    (root / "src" / "sub.bpf.c").write_text(README_PROGRAM.replace("< 64", "< LIMIT").replace(
        "#include <bpf_sdt.h>", '#include <bpf_sdt.h>\n#include "limit.h"'))
    target = "build/src/sub.bpf.o"
    assert _make_with_path(root, bindir, target).returncode == 0
    assert _make_with_path(root, bindir, "-q", target).returncode == 0
    (root / "src" / "limit.h").write_text("#define LIMIT 65\n")
    assert _make_with_path(root, bindir, "-q", target).returncode == 1, "a header change rebuilds (depfile read)"


def test_new_project_without_bpf_sdt_or_clang_says_so(tmp_path: Path) -> None:
    root = _new_project(tmp_path / "proj")
    no_bpf_sdt = _make_with_path(root, _bin_dir(tmp_path / "a", clang(19)))
    assert no_bpf_sdt.returncode != 0 and "bpf-sdt not found on PATH" in no_bpf_sdt.stderr
    no_clang = _make_with_path(root, _bin_dir(tmp_path / "b", str(Path(sys.executable).parent / "bpf-sdt")))
    assert no_clang.returncode != 0 and "clang not found" in no_clang.stderr, no_clang.stderr
    assert "Traceback" not in no_clang.stderr
    assert not (root / "build").exists(), "nothing built, nothing half-written"


# --- meson ---------------------------------------------------------------------------


def _documented_snippet() -> str:
    """The meson.build lines the helper's own documentation gives users."""
    doc = (hook_path(MESON_HELPER)).read_text()
    start = doc.index("In meson.build")
    body = doc[doc.index("\n\n", start) + 2:doc.index("and lint with", start)]
    return textwrap.dedent(body)


PROBED = """#include <bpf_sdt.h>
#include "shared.h"
BPF_SDT_DECLARE2(hit, int, long);
__attribute__((section("xdp"), used)) int prog(void *ctx)
{
	BPF_SDT_PROBE2(hit, SHARED, (long)ctx);
	return 2;
}
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""
# A hand-written note whose address points at a mov, not a NOP: check rejects it.
BROKEN = """#include <bpf_sdt.h>
BPF_SDT_DECLARE1(broken, int);
__attribute__((section("xdp"), used)) int prog(void *ctx)
{
	asm volatile("1: r2 = r2\\n"
		     ".pushsection .bpf_sdt_notes,\\"\\",@progbits\\n"
		     "___sdt_jt_broken:\\n.quad 1b\\nr1 = r2\\n.popsection" ::: "r2");
	return 2;
}
char LICENSE[] __attribute__((section("license"), used)) = "GPL";
"""


def _meson_project(root: Path, bpf_source: str) -> Path:
    root.mkdir(parents=True)
    (root / "meson.build").write_text(
        "project('uses-bpf-sdt', 'c')\n"
        "executable('loader', 'loader.c')   # userspace, built by the default compiler\n"
        + _documented_snippet())
    (root / "loader.c").write_text("int main(void) { return 0; }\n")
    (root / "prog.bpf.c").write_text(bpf_source)
    (root / "shared.h").write_text("#define SHARED 7\n")
    return root


def _meson(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("meson"), *args], capture_output=True, text=True, env=_env(), cwd=cwd,
                          timeout=TIMEOUT_S, check=False)


def _ninja(build: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ninja"), "-C", str(build)], capture_output=True, text=True, env=_env(),
                          timeout=TIMEOUT_S, check=False)


def test_meson_helper_in_a_gcc_project_builds_checks_and_feeds_lint(tmp_path: Path) -> None:
    clang(19)   # the snippet finds clang-N on PATH
    root = _meson_project(tmp_path / AWKWARD / "proj", PROBED)
    build = tmp_path / AWKWARD / "build"
    setup = _meson("setup", str(build), str(root))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "C compiler for the host machine: cc (gcc" in setup.stdout
    first = _ninja(build)
    assert first.returncode == 0, first.stdout + first.stderr
    obj = build / "prog.bpf.o"
    assert run([*CLI, "check", str(obj)]).returncode == 0
    (site,) = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert site["name"] == "hit" and site["args"][0] == {"kind": "imm", "value": 7}
    # clang recorded BUILD/../proj/prog.bpf.c (meson passes paths relative to the build directory)
    assert site["file"] == str(root / "prog.bpf.c"), "listings normalise the path"
    assert (build / "loader").exists(), "the project's own C still builds with gcc"
    assert "no work to do" in _ninja(build).stdout
    (root / "shared.h").write_text("#define SHARED 9\n")   # a header change rebuilds (depfile)
    assert _ninja(build).returncode == 0
    (site,) = json.loads(run([*CLI, "list", "--json", str(obj)]).stdout)["objects"][0]["probes"]
    assert site["args"][0]["value"] == 9
    lint = run([*CLI, "lint", "--no-cache", "-p", str(build / "bpf-sdt"), str(root / "prog.bpf.c")])
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr
    (entry,) = json.loads((build / "bpf-sdt" / "compile_commands.json").read_text())
    assert entry["file"] == str(root / "prog.bpf.c") and entry["arguments"][-1] == entry["file"]


def test_meson_helper_fails_the_build_on_a_broken_note(tmp_path: Path) -> None:
    clang(19)
    root = _meson_project(tmp_path / "proj", BROKEN)
    build = tmp_path / "build"
    assert _meson("setup", str(build), str(root)).returncode == 0
    res = _ninja(build)
    assert res.returncode != 0
    assert "[SDT107]" in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (build / "prog.bpf.o").exists() and not (build / "prog.bpf.o.tmp").exists()


def test_meson_helper_usage_errors_are_one_line(tmp_path: Path) -> None:
    helper = str(hook_path(MESON_HELPER))
    for args in (["compile", "--bpf-sdt", "x", "--depfile", "d", "a.c", "a.o"], ["compdb", "--directory", "/",
                 "--output", str(tmp_path / "c.json"), "a.c", "--"]):
        res = subprocess.run([sys.executable, helper, *args], capture_output=True, text=True, timeout=60,
                             check=False)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    missing = subprocess.run([sys.executable, helper, "compile", "--bpf-sdt", "bpf-sdt", "--depfile",
                              str(tmp_path / "d"), str(tmp_path / "a.c"), str(tmp_path / "a.o"), "--",
                              str(tmp_path / "no-such-clang")], capture_output=True, text=True, timeout=60,
                             check=False)
    assert missing.returncode == 2 and "no-such-clang" in missing.stderr and "Traceback" not in missing.stderr


def test_meson_helper_path_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_meson_path() == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == hook_path(MESON_HELPER) and printed.is_file()
    cli = run([*CLI, "meson"])
    assert cli.returncode == 0 and Path(cli.stdout.strip()) == printed, "bpf-sdt meson prints it too"


def test_meson_help_documents_the_recipe() -> None:
    """`bpf-sdt meson --help` prints the recipe the installed helper documents."""
    res = run([*CLI, "meson", "--help"])
    assert res.returncode == 0
    assert " ".join(_documented_snippet().split()) in " ".join(res.stdout.split()), res.stdout
    assert "'clang'" in _documented_snippet() and "'--system'" in _documented_snippet(), \
        "the recipe finds clang and the system include directory as the make include does"


def test_meson_helper_ships_in_the_package() -> None:
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "bpf_sdt.hooks" in data["tool"]["setuptools"]["packages"]
    assert hook_path(MESON_HELPER).suffix == ".py", "a module of bpf_sdt.hooks: installed with the package"


# --- make lint -------------------------------------------------------------------------


def test_typecheck_takes_a_mypy_path_relative_to_the_caller(tmp_path: Path) -> None:
    """`make lint` passes MYPY=.venv/bin/mypy and the script changes
    directory; a relative path must still name the same program."""
    stub = tmp_path / "bin" / "mypy"
    stub.parent.mkdir()
    record = tmp_path / "called"
    stub.write_text(f'#!/bin/sh\necho "$PWD $*" > {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
    res = subprocess.run([str(REPO / "scripts" / "typecheck.sh")], cwd=tmp_path, env={**os.environ,
                         "MYPY": "bin/mypy"}, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    called = record.read_text()
    assert "-p bpf_sdt" in called and f"--config-file {REPO}/pyproject.toml" in called

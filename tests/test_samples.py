"""The samples, built the way users build: the make hook (and meson), checked,
listed, and loaded into the real kernel verifier with and without probes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import REPO, bpf_permitted, clang, need, run, tool

SAMPLES = REPO / "samples"
CLI = [sys.executable, "-m", "bpf_sdt.cli"]
EXPECTED_OBJECTS = {"xdp_parser.bpf.o", "trace_exec.bpf.o", "wide_probe.bpf.o",
                    "tc.linked.bpf.o", "loop.linked.bpf.o"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def make(*args: str, cwd: Path = SAMPLES) -> subprocess.CompletedProcess[str]:
    tool("bpftool")
    return subprocess.run(["make", "-C", str(cwd), f"BPF_CLANG={clang(19)}", *args],
                          capture_output=True, text=True, env=_env(), check=False)


def objects(outdir: Path) -> list[Path]:
    res = make("-s", "objects", f"BPF_SDT_OUTDIR={outdir}")
    return [Path(p) for p in res.stdout.split()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples-build")
    res = make(f"BPF_SDT_OUTDIR={out}")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture(scope="module")
def built_disabled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("samples-noprobes")
    res = make(f"BPF_SDT_OUTDIR={out}", "BPF_SAMPLES_DEFINES=-DBPF_SDT_DISABLE")
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def load(objs: list[Path]) -> dict[str, int]:
    """Load into the kernel verifier; object name -> processed insns."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    res = subprocess.run([str(REPO / "scripts" / "load.sh"), *map(str, objs)],
                         capture_output=True, text=True, env=_env(), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = {}
    for line in res.stdout.splitlines():
        name, rest = line.split(": loaded (processed ")
        out[Path(name).name] = int(rest.split()[0])
    return out


def test_make_builds_every_sample_and_is_incremental(built: Path) -> None:
    assert {p.name for p in objects(built)} == EXPECTED_OBJECTS
    assert all(p.exists() for p in objects(built))
    again = make(f"BPF_SDT_OUTDIR={built}", "-q")      # -q: exit 0 iff nothing to do
    assert again.returncode == 0, "a second make would rebuild something"


def test_samples_check_clean_and_list(built: Path) -> None:
    objs = objects(built)
    res = run([*CLI, "check", *map(str, objs)])
    assert res.returncode == 0 and res.stdout == "", res.stdout + res.stderr
    listing = json.loads(run([*CLI, "list", "--json", *map(str, objs)]).stdout)
    by_obj = {Path(o["path"]).name: o["probes"] for o in listing["objects"]}
    xdp = by_obj["xdp_parser.bpf.o"]
    drops = [p for p in xdp if p["name"] == "drop"]
    assert len(drops) == 4, "one probe name, four sites, four entries"
    assert sorted(p["args"][0]["value"] for p in drops) == [1, 2, 3, 4], "constant reasons"
    assert all(p["args"][0]["kind"] == "imm" for p in drops)
    (flow,) = by_obj["wide_probe.bpf.o"]
    assert len(flow["args"]) == len(flow["types"]) == 12
    assert {a["kind"] for a in flow["args"][:10]} <= {"reg", "imm"}     # 1..10: registers
    assert {a["kind"] for a in flow["args"][10:]} <= {"stack", "imm"}   # 11..12: stack slots
    tc = {p["name"]: p for p in by_obj["tc.linked.bpf.o"]}
    assert tc["accounted"]["function"] == "account" and tc["classify"]["section"] == "tc"
    loop = {p["name"]: p for p in by_obj["loop.linked.bpf.o"]}
    assert {loop["step"]["function"], loop["mixed"]["function"], loop["scaling"]["function"]} \
        == {"loop_cb", "mix", "scale"}


@pytest.mark.kernel
def test_every_sample_loads_into_the_verifier(built: Path) -> None:
    loaded = load(objects(built))
    assert set(loaded) == EXPECTED_OBJECTS


@pytest.mark.kernel
def test_samples_without_probes_build_and_load(built_disabled: Path, built: Path) -> None:
    objs = objects(built_disabled)
    res = run([*CLI, "list", "--json", *map(str, objs)])
    assert all(not o["probes"] for o in json.loads(res.stdout)["objects"])
    without, with_ = load(objs), load(objects(built))
    assert set(without) == EXPECTED_OBJECTS
    # The kernel deletes the NOPs, so probes cost the verifier nothing per
    # probe; what remains is argument set-up (stack stores for args 6..12).
    for name in EXPECTED_OBJECTS:
        assert with_[name] >= without[name] > 0


BROKEN = r'''#include "common.h"
BPF_SDT_DECLARE1(broken, int);
SEC("xdp") int xdp_broken(struct xdp_md *ctx)
{
	/* hand-written note whose address word points at a mov, not at a NOP */
	asm volatile("1: r2 = r2\n"
		     ".pushsection .bpf_sdt_notes,\"\",@progbits\n"
		     "___sdt_jt_broken:\n.quad 1b\nr1 = r2\n.popsection" ::: "r2");
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
'''


def test_broken_note_fails_the_build_at_the_post_link_step(tmp_path: Path) -> None:
    src = tmp_path / "samples"
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("build*"))
    (src / "broken.bpf.c").write_text(BROKEN)
    out = tmp_path / "out"
    res = make(f"BPF_SDT_OUTDIR={out}", f"{out}/broken.bpf.o", cwd=src)
    assert res.returncode != 0
    assert "[SDT107]" in res.stdout + res.stderr, res.stdout + res.stderr
    assert not (out / "broken.bpf.o").exists() and not (out / "broken.bpf.o.tmp").exists()


@pytest.fixture(scope="module")
def built_meson(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """meson with the default C compiler (gcc here, CC unset, as in a project
    whose userspace is C): BPF goes through bpf-sdt's meson helper and clang."""
    out = tmp_path_factory.mktemp("samples-meson") / "build"
    env = _env()
    env.pop("CC", None)
    setup = subprocess.run([tool("meson"), "setup", f"-Dbpf_clang={clang(19)}", str(out), str(SAMPLES)],
                           capture_output=True, text=True, env=env, check=False)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "C compiler for the host machine: cc (gcc" in setup.stdout, "the test should run with gcc as CC"
    ninja = subprocess.run([tool("ninja"), "-C", str(out)], capture_output=True, text=True, env=env, check=False)
    assert ninja.returncode == 0, ninja.stdout + ninja.stderr
    return out


def meson_objects(build: Path) -> list[Path]:
    return [build / name for name in sorted(EXPECTED_OBJECTS)]


def _listing(objs: list[Path]) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    doc = json.loads(run([*CLI, "list", "--json", *map(str, objs)]).stdout)
    # the source file is named as each build gave it to the compiler
    return {Path(o["path"]).name: [{**p, "file": p["file"] and Path(p["file"]).name} for p in o["probes"]]
            for o in doc["objects"]}


def test_meson_build_lists_the_same_probes_as_make(built_meson: Path, built: Path) -> None:
    meson_objs = meson_objects(built_meson)
    assert all(p.exists() for p in meson_objs)
    assert run([*CLI, "check", *map(str, meson_objs)]).returncode == 0
    assert _listing(meson_objs) == _listing(objects(built))


@pytest.mark.kernel
def test_meson_objects_load_into_the_verifier(built_meson: Path) -> None:
    assert set(load(meson_objects(built_meson))) == EXPECTED_OBJECTS


def test_meson_compile_commands_feed_lint(built_meson: Path) -> None:
    sources = sorted(SAMPLES.glob("*.bpf.c"))
    compdb = built_meson / "bpf-sdt"   # the helper's: meson's own lists no custom targets
    res = run([*CLI, "lint", "--no-cache", "-p", str(compdb), *map(str, sources)])
    assert res.returncode == 0 and "error" not in res.stdout, res.stdout + res.stderr
    extracted = json.loads(run([*CLI, "extract", "--json", "-p", str(compdb), *map(str, sources)]).stdout)
    assert len(extracted["sites"]) == 16   # every probe site in samples/

"""The pre-commit hook as the README configures it: the configuration copied
into a fresh git repository of BPF sources (libbpf and kernel UAPI headers, a
project include directory, no compile database), `pre-commit install`, then
real `git commit`s: a broken probe is refused, a good one goes in.

The hook repository is a committed snapshot of this work tree (the code under
test, committed or not), named by path with `rev` its commit sha, as the
README tells users to write it; no network is needed beyond PyPI for the
hook's virtualenv (pip's cache usually has it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import REPO, need

GIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-c", "init.defaultBranch=main"]
# pre-commit builds the hook's virtualenv with pip on its first run.
INSTALL_TIMEOUT_S = 600
REPO_PLACEHOLDER = "<clone path or URL>"
REV_PLACEHOLDER = "<commit sha>"

HEADER = "#define PROJECT_LEN_ARG(ctx) ((long)((ctx)->data_end - (ctx)->data))\n"
SOURCE = """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
#include <project.h>

BPF_SDT_DECLARE2(seen, int, long);

SEC("xdp") int prog(struct xdp_md *ctx)
{
	BPF_SDT_PROBE%d(seen, 1, PROJECT_LEN_ARG(ctx)%s);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""
GOOD = SOURCE % (2, "")
BROKEN = SOURCE % (3, ", 3")   # declared with 2 arguments, passes 3: SDT002


def readme_configuration() -> str:
    """The README's `.pre-commit-config.yaml` block, verbatim."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"```yaml\n(repos:\n.*?)```", readme, re.S)
    assert found, "README has a pre-commit configuration"
    return found.group(1)


def _git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, text=True, env=env, check=False,
                          timeout=INSTALL_TIMEOUT_S)


def _snapshot_of_this_tree(dest: Path) -> str:
    """A fresh repository holding this work tree's tracked files; its sha."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        assert _git(*step, cwd=dest).returncode == 0
    return _git("rev-parse", "HEAD", cwd=dest).stdout.strip()


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    dest = tmp_path_factory.mktemp("bpf-sdt-clone")
    return dest, _snapshot_of_this_tree(dest)


@pytest.fixture(scope="module")
def pre_commit_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pre_commit = Path(sys.executable).parent / "pre-commit"
    need(pre_commit.exists(), "pre-commit not installed (pip install -e .[test])")
    home = tmp_path_factory.mktemp("pre-commit-home")
    return {**os.environ, "PATH": f"{pre_commit.parent}:{os.environ['PATH']}",
            "PRE_COMMIT_HOME": str(home / "pc"), "BPF_SDT_CACHE_DIR": str(home / "lint-cache")}


def _project(root: Path, hook_repo: tuple[Path, str], env: dict[str, str]) -> Path:
    clone, sha = hook_repo
    root.mkdir()
    assert _git("init", "-q", cwd=root).returncode == 0
    config = readme_configuration().replace(REPO_PLACEHOLDER, str(clone)).replace(REV_PLACEHOLDER, sha)
    (root / ".pre-commit-config.yaml").write_text(config)
    (root / "include").mkdir()
    (root / "include" / "project.h").write_text(HEADER)
    installed = subprocess.run([str(Path(env["PATH"].split(":")[0]) / "pre-commit"), "install"], cwd=root,
                               capture_output=True, text=True, env=env, check=False, timeout=INSTALL_TIMEOUT_S)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return root


def test_readme_configuration_blocks_a_broken_probe_and_passes_a_good_one(
        tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_env: dict[str, str]) -> None:
    root = _project(tmp_path / "proj", hook_repo, pre_commit_env)
    (root / "xdp.bpf.c").write_text(BROKEN)
    assert _git("add", "-A", cwd=root).returncode == 0
    refused = _git("commit", "-qm", "broken", cwd=root, env=pre_commit_env)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "xdp.bpf.c:10:" in output and "[SDT002]" in output, output
    assert _git("rev-parse", "--verify", "-q", "HEAD", cwd=root).returncode != 0, "nothing was committed"

    (root / "xdp.bpf.c").write_text(GOOD)
    assert _git("add", "-A", cwd=root).returncode == 0
    accepted = _git("commit", "-qm", "good", cwd=root, env=pre_commit_env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "bpf-sdt lint (BPF SDT probes)" in accepted.stdout + accepted.stderr, "the hook ran"
    assert _git("log", "--format=%s", cwd=root).stdout.split() == ["good"]


def test_the_hook_sees_the_staged_files_after_its_args(
        tmp_path: Path, hook_repo: tuple[Path, str], pre_commit_env: dict[str, str]) -> None:
    """Without the README's `-I include` the project header is missing (exit 2
    blocks the commit): the args reach lint as options, the files after them."""
    root = _project(tmp_path / "proj", hook_repo, pre_commit_env)
    config = root / ".pre-commit-config.yaml"
    config.write_text(re.sub(r"\n\s*args: .*", "", config.read_text()))
    (root / "xdp.bpf.c").write_text(GOOD)
    assert _git("add", "-A", cwd=root).returncode == 0
    refused = _git("commit", "-qm", "no include dir", cwd=root, env=pre_commit_env)
    assert refused.returncode != 0 and "'project.h' file not found" in refused.stdout + refused.stderr

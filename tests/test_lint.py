"""`bpf-sdt extract` / `lint`: each rule fires where it should and nowhere
else; extracted prototypes equal the compiled object's BTF; bad input gets a
diagnostic; compile_commands.json from make and meson feeds -p; the cache;
the pre-commit hook."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bpf_sdt.postlink.check import analyze
from test_samples import SAMPLES, built, make  # noqa: F401  (fixture)
from toolchain import IN_CI, REPO, need, run

from bpf_sdt.elf import load_object
from bpf_sdt.probes import tagged_prototype

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
HEAD = "#include <bpf_sdt.h>\nstruct big { long a, b; };\n"
GOOD = HEAD + """BPF_SDT_DECLARE2(ok, int, const char *);
int f(int *c) { BPF_SDT_PROBE2(ok, c[0], "x"); return 0; }
"""
# rule: (source, line of the finding)
CASES = {
    "SDT000": (HEAD + "int f(void) { int x = ; return x; }\n", 3),
    "SDT001": (HEAD + "int f(int x) {\n BPF_SDT_PROBE1(nope, x);\n return 0; }\n", 4),
    "SDT002": (HEAD + "BPF_SDT_DECLARE2(p, int, int);\nint f(int x) {\n BPF_SDT_PROBE1(p, x);\n return 0; }\n", 5),
    "SDT003": (HEAD + "BPF_SDT_DECLARE1(p, long);\nint f(int *x) {\n BPF_SDT_PROBE1(p, x);\n return 0; }\n", 5),
    "SDT004": (HEAD + "BPF_SDT_DECLARE1(p, long);\nint f(struct big *b) {\n BPF_SDT_PROBE1(p, *b);\n return 0; }\n", 5),
    "SDT006": (HEAD + "BPF_SDT_DECLARE1(lonely, int);\nint f(void) { return 0; }\n", 3),
    "SDT007": (HEAD + "BPF_SDT_DECLARE(__hidden);\nint f(void) {\n BPF_SDT_PROBE(__hidden);\n return 0; }\n", 3),
    "SDT008": (HEAD + "int f(int x) {\n BPF_SDT_PROBE13(p, x,x,x,x,x,x,x,x,x,x,x,x,x);\n return 0; }\n", 4),
    "SDT009": (HEAD + "BPF_SDT_DECLARE(late);\nint f(int x) {\n if (x) return 1;\n return 0;\n BPF_SDT_PROBE(late);\n}\n", 7),
}


def lint(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "lint", "--no-cache", *args], capture_output=True, text=True,
                          env=env, check=False)


def findings(res: subprocess.CompletedProcess[str]) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(res.stdout)["findings"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires_where_it_should(rule: str, tmp_path: Path) -> None:
    src, line = CASES[rule]
    f = tmp_path / "t.bpf.c"
    f.write_text(src)
    res = lint("--format", "json", str(f))
    assert "Traceback" not in res.stderr, res.stderr
    got = findings(res)
    rules = {g["rule"] for g in got}
    extra: set[str] = {"SDT002": set(), "SDT009": set()}.get(rule, set())
    assert rule in rules and rules - {rule} <= extra | {"SDT006"} - {rule}, got
    hit = next(g for g in got if g["rule"] == rule)
    assert hit["where"].split(":")[0] == str(line), hit
    severity = hit["severity"]
    assert res.returncode == (1 if severity == "error" else 0)
    text = lint(str(f)).stdout
    assert f"{f}:{line}:" in text and f"[{rule}]" in text


def test_good_source_has_no_findings(tmp_path: Path) -> None:
    f = tmp_path / "good.bpf.c"
    f.write_text(GOOD)
    res = lint(str(f))
    assert res.returncode == 0 and res.stdout == "", res.stdout


def test_conflicting_declarations_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.c", tmp_path / "b.c"
    a.write_text(HEAD + "BPF_SDT_DECLARE1(p, int);\nint f(int x) { BPF_SDT_PROBE1(p, x); return 0; }\n")
    b.write_text(HEAD + "BPF_SDT_DECLARE1(p, long);\nint g(long x) { BPF_SDT_PROBE1(p, x); return 0; }\n")
    res = lint("--format", "json", str(a), str(b))
    got = findings(res)
    assert [g["rule"] for g in got] == ["SDT005"] and res.returncode == 1
    assert lint("--format", "json", str(a)).returncode == 0, "each file alone is fine"


def test_sarif_output(tmp_path: Path) -> None:
    f = tmp_path / "t.c"
    f.write_text(CASES["SDT003"][0])
    doc = json.loads(lint("--format", "sarif", str(f)).stdout)
    assert doc["version"] == "2.1.0"
    (result,) = doc["runs"][0]["results"]
    assert result["ruleId"] == "SDT003" and result["locations"][0]["physicalLocation"]["region"]["startLine"] == 5


def test_every_rule_is_documented() -> None:
    from bpf_sdt.clang_plugin.lint import RULES

    doc = (REPO / "docs" / "lint.md").read_text()
    for rule in RULES:
        assert f"| {rule} |" in doc, rule


@pytest.mark.parametrize("name, content, code, text", [
    ("syntax.c", b"int x = ;\n", 1, "SDT000"),
    ("binary.c", b"\x7fELF\x00\x01\x02", 2, "binary file"),
    ("empty.c", b"", 0, ""),
    ("latin1.c", b"#include <bpf_sdt.h>\n/* caf\xe9 */\nBPF_SDT_DECLARE(p);\nint f(void) { BPF_SDT_PROBE(p); return 0; }\n",
     0, ""),
    ("missing.c", b'#include "vmlinux.h"\nint f(void) { return 0; }\n', 2, "'vmlinux.h' file not found"),
])
def test_bad_input_gets_a_diagnostic(name: str, content: bytes, code: int, text: str, tmp_path: Path) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    res = lint(str(f))
    assert res.returncode == code, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert text in res.stdout + res.stderr
    if code == 2:
        assert len(res.stderr.strip().splitlines()) == 1
    if name == "missing.c":
        assert "-p BUILD_DIR" in res.stderr


def test_extract_json_shape_and_canonical_types(tmp_path: Path) -> None:
    f = tmp_path / "x.c"
    f.write_text("#include <bpf_sdt.h>\ntypedef unsigned int __u32;\nBPF_SDT_DECLARE2(t, __u32, const char *);\n"
                 "int prog(int *c) {\n\tBPF_SDT_PROBE2(t, c[0] + 1, \"s\");\n\treturn 0;\n}\n")
    doc = json.loads(run([*CLI, "extract", "--json", str(f)]).stdout)
    (d,) = doc["declarations"]
    assert d == {"name": "t", "types": ["__u32", "const char *"], "canonical": ["unsigned int", "const char *"],
                 "sizes": [4, 8], "file": str(f), "line": 3}
    (s,) = doc["sites"]
    assert s == {"name": "t", "file": str(f), "line": 5, "column": 2, "args": ["c[0] + 1", '"s"'], "function": "prog",
                 "via": []}


def test_extracted_prototypes_equal_the_objects_btf(built: Path) -> None:  # noqa: F811
    """The source-side and object-side readers agree on every sample."""
    make("-s", f"BPF_SDT_OUTDIR={built}", f"{built}/compile_commands.json")
    for src in sorted(SAMPLES.glob("*.bpf.c")):
        res = run([*CLI, "extract", "--json", "-p", str(built), str(src)])
        assert res.returncode == 0, res.stderr
        declared = {d["name"]: d for d in json.loads(res.stdout)["declarations"] if d["file"] == str(src)}
        obj = load_object(built / (src.stem + ".o"))
        btf = obj.btf
        assert btf is not None
        from_btf = {}
        for t in btf.types:
            if t.kind_name == "DECL_TAG" and t.name.startswith("bpf_sdt:"):
                proto = tagged_prototype(btf, t.type)
                assert proto is not None, t.name
                from_btf[t.name.split(":")[1]] = (
                    [btf.c_spelling(p.type) for p in proto.members],
                    [btf.c_spelling(p.type, canonical=True) for p in proto.members],
                    [btf.size_of(p.type) for p in proto.members])
        assert set(declared) == set(from_btf), src
        for name, d in declared.items():   # spelled as declared (as `list` shows them), and canonical
            assert (d["types"], d["canonical"], d["sizes"]) == from_btf[name], (src.name, name)
        assert analyze(obj).declarations.keys() == declared.keys()


def test_samples_lint_clean_with_make_compile_commands(built: Path) -> None:  # noqa: F811
    make("-s", f"BPF_SDT_OUTDIR={built}", f"{built}/compile_commands.json")
    res = lint("-p", str(built), *map(str, sorted(SAMPLES.glob("*.bpf.c"))))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[SDT0" not in res.stdout.replace("[SDT006]", "")


def test_system_libclang_through_the_environment(tmp_path: Path) -> None:
    libs = sorted(Path("/usr/lib").glob("llvm-*/lib/libclang-*.so.1"), key=lambda p: int(p.parent.parent.name[5:]))
    lib = libs[-1] if libs else None
    need(lib is not None, "no system libclang (Debian libclang1-N)")
    f = tmp_path / "t.c"
    f.write_text(CASES["SDT003"][0])
    res = lint("--format", "json", str(f), env={**os.environ, "BPF_SDT_LIBCLANG": str(lib)})
    assert [g["rule"] for g in findings(res)] == ["SDT003"]
    bad = lint(str(f), env={**os.environ, "BPF_SDT_LIBCLANG": "/nonexistent/libclang.so"})
    assert bad.returncode == 2 and "BPF_SDT_LIBCLANG" in bad.stderr and "Traceback" not in bad.stderr
    if int(libs[0].parent.parent.name[5:]) < 16:   # too old for the bindings: one clear line
        old = lint(str(f), env={**os.environ, "BPF_SDT_LIBCLANG": str(libs[0])})
        assert old.returncode == 2 and "libclang unusable" in old.stderr and "Traceback" not in old.stderr


def test_cache_hits_and_invalidates(tmp_path: Path) -> None:
    hdr = tmp_path / "probes.h"
    hdr.write_text("BPF_SDT_DECLARE1(p, int);\n")
    src = tmp_path / "t.c"
    src.write_text('#include <bpf_sdt.h>\n#include "probes.h"\nint f(int x) { BPF_SDT_PROBE1(p, x); return 0; }\n')
    env = {**os.environ, "BPF_SDT_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [*CLI, "lint", str(src)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0 and list((tmp_path / "cache").rglob("*"))
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert second.stdout == first.stdout and second.returncode == 0
    hdr.write_text("BPF_SDT_DECLARE2(p, int, int);\n")   # an include changes, the source does not
    third = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert "[SDT002]" in third.stdout, "the cache must notice a changed include"


def test_pre_commit_hook_on_a_repo_with_a_bad_probe(tmp_path: Path) -> None:
    pre_commit = shutil.which("pre-commit") or str(Path(sys.executable).parent / "pre-commit")
    need(Path(pre_commit).exists(), "pre-commit not installed")
    # try-repo installs the hook from a git repository; use a snapshot of this
    # working tree so the test sees the code under test, committed or not.
    snap = tmp_path / "hookrepo"
    shutil.copytree(REPO, snap, ignore=shutil.ignore_patterns(".git", ".venv", "build*", "__pycache__", "*.o"))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(snap)], check=True)
    subprocess.run([*git, "-C", str(snap), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(snap), "commit", "-qm", "snapshot"], check=True)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "bad.bpf.c").write_text(CASES["SDT003"][0])
    subprocess.run([*git, "init", "-q", str(proj)], check=True)
    subprocess.run([*git, "-C", str(proj), "add", "-A"], check=True)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pc-home")}
    res = subprocess.run([pre_commit, "try-repo", str(snap), "bpf-sdt-lint", "--all-files"],
                         cwd=proj, capture_output=True, text=True, env=env, check=False, timeout=900)
    if res.returncode != 0 and "[SDT003]" not in res.stdout and not IN_CI:
        pytest.skip(f"pre-commit could not build its environment here: {res.stdout[-300:]}")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "[SDT003]" in res.stdout and "bad.bpf.c:5:" in res.stdout


# --- SDT013: every failing site with its own reason --------------------------------

BITFIELDS = HEAD + """struct tcp { unsigned syn:1; int win:5; };
BPF_SDT_DECLARE1(flag, int);
BPF_SDT_DECLARE3(seg, long, int, int);
int f(struct tcp *t, int y)
{
	BPF_SDT_PROBE1(flag, t->syn);
	BPF_SDT_PROBE3(seg, y, y, t->win);
	BPF_SDT_PROBE1(flag, y);
	BPF_SDT_PROBE3(seg, t->syn, y, t->win);
	return 0;
}
"""


def _header_refusing_bitfields(tmp_path: Path) -> Path:
    """bpf_sdt.h as it was before bit-field arguments compiled: sizeof of the
    argument itself, which a bit-field is refused."""
    text = (REPO / "headers" / "bpf_sdt.h").read_text()
    fixed = "sizeof(__BPF_SDT_SIZED(a))"
    assert fixed in text
    out = tmp_path / "old-header"
    out.mkdir()
    (out / "bpf_sdt.h").write_text(text.replace(fixed, "sizeof(a)"))
    return out


def test_each_failing_site_is_named_with_its_argument_and_reason(tmp_path: Path) -> None:
    """With a header that refuses bit-fields, lint said "does not compile"
    for the first site only; now each failing site is an SDT013 naming its
    probe, the argument (from the line of the macro the error came through)
    and the compiler's reason, and the good site between them has none."""
    f = tmp_path / "bits.bpf.c"
    f.write_text(BITFIELDS)
    res = lint("--format", "json", "--no-ir", str(f), "--", f"-I{_header_refusing_bitfields(tmp_path)}")
    assert res.returncode == 1, res.stdout + res.stderr
    got = [(g["rule"], g["where"], g["message"]) for g in findings(res)]
    reason = "does not compile: invalid application of 'sizeof' to bit-field"
    assert got == [
        ("SDT013", "8:2", f"probe 'flag' argument 1 ('t->syn') {reason}"),
        ("SDT013", "9:2", f"probe 'seg' argument 3 ('t->win') {reason}"),
        ("SDT013", "11:2", f"probe 'seg' argument 1 ('t->syn') {reason}"),
        ("SDT013", "11:2", f"probe 'seg' argument 3 ('t->win') {reason}"),
    ], got
    # the header of this tree takes bit-fields
    assert lint(str(f)).returncode == 0


def test_header_refusals_no_rule_names_are_sdt013_per_site(tmp_path: Path) -> None:
    """BPF_SDT_STRICT's 5-argument limit and an _Atomic declared type come
    from the header's own assertions: each site and declaration is named,
    with the header's reason and not clang's restatement of the assertion."""
    f = tmp_path / "strict.bpf.c"
    f.write_text(HEAD + """BPF_SDT_DECLARE2(bad, int, _Atomic int);
BPF_SDT_DECLARE6(six, int, int, int, int, int, int);
int f(int y)
{
	BPF_SDT_PROBE6(six, y, y, y, y, y, y);
	BPF_SDT_PROBE2(bad, y, y);
	BPF_SDT_PROBE6(six, y, 1, y, 2, y, 3);
	return 0;
}
""")
    res = lint("--format", "json", "--no-ir", str(f), "--", "-DBPF_SDT_STRICT")
    assert res.returncode == 1
    got = [(g["rule"], g["where"], g["message"]) for g in findings(res)]
    strict = "does not compile: BPF_SDT_STRICT allows at most 5 arguments"
    assert got == [
        ("SDT013", "3:1", "declaration of probe 'bad' argument 2 ('_Atomic int') does not compile: "
                          "_Atomic declared type (BTF cannot describe it); declare the plain type"),
        ("SDT013", "7:2", f"probe 'six' {strict}"),
        ("SDT013", "9:2", f"probe 'six' {strict}"),
    ], got


# --- SDT012: each inlined-at place once ----------------------------------------------

TWICE_IN_A_HELPER = """\
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(hit, int);
static __attribute__((always_inline)) inline void mark(int x)
{
	BPF_SDT_PROBE1(hit, x);				/* @hit */
}
static __attribute__((always_inline)) inline void both(int *c)
{
	mark(c[0]);
	mark(c[1]);
}
int f(int *c)
{
	both(c);					/* @outer */
	return c[0];
}
"""


def test_sdt012_names_each_inlined_at_place_once(tmp_path: Path) -> None:
    """Two copies whose chains differ inside a helper but share the place in
    f they were inlined at: one group "2 in f inlined at t.c:N", where the
    same place was repeated once per chain."""
    from test_irlint import ir_env, line_of

    f = tmp_path / "t.bpf.c"
    f.write_text(TWICE_IN_A_HELPER)
    res = subprocess.run([*CLI, "lint", "--no-cache", "--format", "json", str(f)], capture_output=True,
                         text=True, env=ir_env(19), check=False)
    notes = [g for g in findings(res) if g["rule"] == "SDT012"]
    assert len(notes) == 1, notes
    outer = line_of(TWICE_IN_A_HELPER, "@outer")
    assert notes[0]["where"] == f"{line_of(TWICE_IN_A_HELPER, '@hit')}:2"
    assert f"compiled into 2 sites: 2 in f inlined at t.bpf.c:{outer} (unrolled or duplicated);" \
        in notes[0]["message"], notes[0]["message"]

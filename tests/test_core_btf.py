"""The cut-down kernel BTF a cached trace loads its copy with
(bpf_sdt/core_btf.py, trace/instcache.py): bpftool's `gen min_core_btf`
output, against the real kernel.  A copy loaded with it is the copy loaded
with the kernel's whole BTF, as the kernel translated both (bpftool prog dump
xlated); an object it cannot answer for the same (a type id asked of the
kernel's BTF, a type the kernel's BTF does not have) gets none; and a trace
takes it from the cache entry only when it is this kernel's and the user's."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from bpf_sdt.trace import instcache
from test_trace import CLI, ETH_P_IP, _env, eth, ipv4, json_lines, udp
from toolchain import bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt import core_btf
from bpf_sdt.elf import load_object
from bpf_sdt.kernel import prog_id_of_fd
from bpf_sdt.libbpf import LoadedObject

PACKET = eth(ETH_P_IP, ipv4(udp(1000, 2000, b"core")))

# Every kind of relocation the cut-down BTF answers: field offsets and sizes
# (ctx reads through a flavor of the kernel's struct xdp_md), a field's
# existence, a type's existence and size, an enum value.
CORE_PROGRAM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf_sdt.h>
struct xdp_md___sdt { __u32 data; __u32 data_end; __u32 ingress_ifindex; } __attribute__((preserve_access_index));
struct ethhdr___sdt { unsigned char h_dest[6]; __be16 h_proto; } __attribute__((preserve_access_index));
enum xdp_action___sdt { XDP_PASS___sdt = 0 };
BPF_SDT_DECLARE3(seen, __u32, __u32, __u32);
SEC("xdp") int core_xdp(struct xdp_md *ctx)
{
	struct xdp_md___sdt *c = (void *)ctx;
	__u32 len = c->data_end - c->data;
	__u32 known = bpf_core_field_exists(c->ingress_ifindex) + bpf_core_type_exists(struct ethhdr___sdt);
	BPF_SDT_PROBE3(seen, len, known, bpf_core_type_size(struct ethhdr___sdt));
	return bpf_core_enum_value(enum xdp_action___sdt, XDP_PASS___sdt) + 2;   /* XDP_PASS */
}
char LICENSE[] SEC("license") = "GPL";
"""

# bpf_core_type_id_kernel: an id in the kernel's BTF, which a cut-down BTF numbers anew.
KERNEL_TYPE_ID = CORE_PROGRAM.replace("bpf_core_type_size(struct ethhdr___sdt)",
                                      "(__u32)bpf_core_type_id_kernel(struct ethhdr___sdt)")
# A type the kernel's BTF has no candidate for: libbpf would look in the modules' BTF.
ABSENT_TYPE = CORE_PROGRAM.replace(
    "BPF_SDT_DECLARE3", "struct bpf_sdt_absent { int x; } __attribute__((preserve_access_index));\n"
    "BPF_SDT_DECLARE3").replace("bpf_core_type_exists(struct ethhdr___sdt)", "bpf_core_type_exists(struct bpf_sdt_absent)")


@pytest.fixture
def kernel() -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")


def _compile(src: str, out: Path) -> Path:
    out.with_suffix(".c").write_text(src)
    multiarch = run([tool("gcc"), "-print-multiarch"]).stdout.strip()
    compile_bpf(out.with_suffix(".c"), out, clang(19), extra=(f"-I/usr/include/{multiarch}",))
    return out


def _cut_down(obj: Path, out: Path) -> bytes:
    res = run(core_btf.min_core_btf_command(tool("bpftool"), obj, out))
    assert res.returncode == 0, res.stderr
    return out.read_bytes()


def _same_load(obj: Path, cut: bytes) -> bool:
    o = load_object(obj)
    btf, ext = o.section(".BTF"), o.section(".BTF.ext")
    assert btf is not None and ext is not None
    return core_btf.same_load(o.section_data(btf), o.section_data(ext), cut)


def _xlated(obj: Path, pins: Path, cut: Path | None) -> str:
    """The program as the kernel translated it (map ids masked: each load makes its own maps)."""
    with LoadedObject.open(obj, pin_root_path=pins, core_btf=cut) as bpf:
        bpf.load()
        [prog] = [p for p in bpf.programs if p.name == "core_xdp"]
        res = run([tool("bpftool"), "prog", "dump", "xlated", "id", str(prog_id_of_fd(prog.fd))])
        assert res.returncode == 0, res.stderr
        return re.sub(r"map\[id:\d+\]", "map[id:N]", res.stdout)


@pytest.mark.kernel
def test_a_copy_loaded_with_the_cut_down_btf_is_the_copy_loaded_with_the_kernels(kernel: None,
                                                                                  tmp_path: Path) -> None:
    obj = _compile(CORE_PROGRAM, tmp_path / "core.bpf.o")
    inst = tmp_path / "core.recorded.bpf.o"
    res = run([*CLI, "instrument", str(obj), "-o", str(inst)], env=_env())
    assert res.returncode == 0, res.stderr
    for target in (obj, inst):
        cut = tmp_path / f"{target.stem}.btf"
        written = _cut_down(target, cut)
        assert _same_load(target, written)
        assert len(written) < 4096 < os.stat(core_btf.VMLINUX_BTF).st_size
        pins = tmp_path / "pins"
        pins.mkdir(exist_ok=True)
        with_cut, with_kernel = _xlated(target, pins, cut), _xlated(target, pins, None)
        # The kernel's answers are there (its struct ethhdr is 14 bytes, the
        # local flavor 8), and all else is the same.
        assert with_cut == with_kernel and "= 14\n" in with_cut, with_cut


@pytest.mark.kernel
@pytest.mark.parametrize("src", [KERNEL_TYPE_ID, ABSENT_TYPE], ids=["type-id-kernel", "type-not-in-vmlinux"])
def test_an_object_the_cut_down_btf_cannot_answer_for_gets_none(src: str, kernel: None, tmp_path: Path) -> None:
    obj = _compile(src, tmp_path / "core.bpf.o")
    out = tmp_path / "cut.btf"
    res = run(core_btf.min_core_btf_command(tool("bpftool"), obj, out))
    assert res.returncode != 0 or not _same_load(obj, out.read_bytes())


def test_an_object_without_core_relocations_needs_none(tmp_path: Path) -> None:
    src = CORE_PROGRAM.split("SEC(")[0] + 'SEC("xdp") int plain(struct xdp_md *ctx) { return ctx->ingress_ifindex ? 2 : 1; }\n' \
        'char LICENSE[] SEC("license") = "GPL";\n'
    obj = _compile(src, tmp_path / "plain.bpf.o")
    assert not _same_load(obj, _cut_down(obj, tmp_path / "cut.btf"))


@pytest.mark.parametrize("name, essential", [
    ("task_struct___old", "task_struct"), ("a___b", "a"), ("foo___bar___baz", "foo___bar"),
    ("foo____bar", "foo____bar"), ("foo___", "foo___"), ("_a___b", "_a"), ("plain", "plain"), ("", "")])
def test_a_flavor_suffix_is_cut_as_libbpf_cuts_it(name: str, essential: str) -> None:
    assert core_btf.essential_name(name) == essential


def _trace(obj: Path, tmp: Path, cache: Path) -> list[object]:
    (tmp / "p.bin").write_bytes(PACKET)
    res = run([*CLI, "trace", str(obj), "--run", "core_xdp", "--packet", str(tmp / "p.bin"), "--json"],
              env={**_env(), "BPF_SDT_CACHE": str(cache)})
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return [(e["probe"], e["args"]) for e in json_lines(res.stdout) if "probe" in e]


def _entry(cache: Path) -> Path:
    [entry] = [p for p in (cache / "instrumented").iterdir() if not p.name.startswith(".")]
    return entry


@pytest.mark.kernel
def test_a_trace_writes_the_entrys_cut_down_btf_and_the_next_loads_with_it(kernel: None, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The first trace stores the entry and its cut-down BTF beside the session;
    the next is a hit that opens its copy with it, and prints the same events
    as a trace without the cache."""
    obj = _compile(CORE_PROGRAM, tmp_path / "core.bpf.o")
    cache = tmp_path / "cache"
    first = _trace(obj, tmp_path, cache)
    assert first == _trace(obj, tmp_path, tmp_path / "other-cache") and first
    entry = _entry(cache)
    [cut] = entry.glob(f"{instcache.CORE_BTF_PREFIX}*")
    assert cut.suffix == instcache.CORE_BTF_SUFFIX and _same_load(entry / instcache.OBJECT_NAME, cut.read_bytes())
    assert instcache.core_btf_of(entry) == (cut, True)

    opened: list[object] = []
    real_open = LoadedObject.open.__func__          # type: ignore[attr-defined]

    def spy(cls: type[LoadedObject], *args: object, **kwargs: object) -> LoadedObject:
        opened.append(kwargs.get("core_btf"))
        return real_open(cls, *args, **kwargs)
    monkeypatch.setattr(LoadedObject, "open", classmethod(spy))
    monkeypatch.setenv("BPF_SDT_CACHE", str(cache))
    (tmp_path / "p.bin").write_bytes(PACKET)
    from bpf_sdt.cli import main
    assert main(["trace", str(obj), "--run", "core_xdp", "--packet", str(tmp_path / "p.bin"), "--json"]) == 0
    assert opened == [cut]


@pytest.mark.kernel
def test_another_kernels_or_anothers_cut_down_btf_is_not_used(kernel: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    obj = _compile(CORE_PROGRAM, tmp_path / "core.bpf.o")
    cache = tmp_path / "cache"
    events = _trace(obj, tmp_path, cache)
    entry = _entry(cache)
    [cut] = entry.glob(f"{instcache.CORE_BTF_PREFIX}*")
    # Written by others (group-writable): not given to libbpf; the next trace writes its own in its place.
    cut.chmod(0o664)
    assert instcache.core_btf_of(entry) == (None, False)
    cut.chmod(0o600)
    # Another boot's: not this kernel's, and replaced by this one's at the next trace.
    monkeypatch.setattr(core_btf, "kernel_btf_identity", lambda: "another-boot:1")
    assert instcache.core_btf_of(entry) == (None, False)
    monkeypatch.undo()
    stale = cut.with_name(f"{instcache.CORE_BTF_PREFIX}0{instcache.CORE_BTF_SUFFIX}")
    cut.rename(stale)
    assert _trace(obj, tmp_path, cache) == events
    [now] = entry.glob(f"{instcache.CORE_BTF_PREFIX}*")
    assert now == cut and instcache.core_btf_of(entry) == (cut, True)


@pytest.mark.kernel
def test_an_entry_the_cut_down_btf_cannot_serve_is_marked_and_loads_as_before(kernel: None, tmp_path: Path) -> None:
    obj = _compile(KERNEL_TYPE_ID, tmp_path / "core.bpf.o")
    cache = tmp_path / "cache"
    events = _trace(obj, tmp_path, cache)
    entry = _entry(cache)
    [mark] = entry.glob(f"{instcache.CORE_BTF_PREFIX}*")
    assert mark.suffix == instcache.NO_CORE_BTF_SUFFIX and mark.stat().st_size == 0
    assert instcache.core_btf_of(entry) == (None, True)
    assert _trace(obj, tmp_path, cache) == events
    assert list(entry.glob(f"{instcache.CORE_BTF_PREFIX}*")) == [mark]


@pytest.mark.kernel
def test_a_damaged_cut_down_btf_loads_against_the_kernels_and_is_written_again(kernel: None,
                                                                              tmp_path: Path) -> None:
    """A cut-down BTF damaged since it was written (here: its bytes cut in
    half) fails libbpf's load; the copy is loaded again against the
    kernel's BTF, the events are the same, and the file is written anew."""
    obj = _compile(CORE_PROGRAM, tmp_path / "core.bpf.o")
    cache = tmp_path / "cache"
    events = _trace(obj, tmp_path, cache)
    [cut] = _entry(cache).glob(f"{instcache.CORE_BTF_PREFIX}*{instcache.CORE_BTF_SUFFIX}")
    sound = cut.read_bytes()
    cut.write_bytes(sound[:len(sound) // 2])
    assert _trace(obj, tmp_path, cache) == events
    assert cut.read_bytes() == sound


def _stored_entry(src: str, tmp_path: Path) -> Path:
    """A cache entry as a trace stored it, with no cut-down BTF yet."""
    obj = _compile(src, tmp_path / "core.bpf.o")
    cache = tmp_path / "cache"
    _trace(obj, tmp_path, cache)
    entry = _entry(cache)
    for old in entry.glob(f"{instcache.CORE_BTF_PREFIX}*"):
        old.unlink()
    return entry


def _write(entry: Path) -> instcache.CoreBtfWriter | None:
    writer = instcache.CoreBtfWriter.start(entry)
    if writer is not None:
        writer.finish(lambda: False)
    return writer


def _links_to_a_victim(entry: Path, tmp_path: Path) -> Path:
    """Links at both of the entry's cut-down BTF names, to a file of root's
    that writing through them would damage."""
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    names = instcache._core_btf_names(entry)
    assert names is not None
    for name in names:
        name.symlink_to(victim)
    return victim


@pytest.mark.kernel
def test_an_entry_not_the_users_alone_gets_no_cut_down_btf(kernel: None, tmp_path: Path) -> None:
    """An entry another user owns (a shared BPF_SDT_CACHE): its names may be
    links that user placed, so nothing is started or written there."""
    entry = _stored_entry(CORE_PROGRAM, tmp_path)
    victim = _links_to_a_victim(entry, tmp_path)
    os.chown(entry, 65534, 65534)
    assert _write(entry) is None
    assert victim.read_text() == "root's own\n"
    os.chown(entry, 0, 0)
    os.chown(entry.parent, 65534, 65534)             # the cache directory itself another's
    assert _write(entry) is None
    assert victim.read_text() == "root's own\n"


@pytest.mark.kernel
@pytest.mark.parametrize("src, suffix", [(CORE_PROGRAM, instcache.CORE_BTF_SUFFIX),
                                         (KERNEL_TYPE_ID, instcache.NO_CORE_BTF_SUFFIX)], ids=["usable", "none"])
def test_the_answer_replaces_a_link_at_its_name_and_never_writes_through_it(src: str, suffix: str, kernel: None,
                                                                             tmp_path: Path) -> None:
    entry = _stored_entry(src, tmp_path)
    victim = _links_to_a_victim(entry, tmp_path)
    old = os.umask(0o002)               # a group-writable default: bpftool's file is still the user's alone
    try:
        assert _write(entry) is not None
    finally:
        os.umask(old)
    assert victim.read_text() == "root's own\n"
    [answer] = entry.glob(f"{instcache.CORE_BTF_PREFIX}*")
    assert answer.suffix == suffix and not answer.is_symlink() and answer.stat().st_mode & 0o077 == 0
    assert instcache.core_btf_of(entry)[1]
    assert not list(entry.glob(f"{instcache.STAGING_PREFIX}*"))


@pytest.mark.kernel
@pytest.mark.parametrize("script, timeout, known", [("sleep 5", 0.2, False), ("exit 1", 10.0, True)],
                         ids=["too-slow", "failed"])
def test_a_slow_bpftool_leaves_the_entry_to_the_next_trace_and_a_failing_one_marks_it(
        script: str, timeout: float, known: bool, kernel: None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bpftool slower than MIN_CORE_BTF_TIMEOUT_S (a busy host) marks
    nothing: the next trace asks again.  One that fails would fail each time
    (and add its run to each trace's exit): marked, as an object it cannot
    serve is.  Nothing of either attempt is left in the entry."""
    entry = _stored_entry(CORE_PROGRAM, tmp_path)
    fake = tmp_path / "bpftool"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BPF_SDT_BPFTOOL", str(fake))
    monkeypatch.setattr(core_btf, "MIN_CORE_BTF_TIMEOUT_S", timeout)
    assert _write(entry) is not None
    assert instcache.core_btf_of(entry) == (None, known)
    assert not list(entry.glob(f"{instcache.STAGING_PREFIX}*"))


@pytest.mark.kernel
def test_a_killed_traces_staging_directory_is_swept_when_the_cache_is_pruned(kernel: None, tmp_path: Path) -> None:
    """What bpftool wrote for a trace killed before it kept it: removed by the
    next store's prune once a day old, though that entry is never written again."""
    entry = _stored_entry(CORE_PROGRAM, tmp_path)
    old, fresh = entry / f"{instcache.CORE_BTF_STAGING}old", entry / f"{instcache.CORE_BTF_STAGING}fresh"
    for staging in (old, fresh):
        staging.mkdir()
        (staging / instcache.CORE_BTF_WRITTEN).write_bytes(b"BTF")
    day_ago = time.time() - instcache.STALE_STAGING_S - 60
    os.utime(old, (day_ago, day_ago))
    instcache._prune(entry.parent)
    assert not old.exists() and fresh.exists() and entry.exists()


@pytest.mark.kernel
def test_a_stop_ends_bpftool_promptly_and_a_missing_one_starts_nothing(kernel: None, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _stored_entry(CORE_PROGRAM, tmp_path)
    fake = tmp_path / "bpftool"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BPF_SDT_BPFTOOL", str(fake))
    writer = instcache.CoreBtfWriter.start(entry)
    assert writer is not None
    began = time.monotonic()
    writer.finish(lambda: True)                     # a signal arrived: trace is stopping
    assert time.monotonic() - began < 1 and writer.proc.returncode is not None
    assert instcache.core_btf_of(entry) == (None, False)
    monkeypatch.setenv("BPF_SDT_BPFTOOL", str(tmp_path / "no-such-bpftool"))
    assert instcache.CoreBtfWriter.start(entry) is None
    assert not list(entry.glob(f"{instcache.STAGING_PREFIX}*"))

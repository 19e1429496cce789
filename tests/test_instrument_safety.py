"""`bpf-sdt instrument` never changes what it observes, and refuses what it
cannot place safely: stack reached through computed pointers, observers
that write into the traced program, call chains over the verifier's stack
limit (callbacks included), recursion, non-UTF-8 names, and outputs that
cannot be written.  Real clang, real libbpf loads, BPF_PROG_TEST_RUN."""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from toolchain import REPO, bpf_permitted, clang, need, objdump, run, tool

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
XDP_DROP, XDP_PASS = 1, 2
HEAD = "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n#include <bpf_sdt.h>\n"
LICENSE = 'char LICENSE[] SEC("license") = "GPL";\n'


def _multiarch_include() -> str:
    found = glob.glob("/usr/include/*/asm/types.h")
    need(bool(found), "no multiarch kernel headers (linux-libc-dev)")
    return str(Path(found[0]).parent.parent)


def build(tmp: Path, name: str, source: str, mcpu: str = "v3") -> Path:
    src = tmp / f"{name}.bpf.c"
    src.write_text(source)
    out = tmp / f"{name}.o"
    res = run([clang(19), "-target", "bpf", "-O2", "-g", f"-mcpu={mcpu}", "-Wall", "-Werror",
               "-Wno-unused-function", f"-I{_multiarch_include()}", f"-I{REPO / 'headers'}",
               "-c", str(src), "-o", str(out)])
    assert res.returncode == 0, res.stderr
    return out


def instrument(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    tool("bpftool")
    return run([*CLI, "instrument", str(src), "-o", str(out), *extra])


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.splitlines()) == 1, res.stderr
    return res.stderr


def disassembly(obj: Path) -> str:
    res = run([objdump(), "-d", "--no-show-raw-insn", str(obj)])
    assert res.returncode == 0, res.stderr
    return res.stdout


def run_prog(obj: Path, prog: str, packets: list[bytes]) -> list[int]:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    from bpf_sdt.libbpf import LoadedObject

    with LoadedObject.open(obj) as o:
        o.load()
        p = o.find_program(prog)
        return [p.test_run(pkt).retval for pkt in packets]


def load_error(obj: Path) -> str:
    """The verifier's refusal of ``obj`` (its log), or '' if it loads."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    res = run(["bpftool", "-d", "prog", "loadall", str(obj), f"/sys/fs/bpf/sdt_safety_{os.getpid()}"])
    run(["rm", "-rf", f"/sys/fs/bpf/sdt_safety_{os.getpid()}"])
    return "" if res.returncode == 0 else res.stderr + res.stdout


def packets() -> list[bytes]:
    return [bytes([a, b]) + bytes(60) for a in (0, 1, 5, 9, 15, 200) for b in (0, 7, 255)]


# --- 1. stack reached through computed pointers --------------------------------------

# The caller's own frame is 8 bytes as r10-relative accesses show it; the
# callees reach 16 bytes below the pointer they get, fill() through a
# variable offset computed from a packet byte.  Counting only r10-relative
# accesses put the site's spills and argument array on table[0..15].
CALLEE_REACH = HEAD + """
BPF_SDT_DECLARE2(mid, long, long);
#define SLOTS 16
static __attribute__((noinline)) int fill(volatile unsigned char *end, unsigned char v, unsigned int first)
{
	for (unsigned int k = 0; k < SLOTS; k++)
		end[-1 - (long)((first + k) % SLOTS)] = v + k;
	return end[-SLOTS];
}
static __attribute__((noinline)) int sum(volatile unsigned char *end)
{
	int s = 0;
	for (int k = 1; k <= SLOTS; k++)
		s += end[-k];
	return s;
}
SEC("xdp") int varoff(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	volatile unsigned char table[SLOTS + 8];
	if (data + 2 > end)
		return XDP_ABORTED;
	table[SLOTS] = 0;
	int last = fill(&table[SLOTS], data[1], data[0]);
	BPF_SDT_PROBE2(mid, data[0], last);
	int want = SLOTS * data[1] + SLOTS * (SLOTS - 1) / 2;
	return (sum(&table[SLOTS]) & 0xff) == (want & 0xff) ? XDP_PASS : XDP_DROP;
}
""" + LICENSE


def test_stack_reached_through_callees_and_variable_offsets_is_counted(tmp_path: Path) -> None:
    obj = build(tmp_path, "reach", CALLEE_REACH)
    asm = disassembly(obj)
    fill = asm[asm.index("<fill>:"):asm.index("<sum>:")]
    assert re.search(r"r\d \+= r\d", fill), fill            # a variable offset from the caller's pointer
    assert "*(u8 *)(r1 - 0x10)" in asm                      # sum() reads below its argument
    xdp = asm[asm.index("<varoff>:"):]
    assert "(r10 - 0x8)" in xdp and "(r10 - 0x10)" not in xdp and "(r10 - 0x18)" not in xdp
    want = run_prog(obj, "varoff", packets())
    assert set(want) == {XDP_PASS}
    out = tmp_path / "reach.instr.o"
    res = instrument(obj, out)
    assert res.returncode == 0, res.stderr
    assert run_prog(out, "varoff", packets()) == want


SIGNED_INDEX = HEAD + """
BPF_SDT_DECLARE1(idx, int);
SEC("xdp") int signed_index(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	volatile unsigned char table[32];
	if (data + 8 > end)
		return XDP_ABORTED;
	int i = *(int *)data;
	if (i < -16 || i > 15)
		return XDP_DROP;
	volatile unsigned char *mid = &table[16];
	mid[i] = data[5];
	BPF_SDT_PROBE1(idx, i);
	return mid[i] == data[5] ? XDP_PASS : XDP_DROP;
}
""" + LICENSE


@pytest.mark.parametrize("mcpu", ["v1", "v3"])
def test_signed_index_bounded_by_compares_is_counted(tmp_path: Path, mcpu: str) -> None:
    """A negative variable offset that compares bound (64-bit compares at v1,
    32-bit ones at v3, the constant on either side) is followed to its
    range, as the verifier does: the site is placed below the whole range."""
    obj = build(tmp_path, "signed", SIGNED_INDEX, mcpu)
    assert re.search(r"r\d \+= r\d", disassembly(obj))
    pkts = [i.to_bytes(4, "little", signed=True) + bytes([0, 0x5A]) + bytes(58) for i in (-16, -9, -1, 0, 7, 15, 99)]
    want = run_prog(obj, "signed_index", pkts)
    assert want == [XDP_PASS] * 6 + [XDP_DROP]
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 0, res.stderr
    assert run_prog(out, "signed_index", pkts) == want


def test_frame_that_cannot_be_bounded_is_a_finding(tmp_path: Path) -> None:
    """The pointer's offset is bounded by a compare of a copy (the verifier
    links the two registers; this analysis does not)."""
    src = HEAD + """
BPF_SDT_DECLARE1(here, long);
SEC("xdp") int unbounded(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	volatile unsigned char table[16];
	if (data + 8 > end)
		return XDP_ABORTED;
	long v = *(long *)data;
	table[8] = 1;
	asm volatile("r4 = %[v]\\n"
		     "if r4 s> 7 goto +4\\n"
		     "if r4 s< -8 goto +3\\n"
		     "r3 = r10\\n"
		     "r3 += %[v]\\n"
		     "*(u8 *)(r3 - 8) = 2\\n"
		     : : [v] "r"(v) : "r3", "r4", "memory");
	BPF_SDT_PROBE1(here, v);
	return table[8] == 1 ? XDP_PASS : XDP_DROP;
}
""" + LICENSE
    obj = build(tmp_path, "unbounded", src)
    assert re.search(r"r3 \+= r\d", disassembly(obj))
    assert load_error(obj) == ""                          # the verifier bounds it (linked registers)
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1, res.stderr
    line = one_line(res)
    assert "here in unbounded" in line and "unbounded.bpf.c:" in line and "cannot be bounded" in line
    assert re.search(r"insn \d+ moves a stack pointer by a value that may be negative", line)
    assert not out.exists()


# --- 2. observers only read ---------------------------------------------------------

TARGET = HEAD + """
BPF_SDT_DECLARE2(pkt, unsigned int, unsigned int);
SEC("xdp") int target(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (data + 2 > end)
		return XDP_ABORTED;
	unsigned int a = data[0], b = data[1];
	BPF_SDT_PROBE2(pkt, a, b);
	return a & 1 ? XDP_PASS : XDP_DROP;
}
""" + LICENSE

OBSERVERS = {
    "store": "((volatile unsigned long long *)ctx)[-1] = 0;",
    "derived": "volatile unsigned long long *p = ctx + 1; p[-3] = 5;",
    "helper": "unsigned long long zero = 0; bpf_probe_read_kernel(ctx - 2, sizeof(zero), &zero);",
    "callee": "clobber(ctx);",
}


def observer_source(body: str) -> str:
    return HEAD + """
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); }
	seen SEC(".maps");
static __attribute__((noinline)) void clobber(unsigned long long *p) { ((volatile unsigned long long *)p)[-1] = 9; }
SEC("bpf_sdt/pkt") int on_pkt(unsigned long long *ctx)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&seen, &k);
	if (v)
		*v = ctx[0] + ctx[1];
	""" + body + """
	return 0;
}
""" + LICENSE


@pytest.mark.parametrize("how", sorted(OBSERVERS))
def test_observer_writing_through_ctx_is_refused(tmp_path: Path, how: str) -> None:
    target = build(tmp_path, "target", TARGET)
    obs = build(tmp_path, f"obs_{how}", observer_source(OBSERVERS[how]))
    out = tmp_path / "o.o"
    res = instrument(target, out, "--observer", str(obs))
    assert res.returncode == 2, res.stderr
    line = one_line(res)
    assert "observer on_pkt may write into the traced program" in line and re.search(r"insn \d+", line)
    assert ("clobber insn" in line) == (how == "callee"), line
    assert not out.exists()


def test_read_only_observer_is_instrumented_and_keeps_results(tmp_path: Path) -> None:
    target = build(tmp_path, "target", TARGET)
    obs = build(tmp_path, "obs_ro", observer_source(""))
    out = tmp_path / "o.o"
    res = instrument(target, out, "--observer", str(obs))
    assert res.returncode == 0, res.stderr
    assert run_prog(out, "target", packets()) == run_prog(target, "target", packets())


# --- 3. the stack limit counts callbacks; sites that cannot be placed can be skipped --

def callback_chain(main_frame: int, cb_frame: int, extra: str = "") -> str:
    """main's frame, then a bpf_for_each_map_elem callback's on top of it."""
    return HEAD + f"""
struct {{ __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); }}
	m SEC(".maps");
BPF_SDT_DECLARE1(deep, long);
static long cb(void *map, __u32 *key, __u64 *val, void *ctx)
{{
	volatile __u64 buf[{cb_frame // 8}];
	long s = 0;
#pragma unroll
	for (int i = 0; i < {cb_frame // 8}; i++)
		buf[i] = *val + i;
#pragma unroll
	for (int i = 0; i < {cb_frame // 8}; i++)
		s += buf[i];
	*(long *)ctx += s;
	return 0;
}}
SEC("xdp") int chained(struct xdp_md *ctx)
{{
	volatile __u64 big[{main_frame // 8 - 1}];
	long acc = 0;
#pragma unroll
	for (int i = 0; i < {main_frame // 8 - 1}; i++)
		big[i] = ctx->ingress_ifindex + i;
	bpf_for_each_map_elem(&m, cb, &acc, 0);
	BPF_SDT_PROBE1(deep, acc);
	return big[0] + big[{main_frame // 8 - 2}] + acc ? XDP_PASS : XDP_DROP;
}}
{extra}""" + LICENSE


@pytest.mark.parametrize("mcpu", ["v1", "v3"])
def test_callback_chain_over_the_limit_is_found_and_the_verifier_agrees(tmp_path: Path, mcpu: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 224 + 288: exactly the verifier's 512 before a site adds to main's frame
    obj = build(tmp_path, "chain", callback_chain(224, 280), mcpu)
    assert load_error(obj) == ""
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1, res.stderr
    line = one_line(res)
    assert "deep in chained" in line and "512" in line and "chain.bpf.c:" in line
    assert not out.exists()
    # The same object instrumented without the limit: the verifier refuses it.
    from bpf_sdt.instrument import commands as command

    monkeypatch.setattr(command, "MAX_STACK", 1 << 20)
    command.instrument(command.Request(obj, out))
    assert "combined stack size" in load_error(out)


def nested_calls(depth: int) -> str:
    """A program and ``depth - 1`` nested subprograms, the probe in the deepest."""
    funcs = [f"static __attribute__((noinline)) long f{depth - 1}(long v) {{ BPF_SDT_PROBE1(deepest, v); "
             "return v * 3 + 1; }"]
    for k in range(depth - 2, 0, -1):
        funcs.append(f"static __attribute__((noinline)) long f{k}(long v) {{ return f{k + 1}(v + {k}) * 2 + 1; }}")
    return HEAD + "BPF_SDT_DECLARE1(deepest, long);\n" + "\n".join(funcs) + """
SEC("xdp") int nested(struct xdp_md *ctx) { return f1(ctx->ingress_ifindex) & 1 ? XDP_PASS : XDP_DROP; }
""" + LICENSE


def test_call_chain_deeper_than_the_verifier_allows_is_a_finding(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """8 frames load; the observer's call at the deepest site would be the 9th."""
    obj = build(tmp_path, "nested", nested_calls(8))
    assert disassembly(obj).count("call ") >= 7
    assert load_error(obj) == ""
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1, res.stderr
    line = one_line(res)
    assert "deepest in f7" in line and "9 calls deep (the verifier allows 8)" in line
    from bpf_sdt.instrument import commands as command

    monkeypatch.setattr(command, "MAX_CALL_FRAMES", 1 << 10)
    command.instrument(command.Request(obj, out))
    assert "frames is too deep" in load_error(out)
    # one frame less: the observer's call is the 8th, placed and loaded
    shallower = build(tmp_path, "nested7", nested_calls(7))
    res = instrument(shallower, tmp_path / "o7.o")
    assert res.returncode == 0, res.stderr
    assert load_error(tmp_path / "o7.o") == ""


def tail_caller(words: int) -> str:
    """A program with ``words`` u64 of stack calling a subprogram that tail-calls."""
    return HEAD + f"""
struct {{ __uint(type, BPF_MAP_TYPE_PROG_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u32); }}
	jmp SEC(".maps");
BPF_SDT_DECLARE1(before, long);
static __attribute__((noinline)) int hop(struct xdp_md *ctx) {{ bpf_tail_call(ctx, &jmp, 0); return XDP_PASS; }}
SEC("xdp") int tailer(struct xdp_md *ctx)
{{
	volatile __u64 big[{words}];
	for (int i = 0; i < {words}; i++)
		big[i] = ctx->ingress_ifindex + i;
	BPF_SDT_PROBE1(before, big[0]);
	return hop(ctx) + big[{words - 1}];
}}
""" + LICENSE


def test_tail_call_below_a_grown_frame_is_a_finding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier refuses a subprogram's tail call once its callers' frames
    reach 256 bytes: 224 loads, the site's spills and arguments would pass it."""
    obj = build(tmp_path, "tail", tail_caller(28))
    assert load_error(obj) == ""
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1, res.stderr
    line = one_line(res)
    assert "before in tailer" in line and "hop, below this site, makes a tail call" in line
    from bpf_sdt.instrument import commands as command

    monkeypatch.setattr(command, "TAIL_CALL_STACK", 1 << 20)
    command.instrument(command.Request(obj, out))
    assert "tail_calls are not allowed when call stack of previous frames" in load_error(out)
    small = build(tmp_path, "tail_small", tail_caller(16))
    res = instrument(small, tmp_path / "small.o")
    assert res.returncode == 0, res.stderr
    assert load_error(tmp_path / "small.o") == ""


TWO_PROGRAMS_EXTRA = """
BPF_SDT_DECLARE1(fine, long);
SEC("xdp") int small(struct xdp_md *ctx)
{
	long v = ctx->ingress_ifindex;
	BPF_SDT_PROBE1(fine, v);
	return v ? XDP_PASS : XDP_DROP;
}
"""


def test_skip_unplaceable_writes_the_rest_and_names_each_skipped_site(tmp_path: Path) -> None:
    obj = build(tmp_path, "two", callback_chain(224, 280, TWO_PROGRAMS_EXTRA))
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 1 and not out.exists(), res.stderr
    res = instrument(obj, out, "--skip-unplaceable")
    assert res.returncode == 0, res.stderr
    line = one_line(res)
    assert line.startswith("bpf-sdt instrument: warning: skipped deep in chained") and "512" in line
    listing = run([*CLI, "list", str(out)])
    assert re.search(r"fine\s.*bpf_sdt_record", listing.stdout) and not re.search(r"deep\s.*bpf_sdt_record",
                                                                                  listing.stdout)
    assert run_prog(out, "small", [bytes(64)]) == run_prog(obj, "small", [bytes(64)])
    # only the sites a program reaches: nothing to skip
    res = instrument(obj, out, "--program", "small")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = instrument(obj, out, "--program", "nosuch")
    assert res.returncode == 2 and "small" in one_line(res)
    # nothing placeable: exit 1, nothing written
    lone = build(tmp_path, "lone", callback_chain(224, 280))
    res = instrument(lone, tmp_path / "lone.instr.o", "--skip-unplaceable")
    assert res.returncode == 1 and not (tmp_path / "lone.instr.o").exists(), res.stderr


def test_python_request_restricts_sites_to_programs(tmp_path: Path) -> None:
    from bpf_sdt.instrument.commands import Request
    from bpf_sdt.instrument.commands import instrument as run_instrument

    obj = build(tmp_path, "two", callback_chain(224, 280, TWO_PROGRAMS_EXTRA))
    tool("bpftool")
    result = run_instrument(Request(obj, tmp_path / "o.o", programs=("small",)))
    assert [s.probe for s in result.sites] == ["fine"] and result.skipped == []


@pytest.mark.kernel
def test_trace_of_one_program_is_not_refused_for_a_site_in_another(tmp_path: Path) -> None:
    """trace --run PROG instruments only what PROG reaches: the unplaceable
    site of the other program neither refuses the trace nor is skipped."""
    obj = build(tmp_path, "two", callback_chain(224, 280, TWO_PROGRAMS_EXTRA))
    packet = tmp_path / "p.bin"
    packet.write_bytes(bytes(64))
    res = run([*CLI, "trace", str(obj), "--run", "small", "--packet", str(packet), "--json"])
    assert res.returncode == 0, res.stderr
    events = [json.loads(x) for x in res.stdout.splitlines() if '"probe"' in x]
    assert [e["probe"] for e in events] == ["fine"], res.stdout
    assert events[0]["args"] == [1], events      # ingress_ifindex of a test run without context: loopback


# --- 4. recursion -----------------------------------------------------------------

RECURSIVE_TARGET = HEAD + """
BPF_SDT_DECLARE1(rec, long);
static __attribute__((noinline)) long down(long n)
{
	BPF_SDT_PROBE1(rec, n);
	return n > 1 ? down(n - 1) * n + down(n - 2) : 1;
}
SEC("xdp") int recursive(struct xdp_md *ctx) { return down(ctx->ingress_ifindex & 3) ? XDP_PASS : XDP_DROP; }
""" + LICENSE

SELF_CALLBACK = HEAD + """
BPF_SDT_DECLARE1(rec, long);
static long again(__u64 i, void *ctx)
{
	if (i < 2)
		bpf_loop(1, again, ctx, 0);
	return 0;
}
SEC("xdp") int looping(struct xdp_md *ctx)
{
	long v = ctx->ingress_ifindex;
	bpf_loop(2, again, &v, 0);
	BPF_SDT_PROBE1(rec, v);
	return XDP_PASS;
}
""" + LICENSE


@pytest.mark.parametrize("source", [RECURSIVE_TARGET, SELF_CALLBACK], ids=["subprogram", "callback"])
def test_recursion_in_the_target_is_refused(tmp_path: Path, source: str) -> None:
    obj = build(tmp_path, "rec", source)
    res = instrument(obj, tmp_path / "o.o")
    assert res.returncode == 2, res.stderr
    assert "the verifier refuses recursion" in one_line(res)
    assert not (tmp_path / "o.o").exists()


def test_recursion_in_an_observer_is_refused(tmp_path: Path) -> None:
    target = build(tmp_path, "target", TARGET)
    obs = build(tmp_path, "obs_rec", HEAD + """
static __attribute__((noinline)) long spin(long n) { return n > 1 ? spin(n - 1) * n + spin(n - 2) : 1; }
SEC("bpf_sdt/pkt") int on_pkt(unsigned long long *ctx) { return spin(ctx[0] & 3); }
""" + LICENSE)
    res = instrument(target, tmp_path / "o.o", "--observer", str(obs))
    assert res.returncode == 2, res.stderr
    line = one_line(res)
    assert "the verifier refuses recursion" in line and "spin -> spin" in line


# --- 5. names that are not UTF-8 ----------------------------------------------------

def test_non_utf8_symbol_names_are_refused_not_renamed(tmp_path: Path) -> None:
    """Names are decoded with U+FFFD for bytes that are not UTF-8; writing
    them back would rename the symbol, so link and instrument refuse the
    object in one line instead of crashing or renaming."""
    src = HEAD + """
BPF_SDT_DECLARE1(odd, long);
__attribute__((noinline)) long helper_fn(long v) __asm__("odd\\xff\\xfename");
__attribute__((noinline)) long helper_fn(long v) { BPF_SDT_PROBE1(odd, v); return v + 1; }
SEC("xdp") int odd_names(struct xdp_md *ctx) { return helper_fn(ctx->ingress_ifindex) ? XDP_PASS : XDP_DROP; }
""" + LICENSE
    obj = build(tmp_path, "odd", src)
    assert b"odd\xff\xfename" in obj.read_bytes()
    bpftool = subprocess.run([tool("bpftool"), "gen", "object", str(tmp_path / "b.o"), str(obj), str(obj)],
                             capture_output=True, check=False)
    assert bpftool.returncode != 0 and b"odd\xff\xfename" in bpftool.stderr   # raw bytes in its message
    for cmd in ([*CLI, "link", "-o", str(tmp_path / "l.o"), str(obj), str(obj)],
                [*CLI, "instrument", str(obj), "-o", str(tmp_path / "o.o")]):
        res = subprocess.run(cmd, capture_output=True, check=False)      # bytes: nothing decoded here
        err = res.stderr.decode("utf-8")                                 # what we print is UTF-8
        assert res.returncode == 2, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "is not UTF-8" in err and "odd" in err
    assert not (tmp_path / "l.o").exists() and not (tmp_path / "o.o").exists()


# --- 6. outputs that cannot be written ------------------------------------------------

@pytest.fixture(scope="module")
def small_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("target"), "target", TARGET)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    res = run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(d)])
    assert res.returncode == 0, res.stderr
    try:
        yield d
    finally:
        run(["umount", str(d)])


def _bad_output(case: str, tmp: Path, tiny: Path) -> str:
    if case == "directory":
        return str(tmp)
    if case == "dev_full":
        return "/dev/full"
    if case == "stdout_fd":
        return "/proc/self/fd/1"
    if case == "symlink_loop":
        (tmp / "a").symlink_to(tmp / "b")
        (tmp / "b").symlink_to(tmp / "a")
        return str(tmp / "a")
    if case == "missing_directory":
        return str(tmp / "no" / "such" / "o.o")
    if case == "dangling_symlink":
        (tmp / "d").symlink_to(tmp / "gone" / "o.o")
        return str(tmp / "d")
    if case == "read_only":
        res = run(["mount", "-o", "remount,ro", str(tiny)])
        assert res.returncode == 0, res.stderr
        return str(tiny / "o.o")
    if case == "no_space":
        with open(tiny / "filler", "wb") as f:
            try:
                f.write(bytes(1 << 20))
            except OSError as e:
                assert e.errno == errno.ENOSPC
        return str(tiny / "o.o")
    if case == "name_too_long":
        return str(tmp / ("x" * 300))
    raise AssertionError(case)


OUTPUT_CASES = ["directory", "dev_full", "stdout_fd", "symlink_loop", "missing_directory", "dangling_symlink",
                "read_only", "no_space", "name_too_long"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_unwritable_output_is_one_line_and_exit_2(small_target: Path, tmp_path: Path, tiny_tmpfs: Path,
                                                    case: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    out = _bad_output(case, work, tiny_tmpfs)
    before = sorted(os.listdir(work)) + sorted(os.listdir(tiny_tmpfs))
    res = subprocess.run([*CLI, "instrument", str(small_target), "-o", out], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, check=False, timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    one_line(res)
    assert sorted(os.listdir(work)) + sorted(os.listdir(tiny_tmpfs)) == before   # nothing half-written


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_onto_the_input_needs_in_place(small_target: Path, tmp_path: Path, how: str) -> None:
    victim = tmp_path / "in.o"
    victim.write_bytes(small_target.read_bytes())
    out = victim
    if how == "symlink":
        out = tmp_path / "link.o"
        out.symlink_to(victim)
    elif how == "hardlink":
        out = tmp_path / "hard.o"
        os.link(victim, out)
    res = instrument(victim, out)
    assert res.returncode == 2 and "--in-place" in one_line(res)
    assert victim.read_bytes() == small_target.read_bytes()
    res = instrument(victim, out, "--in-place")
    assert res.returncode == 0, res.stderr
    # replaced atomically: the name written gets a new file (another hard link keeps the old one)
    assert out.read_bytes() != small_target.read_bytes()


def test_longest_valid_output_name_is_written(small_target: Path, tmp_path: Path) -> None:
    """The temporary beside OUT is cut to the name limit, so any name the
    filesystem takes can be written."""
    out = tmp_path / ("n" * 250)
    res = instrument(small_target, out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:4] == b"\x7fELF" and sorted(os.listdir(tmp_path)) == [out.name]


TIMER = HEAD + """
struct elem { struct bpf_timer t; };
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct elem); }
	timers SEC(".maps");
BPF_SDT_DECLARE1(armed, long);
static int fire(void *map, __u32 *key, struct elem *e)
{
	volatile __u64 buf[30];
	long s = 0;
#pragma unroll
	for (int i = 0; i < 30; i++)
		buf[i] = i + *key;
#pragma unroll
	for (int i = 0; i < 30; i++)
		s += buf[i];
	bpf_timer_set_callback(&e->t, fire);        /* names itself: no recursion for the verifier */
	buf[0] = s;
	return 0;
}
SEC("xdp") int arm(struct xdp_md *ctx)
{
	volatile __u64 big[40];
	__u32 k = 0;
#pragma unroll
	for (int i = 0; i < 40; i++)
		big[i] = ctx->ingress_ifindex + i;
	struct elem *e = bpf_map_lookup_elem(&timers, &k);
	if (e && !bpf_timer_init(&e->t, &timers, 1))
		bpf_timer_set_callback(&e->t, fire);
	BPF_SDT_PROBE1(armed, big[0] + big[39]);
	return XDP_PASS;
}
""" + LICENSE


def test_timer_callback_is_its_own_root_as_for_the_verifier(tmp_path: Path) -> None:
    """A timer callback runs later on its own stack: its frame is not on top
    of the function that arms it (here both together pass 512 bytes, and the
    verifier loads it), and naming itself is not recursion."""
    obj = build(tmp_path, "timer", TIMER)
    assert load_error(obj) == ""
    from bpf_sdt.instrument.analysis import Program, round_frame

    from bpf_sdt.elf import load_object
    from bpf_sdt.insn import MAX_STACK
    from bpf_sdt.rewrite import decode_code

    o = load_object(obj)
    frames = {f.name: round_frame(f.frame) for f in Program(decode_code(o), o.symbols).functions}
    assert frames["arm"] + frames["fire"] > MAX_STACK, frames
    out = tmp_path / "o.o"
    res = instrument(obj, out)
    assert res.returncode == 0, res.stderr
    assert load_error(out) == ""
    assert run_prog(out, "arm", [bytes(64)]) == [XDP_PASS]


def test_sites_of_one_shape_get_the_instructions_built_alone() -> None:
    """SequenceShapes: a site of a shape seen before gets, from the kept
    instructions, exactly what site_sequence builds for it alone (its own
    site id, however many instructions that takes, its calls and
    relocations): all but its site-id store are the shape's objects, calls
    included (encoding derives a call's immediate where it packs it:
    test_insn); a site of another shape is built afresh; call_ends says
    where each call's r1 = r10 is, counted back from the sequence's end."""
    from bpf_sdt.instrument.sequence import Frame, Observer, SequenceShapes, call_ends, site_sequence

    from bpf_sdt.argtype import ArgType
    from bpf_sdt.insn import INSN_SIZE, R1, R10, Insn, nop
    from bpf_sdt.model import ArgLocation

    u8, s64 = ArgType("__u8", "unsigned char", 1, False, "int"), ArgType("long", "long", 8, True, "int")
    types = (u8, s64, u8)
    args = (ArgLocation("reg", reg=3), ArgLocation("imm", value=-5), ArgLocation("stack", offset=-16, size=1))
    recorder, observer = nop(), nop()
    observers = [Observer("recorder", recorder, 4, at_site_id=True), Observer("obs", observer, 4)]

    def fields(seq: list[Insn]) -> list[tuple[object, ...]]:
        return [(x.op, x.dst, x.src, x.off, x.imm, x.imm_hi, x.target, x.orig,
                 None if x.reloc is None else (x.reloc.type, x.reloc.symbol, x.reloc.addend)) for x in seq]

    shapes = SequenceShapes()
    built: list[list[Insn]] = []
    for frame, site_id, cross in [(Frame(24, (0, 2), 3), 7, True), (Frame(24, (0, 2), 3), 1 << 40, True),
                                  (Frame(24, (0, 2), 3), 3, True), (Frame(24, (0, 2), 3), 3, False),
                                  (Frame(32, (2,), 3), None, True)]:
        shaped = shapes.shape(args, types, frame, observers, cross).sequence(frame, site_id)
        alone = site_sequence(args, types, frame, observers, site_id, cross)
        assert fields(shaped) == fields(alone)
        assert sum(x.target is recorder for x in shaped) == sum(x.target is observer for x in shaped) == 1
        starts = [i - 2 for i, x in enumerate(shaped) if x.target is not None]     # each call's r1 = r10
        assert [(shaped[i].dst, shaped[i].src) for i in starts] == [(R1, R10)] * 2
        assert [sum(INSN_SIZE * x.slots for x in shaped[i:]) for i in starts] == list(call_ends(frame, 2))
        built.append(shaped)
    first, wide_id, third, local, other = built
    assert len(first) == len(third) == len(wide_id) - 1           # a site id past 32 bits: two instructions
    shared = [x for x in first if any(x is y for y in third)]
    assert [x.imm for x in first if x not in shared] == [7]       # all but the site-id store
    assert all(any(x is y for y in wide_id) for x in shared)
    assert not any(x is y for x in first for y in [*local, *other] if x.target is not None)   # other shapes

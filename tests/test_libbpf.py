"""bpf_sdt.libbpf, the ctypes layer over the system libbpf, against the real
kernel: test runs, maps, ring buffers (also pinned, on a private bpffs), tp_btf
auto-attach, XDP and tc on a veth pair in namespaces the test creates, the
error paths, and that nothing of ours stays loaded or attached afterwards."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from errno import EACCES, EBADF, EEXIST, EINVAL, ENODEV, ENOENT, EOPNOTSUPP
from pathlib import Path

import pytest
from netns import VethPair, netns_exists
from toolchain import REPO, bpf_permitted, clang, compile_bpf, need, run, tool

from bpf_sdt.errors import EXIT_UNUSABLE
from bpf_sdt.libbpf import LibbpfError, LoadedObject, Map, RingBuffer, obj_get

PREFIX = "sdtt_"          # every program and pinned map of these tests; nothing else uses it
UDP_PORT = 40123
XDP_ABORTED, XDP_DROP, XDP_PASS = 0, 1, 2
LIBBPF_ERRNO_FORMAT = 4001
CLEANUP_WAIT_S = 2.0      # the kernel frees programs after the last reference, not always at once

PROGS = r"""
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } counts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8); __type(key, __u32); __type(value, __u32); } table SEC(".maps");

/* XDP_DROP for packets starting 0xff, else XDP_PASS; counts packets by first byte & 3. */
SEC("xdp") int sdtt_xdp_count(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (data + 1 > end) return XDP_ABORTED;
	__u32 key = data[0] & 3;
	__u64 *v = bpf_map_lookup_elem(&counts, &key);
	if (v) __sync_fetch_and_add(v, 1);
	return data[0] == 0xff ? XDP_DROP : XDP_PASS;
}

struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); } events SEC(".maps");
struct event { __u32 len; __u32 head; __u64 seq; };
__u64 seq;

/* One event per run: packet length, first 4 bytes, a sequence number. */
SEC("xdp") int sdtt_xdp_event(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	if (data + 4 > end) return XDP_ABORTED;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) return XDP_ABORTED;
	e->len = end - data;
	e->head = *(__u32 *)data;
	e->seq = __sync_fetch_and_add(&seq, 1);
	bpf_ringbuf_submit(e, 0);
	return XDP_PASS;
}

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, __u64); } udp_seen SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 2); __type(key, __u32); __type(value, __u64); } tc_seen SEC(".maps");

/* seen[0] += 1, seen[1] += first payload byte, for UDP to UDP_PORT. */
static __always_inline void count_udp(void *data, void *end, void *seen)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	unsigned char *payload = (void *)(udp + 1);
	if ((void *)(payload + 1) > end) return;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return;
	if (udp->dest != bpf_htons(UDP_PORT)) return;
	__u32 k0 = 0, k1 = 1;
	__u64 *n = bpf_map_lookup_elem(seen, &k0), *sum = bpf_map_lookup_elem(seen, &k1);
	if (n && sum) { __sync_fetch_and_add(n, 1); __sync_fetch_and_add(sum, payload[0]); }
}

SEC("xdp") int sdtt_xdp_udp(struct xdp_md *ctx)
{
	count_udp((void *)(long)ctx->data, (void *)(long)ctx->data_end, &udp_seen);
	return XDP_PASS;
}

SEC("tc") int sdtt_tc_udp(struct __sk_buff *skb)
{
	count_udp((void *)(long)skb->data, (void *)(long)skb->data_end, &tc_seen);
	return 0; /* TC_ACT_OK */
}

SEC("tc") int sdtt_tc_mark(struct __sk_buff *skb) { return skb->mark; }

struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 18); } exec_events SEC(".maps");
struct exec_event { __u32 pid; char comm[16]; };

SEC("tp_btf/sched_process_exec") int sdtt_on_exec(unsigned long long *ctx)
{
	(void)ctx;
	struct exec_event *e = bpf_ringbuf_reserve(&exec_events, sizeof(*e), 0);
	if (!e) return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""

PINNED = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); __uint(pinning, LIBBPF_PIN_BY_NAME); } sdtt_pinned SEC(".maps");
SEC("xdp") int sdtt_xdp_pinned(struct xdp_md *ctx)
{
	__u32 *e = bpf_ringbuf_reserve(&sdtt_pinned, sizeof(*e), 0);
	if (!e) return XDP_ABORTED;
	*e = ctx->data_end - ctx->data;
	bpf_ringbuf_submit(e, 0);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""

# Reads 20 bytes past a packet pointer it never bounds-checked.
REJECTED = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int sdtt_bad(struct xdp_md *ctx) { unsigned char *data = (void *)(long)ctx->data; return data[20]; }
char LICENSE[] SEC("license") = "GPL";
"""

# Rejected only after thousands of instructions: a verifier log of several
# hundred KiB, whose last lines must still make the message.
LONG_REJECTED = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int sdtt_long_bad(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned long long x = ctx->ingress_ifindex;
#pragma unroll
	for (int i = 0; i < 4000; i++) { x = x * 3 + i; asm volatile("" : "+r"(x)); }
	return data[x & 7];
}
char LICENSE[] SEC("license") = "GPL";
"""
LONG_LOG_MIN = 256 * 1024
# A local flavor of task_struct with tgid at offset 4: CO-RE moves it to the
# running kernel's offset, so the relocated instructions differ from the object's.
CORE = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
struct task_struct___sdtt { int pid; int tgid; } __attribute__((preserve_access_index));
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, int); __type(value, long); } tgids SEC(".maps");
int base = 3;
SEC("tp/syscalls/sys_enter_getppid")
int sdtt_core_tgid(void *ctx __attribute__((unused))) {
	struct task_struct___sdtt *task = (void *)bpf_get_current_task();
	int key = 0;
	long tgid = BPF_CORE_READ(task, tgid) + base;
	bpf_map_update_elem(&tgids, &key, &tgid, 0);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"""


def multiarch_include() -> str:
    return f"-I/usr/include/{run([tool('gcc'), '-print-multiarch']).stdout.strip()}"


@pytest.fixture(scope="module")
def objs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("libbpf")
    built = {}
    for name, src in (("progs", PROGS), ("pinned", PINNED), ("rejected", REJECTED), ("long", LONG_REJECTED),
                      ("core", CORE)):
        (out / f"{name}.bpf.c").write_text(src)
        built[name] = out / f"{name}.bpf.o"
        compile_bpf(out / f"{name}.bpf.c", built[name], clang(19), defines=(f"UDP_PORT={UDP_PORT}",),
                    extra=(multiarch_include(),))
    return built


def ours_loaded() -> list[str]:
    res = run([tool("bpftool"), "prog", "show", "--json"])
    assert res.returncode == 0, res.stderr
    return [p.get("name", "") for p in json.loads(res.stdout) if p.get("name", "").startswith(PREFIX)]


@pytest.fixture
def kernel() -> Iterator[None]:
    """Kernel tests: bpf() must work (CI fails otherwise), and no program of
    ours may be loaded before or after the test."""
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    assert ours_loaded() == []
    yield
    deadline = time.monotonic() + CLEANUP_WAIT_S
    while (left := ours_loaded()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"still loaded after the test: {left}"


def veth_pair() -> VethPair:
    """A VethPair, once `ip` and `tc` are known to be installed."""
    for name in ("ip", "tc"):
        tool(name)
    return VethPair()


def bpftool_net(net: VethPair) -> dict[str, list[object]]:
    res = run(["ip", "netns", "exec", net.receiver.netns, tool("bpftool"), "net", "show", "--json"])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]  # type: ignore[no-any-return]


def u64(b: bytes | None) -> int:
    assert b is not None
    return int.from_bytes(b, "little")


def key(i: int) -> bytes:
    return i.to_bytes(4, "little")


# --- the library itself --------------------------------------------------------

LAYOUT_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#define S(s) printf("%s - %zu %zu\n", #s, sizeof(struct s), _Alignof(struct s));
#define F(s, f) printf("%s %s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f));
int main(void) {
	S(bpf_object_open_opts) F(bpf_object_open_opts, sz) F(bpf_object_open_opts, object_name)
	F(bpf_object_open_opts, relaxed_maps) F(bpf_object_open_opts, pin_root_path) F(bpf_object_open_opts, kconfig)
	F(bpf_object_open_opts, btf_custom_path) F(bpf_object_open_opts, kernel_log_buf)
	F(bpf_object_open_opts, kernel_log_size) F(bpf_object_open_opts, kernel_log_level)
	S(bpf_test_run_opts) F(bpf_test_run_opts, sz) F(bpf_test_run_opts, data_in) F(bpf_test_run_opts, data_out)
	F(bpf_test_run_opts, data_size_in) F(bpf_test_run_opts, data_size_out) F(bpf_test_run_opts, ctx_in)
	F(bpf_test_run_opts, ctx_out) F(bpf_test_run_opts, ctx_size_in) F(bpf_test_run_opts, ctx_size_out)
	F(bpf_test_run_opts, retval) F(bpf_test_run_opts, repeat) F(bpf_test_run_opts, duration)
	F(bpf_test_run_opts, flags) F(bpf_test_run_opts, cpu) F(bpf_test_run_opts, batch_size)
	S(bpf_tc_hook) F(bpf_tc_hook, sz) F(bpf_tc_hook, ifindex) F(bpf_tc_hook, attach_point) F(bpf_tc_hook, parent)
	S(bpf_tc_opts) F(bpf_tc_opts, sz) F(bpf_tc_opts, prog_fd) F(bpf_tc_opts, flags) F(bpf_tc_opts, prog_id)
	F(bpf_tc_opts, handle) F(bpf_tc_opts, priority)
	F(bpf_map_info, type) F(bpf_map_info, id) F(bpf_map_info, key_size) F(bpf_map_info, value_size)
	F(bpf_map_info, max_entries) F(bpf_map_info, map_flags) F(bpf_map_info, name)
	F(bpf_map_info, ifindex) F(bpf_map_info, btf_vmlinux_value_type_id) F(bpf_map_info, netns_dev)
	F(bpf_map_info, netns_ino) F(bpf_map_info, btf_id) F(bpf_map_info, btf_key_type_id)
	F(bpf_map_info, btf_value_type_id)
	S(libbpf_prog_handler_opts) F(libbpf_prog_handler_opts, sz) F(libbpf_prog_handler_opts, cookie)
	F(libbpf_prog_handler_opts, prog_setup_fn) F(libbpf_prog_handler_opts, prog_prepare_load_fn)
	F(libbpf_prog_handler_opts, prog_attach_fn)
	return 0;
}
"""


def test_struct_layouts_match_the_installed_headers(tmp_path: Path) -> None:
    """Every field offset/size and every opts struct's size (its `sz`) as the
    C compiler sees them in /usr/include/bpf."""
    import ctypes

    from bpf_sdt import libbpf

    src, exe = tmp_path / "layout.c", tmp_path / "layout"
    src.write_text(LAYOUT_PROBE)
    res = run([tool("gcc"), "-Wall", "-Werror", str(src), "-o", str(exe)])
    assert res.returncode == 0, res.stderr
    ours = {"bpf_object_open_opts": libbpf._OpenOpts, "bpf_test_run_opts": libbpf._TestRunOpts,
            "bpf_tc_hook": libbpf._TcHook, "bpf_tc_opts": libbpf._TcOpts, "bpf_map_info": libbpf._MapInfo,
            "libbpf_prog_handler_opts": libbpf._ProgHandlerOpts}
    checked = 0
    for line in run([str(exe)]).stdout.splitlines():
        struct_name, field, a, b = line.split()
        cls = ours[struct_name]
        if field == "-":
            assert (ctypes.sizeof(cls), ctypes.alignment(cls)) == (int(a), int(b)), struct_name
        else:
            desc = getattr(cls, field)
            assert (desc.offset, desc.size) == (int(a), int(b)), f"{struct_name}.{field}"
        checked += 1
    assert checked == 58          # 5 struct sizes + 53 fields


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    res: subprocess.CompletedProcess[str] = run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=REPO)
    return res


def test_library_override_by_environment() -> None:
    code = "from bpf_sdt.libbpf import libbpf_path, libbpf_version; print(libbpf_path(), libbpf_version())"
    default = _python(code)
    assert default.returncode == 0 and default.stdout.split()[0] == "libbpf.so.1", default.stderr
    real = next(p for p in Path("/usr/lib").glob("*/libbpf.so.1*") if p.is_file())
    chosen = _python(code, BPF_SDT_LIBBPF=str(real))
    assert chosen.stdout.split() == [str(real), default.stdout.split()[1]], chosen.stderr
    missing = _python("from bpf_sdt.libbpf import LoadedObject\n"
                      "try:\n    LoadedObject.open('x.o')\nexcept Exception as e:\n    print(type(e).__name__, e.errno, e)",
                      BPF_SDT_LIBBPF="/nonexistent/libbpf.so.1")
    assert missing.stdout.strip() == f"LibbpfError {ENOENT} BPF_SDT_LIBBPF=/nonexistent/libbpf.so.1: " \
                                     "No such file or directory", missing.stdout + missing.stderr
    not_libbpf = _python("from bpf_sdt.libbpf import libbpf_version\n"
                         "try:\n    libbpf_version()\nexcept Exception as e:\n    print(type(e).__name__, e)",
                         BPF_SDT_LIBBPF=sys.executable)
    assert not_libbpf.stdout.startswith(f"LibbpfError loading {sys.executable}: "), not_libbpf.stdout + not_libbpf.stderr


# --- objects, programs, maps, test runs -----------------------------------------

@pytest.mark.kernel
def test_object_lists_its_programs_and_maps(objs: dict[str, Path], kernel: None) -> None:
    with LoadedObject.open(objs["progs"], object_name="named") as obj:
        assert obj.name == "named"
        progs = {p.name: (p.section, p.type) for p in obj.programs}
        assert progs == {"sdtt_xdp_count": ("xdp", "xdp"), "sdtt_xdp_event": ("xdp", "xdp"),
                         "sdtt_xdp_udp": ("xdp", "xdp"), "sdtt_tc_udp": ("tc", "sched_cls"),
                         "sdtt_tc_mark": ("tc", "sched_cls"),
                         "sdtt_on_exec": ("tp_btf/sched_process_exec", "tracing")}
        maps = {m.name: (m.type, m.key_size, m.value_size, m.max_entries) for m in obj.maps}
        assert maps["counts"] == ("array", 4, 8, 4) and maps["table"] == ("hash", 4, 4, 8)
        assert maps["events"][0] == "ringbuf" and maps["named.bss"][0] == "array"
        with pytest.raises(LibbpfError) as missing:
            obj.find_program("sdtt_nope")
        assert missing.value.errno == ENOENT and "sdtt_xdp_count" in str(missing.value)
        with pytest.raises(LibbpfError) as unloaded:
            obj.find_program("sdtt_xdp_count").fd  # noqa: B018 - the property is the call under test
        assert unloaded.value.errno == EBADF and str(unloaded.value).endswith("Bad file descriptor (not loaded)")
        obj.load()
        fds = {p.fd for p in obj.programs} | {m.fd for m in obj.maps}
        assert len(fds) == len(obj.programs) + len(obj.maps) and min(fds) > 2
        assert sorted(ours_loaded()) == sorted(n[:15] for n in progs)
    prog = obj.programs[0]
    with pytest.raises(LibbpfError) as closed:
        prog.fd  # noqa: B018
    assert closed.value.errno == EBADF


@pytest.mark.kernel
def test_xdp_test_run_returns_the_action_and_counts_in_a_map(objs: dict[str, Path], kernel: None) -> None:
    packets = [bytes([first]) + bytes(range(40)) for first in (0, 1, 5, 0xff, 0xff, 2, 9)]
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        prog, counts = obj.find_program("sdtt_xdp_count"), obj.find_map("counts")
        for pkt in packets:
            retval, data, duration = prog.test_run(pkt)
            assert retval == (XDP_DROP if pkt[0] == 0xff else XDP_PASS) and data == pkt and duration >= 0
        assert prog.test_run(b"\x06" + bytes(13), repeat=50).retval == XDP_PASS
        with pytest.raises(LibbpfError) as short:       # XDP test runs need an Ethernet header
            prog.test_run(b"\x06")
        assert short.value.errno == EINVAL and str(short.value) == "test run of prog 'sdtt_xdp_count': Invalid argument"
        expected = [sum(1 for p in packets if p[0] & 3 == k) for k in range(4)]
        expected[2] += 50
        assert list(counts.keys()) == [key(k) for k in range(4)]
        assert [u64(counts.lookup(key(k))) for k in range(4)] == expected


@pytest.mark.kernel
def test_relocated_instructions_get_the_kernels_tag_without_a_load(objs: dict[str, Path], kernel: None) -> None:
    """libbpf's relocated instructions (CO-RE applied, maps and .data as fds)
    hash to the tag the kernel gives a load of the same object, and getting
    them loads nothing.  Several times in one process: libbpf 1.1 corrupts
    its heap when its last program handler goes (the anchor prevents it)."""
    from bpf_sdt.elf import load_object
    from bpf_sdt.kernel import prog_id_of_fd, program_tags
    from bpf_sdt.libbpf import relocated_program

    cases = [(objs["core"], "sdtt_core_tgid"), (objs["progs"], "sdtt_xdp_udp"), (objs["progs"], "sdtt_tc_mark"),
             (objs["progs"], "sdtt_on_exec")]
    for path, name in cases * 2:
        mine = relocated_program(path, name)
        assert ours_loaded() == []                                  # no verifier run, nothing left
        with LoadedObject.open(path) as obj:
            obj.load()
            loaded = obj.find_program(name)
            tag = json.loads(run([tool("bpftool"), "prog", "show", "id",
                                  str(prog_id_of_fd(loaded.fd)), "--json"]).stdout)["tag"]
            assert (mine.name, mine.type) == (loaded.name, loaded.type)
        assert tag in program_tags(mine.instructions), (name, tag)
    core = relocated_program(objs["core"], "sdtt_core_tgid").instructions
    elf = load_object(objs["core"])
    section = elf.section("tp/syscalls/sys_enter_getppid")
    assert section is not None
    as_compiled = elf.section_data(section)
    assert len(core) == len(as_compiled) and core != as_compiled                 # CO-RE and map fds applied
    with pytest.raises(LibbpfError) as missing:
        relocated_program(objs["progs"], "sdtt_nope")
    assert missing.value.errno == ENOENT


@pytest.mark.kernel
def test_map_update_lookup_and_keys(objs: dict[str, Path], kernel: None) -> None:
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        table = obj.find_map("table")
        assert table.lookup(key(3)) is None and list(table.keys()) == []
        for k in (3, 1, 4):
            table.update(key(k), (k * 100).to_bytes(4, "little"))
        assert sorted(table.keys()) == sorted(key(k) for k in (3, 1, 4))
        assert {int.from_bytes(k, "little"): u64(table.lookup(k)) for k in table} == {3: 300, 1: 100, 4: 400}
        with pytest.raises(LibbpfError) as wrong:
            table.lookup(b"\0\0")
        assert wrong.value.errno == EINVAL and "key of 2 bytes" in str(wrong.value)
        with pytest.raises(LibbpfError) as exists:
            table.update(key(3), bytes(4), flags=1)    # BPF_NOEXIST
        assert exists.value.errno == EEXIST


@pytest.mark.kernel
def test_test_run_passes_a_context(objs: dict[str, Path], kernel: None) -> None:
    mark = 0x5d
    skb_ctx = struct.pack("<III", 0, 0, mark)           # struct __sk_buff up to .mark; len, pkt_type must be 0
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        prog = obj.find_program("sdtt_tc_mark")
        assert prog.test_run(bytes(64), ctx=skb_ctx).retval == mark
        assert prog.test_run(bytes(64)).retval == 0


# --- ring buffers ------------------------------------------------------------------

@pytest.mark.kernel
def test_ring_buffer_delivers_exact_events(objs: dict[str, Path], kernel: None) -> None:
    runs = [(b"abcd" + bytes(20), 3), (b"\x01\x02\x03\x04wxyz" + bytes(50), 2)]
    expected = []
    for pkt, repeat in runs:
        expected += [(len(pkt), int.from_bytes(pkt[:4], "little"))] * repeat
    got: list[bytes] = []
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        prog = obj.find_program("sdtt_xdp_event")
        with RingBuffer(obj.find_map("events"), got.append) as rb:
            assert rb.poll(0) == 0 and rb.epoll_fd > 2
            for pkt, repeat in runs:
                assert prog.test_run(pkt, repeat=repeat).retval == XDP_PASS
            assert rb.consume() == len(expected)
            assert rb.poll(0) == 0
    events = [struct.unpack("<IIQ", g) for g in got]
    assert [(n, head) for n, head, _ in events] == expected
    assert [s for _, _, s in events] == list(range(len(expected)))


@pytest.mark.kernel
def test_ring_buffer_callback_exception_stops_and_propagates(objs: dict[str, Path], kernel: None) -> None:
    seen: list[bytes] = []

    def callback(sample: bytes) -> None:
        seen.append(sample)
        if len(seen) == 2:
            raise ValueError("stop here")

    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        obj.find_program("sdtt_xdp_event").test_run(bytes(16), repeat=4)
        with RingBuffer(obj.find_map("events"), callback) as rb:
            with pytest.raises(ValueError, match="stop here"):
                rb.consume()
            assert len(seen) == 2
            assert rb.consume() == 2 and len(seen) == 4      # the rest is still there
        with pytest.raises(LibbpfError) as closed:
            rb.poll(0)
        assert closed.value.errno == EBADF


class Interrupted(Exception):
    pass


@pytest.mark.kernel
def test_a_signal_interrupts_a_waiting_poll(objs: dict[str, Path], kernel: None) -> None:
    """A signal during poll() reaches Python at once: a handler that raises
    (Ctrl-C) propagates; one that only records (a SIGTERM flag) makes poll()
    return 0 rather than fail with EINTR."""
    signals: list[int] = []

    def record(signum: int, frame: object) -> None:
        signals.append(signum)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        with RingBuffer(obj.find_map("events"), lambda _: None) as rb:
            old = signal.getsignal(signal.SIGALRM)
            try:
                signal.signal(signal.SIGALRM, record)
                start = time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                assert rb.poll(10_000) == 0 and signals == [signal.SIGALRM]
                assert time.monotonic() - start < 2
                signal.signal(signal.SIGALRM, interrupt)
                signal.setitimer(signal.ITIMER_REAL, 0.1)
                with pytest.raises(Interrupted):
                    rb.poll(10_000)
                assert time.monotonic() - start < 4
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            assert rb.poll(0) == 0                       # still usable afterwards


@pytest.mark.kernel
def test_pinned_ring_buffer_read_through_bpf_obj_get(objs: dict[str, Path], kernel: None, tmp_path: Path) -> None:
    """pin_root_path on a private bpffs (as inside `ip netns exec`, where
    /sys/fs/bpf is not bpffs); another reader opens the pin by path."""
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    assert run(["mount", "-t", "bpf", "bpf", str(bpffs)]).returncode == 0
    try:
        with LoadedObject.open(objs["pinned"], pin_root_path=bpffs) as obj:
            obj.load()
            assert obj.find_map("sdtt_pinned").pin_path == str(bpffs / "sdtt_pinned")
            for size in (20, 64, 100):
                obj.find_program("sdtt_xdp_pinned").test_run(bytes(size))
            counts_pin = bpffs / "sdtt_counts"               # any map, pinned by hand
            with LoadedObject.open(objs["progs"]) as progs:
                progs.load()
                progs.find_program("sdtt_xdp_count").test_run(b"\x03" + bytes(13), repeat=4)
                progs.find_map("counts").pin(counts_pin)
            with Map.open_pinned(counts_pin) as counts:
                assert (counts.type, counts.key_size, counts.value_size) == ("array", 4, 8)
                assert u64(counts.lookup(key(3))) == 4
                counts.unpin(counts_pin)
        assert (bpffs / "sdtt_pinned").exists()             # outlives its loader, like a real pin
        got: list[bytes] = []
        with Map.open_pinned(bpffs / "sdtt_pinned") as ring:
            assert (ring.name, ring.type) == ("sdtt_pinned", "ringbuf")
            with RingBuffer(ring, got.append) as rb:
                assert rb.poll(100) == 3
            ring.unpin(bpffs / "sdtt_pinned")
        assert [struct.unpack("<I", g)[0] for g in got] == [20, 64, 100]
        assert not (bpffs / "sdtt_pinned").exists()
        with pytest.raises(LibbpfError) as gone:
            obj_get(bpffs / "sdtt_pinned")
        assert gone.value.errno == ENOENT
    finally:
        assert run(["umount", str(bpffs)]).returncode == 0


@pytest.mark.kernel
def test_pin_root_path_off_bpffs_is_one_line_error(objs: dict[str, Path], kernel: None, tmp_path: Path) -> None:
    with pytest.raises(LibbpfError) as err, LoadedObject.open(objs["pinned"], pin_root_path=tmp_path) as obj:
        obj.load()
    assert err.value.errno == EINVAL
    assert str(err.value) == (f"loading {objs['pinned']}: Invalid argument (specified path "
                              f"{tmp_path}/sdtt_pinned is not on BPF FS)")
    with pytest.raises(LibbpfError) as missing:
        Map.open_pinned(tmp_path / "nothing")
    assert missing.value.errno == ENOENT and "\n" not in str(missing.value)


# --- attaching -----------------------------------------------------------------------

@pytest.mark.kernel
def test_tp_btf_auto_attach_fires_on_exec(objs: dict[str, Path], kernel: None) -> None:
    got: list[tuple[int, bytes]] = []

    def on_event(sample: bytes) -> None:
        pid, comm = struct.unpack("<I16s", sample)
        got.append((pid, comm.rstrip(b"\0")))

    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        with RingBuffer(obj.find_map("exec_events"), on_event) as rb:
            with obj.find_program("sdtt_on_exec").attach() as link:
                assert link.fd > 2
                child = subprocess.Popen(["/bin/true"])
                child.wait()
                rb.consume()
            assert (child.pid, b"true") in got
            after = subprocess.Popen(["/bin/true"])
            after.wait()
            rb.consume()
            assert all(p != after.pid for p, _ in got), "still attached after the link was destroyed"


@pytest.mark.kernel
def test_xdp_on_a_veth_sees_the_udp_packets_sent(objs: dict[str, Path], kernel: None) -> None:
    count = 25
    with veth_pair() as net:
        with LoadedObject.open(objs["progs"]) as obj:
            obj.load()
            with net.receiver.entered():
                link = obj.find_program("sdtt_xdp_udp").attach_xdp(net.receiver.iface)
            attached = bpftool_net(net)["xdp"]
            assert [x["devname"] for x in attached] == [net.receiver.iface]  # type: ignore[index]
            assert net.send_udp(count, UDP_PORT) == count
            seen = obj.find_map("udp_seen")
            assert u64(seen.lookup(key(0))) == count
            assert u64(seen.lookup(key(1))) == sum(range(count))
            assert link.fd > 2                # left attached: closing the object must detach it
        assert bpftool_net(net)["xdp"] == []
        assert net.send_udp(3, UDP_PORT) == 3
    assert not netns_exists(net.receiver.netns) and not netns_exists(net.sender.netns)


@pytest.mark.kernel
def test_tc_ingress_attach_and_detach_on_a_veth(objs: dict[str, Path], kernel: None) -> None:
    count = 12
    with veth_pair() as net, LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        with net.receiver.entered():
            with obj.find_program("sdtt_tc_udp").attach_tc(net.receiver.iface, "ingress") as filt:
                tc = bpftool_net(net)["tc"]
                assert [(t["devname"], t["kind"], t["name"]) for t in tc] == [  # type: ignore[index]
                    (net.receiver.iface, "clsact/ingress", f"sdtt_tc_udp:[{filt.prog_id}]")]
                assert filt.handle > 0 and filt.priority > 0
                assert net.send_udp(count, UDP_PORT) == count
            assert bpftool_net(net)["tc"] == []
            qdiscs = run(["tc", "qdisc", "show", "dev", net.receiver.iface]).stdout
            assert "clsact" not in qdiscs, qdiscs
        assert net.send_udp(4, UDP_PORT) == 4                 # not counted: detached
        seen = obj.find_map("tc_seen")
        assert (u64(seen.lookup(key(0))), u64(seen.lookup(key(1)))) == (count, sum(range(count)))


@pytest.mark.kernel
def test_an_exception_in_the_block_detaches_everything(objs: dict[str, Path], kernel: None) -> None:
    with veth_pair() as net, net.receiver.entered():
        with pytest.raises(RuntimeError, match="mid-trace"), LoadedObject.open(objs["progs"]) as obj:
            obj.load()
            obj.find_program("sdtt_xdp_udp").attach_xdp(net.receiver.iface)
            obj.find_program("sdtt_tc_udp").attach_tc(net.receiver.iface, "ingress")
            obj.find_program("sdtt_tc_udp").attach_tc(net.receiver.iface, "egress", priority=7)
            obj.find_program("sdtt_on_exec").attach()
            assert len(bpftool_net(net)["xdp"]) == 1 and len(bpftool_net(net)["tc"]) == 2
            raise RuntimeError("mid-trace")
        assert not any(bpftool_net(net).values()), bpftool_net(net)
        assert "clsact" not in run(["tc", "qdisc", "show", "dev", net.receiver.iface]).stdout


@pytest.mark.kernel
def test_tc_keeps_a_clsact_qdisc_it_did_not_create(objs: dict[str, Path], kernel: None) -> None:
    with veth_pair() as net, LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        with net.receiver.entered():
            assert run(["tc", "qdisc", "add", "dev", net.receiver.iface, "clsact"]).returncode == 0
            with obj.find_program("sdtt_tc_udp").attach_tc(net.receiver.iface, "egress"):
                assert [t["kind"] for t in bpftool_net(net)["tc"]] == ["clsact/egress"]  # type: ignore[index]
            assert bpftool_net(net)["tc"] == []
            assert "clsact" in run(["tc", "qdisc", "show", "dev", net.receiver.iface]).stdout


# --- error paths -------------------------------------------------------------------------

def test_missing_and_non_elf_files(tmp_path: Path) -> None:
    with pytest.raises(LibbpfError) as missing:
        LoadedObject.open(tmp_path / "nope.o")
    assert missing.value.errno == ENOENT
    assert str(missing.value) == f"opening {tmp_path}/nope.o: No such file or directory"
    text = tmp_path / "notes.txt"
    text.write_text("not an object\n")
    with pytest.raises(LibbpfError) as not_elf:
        LoadedObject.open(text)
    assert not_elf.value.errno == LIBBPF_ERRNO_FORMAT and not_elf.value.exit_code == EXIT_UNUSABLE
    assert str(not_elf.value) == (f"opening {text}: BPF object format invalid "
                                  f"(elf: '{text}' is not a proper ELF object)")
    with pytest.raises(LibbpfError) as host_elf:
        LoadedObject.open(sys.executable)
    assert host_elf.value.errno == LIBBPF_ERRNO_FORMAT and "not a valid eBPF object file" in str(host_elf.value)


@pytest.mark.kernel
def test_verifier_rejection_is_one_line_with_the_reason(objs: dict[str, Path], kernel: None,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    obj = LoadedObject.open(objs["rejected"])
    with pytest.raises(LibbpfError) as err:
        obj.load()
    msg = str(err.value)
    assert err.value.errno == EACCES and "\n" not in msg
    assert msg.startswith(f"loading {objs['rejected']}: Permission denied (verifier: prog 'sdtt_bad': "
                          "invalid access to packet, off=20 size=1"), msg
    assert msg.endswith("; R1 offset is outside of the packet)"), msg
    assert "processed 2 insns" in err.value.log                     # the whole log stays available
    with pytest.raises(LibbpfError) as closed:                      # a failed load closes the object
        obj.find_program("sdtt_bad").fd  # noqa: B018
    assert closed.value.errno == EBADF
    assert capfd.readouterr() == ("", "")                          # libbpf printed nothing itself


@pytest.mark.kernel
def test_reason_comes_from_the_end_of_a_long_verifier_log(objs: dict[str, Path], kernel: None) -> None:
    """The print callback sizes each message before formatting it (a va_list
    copy), so a log of any length arrives whole, and its end names the reason."""
    with pytest.raises(LibbpfError) as err, LoadedObject.open(objs["long"]) as obj:
        obj.load()
    assert len(err.value.log) > LONG_LOG_MIN and err.value.log.endswith(f"failed to load object '{objs['long']}'\n")
    assert str(err.value).endswith("R1 offset is outside of the packet)") and "\n" not in str(err.value)


@pytest.mark.kernel
def test_attach_of_a_section_without_auto_attach(objs: dict[str, Path], kernel: None) -> None:
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        with pytest.raises(LibbpfError) as err:
            obj.find_program("sdtt_xdp_udp").attach()
    assert err.value.errno == EOPNOTSUPP
    assert str(err.value) == "attaching prog 'sdtt_xdp_udp' (section 'xdp'): Operation not supported"


@pytest.mark.kernel
def test_nonexistent_interface(objs: dict[str, Path], kernel: None) -> None:
    with LoadedObject.open(objs["progs"]) as obj:
        obj.load()
        xdp, tc = obj.find_program("sdtt_xdp_udp"), obj.find_program("sdtt_tc_udp")
        for attach in (xdp.attach_xdp, tc.attach_tc):
            with pytest.raises(LibbpfError) as by_name:
                attach("sdtt-nope0")
            assert by_name.value.errno == ENODEV and str(by_name.value) == "interface sdtt-nope0: No such device"
        with pytest.raises(LibbpfError) as xdp_index:
            xdp.attach_xdp(2**31 - 1)
        assert xdp_index.value.errno in (EINVAL, ENODEV)
        with pytest.raises(LibbpfError) as tc_index:
            tc.attach_tc(2**31 - 1)
        assert tc_index.value.errno == ENODEV and "clsact qdisc" in str(tc_index.value)
        with pytest.raises(LibbpfError) as direction:
            tc.attach_tc("lo", "sideways")
        assert direction.value.errno == EINVAL


def test_veth_pair_is_deleted_when_the_block_raises() -> None:
    need(os.geteuid() == 0, "network namespaces need root")
    with pytest.raises(RuntimeError, match="inside"), VethPair() as net:
        assert netns_exists(net.sender.netns) and netns_exists(net.receiver.netns)
        raise RuntimeError("inside")
    assert not netns_exists(net.sender.netns) and not netns_exists(net.receiver.netns)
    assert net.receiver.iface not in run(["ip", "-o", "link"]).stdout

"""`bpf-sdt trace --live` and `bpf-sdt restore` against programs that real
loaders other than bpf-sdt loaded and attached to a veth in namespaces the
test creates: iproute2 (`ip link ... xdp obj`, `tc filter ... bpf da obj`),
bpftool (`prog load` + `net attach`, `prog loadall` + a prog_array update)
and a C program on libbpf with a bpftool skeleton (an XDP link).

While UDP flows without a pause, trace swaps an instrumented copy in, prints
the probe's events, and swaps the original back; afterwards the same program
id runs there again and its count map (and .bss) hold exactly the number of
packets sent over the whole run: none went unprocessed, no state was reset."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpf_sdt.trace.live import IDENTITY_COMPUTED
from netns import VethPair
from toolchain import REPO, bpf_permitted, clang, compile_bpf, need, run, tool

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
PROGS = REPO / "tests" / "progs"
LOADERS = REPO / "tests" / "loaders"
# This module's records root (BPF_SDT_RECORDS, docs/records.md), private to the session: another
# session's stale record can neither show in our_records() nor add a line to trace's stderr.  It is on
# bpffs, named like the session's pins, so one left non-empty fails the session (tests/conftest.py).
RECORDS = Path(f"/sys/fs/bpf/bpf_sdt_test_records_{os.getpid()}")
PORT = 40177
PAYLOAD = b"live"
UDP_FRAME = 14 + 20 + 8 + 1 + len(PAYLOAD)      # Ethernet, IPv4, UDP, the index byte, payload
PATH_UDP, PATH_OTHER_IP, PATH_NON_IP = 0, 1, 2
XDP_ATTACHED_SKB = 2            # iproute2's "mode" of generic XDP
SEND_INTERVAL_S = 0.002         # ~500 packets/s: continuous, and easy on the shared cores
READY_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 10.0
SETTLE_S = 0.3                  # traffic before and after the swap, so both originals see packets


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def in_ns(net: VethPair) -> list[str]:
    """Runs a command in the receiver's namespace without `ip netns exec`'s
    /sys remount (bpffs, and so bpf-sdt's records, stay at /sys/fs/bpf)."""
    return [tool("nsenter"), f"--net=/run/netns/{net.receiver.netns}"]


def ok(cmd: list[str]) -> str:
    res = run(cmd)
    assert res.returncode == 0, f"{' '.join(cmd)}: {res.stderr}"
    return res.stdout


# --- building ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    for name in ("ip", "tc", "bpftool", "nsenter", "gcc"):
        tool(name)
    out = tmp_path_factory.mktemp("live")
    os.environ["BPF_SDT_CACHE"] = str(out / "cache")      # trace's instrumented-object cache, not ~/.cache
    multiarch = ok([tool("gcc"), "-print-multiarch"]).strip()
    system = (f"-I/usr/include/{multiarch}",)
    objs = {}
    # live_xdp_other: a program named live_xdp, with the same maps, from another source file
    for name in ("live_xdp", "live_tc", "live_tail", "live_tail_init", "live_xdp_other"):
        objs[name] = out / f"{name}.bpf.o"
        compile_bpf(PROGS / f"{name}.bpf.c", objs[name], clang(19), extra=system)
    skeleton = ok([tool("bpftool"), "gen", "skeleton", str(objs["live_xdp"]), "name", "live_xdp"])
    (out / "live_xdp.skel.h").write_text(skeleton)
    for loader in ("xdp_loader", "tcx_loader"):
        objs[loader] = out / loader
        ok([tool("gcc"), "-O2", "-Wall", "-Werror", f"-I{out}", "-o", str(objs[loader]), str(LOADERS / f"{loader}.c"),
            "-lbpf"])
    return objs


# --- traffic and the kernel's view ---------------------------------------------------------


class Traffic:
    """UDP datagrams from the sender to the receiver without a pause, in a
    thread, until stop(); `sent` counts them."""

    def __init__(self, net: VethPair) -> None:
        with net.sender.entered():
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._to = (net.receiver.addr, PORT)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sock.sendto(bytes([self.sent % 256]) + PAYLOAD, self._to)   # the probe shows byte 0
            self.sent += 1
            time.sleep(SEND_INTERVAL_S)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._sock.close()
        time.sleep(SETTLE_S)            # the last datagrams cross the pair
        return self.sent

    def __exit__(self, *exc: object) -> None:
        if not self._stop.is_set():
            self.stop()


def xdp_prog_id(net: VethPair) -> int:
    link = json.loads(ok([*in_ns(net), "ip", "-j", "link", "show", net.receiver.iface]))[0]
    return int(link.get("xdp", {}).get("prog", {}).get("id", 0))


def tc_prog_ids(net: VethPair) -> list[int]:
    shown = json.loads(ok([*in_ns(net), "tc", "-j", "filter", "show", "dev", net.receiver.iface, "ingress"]) or "[]")
    return [f["options"]["prog"]["id"] for f in shown if "prog" in f.get("options", {})]


def tc_filter_by_iproute2(net: VethPair, obj: Path, *options: str) -> None:
    """clsact on the receiver and `tc filter add ... ingress OPTIONS bpf ... obj OBJ sec tc`."""
    iface = net.receiver.iface
    ok([*in_ns(net), "tc", "qdisc", "add", "dev", iface, "clsact"])
    ok([*in_ns(net), "tc", "filter", "add", "dev", iface, "ingress", *options, "obj", str(obj), "sec", "tc"])


def map_of(prog_id: int, name: str) -> int:
    shown = json.loads(ok([tool("bpftool"), "prog", "show", "id", str(prog_id), "-j"]))
    for map_id in shown["map_ids"]:
        info = json.loads(ok([tool("bpftool"), "map", "show", "id", str(map_id), "-j"]))
        if info["name"] == name or (name.startswith(".") and info["name"].endswith(name)):
            return int(map_id)
    raise AssertionError(f"prog {prog_id} has no map {name}")


def as_int(value: int | list[str]) -> int:
    """A value as bpftool prints it: a number (with BTF) or hex bytes."""
    return value if isinstance(value, int) else int.from_bytes(bytes(int(b, 16) for b in value), "little")


def u64_values(map_id: int) -> list[int]:
    return [as_int(e["value"]) for e in json.loads(ok([tool("bpftool"), "map", "dump", "id", str(map_id), "-j"]))]


@pytest.fixture(scope="module", autouse=True)
def private_records() -> Iterator[Path]:
    """Every trace and restore of the module (subprocesses inherit the
    environment) keeps its records in RECORDS; removed at the end if empty."""
    before = os.environ.get("BPF_SDT_RECORDS")
    os.environ["BPF_SDT_RECORDS"] = str(RECORDS)
    try:
        yield RECORDS
    finally:
        if before is None:
            del os.environ["BPF_SDT_RECORDS"]
        else:
            os.environ["BPF_SDT_RECORDS"] = before
        with contextlib.suppress(OSError):  # absent, or records left: the session's check names it
            RECORDS.rmdir()


def our_records() -> list[str]:
    """bpf-sdt's records of this session's traces (its private root)."""
    return sorted(p.name for p in RECORDS.iterdir()) if RECORDS.exists() else []


# --- trace as a subprocess --------------------------------------------------------------------


class Live:
    """`bpf-sdt trace --live` running in the receiver's namespace."""

    def __init__(self, net: VethPair, obj: Path, where: str, *extra: str) -> None:
        self.proc = subprocess.Popen([*in_ns(net), *CLI, "trace", str(obj), "--live", where, "--json", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        self.out, self.err = b"", b""
        assert self.proc.stdout and self.proc.stderr
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)

    def _pump(self) -> None:
        assert self.proc.stdout and self.proc.stderr
        self.out += self.proc.stdout.read() or b""
        self.err += self.proc.stderr.read() or b""

    def wait_for(self, text: bytes, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.err:
            assert self.proc.poll() is None, f"trace ended early: {self.err.decode()}"
            assert time.monotonic() < deadline, f"no {text!r}: {self.err.decode()}"
            self._pump()
            time.sleep(0.05)

    def events(self) -> list[dict[str, Any]]:
        """The probe events printed so far (not the summary lines)."""
        self._pump()
        lines = [json.loads(line) for line in self.out[: self.out.rfind(b"\n") + 1].decode().splitlines()]
        return [e for e in lines if "probe" in e]

    def wait_events(self, count: int) -> None:
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while len(self.events()) < count:
            assert time.monotonic() < deadline, f"{len(self.events())} events; {self.err.decode()}"
            time.sleep(0.05)

    def finish(self, sig: int | None = signal.SIGINT) -> int:
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        finally:
            self.kill()
        self._pump()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def lives() -> Iterator[list[Live]]:
    started: list[Live] = []
    yield started
    for live in started:
        live.kill()


def check_udp_events(events: list[dict[str, Any]]) -> None:
    """Every event is a datagram of the traffic, typed: its length, port, and
    index bytes counting up one by one."""
    assert events, "no events"
    assert {e["probe"] for e in events} == {"udp_seen"}
    assert all(e["args"][:2] == [UDP_FRAME, PORT] for e in events), events[:3]
    indexes = [e["args"][2] for e in events]
    assert all(b == (a + 1) % 256 for a, b in zip(indexes, indexes[1:], strict=False)), indexes[:20]


def traced_through_swap(net: VethPair, obj: Path, where: str, lives: list[Live], *extra: str,
                        ending: int = signal.SIGINT) -> tuple[int, str]:
    """Traffic flows before, during and after a live trace ended by `ending`
    (a signal); (datagrams sent, trace's stderr)."""
    with Traffic(net) as traffic:
        time.sleep(SETTLE_S)
        live = Live(net, obj, where, *extra)
        lives.append(live)
        live.wait_for(b"Ctrl-C to stop")
        live.wait_events(20)
        assert live.finish(ending) == 0, live.err.decode()
        time.sleep(SETTLE_S)
        sent = traffic.stop()
    check_udp_events(live.events())
    err = live.err.decode()
    assert "swapped to the instrumented copy (compare-and-swap" in err or "replaced in place" in err, err
    assert "prepared in" in err and "is back" in err, err
    # Whatever the loader, OBJ's relocated instructions get the running tag: no identity load.
    assert IDENTITY_COMPUTED in err, err
    return sent, err


def assert_counted(prog_id: int, sent: int) -> None:
    paths = u64_values(map_of(prog_id, "path_counts"))
    assert paths[PATH_UDP] == sent, (paths, sent)
    assert paths[PATH_OTHER_IP] == paths[PATH_NON_IP] == 0, paths
    assert u64_values(map_of(prog_id, ".bss")) == [sent]


# --- the loaders ---------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("ending", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_iproute2_xdp_swapped_traced_and_back_with_every_packet_counted(built: dict[str, Path], lives: list[Live],
                                                                       ending: signal.Signals) -> None:
    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        before = our_records()
        sent, err = traced_through_swap(net, built["live_xdp"], f"xdp:{net.receiver.iface}", lives, ending=ending)
        assert "XDP of" in err and "netlink" in err and "2 map(s) shared" in err
        assert xdp_prog_id(net) == original
        assert_counted(original, sent)
        assert our_records() == before


@pytest.mark.kernel
def test_aggregations_and_the_exporter_work_on_the_swapped_copy(built: dict[str, Path], lives: list[Live]) -> None:
    """--count-by and --prometheus with --live: the copy counts in the kernel
    (no ring events), the endpoint serves its hits while it runs, and what it
    counted is what it served; the original still counts every datagram."""
    from prometheus_client.parser import text_string_to_metric_families

    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        ok([*in_ns(net), "ip", "link", "set", "lo", "up"])
        original = xdp_prog_id(net)
        with Traffic(net) as traffic:
            live = Live(net, built["live_xdp"], f"xdp:{net.receiver.iface}", "--count-by", "udp_seen:arg1",
                        "--prometheus", "0")
            lives.append(live)
            live.wait_for(b"Ctrl-C to stop")
            port = re.search(rb"metrics at http://127\.0\.0\.1:(\d+)/metrics", live.err)
            assert port, live.err.decode()
            served = 0.0
            deadline = time.monotonic() + EVENT_TIMEOUT_S
            while served < 20:
                assert time.monotonic() < deadline, live.err.decode()
                time.sleep(0.2)
                with net.receiver.entered(), urllib.request.urlopen(
                        f"http://127.0.0.1:{int(port[1])}/metrics", timeout=5) as r:
                    families = {f.name: list(f.samples) for f in text_string_to_metric_families(r.read().decode())}
                served = sum(x.value for x in families["bpf_sdt_site_hits"]
                             if x.name.endswith("_total") and x.labels["probe"] == "udp_seen")
            assert live.finish(signal.SIGINT) == 0, live.err.decode()
            sent = traffic.stop()
        lines = [json.loads(x) for x in live.out.decode().splitlines()]
        assert not [x for x in lines if x.get("type") == "event"], "aggregating: no ring events"
        (counts,) = [x for x in lines if x.get("type") == "count"]
        by_port = {tuple(e["keys"]): e["count"] for e in counts["entries"]}
        assert list(by_port) == [(PORT,)] and served <= by_port[(PORT,)] <= sent, (by_port, served, sent)
        assert xdp_prog_id(net) == original
        assert_counted(original, sent)


@pytest.mark.kernel
def test_generic_mode_xdp_is_replaced_in_generic_mode(built: dict[str, Path], lives: list[Live]) -> None:
    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdpgeneric", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        sent, err = traced_through_swap(net, built["live_xdp"], f"xdp:{net.receiver.iface}", lives)
        assert "generic mode, netlink" in err, err
        link = json.loads(ok([*in_ns(net), "ip", "-j", "link", "show", net.receiver.iface]))[0]
        assert link["xdp"]["mode"] == XDP_ATTACHED_SKB and link["xdp"]["prog"]["id"] == original
        assert_counted(original, sent)


@pytest.mark.kernel
def test_iproute2_tc_filter_swapped_in_place_and_back(built: dict[str, Path], lives: list[Live]) -> None:
    with VethPair() as net:
        iface = net.receiver.iface
        tc_filter_by_iproute2(net, built["live_tc"], "bpf", "da")
        [original] = tc_prog_ids(net)
        sent, err = traced_through_swap(net, built["live_tc"], f"tc:{iface}:ingress", lives)
        assert "tc ingress filter of" in err and "check-then-replace, not a compare-and-swap" in err, err
        assert "atomic" not in err, err
        assert tc_prog_ids(net) == [original]
        assert "clsact" in ok([*in_ns(net), "tc", "qdisc", "show", "dev", iface]), "the user's qdisc was removed"
        assert_counted(original, sent)


@pytest.mark.kernel
def test_bpftool_loaded_and_attached_traced_by_its_pin(built: dict[str, Path], lives: list[Live]) -> None:
    pin = Path(f"/sys/fs/bpf/bpf_sdt_test_live_{os.getpid()}")
    with VethPair() as net:
        ok([tool("bpftool"), "prog", "load", str(built["live_xdp"]), str(pin), "type", "xdp"])
        try:
            ok([*in_ns(net), tool("bpftool"), "net", "attach", "xdp", "pinned", str(pin), "dev", net.receiver.iface])
            original = xdp_prog_id(net)
            sent, _ = traced_through_swap(net, built["live_xdp"], f"pin:{pin}", lives)
            assert xdp_prog_id(net) == original
            assert_counted(original, sent)
        finally:
            pin.unlink()


@pytest.mark.kernel
def test_libbpf_skeleton_loader_xdp_link_updated_and_back(built: dict[str, Path], lives: list[Live]) -> None:
    with VethPair() as net:
        loader = subprocess.Popen([*in_ns(net), str(built["xdp_loader"]), net.receiver.iface], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert loader.stdout is not None and loader.stdin is not None
            ready, prog_id, link_id = loader.stdout.readline().split()
            assert ready == "ready"
            sent, err = traced_through_swap(net, built["live_xdp"], f"xdp:{net.receiver.iface}", lives)
            assert f"xdp link {link_id}" in err, err
            assert xdp_prog_id(net) == int(prog_id)
            link_pin = Path(f"/sys/fs/bpf/bpf_sdt_test_link_{os.getpid()}")
            ok([tool("bpftool"), "link", "pin", "id", link_id, str(link_pin)])      # the same link, by its pin
            try:
                more, err = traced_through_swap(net, built["live_xdp"], f"pin:{link_pin}", lives)
            finally:
                link_pin.unlink()
            assert f"xdp link {link_id}" in err, err
            sent += more
            link = json.loads(ok([tool("bpftool"), "link", "show", "id", link_id, "-j"]))
            assert link["prog_id"] == int(prog_id)
            loader.stdin.close()
            report = dict(line.rsplit(" ", 1) for line in loader.stdout.read().splitlines())
        finally:
            if loader.poll() is None:
                loader.kill()
            loader.wait()
        assert int(report[f"path {PATH_UDP}"]) == sent and int(report["total"]) == sent, (report, sent)


@pytest.mark.kernel
def test_tcx_link_of_a_libbpf_loader_updated_and_back(built: dict[str, Path], lives: list[Live]) -> None:
    with VethPair() as net:
        loader = subprocess.Popen([*in_ns(net), str(built["tcx_loader"]), str(built["live_tc"]), net.receiver.iface],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert loader.stdout is not None and loader.stdin is not None
            ready, prog_id, link_id = loader.stdout.readline().split()
            assert ready == "ready", "the kernel refused a tcx link"
            sent, err = traced_through_swap(net, built["live_tc"], f"tc:{net.receiver.iface}:ingress", lives)
            assert f"tcx link {link_id}" in err, err
            link = json.loads(ok([tool("bpftool"), "link", "show", "id", link_id, "-j"]))
            assert link["prog_id"] == int(prog_id)
            assert_counted(int(prog_id), sent)
        finally:
            if loader.stdin is not None:
                loader.stdin.close()
            loader.wait(timeout=10)


@pytest.mark.kernel
def test_tail_call_target_traced_through_its_prog_array_slot(built: dict[str, Path], lives: list[Live]) -> None:
    pins = Path(f"/sys/fs/bpf/bpf_sdt_test_tail_{os.getpid()}")
    maps = Path(f"/sys/fs/bpf/bpf_sdt_test_tailmaps_{os.getpid()}")
    bpftool = tool("bpftool")
    with VethPair() as net:
        ok([bpftool, "prog", "loadall", str(built["live_tail"]), str(pins), "type", "xdp", "pinmaps", str(maps)])
        try:
            ok([bpftool, "map", "update", "pinned", str(maps / "jumps"), "key", "0", "0", "0", "0", "value",
                "pinned", str(pins / "live_target")])
            ok([*in_ns(net), bpftool, "net", "attach", "xdp", "pinned", str(pins / "live_entry"), "dev",
                net.receiver.iface])
            target = json.loads(ok([bpftool, "prog", "show", "pinned", str(pins / "live_target"), "-j"]))["id"]
            with Traffic(net) as traffic:
                time.sleep(SETTLE_S)
                live = Live(net, built["live_tail"], f"id:{target}")
                lives.append(live)
                live.wait_for(b"Ctrl-C to stop")
                live.wait_events(10)
                assert live.finish() == 0, live.err.decode()
                sent = traffic.stop()
            assert "slot 0 of prog_array jumps" in live.err.decode(), live.err.decode()
            assert "check-then-replace, not a compare-and-swap" in live.err.decode(), live.err.decode()
            assert {e["probe"] for e in live.events()} == {"tail_hit"}
            assert all(e["args"] == [UDP_FRAME] for e in live.events())
            slot = json.loads(ok([bpftool, "map", "lookup", "pinned", str(maps / "jumps"), "key", "0", "0", "0", "0",
                                  "-j"]))
            assert as_int(slot["value"]) == target
            assert u64_values(map_of(target, "tail_counts")) == [sent, 0]   # the slot was never empty
        finally:
            for pin_dir in (pins, maps):
                for entry in pin_dir.iterdir():
                    entry.unlink()
                pin_dir.rmdir()


# --- refusals, crashes, and the daemon -------------------------------------------------------------


@pytest.mark.kernel
def test_another_objects_program_is_refused_with_both_tags(built: dict[str, Path]) -> None:
    """OBJ built from another source (live_xdp_other.bpf.c): the same program
    name and maps, other code.  Refused naming both tags; nothing changes."""
    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        before = our_records()
        tag = json.loads(ok([tool("bpftool"), "prog", "show", "id", str(original), "-j"]))["tag"]
        res = run([*in_ns(net), *CLI, "trace", str(built["live_xdp_other"]), "--live", f"xdp:{net.receiver.iface}"])
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
        theirs = re.findall(r"tag ([0-9a-f]{16})", res.stderr)
        assert len(theirs) == 2 and theirs[0] == tag and theirs[1] != tag, res.stderr
        assert "nothing was swapped" in res.stderr and "live_xdp_other.bpf.o" in res.stderr, res.stderr
        assert xdp_prog_id(net) == original
        assert our_records() == before


@pytest.mark.kernel
def test_sigkill_then_restore_puts_the_original_back_and_a_second_live_is_refused(
        built: dict[str, Path], lives: list[Live]) -> None:
    with VethPair() as net:
        where = f"xdp:{net.receiver.iface}"
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        before = our_records()
        with Traffic(net) as traffic:
            live = Live(net, built["live_xdp"], where)
            lives.append(live)
            live.wait_for(b"Ctrl-C to stop")
            second = run([*in_ns(net), *CLI, "trace", str(built["live_xdp"]), "--live", where])
            assert second.returncode == 2 and "already being traced" in second.stderr, second.stderr
            live.finish(signal.SIGKILL)
            assert xdp_prog_id(net) not in (0, original), "the instrumented copy keeps running"
            stale = run([*in_ns(net), *CLI, "trace", str(built["live_xdp"]), "--live", where])
            assert stale.returncode == 2 and "run `bpf-sdt restore`" in stale.stderr, stale.stderr
            restored = run([*in_ns(net), *CLI, "restore", where])
            assert restored.returncode == 0, restored.stdout + restored.stderr
            assert "is back" in restored.stdout
            sent = traffic.stop()
        assert xdp_prog_id(net) == original
        assert our_records() == before, "bpf-sdt left pins behind"
        assert_counted(original, sent)


@pytest.mark.kernel
def test_a_program_the_daemon_put_there_meanwhile_stays_and_trace_exits_1(built: dict[str, Path],
                                                                         lives: list[Live]) -> None:
    with VethPair() as net:
        iface = net.receiver.iface
        ok([*in_ns(net), "ip", "link", "set", "dev", iface, "xdp", "obj", str(built["live_xdp"]), "sec", "xdp"])
        live = Live(net, built["live_xdp"], f"xdp:{iface}")
        lives.append(live)
        live.wait_for(b"Ctrl-C to stop")
        ok([*in_ns(net), "ip", "-force", "link", "set", "dev", iface, "xdp", "obj", str(built["live_xdp_other"]),
            "sec", "xdp"])
        theirs = xdp_prog_id(net)
        assert live.finish() == 1, live.err.decode()
        assert "another loader replaced it" in live.err.decode()
        assert xdp_prog_id(net) == theirs
        assert our_records() == []


@pytest.mark.kernel
def test_a_filter_the_daemon_replaced_meanwhile_stays_and_trace_exits_1(built: dict[str, Path],
                                                                        lives: list[Live]) -> None:
    """The cls_bpf path (check-then-replace): the daemon replaces the filter
    trace swapped (same priority and handle) while trace runs; trace finds
    the daemon's program, not its copy, and leaves it."""
    with VethPair() as net:
        iface = net.receiver.iface
        tc_filter_by_iproute2(net, built["live_tc"], "bpf", "da")
        [original] = tc_prog_ids(net)
        [shown] = [f for f in json.loads(ok([*in_ns(net), "tc", "-j", "filter", "show", "dev", iface, "ingress"]))
                   if "prog" in f.get("options", {})]
        live = Live(net, built["live_tc"], f"tc:{iface}:ingress")
        lives.append(live)
        live.wait_for(b"Ctrl-C to stop")
        ok([*in_ns(net), "tc", "filter", "replace", "dev", iface, "ingress", "pref", str(shown["pref"]),
            "handle", str(shown["options"]["handle"]), "bpf", "da", "obj", str(built["live_tc"]), "sec", "tc"])
        [theirs] = tc_prog_ids(net)
        assert theirs != original
        assert live.finish() == 1, live.err.decode()
        assert "another loader replaced it" in live.err.decode()
        assert tc_prog_ids(net) == [theirs]
        assert our_records() == []


STALE_RECORD = """
import sys
from bpf_sdt import kernel, records
key, where, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
hook = kernel.XdpNetlink(where.removeprefix("xdp:"), index, "native", 4, kernel.netns_inode())
records.create(records.Record(key=key, kind="live", where=where, hook=hook.to_dict(), state="swapped",
                              extra={"original_id": 1}))
"""


@pytest.mark.kernel
def test_a_restore_that_fails_keeps_the_record_and_exits_1(built: dict[str, Path]) -> None:
    """A killed trace's record whose interface is not where it was (moved to
    another namespace, or deleted: restore cannot tell): the record and the
    pin holding the original stay for another attempt."""
    from bpf_sdt import records

    key = f"bpf_sdt_test_restore_{os.getpid()}"
    where = f"xdp:sdtg{os.getpid()}"                # no such interface: restore selects the record by it
    ok([sys.executable, "-c", STALE_RECORD, key, where, str(2_000_000_000 + os.getpid())])
    try:
        ok([tool("bpftool"), "prog", "load", str(built["live_xdp"]), str(records.root() / key / "original"),
            "type", "xdp"])
        res = run([*CLI, "restore", where])
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stderr == "" and res.stdout.count("\n") == 1, res.stdout + res.stderr
        assert "not in its network namespace any more" in res.stdout and "record kept" in res.stdout, res.stdout
        assert sorted(p.name for p in (records.root() / key).iterdir()) == ["original", "record"]
    finally:
        records.remove(key)


RAW_TP = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(entered, __u64);
SEC("raw_tp/sys_enter") int on_enter(__u64 *ctx) { BPF_SDT_PROBE1(entered, ctx[1]); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.kernel
def test_tracing_programs_cannot_be_swapped(built: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "raw.bpf.c").write_text(RAW_TP)
    multiarch = ok([tool("gcc"), "-print-multiarch"]).strip()
    compile_bpf(tmp_path / "raw.bpf.c", tmp_path / "raw.bpf.o", clang(19), extra=(f"-I/usr/include/{multiarch}",))
    pin = Path(f"/sys/fs/bpf/bpf_sdt_test_rawtp_{os.getpid()}")
    ok([tool("bpftool"), "prog", "load", str(tmp_path / "raw.bpf.o"), str(pin)])
    try:
        res = run([*CLI, "trace", str(tmp_path / "raw.bpf.o"), "--live", f"pin:{pin}"])
    finally:
        pin.unlink()
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "raw_tracepoint" in res.stderr and "--run" in res.stderr and "--pinned" in res.stderr, res.stderr
    res = run([*CLI, "trace", str(built["live_xdp"]), "--live", "id:999999999"])
    assert res.returncode == 2 and "no such program" in res.stderr, res.stderr
    res = run([*CLI, "trace", str(built["live_xdp"]), "--live", "bogus"])
    assert res.returncode == 2 and "expected xdp:IFACE" in res.stderr, res.stderr
    res = run([*CLI, "trace", str(built["live_xdp"]), "--live", f"id:{2**32 + 1}"])
    assert res.returncode == 2 and "32 bits" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_a_program_id_beyond_32_bits_is_refused_not_truncated() -> None:
    from bpf_sdt.trace.live import parse_where

    from bpf_sdt.errors import UsageError

    assert parse_where("id:4294967295").target == "4294967295"
    for spec in ("id:4294967296", "id:4294990840", "id:0", "id:-1", "id:\u0661"):
        with pytest.raises(UsageError, match="program id"):
            parse_where(spec)


def test_instrumented_objects_and_identities_are_cached_by_everything_they_depend_on(built: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from bpf_sdt.trace import instcache
    from bpf_sdt.trace.runner import Options, cache_job, instrumented_copy
    from bpf_sdt.trace.runtime import StopSignals

    def fetch(job: instcache.Job, out: Path) -> instcache.Instrumented | None:
        """The cache's entry copied to ``out`` and its site table decoded, as a hit's load does."""
        entry = instcache.fetch_entry(job, out)
        return None if entry is None else entry.decode()

    monkeypatch.setenv("BPF_SDT_CACHE", str(tmp_path / "cache"))
    obj = tmp_path / "live_xdp.bpf.o"
    obj.write_bytes(built["live_xdp"].read_bytes())
    opts = Options(obj, probes=("udp_seen",))
    job, out = cache_job(opts, ("live_xdp",)), tmp_path / "out.bpf.o"
    assert fetch(job, out) is None
    with StopSignals() as stop:
        copy = instrumented_copy(opts, ("live_xdp",), out, stop)
        assert copy is not None and not copy.cached                 # instrumented, in the child
        made = copy.result()                                        # its site table read, its entry stored
    made_bytes = out.read_bytes()
    out.unlink()
    cached = fetch(job, out)
    assert cached == made and out.read_bytes() == made_bytes      # the object, its sites and site table
    assert [s.probe for s in cached.sites] and cached.sites[0].types and cached.sites[0].line
    assert fetch(cache_job(Options(obj, probes=("other",)), ("live_xdp",)), out) is None
    assert fetch(cache_job(Options(obj, probes=("udp_seen",), filters=("arg0 > 1",)), ("live_xdp",)),
                           out) is None
    where = instcache.cache_dir()
    assert where is not None and where.parent == tmp_path / "cache"
    entry = where / instcache.key(job)
    entry.chmod(0o770)                                              # others may write it: not read
    assert fetch(job, out) is None
    entry.chmod(0o700)
    assert fetch(job, out) == made
    obj.write_bytes(built["live_xdp_other"].read_bytes())             # another object at the same path
    assert fetch(job, out) is None
    assert instcache.known_tag(obj, "live_xdp") is None
    instcache.remember_tag(obj, "live_xdp", ("live_xdp", "xdp", "0123456789abcdef"))
    assert instcache.known_tag(obj, "live_xdp") == ("live_xdp", "xdp", "0123456789abcdef")
    # A tag stands in for the identity load: one that others may write, or in a
    # directory others may write, is not believed.
    [tag_file] = (where / instcache.TAGS_NAME).iterdir()
    tag_file.chmod(0o622)
    assert instcache.known_tag(obj, "live_xdp") is None
    tag_file.chmod(0o600)
    tag_file.parent.chmod(0o777)
    assert instcache.known_tag(obj, "live_xdp") is None
    tag_file.parent.chmod(0o700)
    assert instcache.known_tag(obj, "live_xdp") == ("live_xdp", "xdp", "0123456789abcdef")
    obj.write_bytes(built["live_xdp"].read_bytes())                   # other bytes: unknown
    assert instcache.known_tag(obj, "live_xdp") is None
    monkeypatch.setattr(instcache, "MAX_ENTRIES", 1)              # the least recently used go
    other = cache_job(Options(obj, probes=("other",)), ("live_xdp",))
    instcache.store(other, out, made)
    assert fetch(other, out) == made and fetch(job, out) is None
    monkeypatch.setenv("BPF_SDT_CACHE", "off")
    assert fetch(job, out) is None


@pytest.mark.kernel
def test_a_closed_stdout_ends_the_live_trace_and_puts_the_original_back(built: dict[str, Path]) -> None:
    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        read_end, write_end = os.pipe()
        proc = subprocess.Popen([*in_ns(net), *CLI, "trace", str(built["live_xdp"]), "--live",
                                 f"xdp:{net.receiver.iface}", "--json"], stdout=write_end, stderr=subprocess.PIPE,
                                env=_env())
        os.close(write_end)
        try:
            with Traffic(net) as traffic:
                assert os.read(read_end, 1), "no event"           # the first event is out: the copy runs
                os.close(read_end)                                # the reader leaves
                _, err = proc.communicate(timeout=30)
                sent = traffic.stop()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 141 and b"is back" in err, err.decode()
        assert xdp_prog_id(net) == original
        assert_counted(original, sent)


@pytest.mark.kernel
def test_a_closed_stderr_cannot_keep_the_copy_running_or_the_record(built: dict[str, Path]) -> None:
    """stderr's reader gone before trace writes a line: every message is
    lost, but the original goes back and the record goes."""
    with VethPair() as net:
        ok([*in_ns(net), "ip", "link", "set", "dev", net.receiver.iface, "xdp", "obj", str(built["live_xdp"]),
            "sec", "xdp"])
        original = xdp_prog_id(net)
        before = our_records()
        read_end, write_end = os.pipe()
        os.close(read_end)                                      # the reader left before the first line
        try:
            proc = subprocess.run([*in_ns(net), *CLI, "trace", str(built["live_xdp"]), "--live",
                                   f"xdp:{net.receiver.iface}", "--duration", "1"], stdout=subprocess.DEVNULL,
                                  stderr=write_end, env=_env(), timeout=120, check=False)
        finally:
            os.close(write_end)
        assert proc.returncode in (0, 141), proc.returncode
        assert xdp_prog_id(net) == original, "the instrumented copy still runs"
        assert our_records() == before, "the record was left"


@pytest.mark.kernel
def test_a_filter_that_is_not_direct_action_is_not_replaced(built: dict[str, Path]) -> None:
    with VethPair() as net:
        iface = net.receiver.iface
        tc_filter_by_iproute2(net, built["live_tc"], "protocol", "ip", "bpf")
        before = tc_prog_ids(net)
        res = run([*in_ns(net), *CLI, "trace", str(built["live_tc"]), "--live", f"tc:{iface}"])
        assert res.returncode == 2 and "non-direct-action filter for protocol ip" in res.stderr, res.stderr
        assert tc_prog_ids(net) == before


@pytest.mark.kernel
def test_a_filter_in_another_chain_is_refused_as_such(built: dict[str, Path]) -> None:
    with VethPair() as net:
        iface = net.receiver.iface
        tc_filter_by_iproute2(net, built["live_tc"], "chain", "1", "bpf", "da")
        before = tc_prog_ids(net)
        res = run([*in_ns(net), *CLI, "trace", str(built["live_tc"]), "--live", f"tc:{iface}"])
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "chain 1" in res.stderr and "chains other than 0 are not supported" in res.stderr, res.stderr
        assert tc_prog_ids(net) == before


LAYOUT_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#define S(s) printf("%s - %zu\n", #s, sizeof(struct s));
#define F(s, f) printf("%s %s %zu %zu\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f));
int main(void) {
	S(bpf_xdp_attach_opts) F(bpf_xdp_attach_opts, sz) F(bpf_xdp_attach_opts, old_prog_fd)
	S(bpf_xdp_query_opts) F(bpf_xdp_query_opts, sz) F(bpf_xdp_query_opts, prog_id)
	F(bpf_xdp_query_opts, drv_prog_id) F(bpf_xdp_query_opts, hw_prog_id) F(bpf_xdp_query_opts, skb_prog_id)
	F(bpf_xdp_query_opts, attach_mode)
	S(bpf_link_update_opts) F(bpf_link_update_opts, sz) F(bpf_link_update_opts, flags)
	F(bpf_link_update_opts, old_prog_fd)
	F(bpf_prog_info, type) F(bpf_prog_info, id) F(bpf_prog_info, tag) F(bpf_prog_info, nr_map_ids)
	F(bpf_prog_info, map_ids) F(bpf_prog_info, name) F(bpf_prog_info, ifindex)
	F(bpf_link_info, type) F(bpf_link_info, id) F(bpf_link_info, prog_id) F(bpf_link_info, xdp.ifindex)
	F(bpf_link_info, cgroup.attach_type)
	return 0;
}
"""


def test_struct_layouts_of_the_swap_calls_match_the_installed_headers(tmp_path: Path) -> None:
    """The opts structs of XDP query/replace and link update, and the
    kernel info prefixes read by bpf_sdt.kernel, as the C compiler sees them."""
    import ctypes

    from bpf_sdt import kernel, libbpf

    (tmp_path / "layout.c").write_text(LAYOUT_PROBE)
    res = run([tool("gcc"), "-Wall", "-Werror", str(tmp_path / "layout.c"), "-o", str(tmp_path / "layout")])
    assert res.returncode == 0, res.stderr
    ours: dict[str, Any] = {"bpf_xdp_attach_opts": libbpf._XdpAttachOpts, "bpf_xdp_query_opts": libbpf._XdpQueryOpts,
                            "bpf_link_update_opts": libbpf._LinkUpdateOpts, "bpf_prog_info": kernel._ProgInfo,
                            "bpf_link_info": kernel._LinkInfo}
    union = kernel._LinkInfo.union.offset
    checked = 0
    for line in run([str(tmp_path / "layout")]).stdout.splitlines():
        name, field, *numbers = line.split()
        cls = ours[name]
        if field == "-":
            assert ctypes.sizeof(cls) == int(numbers[0]), name
        elif "." in field:                      # a union member: the word kernel.link_info reads
            offset = int(numbers[0])
            word = {"xdp.ifindex": 0, "cgroup.attach_type": 2}[field]
            assert offset == union + 4 * word, f"{name}.{field}"
        else:
            desc = getattr(cls, field)
            assert (desc.offset, desc.size) == (int(numbers[0]), int(numbers[1])), f"{name}.{field}"
        checked += 1
    assert checked == 26          # 3 struct sizes + 23 fields



@pytest.mark.kernel
def test_an_object_that_fills_its_prog_array_itself_is_refused(built: dict[str, Path]) -> None:
    pins = Path(f"/sys/fs/bpf/bpf_sdt_test_tailinit_{os.getpid()}")
    maps = Path(f"/sys/fs/bpf/bpf_sdt_test_tailinitmaps_{os.getpid()}")   # a pinned prog_array keeps its slots
    bpftool = tool("bpftool")
    ok([bpftool, "prog", "loadall", str(built["live_tail_init"]), str(pins), "type", "xdp", "pinmaps", str(maps)])
    try:
        target = json.loads(ok([bpftool, "prog", "show", "pinned", str(pins / "live_target"), "-j"]))["id"]
        before = our_records()
        res = run([*CLI, "trace", str(built["live_tail_init"]), "--live", f"id:{target}"])
        assert res.returncode == 2 and "fills a prog_array itself" in res.stderr, res.stderr
        assert our_records() == before
        slot = json.loads(ok([bpftool, "map", "lookup", "pinned", str(maps / "jumps"), "key", "0", "0", "0", "0",
                              "-j"]))
        assert as_int(slot["value"]) == target
    finally:
        for pin_dir in (pins, maps):
            for entry in pin_dir.iterdir():
                entry.unlink()
            pin_dir.rmdir()

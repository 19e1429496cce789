"""What `bpf-sdt trace --tc` leaves in the kernel when it is killed, and
`bpf-sdt restore` removing exactly that (issue 17): the filter and its
program after a SIGKILL, the empty clsact qdisc of a trace killed while it
attached; two --tc traces on one hook; a foreign filter that runs first.
A qdisc trace did not create is never removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import VethPair
from test_live import CLI, Live, in_ns, ok, our_records
from test_live import built as built  # noqa: F401 - the module-scoped fixture, shared
from test_live import private_records as private_records  # noqa: F401 - autouse: this module's records root too
from toolchain import run

PORT = 40178


def tc_filters(net: VethPair) -> list[dict[str, object]]:
    shown = json.loads(ok([*in_ns(net), "tc", "-j", "filter", "show", "dev", net.receiver.iface, "ingress"]) or "[]")
    return [f for f in shown if "options" in f]


def has_clsact(net: VethPair) -> bool:
    return "clsact" in ok([*in_ns(net), "tc", "qdisc", "show", "dev", net.receiver.iface])


class TcTrace(Live):
    """`bpf-sdt trace OBJ --tc IFACE:ingress` in the receiver's namespace."""

    def __init__(self, net: VethPair, obj: Path) -> None:
        self.proc = subprocess.Popen([*in_ns(net), *CLI, "trace", str(obj), "--tc", f"{net.receiver.iface}:ingress",
                                      "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = b"", b""
        assert self.proc.stdout and self.proc.stderr
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)


@pytest.fixture
def traces() -> Iterator[list[Live]]:
    started: list[Live] = []
    yield started
    for t in started:
        t.kill()


@pytest.mark.kernel
def test_sigkilled_tc_trace_is_reported_refused_and_restored(built: dict[str, Path], traces: list[Live]) -> None:
    with VethPair() as net:
        before = our_records()
        trace = TcTrace(net, built["live_tc"])
        traces.append(trace)
        trace.wait_for(b"Ctrl-C to stop")
        [ours] = tc_filters(net)
        trace.finish(signal.SIGKILL)
        assert tc_filters(net) == [ours] and has_clsact(net), "SIGKILL cannot detach: the filter stays"
        again = run([*in_ns(net), *CLI, "trace", str(built["live_tc"]), "--tc", f"{net.receiver.iface}:ingress"])
        assert again.returncode == 2 and "run `bpf-sdt restore` first" in again.stderr, again.stderr
        elsewhere = run([*in_ns(net), *CLI, "trace", str(built["live_xdp"]), "--xdp", net.receiver.iface,
                         "--duration", "0.2"])
        assert elsewhere.returncode == 0, elsewhere.stderr
        assert f"tc:{net.receiver.iface}:ingress" in elsewhere.stderr and "run `bpf-sdt restore`" in elsewhere.stderr
        restored = run([*in_ns(net), *CLI, "restore", f"tc:{net.receiver.iface}"])
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert "filter" in restored.stdout and "clsact qdisc trace created removed" in restored.stdout
        assert tc_filters(net) == [] and not has_clsact(net)
        assert our_records() == before


@pytest.mark.kernel
def test_killed_while_attaching_leaves_an_empty_clsact_that_restore_removes(built: dict[str, Path]) -> None:
    """The state a SIGKILL between creating the qdisc and the filter leaves:
    a record saying trace creates the qdisc, the qdisc, no filter."""
    with VethPair() as net:
        before = our_records()
        killed = subprocess.run([*in_ns(net), sys.executable, "-c", KILLED_MID_ATTACH, net.receiver.iface],
                                capture_output=True, text=True, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert has_clsact(net) and tc_filters(net) == []
        restored = run([*in_ns(net), *CLI, "restore", f"tc:{net.receiver.iface}:ingress"])
        assert restored.returncode == 0 and "clsact qdisc trace created removed" in restored.stdout, restored.stdout
        assert not has_clsact(net) and our_records() == before


KILLED_MID_ATTACH = """
import os, signal, subprocess, sys
from bpf_sdt import kernel, records
from bpf_sdt.libbpf import ifindex
iface = sys.argv[1]
hook = kernel.ClsBpf(iface, ifindex(iface), "ingress", 0, 0, kernel.netns_inode())
records.create(records.Record(key=records.record_key("tc", hook.netns, hook.ifindex, "ingress"), kind="attach",
                              where=f"tc:{iface}:ingress", hook=hook.to_dict(), extra={"created_qdisc": True}))
subprocess.run(["tc", "qdisc", "add", "dev", iface, "clsact"], check=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.kernel
def test_a_second_tc_trace_is_refused_and_the_users_qdisc_stays(built: dict[str, Path], traces: list[Live]) -> None:
    with VethPair() as net:
        ok([*in_ns(net), "tc", "qdisc", "add", "dev", net.receiver.iface, "clsact"])      # the user's
        first = TcTrace(net, built["live_tc"])
        traces.append(first)
        first.wait_for(b"Ctrl-C to stop")
        second = run([*in_ns(net), *CLI, "trace", str(built["live_tc"]), "--tc", f"{net.receiver.iface}:ingress"])
        assert second.returncode == 2 and "another bpf-sdt trace" in second.stderr, second.stderr
        assert net.send_udp(3, PORT) == 3
        first.wait_events(3)
        assert first.finish() == 0, first.err.decode()
        assert tc_filters(net) == [] and has_clsact(net), "the user's qdisc must stay"


@pytest.mark.kernel
def test_a_foreign_filter_running_first_is_warned_about(built: dict[str, Path], traces: list[Live]) -> None:
    with VethPair() as net:
        iface = net.receiver.iface
        ok([*in_ns(net), "tc", "qdisc", "add", "dev", iface, "clsact"])
        ok([*in_ns(net), "tc", "filter", "add", "dev", iface, "ingress", "pref", "1", "bpf", "da", "obj",
            str(built["live_tc"]), "sec", "tc"])
        trace = TcTrace(net, built["live_tc"])
        traces.append(trace)
        trace.wait_for(b"Ctrl-C to stop")
        assert b"run before ours (priority 1 <" in trace.err, trace.err.decode()
        assert trace.finish() == 0
        assert len(tc_filters(net)) == 1 and has_clsact(net), "the foreign filter and qdisc stay"




def test_a_directory_without_a_record_is_stale_only_after_the_grace_period(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a trace's mkdir and its record pin the directory has no
    record: a concurrent restore must not take the lock away from it."""
    import io

    from bpf_sdt.trace.restore import restore

    from bpf_sdt import records

    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path))
    key = "xdp-1-2"
    (tmp_path / key).mkdir()
    assert records.starting(key) and list(records.stale()) == []
    out = io.StringIO()
    assert restore(None, out, io.StringIO()) == 0
    assert "left alone" in out.getvalue() and (tmp_path / key).is_dir(), out.getvalue()
    old = time.time() - records.STARTING_GRACE_S - 1
    os.utime(tmp_path / key, (old, old))
    assert not records.starting(key) and list(records.stale()) == [(key, None)]
    out = io.StringIO()
    assert restore(None, out, io.StringIO()) == 0
    assert "incomplete record" in out.getvalue() and not (tmp_path / key).exists(), out.getvalue()
    assert not records.starting(key)                    # gone: not starting either

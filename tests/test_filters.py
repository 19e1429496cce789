"""`trace --filter`: conditions compiled into the recorder, on test runs in the
real kernel.  A program of the test's own has a probe with one argument of
each kind (narrow signed, unsigned, enum, _Bool, pointer); for each filter the
events trace prints are exactly those the test computes from the packets, and
the recorder's own counters say the ring got only those (submitted) and the
rest were refused in the kernel (filtered).  Bad expressions: exit 2, a caret
under the error, and the names that exist."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_trace
from bpf_sdt.trace.filters import ExpressionError, Scope, compile_expression, split_probe
from bpf_sdt.trace.pcap import write_pcap
from test_trace import ETH_P_EXPERIMENTAL, _env, eth, json_lines
from toolchain import REPO, clang, compile_bpf

from bpf_sdt.argtype import ArgType
from bpf_sdt.errors import UsageError

built, kernel = test_trace.built, test_trace.kernel      # test_trace's fixtures, by name
CLI = [sys.executable, "-m", "bpf_sdt.cli"]
RED, GREEN, BLUE = 0, 1, 2
FILTER_PROBES = 6       # kinds0..kinds5: the same arguments, one filter each, all in one trace run
KINDS_SOURCE = r"""
#include "common.h"

enum color { RED, GREEN, BLUE };
#define KINDS(n) BPF_SDT_DECLARE5(kinds##n, signed char, __u16, enum color, _Bool, const void *)
KINDS(0); KINDS(1); KINDS(2); KINDS(3); KINDS(4); KINDS(5);
#define FIRE(n) BPF_SDT_PROBE5(kinds##n, (signed char)p[14], (__u16)(end - data), (enum color)(p[15] % 3), \
			       (_Bool)(p[16] & 1), p[17] ? data : (void *)0)

SEC("xdp")
int kinds_prog(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *p = data;

	if ((void *)(p + 18) > end)
		return XDP_PASS;
	FIRE(0); FIRE(1); FIRE(2); FIRE(3); FIRE(4); FIRE(5);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""
# (s8 byte, colour byte, bool byte, pointer byte, extra payload): lengths and values spread over every kind
PACKET_FIELDS = [(0x00, 0, 0, 0, 0), (0x7F, 1, 1, 1, 10), (0x80, 2, 0, 1, 30), (0xF0, 5, 1, 0, 50),
                 (0xFB, 4, 3, 9, 3), (0xFA, 3, 2, 0, 64), (0x05, 7, 1, 1, 90), (0xC0, 8, 0, 0, 1)]


def packet(s8: int, colour: int, flag: int, ptr: int, extra: int) -> bytes:
    return eth(ETH_P_EXPERIMENTAL, bytes([s8, colour, flag, ptr]) + bytes(extra))


PACKETS = [packet(*f) for f in PACKET_FIELDS]


def values(pkt: bytes) -> tuple[int, int, int, bool, bool]:
    """What the probe's arguments are for a packet: (s8, length, colour, flag, pointer is non-NULL)."""
    s8 = pkt[14] - 256 if pkt[14] > 127 else pkt[14]
    return s8, len(pkt), pkt[15] % 3, bool(pkt[16] & 1), pkt[17] != 0


FILTERS: dict[str, Callable[[tuple[int, int, int, bool, bool]], bool]] = {
    "arg0 < -5": lambda v: v[0] < -5,                                     # narrow signed
    "arg1 > 40": lambda v: v[1] > 40,                                     # unsigned
    "arg2 == BLUE": lambda v: v[2] == BLUE,                               # enum by name
    "!arg3": lambda v: not v[3],                                          # bool
    "arg4 != 0": lambda v: v[4],                                          # pointer compared with 0
    "arg0 < 0 && (arg2 == GREEN || arg1 >= 64 * 2 - 20)": lambda v: v[0] < 0 and (v[2] == GREEN or v[1] >= 108),
}


@pytest.fixture(scope="module")
def kinds(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("filters")
    (d / "kinds.bpf.c").write_text(KINDS_SOURCE)
    compile_bpf(d / "kinds.bpf.c", d / "kinds.bpf.o", clang(19), extra=("-I", str(built), "-I", str(REPO / "samples")))
    write_pcap(d / "in.pcap", PACKETS)
    return d


def trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "trace", *args], capture_output=True, text=True, env=_env(), timeout=120,
                          check=False)


def recorder_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    (line,) = [x for x in lines if x.get("type") == "recorder"]
    return line


@pytest.mark.kernel
def test_each_filter_passes_exactly_the_computed_events(kinds: Path, kernel: None) -> None:
    """kinds<i> gets the i-th filter; the recorder's counters cover all of them."""
    exprs = sorted(FILTERS)
    assert len(exprs) == FILTER_PROBES
    res = trace(str(kinds / "kinds.bpf.o"), "--run", "kinds_prog", "--pcap", str(kinds / "in.pcap"), "--json",
                *[a for i, e in enumerate(exprs) for a in ("--filter", f"kinds{i}:{e}")])
    assert res.returncode == 0, res.stderr
    lines = json_lines(res.stdout)
    submitted = 0
    for i, expr in enumerate(exprs):
        got = [tuple(e["args"]) for e in lines if e.get("probe") == f"kinds{i}"]
        want = [v for v in map(values, PACKETS) if FILTERS[expr](v)]
        assert 0 < len(want) < len(PACKETS), f"{expr}: a filter that passes all or nothing tests little"
        assert [(a[0], a[1], a[2], a[3], int(a[4], 16) != 0) for a in got] == want, \
            expr
        submitted += len(want)
    counters = recorder_line(lines)
    assert (counters["submitted"], counters["filtered"], counters["lost"]) == \
        (submitted, FILTER_PROBES * len(PACKETS) - submitted, 0)


@pytest.mark.kernel
def test_filters_on_one_probe_and_several_filters_and(built: Path, kernel: None, tmp_path: Path) -> None:
    """xdp_parser: the filter on `drop` leaves ipv4 and non_ip alone; two filters both hold."""
    pkts = [eth(0x0800, bytes(7)), eth(0x86DD, bytes(40)), eth(0x0800, bytes(5) + bytes([0x43]) + bytes(30))]
    write_pcap(tmp_path / "p.pcap", pkts)
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--pcap", str(tmp_path / "p.pcap"), "--json",
                "--filter", "drop:arg0 == DROP_SHORT_IP", "--filter", "drop:arg1 < 1000")
    assert res.returncode == 0, res.stderr
    events = [(e["probe"], e["args"]) for e in json_lines(res.stdout) if "probe" in e]
    assert events == [("drop", [2, len(pkts[0])]), ("non_ip", [0x86DD])]


# --- bad expressions: exit 2, a caret, before anything loads ---------------------------------

BAD = {
    "arg0 <": ("ends too early", 7),
    "arg0 +* 1": ("unexpected '*'", 7),
    "(arg0 == 1": ("ends too early", 11),
    "arg0 $ 1": ("unexpected character '$'", 6),
    "arg1 / 0": ("division by zero", 8),
    "arg1 << 64": ("shift by 64", 9),
}


def test_bad_expression_is_exit_2_with_a_caret(built: Path, tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKETS[0])
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                "--filter", "drop:arg0 +* 1")
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert res.stderr.splitlines() == ["bpf-sdt trace: --filter (probe drop): unexpected '*'",
                                       "    arg0 +* 1", "          ^"]


@pytest.mark.parametrize("expr", sorted(BAD))
def test_bad_expression_caret_columns(expr: str) -> None:
    words, column = BAD[expr]
    u32 = ArgType("__u32", "unsigned int", 4, False, "int")
    with pytest.raises(ExpressionError) as e:
        compile_expression(expr, Scope("p", (u32, u32)))
    assert words in str(e.value)
    assert e.value.extra_lines == (expr, " " * (column - 1) + "^")


def test_unknown_name_lists_what_exists(built: Path, tmp_path: Path) -> None:
    (tmp_path / "p.bin").write_bytes(PACKETS[0])
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                "--filter", "drop:arg0 == DROP_LATE")
    assert res.returncode == 2, res.stderr
    first = res.stderr.splitlines()[0]
    assert "unknown name DROP_LATE" in first and "arg0 (enum drop_reason), arg1 (__u32)" in first
    assert "DROP_SHORT_ETH, DROP_SHORT_IP, DROP_TTL" in first.replace("DROP_BAD_IHL, ", ""), first
    res = trace(str(built / "xdp_parser.bpf.o"), "--run", "xdp_parse", "--packet", str(tmp_path / "p.bin"),
                "--filter", "nosuch:arg0")
    assert res.returncode == 2 and "matches no traced probe" in res.stderr, res.stderr


def test_compiled_c_keeps_precedence_and_types_constants() -> None:
    u32 = ArgType("__u32", "unsigned int", 4, False, "int")
    scope = Scope("p", (u32, u32))
    assert compile_expression("arg0 + arg1 * 2 == 7 || !arg0", scope).c == \
        "(((arg0 + (arg1 * 2)) == 7) || (!arg0))"
    assert compile_expression("arg0 - 1 - 2", scope).c == "((arg0 - 1) - 2)"       # left-associative
    assert compile_expression("arg1 & 0xff ^ 0b1 | 3", scope).c == "(((arg1 & 255) ^ 1) | 3)"
    assert compile_expression("arg0 == 18446744073709551615", scope).c == "(arg0 == 18446744073709551615ULL)"
    assert compile_expression("arg1", scope).arg == 1
    with pytest.raises(UsageError, match="does not fit in 64 bits"):
        compile_expression("arg0 == 18446744073709551616", scope)
    assert split_probe("drop:arg0 == 1") == ("drop", "arg0 == 1")
    assert split_probe("arg0 == 1") == (None, "arg0 == 1")

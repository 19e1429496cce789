"""The public Python API, used only as docs/api.md documents it (`import
bpf_sdt` and the names in its __all__): a sample compiled by the real clang
is opened, its probes and typed sites listed, instrumented with the
recorder, and test-run in the kernel with packets whose probe values the
test computes; the API's view equals `bpf-sdt list --json`'s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from toolchain import bpf_permitted, clang, need, run, tool

import bpf_sdt

CLI = [sys.executable, "-m", "bpf_sdt.cli"]
XDP_DROP, XDP_PASS = 1, 2
SHORT, LONG = 1, 2          # enum verdict below
SHORT_BELOW = 100           # bytes: a shorter packet is dropped
SAMPLE = f"#define SHORT_BELOW {SHORT_BELOW}\n" + """#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

enum verdict { SHORT = 1, LONG = 2 };
BPF_SDT_DECLARE3(seen, enum verdict, __u32, _Bool);

SEC("xdp") int by_length(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;

	if (len < SHORT_BELOW) {
		BPF_SDT_PROBE3(seen, SHORT, len, 1);
		return XDP_DROP;
	}
	BPF_SDT_PROBE3(seen, LONG, len, 0);
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""
PACKET_SIZES = (60, 200, 14)


def _packet(size: int) -> bytes:
    """An Ethernet frame of `size` bytes (the program only looks at its length)."""
    return bytes(range(256))[:12] + b"\x08\x00" + bytes(size - 14)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("api")
    src, obj = out / "by_length.bpf.c", out / "by_length.bpf.o"
    src.write_text(SAMPLE)
    flags = run([*CLI, "cflags", "--system"]).stdout.split()
    res = run([clang(19), "-target", "bpf", "-O2", "-g", "-Wall", "-Wextra", "-Werror", *flags, "-c", str(src),
               "-o", str(obj)])
    assert res.returncode == 0, res.stderr
    return obj


def test_everything_documented_is_exported() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    for name in bpf_sdt.__all__:
        assert getattr(bpf_sdt, name) is not None
        assert f"`{name}" in doc, f"{name} is exported but docs/api.md does not document it"
    assert (Path(bpf_sdt.__file__).parent / "py.typed").is_file(), "typed for tools (PEP 561)"


def test_open_lists_probes_and_typed_sites_as_list_json_does(sample: Path) -> None:
    obj = bpf_sdt.open_object(sample)
    assert obj.ok and obj.findings == () and obj.undecoded == ()
    assert list(obj.probes) == ["seen"]
    probe = obj.probes["seen"]
    assert probe.types == ("enum verdict", "__u32", "_Bool")
    assert len(probe.sites) == 2 and probe.sites == obj.sites
    for site, verdict in zip(obj.sites, sorted((SHORT, LONG)), strict=True):
        first, length, flag = site.args
        assert (first.kind, first.type, first.value) == ("imm", "enum verdict", verdict)
        assert (length.kind, length.type) == ("reg", "__u32") and length.reg is not None
        assert (flag.kind, flag.type, flag.value) == ("imm", "_Bool", 1 if verdict == SHORT else 0)
        assert site.function == "by_length" and site.section == "xdp" and site.file == str(sample.parent / "by_length.bpf.c")
    listed = json.loads(run([*CLI, "list", "--json", str(sample)]).stdout)["objects"][0]["probes"]
    assert [(s["name"], s["offset"], s["insn"], s["line"], s["column"]) for s in listed] == \
        [(s.probe, s.offset, s.insn, s.line, s.column) for s in obj.sites]


def test_bad_input_is_one_error_not_a_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.o"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(bpf_sdt.BpfSdtError) as raised:
        bpf_sdt.open_object(junk)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


@pytest.mark.kernel
def test_instrument_then_trace_run_reads_the_events_the_packets_make(sample: Path, tmp_path: Path) -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    recorded = tmp_path / "by_length.rec.bpf.o"
    import bpf_sdt.instrument.commands  # noqa: F401  the stage's import must not hide the API's name
    done = bpf_sdt.instrument_object(sample, recorded, bpftool=tool("bpftool"))
    assert done.output == recorded and done.skipped == (), done
    assert [(s.probe, len(s.observers)) for s in done.sites] == [("seen", 1), ("seen", 1)], done
    assert all(s.observers for s in bpf_sdt.open_object(recorded).sites), "list shows what each site calls"

    result = bpf_sdt.trace_run(sample, "by_length", [_packet(n) for n in PACKET_SIZES])
    expected = [(SHORT, n, 1) if n < SHORT_BELOW else (LONG, n, 0) for n in PACKET_SIZES]
    assert [e.args for e in result.events] == expected, result
    assert all(e.probe == "seen" and e.function == "by_length" and e.line for e in result.events), result
    assert [e.enums for e in result.events] == [("SHORT" if v == SHORT else "LONG", None, None)
                                                for v, _, _ in expected], "enum arguments are named"
    assert [(r.run, r.prog, r.retval, r.events) for r in result.runs] == \
        [(i + 1, "by_length", XDP_DROP if n < SHORT_BELOW else XDP_PASS, 1) for i, n in enumerate(PACKET_SIZES)], \
        result
    assert result.lost == 0, result


@pytest.mark.kernel
def test_trace_run_failure_is_a_bpf_sdt_error(sample: Path) -> None:
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    with pytest.raises(bpf_sdt.BpfSdtError) as raised:
        bpf_sdt.trace_run(sample, "no_such_program", [_packet(60)])
    assert raised.value.exit_code == 2 and "no_such_program" in str(raised.value)


def test_the_package_import_stays_cheap() -> None:
    """`import bpf_sdt` (every command does) loads no API machinery."""
    code = "import sys, bpf_sdt; print(sorted(m for m in sys.modules if m.startswith('bpf_sdt')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['bpf_sdt']"

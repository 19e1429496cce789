"""Every compile-matrix probe (arity 0..12 x every argument kind), on every
clang and -mcpu, instrumented with the recorder, loaded into the kernel and
run: the recorder must get each argument's C value.

The matrix functions take their context from a pointer; here each is an XDP
program whose "context" is the packet, so BPF_PROG_TEST_RUN can feed it the
same random bytes the compile-matrix test feeds its emulator."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from matrix_src import CTX_DECL, CTX_SIZE, probes, random_ctx
from test_instrument import EVENT_HEAD, bpffs  # noqa: F401  (fixture)
from toolchain import REQUIRED_CLANGS, bpf_permitted, clang, clangs, compile_bpf, mcpus, need, tool

from bpf_sdt.elf import load_object
from bpf_sdt.insn import encode_sections
from bpf_sdt.notes import decode_notes
from bpf_sdt.probes import probe_types
from bpf_sdt.rewrite import decode_code
from bpf_sdt.sites import ordered_sites

PROBES = probes()
BY_NAME = {p.name: p for p in PROBES}
CLI = [sys.executable, "-m", "bpf_sdt.cli"]
# Addresses the kernel chooses (packet, map values): their values are not checked.
ADDRESS_KINDS = {"ptr", "const_ptr", "global_ptr", "global_addr_int"}
XDP_MD = "struct xdp_md { __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index; };\n"


def loadable_source() -> str:
    lines = ["#include <bpf_sdt.h>", '#define SEC(n) __attribute__((section(n), used))', CTX_DECL, XDP_MD]
    for p in PROBES:
        types = ", ".join(k.ctype for k in p.kinds)
        lines.append(f"BPF_SDT_DECLARE{len(p.kinds)}({p.name}{', ' if types else ''}{types});")
    for p in PROBES:
        args = ", ".join(k.expr for k in p.kinds)
        lines.append(f'SEC("xdp") int {p.function}(struct xdp_md *x)\n{{\n'
                     "\tstruct mctx *c = (void *)(long)x->data;\n\n"
                     "\tif ((void *)(c + 1) > (void *)(long)x->data_end)\n\t\treturn 0;\n"
                     f"\tBPF_SDT_PROBE{len(p.kinds)}({p.name}{', ' if args else ''}{args});\n"
                     "\treturn c->i & 3;\n}")
    lines.append('char LICENSE[] SEC("license") = "GPL";')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def loadable_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.bpf.c"
    path.write_text(loadable_source())
    return path


def _configs() -> list[tuple[int, str, str]]:
    versions = sorted(set(clangs()) | set(REQUIRED_CLANGS))
    return [(v, cpu, opt) for v in versions for cpu in mcpus(v) for opt in ("-O1", "-O2")]


@pytest.mark.slow
@pytest.mark.parametrize("version,mcpu,opt", _configs(), ids=lambda v: str(v).lstrip("-"))
def test_matrix_instruments_loads_and_records_every_value(version: int, mcpu: str, opt: str,
                                                          loadable_c: Path, tmp_path: Path,
                                                          bpffs: Path) -> None:  # noqa: F811
    need(bpf_permitted(), "bpf() not permitted (needs root)")
    tool("bpftool")
    from bpf_sdt.libbpf import LoadedObject, RingBuffer

    obj = tmp_path / "m.o"
    compile_bpf(loadable_c, obj, clang(version), mcpu=mcpu, opt=opt)
    original = load_object(obj)
    encoded, _ = encode_sections(decode_code(original), original.symbols)
    for idx, enc in encoded.items():      # the instruction model's round trip is exact
        assert enc.data == original.section_data(original.sections[idx])
    out = tmp_path / "m.instr.o"
    res = subprocess.run([*CLI, "instrument", str(obj), "-o", str(out)], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0, res.stderr
    elf = load_object(out)
    sites = ordered_sites(decode_notes(elf))
    types = probe_types(elf.btf)
    ctx, fields = random_ctx(version * 100 + len(mcpu + opt))
    packet = ctx + bytes(max(0, 64 - CTX_SIZE))
    events: list[bytes] = []
    with LoadedObject.open(out, pin_root_path=bpffs) as o:
        o.load()
        for p in PROBES:
            assert o.find_program(p.function).test_run(packet).retval == fields["i"] & 3, p.name
        with RingBuffer(o.find_map("bpf_sdt_events"), events.append) as rb:
            rb.consume()
    assert len(events) == len(PROBES)
    for raw, p in zip(events, PROBES, strict=True):
        _ts, site, _cpu = EVENT_HEAD.unpack_from(raw)
        assert sites[site].probe == p.name
        words = struct.unpack_from(f"<{len(p.kinds)}Q", raw, EVENT_HEAD.size)
        for k, (kind, t, word) in enumerate(zip(p.kinds, types[p.name], words, strict=True), 1):
            if kind.name in ADDRESS_KINDS:
                continue
            mask = (1 << (8 * kind.size)) - 1
            assert t.convert(word) & mask == kind.value(fields) & mask, f"{p.name} arg {k} ({kind.name})"
            assert t.convert(word) == word - (1 << 64) * (word >> 63 and t.signed), \
                f"{p.name} arg {k} ({kind.name}): the observer gets the converted value"

"""bpf-sdt benchmarks, each measured side by side in one run.

1. Code cost: instructions a probe site adds to a program, against the same
   program with -DBPF_SDT_DISABLE, for three encodings:
     probes  this header (clang: registers/immediates for 1..10, and for
             11..12 while immediates leave registers free, else stack/imm)
     rfc     -DBPF_SDT_STRICT, the RFC's "r"-only encoding (<= 5 args)
     floor   each probe replaced by an empty asm that only forces its values
             into registers or immediates ("ri"), plus one NOP
2. check / list --json on an object with 10,000 sites, against
   `llvm-readelf -r -s` on the same object.
3. lint over 200 generated sources against `clang -fsyntax-only` (all cores),
   and the cached re-run.
4. sweep12: code cost of generated XDP and tc programs with 12-argument sites
   (ctx and packet fields, arithmetic, constants at random positions) against
   the floor, under clang 14 and 19, split by the immediates per site.
2 and 3 time the CLI of a regular `pip install .` into a fresh venv, not the
editable dev install (see installed_cli).

    .venv/bin/python bench/run.py [--only code|check|lint|sweep12]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HEADERS = REPO / "headers"
SAMPLES = REPO / "samples"
CLANG = shutil.which("clang-19") or "clang"

sys.path.insert(0, str(REPO))

FLOOR_HEADER = """/* Benchmark floor: the real declarations, but each probe is an empty asm that
 * forces its (converted) values into registers or immediates, plus one NOP. */
#include_next <bpf_sdt.h>
{undefs}
{defines}
"""


def floor_header(out: Path) -> Path:
    d = out / "floor"
    d.mkdir(parents=True, exist_ok=True)
    undefs, defines = [], []
    for n in range(13):
        args = "".join(f", a{k}" for k in range(1, n + 1))
        values = " ".join(f"__BPF_SDT_ARG_T(name, {k}) __f{k} = (a{k});" for k in range(1, n + 1))
        ops = ", ".join(f'"ri"(__f{k})' for k in range(1, n + 1))
        undefs.append(f"#undef BPF_SDT_PROBE{n}")
        defines.append(f"#define BPF_SDT_PROBE{n}(name{args}) do {{ {values} "
                       f'__asm__ __volatile__("goto +0" :{": " + ops if n else ":"}); }} while (0)')
    (d / "bpf_sdt.h").write_text(FLOOR_HEADER.format(undefs="\n".join(undefs),
                                                      defines="\n".join(defines)))
    return d


# --- 1. code cost ------------------------------------------------------------

MIXED = """#include <bpf_sdt.h>
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64;
struct pkt { __u32 len; __u16 proto; __u8 ttl; __u8 flags; __u64 ts; __u32 saddr, daddr; };
BPF_SDT_DECLARE2(rx, __u32, __u16); BPF_SDT_DECLARE3(hdr, __u8, __u8, const struct pkt *);
BPF_SDT_DECLARE1(ts, __u64); BPF_SDT_DECLARE4(addr, __u32, __u32, int, long);
BPF_SDT_DECLARE2(verdict, int, __u32); BPF_SDT_DECLARE5(five, __u32, __u16, __u8, __u64, int);
BPF_SDT_DECLARE(mark);
__attribute__((noinline)) int handle(struct pkt *p, int i)
{
	int v = 0;
	BPF_SDT_PROBE(mark);
	BPF_SDT_PROBE2(rx, p->len, p->proto);
	BPF_SDT_PROBE3(hdr, p->ttl, p->flags, p);
	if (p->ttl < 2) { BPF_SDT_PROBE2(verdict, -1, p->len); return -1; }
	BPF_SDT_PROBE1(ts, p->ts);
	BPF_SDT_PROBE4(addr, p->saddr, p->daddr, i, 7);
	if (p->flags & 1) { v = 1; BPF_SDT_PROBE2(verdict, 1, p->len); }
	else if (p->flags & 2) { v = 2; BPF_SDT_PROBE2(verdict, 2, p->saddr); }
	BPF_SDT_PROBE5(five, p->len, p->proto, p->ttl, p->ts, i);
	for (int k = 0; k < 4; k++) BPF_SDT_PROBE2(rx, p->len + k, (__u16)k);
	BPF_SDT_PROBE2(verdict, v, p->daddr);
	BPF_SDT_PROBE3(hdr, p->ttl, 3, p);
	BPF_SDT_PROBE1(ts, p->ts + p->len);
	BPF_SDT_PROBE4(addr, p->daddr, p->saddr, v, i);
	return v + (int)p->len;
}
"""
CONSTANT = """#include <bpf_sdt.h>
BPF_SDT_DECLARE3(c3, int, long, unsigned char); BPF_SDT_DECLARE8(c8, int, int, int, int, int, int, int, long);
BPF_SDT_DECLARE12(c12, int, int, int, int, int, int, int, int, int, int, int, long);
BPF_SDT_DECLARE(c0);
int f(int *ctx)
{
	BPF_SDT_PROBE3(c3, 1, -2, 255);
	BPF_SDT_PROBE8(c8, 1, 2, 3, 4, 5, 6, 7, -8);
	BPF_SDT_PROBE(c0);
	BPF_SDT_PROBE12(c12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0x7fffffff);
	BPF_SDT_PROBE3(c3, 4, 5, 6);
	return *ctx;
}
"""

# Issue 10: 12-argument probes whose arguments are computed from ctx and packet
# fields with constants among them.  Slots for 11..12 cost one store each over
# the floor (+3 here); now each site is at the floor, since its constants leave
# registers for arguments 11 and 12.
CTX12 = """#include <bpf_sdt.h>
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
struct xdp_md { __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
struct hdr {	/* an IPv4 header behind a 2-byte tag, naturally aligned */
	__u16 proto; __u8 vihl, tos; __u16 tot_len, id, frag; __u8 ttl, protocol; __u16 csum;
	__u32 saddr, daddr;
};
BPF_SDT_DECLARE12(pkt, __u32, __u32, __u16, __u8, __u8, int, __u32, __u32, __u16, long, __u32, __u16);
__attribute__((section("xdp"), used)) int rx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct hdr *h = data;

	if ((void *)(h + 1) > end)
		return 2;
	/* constants among 1..10, argument 12 computed */
	BPF_SDT_PROBE12(pkt, h->saddr, h->daddr, h->tot_len, h->ttl, 4, 0, ctx->ingress_ifindex,
			6, 0, end - data, 1, h->id);
	if (h->ttl <= 1) {
		/* arguments 11 and 12 computed */
		BPF_SDT_PROBE12(pkt, h->saddr, 7, h->tot_len, 0, 17, -1, ctx->ingress_ifindex, 0,
				h->id, 64, ctx->egress_ifindex * 3, h->frag);
		return 1;
	}
	return 2;
}
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


# Matrix kinds the "ri" floor cannot express: clang crashes on a symbol address
# under "i", and "i" truncates a 64-bit constant outside s32 (wrong, but cheap).
FLOOR_CANNOT = {"global_ptr", "global_addr_int", "const_wide", "const_ptr_wide"}


def matrix_program(tmp: Path) -> Path:
    """The compile matrix's source (tests/matrix_src.py): one function per
    arity 0..10 and rotation of the argument kinds, each with one probe."""
    sys.path.insert(0, str(REPO / "tests"))
    from matrix_src import KINDS, probes, source

    path = tmp / "matrix.bpf.c"
    path.write_text(source(probes(10, [k for k in KINDS if k.name not in FLOOR_CANNOT])))
    return path


def code_size(obj: Path) -> int:
    from bpf_sdt.elf import load_object

    o = load_object(obj)
    return sum(s.size for s in o.sections if s.executable) // 8


def sites_in(obj: Path) -> int:
    from bpf_sdt.postlink.check import analyze

    from bpf_sdt.elf import load_object

    return len(analyze(load_object(obj)).sites)


def compile_variant(src: Path, out: Path, variant: str, floor: Path, extra: list[str],
                    clang: str = CLANG) -> Path | None:
    inc = [f"-I{floor}", f"-I{HEADERS}"] if variant == "floor" else [f"-I{HEADERS}"]
    defines = {"probes": [], "floor": [], "rfc": ["-DBPF_SDT_STRICT"],
               "off": ["-DBPF_SDT_DISABLE"]}[variant]
    res = subprocess.run([clang, "-target", "bpf", "-O2", "-g", "-mcpu=v3", *inc, *defines, *extra,
                          "-Wno-unused-parameter", "-c", str(src), "-o", str(out)],
                         capture_output=True, text=True, check=False)
    return out if res.returncode == 0 else None


def bench_code(tmp: Path) -> list[str]:
    floor = floor_header(tmp)
    vmlinux = tmp / "vmlinux.h"
    if Path("/sys/kernel/btf/vmlinux").exists():
        with vmlinux.open("w") as f:
            subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                           stdout=f, check=True)
    else:
        subprocess.run(f"xz -dc {SAMPLES}/vmlinux/vmlinux-6.18.h.xz > {vmlinux}", shell=True, check=True)
    (tmp / "mixed.bpf.c").write_text(MIXED)
    (tmp / "constant.bpf.c").write_text(CONSTANT)
    (tmp / "ctx12.bpf.c").write_text(CTX12)
    programs = [tmp / "mixed.bpf.c", tmp / "constant.bpf.c", tmp / "ctx12.bpf.c", matrix_program(tmp),
                *sorted(SAMPLES.glob("*.bpf.c"))]
    rows = ["| program | sites | insns without probes | + probes | + RFC strict | + floor "
            "| per site: probes / RFC / floor |", "|---|---|---|---|---|---|---|"]
    totals = {"probes": 0, "rfc": 0, "floor": 0, "sites": 0, "rfc_sites": 0}
    for src in programs:
        extra = [f"-I{tmp}", f"-I{SAMPLES}"]
        sizes: dict[str, int | None] = {}
        for variant in ("off", "probes", "rfc", "floor"):
            obj = compile_variant(src, tmp / f"{src.stem}.{variant}.o", variant, floor, extra)
            sizes[variant] = code_size(obj) if obj else None
        n = sites_in(tmp / f"{src.stem}.probes.o")
        base = sizes["off"]
        assert base is not None and sizes["probes"] is not None and sizes["floor"] is not None, src

        def delta(v: str, base: int = base, sizes: dict[str, int | None] = sizes) -> str:
            s = sizes[v]
            return "n/a (>5 args)" if s is None else f"+{s - base}"

        def per(v: str, n: int = n, base: int = base, sizes: dict[str, int | None] = sizes) -> str:
            s = sizes[v]
            return "n/a" if s is None or not n else f"{(s - base) / n:.2f}"

        rows.append(f"| {src.name} | {n} | {base} | {delta('probes')} | {delta('rfc')} | {delta('floor')} "
                    f"| {per('probes')} / {per('rfc')} / {per('floor')} |")
        totals["probes"] += sizes["probes"] - base
        totals["floor"] += sizes["floor"] - base
        totals["sites"] += n
        if sizes["rfc"] is not None:
            totals["rfc"] += sizes["rfc"] - base
            totals["rfc_sites"] += n
    rows.append(f"\nall programs: probes +{totals['probes']} insns for {totals['sites']} sites, floor "
                f"+{totals['floor']}; RFC strict +{totals['rfc']} for the {totals['rfc_sites']} sites it "
                "can express")
    return rows


def installed_cli(tmp: Path) -> str:
    """bpf-sdt installed the way users get it: `pip install .` into a fresh venv.
    The dev venv's editable install would add its import finder (about 20 ms
    per start here) and, under PYTHONDONTWRITEBYTECODE, recompile every module
    on every run; neither is what a user's `bpf-sdt` pays."""
    venv = tmp / "venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
                       check=True)
    return str(venv / "bin" / "bpf-sdt")


# --- 4. 12-argument sweep -----------------------------------------------------

SWEEP_PRELUDE = """#include <bpf_sdt.h>
typedef unsigned char __u8; typedef unsigned short __u16; typedef unsigned int __u32;
typedef unsigned long long __u64;
struct xdp_md { __u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
struct skb {
	__u32 len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto;
	__u32 priority, ingress_ifindex, ifindex, tc_index, cb[5], hash;
};
struct hdr {
	__u16 proto; __u8 vihl, tos; __u16 tot_len, id, frag; __u8 ttl, protocol; __u16 csum;
	__u32 saddr, daddr;
};
BPF_SDT_DECLARE12(p, {types});
"""
# One site after a bounds check, the packet pointer live after it.
SWEEP_XDP = """__attribute__((section("xdp"), used)) int rx(struct xdp_md *ctx)
{{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	struct hdr *h = data;

	if ((void *)(h + 1) > end)
		return 2;
	BPF_SDT_PROBE12(p, {a});
	return h->ttl > 1 ? 2 : 1;
}}
"""
# Two sites in the arms of a branch, ctx and a local live across them.
SWEEP_TC = """__attribute__((section("tc"), used)) int cls(struct skb *skb)
{{
	int i = skb->len & 7;

	if (skb->mark == 3) {{
		BPF_SDT_PROBE12(p, {a});
		i += skb->priority;
	}} else {{
		BPF_SDT_PROBE12(p, {b});
	}}
	return skb->hash + i > 9 ? 0 : 2;
}}
"""
SWEEP_VALUES = {
    "xdp": ["end - data", "ctx->ingress_ifindex", "ctx->rx_queue_index", "ctx->data_meta",
            "ctx->egress_ifindex", "ctx->ingress_ifindex * 3", "ctx->rx_queue_index + 1", "(end - data) >> 1",
            "h->proto", "h->saddr", "h->daddr", "h->ttl", "h->protocol", "h->tot_len", "h->saddr ^ h->daddr",
            "(long)h", "h->id", "h->frag"],
    "tc": ["skb->len", "skb->mark", "skb->protocol", "skb->priority", "skb->ifindex", "skb->hash",
           "skb->tc_index", "skb->len - skb->vlan_tci", "skb->mark & 0xff", "skb->vlan_tci", "skb->queue_mapping",
           "skb->hash >> 3", "(long)skb", "skb->cb[0]", "skb->cb[1] + skb->cb[2]", "i"],
}
# All fit the immediate at every declared type (no 8-byte constant beyond s32).
SWEEP_CONSTANTS = ["0", "1", "-1", "42", "7L", "255", "-8", "0x7fffffff"]
SWEEP_TYPES = ["__u32", "__u64", "long", "int", "__u16", "__u8"]
SWEEP_PROGRAMS = 60         # per shape and compiler
SWEEP_CONST_SHARE = (0.35, 0.2)   # chance that an argument is a constant, alternating by program
SWEEP_CLANGS = ("clang-14", "clang-19")


def sweep_site(rng: random.Random, shape: str, share: float) -> tuple[str, int]:
    """A site's argument list and how many of its arguments are constants."""
    constant = [rng.random() < share for _ in range(12)]
    args = [rng.choice(SWEEP_CONSTANTS) if c else rng.choice(SWEEP_VALUES[shape]) for c in constant]
    return ", ".join(args), sum(constant)


def sweep_program(rng: random.Random, shape: str, share: float) -> tuple[str, int]:
    """Source of one program and the fewest constants among its sites."""
    types = ", ".join(rng.choice(SWEEP_TYPES) for _ in range(12))
    a, na = sweep_site(rng, shape, share)
    if shape == "xdp":
        return SWEEP_PRELUDE.replace("{types}", types) + SWEEP_XDP.format(a=a), na
    b, nb = sweep_site(rng, shape, share)
    return SWEEP_PRELUDE.replace("{types}", types) + SWEEP_TC.format(a=a, b=b), min(na, nb)


def bench_sweep12(tmp: Path) -> list[str]:
    floor = floor_header(tmp)
    rows = ["| clang | sites with | programs | at the floor | above (insns) | below (insns) "
            "| floor fails |", "|---|---|---|---|---|---|---|"]
    totals = {"probes": 0, "floor": 0}
    for cc in SWEEP_CLANGS:
        clang = shutil.which(cc)
        if clang is None:
            rows.append(f"| {cc} | not installed | | | | | |")
            continue
        rng = random.Random(12)     # the same programs for every compiler and every run
        groups: dict[str, list[int]] = {"all >= 2 immediates": [], "some <= 1 immediate": []}
        fails = {name: 0 for name in groups}
        for i in range(SWEEP_PROGRAMS):
            for shape in ("xdp", "tc"):
                text, fewest = sweep_program(rng, shape, SWEEP_CONST_SHARE[i % 2])
                group = "all >= 2 immediates" if fewest >= 2 else "some <= 1 immediate"
                src = tmp / f"sweep-{cc}-{shape}-{i}.bpf.c"
                src.write_text(text)
                objs = {v: compile_variant(src, tmp / f"{src.stem}.{v}.o", v, floor, [], clang=clang)
                        for v in ("probes", "floor")}
                if objs["floor"] is None:   # more than ten values in registers
                    fails[group] += 1
                    continue
                assert objs["probes"] is not None, src
                probes, base = code_size(objs["probes"]), code_size(objs["floor"])
                groups[group].append(probes - base)
                totals["probes"] += probes
                totals["floor"] += base
        for name, diffs in groups.items():
            above = [d for d in diffs if d > 0]
            below = [d for d in diffs if d < 0]
            rows.append(f"| {cc} | {name} | {len(diffs)} | {diffs.count(0)} | {len(above)} (+{sum(above)}) "
                        f"| {len(below)} ({sum(below)}) | {fails[name]} |")
    rows.append(f"\nall swept programs: probes {totals['probes']} insns, floor {totals['floor']}")
    return rows


# --- 2. check / list speed ----------------------------------------------------

def many_sites_object(tmp: Path, n: int = 10_000) -> Path:
    per_func = 100
    decls = "BPF_SDT_DECLARE2(hot, int, long);\nBPF_SDT_DECLARE7(wide, int, int, int, int, int, int, long);\n"
    funcs = []
    for f in range(n // per_func):
        body = "\n".join(
            f"BPF_SDT_PROBE2(hot, c[{i % 8}], {i});" if i % 3 else
            f"BPF_SDT_PROBE7(wide, c[0], c[1], c[2], c[3], c[4], c[5], {i});"
            for i in range(per_func))
        funcs.append(f"__attribute__((noinline)) int f{f}(int *c) {{\n{body}\nreturn c[0]; }}")
    src = tmp / "many.bpf.c"
    src.write_text("#include <bpf_sdt.h>\n" + decls + "\n".join(funcs) + "\n")
    obj = tmp / "many.bpf.o"
    subprocess.run([CLANG, "-target", "bpf", "-O2", "-g", f"-I{HEADERS}", "-c", str(src), "-o", str(obj)],
                   check=True)
    return obj


def timed_side_by_side(jobs: dict[str, Callable[[], object]], runs: int = 15) -> dict[str, tuple[float, float]]:
    """(fastest, median) wall time of each job, run in interleaved rounds so
    that load on a shared machine falls on all of them alike.  The fastest run
    is the least disturbed one; ratios are taken on it."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(runs):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def command(cmd: list[str], **kw: Any) -> Callable[[], object]:
    return lambda: subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, **kw)


def timing_row(label: str, t: tuple[float, float], base: float | None = None, width: int = 20) -> str:
    ratio = f"   {t[0] / base:.2f}x" if base else ""
    return f"  {label:<{width}} {t[0] * 1000:7.1f} ms  (median {t[1] * 1000:6.1f}){ratio}"


def bench_check(tmp: Path) -> list[str]:
    obj = many_sites_object(tmp)
    readelf = shutil.which("llvm-readelf-19") or shutil.which("llvm-readelf") or "llvm-readelf"
    sdt = installed_cli(tmp)
    n = sites_in(obj)
    t = timed_side_by_side({"readelf": command([readelf, "-r", "-s", str(obj)]),
                            "check": command([sdt, "check", str(obj)]),
                            "list": command([sdt, "list", "--json", str(obj)])})
    base = t["readelf"][0]
    return [f"object with {n} sites ({obj.stat().st_size // 1024} KiB), 15 interleaved runs, fastest:",
            timing_row("llvm-readelf -r -s", t["readelf"], base), timing_row("bpf-sdt check", t["check"], base),
            timing_row("bpf-sdt list --json", t["list"], base)]


# --- 3. lint speed -------------------------------------------------------------

def bench_lint(tmp: Path) -> list[str]:
    src_dir = tmp / "lint"
    src_dir.mkdir()
    for i in range(200):
        body = "\n".join(f"\tBPF_SDT_PROBE2(p{i}_{k}, c[{k}], {k});" for k in range(8))
        decls = "\n".join(f"BPF_SDT_DECLARE2(p{i}_{k}, int, long);" for k in range(8))
        (src_dir / f"s{i}.bpf.c").write_text(
            f"#include <bpf_sdt.h>\n{decls}\nint f{i}(int *c)\n{{\n{body}\n\treturn 0;\n}}\n")
    files = sorted(map(str, src_dir.glob("*.bpf.c")))
    jobs = os.cpu_count() or 1
    clang_cmd = ["xargs", "-P", str(jobs), "-n", "25", CLANG, "-target", "bpf", "-fsyntax-only",
                 f"-I{HEADERS}"]

    cache = tmp / "lint-cache"
    env = dict(os.environ, BPF_SDT_CACHE_DIR=str(cache))
    lint = command([installed_cli(tmp), "lint", *files, "--", f"-I{HEADERS}"], env=env)

    def cold() -> None:
        shutil.rmtree(cache, ignore_errors=True)
        lint()

    t = timed_side_by_side({"clang": command(clang_cmd, input="\n".join(files).encode()), "cold": cold}, runs=5)
    lint()
    warm = timed_side_by_side({"warm": lint})["warm"]
    return [f"200 sources, {jobs} cores, 5 interleaved runs (warm: 15), fastest:",
            timing_row(f"clang -fsyntax-only (xargs -P{jobs})", t["clang"], t["clang"][0], 34),
            timing_row("bpf-sdt lint, cold cache", t["cold"], t["clang"][0], 34),
            timing_row("bpf-sdt lint, warm cache", warm, None, 34)
            + f"   {warm[0] / 2 * 1000:.1f} ms per 100 files (median {warm[1] / 2 * 1000:.1f})"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("code", "check", "lint", "sweep12"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bpf-sdt-bench-") as t:
        tmp = Path(t)
        for name, fn in (("code", bench_code), ("check", bench_check), ("lint", bench_lint),
                         ("sweep12", bench_sweep12)):
            if args.only in (None, name):
                print(f"\n## {name}\n")
                print("\n".join(fn(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

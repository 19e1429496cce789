// SPDX-License-Identifier: GPL-2.0
/* A prog_array that the object fills itself (`values = { ... }`): libbpf
 * writes its slots at every load, so trace --live refuses to load a copy
 * sharing it (tests/test_live.py). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>
BPF_SDT_DECLARE1(tail_hit, __u32);
SEC("xdp") int live_target(struct xdp_md *ctx) { BPF_SDT_PROBE1(tail_hit, ctx->data_end - ctx->data); return XDP_PASS; }
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, int (void *));
} jumps SEC(".maps") = { .values = { [0] = (void *)&live_target } };
SEC("xdp") int live_entry(struct xdp_md *ctx) { bpf_tail_call(ctx, &jumps, 0); return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* A tail-call target for tests/test_live.py: live_entry (attached to XDP)
 * jumps through slot 0 of `jumps` to live_target, which counts packets
 * and has the probe.  trace --live id:N swaps live_target's slot. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

BPF_SDT_DECLARE1(tail_hit, __u32);	/* packet length */

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} jumps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} tail_counts SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&tail_counts, &slot);

	if (n)
		__sync_fetch_and_add(n, 1);
}

SEC("xdp")
int live_target(struct xdp_md *ctx)
{
	BPF_SDT_PROBE1(tail_hit, ctx->data_end - ctx->data);
	count(0);
	return XDP_PASS;
}

SEC("xdp")
int live_entry(struct xdp_md *ctx)
{
	bpf_tail_call(ctx, &jumps, 0);
	count(1);		/* the slot was empty */
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Another "production" XDP program for the live-swap tests
 * (tests/test_live.py), from another source than live_xdp.bpf.c: the same
 * program name and the same maps (path_counts, .bss total), so that only
 * the kernel tag tells them apart, but other code: it passes everything
 * and counts packets by size class.  trace --live given this object for a
 * running live_xdp must refuse with both tags; the daemon tests load it as
 * the daemon's replacement. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

enum size_class { SIZE_TINY, SIZE_SMALL, SIZE_LARGE, SIZE_HUGE, SIZES };

#define TINY_BYTES 64
#define SMALL_BYTES 512
#define LARGE_BYTES 1500

BPF_SDT_DECLARE2(sized, __u32, __u32);		/* packet length, its size class */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SIZES);
	__type(key, __u32);
	__type(value, __u64);
} path_counts SEC(".maps");

__u64 total;

SEC("xdp")
int live_xdp(struct xdp_md *ctx)
{
	__u32 len = ctx->data_end - ctx->data;
	__u32 class = len < TINY_BYTES ? SIZE_TINY : len < SMALL_BYTES ? SIZE_SMALL
		    : len < LARGE_BYTES ? SIZE_LARGE : SIZE_HUGE;
	__u64 *n = bpf_map_lookup_elem(&path_counts, &class);

	BPF_SDT_PROBE2(sized, len, class);
	if (n)
		__sync_fetch_and_add(n, 1);
	__sync_fetch_and_add(&total, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* A "production" XDP program for the live-swap tests (tests/test_live.py):
 * it counts every packet by path in a map and in .bss, so a test can check
 * that no packet went unprocessed and no state was reset while trace
 * swapped an instrumented copy in and out.  live_xdp_other.bpf.c is another
 * program of the same name and maps (a different tag). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf_sdt.h>

enum live_path { PATH_UDP, PATH_OTHER_IP, PATH_NON_IP, PATH_SHORT, PATHS };

BPF_SDT_DECLARE3(udp_seen, __u32, __u16, __u8);		/* packet length, destination port, first payload byte */
BPF_SDT_DECLARE1(other, __u16);				/* ethertype */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PATHS);
	__type(key, __u32);
	__type(value, __u64);
} path_counts SEC(".maps");

__u64 total;				/* .bss: must survive the swaps too */

static __always_inline void count(__u32 path)
{
	__u64 *n = bpf_map_lookup_elem(&path_counts, &path);

	if (n)
		__sync_fetch_and_add(n, 1);
	__sync_fetch_and_add(&total, 1);
}

SEC("xdp")
int live_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *payload = (void *)(udp + 1);

	if ((void *)(eth + 1) > data_end) {
		count(PATH_SHORT);
		return XDP_PASS;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		BPF_SDT_PROBE1(other, bpf_ntohs(eth->h_proto));
		count(PATH_NON_IP);
		return XDP_PASS;
	}
	if ((void *)(payload + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl != 5) {
		count(PATH_OTHER_IP);
		return XDP_PASS;
	}
	BPF_SDT_PROBE3(udp_seen, (__u32)(data_end - data), bpf_ntohs(udp->dest), *payload);
	count(PATH_UDP);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

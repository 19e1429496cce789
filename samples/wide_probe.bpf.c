// SPDX-License-Identifier: GPL-2.0
/* A probe with 12 arguments, the trampoline limit: arguments 1..5 travel in
 * registers, 6..12 in stack slots or, when constant, as immediates. */
#include "common.h"

BPF_SDT_DECLARE12(flow, __u32, __u32, __u16, __u16, __u8, __u8, __u8, __u32, __u32, __u32, int, __u64);
/* saddr, daddr, sport, dport, proto, ttl, tos, length, ifindex, rx queue, verdict, flags */

SEC("xdp")
int xdp_flow(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5)
		return XDP_PASS;
	BPF_SDT_PROBE12(flow, ip->saddr, ip->daddr, bpf_ntohs(udp->source), bpf_ntohs(udp->dest),
			ip->protocol, ip->ttl, ip->tos, data_end - data, ctx->ingress_ifindex,
			ctx->rx_queue_index, XDP_PASS, 0);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

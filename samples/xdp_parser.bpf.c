// SPDX-License-Identifier: GPL-2.0
/* XDP packet parser.  Shows pointer, narrow-int (__u8/__u16) and constant
 * arguments, and one probe name (`drop`) used at four sites: every site gets
 * its own note, and the constant drop reason costs no instruction. */
#include "common.h"

enum drop_reason { DROP_SHORT_ETH = 1, DROP_SHORT_IP, DROP_BAD_IHL, DROP_TTL };

BPF_SDT_DECLARE2(drop, enum drop_reason, __u32);			/* why, packet length */
BPF_SDT_DECLARE4(ipv4, const struct iphdr *, __u8, __u8, __u16);	/* header, proto, ttl, total length */
BPF_SDT_DECLARE1(non_ip, __u16);					/* ethertype */

SEC("xdp")
int xdp_parse(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end) {
		BPF_SDT_PROBE2(drop, DROP_SHORT_ETH, len);
		return XDP_DROP;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP)) {
		BPF_SDT_PROBE1(non_ip, bpf_ntohs(eth->h_proto));
		return XDP_PASS;
	}
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end) {
		BPF_SDT_PROBE2(drop, DROP_SHORT_IP, len);
		return XDP_DROP;
	}
	if (ip->ihl < 5) {
		BPF_SDT_PROBE2(drop, DROP_BAD_IHL, len);
		return XDP_DROP;
	}
	BPF_SDT_PROBE4(ipv4, ip, ip->protocol, ip->ttl, bpf_ntohs(ip->tot_len));
	if (ip->ttl <= 1) {
		BPF_SDT_PROBE2(drop, DROP_TTL, len);
		return XDP_DROP;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

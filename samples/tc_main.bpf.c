// SPDX-License-Identifier: GPL-2.0
/* tc classifier, file 1 of 2 (linked with tc_stats.bpf.c by `bpf-sdt link`).
 * Classifies by protocol and hands the byte count to a global subprogram in
 * the other file, which updates a hash map.  Both files use probes. */
#include "common.h"

BPF_SDT_DECLARE3(classify, __u32, __u16, __u32);	/* ifindex, protocol, classid */

extern int account(__u32 classid, __u32 bytes);	/* tc_stats.bpf.c */

SEC("tc")
int tc_classify(struct __sk_buff *skb)
{
	__u32 classid = skb->protocol == bpf_htons(ETH_P_IP) ? 0x10001 : 0x10002;

	BPF_SDT_PROBE3(classify, skb->ifindex, bpf_ntohs(skb->protocol), classid);
	skb->tc_classid = classid;
	account(classid, skb->len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";

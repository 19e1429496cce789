// SPDX-License-Identifier: GPL-2.0
/* Observers for tests/progs/instr.bpf.c, written as the RFC writes them.
 * Each stores what it received in `seen`, so the test can compare it with
 * what it computes from the packet. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

__u64 calls;

static void put(__u32 k, __u64 v)
{
	bpf_map_update_elem(&seen, &k, &v, BPF_ANY);
}

SEC("bpf_sdt/pkt")
int BPF_PROG(on_pkt, __u32 len, __u8 b0, signed char b1)
{
	put(0, len);
	put(1, b0);
	put(2, (__s64)b1);
	calls++;
	return 0;
}

/* A pointer argument is as usable as in the program: ctx fields can be read. */
SEC("bpf_sdt/ptrs")
int BPF_PROG(on_ptrs, void *data, struct xdp_md *xdp)
{
	put(3, xdp->ingress_ifindex);
	put(4, data == (void *)(long)xdp->data);
	return 0;
}

/* SEC("bpf_sdt") with --attach on_any=GLOB: serves several probes. */
SEC("bpf_sdt")
int BPF_PROG(on_any, __u64 first)
{
	__u32 k = 5;
	__u64 *v = bpf_map_lookup_elem(&seen, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
	put(6, first);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* A sample observer, written as the BPF SDT RFC writes them: the section names
 * the probe it observes, BPF_PROG names its arguments with the probe's types.
 *
 *   bpf-sdt instrument xdp_parser.bpf.o --observer observer.bpf.o -o counted.bpf.o
 *
 * links it into xdp_parser: each of the four `drop` sites then calls
 * count_drop, which counts packets and bytes per drop reason in a map that
 * `bpftool map dump` shows (`make demo` does exactly that).  Without probes of
 * its own it is built like any sample, but is not a program: it has no
 * SEC("xdp") and loads only as part of an instrumented object. */
#include "common.h"

struct drop_stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);		/* enum drop_reason in xdp_parser.bpf.c: 1..4 */
	__type(key, __u32);
	__type(value, struct drop_stats);
} drops_by_reason SEC(".maps");

/* drop(enum drop_reason why, __u32 len): an enum is 4 bytes, unsigned here. */
SEC("bpf_sdt/drop")
int BPF_PROG(count_drop, __u32 reason, __u32 len)
{
	struct drop_stats *s = bpf_map_lookup_elem(&drops_by_reason, &reason);

	if (s) {
		__sync_fetch_and_add(&s->packets, 1);
		__sync_fetch_and_add(&s->bytes, len);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

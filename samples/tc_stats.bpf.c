// SPDX-License-Identifier: GPL-2.0
/* tc classifier, file 2 of 2: the per-class byte counters (a hash map) and
 * the global subprogram that updates them, with a probe at each outcome. */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} class_bytes SEC(".maps");

BPF_SDT_DECLARE3(accounted, __u32, __u32, __u64);	/* classid, bytes, new total */
BPF_SDT_DECLARE1(new_class, __u32);			/* classid seen for the first time */

__attribute__((noinline)) int account(__u32 classid, __u32 bytes)
{
	__u64 *total = bpf_map_lookup_elem(&class_bytes, &classid);
	__u64 first = bytes;

	if (!total) {
		bpf_map_update_elem(&class_bytes, &classid, &first, BPF_NOEXIST);
		BPF_SDT_PROBE1(new_class, classid);
		return 0;
	}
	__sync_fetch_and_add(total, bytes);
	BPF_SDT_PROBE3(accounted, classid, bytes, *total);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* What `bpf-sdt instrument` must handle, in one object: probes in three
 * program types (XDP, tc, socket filter), in a static subprogram, a global
 * subprogram and a bpf_loop callback; 12 arguments; immediates (negative,
 * above s32, wide); narrow signed and unsigned values; pointers (packet,
 * ctx); map updates, global data, a tail call and a kfunc call, whose
 * results must be unchanged.
 * tests/test_instrument.py computes every argument from the packet. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf_sdt.h>

BPF_SDT_DECLARE3(pkt, __u32, __u8, signed char);	/* length, byte 0, byte 1 */
BPF_SDT_DECLARE2(ptrs, void *, struct xdp_md *);
BPF_SDT_DECLARE4(consts, int, unsigned int, long, short);
BPF_SDT_DECLARE12(wide, __u8, __s8, __u16, __s16, __u32, __s32, __u64, __s64,
		  int, long, __u32, __u64);
BPF_SDT_DECLARE2(sub, __u32, __u64);
BPF_SDT_DECLARE2(gsub, __u32, __u32);
BPF_SDT_DECLARE2(cb, __u32, __u64);
BPF_SDT_DECLARE2(skb, __u32, __u32);			/* tc: len, mark */
BPF_SDT_DECLARE1(sock, __u32);				/* socket filter: len */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} jump SEC(".maps");

extern void *bpf_cast_to_kern_ctx(void *) __ksym;	/* a kfunc */

__u64 total;			/* .bss */
__u64 seed = 7;			/* .data */

struct walk { __u64 acc; __u8 b[4]; };

static __attribute__((noinline)) __u64 mix(__u64 v, __u32 i)
{
	__u64 out = v * 31 + i;

	BPF_SDT_PROBE2(sub, i, out);
	return out;
}

__attribute__((noinline)) int classify(__u32 b0, __u32 b1)
{
	__u32 cls = (b0 + b1) & 3;

	BPF_SDT_PROBE2(gsub, b0, cls);
	return cls;
}

static long walk_cb(__u32 i, void *data)
{
	struct walk *w = data;

	w->acc = mix(w->acc, w->b[i & 3]);
	BPF_SDT_PROBE2(cb, i, w->acc);
	return 0;
}

SEC("xdp")
int xdp_main(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u8 *p = data;
	__u32 key, len = end - data;
	struct walk w = { .acc = seed };
	__u64 *n;

	if (p + 16 > (__u8 *)end)
		return XDP_ABORTED;
	__builtin_memcpy(w.b, p + 12, 4);
	BPF_SDT_PROBE3(pkt, len, p[0], (signed char)p[1]);
	BPF_SDT_PROBE2(ptrs, data, ctx);
	BPF_SDT_PROBE4(consts, -5, 0x80000000U, 1L << 40, (short)-3);
	BPF_SDT_PROBE12(wide, p[2], (__s8)p[3], *(__u16 *)(p + 4), *(__s16 *)(p + 4),
			*(__u32 *)(p + 8), *(__s32 *)(p + 8), *(__u64 *)(p + 8), *(__s64 *)(p + 8),
			-1, 123456789012L, (__u32)p[0] << 24, (__u64)len * 1000);
	bpf_loop(4, walk_cb, &w, 0);
	key = classify(p[0], p[1]);
	n = bpf_map_lookup_elem(&counts, &key);
	if (n)
		__sync_fetch_and_add(n, 1);
	total += w.acc;
	return p[0] & 1 ? XDP_PASS : XDP_DROP;
}

SEC("tc")
int tc_main(struct __sk_buff *skb)
{
	__u32 key = 3;
	__u64 *n;

	struct sk_buff *kskb = bpf_cast_to_kern_ctx(skb);

	BPF_SDT_PROBE2(skb, skb->len, skb->mark);
	bpf_tail_call(skb, &jump, 0);		/* empty: falls through */
	if (kskb->len != skb->len)
		return 2;
	n = bpf_map_lookup_elem(&counts, &key);
	if (n)
		__sync_fetch_and_add(n, skb->len);
	return skb->mark & 1;
}

SEC("socket")
int sock_main(struct __sk_buff *skb)
{
	BPF_SDT_PROBE1(sock, skb->len);
	return skb->len;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* Subprograms, file 1 of 2 (linked with loop_lib.bpf.c by `bpf-sdt link`).
 * Probes in a static subprogram, in a bpf_loop callback, in the program
 * itself, and (in loop_lib.bpf.c) in a global subprogram in another object. */
#include "common.h"

BPF_SDT_DECLARE2(step, __u32, __u64);	/* iteration, running value */
BPF_SDT_DECLARE2(mixed, __u64, __u64);	/* before, after */
BPF_SDT_DECLARE1(done, __u64);		/* final, scaled value */

extern __u64 scale(__u64 v);		/* global subprogram, loop_lib.bpf.c */

struct loop_state {
	__u64 value;
};

static __attribute__((noinline)) __u64 mix(__u64 v, __u32 i)
{
	__u64 out = v * 31 + i;

	BPF_SDT_PROBE2(mixed, v, out);
	return out;
}

static long loop_cb(__u32 i, void *data)
{
	struct loop_state *st = data;

	st->value = mix(st->value, i);
	BPF_SDT_PROBE2(step, i, st->value);
	return 0;
}

SEC("raw_tp/sys_enter")
int sum_loop(void *ctx)
{
	struct loop_state st = { .value = bpf_get_prandom_u32() };

	bpf_loop(16, loop_cb, &st, 0);
	BPF_SDT_PROBE1(done, scale(st.value));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

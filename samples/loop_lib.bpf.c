// SPDX-License-Identifier: GPL-2.0
/* Subprograms, file 2 of 2: a global subprogram (verified on its own by the
 * kernel) with a probe, called from loop_main.bpf.c. */
#include "common.h"

BPF_SDT_DECLARE2(scaling, __u64, int);	/* value, shift */

__attribute__((noinline)) __u64 scale(__u64 v)
{
	BPF_SDT_PROBE2(scaling, v, 3);
	return v >> 3;
}
